"""Options and input handling shared by subcommands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ravl_med.config import ConfigError, IngestConfig, load_config
from ravl_med.data.manifest import Manifest

if TYPE_CHECKING:
    from ravl_med.data.scan import ScanResult

__all__ = [
    "add_ingest_options",
    "add_tracking_options",
    "apply_overrides",
    "comma_list",
    "load_ingest_config",
    "open_dataset",
    "print_scan_report",
    "tracking_options",
]


def add_tracking_options(parser, local: str = "<cwd>", experiment: str = "ravl-med/<dataset>") -> None:
    """``--tracking-uri``, ``--experiment``, ``--no-tracking`` on an argparse parser.

    Args:
        local: the folder of the default local store, as the help shows it.
        experiment: the default experiment name, as the help shows it.
    """
    from ravl_med.tracking import DEFAULT_ARTIFACT_DIR, DEFAULT_DB

    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        f"sqlite:///{local}/{DEFAULT_DB} with artifacts in {local}/{DEFAULT_ARTIFACT_DIR})")
    parser.add_argument("--experiment", help=f"MLflow experiment name (default: {experiment})")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")


def tracking_options(args: argparse.Namespace):
    """The :class:`~ravl_med.tracking.observe.TrackingOptions` of :func:`add_tracking_options`' flags."""
    from ravl_med.tracking.observe import TrackingOptions

    return TrackingOptions(enabled=not args.no_tracking, uri=args.tracking_uri, experiment=args.experiment)


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (``None`` stays ``None``): a comma-separated option."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def apply_overrides(config, source: str | Path | None, values: Mapping[str, Any]) -> None:
    """Command-line overrides: sets every dotted key of ``values`` whose value is not ``None``.

    Args:
        config: a pydantic config (it validates assignments).
        source: the config file, named in the error.
        values: e.g. ``{"manifest": args.manifest, "finetune.output_dir": args.out}``.

    Raises:
        ConfigError: a value the config refuses, as one line naming ``source``.
    """
    try:
        for key, value in values.items():
            if value is None:
                continue
            *parents, name = key.split(".")
            target = config
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, name, value)
    except ValueError as err:  # pydantic validates assignments
        raise ConfigError(f"{source}: {' '.join(str(err).split())}") from None


def add_ingest_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--classes``, ``--workers``, ``--no-progress``."""
    parser.add_argument(
        "--config", type=Path, help="ingestion YAML config (default: built-in defaults, see configs/ingest.yaml)"
    )
    parser.add_argument(
        "--classes",
        help="comma-separated class names; manifest labels outside them are refused (overrides the config)",
    )
    parser.add_argument("--workers", type=int, default=0, help="image reading processes (default: 0, in-process)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_ingest_config(args: argparse.Namespace) -> IngestConfig:
    config = load_config(args.config, IngestConfig)
    if args.classes:
        config.classes = comma_list(args.classes)
    return config


def open_dataset(path: Path, config: IngestConfig) -> Manifest:
    """A manifest CSV, or a folder scanned recursively for images (label-free)."""
    if path.is_dir():
        return Manifest.from_folder(path)
    return Manifest.read(path, classes=config.classes)


def print_scan_report(result: ScanResult, max_listed: int = 20) -> None:
    """The human-readable summary and problem list of a scan, on stdout."""
    summary = result.summary()
    print(f"usable images: {summary['usable']}    refused: {summary['refused']}    warnings: {summary['warnings']}")
    for title, key in (
        ("labels", "labels"),
        ("splits", "splits"),
        ("view positions", "view_positions"),
        ("formats", "formats"),
        ("modalities", "modalities"),
        ("photometric interpretations", "photometric_interpretations"),
        ("transfer syntaxes", "transfer_syntaxes"),
        ("intensity mapping", "voi_applied"),
        ("refused, by reason", "refused_by_reason"),
    ):
        if summary[key]:
            print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in summary[key].items()))
    sizes = summary["image_sizes"]
    if sizes:
        print(
            "image sizes (rows x columns): "
            f"rows {sizes['rows']['min']}-{sizes['rows']['max']} (median {sizes['rows']['median']}), "
            f"columns {sizes['columns']['min']}-{sizes['columns']['max']} (median {sizes['columns']['median']}); "
            "most common " + ", ".join(f"{k} ({v})" for k, v in sizes["most_common"].items())
        )
    for heading, items in (("problems (refused)", result.problems), ("warnings (kept)", result.warnings)):
        if not items:
            continue
        print(f"{heading}:")
        for item in items[:max_listed]:
            where = f"row {item.row}: " if item.row is not None else ""
            print(f"  {where}{item.path}: {item.reason}: {item.detail}")
        if len(items) > max_listed:
            print(f"  ... and {len(items) - max_listed} more (see the quarantine file)")


def write_json(data: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
