"""Every MLflow metric name the package logs, defined once.

MLflow metric names may only hold letters, digits, ``_ - . /``, spaces (and ``:`` outside Windows),
so a per-group name such as ``test/acc/group=pneumothorax|drain=1`` is not legal. The scheme::

    {split}/acc/group/{class}/{feature}-{0|1}      e.g.  test/acc/group/pneumothorax/chest_drain-1
    {split}/acc/overall                            accuracy over all images with a known label
    {split}/acc/worst_group                        lowest accuracy over non-empty groups
    {split}/region_acc/overall|worst_group         the same over core regions

where ``class`` and ``feature`` have every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``
and ``1`` means the feature is present.

The parent run of a benchmark or demo also carries one column per method, so the runs table compares
methods without expanding the child runs (values: the mean over the valid settings, see
:data:`SUMMARY_OVER`)::

    {split}/acc/overall|worst_group/{method}       image-level, per mitigation method (and ``stage1``)
    discovery/precision_at_{k}/{method}            per discovery method, where the setting has ground truth
"""

from __future__ import annotations

import re

__all__ = [
    "CLUSTERS_KEPT",
    "PROVENANCE_PREFIX",
    "SHORTCUT_GAP",
    "STEP_METRICS",
    "TRAIN_IMAGES_PER_S",
    "TRAIN_LOSS",
    "TRAIN_SECONDS",
    "TRAIN_STEPS",
    "SUMMARY_OVER",
    "SUMMARY_VALID_SETTINGS",
    "accuracy",
    "attribute_metric_name",
    "component",
    "discovery_precision",
    "group_metric_name",
    "method_accuracy",
    "metric_key",
    "precision_at",
    "region_accuracy",
]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_.\-/ ]+")

#: Mean training loss of an epoch (nats), its throughput, optimizer steps so far, wall time of a fit.
TRAIN_LOSS, TRAIN_IMAGES_PER_S, TRAIN_STEPS, TRAIN_SECONDS = (
    "train/loss", "train/images_per_s", "train/steps", "train/seconds")
#: MLflow names of the trainer's per-step values (others become ``train/<name>``).
STEP_METRICS = {"loss": "train/loss_step", "lr": "train/lr"}
#: acc(spurious class | feature) - acc(spurious class | no feature) of a stage-1 model on the test split.
SHORTCUT_GAP = "test/shortcut_gap"
#: Clusters a discovery method kept.
CLUSTERS_KEPT = "clusters_kept"
#: Params of a benchmark's parent run saying what its per-method columns are: the statistic over the
#: settings (``"mean over valid settings"``) and how many settings entered it.
SUMMARY_OVER, SUMMARY_VALID_SETTINGS = "summary.over", "summary.valid_settings"
#: Params recording how a result was computed: ``provenance.threads``, ``provenance.versions.torch``, ...
PROVENANCE_PREFIX = "provenance"


def metric_key(name: str) -> str:
    """``name`` made a legal MLflow metric/param key (illegal characters -> ``_``, 250 chars)."""
    key = _UNSAFE_KEY.sub("_", name).strip("/") or "_"
    return key[:250]


def component(value: str) -> str:
    """One path component of a metric name: characters outside ``[A-Za-z0-9_.-]`` -> ``_``."""
    return _UNSAFE.sub("_", str(value).strip()) or "_"


def accuracy(split: str, which: str) -> str:
    """``{split}/acc/{which}``; ``which`` is ``overall`` or ``worst_group``."""
    return f"{component(split)}/acc/{which}"


def region_accuracy(split: str, which: str) -> str:
    """``{split}/region_acc/{which}``: accuracy over core regions (``overall`` or ``worst_group``)."""
    return f"{component(split)}/region_acc/{which}"


def group_metric_name(split: str, class_name: str, feature: str, present: bool) -> str:
    """The flat metric name of a (class, feature present/absent) group's accuracy.

    ``group_metric_name("test", "pneumothorax", "chest drain", True)`` is
    ``"test/acc/group/pneumothorax/chest_drain-1"``.
    """
    return f"{component(split)}/acc/group/{component(class_name)}/{component(feature)}-{int(bool(present))}"


def attribute_metric_name(split: str, attribute: str, value: str) -> str:
    """``{split}/acc/attribute/{attribute}/{value}``: zero-shot accuracy of one value of a known attribute."""
    return f"{component(split)}/acc/attribute/{component(attribute)}/{component(value)}"


def precision_at(k: int) -> str:
    """``precision_at_{k}``: Precision@k of a discovery method's top cluster."""
    return f"precision_at_{k}"


def method_accuracy(split: str, which: str, method: str) -> str:
    """``{split}/acc/{which}/{method}``: a method's image-level accuracy in a benchmark's parent run.

    ``method_accuracy("test", "worst_group", "ravl")`` is ``"test/acc/worst_group/ravl"``.
    """
    return f"{accuracy(split, which)}/{component(method)}"


def discovery_precision(k: int, method: str) -> str:
    """``discovery/precision_at_{k}/{method}``: a discovery method's Precision@k in a benchmark's parent run."""
    return f"discovery/{precision_at(k)}/{component(method)}"
