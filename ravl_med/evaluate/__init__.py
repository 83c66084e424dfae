"""Evaluation: accuracy per (class x spurious feature present/absent) group, stage-2 metrics, the benchmark.

:func:`group_accuracy_table` is the table the evaluation framework reads (with bootstrap
intervals), :func:`worst_group_accuracy` the mitigation metric, and :func:`shortcut_learned` the
validity rule of a setting (the fine-tuned model must have learned the planted shortcut).
:func:`evaluate_model` / :func:`evaluate_split` compute the stage-2 metrics of any model, and
:mod:`ravl_med.evaluate.benchmark` runs phantom settings end to end (imported on its own: it
pulls in every stage).
"""

from ravl_med.evaluate.groups import (
    group_accuracy_table,
    shortcut_gaps,
    shortcut_learned,
    worst_group_accuracy,
)
from ravl_med.evaluate.mitigation import (
    accuracy_summary,
    core_regions_from_masks,
    evaluate_model,
    evaluate_split,
    region_accuracy_summary,
)

__all__ = [
    "accuracy_summary",
    "core_regions_from_masks",
    "evaluate_model",
    "evaluate_split",
    "group_accuracy_table",
    "region_accuracy_summary",
    "shortcut_gaps",
    "shortcut_learned",
    "worst_group_accuracy",
]
