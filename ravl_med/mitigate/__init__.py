"""RaVL stage 2: region-aware fine-tuning and the mitigation baselines.

* :mod:`.losses`: :class:`RegionAwareLoss` (L_CLIP, L_R, L_A), open_clip call style.
* :mod:`.regions`: nearest-medoid labelling of training regions (the stage-1 medoids,
  :class:`Stage1Medoids` in ``medoids.npz``, come from :mod:`ravl_med.discover.medoids`).
* :mod:`.methods`: objectives and samplers of ``ravl``, ``standard``, ``upsampled``, ``vl_erm``,
  ``vl_gdro``, ``spurious_aware`` for :class:`~ravl_med.models.training.Trainer`.
* :mod:`.run`: :func:`run_mitigation` (``ravl-med mitigate``).
"""

from __future__ import annotations

from ravl_med.discover.medoids import Stage1Medoids, stage1_medoids

from .losses import RegionAwareLoss, region_text_terms
from .methods import (
    GroupBalancedSampler,
    GroupDROObjective,
    MitigationTrainer,
    RaVLObjective,
    SpuriousAwareObjective,
    VLERMObjective,
    build_method,
    stage1_groups,
)
from .regions import label_training_regions, training_region_labels
from .run import run_mitigation

__all__ = [
    "GroupBalancedSampler",
    "GroupDROObjective",
    "MitigationTrainer",
    "RaVLObjective",
    "RegionAwareLoss",
    "SpuriousAwareObjective",
    "Stage1Medoids",
    "VLERMObjective",
    "build_method",
    "label_training_regions",
    "region_text_terms",
    "run_mitigation",
    "stage1_groups",
    "stage1_medoids",
    "training_region_labels",
]
