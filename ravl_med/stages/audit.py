"""The audit stage: RaVL stage 1 (and baselines) on a fine-tuned model, from a config to a report.

:func:`run_audit` chains the pipeline: backbone + verified checkpoint -> the evaluation split of a
manifest -> image and region embeddings (:func:`~ravl_med.models.embed.embed_dataset`, cached under
``cache_dir`` so that a killed audit restarted with the same config computes only the missing
batches) -> class text embeddings and zero-shot scores -> each discovery method -> ground-truth
Precision@k when the manifest has it -> the outputs in ``output_dir``::

    audit.json                    config, outcome, notes, per method the ranked clusters (tables, CIs,
                                  influence, attribute), Precision@k; image keys only
    report.html                   self-contained report for clinicians (galleries embedded)
    clusters.csv                  the per-class tables of every cluster, flat
    gallery-cluster-<rank>.png    RaVL: the top regions of each kept cluster
    gallery-cluster-<rank>-counter.png   its counter-examples: regions of images of the cluster's class
                                  without a region in it, nearest the medoid (one per image)
    gallery-<method>-cluster-<rank>.png   baselines (``report.baseline_galleries`` per method)

Ground truth (``evaluation.ground_truth: auto``): phantom manifests (column ``mask_artefact``) mark a
region spurious when it shows the artefact (:func:`~ravl_med.discover.region_overlaps_mask`, rule
``evaluation.overlap_rule``, default "visible");
the mask goes through the same ingestion steps as its image, so it lies in the ingested image's
pixels, and the region boxes (model-input pixels) are scaled back by ingest size / model input size.
Digits manifests (column ``square_quadrant``) mark the region whose centre lies in the square's
quadrant (:func:`~ravl_med.discover.quadrant_is_spurious`; the images are square, so the letterbox is
the identity).

Under ``torchrun`` (one process per GPU, or several CPU processes) the embedding is split: each
process loads the model and the split, embeds batches ``rank, rank + world_size, ...`` into the cache
(:func:`~ravl_med.models.embed.embed_share`) and waits at a barrier; rank 0 then reads every shard
(the same :class:`~ravl_med.models.embed.EmbeddingSet` as one process) and runs the zero-shot scores,
discovery and outputs alone, while the other processes return ``None`` without writing any output.
The cache folder must be one that every process sees (always so on one machine).

Burned-in text: every image a gallery shows is checked twice, by its DICOM header (BurnedInAnnotation)
and by its pixels (:func:`~ravl_med.data.burned_text.find_burned_in_text` on the ingested image); the
counts by source are in ``audit.json`` (``burned_in_annotation``) and the report warns unless
``report.crops_only``.

No output holds a file path of an image or a DICOM header field: images are named by their manifest
keys (opaque hashes unless the manifest sets its own).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ravl_med import __version__
from ravl_med.config import ConfigError
from ravl_med.data.atomic import atomic_path
from ravl_med.discover import BaseDiscoverer, counter_examples, scores_from_embeddings
from ravl_med.discover.medoids import MEDOIDS_FILE, stage1_medoids
from ravl_med.discover.metrics import RULE_THRESHOLDS, precision_at_k, quadrant_is_spurious, region_overlaps_mask
from ravl_med.discover.registry import build_discoverer
from ravl_med.discover.report import GalleryTile, render_gallery, write_clusters_csv, write_report_html
from ravl_med.evaluate.groups import GroupAccuracy
from ravl_med.reproducibility import provenance
from ravl_med.stages.config import AuditConfig

__all__ = ["TOO_LITTLE_DATA", "AuditResult", "ground_truth_regions", "run_audit", "too_little_data"]

logger = logging.getLogger(__name__)

AUDIT_JSON, REPORT_HTML, CLUSTERS_CSV = "audit.json", "report.html", "clusters.csv"
#: The audit's outcome when its data cannot support a conclusion (overrides the methods' outcomes).
TOO_LITTLE_DATA = "too_little_data"


@dataclass(frozen=True)
class AuditResult:
    """What :func:`run_audit` computed and wrote.

    Attributes:
        config: the config as run.
        output_dir: where the files are.
        embeddings: the :class:`~ravl_med.models.embed.EmbeddingSet` (boxes in model-input pixels).
        text_embeddings: (C, D) class text embeddings.
        image_scores, region_scores: (N, C) and (M, C) zero-shot probabilities.
        discoverers: fitted discoverers by method name (config order).
        region_is_spurious: (M,) ground truth per region, ``None`` without ground truth.
        precision: Precision@k of each method's top cluster (empty without ground truth).
        batches_computed, batches_reused: embedding batches computed in this run / read from the cache.
        processes: processes that embedded the images (``torchrun``'s world size; 1 alone).
        embedding_s: wall time of the embedding in seconds (under ``torchrun``: rank 0's, from the first
            barrier until every shard is read, so it includes waiting for the other processes).
        audit: the dict written to ``audit.json``.
        files: output files by role (``json``, ``html``, ``csv``, ``galleries``).
    """

    config: AuditConfig
    output_dir: Path
    embeddings: object
    text_embeddings: np.ndarray
    image_scores: np.ndarray
    region_scores: np.ndarray
    discoverers: dict[str, BaseDiscoverer]
    region_is_spurious: np.ndarray | None
    precision: dict[str, float]
    batches_computed: int
    batches_reused: int
    audit: dict
    files: dict
    processes: int = 1
    embedding_s: float = 0.0

    def to_json(self) -> dict:
        """The content of ``audit.json``."""
        return self.audit

    @property
    def primary(self) -> str:
        """The method the summary is about (the first configured)."""
        return next(iter(self.discoverers))

    @property
    def outcome(self) -> str:
        """The audit's outcome: ``too_little_data`` (see :func:`too_little_data`), else the primary method's."""
        return self.audit.get("outcome") or self.discoverers[self.primary].outcome_

    def summary_lines(self) -> list[str]:
        """A short plain summary: the top finding, Precision@k per method, where the report is."""
        disc = self.discoverers[self.primary]
        lines = []
        if self.outcome == TOO_LITTLE_DATA:
            lines.append("too little data to conclude: " + "; ".join(self.audit["too_little_data"])
                         + ". What the method found is listed for inspection only.")
        lines.append(f"{self.primary}: outcome {disc.outcome_}")
        if disc.ranked_clusters_:
            top = disc.ranked_clusters_[0]
            row = next((r for r in top.table if r.class_index == top.attribute), None)
            detail = ""
            if row is not None and row.acc_in is not None and row.acc_out is not None:
                detail = (f": accuracy for {top.attribute_name} {row.acc_in:.0%} with the feature ({row.n_in} images) "
                          f"vs {row.acc_out:.0%} without ({row.n_out} images)")
            evidence = "" if top.p_adjusted is None else f"adjusted p {top.p_adjusted:.3g}; "
            evidence += "" if top.stability is None else f"stability {top.stability:.0%}; "
            lines.append(f"top finding: cluster 1 ({top.n_regions} regions, {top.n_images} images) tied to "
                         f"'{top.attribute_name}'{detail}; influence "
                         f"{'n/a' if top.influence is None else f'{top.influence:.2f}'}; {evidence}"
                         f"{len(disc.ranked_clusters_)} cluster(s) kept")
        else:
            lines.append("nothing found: " + (disc.notes_[-1] if disc.notes_ else "no cluster kept"))
        if self.precision:
            k = self.config.evaluation.precision_k
            lines.append(f"Precision@{k}: " + ", ".join(f"{m} {p:.2f}" for m, p in self.precision.items()))
        lines.append(f"report: {self.files.get('html')}")
        if disc.ranked_clusters_ and self.primary == "ravl":
            lines.append(f"next: look at the galleries, mark the shortcuts with 'ravl-med review {self.output_dir} "
                         "--spurious RANKS', then run 'ravl-med mitigate'")
        return lines


# --------------------------------------------------------------------------------------------- #
# Pieces


def _load_model(config: AuditConfig, device: str):
    """(model, preprocess, tokenizer, sha256 or None, notes); checkpoint problems become ConfigError."""
    from ravl_med.models import create_backbone
    from ravl_med.models.regions import RegionEmbedder
    from ravl_med.models.training_records import METRICS_FILE, read_fit_record
    from ravl_med.models.weights import WeightsError, file_sha256, resolve_checkpoint

    notes = []
    expected = config.sha256  # checked by create_backbone when known
    digest = expected
    try:
        if config.checkpoint is not None:
            path = resolve_checkpoint(config.checkpoint)
            record = read_fit_record(path) if expected is None else None
            if record is not None:
                expected = digest = record["sha256"]
                notes.append(f"checkpoint verified against the sha256 that 'ravl-med finetune' recorded in "
                             f"{path.parent / METRICS_FILE}.")
            if digest is None:
                digest = file_sha256(path)
                notes.append("no sha256 given for the checkpoint: its weights were not checked against an expected "
                             f"digest (their sha256 is {digest}).")
        else:
            notes.append("no checkpoint given: the backbone's initial weights were audited.")
        model, preprocess, tokenizer = create_backbone(config.backbone, checkpoint=config.checkpoint,
                                                       sha256=expected, device=device)
    except (WeightsError, FileNotFoundError, KeyError, ValueError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"checkpoint/backbone: {message}") from None
    try:  # before any image is read: e.g. a timm ViT tower has no one-pass region embeddings
        RegionEmbedder(model, mode=config.region_mode)
    except NotImplementedError as err:
        raise ConfigError(f"region_mode: {err}") from None
    return model, preprocess, tokenizer, digest, notes


def ground_truth_regions(config: AuditConfig, dataset, embeddings, model_side: int) -> tuple[np.ndarray | None, dict | None]:
    """Which regions hold the planted feature, from the manifest's masks or quadrant labels.

    Args:
        config: the audit config (``evaluation`` and ``ingest``).
        dataset: the audited :class:`~ravl_med.data.dataset.RadiographDataset` (its ``table``).
        embeddings: the :class:`EmbeddingSet`; its boxes are in model-input pixels.
        model_side: the model input side N (``preprocess.image_size``).

    Returns:
        ``(region_is_spurious (M,) bool, info)`` or ``(None, None)`` when there is no ground truth.
    """
    evaluation = config.evaluation
    table = dataset.table
    kind = evaluation.ground_truth
    if kind == "auto":
        kind = "mask" if "mask_artefact" in table.columns else "quadrant" if "square_quadrant" in table.columns else "none"
    if kind == "none":
        return None, None
    column = {"mask": "mask_artefact", "quadrant": "square_quadrant"}[kind]
    if column not in table.columns:
        raise ConfigError(f"evaluation.ground_truth: {kind!r} needs a {column!r} column in the manifest")
    side = config.ingest.image_size
    # embed_dataset scaled the ingested boxes by N / S; undo it to reach the ingested image's pixels.
    boxes = np.asarray(embeddings.region_boxes, dtype=np.float64) * (side / float(model_side))
    if kind == "quadrant":
        square = np.array([int(float(v)) if str(v).strip() not in ("", "nan") else -1 for v in table[column]])
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        quadrant = (cy >= side / 2).astype(np.int64) * 2 + (cx >= side / 2).astype(np.int64)
        truth = quadrant_is_spurious(quadrant, embeddings.region_image, square)
        info = {"kind": "quadrant", "rule": "region centre in the square's quadrant"}
    else:
        from ravl_med.data.masks import ingested_masks_and_images

        try:
            masks, images = ingested_masks_and_images(table, [column], config.ingest, Path(config.manifest).resolve().parent)
        except FileNotFoundError as err:
            raise ConfigError(f"evaluation: {err}") from None
        rule, threshold = evaluation.overlap_rule, evaluation.overlap_threshold
        threshold = RULE_THRESHOLDS[rule] if threshold is None else threshold
        truth = region_overlaps_mask(boxes, embeddings.region_image, masks, rule=rule, threshold=threshold,
                                     images=images)
        info = {"kind": "mask", "rule": rule, "threshold": threshold,
                "images_with_feature": int(sum(m is not None for m in masks))}
    info.update(k=evaluation.precision_k, n_spurious_regions=int(truth.sum()))
    return truth, info


def too_little_data(config: AuditConfig, labels: np.ndarray, image_scores: np.ndarray) -> list[str]:
    """Why the audited data cannot support a conclusion, in plain words (empty: it can).

    Args:
        config: its ``classes``, ``min_images_per_class`` and ``min_zero_shot_accuracy``.
        labels: (N,) int class index per audited image.
        image_scores: (N, C) zero-shot probabilities.
    """
    classes = list(config.classes)
    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), dtype=np.int64)
    reasons = []
    few = [f"{c} {int(n)}" for c, n in zip(classes, counts) if n < config.min_images_per_class]
    if few:
        reasons.append(f"fewer than {config.min_images_per_class} images of a class ({', '.join(few)})")
    if len(classes) > 1 and len(labels):
        accuracy = float(np.mean(image_scores.argmax(axis=1) == labels))
        floor = 1.0 / len(classes) if config.min_zero_shot_accuracy is None else config.min_zero_shot_accuracy
        if accuracy <= floor:
            reasons.append(f"zero-shot accuracy {accuracy:.0%} is not above {floor:.0%}"
                           f"{' (chance)' if config.min_zero_shot_accuracy is None else ''}: the model does not tell "
                           "the classes apart on these images (check class names, prompts and preprocessing)")
    return reasons


# --------------------------------------------------------------------------------------------- #
# The audit


def _shards(cache_dir: Path) -> set[Path]:
    return set(cache_dir.glob("*/shard-*.npz")) if cache_dir.is_dir() else set()


def run_audit(config: AuditConfig, progress: bool = True) -> AuditResult | None:
    """Runs a shortcut audit and writes its outputs (see the module docstring).

    Args:
        config: the audit config (``manifest`` must be set).
        progress: show progress bars (rank 0's only under ``torchrun``).

    Returns:
        the :class:`AuditResult`; ``None`` on the processes other than rank 0 under ``torchrun``
        (they only embed their share of the images).

    Raises:
        ConfigError: unusable input (no manifest, bad checkpoint, empty split, missing masks).
        IngestError: an image of the split cannot be read (check the manifest with ``ravl-med validate``).
    """
    from ravl_med.models.runtime import fixed_threads

    with fixed_threads(config.threads):
        return _run_audit(config, progress)


def _run_audit(config: AuditConfig, progress: bool) -> AuditResult | None:
    import torch.distributed as dist

    from ravl_med.models.runtime import start_processes

    if config.manifest is None:
        raise ConfigError("manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    ctx, started_group = start_processes(config.device, config.precision, tf32=False)
    try:
        return _audit(config, ctx, progress)
    finally:
        if started_group and dist.is_initialized():
            dist.destroy_process_group()


def _audit(config: AuditConfig, ctx, progress: bool) -> AuditResult | None:
    """The audit in one process (``ctx``: its :class:`~ravl_med.models.runtime.DistributedContext`)."""
    import torch

    device = str(ctx.device)  # "cuda:<local rank>" under torchrun
    torch.manual_seed(config.seed)
    model, preprocess, tokenizer, digest, notes = _load_model(config, device)
    dataset = _audited_split(config, notes)
    embedded = _embed(config, model, preprocess, dataset, ctx, digest, progress)
    if embedded is None:  # not rank 0: its share is in the cache
        return None
    embeddings, computed, seconds = embedded
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, image_scores, region_scores = _zero_shot(config, model, tokenizer, embeddings, device)

    truth, truth_info = ground_truth_regions(config, dataset, embeddings, preprocess.image_size)
    if truth_info is not None and truth_info["n_spurious_regions"] == 0:
        notes.append("the ground truth marks no region as holding the planted feature: Precision@k is 0 for every "
                     "method.")
    discoverers = _discover(config, embeddings, image_scores, region_scores)
    precision = ({} if truth is None else
                 {m: precision_at_k(d.top_ranked_regions(), truth, config.evaluation.precision_k)
                  for m, d in discoverers.items()})
    inconclusive = too_little_data(config, np.asarray(embeddings.labels, dtype=np.int64), image_scores)
    if discoverers.get("ravl") is not None and getattr(discoverers["ravl"], "medoids_", None) is not None:
        # Mitigation labels training regions by their nearest stage-1 medoid (all k of them).
        stage1_medoids(discoverers["ravl"], embeddings.region_embeddings, regions=config.ingest.region_setting(),
                       outcome=TOO_LITTLE_DATA if inconclusive else None,
                       region_mode=config.region_mode).save(out / MEDOIDS_FILE)

    n_batches = -(-len(dataset) // config.batch_size)
    result = AuditResult(config=config, output_dir=out, embeddings=embeddings, text_embeddings=text,
                         image_scores=image_scores, region_scores=region_scores, discoverers=discoverers,
                         region_is_spurious=truth, precision=precision, batches_computed=computed,
                         batches_reused=n_batches - computed, audit={}, files={}, processes=ctx.world_size,
                         embedding_s=seconds)
    run_info = provenance(threads=config.threads, seed=config.seed, device=ctx.device.type)
    audit, files = _write_outputs(result, dataset, preprocess.image_size, digest, notes, truth_info, run_info,
                                  inconclusive)
    return dataclasses.replace(result, audit=audit, files=files)


def _audited_split(config: AuditConfig, notes: list[str]):
    """The manifest's ``split`` as a dataset; refused rows are counted in ``notes``."""
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.data.manifest import Manifest, empty_split_message

    manifest = Manifest.read(config.manifest, classes=config.classes)
    if manifest.problems:
        reasons: dict[str, int] = {}
        for problem in manifest.problems:
            reasons[problem.reason] = reasons.get(problem.reason, 0) + 1
        notes.append(f"{len(manifest.problems)} manifest row(s) refused and not audited: "
                     + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ".")
    split = manifest.evaluated_split(config.split)
    if split != config.split:
        notes.append(f"the manifest defines no splits: every row is audited (split {config.split!r} not applied).")
    dataset = RadiographDataset(manifest, config.ingest, config.classes, split=split)
    if len(dataset) == 0:
        raise ConfigError(empty_split_message(config.manifest, split, config.classes))
    return dataset


def _embed(config: AuditConfig, model, preprocess, dataset, ctx, digest: str | None, progress: bool):
    """(EmbeddingSet, batches computed in this run, seconds): the split embedded through the resumable cache.

    Under ``torchrun`` every process embeds its share of the batches into the cache first; after the
    barrier rank 0 reads them all and the other processes return ``None``.
    """
    import torch.distributed as dist

    from ravl_med.models.embed import embed_dataset, embed_share

    cache_dir = config.resolved_cache_dir
    options = {"mode": config.region_mode, "batch_size": config.batch_size, "device": ctx.device,
               "cache_dir": cache_dir, "precision": config.precision, "fingerprint": digest}
    before = _shards(cache_dir)
    if ctx.distributed:
        dist.barrier()  # rank 0 has listed the cache before any process writes to it (the computed count)
    start = time.perf_counter()
    if ctx.distributed:
        embed_share(model, preprocess, dataset, rank=ctx.rank, world_size=ctx.world_size,
                    progress=progress and ctx.is_main, **options)
        dist.barrier()  # every share is in the cache
        if not ctx.is_main:
            return None
    shared = _shards(cache_dir)
    embeddings = embed_dataset(model, preprocess, dataset, progress=progress, **options)
    written = {p for p in _shards(cache_dir) if p.parent.name == embeddings.fingerprint}
    if ctx.distributed and written - shared:
        logger.warning("rank 0 embedded %d batch(es) again that the other processes had embedded: is the cache "
                       "folder %s on a filesystem every process sees?", len(written - shared), cache_dir)
    return embeddings, len(written - before), time.perf_counter() - start


def _zero_shot(config: AuditConfig, model, tokenizer, embeddings, device: str):
    """(C, D) class text embeddings and the (N, C) image and (M, C) region zero-shot probabilities."""
    import torch

    from ravl_med.models.zeroshot import CXR_TEMPLATES, class_text_embeddings

    templates = list(config.templates) if config.templates else list(CXR_TEMPLATES)
    with torch.no_grad():
        text = class_text_embeddings(model, tokenizer, config.classes, templates, device=device).float().cpu().numpy()
    temperature = config.discovery.temperature
    return (text, scores_from_embeddings(embeddings.image_embeddings, text, temperature),
            scores_from_embeddings(embeddings.region_embeddings, text, temperature))


def _discover(config: AuditConfig, embeddings, image_scores, region_scores) -> dict[str, BaseDiscoverer]:
    """Every configured method fitted on the same inputs (a failing baseline is reported, not raised)."""
    labels = np.asarray(embeddings.labels, dtype=np.int64)
    discoverers: dict[str, BaseDiscoverer] = {}
    for method in config.methods:
        disc = build_discoverer(method, discovery=config.discovery, n_boot=config.discovery.n_boot,
                                n_top_regions=config.discovery.n_top_regions, random_state=config.seed)
        try:
            disc.fit(embeddings.region_embeddings, embeddings.region_image, labels, image_scores, region_scores,
                     class_names=config.classes, image_embeddings=embeddings.image_embeddings)
        except (ValueError, np.linalg.LinAlgError) as err:
            if method == "ravl":
                raise
            # A baseline that cannot run on this data must not cost the user the RaVL result.
            logger.warning("%s failed: %s", method, err)
            disc.ranked_clusters_, disc.ranked_regions_ = [], []
            disc.outcome_ = "no_selection"
            disc.notes_ = [*getattr(disc, "notes_", []), f"{method} could not run on this data: {err}"]
        discoverers[method] = disc
    return discoverers


# --------------------------------------------------------------------------------------------- #
# Outputs


def _known_attributes(config: AuditConfig, dataset, keys, labels: np.ndarray, predicted: np.ndarray) -> dict:
    """Zero-shot accuracy per value of each known subgroup attribute of the manifest, and each one's spread.

    ``{"by_value": [rows of attribute_accuracy], "spread": [rows of attribute_spread], "min_count": n}``;
    no ground-truth column of synthetic data is read (:func:`~ravl_med.data.manifest.known_attributes`).
    """
    from ravl_med.data.manifest import known_attributes
    from ravl_med.evaluate.attributes import attribute_accuracy, attribute_spread

    table = dataset.table.set_index("key").loc[[str(k) for k in keys]]  # the embeddings' image order
    columns = known_attributes(dataset.table)
    by_value = attribute_accuracy(labels, predicted, {c: table[c].tolist() for c in columns},
                                  n_boot=config.discovery.n_boot, seed=config.seed)
    spread = attribute_spread(by_value, min_count=config.min_images_per_class)

    def records(frame):
        return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                for row in frame.to_dict("records")]

    return {"by_value": records(by_value), "spread": records(spread), "min_count": config.min_images_per_class}


def _gallery_name(method: str, rank: int, primary: str) -> str:
    return f"gallery-cluster-{rank}.png" if method == primary else f"gallery-{method}-cluster-{rank}.png"


def _counter_gallery_name(rank: int) -> str:
    return f"gallery-cluster-{rank}-counter.png"


class _GalleryImages:
    """The ingested images the galleries show, loaded once each, and which of them may hold burned-in text.

    Attributes:
        declared: images whose DICOM header says BurnedInAnnotation YES.
        text_like: images in whose pixels :func:`~ravl_med.data.burned_text.find_burned_in_text` finds lines
            of text-like marks (checked on the ingested image the gallery shows, at no more than its stored
            resolution, as ``validate`` checks it).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.pixels: dict[int, np.ndarray] = {}
        self.declared: set[int] = set()
        self.text_like: set[int] = set()

    def __call__(self, index: int) -> np.ndarray:
        """(S, S) float32 ingested image ``index`` of the dataset."""
        from ravl_med.data.burned_text import at_stored_resolution, find_burned_in_text

        if index not in self.pixels:
            item = self.dataset.loaded(index)
            image = np.asarray(item["image"], dtype=np.float32)[0]
            if item["burned_in_annotation"]:
                self.declared.add(index)
            if find_burned_in_text(at_stored_resolution(image, item["stored_side"])).found:
                self.text_like.add(index)
            self.pixels[index] = image
        return self.pixels[index]

    def record(self, crops_only: bool) -> dict:
        """``audit.json``'s ``burned_in_annotation``: gallery images that may hold burned-in text, by source."""
        return {"gallery_images": len(self.declared | self.text_like), "dicom_attribute": len(self.declared),
                "pixel_check": len(self.text_like), "crops_only": crops_only}


def _gallery_entries(result: AuditResult, regions: list[int]) -> list[dict]:
    """``audit.json``'s record of the regions a gallery shows (image keys, labels, boxes; no pixels)."""
    emb, classes = result.embeddings, list(result.config.classes)
    labels, predicted = np.asarray(emb.labels, dtype=np.int64), result.image_scores.argmax(axis=1)
    return [{
        "region": r, "image_key": str(emb.keys[emb.region_image[r]]),
        "label": classes[labels[emb.region_image[r]]], "predicted": classes[predicted[emb.region_image[r]]],
        "box_model_px": [round(float(v), 2) for v in emb.region_boxes[r]],
        "spurious": None if result.region_is_spurious is None else bool(result.region_is_spurious[r]),
    } for r in regions]


def _render(result: AuditResult, entries: list[dict], images: _GalleryImages, path: Path, model_side: int) -> Path:
    """The gallery of the regions of ``entries`` (:func:`_gallery_entries`, best first) written to ``path``."""
    config, emb = result.config, result.embeddings
    scale = config.ingest.image_size / float(model_side)
    tiles = [GalleryTile(images(int(emb.region_image[d["region"]])), emb.region_boxes[d["region"]] * scale,
                         f"{j + 1}. {d['image_key'][:8]} label: {d['label']}, model: {d['predicted']}")
             for j, d in enumerate(entries)]
    return render_gallery(tiles, path, columns=config.report.gallery_columns, tile_size=config.report.tile_size,
                          crops_only=config.report.crops_only)


def _counter_regions(result: AuditResult, cluster, regions: np.ndarray) -> np.ndarray:
    """The cluster's counter-examples (:func:`~ravl_med.discover.counter_examples`), as many as a gallery shows.

    Nearest the medoid, or for a method without medoids its top-ranked region; none for a cluster tied to no class.
    """
    emb = result.embeddings
    if cluster.attribute is None:
        return np.zeros(0, dtype=np.int64)
    centre = emb.region_embeddings[cluster.medoid if cluster.medoid is not None else int(regions[0])]
    return counter_examples(emb.region_embeddings, emb.region_image, emb.labels, regions, cluster.attribute,
                            centre, result.config.report.gallery_regions)


def _method_entries(result: AuditResult, images: _GalleryImages, model_side: int) -> tuple[dict, dict, dict]:
    """Each method's ``audit.json`` entry with its galleries rendered: (methods, galleries, counter galleries).

    Galleries by (method, rank): the ``gallery_regions`` best regions of every kept cluster of the primary
    method and of the first ``baseline_galleries`` of each baseline; the primary method's clusters also get a
    counter-example gallery (:func:`_counter_regions`).
    """
    config, out = result.config, result.output_dir
    k, n_gallery = config.evaluation.precision_k, config.report.gallery_regions
    primary = next(iter(result.discoverers))
    methods: dict[str, dict] = {}
    galleries: dict[tuple[str, int], Path] = {}
    counter_galleries: dict[tuple[str, int], Path] = {}
    for name, disc in result.discoverers.items():
        entry = disc.to_dict()
        entry["precision_at_k"] = result.precision.get(name)
        limit = len(disc.ranked_clusters_) if name == primary else config.report.baseline_galleries
        for cluster, ranked, regions in zip(entry["ranked_clusters"], disc.ranked_clusters_, disc.ranked_regions_):
            rank = cluster["rank"]
            if result.region_is_spurious is not None:
                cluster["precision_at_k"] = precision_at_k(regions, result.region_is_spurious, k)
            shown = [int(r) for r in regions[:n_gallery]]
            cluster["n_gallery"] = len(shown)
            cluster["gallery_regions"] = _gallery_entries(result, shown)
            cluster["gallery"] = None
            if rank <= limit and shown:
                path = _render(result, cluster["gallery_regions"], images, out / _gallery_name(name, rank, primary),
                               model_side)
                cluster["gallery"] = path.name
                galleries[(name, rank)] = path
            if name == primary:  # counter-examples: what a reviewer compares the cluster with
                counter = [int(r) for r in _counter_regions(result, ranked, regions)]
                cluster["n_counter_gallery"] = len(counter)
                cluster["counter_gallery_regions"] = _gallery_entries(result, counter)
                cluster["counter_gallery"] = None
                if counter:
                    path = _render(result, cluster["counter_gallery_regions"], images,
                                   out / _counter_gallery_name(rank), model_side)
                    cluster["counter_gallery"] = path.name
                    counter_galleries[(name, rank)] = path
        methods[name] = entry
    return methods, galleries, counter_galleries


def _write_outputs(result: AuditResult, dataset, model_side: int, digest: str | None, notes: list[str],
                   truth_info: dict | None, run_info: dict, inconclusive: list[str]) -> tuple[dict, dict]:
    """Writes audit.json, clusters.csv, report.html and the galleries; returns (audit dict, files by role)."""
    config, emb, out = result.config, result.embeddings, result.output_dir
    classes = list(config.classes)
    labels = np.asarray(emb.labels, dtype=np.int64)
    predicted = result.image_scores.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    images = _GalleryImages(dataset)
    methods, galleries, counter_galleries = _method_entries(result, images, model_side)
    primary = next(iter(result.discoverers))

    counts = np.bincount(labels, minlength=len(classes)) if len(labels) else np.zeros(len(classes), dtype=np.int64)
    overall = GroupAccuracy(labels=labels, predictions=predicted, feature_present=np.zeros(len(labels), dtype=bool),
                            classes=classes, n_boot=0).overall
    per_class_acc = {c: (float(np.mean(predicted[labels == y] == y)) if counts[y] else None)
                     for y, c in enumerate(classes)}
    audit = {
        "version": __version__,
        "config": config.model_dump(mode="json"),
        "model": {"backbone": config.backbone, "sha256": digest, "input_size": int(model_side)},
        "primary_method": primary,
        "outcome": TOO_LITTLE_DATA if inconclusive else result.discoverers[primary].outcome_,
        "too_little_data": inconclusive,
        "notes": notes + [f"{primary}: {n}" for n in result.discoverers[primary].notes_],
        "dataset": {
            "split": dataset.split, "n_images": len(labels), "n_regions": len(emb.region_image),
            "classes": classes, "images_per_class": {c: int(counts[y]) for y, c in enumerate(classes)},
            "image_keys": [str(k_) for k_ in emb.keys],
        },
        "embedding": {"fingerprint": emb.fingerprint, "batches_computed": result.batches_computed,
                      "batches_reused": result.batches_reused, "processes": result.processes,
                      "time_s": round(result.embedding_s, 3),
                      "cache_dir": str(config.resolved_cache_dir)},
        "zero_shot": {"temperature": config.discovery.temperature,
                      "accuracy": overall if np.isfinite(overall) else None,
                      "accuracy_per_class": per_class_acc},
        "ground_truth": truth_info,
        "attributes": _known_attributes(config, dataset, emb.keys, labels, predicted),
        "burned_in_annotation": images.record(config.report.crops_only),
        "methods": methods,
        "provenance": run_info,
    }
    files = {"json": out / AUDIT_JSON, "html": out / REPORT_HTML, "csv": out / CLUSTERS_CSV,
             "galleries": sorted([*galleries.values(), *counter_galleries.values()])}
    audit["files"] = {"json": AUDIT_JSON, "html": REPORT_HTML, "csv": CLUSTERS_CSV,
                      "galleries": [p.name for p in files["galleries"]]}
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(audit, indent=2, allow_nan=False) + "\n")
    write_clusters_csv(audit, files["csv"])
    write_report_html(audit, galleries, counter_galleries, files["html"])
    return audit, files
