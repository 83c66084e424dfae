"""Experiment tracking with MLflow: every fine-tuning and audit run reviewable in one store.

One :class:`Tracker` per command invocation: an MLflow experiment per dataset or benchmark, a
parent run for the invocation and nested child runs (:meth:`Tracker.child`) per method, setting or
seed, with tags (``method``, ``setting``, ``artefact``, ``spurious_class``, ``strength``, ``seed``)
that make ``mlflow.search_runs(filter_string="tags.method = 'ravl'")`` filters natural.

Where it logs (first that applies): the ``tracking_uri`` argument (``--tracking-uri``), the
``MLFLOW_TRACKING_URI`` variable, else a local SQLite store ``sqlite:///<cwd>/mlruns.db`` with
artifacts under ``<cwd>/mlartifacts`` (no server needed).

Per-group metric names. MLflow metric names may only hold letters, digits, ``_ - . /``, spaces
(and ``:`` outside Windows), so the issue's ``test/acc/group=pneumothorax|drain=1`` is not a legal
name. The scheme used instead (:func:`group_metric_name`)::

    {split}/acc/group/{class}/{feature}-{0|1}      e.g.  test/acc/group/pneumothorax/chest_drain-1
    {split}/acc/overall                            accuracy over all images with a known label
    {split}/acc/worst_group                        lowest accuracy over non-empty groups

where ``class`` and ``feature`` have every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``
and ``1`` means the feature is present. The exact table (with counts and intervals) is logged as
``groups/{split}_groups.csv`` and ``.json``.

Server loss. When a remote server stops answering mid-run, the tracker does not raise: it warns
once, opens the same runs in the local SQLite store, replays everything already logged to them
(each run keeps a journal of its calls) and continues there. Such runs carry the tags
``ravl.store = local-fallback``, ``ravl.fallback_from`` (the remote URI) and
``ravl.remote_run_id``.

Privacy: only what callers pass is logged; the commands pass configs, digests, counts, metrics
and the outputs that are already free of DICOM header fields and image paths.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

__all__ = [
    "DEFAULT_ARTIFACT_DIR",
    "DEFAULT_DB",
    "STEP_METRICS",
    "TrackedRun",
    "Tracker",
    "code_version",
    "dataset_name",
    "flatten",
    "group_metric_name",
    "metric_key",
    "resolve_tracking_uri",
    "training_run",
]

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
#: Param values longer than this go to ``params/long_params.json`` (MLflow's limit is 6000).
MAX_PARAM_LENGTH = 500
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_.\-/ ]+")


# --------------------------------------------------------------------------------------------- #
# Names and values


def metric_key(name: str) -> str:
    """``name`` made a legal MLflow metric/param key (illegal characters -> ``_``, 250 chars)."""
    key = _UNSAFE_KEY.sub("_", name).strip("/") or "_"
    return key[:250]


def _component(value: str) -> str:
    return _UNSAFE.sub("_", str(value).strip()) or "_"


def group_metric_name(split: str, class_name: str, feature: str, present: bool) -> str:
    """The flat metric name of a (class, feature present/absent) group's accuracy.

    ``group_metric_name("test", "pneumothorax", "chest drain", True)`` is
    ``"test/acc/group/pneumothorax/chest_drain-1"`` (see the module docstring).
    """
    return f"{_component(split)}/acc/group/{_component(class_name)}/{_component(feature)}-{int(bool(present))}"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``{"a.b.c": value}``; lists stay values (JSON-encoded when logged)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def code_version() -> str:
    """``ravl_med.__version__``, plus ``+g<commit>`` (and ``.dirty``) inside a git checkout."""
    from ravl_med import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__


def dataset_name(manifest: str | Path) -> str:
    """An experiment name for a manifest: its file stem, or its folder's name for ``manifest.csv``."""
    path = Path(manifest)
    name = path.parent.name if path.stem in ("manifest", "") else path.stem
    return f"ravl-med/{name or 'dataset'}"


def resolve_tracking_uri(uri: str | None = None, local_dir: str | Path | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<local_dir or cwd>/mlruns.db``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return _local_uri(local_dir)


def _local_uri(local_dir: str | Path | None) -> str:
    folder = Path(local_dir or Path.cwd()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DEFAULT_DB}"


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _store_lock(database: Path | None):
    """An inter-process lock on ``<database>.lock`` (a no-op context without a database)."""
    if database is None:
        return contextlib.nullcontext()
    from filelock import FileLock

    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".lock", timeout=600)


