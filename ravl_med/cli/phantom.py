"""``ravl-med phantom``: list, write and inspect the phantom chest X-ray benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.cli.common import writable_dir, writable_file
from ravl_med.config import ConfigError
from ravl_med.phantom.artefacts import ARTEFACTS
from ravl_med.phantom.config import (
    PhantomSetting,
    find_suite,
    list_suites,
    load_suite,
    setting_name,
)
from ravl_med.phantom.findings import CLASSES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="generate the phantom chest X-ray benchmark (DICOM images with known shortcuts and masks)",
        description=(
            "Procedural frontal chest radiographs with findings (the classes) and injectable shortcut artefacts "
            "(chest drain, laterality marker, site token, pacemaker, ECG leads, clothing clip), written as DICOM "
            "with PNG/NIfTI masks, a manifest CSV and a metadata JSON. The fine-tuning split ties one artefact to "
            "one class at a chosen Cramer's V; the val/test splits keep them independent."
        ),
    )
    sub = parser.add_subparsers(dest="phantom_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="list the suites and settings in datasets/phantom/*.yaml",
                             description="List the benchmark suites and their settings.")
    listing.add_argument("--suite", help="only this suite (name or YAML path)")
    listing.set_defaults(func=run_list)

    write = sub.add_parser(
        "write", help="write one setting to disk",
        description=(
            "Write one setting: pick it from a suite (--suite NAME --setting NAME) or define it inline "
            "(--artefact, --spurious-class, --strength, --seed, sizes). Output goes to OUT/<setting name>/. "
            "Re-running resumes: files that exist are complete (atomic writes) and are not written again."
        ),
    )
    write.add_argument("--out", type=Path, required=True, help="parent folder of the setting folder")
    write.add_argument("--suite", help="suite name (datasets/phantom/NAME.yaml) or YAML path")
    write.add_argument("--setting", help="setting name within the suite (see 'ravl-med phantom list')")
    write.add_argument("--all", action="store_true", help="write every setting of the suite")
    write.add_argument("--artefact", metavar="NAME",
                       help=(f"inline setting: the artefact: built-in ({', '.join(ARTEFACTS)}), a registered name, "
                             "or an import string package.module:attribute (see datasets/README.md)"))
    write.add_argument("--spurious-class", choices=list(CLASSES), help="inline setting: the class tied to it")
    write.add_argument("--strength", type=float, help="inline setting: target Cramer's V in the fine-tuning split")
    write.add_argument("--seed", type=int, default=0, help="inline setting: seed (default 0)")
    write.add_argument("--n-train", type=int, default=600, help="inline setting: fine-tuning images (default 600)")
    write.add_argument("--n-val", type=int, default=300, help="inline setting: validation images (default 300)")
    write.add_argument("--n-test", type=int, default=300, help="inline setting: test images (default 300)")
    write.add_argument("--image-size", type=int, default=256, help="inline setting: image side, 64-1024 (default 256)")
    write.add_argument("--placement", choices=["outside_lungs", "overlap_lungs", "any"],
                       help="inline setting: where the artefact may go (default: the artefact's own rule)")
    write.add_argument("--scale", type=float, default=1.0, help="inline setting: artefact size multiplier (default 1)")
    write.add_argument("--level", type=float,
                       help="inline setting: artefact brightness in [0, 1] (default: the artefact's own)")
    write.add_argument("--mask-format", choices=["png", "nifti"], default="png", help="mask files (default png)")
    write.add_argument("--workers", type=int, default=0, help="rendering processes (default 0: in-process)")
    write.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    write.set_defaults(func=run_write)

    sheet = sub.add_parser("sheet", help="write a contact sheet PNG of phantom images with masks outlined",
                           description="Write an N-image contact sheet (finding masks red, artefact masks green).")
    sheet.add_argument("--out", type=Path, required=True, help="output PNG")
    sheet.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    sheet.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    sheet.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    sheet.add_argument("--lungs", action="store_true", help="also outline the lung fields (blue)")
    sheet.set_defaults(func=run_sheet)

    digits = sub.add_parser(
        "digits", help="write the paper's synthetic digits setting (scikit-learn digits, 4 quadrants)",
        description=("Write 56x56 four-quadrant images: a handwritten digit in one quadrant and a red square in "
                     "another, tied to one digit at a target Cramer's V in the fine-tuning split."),
    )
    digits.add_argument("--out", type=Path, required=True, help="output folder")
    digits.add_argument("--spurious-digit", type=int, default=3, choices=range(10), help="digit tied to the square")
    digits.add_argument("--strength", type=float, default=0.9, help="target Cramer's V (default 0.9)")
    digits.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    digits.add_argument("--n-train", type=int, default=1000, help="fine-tuning images (default 1000)")
    digits.add_argument("--n-val", type=int, default=500, help="validation images (default 500)")
    digits.add_argument("--n-test", type=int, default=500, help="test images (default 500)")
    digits.set_defaults(func=run_digits)


def run_list(args: argparse.Namespace) -> int:
    suites = [find_suite(args.suite)] if args.suite else [load_suite(p) for p in list_suites()]
    for suite in suites:
        settings = suite.settings()
        print(f"{suite.name}: {len(settings)} settings - {suite.description}")
        for setting in settings:
            print(f"  {setting.name}")
    return 0


def _settings(args: argparse.Namespace) -> list[PhantomSetting]:
    if args.suite:
        suite = find_suite(args.suite)
        if args.all:
            return suite.settings()
        if not args.setting:
            raise ConfigError("--suite needs --setting NAME or --all (see 'ravl-med phantom list')")
        return [suite.setting(args.setting)]
    missing = [f"--{n}" for n, v in (("artefact", args.artefact), ("spurious-class", args.spurious_class),
                                      ("strength", args.strength)) if v is None]
    if missing:
        raise ConfigError(f"give --suite and --setting, or an inline setting ({', '.join(missing)} missing)")
    from ravl_med.config import parse_config

    data = {
        "name": setting_name(args.artefact, args.spurious_class, args.strength, args.seed),
        "artefact": args.artefact, "spurious_class": args.spurious_class, "strength": args.strength,
        "seed": args.seed, "n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
        "image_size": args.image_size, "placement": args.placement, "scale": args.scale, "level": args.level,
        "mask_format": args.mask_format,
    }
    return [parse_config(data, PhantomSetting, "command line")]


def run_write(args: argparse.Namespace) -> int:
    settings = _settings(args)
    writable_dir(args.out, "--out")

    from ravl_med.phantom.writer import write_setting  # torch and MONAI: imported once the options are checked

    for setting in settings:
        summary = write_setting(setting, args.out, workers=args.workers, progress=not args.no_progress)
        v = ", ".join(f"{k}={val:.3f}" for k, val in summary.cramers_v.items())
        print(f"{setting.name}: {summary.images} images, {summary.files_written} files written; "
              f"Cramer's V (target {setting.strength}): {v}")
        seen = summary.visibility
        if seen["n_images"]:
            print(f"  artefact visibility (contrast / image std, {seen['n_images']} images): mean {seen['mean']:+.2f}, "
                  f"range {seen['min']:+.2f} .. {seen['max']:+.2f}")
        placed = summary.placement
        if placed["failed"]:
            first = placed["examples"][0]
            print(f"  WARNING: placement failed in {placed['failed']} of {placed['of']} images "
                  f"(e.g. {first['id']}: {first['issue']})")
        print(f"  manifest: {summary.manifest}\n  metadata: {summary.metadata}")
    return 0


def run_sheet(args: argparse.Namespace) -> int:
    writable_file(args.out, "--out")

    from ravl_med.phantom.sheet import contact_sheet

    print(f"contact sheet: {contact_sheet(args.out, n=args.n, size=args.image_size, seed=args.seed, lungs=args.lungs)}")
    return 0


def run_digits(args: argparse.Namespace) -> int:
    writable_dir(args.out, "--out")

    from ravl_med.phantom.digits import write_digits

    manifest = write_digits(args.out, spurious_digit=args.spurious_digit, strength=args.strength, seed=args.seed,
                            n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
    print(f"digits setting: {manifest}")
    return 0
