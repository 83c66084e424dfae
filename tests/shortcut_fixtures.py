"""Fine-tuned models that learned a planted shortcut, for tests that need one (shortcut, audit tests).

Two settings, each written into a temporary folder and fine-tuned on the CPU with a recipe from
``configs/`` (see ``docs/shortcut-recipes.md`` for how the recipes were chosen and what they give):

* ``digits``: the paper's synthetic setting (56 x 56 four-quadrant images, a digit in one quadrant,
  a square in another, tied to one digit at Cramer's V 0.95), recipe ``configs/shortcut-digits.yaml``;
* ``phantom``: phantom chest radiographs, ``chest_drain`` tied to ``pneumothorax`` at V 0.9,
  recipe ``configs/shortcut-phantom.yaml``;

Use them from a test module with::

    def test_x(phantom_shortcut): ...   # the fixtures are registered in tests/conftest.py

Each fixture is session-scoped and returns a :class:`ShortcutRun`: the trained model, its
preprocessing and tokenizer, the test split (feature independent of the class) with its zero-shot
predictions and the group accuracy table. The helpers below (:func:`write_phantom_pairs`,
:func:`write_digit_pairs`, :func:`run_recipe`) can build other variants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from filelock import FileLock

from ravl_med.config import FinetuneConfig, parse_config
from ravl_med.data.atomic import atomic_path
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.evaluate import group_accuracy_table
from ravl_med.models import create_backbone
from ravl_med.models.training import Trainer
from ravl_med.models.training_records import FINAL_WEIGHTS, FitResult, read_fit_record
from ravl_med.models.zeroshot import CXR_TEMPLATES, class_text_embeddings, zero_shot_predictions
from ravl_med.phantom import PhantomSetting, write_setting
from ravl_med.phantom.digits import DIGIT_NAMES, write_digits

REPO_ROOT = Path(__file__).resolve().parents[1]
PHANTOM_RECIPE = REPO_ROOT / "configs" / "shortcut-phantom.yaml"
DIGITS_RECIPE = REPO_ROOT / "configs" / "shortcut-digits.yaml"

#: The phantom setting the recipe is meant for (its ``classes`` must match the recipe's).
PHANTOM_DATA: dict[str, Any] = {
    "artefact": "chest_drain", "spurious_class": "pneumothorax", "strength": 0.9, "seed": 0,
    "classes": ["no finding", "cardiomegaly", "pleural effusion", "pneumothorax"],
    "n_train": 800, "n_val": 0, "n_test": 400, "image_size": 128,
}
#: The digits setting the recipe is meant for.
DIGITS_DATA: dict[str, Any] = {
    "spurious_digit": 3, "strength": 0.95, "seed": 0, "n_train": 1000, "n_val": 0, "n_test": 500,
}


# ----------------------------------------------------------------------------- data


def _text_mode(manifest: Path, text: str) -> Path:
    """``text="report"``: the manifest as written; ``"labels"``: a copy with blank reports, so that
    :meth:`RadiographDataset.text` pairs each image with its label sentence."""
    if text == "report":
        return manifest
    if text != "labels":
        raise ValueError(f"text must be 'report' or 'labels', got {text!r}")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["report"] = ""
    out = manifest.with_name("manifest-labels.csv")
    with atomic_path(out) as tmp:  # another xdist worker may be reading it (:func:`_shared_run`)
        table.to_csv(tmp, index=False)
    return out


def write_phantom_pairs(out: str | Path, *, text: str = "labels", **setting: Any) -> Path:
    """Writes a phantom setting (``PHANTOM_DATA`` updated with ``setting``) under ``out``.

    Returns:
        the manifest to fine-tune on (see :func:`_text_mode` for ``text``).
    """
    values = {**PHANTOM_DATA, **setting}
    # Everything that changes the images is in the name: the writer keeps files that exist.
    values.setdefault("name", f"{values['artefact']}-{values['spurious_class'].replace(' ', '_')}"
                              f"-v{values['strength']:.2f}-s{values['seed']}-{len(values['classes'])}cls"
                              f"-n{values['n_train']}-{values['n_test']}-{values['image_size']}px")
    summary = write_setting(PhantomSetting(**values), out, progress=False)
    return _text_mode(summary.manifest, text)


def write_digit_pairs(out: str | Path, *, text: str = "report", **setting: Any) -> Path:
    """Writes the digits setting (``DIGITS_DATA`` updated with ``setting``) under ``out``."""
    return _text_mode(write_digits(out, **{**DIGITS_DATA, **setting}), text)


# ----------------------------------------------------------------------------- fine-tuning


def load_recipe(path: str | Path, **overrides: Any) -> FinetuneConfig:
    """A recipe YAML (``FinetuneConfig`` format) with some keys replaced (e.g. ``manifest``, ``seed``)."""
    data = yaml.safe_load(Path(path).read_text())
    data.update({k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()})
    return parse_config(data, FinetuneConfig, str(path))


@dataclass
class ShortcutRun:
    """A fine-tuned model and its test-split evaluation (see the module docstring).

    Attributes:
        config: the recipe as run.
        spurious_class: the class the feature was tied to.
        result: the trainer's :class:`FitResult` (``checkpoint``, ``sha256``, ``history``).
        model, preprocess, tokenizer: the trained model (eval mode, CPU) and its input/text pieces.
        templates: the zero-shot templates of the recipe.
        test_set: the ``test`` split (no tokenizer).
        labels, predictions: (N,) test labels and zero-shot predictions.
        feature_present: (N,) bool, the manifest's ``artefact_present``.
        table: :func:`~ravl_med.evaluate.group_accuracy_table` of the test split.
        seconds: wall times of ``data``, ``finetune`` and ``evaluate``.
    """

    config: FinetuneConfig
    spurious_class: str
    result: FitResult
    model: Any
    preprocess: Any
    tokenizer: Any
    templates: tuple[str, ...]
    test_set: RadiographDataset
    labels: np.ndarray
    predictions: np.ndarray
    feature_present: np.ndarray
    table: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.predictions).mean())


def run_recipe(recipe: str | Path, manifest: Path, output_dir: Path, spurious_class: str,
               **overrides: Any) -> ShortcutRun:
    """Fine-tunes with ``recipe`` on ``manifest`` and evaluates zero-shot on its ``test`` split.

    A run that finished in ``output_dir`` before is not repeated: its weights are loaded. Either way the
    evaluated model is the one built from the saved weights. With one intra-op thread, whatever the machine's core count and whichever test first asks for the
    fixture: the trained model depends on the thread count (float reductions), and a session fixture
    is built before any module-scoped thread setting applies.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_recipe(recipe, manifest, output_dir, spurious_class, **overrides)
    finally:
        torch.set_num_threads(threads)


