"""Stage-2 evaluation of a (mitigated) model: the same numbers for every mitigation method.

Image level: zero-shot accuracy over all test images and the worst (class x spurious feature
present/absent) group's accuracy, with the per-group table of :func:`group_accuracy_table`.
Region level (when the core regions are given): each core region is classified zero-shot on its own
embedding (from :func:`~ravl_med.models.embed.embed_dataset`) and compared with its image's label;
overall and worst-group accuracy over core regions, a region's group being its image's group.

Core regions are those overlapping the finding (:func:`core_regions_from_masks`): the finding mask,
or the lung mask for "no finding" images (which have no finding mask).

Images (and regions of images) whose label is not one of ``classes`` (label -1) are left out of every
number, as in :func:`group_accuracy_table`.

:func:`evaluate_model` takes a loaded model and the feature flags; :func:`evaluate_split` loads a
saved model, reads one manifest split and finds the flags (ground truth, else the audit) and the
core regions (masks) itself: what ``ravl-med mitigate`` and the benchmark call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl_med.evaluate.groups import group_accuracy_table, worst_group_accuracy

__all__ = ["accuracy_summary", "core_regions_from_masks", "evaluate_model", "evaluate_split", "region_accuracy_summary"]


def _bool_1d(name: str, values, length: int | None = None) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        array = array.astype(bool)
    if length is not None and len(array) != length:
        raise ValueError(f"{name} has length {len(array)}, expected {length}")
    return array


def accuracy_summary(labels, predictions, feature_present, classes: Sequence[str], *, n_boot: int = 1000,
                     seed: int = 0, spurious_class: str | None = None) -> dict[str, Any]:
    """Overall and worst-group accuracy with the group table, from labels and predictions.

    Returns:
        ``overall`` (accuracy over rows with a known label; NaN when there is none),
        ``worst_group`` (:func:`worst_group_accuracy` of the table), ``table`` (the DataFrame)
        and ``count`` (rows with a known label).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    present = _bool_1d("feature_present", feature_present, len(labels))
    if len(predictions) != len(labels):
        raise ValueError(f"labels and predictions differ in length: {len(labels)}, {len(predictions)}")
    table = group_accuracy_table(labels, predictions, present, classes, spurious_class=spurious_class,
                                 n_boot=n_boot, seed=seed)
    known = (labels >= 0) & (labels < len(classes))
    count = int(known.sum())
    overall = float((labels[known] == predictions[known]).mean()) if count else float("nan")
    return {"overall": overall, "worst_group": worst_group_accuracy(table), "table": table, "count": count}


def region_accuracy_summary(region_predictions, region_image, labels, feature_present, core_regions,
                            classes: Sequence[str], *, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """Accuracy of core regions: a region is right when its prediction is its image's label.

    Args:
        region_predictions: (M,) predicted class per region.
        region_image: (M,) image index of each region.
        labels: (N,) image labels; feature_present: (N,) bool per image.
        core_regions: (M,) bool, the regions scored.

    Returns:
        as :func:`accuracy_summary`, over the core regions (``count``: core regions scored).
    """
    region_image = np.asarray(region_image, dtype=np.int64).reshape(-1)
    region_predictions = np.asarray(region_predictions, dtype=np.int64).reshape(-1)
    core = _bool_1d("core_regions", core_regions, len(region_image))
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    present = _bool_1d("feature_present", feature_present, len(labels))
    if len(region_predictions) != len(region_image):
        raise ValueError("region_predictions and region_image differ in length")
    rows = region_image[core]
    return accuracy_summary(labels[rows], region_predictions[core], present[rows], classes, n_boot=n_boot, seed=seed)


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
                   embeddings=None) -> dict[str, Any]:
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
        embeddings: a precomputed :class:`EmbeddingSet` of this model and dataset to reuse for the
            regions (else :func:`embed_dataset` runs, without a cache).

    Returns:
        ``image_accuracy``, ``image_worst_group``, ``image_table`` (DataFrame), ``n_images``,
        ``labels`` and ``predictions`` ((N,) arrays), and with ``core_regions``:
        ``region_accuracy``, ``region_worst_group``, ``region_table``, ``n_core_regions``.
    """
    from ravl_med.models.zeroshot import class_text_embeddings, zero_shot_predictions

    present = _bool_1d("feature_present", feature_present, len(dataset))
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
        images = accuracy_summary(labels, predictions, present, classes, n_boot=n_boot, seed=seed,
                                  spurious_class=spurious_class)
        out: dict[str, Any] = {
            "image_accuracy": images["overall"], "image_worst_group": images["worst_group"],
            "image_table": images["table"], "n_images": images["count"],
            "labels": labels, "predictions": predictions,
        }
        if core_regions is not None:
            if embeddings is None:
                from ravl_med.models.embed import embed_dataset

                embeddings = embed_dataset(model, preprocess, dataset, batch_size=batch_size, device=device,
                                           progress=False, precision="fp32")
            core = _bool_1d("core_regions", core_regions, len(embeddings.region_image))
            regions = torch.from_numpy(np.asarray(embeddings.region_embeddings, dtype=np.float32))
            region_predictions = (regions @ text.cpu().T).argmax(dim=1).numpy()
            summary = region_accuracy_summary(region_predictions, embeddings.region_image, labels, present, core,
                                              classes)
            out.update(region_accuracy=summary["overall"], region_worst_group=summary["worst_group"],
                       region_table=summary["table"], n_core_regions=summary["count"])
    finally:
        model.train(was_training)
    return out


def evaluate_split(backbone: str, checkpoint, manifest: str | Path, ingest, classes: Sequence[str], templates, *,
                   sha256: str | None = None, split: str = "test", spurious_class: str | None = None,
                   stage1_checkpoint=None, stage1_sha256: str | None = None, medoids=None, regions: bool = True,
                   batch_size: int = 64, device: str = "cpu", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
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

    Returns:
        :func:`evaluate_model`'s dict plus ``feature`` (the feature's name), ``groups_from``
        (``"ground truth"`` or ``"audit"``) and ``n_feature_present``.

    Raises:
        ValueError: the split is empty, or presence is unknown and no audit was given.
    """
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.data.manifest import Manifest, feature_presence
    from ravl_med.models.registry import create_backbone

    table = Manifest.read(manifest, classes=list(classes))
    dataset = RadiographDataset(table, ingest, list(classes), split=split)
    if not len(dataset):
        raise ValueError(f"{manifest}: split {split!r} has no usable rows")
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
    core, embeddings = None, None
    if regions and {"mask_finding", "lung_mask"} <= set(dataset.table.columns):
        from ravl_med.models.embed import embed_dataset

        embeddings = embed_dataset(model, preprocess, dataset, batch_size=batch_size, device=device, progress=False,
                                   precision="fp32")
        core = core_regions_from_masks(dataset, embeddings.region_boxes, embeddings.region_image,
                                       Path(manifest).parent, model_side=preprocess.image_size)
    out = evaluate_model(model, preprocess, tokenizer, dataset, classes, templates, present, core, batch_size,
                         device=device, n_boot=n_boot, seed=seed, spurious_class=spurious_class, embeddings=embeddings)
    return {**out, "feature": feature, "groups_from": source, "n_feature_present": int(present.sum())}
