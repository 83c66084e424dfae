"""Seconds per setting saved by embedding the test split once: the stage-1 evaluation reuses the audit's embeddings.

The benchmark runner audits a setting's stage-1 model on the test split and then evaluates the same
model on the same split; both need the split's region embeddings (one-pass, fp32). This script
times the stage-1 evaluation with and without the audit's :class:`EmbeddingSet`, on a phantom test
split the size of the demo's (400 images at 128 px, 3 x 3 regions; a random-initialised tiny-rn:
speed does not depend on the weights), and checks that both give the same metrics.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/evaluation_embedding_reuse.py [--threads 2] [--images 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ravl_med.config import IngestConfig, RegionConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.models import create_backbone
from ravl_med.models.embed import embed_dataset
from ravl_med.models.weights import save_checkpoint
from ravl_med.phantom import PhantomSetting, write_setting
from ravl_med.stages.evaluate import run_evaluation

CLASSES = ["no finding", "cardiomegaly", "pleural effusion", "pneumothorax"]
TEMPLATES = ["a chest x-ray showing {}."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=400, help="test images (the demo has 400)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setting = PhantomSetting(name="reuse", artefact="chest_drain", spurious_class="pneumothorax", strength=0.0,
                                 n_train=4, n_val=0, n_test=args.images, image_size=128, classes=CLASSES)
        manifest = write_setting(setting, root / "data", progress=False).manifest
        ingest = IngestConfig(image_size=128, regions=RegionConfig(grid_sizes=[3]))
        torch.manual_seed(0)
        model, preprocess, _ = create_backbone("tiny-rn")
        checkpoint = root / "model.safetensors"
        save_checkpoint(model, checkpoint)
        dataset = RadiographDataset(Manifest.read(manifest, classes=CLASSES), ingest, CLASSES, split="test")

        def evaluate(embeddings):
            start = time.perf_counter()
            result = run_evaluation("tiny-rn", checkpoint, manifest, ingest, CLASSES, TEMPLATES, n_boot=1000,
                                    batch_size=32, embeddings=embeddings)
            return time.perf_counter() - start, result

        start = time.perf_counter()
        audit_embeddings = embed_dataset(model, preprocess, dataset, batch_size=32, progress=False, precision="fp32")
        embed_s = time.perf_counter() - start
        again = [evaluate(None) for _ in range(args.repeats)]
        reused = [evaluate(audit_embeddings) for _ in range(args.repeats)]
    same = all(getattr(again[0][1], k) == getattr(reused[0][1], k) for k in
               ("image_accuracy", "image_worst_group", "region_accuracy", "region_worst_group"))
    slow, fast = min(t for t, _ in again), min(t for t, _ in reused)
    print(f"threads={args.threads}, {args.images} test images at 128 px, 3 x 3 regions, best of {args.repeats}")
    print(f"audit's embedding pass:                 {embed_s:7.2f} s")
    print(f"stage-1 evaluation, embeds the split:   {slow:7.2f} s")
    print(f"stage-1 evaluation, audit's embeddings: {fast:7.2f} s")
    print(f"saved per setting: {slow - fast:.2f} s ({slow / fast:.2f}x faster evaluation); same metrics: {same}")


if __name__ == "__main__":
    main()
