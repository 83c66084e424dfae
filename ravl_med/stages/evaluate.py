"""The evaluation stage: stage-2 metrics of a (mitigated) model, the same numbers for every method.

Image level: zero-shot accuracy over all test images and the worst (class x spurious feature
present/absent) group's accuracy, with the per-group table (:class:`~ravl_med.evaluate.GroupAccuracy`).
Region level (when the core regions are given): each core region is classified zero-shot on its own
embedding (from :func:`~ravl_med.models.embed.embed_dataset`) and compared with its image's label;
overall and worst-group accuracy over core regions, a region's group being its image's group.

Core regions are those overlapping the finding (:func:`core_regions_from_masks`): the finding mask,
or the lung mask for "no finding" images (which have no finding mask).

Images (and regions of images) whose label is not one of ``classes`` (label -1) are left out of every
number, as in :func:`~ravl_med.evaluate.group_accuracy_table`.

:func:`evaluate_model` takes a loaded model and the feature flags; :func:`run_evaluation` loads a
saved model, reads one manifest split and finds the flags (ground truth, else the audit) and the
core regions (masks) itself: what the mitigation stage and the benchmark call.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl_med.evaluate.groups import GroupAccuracy

__all__ = ["EvaluationResult", "core_regions_from_masks", "evaluate_model", "run_evaluation"]


@dataclass(frozen=True)
class EvaluationResult:
    """Stage-2 metrics of one model on one split.

    Attributes:
        images: image-level :class:`GroupAccuracy` (zero-shot prediction per image).
        regions: core-region :class:`GroupAccuracy`, ``None`` without core regions.
        labels, predictions: (N,) int64 image labels (-1: unknown) and zero-shot predictions.
        feature: name of the feature defining the groups (manifest ``artefact``, or ``audit_cluster``).
        groups_from: ``"ground truth"`` or ``"audit"`` (where feature presence came from); ``None``
            when the caller gave the flags.
        n_feature_present: images carrying the feature.
    """

    images: GroupAccuracy
    regions: GroupAccuracy | None
    labels: np.ndarray
    predictions: np.ndarray
    feature: str | None = None
    groups_from: str | None = None
    n_feature_present: int | None = None

    @property
    def image_accuracy(self) -> float:
        return self.images.overall

    @property
    def image_worst_group(self) -> float:
        return self.images.worst_group

    @property
    def region_accuracy(self) -> float | None:
        return None if self.regions is None else self.regions.overall

    @property
    def region_worst_group(self) -> float | None:
        return None if self.regions is None else self.regions.worst_group

    @property
    def n_images(self) -> int:
        return self.images.count

    @property
    def n_core_regions(self) -> int | None:
        return None if self.regions is None else self.regions.count

    def to_json(self) -> dict[str, Any]:
        """The summary written to ``evaluation.json`` (no per-image arrays, no tables)."""
        keys = ("image_accuracy", "image_worst_group", "region_accuracy", "region_worst_group", "n_images",
                "n_core_regions", "feature", "groups_from", "n_feature_present")
        return {key: getattr(self, key) for key in keys}

    def write(self, folder: str | Path) -> None:
        """``evaluation.json`` and ``groups.csv`` (the image group table) in ``folder``."""
        folder = Path(folder)
        self.images.by_group.to_csv(folder / "groups.csv", index=False)
        (folder / "evaluation.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")


def core_regions_from_masks(dataset, region_boxes, region_image, root: str | Path, *, model_side: int | None = None,
                            finding_column: str = "mask_finding", fallback_column: str = "lung_mask",
                            rule: str = "either", threshold: float = 0.25) -> np.ndarray:
    """Which regions overlap the finding: the image's finding mask, else (no finding) its lung mask.

    Args:
        dataset: the :class:`~ravl_med.data.dataset.RadiographDataset` (its ``table`` has the mask
            columns and ``path``; its ``ingest_config`` maps masks like the images).
        region_boxes: (M, 4) boxes; in ingested-image pixels, or in model-input pixels when
            ``model_side`` is given (as :func:`embed_dataset` returns them: scaled by N / S).
        region_image: (M,) index into the dataset of each region's image.
        root: folder that relative mask paths are resolved against (the manifest's folder).
        model_side: the model input side N, to bring the boxes back to the ingested S x S frame.
        finding_column, fallback_column: manifest columns of the finding and fallback masks.
        rule, threshold: :func:`~ravl_med.discover.metrics.region_overlaps_mask` settings.

    Returns:
        (M,) bool. An image without either mask has no core region.
    """
    from ravl_med.data.masks import ingested_masks
    from ravl_med.discover.metrics import region_overlaps_mask

    table = dataset.table
    for column in (finding_column, fallback_column):
        if column not in table.columns:
            raise ValueError(f"the dataset's manifest has no {column!r} column")
    side = dataset.ingest_config.image_size
    boxes = np.asarray(region_boxes, dtype=np.float64).reshape(-1, 4)
    if model_side is not None:
        boxes = boxes * (side / float(model_side))
    masks = ingested_masks(table, [finding_column, fallback_column], dataset.ingest_config, root)
    return region_overlaps_mask(boxes, region_image, masks, rule=rule, threshold=threshold)


def evaluate_model(model, preprocess, tokenizer, dataset, classes: Sequence[str], templates, feature_present,
                   core_regions=None, batch_size: int = 64, *, device: str | torch.device = "cpu",
                   n_boot: int = 1000, seed: int = 0, spurious_class: str | None = None,
                   embeddings=None) -> EvaluationResult:
    """Stage-2 metrics of one model on a test split (the same call for every mitigation method).

    Args:
        model, preprocess, tokenizer: the model (open_clip ``CLIP`` / ``HybridCLIP``), its
            :class:`RadiographPreprocess` and tokenizer.
        dataset: the test :class:`~ravl_med.data.dataset.RadiographDataset`.
        classes: C class names; templates: zero-shot prompt templates.
        feature_present: (N,) bool, the spurious feature per image (groups = class x present).
        core_regions: (M,) bool over the regions of ``embed_dataset(model, preprocess, dataset)``
            (image by image, as the dataset's ``regions``), or None for image metrics only.
        batch_size: images per forward.
        device: where the model runs (its mode is restored after).
        n_boot, seed: bootstrap of the image group table (the region table has no intervals).
        spurious_class: adds ``predicted_spurious`` to the image table.
        embeddings: a precomputed fp32 :class:`EmbeddingSet` of this model and dataset to reuse for
            the regions (else :func:`embed_dataset` runs, without a cache).

    Returns:
        the :class:`EvaluationResult` (``regions`` is ``None`` without ``core_regions``).
    """
    from ravl_med.models.zeroshot import class_text_embeddings, zero_shot_predictions

    present = np.asarray(feature_present)
    if present.shape != (len(dataset),):
        raise ValueError(f"feature_present has shape {present.shape}, expected ({len(dataset)},)")
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    if hasattr(preprocess, "to"):
        preprocess.to(device)
    try:
        with torch.no_grad():
            text = class_text_embeddings(model, tokenizer, list(classes), templates, device=device).float()
        labels, predictions = zero_shot_predictions(model, preprocess, text, dataset, device=device,
                                                    batch_size=batch_size)
        images = GroupAccuracy(labels=labels, predictions=predictions, feature_present=present, classes=classes,
                               spurious_class=spurious_class, n_boot=n_boot, seed=seed)
        regions = None
        if core_regions is not None:
            if embeddings is None:
                from ravl_med.models.embed import embed_dataset

                embeddings = embed_dataset(model, preprocess, dataset, batch_size=batch_size, device=device,
                                           progress=False, precision="fp32")
            vectors = torch.from_numpy(np.asarray(embeddings.region_embeddings, dtype=np.float32))
            region_predictions = (vectors @ text.cpu().T).argmax(dim=1).numpy()
            regions = GroupAccuracy.of_regions(region_predictions=region_predictions,
                                               region_image=embeddings.region_image, labels=labels,
                                               feature_present=present, scored=core_regions, classes=classes)
    finally:
        model.train(was_training)
    return EvaluationResult(images=images, regions=regions, labels=labels, predictions=predictions)


def run_evaluation(backbone: str, checkpoint, manifest: str | Path, ingest, classes: Sequence[str], templates, *,
                   sha256: str | None = None, split: str = "test", spurious_class: str | None = None,
                   stage1_checkpoint=None, stage1_sha256: str | None = None, medoids=None, regions: bool = True,
                   batch_size: int = 64, device: str = "cpu", n_boot: int = 1000, seed: int = 0,
                   embeddings=None) -> EvaluationResult:
    """:func:`evaluate_model` of a saved model on one split of a manifest, with the groups found for you.

    Feature presence per image (the groups' second half) comes from the manifest's ground truth
    (``artefact_present``, phantom and digits data) when it has it; otherwise from the audit: an
    image carries the feature when one of its regions, embedded with the stage-1 model, is nearest
    to a spurious stage-1 medoid (``stage1_checkpoint`` and ``medoids`` needed). Core regions (the
    region metrics) need the manifest's finding and lung masks; without them only image metrics
    are computed.

    Args:
        backbone, checkpoint, sha256: the model to evaluate (``create_backbone`` arguments).
        manifest, ingest: the manifest CSV and the ingestion config (with the region grid).
        classes, templates: zero-shot classes and prompt templates.
        split: manifest split to evaluate.
        spurious_class: adds ``predicted_spurious`` to the image table.
        stage1_checkpoint, stage1_sha256, medoids: the audited model and its
            :class:`~ravl_med.discover.medoids.Stage1Medoids`, for presence from the audit.
        regions: compute the core-region metrics when the masks allow.
        batch_size, device, n_boot, seed: as :func:`evaluate_model`.
        embeddings: fp32 one-pass region embeddings of this model on this split, already computed
            (the benchmark passes the audit's: the split is embedded once), or ``None``.

    Returns:
        the :class:`EvaluationResult` with ``feature``, ``groups_from`` and ``n_feature_present``.

    Raises:
        ValueError: the split is empty, or presence is unknown and no audit was given.
    """
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.data.manifest import Manifest, empty_split_message, feature_presence
    from ravl_med.models.registry import create_backbone

    table = Manifest.read(manifest, classes=list(classes))
    dataset = RadiographDataset(table, ingest, list(classes), split=split)
    if not len(dataset):
        raise ValueError(empty_split_message(manifest, split, classes))
    found = feature_presence(table, dataset.keys)
    if found is not None:
        present, feature, source = found[0], found[1], "ground truth"
    else:
        if stage1_checkpoint is None or medoids is None:
            raise ValueError(f"{manifest} does not say which images carry the feature (no artefact_present "
                             "column); give the stage-1 model and the audit's medoids to find it")
        from ravl_med.mitigate.regions import (
            images_with_spurious_region,
            training_region_labels,
        )

        stage1, stage1_pre, _ = create_backbone(backbone, checkpoint=stage1_checkpoint, sha256=stage1_sha256,
                                                device=device)
        flags = training_region_labels(stage1, stage1_pre, dataset, medoids, batch_size=batch_size, device=device)
        present = images_with_spurious_region(dataset.keys, flags)
        feature, source = "audit_cluster", "audit"
        del stage1
    model, preprocess, tokenizer = create_backbone(backbone, checkpoint=checkpoint, sha256=sha256, device=device)
    core = None
    if regions and {"mask_finding", "lung_mask"} <= set(dataset.table.columns):
        if embeddings is None:
            from ravl_med.models.embed import embed_dataset

            embeddings = embed_dataset(model, preprocess, dataset, batch_size=batch_size, device=device,
                                       progress=False, precision="fp32")
        core = core_regions_from_masks(dataset, embeddings.region_boxes, embeddings.region_image,
                                       Path(manifest).parent, model_side=preprocess.image_size)
    result = evaluate_model(model, preprocess, tokenizer, dataset, classes, templates, present, core, batch_size,
                            device=device, n_boot=n_boot, seed=seed, spurious_class=spurious_class,
                            embeddings=embeddings)
    return dataclasses.replace(result, feature=feature, groups_from=source, n_feature_present=int(present.sum()))
