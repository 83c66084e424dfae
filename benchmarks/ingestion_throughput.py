"""Throughput of the ingestion pipeline: DICOM files -> model-ready (1, 224, 224) tensors.

Writes N phantom 1024 x 1024 DX radiographs (uncompressed, 16 bits stored, MONOCHROME2) into a
temporary folder, then times full passes of a ``monai.data.DataLoader`` over a
``monai.data.Dataset`` with :func:`ravl_med.data.pipeline.ingest_transforms` at each requested
worker count, and prints images per second and the speed-up over ``num_workers=0``.

Each pass includes starting the worker processes, as a training epoch would; the first pass of
each setting is also reported separately (cold file cache for the very first one).

Usage::

    python benchmarks/ingestion_throughput.py [--n 64] [--workers 0 2] [--batch-size 8] [--passes 3]
        [--torch-threads T]

DataLoader workers run torch with one thread each; ``--torch-threads 1`` gives the main process
(``num_workers=0``) the same, which separates the gain from processes from intra-op threading.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from ravl_med.config import IngestConfig
from ravl_med.data.pipeline import ingest_transforms
from ravl_med.phantom.anatomy import DEVICES
from ravl_med.phantom.dicom import phantom_dataset, write_dicom
from ravl_med.phantom.render import render_phantom

SIDE = 1024
DEVICE = next(d for d in DEVICES if d.bits_stored == 16 and not d.monochrome1)


def write_radiograph(path: Path, seed: int, side: int = SIDE) -> None:
    """One phantom chest radiograph as a 16-bit MONOCHROME2 DX file (uncompressed), side x side."""
    rendered = render_phantom(seed, "no finding", size=side)
    ds = phantom_dataset(
        rendered.image, DEVICE, key=f"bench-{seed}", patient_number=seed, sex=rendered.sex,
        age_band=rendered.age_band, view_position="PA", pixel_spacing_mm=0.14, institution="benchmark",
    )
    write_dicom(ds, path)


def one_pass(dataset: Dataset, workers: int, batch_size: int) -> float:
    """Seconds for one full pass; checks every batch is model-ready."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    seen = 0
    start = time.perf_counter()
    for batch in loader:
        images = batch["image"]
        assert images.shape[1:] == (1, 224, 224) and images.dtype == torch.float32
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    assert seen == len(dataset)
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of synthetic DICOM files (default 64)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts (default 0 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--passes", type=int, default=3, help="timed passes per worker count (default 3)")
    parser.add_argument(
        "--torch-threads", type=int, help="torch intra-op threads of the main process (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    logging.getLogger("monai").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="ravl_ingest_bench_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        paths = []
        for i in range(args.n):
            path = folder / f"cr_{i:04d}.dcm"
            write_radiograph(path, i)
            paths.append(path)
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        elapsed = time.perf_counter() - start
        print(f"wrote {args.n} DICOM files, {SIDE}x{SIDE} 16-bit, {size_mb:.0f} MiB in {elapsed:.1f} s")
        print(
            f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()}, batch size {args.batch_size}"
        )

        transform = ingest_transforms(IngestConfig(image_size=224))
        dataset = Dataset(data=[{"image": str(p)} for p in paths], transform=transform)
        results = {}
        for workers in args.workers:
            times = [one_pass(dataset, workers, args.batch_size) for _ in range(args.passes)]
            results[workers] = times

    print()
    header = ("workers", "first pass s", "best pass s", "images/s (best)", "images/s (median)")
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, (7, 12, 11, 15, 17))))
    for workers, times in results.items():
        print(
            f"{workers:>7}  {times[0]:>12.2f}  {min(times):>11.2f}  {args.n / min(times):>15.1f}  "
            f"{args.n / float(np.median(times)):>17.1f}"
        )
    base = args.workers[0]
    for workers in args.workers[1:]:
        ratio = min(results[base]) / min(results[workers])
        print(f"speed-up num_workers={workers} over num_workers={base}: {ratio:.2f}x (best passes)")


if __name__ == "__main__":
    main()
