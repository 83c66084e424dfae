"""``ravl-med manifest``: build a manifest CSV from a public chest X-ray dataset already on disk."""

from __future__ import annotations

import argparse
import textwrap
from collections import Counter
from pathlib import Path

from ravl_med.cli.common import writable_file
from ravl_med.data.atomic import atomic_path
from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import ATTRIBUTE_COLUMNS, LABEL_SEPARATOR, Manifest
from ravl_med.data.recipes import DROP_REASONS, RECIPES, build_manifest

EXIT_NOTHING_FOUND = 1

#: Command-line flag of each builder option, for error messages.
_FLAGS = {
    "labels": "--labels",
    "meta": "--meta",
    "splits": "--splits",
    "path_column": "--path-column",
    "label_column": "--label-column",
    "keep_columns": "--keep-column",
    "site": "--site",
    "reports": "--no-reports",
    "read_headers": "--no-headers",
}


def _layouts_help() -> str:
    lines = ["layouts and the files each reads:"]
    for recipe in RECIPES.values():
        lines.append(f"  {recipe.name:<9} {recipe.title}")
        lines.extend(textwrap.wrap(recipe.expects, width=88, initial_indent=" " * 12, subsequent_indent=" " * 12,
                                   break_on_hyphens=False))
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="build a manifest CSV from a public dataset on disk (NIH, CheXpert, MIMIC, PadChest, SIIM, DICOM folder)",
        description=textwrap.fill(
            "Build a manifest (path, label, report, split, view_position, sex, age_band, site, device) from a "
            "dataset already on disk. The public layouts are parsed with torchxrayvision's dataset classes: a "
            "class is positive where its label is 1 (uncertain and unknown are not), a row without positives is "
            "'No Finding'. Rows whose image is not on disk are dropped and counted. Patient IDs are never "
            "written. Paths are relative to the folder of the --out CSV when the images lie below it, else absolute. "
            "Exit status: 0 when rows were written, 1 when no listed image was found, 2 for bad arguments or "
            "unusable label files.",
            width=100,
        ),
        epilog=_layouts_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("layout", choices=list(RECIPES), metavar="LAYOUT", help=f"one of: {', '.join(RECIPES)}")
    parser.add_argument("--root", type=Path, required=True, metavar="DIR", help="the dataset folder")
    parser.add_argument(
        "--labels",
        type=Path,
        action="append",
        metavar="CSV",
        help="label CSV (default: the release's file in ROOT; see below); chexpert takes it more than once",
    )
    parser.add_argument("--meta", type=Path, metavar="CSV", help="mimic: the metadata CSV (default: in ROOT)")
    parser.add_argument("--splits", type=Path, metavar="CSV", help="mimic: the split CSV (default: in ROOT when there)")
    parser.add_argument("--path-column", metavar="NAME", help="dicom: the CSV's file column (default: path, file, filename, ...)")
    parser.add_argument("--label-column", metavar="NAME", help="dicom: the CSV's label column (default: label, labels, finding, ...)")
    parser.add_argument(
        "--keep-column", action="append", default=[], metavar="NAME",
        help="dicom: a further CSV column to keep as a subgroup attribute (repeatable; identifiers are refused)",
    )
    parser.add_argument("--site", metavar="NAME", help="value of the site column (default: the dataset's name; dicom: none)")
    parser.add_argument("--no-reports", action="store_true", help="mimic, padchest: leave the report column empty")
    parser.add_argument("--no-headers", action="store_true", help="siim, dicom: do not read DICOM headers")
    parser.add_argument("--out", type=Path, required=True, metavar="CSV", help="the manifest CSV to write")
    parser.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    """The builder keyword arguments the user actually set, by their builder names."""
    labels = args.labels or []
    given = {
        "labels": (labels if args.layout == "chexpert" else labels[-1]) if labels else None,
        "meta": args.meta,
        "splits": args.splits,
        "path_column": args.path_column,
        "label_column": args.label_column,
        "keep_columns": tuple(args.keep_column) or None,
        "site": args.site,
        "reports": False if args.no_reports else None,
        "read_headers": False if args.no_headers else None,
    }
    return {k: v for k, v in given.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    if args.layout != "chexpert" and args.labels and len(args.labels) > 1:
        raise IngestError("bad_row", f"--labels is given {len(args.labels)} times; the {args.layout} layout takes one")
    options = _options(args)
    unused = [_FLAGS[k] for k in options if k not in RECIPES[args.layout].options]
    if unused:
        raise IngestError("bad_row", f"the {args.layout} layout does not take {', '.join(unused)}")

    out: Path = writable_file(args.out, "--out")
    result = build_manifest(args.layout, args.root, relative_to=out.parent.resolve(), **options)
    table = result.table
    print(f"read: {', '.join(result.sources)}")
    listed = len(table) + result.n_dropped
    print(f"rows listed: {listed}    in the manifest: {len(table)}    dropped: {result.n_dropped}")
    for reason, count in sorted(result.dropped.items(), key=lambda kv: -kv[1]):
        examples = result.examples.get(reason, [])
        shown = f" (e.g. {', '.join(examples[:3])})" if examples else ""
        print(f"  {reason}: {count}: {DROP_REASONS[reason]}{shown}")
    if table.empty:
        print(f"ravl-med manifest: error: no listed image was found under {args.root}; nothing written")
        return EXIT_NOTHING_FOUND

    label_counts = Counter(
        part for cell in table["label"] for part in cell.split(LABEL_SEPARATOR) if part
    )
    print("labels: " + ", ".join(f"{k}={v}" for k, v in label_counts.most_common()))
    if "split" in table.columns:
        split_counts = Counter(s or "train" for s in table["split"])
        print("splits: " + ", ".join(f"{k}={v}" for k, v in sorted(split_counts.items())))
    else:
        print("splits: none defined by the dataset (every row counts as train)")
    for column in ATTRIBUTE_COLUMNS:
        if column in table.columns:
            counts = Counter(v or "(empty)" for v in table[column])
            print(f"{column}: " + ", ".join(f"{k}={v}" for k, v in counts.most_common(12))
                  + (f", ... ({len(counts) - 12} more)" if len(counts) > 12 else ""))

    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    # Read it back through the manifest checks, so what we wrote is what `validate`/`ingest` accept.
    check = Manifest.read(out)
    if check.problems:
        print(f"warning: {len(check.problems)} rows of {out} fail the manifest checks, e.g. "
              f"{check.problems[0].reason}: {check.problems[0].detail}")
    print(f"wrote {len(table)} rows to {out}")
    return 0
