"""The MLflow store: one :class:`Tracker` (parent run) per command invocation, child runs below it.

See :mod:`ravl_med.tracking` for where runs are logged and how a lost server falls back to the
local store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from ravl_med.tracking import names
from ravl_med.tracking.names import group_metric_name, metric_key

__all__ = [
    "DEFAULT_ARTIFACT_DIR",
    "DEFAULT_DB",
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "MODEL_TRAINING_VIEW_QUERY",
    "SAVED_VIEW_TAG_PREFIX",
    "SERVER_WAIT_S",
    "TRACKING_DIR_ENV",
    "TrackedRun",
    "Tracker",
    "TrackingError",
    "code_version",
    "flatten",
    "local_store_path",
    "optional_tracker",
    "resolve_tracking_uri",
]

logger = logging.getLogger(__name__)

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"
#: Param values longer than this go to ``params/long_params.json`` (MLflow's limit is 6000).
MAX_PARAM_LENGTH = 500
#: The experiment tag MLflow 3.x keeps an experiment's kind in (what the UI's kind selector writes), and
#: the kind of a model-training experiment (runs table with metric columns, not the GenAI view).
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
#: Query of an experiment page URL that opens the model-training view. MLflow 3.x UIs with a
#: "GenAI / Machine learning" switch (3.17: the sidebar) take the view from the URL, else from the
#: browser's last choice (default GenAI), not from the experiment's tag.
MODEL_TRAINING_VIEW_QUERY = "workflowType=machine_learning"
#: Experiment tags ``<prefix><id>`` hold the MLflow UI's saved views of the runs table (3.17: the "Views"
#: menu; ``viewStateShareKey=<id>`` in the page address opens one). The value is the UI's own envelope
#: ``{"name", "createdAt", "updatedAt" (ms), "state": <JSON text of the table state>}``; a UI that reads
#: another format ignores it and shows its default columns.
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: The environment variable naming the local store's folder (default: the working directory). Set it
#: where the working directory is read-only, e.g. in a hardened container (docker/compose.yaml).
TRACKING_DIR_ENV = "RAVL_TRACKING_DIR"
#: How long (seconds) a run waits for a tracking server that does not answer when it starts, before it
#: logs to the local store: a server that was restarting (or still starting) is back within a minute.
SERVER_WAIT_S = 60.0


class TrackingError(RuntimeError):
    """A store that cannot be used (e.g. a local store in a read-only folder); the message says what to do."""


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

    root = Path(__file__).resolve().parents[2]  # the checkout holding ravl_med/tracking/store.py
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__


def resolve_tracking_uri(uri: str | None = None, local_dir: str | Path | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<folder>/mlruns.db`` in :func:`local_folder`."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return _local_uri(local_dir)


def local_folder(local_dir: str | Path | None = None) -> Path:
    """The local store's folder: ``local_dir``, else ``$RAVL_TRACKING_DIR``, else the working directory."""
    return Path(local_dir or os.environ.get(TRACKING_DIR_ENV) or Path.cwd()).resolve()


def _unwritable(folder: Path, err: OSError) -> str:
    return (f"cannot write the local MLflow store in {folder} ({err.strerror or err}): set {TRACKING_DIR_ENV} "
            "to a writable folder, give --tracking-uri, or pass --no-tracking")


def _local_uri(local_dir: str | Path | None) -> str:
    """The local store's URI; nothing is created (the tracker makes the folder when it connects)."""
    return f"sqlite:///{local_folder(local_dir) / DEFAULT_DB}"


def local_store_path(uri: str) -> Path | None:
    """The database file (``sqlite:///...``) or folder (a path or ``file:`` URI) of a local store.

    ``None`` for any other scheme (a tracking server, a database server): nothing local to check.
    Relative paths are relative to the working folder, as MLflow reads them.
    """
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()
    if uri.startswith("file:"):
        return Path(urllib.parse.urlparse(uri).path).absolute()
    if "://" not in uri:
        return Path(uri).absolute()
    return None


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _store_lock(database: Path | None) -> Iterator[None]:
    """An inter-process lock on ``<database>.lock`` (nothing without a database).

    Raises:
        TrackingError: the database's folder cannot be created or written (e.g. a read-only working
            directory in a hardened container).
    """
    if database is None:
        yield
        return
    from filelock import FileLock

    lock = FileLock(str(database) + ".lock", timeout=600)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        raise TrackingError(_unwritable(database.parent, err)) from err
    try:
        yield
    finally:
        lock.release()


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


