"""``ravl-med benchmark``: a grid of phantom settings end to end, with result tables and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.cli.common import (
    add_device_option,
    add_tracking_options,
    apply_overrides,
    comma_list,
    output_option,
    writable_dir,
)
from ravl_med.config import load_config
from ravl_med.stages.config import BenchmarkConfig

#: Where ``mlflow ui`` serves by default.
LOCAL_UI = "http://127.0.0.1:5000"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="run the phantom benchmark: discovery Precision@10 and mitigation worst-group accuracy per method",
        description=(
            "For every setting of a phantom suite (artefact x spurious class x strength x seed): write the "
            "data, fine-tune stage 1, judge validity (did the model learn the shortcut?), audit with RaVL and "
            "the discovery baselines, mitigate valid settings with every method, evaluate on the test split. "
            "Writes OUT/<setting>/result.json (finished settings are reused: rerun to resume), "
            "OUT/tables/{settings,discovery,mitigation}.csv|md and PNG plots; tracked in MLflow "
            "(a parent run, a child run per setting x stage x method)."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--suite", choices=[p.stem for p in sorted(benchmarks_dir().glob("*.yaml"))],
                        help="built-in definition datasets/benchmarks/SUITE.yaml: smoke (CI-sized, minutes), "
                             "standard (the discovery table, hours on a CPU), mitigation (the mitigation table on "
                             "learnable spurious classes, and what each method does where no shortcut was "
                             "learned; hours on a CPU), gpu (larger, for a GPU machine), demo")
    source.add_argument("--config", type=Path, help="a benchmark YAML (format of datasets/benchmarks/*.yaml)")
    parser.add_argument("--out", type=Path, help="output folder (overrides output_dir)")
    parser.add_argument("--settings", help="comma-separated setting names or shell patterns to run, e.g. "
                        "'*-v0.90-*' (default: the config's 'settings', else every setting of the suite)")
    parser.add_argument("--methods", help="comma-separated mitigation methods (default: the config's)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_option(parser)
    add_tracking_options(parser, local="<OUT>", experiment="ravl-med/benchmark/<suite>")
    parser.set_defaults(func=run)


def benchmarks_dir() -> Path:
    """``datasets/benchmarks`` (the datasets folder honours ``$RAVL_MED_DATASETS``)."""
    from ravl_med.phantom.config import datasets_dir

    return datasets_dir().parent / "benchmarks"


def load_benchmark(args: argparse.Namespace) -> BenchmarkConfig:
    """The config named by ``--suite`` / ``--config`` with the command-line overrides applied.

    Raises:
        ConfigError: a bad config or override, or an output folder that cannot be written.
    """
    path = args.config if args.config is not None else benchmarks_dir() / f"{args.suite}.yaml"
    config = load_config(path, BenchmarkConfig)
    apply_overrides(config, {"--out": ("output_dir", args.out), "--settings": ("settings", comma_list(args.settings or None)),
                             "--methods": ("mitigation.methods", comma_list(args.methods or None))})
    # Stage 1, the mitigations and their evaluations run on finetune.device, the audit on audit.device.
    for key in ("finetune.device", "audit.device"):
        apply_overrides(config, {"--device": (key, args.device)})
    writable_dir(Path(config.output_dir), output_option(args.out, path))
    return config


def run_tracked(config: BenchmarkConfig, args: argparse.Namespace, run_name: str = "benchmark") -> list:
    """The benchmark stage inside an MLflow parent run (a child run per setting x stage x method)."""
    from ravl_med.phantom import find_suite
    from ravl_med.stages.benchmark import run_benchmark
    from ravl_med.tracking import optional_tracker
    from ravl_med.tracking.observe import TrackingObserver, log_benchmark_summary

    suite = find_suite(config.suite)
    settings = suite.select(config.settings)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    experiment = args.experiment or f"ravl-med/benchmark/{suite.name}"
    with optional_tracker(not args.no_tracking, experiment, run_name, tracking_uri=args.tracking_uri,
                          tags={"command": run_name, "suite": suite.name}, local_dir=out) as tracker:
        if tracker is not None:
            tracker.log_config(config)
            tracker.log_params({"suite.settings": len(settings), "code_version": tracker.tags.get("ravl.code_version")})
        observer = None if tracker is None else TrackingObserver(tracker)
        results, files = run_benchmark(config, observer=observer, progress=not args.no_progress)
        if tracker is not None:
            # One column per method in the parent run: the runs table compares methods without expanding it.
            log_benchmark_summary(tracker, results, precision_k=config.audit.evaluation.precision_k)
            tracker.log_artifacts(out / "tables", "tables")
            print(f"tracking: {tracker.store} store {tracker.tracking_uri}, experiment {experiment!r}, "
                  f"run {tracker.run_id}")
            # The address opens the runs table (model-training view), not MLflow's GenAI view.
            link = tracker.ui_url() or (f"{tracker.ui_url(LOCAL_UI)} after 'mlflow ui --backend-store-uri "
                                        f"{tracker.tracking_uri}'")
            print(f"tracking: runs table at {link}")
    print(f"tables: {', '.join(str(p) for p in files.values())}")
    return results


def run(args: argparse.Namespace) -> int:
    config = load_benchmark(args)
    rows = run_tracked(config, args)
    valid = sum(r.valid for r in rows)
    print(f"{len(rows)} setting(s), {valid} valid (the stage-1 model learned the shortcut), "
          f"{len(rows) - valid} invalid")
    tables = Path(config.output_dir) / "tables"
    for name in ("discovery", "mitigation"):
        print(f"\n{name} (valid settings):\n{(tables / f'{name}.md').read_text()}")
    return 0
