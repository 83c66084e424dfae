"""``ravl-med validate``: read every image of a manifest or folder and report what is usable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.cli.common import (
    add_ingest_options,
    load_ingest_config,
    open_dataset,
    print_scan_report,
    writable_file,
    write_json,
)
from ravl_med.data.manifest import write_problems

EXIT_NOTHING_USABLE = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a manifest or a folder of radiographs and list the problems",
        description=(
            "Read every image of PATH through the ingestion pipeline (DICOM, PNG, JPEG, NIfTI) and print a "
            "summary: counts per label, split and view position, image sizes, photometric interpretations and "
            "transfer syntaxes, then every refused file with its reason. Refused files are written to a "
            "quarantine list. Images that may hold burned-in text (names, dates) are listed as warnings, with the "
            "source that flagged each: the DICOM attribute BurnedInAnnotation (burned_in_annotation) or the pixel "
            "check on the ingested image, at no more than the file's own resolution (burned_in_text). Exit status: 0 "
            "when at least one image is usable, 1 when none is, 2 for bad arguments or an unreadable manifest."
        ),
    )
    parser.add_argument("path", type=Path, help="manifest CSV, or a folder scanned recursively for images")
    add_ingest_options(parser)
    parser.add_argument(
        "--quarantine",
        type=Path,
        default=Path("quarantine.csv"),
        help="where the refused files go, CSV or JSON by suffix (default: ./quarantine.csv; when it cannot be "
        "written, for example in a read-only folder, validate stops with exit status 2 before reading any image)",
    )
    parser.add_argument("--report", type=Path, help="also write the summary, problems and warnings as JSON here")
    parser.add_argument(
        "--no-text-check",
        action="store_true",
        help="skip the pixel check for burned-in text (per image: 0.02-0.07 s at the default 224 px ingest size, "
        "0.09-0.27 s at 512 px, where reading and ingesting it takes 0.04-3 s; benchmarks/validate_text_check.py); "
        "the DICOM attribute is checked anyway",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_ingest_config(args)
    manifest = open_dataset(args.path, config)
    writable_file(args.quarantine, "--quarantine")
    if args.report:
        writable_file(args.report, "--report")

    from ravl_med.data.scan import scan_manifest  # torch/MONAI: imported once the input and outputs are checked

    text_check = not args.no_text_check
    result = scan_manifest(manifest, config, workers=args.workers, progress=not args.no_progress,
                           description="reading images, checking pixels for text" if text_check else "reading images",
                           text_check=text_check)
    print_scan_report(result, all_warnings=f"see {args.report}" if args.report else "--report FILE lists them all")
    quarantine = write_problems(result.problems, args.quarantine)
    print(f"quarantine list ({len(result.problems)} entries): {quarantine}")
    if args.report:
        report = {
            "summary": result.summary(),
            "problems": [vars(p) for p in result.problems],
            "warnings": [vars(p) for p in result.warnings],
        }
        print(f"JSON report: {write_json(report, args.report)}")
    if result.usable == 0:
        total = len(manifest) + len(manifest.problems)
        print(f"ravl-med validate: error: none of the {total} entries in {args.path} is usable")
        return EXIT_NOTHING_USABLE
    return 0
