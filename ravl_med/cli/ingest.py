"""``ravl-med ingest``: turn a manifest (or folder) into model-ready images plus a clean manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ravl_med.cli.common import (
    add_ingest_options,
    load_ingest_config,
    open_dataset,
    print_scan_report,
    writable_dir,
    write_json,
)
from ravl_med.data.atomic import atomic_path
from ravl_med.data.manifest import write_problems

EXIT_NOTHING_USABLE = 1


class PngSink:
    """Writes each model-ready image as a 16-bit grey PNG ``images/<key>.png`` (value = round(x * 65535)).

    Returns the output path and the letterbox geometry, so regions on the model-ready image can be
    mapped back to the original pixels: original = (model - offset) / scale.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def __call__(self, sample: dict, row: dict) -> dict:
        image = sample["image"]
        pixels = np.rint(np.clip(image[0].numpy(), 0.0, 1.0) * 65535.0).astype(np.uint16)
        relative = Path("images") / f"{row['key']}.png"
        with atomic_path(self.out_dir / relative) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        scale, offset = image.meta["letterbox_scale"], image.meta["letterbox_offset"]
        return {
            "output_path": str(relative),
            "scale_y": float(scale[0]),
            "scale_x": float(scale[1]),
            "offset_y": int(offset[0]),
            "offset_x": int(offset[1]),
        }


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="preprocess a dataset into model-ready images and a clean manifest",
        description=(
            "Run every image of PATH (manifest CSV or folder) through the ingestion pipeline: photometric fixes, "
            "VOI LUT/windowing, MONOCHROME1 inversion, radiological orientation, aspect-preserving resize and "
            "padding to the model size. Writes OUT/images/<key>.png (16-bit grey), OUT/manifest.csv (the usable "
            "rows, pointing at those images, with the original size, pixel spacing and letterbox geometry), "
            "OUT/quarantine.csv (refused rows with reasons) and OUT/summary.json. Keys are opaque; no DICOM "
            "patient fields are written."
        ),
    )
    parser.add_argument("path", type=Path, help="manifest CSV, or a folder scanned recursively for images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    add_ingest_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_ingest_config(args)
    manifest = open_dataset(args.path, config)
    out_dir: Path = writable_dir(args.out, "--out")

    from ravl_med.data.scan import scan_manifest  # torch/MONAI: imported once the input and output are checked

    result = scan_manifest(
        manifest, config, workers=args.workers, sink=PngSink(out_dir), progress=not args.no_progress,
        description="ingesting",
    )
    print_scan_report(result)
    quarantine = write_problems(result.problems, out_dir / "quarantine.csv")
    write_json({"summary": result.summary(), "config": config.model_dump()}, out_dir / "summary.json")
    if result.usable == 0:
        print(f"ravl-med ingest: error: none of the entries in {args.path} is usable; see {quarantine}")
        return EXIT_NOTHING_USABLE
    usable = manifest.table.drop(columns=["path"]).merge(
        result.records.drop(columns=["path", "split", "label"]), on="key", how="inner", suffixes=("_manifest", "")
    )
    if "view_position_manifest" in usable:
        usable = usable.drop(columns=["view_position_manifest"])
    usable = usable.rename(columns={"output_path": "path"})
    front = ["key", "path", "label", "report", "split"]
    usable = usable[front + [c for c in usable.columns if c not in front and c != "labels"]]
    manifest_path = out_dir / "manifest.csv"
    with atomic_path(manifest_path) as tmp:
        usable.to_csv(tmp, index=False)
    print(f"wrote {len(usable)} images to {out_dir / 'images'}, manifest {manifest_path}, quarantine {quarantine}")
    return 0
