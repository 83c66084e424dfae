"""Regions per second: one-pass vs crop-and-re-encode region embeddings, on the CPU.

16 regions per image (a 4x4 grid), random-initialised open_clip towers (speed does not depend on
weights); hybrids (``medclip-effnet-minilm``, ``xrv-densenet-minilm``) are built as configured
(offline; the xrv DenseNet stays random without a local checkpoint).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/region_embedding_throughput.py [--threads 2]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/region_embedding_throughput.py \
        --backbones tiny-rn RN50 medclip-effnet-minilm xrv-densenet-minilm
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from ravl_med.data.transforms import region_grid
from ravl_med.models import create_backbone
from ravl_med.models.regions import RegionEmbedder


def regions_per_second(embedder, images, boxes, repeats):
    with torch.no_grad():
        embedder(images, boxes)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            embedder(images, boxes)
        elapsed = time.perf_counter() - start
    return repeats * sum(b.shape[0] for b in boxes) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=["tiny-rn", "RN50", "medclip-effnet-minilm", "xrv-densenet-minilm"])
    parser.add_argument("--images", type=int, default=None, help="images per batch (default 16 tiny, 2 otherwise)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads={args.threads}, 16 regions per image")
    print(f"{'backbone':22s} {'images':>6s} {'one-pass reg/s':>15s} {'crop reg/s':>11s} {'ratio':>6s}")
    for name in args.backbones:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the xrv DenseNet's random-initialisation warning
            model, preprocess, _ = create_backbone(name)
        size = preprocess.image_size
        count = args.images or (16 if name.startswith("tiny") else 2)
        images = preprocess(torch.rand(count, 1, size, size))
        grid, _ = region_grid([0, 0, size, size], (4,))
        boxes = [grid] * count
        one_pass = regions_per_second(RegionEmbedder(model, "one_pass"), images, boxes, args.repeats)
        crop = regions_per_second(RegionEmbedder(model, "crop"), images, boxes, args.repeats)
        print(f"{name:22s} {count:6d} {one_pass:15.1f} {crop:11.1f} {one_pass / crop:6.1f}x")


if __name__ == "__main__":
    main()
