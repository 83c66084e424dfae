"""Options and input handling shared by subcommands."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from ravl_med.config import ConfigError, FinetuneRecipe, IngestConfig, load_config
from ravl_med.data.manifest import Manifest, empty_split_message, require_single_labels

if TYPE_CHECKING:
    from ravl_med.data.scan import ScanResult

__all__ = [
    "DEVICES",
    "add_device_option",
    "add_ingest_options",
    "add_tracking_options",
    "apply_overrides",
    "check_split",
    "comma_list",
    "load_ingest_config",
    "open_dataset",
    "output_option",
    "print_scan_report",
    "tracking_options",
    "writable_dir",
    "writable_file",
]


def add_tracking_options(parser, local: str = "<cwd>", experiment: str = "ravl-med/<dataset>") -> None:
    """``--tracking-uri``, ``--experiment``, ``--no-tracking`` on an argparse parser.

    Args:
        local: the folder of the default local store, as the help shows it.
        experiment: the default experiment name, as the help shows it.
    """
    from ravl_med.tracking import DEFAULT_ARTIFACT_DIR, DEFAULT_DB

    folder = "" if local != "<cwd>" else "; <cwd> is $RAVL_TRACKING_DIR when set"
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        f"sqlite:///{local}/{DEFAULT_DB} with artifacts in {local}/{DEFAULT_ARTIFACT_DIR}{folder})")
    parser.add_argument("--experiment", help=f"MLflow experiment name (default: {experiment})")
    parser.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")


#: The values of the configs' ``device`` field (``auto``: CUDA when available, else the CPU).
DEVICES: tuple[str, ...] = get_args(FinetuneRecipe.model_fields["device"].annotation)


def add_device_option(parser) -> None:
    """``--device`` (one of :data:`DEVICES`) on a computing command's parser; default ``None``.

    The command passes ``args.device`` to :func:`apply_overrides` under each of its configs' ``device``
    keys (``None`` keeps the YAML's value).
    """
    parser.add_argument("--device", choices=DEVICES,
                        help="where to compute: auto (CUDA when available, else the CPU), cpu or cuda "
                             "(overrides the config's device)")


def tracking_options(args: argparse.Namespace):
    """The :class:`~ravl_med.tracking.observe.TrackingOptions` of :func:`add_tracking_options`' flags."""
    from ravl_med.tracking.observe import TrackingOptions

    return TrackingOptions(enabled=not args.no_tracking, uri=args.tracking_uri, experiment=args.experiment)


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (``None`` stays ``None``): a comma-separated option."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def apply_overrides(config, overrides: Mapping[str, tuple[str, Any]]) -> None:
    """Command-line overrides: sets the config key of every option whose value is not ``None``.

    Args:
        config: a pydantic config (it validates assignments).
        overrides: option -> (dotted config key, value), e.g.
            ``{"--manifest": ("manifest", args.manifest), "--out": ("finetune.output_dir", args.out)}``.

    Raises:
        ConfigError: a value the config refuses, as one line naming the option (not the config file).
    """
    for option, (key, value) in overrides.items():
        if value is None:
            continue
        *parents, name = key.split(".")
        target = config
        for parent in parents:
            target = getattr(target, parent)
        try:
            setattr(target, name, value)
        except ValidationError as err:  # pydantic validates assignments
            error = err.errors()[0]
            if error["type"] == "literal_error":
                reason = f"unknown value {error['input']!r}; choose from {error['ctx']['expected']}"
            else:
                reason = f"got {error['input']!r}; {error['msg'].removeprefix('Value error, ')}"
            raise ConfigError(f"{option}: {reason}") from None


def output_option(out: Path | None, config: str | Path | None, key: str = "output_dir") -> str:
    """How the user named an output folder, for messages: ``--out`` when given, else ``<config>: <key>``."""
    return "--out" if out is not None else f"{config}: {key}"


def _cannot_write_in(folder: Path) -> str | None:
    """Why no file can be created in the existing ``folder`` (``None``: one can)."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        return err.strerror or str(err)
    return None


def writable_dir(path: Path, option: str) -> Path:
    """Creates the output folder ``path`` when missing and checks that files can be written in it.

    Commands call it before any work (and before importing torch), so that an unusable output
    location fails in a second instead of after the start-up or the run.

    Args:
        path: the output folder.
        option: how the user named it (``--out``, ``<config>: output_dir``), for the message.

    Returns:
        ``path``.

    Raises:
        ConfigError: one line naming ``option`` and ``path``: it is a file, it cannot be created, or
            it is not writable (with the system's reason, e.g. "Permission denied").
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot create this folder ({err.strerror or err})") from None
    reason = _cannot_write_in(path)
    if reason is not None:
        raise ConfigError(f"{option} {path}: cannot write in this folder ({reason})")
    return path


def writable_file(path: Path, option: str) -> Path:
    """Checks, before any work, that the output file ``path`` can be written (its folder is created).

    Args:
        path: the output file.
        option: the option that named it (``--quarantine``), for the message.

    Returns:
        ``path``.

    Raises:
        ConfigError: one line naming ``option`` and ``path``: it is a folder, or its folder cannot be
            created or written in.
    """
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; name a file")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot create its folder ({err.strerror or err})") from None
    reason = _cannot_write_in(folder)
    if reason is not None:
        raise ConfigError(f"{option} {path}: cannot write in its folder {folder.absolute()} ({reason})")
    return path


def check_split(manifest: Path, split: str | None, classes: Sequence[str]) -> None:
    """Checks, before torch loads, that ``split`` of ``manifest`` has rows a single-label model can use.

    Raises:
        ConfigError: no row of the split is usable with ``classes`` (the message names the labels
            the split has and the configured classes).
        IngestError: a row of the split has several labels (see
            :func:`~ravl_med.data.manifest.require_single_labels`), or the manifest is unreadable.
    """
    checked = Manifest.read(manifest, classes=classes)
    table, split = checked.table, checked.evaluated_split(split)
    if split is not None:
        table = table[table["split"] == split]
    if table.empty:
        raise ConfigError(empty_split_message(manifest, split, classes))
    require_single_labels(table, str(manifest) if split is None else f"{manifest}, split {split!r}")


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


def print_scan_report(result: ScanResult, max_listed: int = 20, all_warnings: str = "") -> None:
    """The human-readable summary and problem list of a scan, on stdout.

    Args:
        all_warnings: where the warnings past ``max_listed`` can be read, as the command says it.
    """
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
        ("burned-in annotation (DICOM)", "burned_in_annotation"),
        ("refused, by reason", "refused_by_reason"),
    ):
        if summary[key]:
            print(f"{title}: " + ", ".join(f"{k}={v}" for k, v in summary[key].items()))
    burned = summary["burned_in_text"]
    if burned["pixel_check"] is not None or burned["images"]:
        sources = [f"{burned['dicom_attribute']} by the DICOM attribute (BurnedInAnnotation YES)"]
        sources.append("the pixel check not run" if burned["pixel_check"] is None
                       else f"{burned['pixel_check']} by the pixel check (lines of text-like marks)")
        print(f"burned-in text: {burned['images']} image(s) may hold it, flagged {' and '.join(sources)}")
    sizes = summary["image_sizes"]
    if sizes:
        print(
            "image sizes (rows x columns): "
            f"rows {sizes['rows']['min']}-{sizes['rows']['max']} (median {sizes['rows']['median']}), "
            f"columns {sizes['columns']['min']}-{sizes['columns']['max']} (median {sizes['columns']['median']}); "
            "most common " + ", ".join(f"{k} ({v})" for k, v in sizes["most_common"].items())
        )
    for heading, items, where_all in (("problems (refused)", result.problems, " (see the quarantine file)"),
                                      ("warnings (kept)", result.warnings, all_warnings and f" ({all_warnings})")):
        if not items:
            continue
        print(f"{heading}:")
        for item in items[:max_listed]:
            where = f"row {item.row}: " if item.row is not None else ""
            print(f"  {where}{item.path}: {item.reason}: {item.detail}")
        if len(items) > max_listed:
            print(f"  ... and {len(items) - max_listed} more{where_all}")


def write_json(data: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
