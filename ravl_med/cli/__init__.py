"""The ``ravl-med`` command line.

Each subcommand lives in its own module with ``add_parser(subparsers)``, which registers the
parser and sets ``func`` to a ``run(args) -> int`` callable. ``main`` turns the project's own
errors (bad config, unusable input) into a one-line message and a non-zero exit code instead of
a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ravl_med import __version__
from ravl_med.cli import (
    audit,
    benchmark,
    demo,
    finetune,
    ingest,
    manifest,
    mitigate,
    phantom,
    review,
    runs,
    validate,
)
from ravl_med.config import ConfigError
from ravl_med.data.errors import IngestError
from ravl_med.reproducibility import pin_cpu_kernels
from ravl_med.tracking.store import TrackingError

__all__ = ["build_parser", "main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (demo, validate, ingest, manifest, phantom, finetune, audit, review, mitigate, benchmark, runs)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ravl-med",
        description=(
            "RaVL for chest X-ray vision-language models: ingest radiographs, audit a model for "
            "shortcuts (spurious image features tied to a class), and fine-tune them away. "
            "Runs offline; nothing is downloaded at run time."
        ),
        epilog="Run 'ravl-med COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ravl-med`` console script; returns the exit code."""
    # Nothing may reach a model hub at run time; fail fast instead of waiting on timeouts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The same CPU code paths on every x86-64 machine, before torch or numpy compute anything.
    pin_cpu_kernels()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        # pydicom logs every header quirk it reads past; the scan reports what matters per file.
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        # MLflow announces every store it creates or migrates at INFO (it configures its logger when
        # imported, from this variable); the commands say where runs go.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except (ConfigError, IngestError, TrackingError) as err:
        print(f"ravl-med {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"ravl-med {args.command}: interrupted", file=sys.stderr)
        return 130
