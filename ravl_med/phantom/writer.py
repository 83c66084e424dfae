"""Writes a phantom setting to disk: DICOM images, masks, a manifest CSV and a metadata JSON.

Layout under ``out/<setting name>/``::

    manifest.csv            one row per image (format of :mod:`ravl_med.data.manifest`)
    metadata.json           setting, spurious pair, achieved Cramer's V and group counts per split,
                            the artefact's visibility and its failed placements
    images/<split>/<id>.dcm
    masks/<split>/<id>_{artefact,finding,lung}.png (or .nii.gz)

Every file is written through :func:`~ravl_med.data.atomic.atomic_path`; a file that exists is
complete, so a re-run skips it (images are re-rendered only to rebuild the manifest rows, which
are a pure function of the seed) and produces the same manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from ravl_med.data.atomic import atomic_path
from ravl_med.phantom.artefacts import artefact_label, artefact_visibility, get_artefact
from ravl_med.phantom.config import PhantomSetting
from ravl_med.phantom.dicom import phantom_dataset, write_dicom
from ravl_med.phantom.render import render_phantom
from ravl_med.phantom.reports import ReportWriter
from ravl_med.phantom.settings import SplitPlan, plan_correlated, plan_independent

__all__ = ["MANIFEST_COLUMNS", "WriteSummary", "plan_setting", "write_mask", "write_setting"]

MANIFEST_COLUMNS = (
    "path", "label", "report", "split", "site", "device", "view_position", "sex", "age_band",
    "artefact", "artefact_present", "mask_artefact", "mask_finding", "lung_mask",
)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
FIELD_OF_VIEW_MM = 380.0
GENERATOR_VERSION = "1"
#: Failed placements named in the metadata and the warning (the count is always complete).
PLACEMENT_EXAMPLES = 10

logger = logging.getLogger(__name__)


def plan_setting(setting: PhantomSetting) -> dict[str, SplitPlan]:
    """The split plans of a setting (sampling only, no rendering): train correlated, val/test not."""
    plans = {}
    for split, n in (("train", setting.n_train), ("val", setting.n_val), ("test", setting.n_test)):
        if n == 0:
            continue
        rng = np.random.default_rng([setting.seed, SPLIT_CODES[split], 7919])
        if split == "train":
            plans[split] = plan_correlated(setting.classes, n, setting.spurious_class, setting.strength, rng)
        else:
            plans[split] = plan_independent(setting.classes, n, rng)
    return plans


def write_mask(mask: np.ndarray, path: Path, spacing_mm: float = 1.0) -> None:
    """Writes a bool (H, W) mask atomically: PNG (0/255) or 2-D NIfTI by suffix.

    NIfTI axis 0 is the image columns and axis 1 the rows (as ITK writes 2-D images and
    :class:`~ravl_med.data.readers.RadiographNiftiReader` reads them), so the array is transposed.
    """
    with atomic_path(path) as tmp:
        if path.name.endswith((".nii", ".nii.gz")):
            affine = np.diag([spacing_mm, spacing_mm, 1.0, 1.0])
            nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.T).astype(np.uint8), affine), tmp)
        else:
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG", compress_level=1)


@dataclass
class _Job:
    setting: PhantomSetting
    root: Path
    split: str
    index: int
    label: str
    present: bool


def _image_id(setting: PhantomSetting, split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def _render_and_write(job: _Job) -> tuple[dict, int, dict | None]:
    """Renders one image, writes what is missing.

    Returns:
        its manifest row, the number of files written, and for an image with the artefact its
        visibility and placement issue (``{"id", "visibility", "placement_issue"}``), else ``None``.
    """
    s = job.setting
    seed = (s.seed, SPLIT_CODES[job.split], job.index)
    artefact = get_artefact(s.artefact, placement=s.placement, scale=s.scale, level=s.level) if job.present else None
    phantom = render_phantom(seed, job.label, artefact, size=s.image_size)
    report = ReportWriter(s.device_mention).write(
        np.random.default_rng([*seed, 1]), job.label, phantom.details["finding"], phantom.artefact,
        phantom.details["artefact"],
    )
    image_id = _image_id(s, job.split, job.index)
    suffix = ".nii.gz" if s.mask_format == "nifti" else ".png"
    rel = {
        "path": f"images/{job.split}/{image_id}.dcm",
        "mask_artefact": f"masks/{job.split}/{image_id}_artefact{suffix}" if job.present else "",
        "mask_finding": f"masks/{job.split}/{image_id}_finding{suffix}" if job.label != "no finding" else "",
        "lung_mask": f"masks/{job.split}/{image_id}_lung{suffix}",
    }
    spacing = FIELD_OF_VIEW_MM / s.image_size
    written = 0
    for column, mask in (("mask_artefact", phantom.artefact_mask), ("mask_finding", phantom.finding_mask),
                         ("lung_mask", phantom.lung_mask)):
        if rel[column] and not (job.root / rel[column]).exists():
            write_mask(mask, job.root / rel[column], spacing)
            written += 1
    image_path = job.root / rel["path"]
    if not image_path.exists():  # written last: an existing image means its masks exist too
        key = f"{s.name}/{job.split}/{job.index}"
        patient = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1_000_000
        ds = phantom_dataset(
            phantom.image, phantom.device, key=key, patient_number=patient, sex=phantom.sex,
            age_band=phantom.age_band, view_position=phantom.view_position, pixel_spacing_mm=spacing,
            institution=phantom.site,
        )
        with atomic_path(image_path) as tmp:
            write_dicom(ds, tmp)
        written += 1
    row = {
        **rel, "label": job.label, "report": report, "split": job.split, "site": phantom.site,
        "device": phantom.device.name, "view_position": phantom.view_position, "sex": phantom.sex,
        "age_band": phantom.age_band, "artefact": artefact_label(s.artefact) if job.present else "",
        "artefact_present": int(job.present),
    }
    carried = None
    if job.present:
        carried = {"id": image_id, "visibility": artefact_visibility(phantom.image, phantom.artefact_mask),
                   "placement_issue": phantom.details["artefact"].get("placement_issue")}
    return row, written, carried


def visibility_summary(values: list[float]) -> dict:
    """Mean and range of per-image visibilities (:func:`~ravl_med.phantom.artefacts.artefact_visibility`).

    ``n_images`` counts the images carrying the artefact whose contrast is defined (non-empty mask and ring).
    """
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    out: dict = {"measure": "(mean inside the artefact mask - mean in a ring around it) / image std",
                 "n_images": int(finite.size)}
    if finite.size:
        out.update(mean=round(float(finite.mean()), 4), min=round(float(finite.min()), 4),
                   max=round(float(finite.max()), 4))
    else:
        out.update(mean=None, min=None, max=None)
    return out


@dataclass
class WriteSummary:
    """What :func:`write_setting` did.

    Attributes:
        visibility: the artefact's contrast against its surroundings over the images that carry it
            (:func:`visibility_summary`: ``n_images``, ``mean``, ``min``, ``max``, image-std units).
        placement: ``{"rule", "failed", "of", "examples"}``: images whose artefact broke its placement
            rule (or fell outside the image), out of those that carry it; ``examples`` are
            ``{"id", "issue"}`` for the first :data:`PLACEMENT_EXAMPLES`.
    """

    root: Path
    manifest: Path
    metadata: Path
    images: int
    files_written: int
    cramers_v: dict[str, float]
    visibility: dict
    placement: dict


def write_setting(setting: PhantomSetting, out: str | Path, *, workers: int = 0, progress: bool = True) -> WriteSummary:
    """Renders and writes one setting under ``out/<setting.name>`` (see the module docstring).

    Args:
        setting: the setting.
        out: parent folder.
        workers: rendering processes (0: in this process).
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415 - only the writer needs it

    root = Path(out) / setting.name
    root.mkdir(parents=True, exist_ok=True)
    plans = plan_setting(setting)
    jobs = [
        _Job(setting, root, split, i, label, bool(here))
        for split, plan in plans.items()
        for i, (label, here) in enumerate(zip(plan.labels, plan.present))
    ]
    bar = tqdm(total=len(jobs), desc=setting.name, unit="img", disable=not progress)
    results: list[tuple[dict, int, dict | None]] = []
    if workers > 0:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for result in pool.imap(_render_and_write, jobs, chunksize=8):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_render_and_write(job))
            bar.update()
    bar.close()
    rows = [r for r, _, _ in results]
    carried = [c for _, _, c in results if c is not None]
    visibility = visibility_summary([c["visibility"] for c in carried])
    failed = [c for c in carried if c["placement_issue"]]
    rule = get_artefact(setting.artefact, placement=setting.placement, scale=setting.scale, level=setting.level).placement
    placement = {"rule": rule, "failed": len(failed), "of": len(carried),
                 "examples": [{"id": c["id"], "issue": c["placement_issue"]} for c in failed[:PLACEMENT_EXAMPLES]]}
    if failed:
        logger.warning("%s: artefact %s could not be placed as its rule asks in %d of %d images (e.g. %s: %s)",
                       setting.name, artefact_label(setting.artefact), len(failed), len(carried), failed[0]["id"],
                       failed[0]["placement_issue"])
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest = root / "manifest.csv"
    with atomic_path(manifest) as tmp:
        table.to_csv(tmp, index=False)
    achieved = {split: round(plan.cramers_v, 4) for split, plan in plans.items()}
    metadata = {
        "setting": setting.model_dump(),
        "spurious_pair": {"class": setting.spurious_class, "artefact": artefact_label(setting.artefact)},
        "target_cramers_v": setting.strength,
        "achieved_cramers_v": achieved,
        "group_counts": {split: plan.group_counts() for split, plan in plans.items()},
        "seeds": {"setting": setting.seed, "image": "numpy SeedSequence([seed, split_code, index])",
                  "split_codes": SPLIT_CODES},
        "generator_version": GENERATOR_VERSION,
        "images": len(rows),
        "artefact_visibility": visibility,
        "artefact_placement": placement,
    }
    meta_path = root / "metadata.json"
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    return WriteSummary(root, manifest, meta_path, len(rows), sum(w for _, w, _ in results), achieved, visibility,
                        placement)
