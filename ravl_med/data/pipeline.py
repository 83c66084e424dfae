"""The ingestion pipeline: one MONAI ``Compose`` from a file path to a model-ready sample.

Sample in: ``{"image": path, ...}`` (any extra keys pass through). Sample out:

* ``image``: ``MetaTensor`` (1, S, S) float32 in [0, 1], radiological display orientation,
  letterboxed to S = ``IngestConfig.image_size``; its metadata carries the patient-free fields of
  :mod:`ravl_med.data.readers` plus the letterbox geometry;
* ``regions``: (R, 4) candidate boxes on that image (grid boxes first, then proposals; R may differ
  between images when proposals are on), ``regions_scale``: (R,) level per box, ``regions_family``:
  (R,) index into :data:`~ravl_med.data.transforms.REGION_FAMILIES`.

Steps: LoadRadiographd (MONAI LoadImaged; DICOM/PNG/JPEG/NIfTI) -> RadiographQCd -> CollapseGreyChannelsd ->
RadiologicalOrientationd -> VOIWindowd -> InvertMonochrome1d -> Letterboxd -> RegionGridd -> RegionProposalsd
(the last two as ``IngestConfig.regions`` asks). Audit and mitigation both ingest through here, so
they get identical boxes for the same settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from monai.transforms import Compose

from ravl_med.config import IngestConfig
from ravl_med.data.errors import IngestError
from ravl_med.data.transforms import (
    CollapseGreyChannelsd,
    InvertMonochrome1d,
    Letterboxd,
    LoadRadiographd,
    RadiographQCd,
    RadiologicalOrientationd,
    RegionGridd,
    RegionProposalsd,
    VOIWindowd,
)

__all__ = ["as_ingest_error", "ingest_transforms", "load_radiograph", "region_transforms", "run_ingest_transforms"]


def ingest_transforms(
    config: IngestConfig | None = None,
    *,
    image_key: str = "image",
    mask_keys: tuple[str, ...] = (),
    box_keys: tuple[str, ...] = (),
    resize: bool = True,
    regions: bool = True,
) -> Compose:
    """Builds the ingestion ``Compose``.

    Args:
        config: ingestion settings; defaults when ``None``.
        image_key: the key holding the image path.
        mask_keys: keys of mask paths that follow the image through every spatial step (loaded with
            the same readers; resized with nearest neighbour).
        box_keys: keys of (R, 4) boxes in the stored image's pixels, moved with the image.
        resize: letterbox to ``config.image_size`` (turn off to inspect images at full size).
        regions: attach the candidate regions (``regions``, ``regions_scale``, ``regions_family``).
    """
    config = config or IngestConfig()
    quality = config.quality
    image_keys = (image_key, *mask_keys)
    steps = [
        LoadRadiographd(image_keys),
        RadiographQCd(image_key, min_side=quality.min_side, max_side=quality.max_side),
        CollapseGreyChannelsd(image_keys, tolerance=quality.colour_tolerance),
        RadiologicalOrientationd(image_keys, ref_key=image_key, box_keys=box_keys),
        VOIWindowd(
            image_key,
            mode=config.intensity.voi,
            window=config.intensity.window,
            fallback=config.intensity.fallback,
            percentiles=config.intensity.percentiles,
        ),
        InvertMonochrome1d(image_key),
    ]
    if resize:
        modes = ("auto",) + ("nearest",) * len(mask_keys)
        steps.append(Letterboxd(image_keys, config.image_size, mode=modes, ref_key=image_key, box_keys=box_keys))
    if regions:
        steps.extend(region_transforms(config, image_key))
    return Compose(steps, log_stats=False)


def region_transforms(config: IngestConfig, image_key: str = "image") -> list:
    """The dictionary transforms that attach ``config.regions`` to a model-ready sample (grids, then proposals)."""
    settings, steps = config.regions, []
    if settings.grid_sizes:
        steps.append(RegionGridd(ref_key=image_key, grid_sizes=settings.grid_sizes, overlap=settings.overlap,
                                 within=settings.within))
    if settings.proposals is not None:
        p = settings.proposals
        steps.append(RegionProposalsd(ref_key=image_key, method=p.method, granularity=p.granularity(),
                                      compactness=p.compactness or 0.1, sigma=p.sigma, min_size=p.min_size,
                                      max_size=p.max_size, margin=p.margin, max_iou=p.max_iou,
                                      within=settings.within))
    return steps


def as_ingest_error(err: BaseException) -> IngestError:
    """The :class:`IngestError` behind an exception raised inside a MONAI ``Compose``.

    MONAI wraps transform errors in ``RuntimeError("applying transform ...")``; this walks the
    cause chain. Anything that is not an ingestion error already becomes ``undecodable``.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, IngestError):
            return seen
        seen = seen.__cause__ or seen.__context__
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    return IngestError("undecodable", " ".join(f"{type(root).__name__}: {root}".split())[:200])  # one line


def run_ingest_transforms(transform: Compose, sample: Mapping) -> dict:
    """Applies ``transform`` to ``sample``; every failure comes out as :class:`IngestError`."""
    try:
        return transform(dict(sample))
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - per-file boundary: any failure is this file's problem
        raise as_ingest_error(err) from err


def load_radiograph(path: str | Path, config: IngestConfig | None = None, *, resize: bool = True) -> dict:
    """Loads one radiograph through :func:`ingest_transforms`.

    Returns:
        the sample dict (see module docstring).

    Raises:
        IngestError: the file cannot be used; ``reason`` says why.
    """
    logging.getLogger("monai").setLevel(logging.ERROR)
    return run_ingest_transforms(ingest_transforms(config, resize=resize, regions=resize), {"image": str(path)})