def image_embedder_class() -> type:
    """The picklable image-embedder module class (built on first use: importing torch is slow)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = _embedder_class()
        # Pickled by reference: make the class findable as ravl_med.tracking.ImageEmbedderModule.
        _EMBEDDER.__qualname__ = _EMBEDDER.__name__ = "ImageEmbedderModule"
        _EMBEDDER.__module__ = "ravl_med.tracking"
    return _EMBEDDER


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
        from ravl_med.evaluate.groups import overall_accuracy, worst_group_accuracy

        metrics: dict[str, float] = {}
        counted = table[table["count"] > 0]
        for row in counted.itertuples(index=False):
            metrics[group_metric_name(split, row[0], feature, bool(row.feature_present))] = float(row.accuracy)
        if len(counted):
            metrics[names.accuracy(split, "worst_group")] = worst_group_accuracy(table)
            metrics[names.accuracy(split, "overall")] = overall_accuracy(table)
        self.log_metrics(metrics, step)
        csv_path = self.tracker._staging_file(f"{names.component(split)}_groups.csv")
        table.to_csv(csv_path, index=False)
        self.tracker._do(self, "artifact", str(csv_path), "groups")
        self.log_dict(json.loads(table.to_json(orient="records")), f"groups/{names.component(split)}_groups.json")
        return metrics

    def log_model(self, model, preprocess, name: str = "model") -> None:
        """The image tower as an MLflow PyTorch model with a signature, at artifact path ``name``.

        Saved in MLflow's ``pt2`` format (a ``torch.export`` graph and its weights): loading it runs no
        pickled code and needs neither ravl_med nor the model's classes, and MLflow does not warn about
        pickle. Load it back with ``mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")``: a module
        mapping (B, 1, S, S) float32 images in [0, 1] to (B, D) unit-norm embeddings, any B, S the
        tower's input size (``preprocess.image_size``).
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        module = image_embedder_class()(model, preprocess).cpu().eval()
        side = int(getattr(preprocess, "image_size", 224))
        # Two images: torch.export keeps a dimension of size 1 static, so a batch of one would fix B = 1.
        example = torch.zeros(2, 1, side, side)
        with torch.no_grad():
            output = module(example).numpy()
        signature = infer_signature(example.numpy(), output)
        target = self.tracker._staging_dir() / name
        # The example traces the graph; as a tensor (not an array) MLflow does not also store it as
        # JSON (input_example.json and serving_input_example.json: 0.66 MB at S = 128, about 2 MB at 224).
        mlflow.pytorch.save_model(module, str(target), signature=signature, input_example=example,
                                  pip_requirements=["torch"], serialization_format="pt2")
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
            as the fallback when a remote server is lost; default :func:`local_folder`.
        server_wait_s: how long to wait for a remote server that does not answer at the start
            before falling back to the local store (default :data:`SERVER_WAIT_S`; a server lost
            mid-run costs seconds, not this).

    Raises:
        TrackingError: on entry or at a fallback, when the local store's folder cannot be written.

    Example::

        with Tracker("ravl-med/phantom", "audit", tags={"method": "ravl"}) as run:
            run.log_config(config)
            with run.child("seed-0", tags={"seed": 0}) as child:
                child.log_metrics({"test/acc/worst_group": 0.5})
    """

    def __init__(self, experiment: str, run_name: str, *, tags: Mapping[str, Any] | None = None,
                 tracking_uri: str | None = None, local_dir: str | Path | None = None,
                 server_wait_s: float | None = None) -> None:
        super().__init__(self, run_name, tags or {}, None)
        self.experiment = experiment
        self.local_dir = local_folder(local_dir)
        self.server_wait_s = SERVER_WAIT_S if server_wait_s is None else server_wait_s
        self.tracking_uri = resolve_tracking_uri(tracking_uri, self.local_dir)
        self.fallback_from: str | None = None
        self.runs: list[TrackedRun] = []
        self._client = None
        self._experiment_id = ""
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._n_staged = 0
        #: The key of the runs-table view saved by :meth:`save_runs_view` (``None``: none).
        self.runs_view: str | None = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def store(self) -> str:
        """``"remote"``, ``"local"`` or ``"local-fallback"``."""
        if self.fallback_from:
            return "local-fallback"
        return "remote" if _is_remote(self.tracking_uri) else "local"

    @property
    def experiment_id(self) -> str:
        """The experiment's id in the store in use (``""`` before the run opens)."""
        return self._experiment_id

    def ui_url(self, ui: str | None = None) -> str | None:
        """The experiment's runs table in the MLflow UI: the model-training view, opened at the view
        saved last by :meth:`save_runs_view` (if any).

        Args:
            ui: the UI's address (e.g. ``http://127.0.0.1:5000`` of ``mlflow ui``); default the
                tracking server's own, ``None`` for a local store without one.
        """
        base = ui or (self.tracking_uri if _is_remote(self.tracking_uri) else None)
        if base is None or not self._experiment_id:
            return None
        view = f"&viewStateShareKey={self.runs_view}" if self.runs_view else ""
        return f"{base.rstrip('/')}/#/experiments/{self._experiment_id}/runs?{MODEL_TRAINING_VIEW_QUERY}{view}"

    def save_runs_view(self, view_id: str, name: str, metrics: Sequence[str]) -> None:
        """A saved view of the experiment's runs table whose metric columns are ``metrics``, in this order.

        The UI shows only the metric columns a person picked (none by default); this view picks them,
        wide enough for their names, right after the run name and start time (MLflow 3.17 puts the
        other default columns, such as Duration, after them). It is listed under "Views" by ``name``
        and opened by :meth:`ui_url`. Saving ``view_id`` again replaces it.

        Args:
            view_id: the view's key (letters, digits, ``_ - .``); name: its title in the UI.
            metrics: metric names, e.g. ``["test/acc/worst_group/ravl", ...]``.
        """
        columns = [f"metrics.`{key}`" for key in metrics]
        # Wide enough for the whole name (about 7 px a character in the header), within reason.
        widths = {column: min(320, 40 + 7 * len(key)) for column, key in zip(columns, metrics, strict=True)}
        state = json.dumps({"selectedColumns": columns, "columnOrder": columns, "columnWidths": widths})
        now = int(time.time() * 1000)
        envelope = json.dumps({"name": name, "createdAt": now, "updatedAt": now, "state": state})
        self._do(self, "experiment_tag", f"{SAVED_VIEW_TAG_PREFIX}{view_id}", envelope)
        self.runs_view = view_id

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
            self._connect_late(err)
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
            # Every experiment used is tagged a model-training one: MLflow 3.x UIs that read the tag may
            # otherwise open it in the GenAI view (no metric columns). 3.17 reads the page address
            # instead (ui_url). A kind already set (by a person, in the UI) is left as it is.
            if experiment is None:
                location = None
                if database is not None:  # artifacts beside the database they belong to
                    location = (database.parent / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
                elif not _is_remote(uri):
                    location = (self.local_dir / DEFAULT_ARTIFACT_DIR).resolve().as_uri()
                experiment_id = client.create_experiment(self.experiment, artifact_location=location,
                                                         tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
            else:
                experiment_id = experiment.experiment_id
                if EXPERIMENT_KIND_TAG not in experiment.tags:
                    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
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
            now = int(time.time() * 1000)
            client.log_batch(run.run_id, metrics=[Metric(k, v, now, args[1]) for k, v in args[0].items()])
        elif op == "tags":
            client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in args[0].items()])
        elif op == "artifact":
            client.log_artifact(run.run_id, args[0], args[1])
        elif op == "artifacts":
            client.log_artifacts(run.run_id, args[0], args[1])
        elif op == "experiment_tag":
            client.set_experiment_tag(self._experiment_id, args[0], args[1])
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

    def _connect_late(self, err: BaseException) -> None:
        """Connects to a remote server that did not answer at the start, once it answers within
        ``server_wait_s`` (polled every 2 s); else falls back to the local store."""
        remote, deadline = self.tracking_uri, time.monotonic() + self.server_wait_s
        if self.server_wait_s > 0:
            logger.warning("tracking server %s does not answer; waiting up to %.0f s for it", remote,
                           self.server_wait_s)
        while time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            if not _server_alive(remote):
                continue
            try:
                self._connect(remote)
                return
            except Exception as again:
                if not self._lost(again):
                    raise
                err = again
        self._fall_back(err, replay=False)

    def _fall_back(self, err: BaseException, *, replay: bool) -> None:
        remote, local = self.tracking_uri, _local_uri(self.local_dir)
        try:
            self._connect(local)
        except TrackingError as unusable:
            raise TrackingError(f"tracking server {remote} unreachable, and {unusable}") from err
        message = f"tracking server {remote} unreachable ({type(err).__name__}); logging to the local store {local} instead"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        logger.warning(message)
        self.fallback_from, self.tracking_uri = remote, local
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


