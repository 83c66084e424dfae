"""Experiment tracking with MLflow: every fine-tuning and audit run reviewable in one store.

Tracking is an observer of the stages: a stage returns a typed result and
:func:`~ravl_med.tracking.observe.log` writes it to a run (the same metrics whoever ran the stage).
One :class:`Tracker` per command invocation: an MLflow experiment per dataset or benchmark, a
parent run for the invocation and nested child runs (:meth:`Tracker.child`) per method, setting or
seed, with tags (``method``, ``setting``, ``artefact``, ``spurious_class``, ``strength``, ``seed``)
that make ``mlflow.search_runs(filter_string="tags.method = 'ravl'")`` filters natural.

Where it logs (first that applies): the ``tracking_uri`` argument (``--tracking-uri``), the
``MLFLOW_TRACKING_URI`` variable, else a local SQLite store ``sqlite:///<folder>/mlruns.db`` with
artifacts under ``<folder>/mlartifacts`` (no server needed); the folder is ``$RAVL_TRACKING_DIR``,
else the working directory.

Metric names: :mod:`ravl_med.tracking.names` (every name the package logs, defined once). The parent
run of a benchmark or demo has one column per method (``test/acc/worst_group/<method>``, ...), so the
runs table compares methods without expanding it.

The UI. Every experiment the tracker creates or uses is tagged ``mlflow.experimentKind =
custom_model_development`` (a model-training experiment, not a GenAI one). MLflow 3.x UIs with the
"GenAI / Machine learning" switch (3.17) choose the view from the page address instead, and show a
metric column only once someone picks it: :meth:`Tracker.ui_url` adds ``?workflowType=machine_learning``
and, after :func:`~ravl_med.tracking.observe.log_benchmark_summary`, the key of a saved view of the runs
table (:meth:`Tracker.save_runs_view`) that picks the per-method columns.

Server loss. A remote server that does not answer when a run starts is waited for (up to
:data:`~ravl_med.tracking.store.SERVER_WAIT_S`, 60 s: it may be restarting). When it still does not
answer, or stops answering mid-run, the tracker does not raise: it warns once, opens the same runs
in the local SQLite store, replays everything already logged to them (each run keeps a journal of
its calls) and continues there. Such runs carry the tags
``ravl.store = local-fallback``, ``ravl.fallback_from`` (the remote URI) and
``ravl.remote_run_id``. A local store that cannot be written (a read-only working directory and no
``RAVL_TRACKING_DIR``) is a :class:`~ravl_med.tracking.store.TrackingError`: one line from the CLI.

Privacy: only what callers pass is logged; the commands pass configs, digests, counts, metrics
and the outputs that are already free of DICOM header fields and image paths.
"""

from ravl_med.tracking.names import group_metric_name, metric_key
from ravl_med.tracking.store import (
    DEFAULT_ARTIFACT_DIR,
    DEFAULT_DB,
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    MODEL_TRAINING_VIEW_QUERY,
    SERVER_WAIT_S,
    TRACKING_DIR_ENV,
    TrackedRun,
    Tracker,
    TrackingError,
    code_version,
    flatten,
    image_embedder_class,
    local_store_path,
    optional_tracker,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_ARTIFACT_DIR",
    "DEFAULT_DB",
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "MODEL_TRAINING_VIEW_QUERY",
    "SERVER_WAIT_S",
    "TRACKING_DIR_ENV",
    "TrackedRun",
    "Tracker",
    "TrackingError",
    "code_version",
    "flatten",
    "group_metric_name",
    "local_store_path",
    "metric_key",
    "optional_tracker",
    "resolve_tracking_uri",
]


def __getattr__(name: str):
    # Models logged before the pt2 format pickled their module class by reference as
    # ravl_med.tracking.ImageEmbedderModule; loading them needs it here. It is built on first use
    # because it needs torch (the CLI imports this package without torch).
    if name == "ImageEmbedderModule":
        return image_embedder_class()
    raise AttributeError(name)