def _server_alive(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- #
# The model flavour


def _embedder_class():
    import torch
    from torch import nn

    class _ImageEmbedder(nn.Module):
        """(B, 1, S, S) images in [0, 1] -> (B, D) unit-norm image embeddings."""

        def __init__(self, model: nn.Module, preprocess: nn.Module) -> None:
            super().__init__()
            self.model, self.preprocess = model, preprocess

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(self.preprocess(images), normalize=True)

    return _ImageEmbedder


_EMBEDDER: Any = None


def _ensure_embedder() -> None:
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = _embedder_class()
        # Pickled by reference: make the class findable as ravl_med.tracking.ImageEmbedderModule.
        _EMBEDDER.__qualname__ = _EMBEDDER.__name__ = "ImageEmbedderModule"
        _EMBEDDER.__module__ = __name__
        globals()["ImageEmbedderModule"] = _EMBEDDER


def __getattr__(name: str):  # lazy torch import: the CLI imports this module without torch
    if name == "ImageEmbedderModule":
        _ensure_embedder()
        return _EMBEDDER
    raise AttributeError(name)


# --------------------------------------------------------------------------------------------- #
# Runs


class TrackedRun:
    """One MLflow run (parent or child); every call is journalled so it can be replayed elsewhere.

    Not built directly: :class:`Tracker` is the parent run, :meth:`Tracker.child` makes children.
    """

    def __init__(self, tracker: Tracker, name: str, tags: Mapping[str, Any], parent: TrackedRun | None) -> None:
        self.tracker, self.name, self.parent = tracker, name, parent
        self.tags = {k: str(v) for k, v in tags.items() if v is not None}
        self.journal: list[tuple[str, tuple, dict]] = []
        self.status: str | None = None  # None while open
        self.run_id = ""

    # -- logging --------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (values as text); values over ``MAX_PARAM_LENGTH`` go to ``params/long_params.json``."""
        short: dict[str, str] = {}
        long: dict[str, Any] = {}
        for key, value in params.items():
            text = _param_text(value)
            if len(text) > MAX_PARAM_LENGTH:
                long[key] = value
            else:
                short[metric_key(key)] = text
        if short:
            self.tracker._do(self, "params", short)
        if long:
            self.log_dict(long, "params/long_params.json")

    def log_config(self, config, prefix: str = "config.") -> None:
        """A pydantic config: flattened params (``config.discovery.n_boot``) plus ``config.json``."""
        data = config.model_dump(mode="json")
        self.log_params(flatten(data, prefix))
        self.log_dict(data, "config.json")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Metrics at ``step`` (keys made legal with :func:`metric_key`; NaN and None are skipped)."""
        clean = {metric_key(k): float(v) for k, v in metrics.items()
                 if v is not None and float(v) == float(v)}
        if clean:
            self.tracker._do(self, "metrics", clean, step or 0)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {k: str(v) for k, v in tags.items() if v is not None}
        self.tags.update(clean)
        if clean:
            self.tracker._do(self, "tags", clean)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """One file (copied to a staging folder first, so a replay after a server loss still finds it)."""
        self.tracker._do(self, "artifact", str(self.tracker._stage(path)), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Every file under ``folder`` (recursively), under ``artifact_path``."""
        self.tracker._do(self, "artifacts", str(self.tracker._stage(folder)), artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        """``data`` as a JSON artifact at ``name`` (e.g. ``"groups/test_groups.json"``)."""
        staged = self.tracker._staging_file(Path(name).name)
        staged.write_text(json.dumps(data, indent=2, default=str) + "\n")
        parent = str(Path(name).parent)
        self.tracker._do(self, "artifact", str(staged), None if parent == "." else parent)

    def log_group_table(self, table, split: str = "test", feature: str = "feature", step: int | None = None) -> dict:
        """A table of :func:`ravl_med.evaluate.groups.group_accuracy_table`: metrics and artifacts.

        Logs ``{split}/acc/group/{class}/{feature}-{0|1}`` per non-empty group,
        ``{split}/acc/worst_group`` and ``{split}/acc/overall``, and the table as
        ``groups/{split}_groups.csv`` and ``.json``. Returns the logged metrics.
        """
        metrics: dict[str, float] = {}
        counted = table[table["count"] > 0]
        for row in counted.itertuples(index=False):
            metrics[group_metric_name(split, row[0], feature, bool(row.feature_present))] = float(row.accuracy)
        if len(counted):
            metrics[f"{_component(split)}/acc/worst_group"] = float(counted["accuracy"].min())
            metrics[f"{_component(split)}/acc/overall"] = float(counted["correct"].sum() / counted["count"].sum())
        self.log_metrics(metrics, step)
        csv_path = self.tracker._staging_file(f"{_component(split)}_groups.csv")
        table.to_csv(csv_path, index=False)
        self.tracker._do(self, "artifact", str(csv_path), "groups")
        self.log_dict(json.loads(table.to_json(orient="records")), f"groups/{_component(split)}_groups.json")
        return metrics

    def log_model(self, model, preprocess, name: str = "model") -> None:
        """The image tower as an MLflow PyTorch model with a signature, at artifact path ``name``.

        Load it back with ``mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")``: a module mapping
        (B, 1, S, S) float32 images in [0, 1] to (B, D) unit-norm embeddings.
        """
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        _ensure_embedder()
        module = _EMBEDDER(model, preprocess).cpu().eval()
        side = int(getattr(preprocess, "image_size", 224))
        example = np.zeros((1, 1, side, side), dtype=np.float32)
        with torch.no_grad():
            output = module(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        target = self.tracker._staging_dir() / name
        mlflow.pytorch.save_model(module, str(target), signature=signature,
                                  pip_requirements=["torch", "ravl-med"], serialization_format="pickle")
        self.tracker._do(self, "artifacts", str(target), name)

    # -- lifecycle ------------------------------------------------------------------------------

    def end(self, status: str = "FINISHED") -> None:
        if self.status is None:
            self.status = status
            self.tracker._do(self, "end", status)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(_status_of(exc_type))


def _status_of(exc_type) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


class Tracker(TrackedRun):
    """The parent run of one invocation; a context manager.

    Args:
        experiment: experiment name (one per dataset or benchmark, e.g. :func:`dataset_name`).
        run_name: the parent run's name (e.g. ``"finetune"``).
        tags: tags of the parent run (``method``, ``setting``, ...; ``None`` values are dropped).
        tracking_uri: see :func:`resolve_tracking_uri`.
        local_dir: folder of the local store (``mlruns.db``, ``mlartifacts/``) used by default and
            as the fallback when a remote server is lost; default the working directory.

    Example::

        with Tracker("ravl-med/phantom", "audit", tags={"method": "ravl"}) as run:
            run.log_config(config)
            with run.child("seed-0", tags={"seed": 0}) as child:
                child.log_metrics({"test/acc/worst_group": 0.5})
    """

    def __init__(self, experiment: str, run_name: str, *, tags: Mapping[str, Any] | None = None,
                 tracking_uri: str | None = None, local_dir: str | Path | None = None) -> None:
        super().__init__(self, run_name, tags or {}, None)
        self.experiment = experiment
        self.local_dir = Path(local_dir or Path.cwd()).resolve()
        self.tracking_uri = resolve_tracking_uri(tracking_uri, self.local_dir)
        self.fallback_from: str | None = None
        self.runs: list[TrackedRun] = []
        self._client = None
        self._experiment_id = ""
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._n_staged = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def store(self) -> str:
        """``"remote"``, ``"local"`` or ``"local-fallback"``."""
        if self.fallback_from:
            return "local-fallback"
        return "remote" if _is_remote(self.tracking_uri) else "local"

    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> TrackedRun:
        """A nested run under this one (a context manager, ended on exit)."""
        run = TrackedRun(self, name, {**{k: v for k, v in self.tags.items() if not k.startswith(("mlflow.", "ravl."))},
                                      **(tags or {})}, self)
        self._open(run)
        return run

    def __enter__(self) -> Self:
        import mlflow  # noqa: F401  (fail here, not mid-run, when mlflow is missing)

        self._tmp = tempfile.TemporaryDirectory(prefix="ravl-track-")
        if _is_remote(self.tracking_uri):
            # MLflow retries a dead server for minutes by default; a lost server should cost seconds.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.tags.setdefault("ravl.code_version", code_version())
        try:
            self._connect(self.tracking_uri)
        except Exception as err:
            if not self._lost(err):
                raise
            self._fall_back(err, replay=False)
        self._open(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            for run in reversed(self.runs):
                if run is not self and run.status is None:
                    run.end(_status_of(exc_type))
            self.end(_status_of(exc_type))
        finally:
            if self.fallback_from:
                print(f"tracking: the server at {self.fallback_from} was lost; everything is in the local store "
                      f"{self.tracking_uri} (run {self.run_id})")
            if self._tmp is not None:
                self._tmp.cleanup()

    # -- internals ------------------------------------------------------------------------------

    def _connect(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        # MLflow creates a fresh SQLite store's tables (and the experiment) without guarding against
        # another process doing the same: two runs started together on a new store crashed one of them
        # ("table ... already exists"). A lock file beside the database serialises the set-up.
        database = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        with _store_lock(database):
            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                location = None
                if database is not None:  # artifacts beside the database they belong to
                    location = (database.parent / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
                elif not _is_remote(uri):
                    location = (self.local_dir / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
                experiment_id = client.create_experiment(self.experiment, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
        self._client, self._experiment_id = client, experiment_id

    def _open(self, run: TrackedRun) -> None:
        self.runs.append(run)
        self._do(run, "create")

    def _create(self, run: TrackedRun) -> None:
        tags = {**run.tags, "mlflow.runName": run.name, "ravl.store": self.store}
        if self.fallback_from:
            tags["ravl.fallback_from"] = self.fallback_from
            if run.run_id:
                tags["ravl.remote_run_id"] = run.run_id
        if run.parent is not None:
            tags["mlflow.parentRunId"] = run.parent.run_id
        created = self._client.create_run(self._experiment_id, run_name=run.name, tags=tags)
        run.run_id = created.info.run_id

    def _apply(self, run: TrackedRun, op: str, args: tuple) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._client
        if op == "create":
            self._create(run)
        elif op == "params":
            client.log_batch(run.run_id, params=[Param(k, v) for k, v in args[0].items()])
        elif op == "metrics":
            import time

            now = int(time.time() * 1000)
            client.log_batch(run.run_id, metrics=[Metric(k, v, now, args[1]) for k, v in args[0].items()])
        elif op == "tags":
            client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in args[0].items()])
        elif op == "artifact":
            client.log_artifact(run.run_id, args[0], args[1])
        elif op == "artifacts":
            client.log_artifacts(run.run_id, args[0], args[1])
        elif op == "end":
            client.set_terminated(run.run_id, args[0])
        else:  # pragma: no cover
            raise ValueError(op)

    def _do(self, run: TrackedRun, op: str, *args) -> None:
        run.journal.append((op, args, {}))
        try:
            self._apply(run, op, args)
        except Exception as err:
            if not self._lost(err):
                raise
            self._fall_back(err, replay=True)

    def _lost(self, err: BaseException) -> bool:
        """Whether ``err`` comes from a remote server that no longer answers."""
        if self.fallback_from or not _is_remote(self.tracking_uri):
            return False
        return not _server_alive(self.tracking_uri)

    def _fall_back(self, err: BaseException, *, replay: bool) -> None:
        remote = self.tracking_uri
        message = (f"tracking server {remote} unreachable ({type(err).__name__}); logging to the local store "
                   f"{_local_uri(self.local_dir)} instead")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        logger.warning(message)
        self.fallback_from, self.tracking_uri = remote, _local_uri(self.local_dir)
        self._connect(self.tracking_uri)
        if not replay:
            return
        # Replay every run's journal, parents first (creation order), so nothing logged is lost.
        for run in self.runs:
            for op, args, _ in run.journal:
                self._apply(run, op, args)

    def _staging_dir(self) -> Path:
        self._n_staged += 1
        folder = Path(self._tmp.name) / f"{self._n_staged:04d}"
        folder.mkdir(parents=True)
        return folder

    def _staging_file(self, name: str) -> Path:
        return self._staging_dir() / name

    def _stage(self, path: str | Path) -> Path:
        source = Path(path)
        target = self._staging_dir() / source.name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target


@contextlib.contextmanager
def optional_tracker(enabled: bool, *args, **kwargs) -> Iterator[Tracker | None]:
    """``Tracker(*args, **kwargs)`` when ``enabled``, else ``None`` (for ``--no-tracking``)."""
    if not enabled:
        yield None
        return
    with Tracker(*args, **kwargs) as tracker:
        yield tracker


#: MLflow names of the trainer's per-step values (others become ``train/<name>``).
STEP_METRICS = {"loss": "train/loss_step", "lr": "train/lr"}


@contextlib.contextmanager
def training_run(args, command: str, config, finetune, tags: Mapping[str, Any],
                 run_name: str | None = None) -> Iterator[tuple[Tracker | None, Any]]:
    """The MLflow run of a training command (``finetune``, ``mitigate``), or ``(None, None)`` with ``--no-tracking``.

    Logs the whole ``config``, the manifest summary of ``finetune.manifest`` (no paths), backbone,
    seed and code version, and yields ``(run, on_step)``: ``on_step(step, {"loss", "lr"})`` for the
    trainer logs ``train/loss_step`` and ``train/lr`` per optimizer step.

    Args:
        args: the command's parsed arguments (``--tracking-uri``, ``--experiment``, ``--no-tracking``).
        command: the ``command`` tag; run_name: the parent run's name (default: ``command``).
        config: the command's config; finetune: its :class:`~ravl_med.config.FinetuneConfig`.
        tags: further tags (``method``, ...).
    """
    params, base_tags = manifest_summary(finetune.manifest)
    tags = base_tags | {"command": command, "seed": finetune.seed, **tags}
    with optional_tracker(not args.no_tracking, args.experiment or dataset_name(finetune.manifest),
                          run_name or command, tags=tags, tracking_uri=args.tracking_uri) as run:
        if run is None:
            yield None, None
            return
        run.log_config(config)
        run.log_params({**params, "model.backbone": finetune.backbone, "seed": finetune.seed,
                        "code_version": run.tags.get("ravl.code_version", "")})

        def on_step(step: int, metrics: Mapping[str, float]) -> None:
            run.log_metrics({STEP_METRICS.get(k, f"train/{k}"): v for k, v in metrics.items()}, step)

        yield run, on_step


# --------------------------------------------------------------------------------------------- #
# What the commands log


def add_tracking_options(parser, local: str = "<cwd>", experiment: str = "ravl-med/<dataset>") -> None:
    """``--tracking-uri``, ``--experiment``, ``--no-tracking`` on an argparse parser.

    Args:
        local: the folder of the default local store, as the help shows it.
        experiment: the default experiment name, as the help shows it.
    """
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        f"sqlite:///{local}/{DEFAULT_DB} with artifacts in {local}/{DEFAULT_ARTIFACT_DIR})")
    parser.add_argument("--experiment", help=f"MLflow experiment name (default: {experiment})")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")


def manifest_summary(manifest: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(params, tags) describing a manifest CSV without any of its paths or header fields.

    Params: ``dataset.manifest_sha256``, ``dataset.rows`` and ``dataset.rows.<split>``,
    ``dataset.labels.<label>`` counts. Tags: ``setting`` (the dataset name), ``artefact`` (most
    common non-empty ``artefact`` value, phantom and digits manifests).
    """
    import pandas as pd

    # Here, not at the top: the models package imports torch, and the CLI imports this module for --help.
    from ravl_med.models.weights import file_sha256

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    params: dict[str, Any] = {"dataset.manifest_sha256": file_sha256(manifest), "dataset.rows": len(table)}
    for column, name in (("split", "rows"), ("label", "labels")):
        if column in table:
            for value, count in table[column].value_counts().sort_index().items():
                params[f"dataset.{name}.{value or 'none'}"] = int(count)
    tags = {"setting": dataset_name(manifest).split("/", 1)[1]}
    if "artefact" in table:
        values = table["artefact"][table["artefact"] != ""]
        if len(values):
            tags["artefact"] = str(values.value_counts().index[0])
    return params, tags
