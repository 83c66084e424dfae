# Set-up and everyday commands. `make test` and `make demo` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
DEMO_SETTING ?= chest_drain-pneumothorax-v0.90-s0
DEMO_MANIFEST = $(DEMO_DIR)/phantom/$(DEMO_SETTING)/manifest.csv
DEMO_TRACKING = sqlite:///$(CURDIR)/$(DEMO_DIR)/mlruns.db
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test demo clean

# The virtual environment with the package (editable) and its test dependencies. pip, not uv or
# poetry: pip takes torch/torchvision from the local wheel store and respects the torch<=2.14.1 cap.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# Exit code 5 ("no tests collected") is a failure with its own message, never a silent pass.
test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc; }

# The main job on the built-in phantom data: write a hidden-shortcut setting as DICOM, check it,
# ingest it, fine-tune the tiny model (it learns the shortcut), audit it. Tracked in outputs/demo/mlruns.db.
demo: $(STAMP)
	$(BIN)/ravl-med phantom write --suite demo --setting $(DEMO_SETTING) --out $(DEMO_DIR)/phantom
	$(BIN)/ravl-med validate $(DEMO_MANIFEST) --quarantine $(DEMO_DIR)/quarantine.csv
	$(BIN)/ravl-med ingest $(DEMO_MANIFEST) --out $(DEMO_DIR)/ingested
	$(BIN)/ravl-med finetune --config configs/demo-finetune.yaml --manifest $(DEMO_MANIFEST) \
	  --out $(DEMO_DIR)/finetune --tracking-uri $(DEMO_TRACKING)
	$(BIN)/ravl-med audit --config configs/demo-audit.yaml --manifest $(DEMO_MANIFEST) \
	  --checkpoint $(DEMO_DIR)/finetune --out $(DEMO_DIR)/audit --spurious-class pneumothorax \
	  --tracking-uri $(DEMO_TRACKING)

clean:
	rm -rf $(VENV) outputs .pytest_cache
