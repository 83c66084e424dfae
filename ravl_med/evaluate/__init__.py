"""Group metrics: accuracy per (class x spurious feature present/absent) group, the ground floor.

:class:`GroupAccuracy` is the one home of overall and worst-group accuracy (with the group table
and its bootstrap intervals, :func:`group_accuracy_table`); :func:`shortcut_learned` is the validity
rule of a setting (the fine-tuned model must have learned the planted shortcut). Pure numpy/pandas:
nothing here reads files or models. Evaluating a model is the evaluation stage
(:mod:`ravl_med.stages.evaluate`).
"""

from ravl_med.evaluate.groups import (
    GroupAccuracy,
    group_accuracy_table,
    overall_accuracy,
    shortcut_gaps,
    shortcut_learned,
    worst_group_accuracy,
)
from ravl_med.evaluate.intervals import MeanInterval, mean_interval

__all__ = [
    "GroupAccuracy",
    "MeanInterval",
    "group_accuracy_table",
    "mean_interval",
    "overall_accuracy",
    "shortcut_gaps",
    "shortcut_learned",
    "worst_group_accuracy",
]
