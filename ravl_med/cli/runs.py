"""``ravl-med runs compare``: worst-group accuracy per method, read back from the tracking store."""

from __future__ import annotations

import argparse
import os

from ravl_med.config import ConfigError
from ravl_med.tracking import DEFAULT_DB, local_store_path, resolve_tracking_uri


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="review tracked runs (MLflow): compare worst-group accuracy per method",
        description="Read the MLflow tracking store that 'finetune' and 'audit' log to.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    compare = actions.add_parser(
        "compare",
        help="print worst-group and overall accuracy per method",
        description=(
            "One line per run holding a '<split>/acc/worst_group' metric (best run first within a method), "
            "with its experiment, method, setting and seed tags. Per-group metrics are named "
            "'<split>/acc/group/<class>/<feature>-<0|1>'. A local store (SQLite file or folder) that does "
            "not exist is an error: nothing is created."
        ),
    )
    compare.add_argument("--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                         f"sqlite:///<cwd>/{DEFAULT_DB}; <cwd> is $RAVL_TRACKING_DIR when set)")
    compare.add_argument("--experiment", action="append",
                         help="experiment name (repeatable; default: every experiment)")
    compare.add_argument("--split", default="test", help="split whose metrics are compared (default: test)")
    parser.set_defaults(func=run)


def existing_store(tracking_uri: str | None) -> str:
    """The resolved tracking URI, after checking that a local store is there (MLflow would create it).

    Raises:
        ConfigError: a local store (SQLite file or store folder) that does not exist; nothing is created.
    """
    uri = resolve_tracking_uri(tracking_uri)
    store = local_store_path(uri)
    if store is not None and not store.exists():
        source = ("--tracking-uri" if tracking_uri else "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
                  else "the default store")
        raise ConfigError(f"no tracking store at {store} ({source} {uri}); 'runs' only reads a store and "
                          "creates none: check the URI or run a tracked command first")
    return uri


def compare_table(tracking_uri: str | None = None, experiments: list[str] | None = None, split: str = "test"):
    """A DataFrame: experiment, run, method, setting, seed, worst_group, overall, run_id; sorted by method.

    Raises:
        ConfigError: the tracking store is local and does not exist (see :func:`existing_store`).
    """
    uri = existing_store(tracking_uri)
    # Imported after the check, so that a wrong URI fails in a second.
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.search_experiments()
    if experiments:
        found = [e for e in found if e.name in experiments]
    names = {e.experiment_id: e.name for e in found}
    worst, overall = f"{split}/acc/worst_group", f"{split}/acc/overall"
    rows = []
    if names:
        for r in client.search_runs(list(names), filter_string=f"metrics.`{worst}` >= 0", max_results=5000):
            rows.append({"experiment": names[r.info.experiment_id], "run": r.info.run_name,
                         "method": r.data.tags.get("method", ""), "setting": r.data.tags.get("setting", ""),
                         "seed": r.data.tags.get("seed", ""), "worst_group": r.data.metrics.get(worst),
                         "overall": r.data.metrics.get(overall), "run_id": r.info.run_id})
    columns = ["experiment", "run", "method", "setting", "seed", "worst_group", "overall", "run_id"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["method", "worst_group"], ascending=[True, False], kind="stable").reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    table = compare_table(args.tracking_uri, args.experiment, args.split)
    if table.empty:
        print(f"no run with a {args.split}/acc/worst_group metric")
        return 0
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0
