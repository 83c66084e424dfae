"""Cost of ``ravl-med validate``'s pixel check for burned-in text, per image, beside the cost of reading it.

For each real radiograph of ``../shared/data/cxr-samples`` and pydicom-data's RG1 CR chest in its four
encodings (uncompressed and JPEG 2000, each lossless and lossy), at each ``--sizes`` (the ingest side
the check runs at): the time to read and ingest the file (:func:`~ravl_med.data.pipeline.ingest_transforms`
without regions, as ``validate`` runs it) and the time of
:func:`~ravl_med.data.burned_text.find_burned_in_text` on the ingested image; the median of ``--repeats``
runs of each, one thread. Prints a table and the mean over the images.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/validate_text_check.py
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-samples"
RG1 = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")


def images(samples: Path) -> list[Path]:
    """The real radiographs found (the cxr-samples files, then pydicom-data's RG1 files when installed)."""
    import pydicom.data

    paths = sorted(p for p in samples.glob("*") if p.suffix.lower() in (".png", ".jpg", ".dcm"))
    if importlib.util.find_spec("data_store") is not None:
        paths += [Path(p) for p in (pydicom.data.get_testdata_file(name) for name in RG1) if p]
    return paths


def _median_seconds(call, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from ravl_med.config import IngestConfig
    from ravl_med.data.burned_text import find_burned_in_text
    from ravl_med.data.pipeline import ingest_transforms, run_ingest_transforms

    torch.set_num_threads(1)
    logging.getLogger("monai").setLevel(logging.ERROR)
    paths = images(args.samples)
    if not paths:
        raise SystemExit(f"no radiographs under {args.samples}")
    print(f"{'size':>4}  {'image':<34} {'stored':>11} {'read+ingest s':>13} {'text check s':>12} found")
    for size in args.sizes:
        transform = ingest_transforms(IngestConfig(image_size=size), regions=False)
        find_burned_in_text(np.zeros((size, size), np.float32))  # imports and first-call set-up
        read, check = [], []
        for path in paths:
            t_read, sample = _median_seconds(lambda: run_ingest_transforms(transform, {"image": str(path)}),
                                             args.repeats)
            pixels = np.asarray(sample["image"], dtype=np.float32)[0]
            t_check, found = _median_seconds(lambda: find_burned_in_text(pixels), args.repeats)
            read.append(t_read)
            check.append(t_check)
            shape = "x".join(str(int(v)) for v in sample["image"].meta["original_shape"])
            print(f"{size:>4}  {path.name[:34]:<34} {shape:>11} {t_read:>13.3f} {t_check:>12.3f} {found.found}")
        print(f"{size:>4}  mean over {len(paths)} images: read+ingest {np.mean(read):.3f} s, text check "
              f"{np.mean(check):.3f} s ({np.mean(check) / np.mean(read):.0%} of reading)")


if __name__ == "__main__":
    main()
