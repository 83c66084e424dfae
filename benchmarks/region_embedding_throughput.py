"""Regions per second: one-pass vs crop-and-re-encode region embeddings, on the CPU.

16 regions per image (a 4x4 grid), random-initialised open_clip towers (speed does not depend on
weights); hybrids (``medclip-effnet-minilm``, ``xrv-densenet-minilm``) are built as configured
(offline; the xrv DenseNet stays random without a local checkpoint).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/region_embedding_throughput.py [--threads 2]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/region_embedding_throughput.py \
        --backbones tiny-rn RN50 medclip-effnet-minilm xrv-densenet-minilm

``--checkpoint`` and ``--manifest``: agreement of one-pass and crop region embeddings of a trained
model instead, on real images of a manifest split and their candidate regions (the 3 x 3 grid with
half-cell overlap of the demo): per region the cosine of the two embeddings, whether the two give
the same zero-shot class, and whether a region's one-pass embedding is nearest to its own crop
among the image's crops; plus, for the regions that hold the planted feature (phantom masks, the
audit's default overlap rule), how often each mode scores the spurious class highest.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/region_embedding_throughput.py --backbones medclip-effnet-minilm \
        --checkpoint outputs/.../stage1/model.safetensors --manifest outputs/.../manifest.csv \
        --classes "no finding" cardiomegaly "pleural effusion" pneumothorax --spurious-class pneumothorax
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

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


def agreement(args) -> None:
    """The ``--checkpoint`` mode (module docstring)."""
    import numpy as np

    from ravl_med.config import IngestConfig, RegionConfig
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.data.masks import ingested_masks_and_images
    from ravl_med.discover.metrics import RULE_THRESHOLDS, region_overlaps_mask
    from ravl_med.models.zeroshot import class_text_embeddings

    model, preprocess, tokenizer = create_backbone(args.backbones[0], checkpoint=args.checkpoint)
    ingest = IngestConfig(image_size=args.image_size,
                          regions=RegionConfig(grid_sizes=[3], overlap=0.5, within="content"))
    data = RadiographDataset(args.manifest, ingest, args.classes, split=args.split)
    rows = list(range(min(args.agreement_images, len(data))))
    masks, mask_images = ingested_masks_and_images(data.table.iloc[rows], ["mask_artefact"], ingest,
                                                   Path(args.manifest).resolve().parent) \
        if args.spurious_class else ([None] * len(rows), [None] * len(rows))
    with torch.no_grad():
        texts = class_text_embeddings(model, tokenizer, args.classes, ["a chest x-ray showing {}."])
    spurious = args.classes.index(args.spurious_class) if args.spurious_class else None
    cosines, same_class, own_crop, feature_rows = [], [], [], []
    one_pass_embedder, crop_embedder = RegionEmbedder(model, "one_pass"), RegionEmbedder(model, "crop")
    with torch.no_grad():
        for start in range(0, len(rows), 8):
            items = [data[i] for i in rows[start:start + 8]]
            raw = torch.stack([item["image"] for item in items])
            images = preprocess(raw)
            boxes = [preprocess.scale_boxes(item["regions"], *raw.shape[-2:]) for item in items]
            one_pass = one_pass_embedder(images, boxes)
            crops = crop_embedder(images, boxes)
            for index, (a, b, item) in enumerate(zip(one_pass, crops, items)):
                cosines.append((a * b).sum(dim=1))
                same_class.append((a @ texts.T).argmax(dim=1) == (b @ texts.T).argmax(dim=1))
                own_crop.append((a @ b.T).argmax(dim=1) == torch.arange(len(a)))
                mask = masks[start + index]
                if spurious is None or mask is None:
                    continue
                region_boxes = item["regions"].numpy()
                hits = region_overlaps_mask(region_boxes, np.zeros(len(region_boxes), dtype=np.int64), [mask],
                                            rule="visible", threshold=RULE_THRESHOLDS["visible"],
                                            images=[mask_images[start + index]])
                for mode, emb in (("one_pass", a), ("crop", b)):
                    top = (emb @ texts.T).argmax(dim=1).numpy()
                    feature_rows += [(mode, bool(t == spurious)) for t in top[hits]]
    cos = torch.cat(cosines)
    print(f"{args.backbones[0]} {args.checkpoint}: {len(rows)} {args.split} images, {len(cos)} regions "
          f"(3 x 3 grid, overlap 0.5), {torch.get_num_threads()} threads")
    print(f"one-pass vs crop cosine: mean {cos.mean():.3f}, median {cos.median():.3f}, min {cos.min():.3f}")
    print(f"same zero-shot class: {torch.cat(same_class).float().mean():.3f}; one-pass nearest to its own crop: "
          f"{torch.cat(own_crop).float().mean():.3f}")
    for mode in ("one_pass", "crop"):
        flags = [hit for m, hit in feature_rows if m == mode]
        if flags:
            print(f"{mode}: regions holding the feature scored {args.spurious_class!r} highest: "
                  f"{np.mean(flags):.3f} of {len(flags)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=["tiny-rn", "RN50", "medclip-effnet-minilm", "xrv-densenet-minilm"])
    parser.add_argument("--images", type=int, default=None, help="images per batch (default 16 tiny, 2 otherwise)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", help="agreement mode: trained weights of the first --backbones entry")
    parser.add_argument("--manifest", help="agreement mode: the manifest whose images are embedded")
    parser.add_argument("--split", default="test")
    parser.add_argument("--classes", nargs="+", default=["no finding", "cardiomegaly", "pleural effusion", "pneumothorax"])
    parser.add_argument("--spurious-class", default=None)
    parser.add_argument("--image-size", type=int, default=224, help="agreement mode: ingestion side")
    parser.add_argument("--agreement-images", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.checkpoint:
        agreement(args)
        return
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
