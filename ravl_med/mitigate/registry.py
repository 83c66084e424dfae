"""The mitigation methods: the one list that config validation, ``--method`` choices and the runner read.

Light on purpose (no torch): the command-line parser reads it for ``--help``. The objectives and
samplers behind each name are built by :func:`ravl_med.mitigate.methods.build_method`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MITIGATION_METHODS", "MitigationMethodSpec", "labelled_methods"]


@dataclass(frozen=True)
class MitigationMethodSpec:
    """What a method needs and does.

    Attributes:
        reads_region_labels: the method needs every training region labelled spurious or relevant by
            the audit's stage-1 medoids (and so the audit folder and the stage-1 model).
        summary: one line for ``--help`` and the docs.
        counterfactual: ``"audit"``: training images go through the counterfactual swaps of the audit's
            spurious regions (:mod:`ravl_med.mitigate.counterfactual`); ``"audit_paste"``: the same regions
            pasted only, from carriers outside the tied class(es); ``"oracle"``: swaps of the ground-truth
            artefact masks; ``None``: images as ingested.
        oracle: the method reads ground truth (masks): a ceiling, reported as such, never a method to use.
    """

    reads_region_labels: bool
    summary: str
    counterfactual: str | None = None
    oracle: bool = False


#: Name -> spec, RaVL first (the order of tables and of ``--methods`` defaults).
MITIGATION_METHODS: dict[str, MitigationMethodSpec] = {
    "ravl": MitigationMethodSpec(True, "RaVL's region-aware loss (L_CLIP + region-text terms on labelled regions)"),
    "standard": MitigationMethodSpec(False, "the fine-tuning recipe's own contrastive loss"),
    "upsampled": MitigationMethodSpec(True, "the recipe's loss on (class x spurious region) groups sampled evenly"),
    "vl_erm": MitigationMethodSpec(False, "cross-entropy over the class texts (zero-shot logits)"),
    "vl_gdro": MitigationMethodSpec(True, "GroupDRO over the (class x spurious region) groups"),
    "spurious_aware": MitigationMethodSpec(False, "the recipe's loss plus a push away from texts naming the feature"),
    "counterfactual": MitigationMethodSpec(
        True, "the recipe's loss on counterfactual images: the audit's spurious regions pasted into / removed from "
        "classes until the feature no longer predicts the class", "audit"),
    "counterfactual_upsampled": MitigationMethodSpec(
        True, "counterfactual images, (class x spurious region) groups sampled evenly", "audit"),
    "counterfactual_ravl": MitigationMethodSpec(True, "counterfactual images with RaVL's region-aware loss", "audit"),
    "counterfactual_paste": MitigationMethodSpec(
        True, "the recipe's loss on images of other classes given the audit's spurious regions of carriers outside "
        "the tied class (nothing removed, no region of the tied class moved)", "audit_paste"),
    "counterfactual_paste_upsampled": MitigationMethodSpec(
        True, "paste-only counterfactual images, (class x spurious region) groups sampled evenly", "audit_paste"),
    "oracle_counterfactual": MitigationMethodSpec(
        False, "ORACLE (reads the ground-truth artefact masks; a ceiling, not a method): counterfactual images "
        "from the masks' pixels", "oracle", oracle=True),
}


def labelled_methods() -> tuple[str, ...]:
    """The methods that read the stage-1 region labels."""
    return tuple(name for name, spec in MITIGATION_METHODS.items() if spec.reads_region_labels)