def _run_recipe(recipe: str | Path, manifest: Path, output_dir: Path, spurious_class: str,
                **overrides: Any) -> ShortcutRun:
    config = load_recipe(recipe, manifest=manifest, output_dir=output_dir, cache_images=True, **overrides)
    started = time.perf_counter()
    record = read_fit_record(output_dir)
    if record is None:
        result = Trainer(config, progress=False).fit()
    else:  # finished before, by this or another xdist worker (:func:`_shared_run`): the same weights
        result = FitResult.from_record(record, output_dir / FINAL_WEIGHTS)
    trained = time.perf_counter()
    model, preprocess, tokenizer = create_backbone(config.backbone, checkpoint=result.checkpoint, sha256=result.sha256)
    model.eval()
    templates = tuple(config.templates) if config.templates else CXR_TEMPLATES
    test_set = RadiographDataset(Manifest.read(config.manifest, classes=config.classes), config.ingest,
                                 config.classes, split="test")
    with torch.no_grad():
        text = class_text_embeddings(model, tokenizer, list(config.classes), templates, device="cpu")
    labels, predictions = zero_shot_predictions(model, preprocess, text, test_set, batch_size=64)
    present = test_set.table["artefact_present"].astype(int).to_numpy().astype(bool)
    table = group_accuracy_table(labels, predictions, present, config.classes, spurious_class=spurious_class)
    seconds = {"finetune": trained - started, "evaluate": time.perf_counter() - trained}
    return ShortcutRun(config, spurious_class, result, model, preprocess, tokenizer, templates,
                       test_set, labels, predictions, present, table, seconds)


