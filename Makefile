# Set-up and everyday commands. `make test` and `make demo` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
# Every core (pytest-xdist). The two models the shortcut tests share are trained once per session, by the
# first worker that asks (a file lock, tests/shortcut_fixtures.py); the others load them.
PYTEST_ARGS ?= -n auto

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo clean

# The virtual environment with the package (editable) and its test dependencies. pip, not uv or
# poetry: pip takes torch/torchvision from the local wheel store and respects the torch<=2.14.1 cap.
# constraints.txt pins every version (results depend on them: ravl_med/reproducibility.py).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# The layering contract (pyproject.toml, import-linter) first, then the suite. Exit code 5 ("no tests
# collected") is a failure with its own message, never a silent pass.
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	@$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc; }

# The main job on the built-in phantom data (`ravl-med demo`, datasets/benchmarks/demo.yaml): write a
# hidden-shortcut setting as DICOM, fine-tune the tiny model (it learns the shortcut), audit it, mitigate
# it with RaVL, print the before/after summary. Outputs and the MLflow store (mlruns.db) in outputs/demo.
demo: $(STAMP)
	$(BIN)/ravl-med demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) outputs .pytest_cache
