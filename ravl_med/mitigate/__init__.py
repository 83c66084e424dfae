"""RaVL stage 2: region-aware fine-tuning and the mitigation baselines.

* :mod:`.losses`: :class:`RegionAwareLoss` (L_CLIP, L_R, L_A), open_clip call style.
* :mod:`.regions`: stage-1 medoids (:class:`Stage1Medoids`, ``medoids.npz``) and nearest-medoid
  labelling of training regions.
* :mod:`.methods`: objectives and samplers of ``ravl``, ``standard``, ``upsampled``, ``vl_erm``,
  ``vl_gdro``, ``spurious_aware`` for :class:`~ravl_med.models.training.Trainer`.
* :mod:`.run`: :func:`run_mitigation` (``ravl-med mitigate``).

Heavy (torch) submodules are imported on first attribute access.
"""

from __future__ import annotations

import importlib

__all__ = [
    "METHODS",
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

_HOMES = {
    "RegionAwareLoss": "losses", "region_text_terms": "losses",
    "Stage1Medoids": "regions", "label_training_regions": "regions", "stage1_medoids": "regions",
    "training_region_labels": "regions", "run_mitigation": "run",
}


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(f".{_HOMES.get(name, 'methods')}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
