"""Benchmark: phantom generation speed, images/s including DICOM and mask writing.

Usage: ``python benchmarks/phantom_generation.py [--n 200] [--workers 2] [--sizes 256 512]``.
Writes a fresh setting per size into a temporary folder (so nothing is skipped) and prints
images/s for rendering only and for the full write (render + report + DICOM + PNG masks).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ravl_med.phantom.config import PhantomSetting
from ravl_med.phantom.render import render_phantom
from ravl_med.phantom.reports import sentence_pools
from ravl_med.phantom.writer import write_setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per size")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (0: in-process)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    sentence_pools()  # load the report phrasing once before forking
    for size in args.sizes:
        start = time.perf_counter()
        for i in range(min(args.n, 50)):
            render_phantom(i, "pleural effusion", "pacemaker" if i % 2 else None, size)
        render_rate = min(args.n, 50) / (time.perf_counter() - start)
        setting = PhantomSetting(name="bench", artefact="chest_drain", spurious_class="pneumothorax", strength=0.9,
                                 n_train=args.n, n_val=0, n_test=0, image_size=size)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = write_setting(setting, tmp, workers=args.workers, progress=False)
            elapsed = time.perf_counter() - start
        print(f"{size}x{size}: render only {render_rate:.1f} images/s (1 process); "
              f"full write {summary.images / elapsed:.1f} images/s ({args.workers} workers, "
              f"{summary.files_written} files)")


if __name__ == "__main__":
    main()