def describe(run: ShortcutRun) -> str:
    """The run's table and timings as text (printed by the tests, for ``-s`` / failure output)."""
    shown = run.table.drop(columns=["class_index"]).round(3).to_string(index=False)
    return (f"{run.config.backbone} seed {run.config.seed}: test accuracy {run.accuracy:.3f} "
            f"(chance {run.result.chance:.3f}); seconds {json.dumps({k: round(v, 1) for k, v in run.seconds.items()})}\n"
            f"{shown}")


# ----------------------------------------------------------------------------- fixtures


#: The models several test modules share: name -> (data writer, recipe, spurious class).
SHARED_MODELS: dict[str, tuple[Any, Path, str]] = {
    "shortcut-phantom": (write_phantom_pairs, PHANTOM_RECIPE, PHANTOM_DATA["spurious_class"]),
    "shortcut-digits": (write_digit_pairs, DIGITS_RECIPE, DIGIT_NAMES[DIGITS_DATA["spurious_digit"]]),
}


def shared_root(tmp_path_factory) -> Path:
    """The session's folder for :data:`SHARED_MODELS`, the same for the controller and every xdist worker."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>/: a worker's basetemp is <that>/popen-gw<i>
    return root


def shared_run(root: Path, name: str) -> ShortcutRun:
    """:data:`SHARED_MODELS` ``name``: data written, then :func:`run_recipe`, once per test session.

    Under pytest-xdist every worker builds its own session fixtures; these models take minutes of CPU,
    so the processes share ``root/name`` and a file lock: the first to ask trains, the others wait,
    then load the finished weights (their ``metrics.json`` record) and evaluate them the same way.
    Records the data time.
    """
    write_data, recipe, spurious_class = SHARED_MODELS[name]
    with FileLock(root / f"{name}.lock"):
        started = time.perf_counter()
        manifest = write_data(root / name / "data")  # the writers keep files that exist
        written = time.perf_counter() - started
        run = run_recipe(recipe, manifest, root / name / "run", spurious_class)
    run.seconds["data"] = written
    return run


def start_prebuild(config: pytest.Config) -> subprocess.Popen | None:
    """On the xdist controller of a whole-suite run, builds :data:`SHARED_MODELS` in a background process.

    The controller only hands out tests, so the models train from the first second while the workers
    run other tests, instead of a worker training them (one thread) while the next worker that needs
    one waits on the lock. Any order is correct: whoever holds the lock first trains, the rest load.
    Not started for a subset of the tests (they may need neither model), without ``-n`` or for ``--co``.
    """
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS or [
        Path(a).resolve() for a in config.args] == [REPO_ROOT / "tests"]
    if (os.environ.get("PYTEST_XDIST_WORKER") or not config.getoption("numprocesses", None) or not whole_suite
            or config.option.collectonly):
        return None
    root = config._tmp_path_factory.getbasetemp()  # the workers' basetemps are its children (xdist)
    log = (root / "shared-models.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "tests.shortcut_fixtures", str(root)], cwd=REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def phantom_shortcut(tmp_path_factory) -> ShortcutRun:
    """``configs/shortcut-phantom.yaml`` fine-tuned on ``PHANTOM_DATA`` (chest drain -> pneumothorax)."""
    return shared_run(shared_root(tmp_path_factory), "shortcut-phantom")


@pytest.fixture(scope="session")
def digits_shortcut(tmp_path_factory) -> ShortcutRun:
    """``configs/shortcut-digits.yaml`` fine-tuned on ``DIGITS_DATA`` (square -> "three")."""
    return shared_run(shared_root(tmp_path_factory), "shortcut-digits")


if __name__ == "__main__":  # start_prebuild's process: python -m tests.shortcut_fixtures ROOT
    for model_name in SHARED_MODELS:
        print(describe(shared_run(Path(sys.argv[1]), model_name)), flush=True)
