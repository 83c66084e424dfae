"""``ravl-med demo``: the product's main job on a built-in phantom hospital, start to finish."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ravl_med.cli.common import add_device_option, add_tracking_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="write a phantom hospital with a hidden shortcut, fine-tune, audit, mitigate, summarise",
        description=(
            "Writes a phantom chest X-ray dataset as DICOM with a hidden shortcut (default: a chest drain "
            "tied to pneumothorax at Cramer's V 0.9 in the fine-tuning split), fine-tunes the tiny model on "
            "it (it learns the shortcut), audits it with RaVL and the discovery baselines, mitigates with "
            "RaVL's region-aware loss, and prints what was found, the per-group accuracy before and after, "
            "and where the HTML report and the MLflow run are. CPU: a few minutes on 2 cores; a GPU is used "
            "when present. Rerunning reuses finished work in OUT (delete it to start over)."
        ),
    )
    parser.add_argument("--config", type=Path,
                        help="a benchmark YAML for a larger demo (default: datasets/benchmarks/demo.yaml)")
    parser.add_argument("--out", type=Path, help="output folder (default: the config's output_dir, outputs/demo)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_option(parser)
    add_tracking_options(parser, local="<OUT>", experiment="ravl-med/benchmark/demo")
    parser.set_defaults(func=run, suite="demo", settings=None, methods=None)


def _group_lines(before: pd.DataFrame, after: pd.DataFrame, feature: str, method: str) -> list[str]:
    """The two group tables side by side: class, feature present, images, accuracy before and after."""
    merged = before.merge(after, on=["class", "feature_present"], suffixes=("_before", "_after"))
    after = f"after ({method})"
    lines = [f"  {'class':<18} {feature + '?':<14} {'images':>6}  {'before':>7}  {after:>{len(after)}}"]
    for row in merged.to_dict("records"):
        lines.append(f"  {row['class']:<18} {'yes' if row['feature_present'] else 'no':<14} "
                     f"{int(row['count_before']):>6}  {row['accuracy_before']:>7.1%}  {row['accuracy_after']:>{len(after)}.1%}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ravl_med.cli.benchmark import load_benchmark, run_tracked
    from ravl_med.config import ConfigError
    from ravl_med.phantom import find_suite

    config = load_benchmark(args)
    selected = find_suite(config.suite).select(config.settings)
    if len(selected) != 1:
        raise ConfigError(f"the demo runs one setting; this config selects {len(selected)} "
                          "(name one in 'settings', or use 'ravl-med benchmark' for a grid)")
    row = run_tracked(config, args, run_name="demo")[0]
    root = Path(row.paths["root"])
    feature = row.artefact.replace("_", " ")
    print("\n" + "=" * 78)
    print(f"Hidden shortcut planted: {feature} <-> {row.spurious_class} (Cramer's V {row.strength:.2f} "
          "in the fine-tuning split; independent of the class in the test split).")
    top = row.top_cluster
    precision = ", ".join(f"{m} {p:.2f}" for m, p in row.discovery.items())
    if top is None:
        print(f"Audit (RaVL): outcome {row.audit_outcome}, no cluster reported; Precision@10 against the "
              f"ground-truth {feature} masks: {precision}")
    else:
        evidence = "".join(f", {name} {value}" for name, value in (
            ("adjusted p", None if top.get("p_adjusted") is None else f"{top['p_adjusted']:.3g}"),
            ("stability", None if top.get("stability") is None else f"{top['stability']:.0%}")) if value)
        print(f"Audit (RaVL): top cluster ({top.get('n_regions')} regions in {top.get('n_images')} images) tied to "
              f"{top.get('attribute_name')!r}, influence {top.get('influence') or float('nan'):.2f}{evidence}; "
              f"Precision@10 against the ground-truth {feature} masks: {precision}")
    if not row.valid:
        print(f"The fine-tuned model did not learn the shortcut (gap {row.shortcut_gap:+.2f}); nothing to mitigate.")
    else:
        after = next(iter(row.mitigation))  # the config's first method: the recommended one
        before_table = pd.read_csv(root / "groups" / "stage1.csv")
        after_table = pd.read_csv(root / "groups" / f"{after}.csv")
        print(f"\nPer-group zero-shot accuracy on the test split (class x {feature} present), before "
              f"mitigation (the stage-1 model) and after:")
        print("\n".join(_group_lines(before_table, after_table, feature, after)))
        print("\nWorst-group accuracy: before {:.1%} -> after {:.1%} ({})   overall: {:.1%} -> {:.1%}".format(
            row.stage1["image_worst_group"], row.mitigation[after]["image_worst_group"], after,
            row.stage1["image_accuracy"], row.mitigation[after]["image_accuracy"]))
        if len(row.mitigation) > 1:
            print("\nSide by side (same start, recipe, seed and number of steps):")
            print(f"  {'model':<28} {'worst group':>11}  {'overall':>7}")
            print(f"  {'before: stage 1':<28} {row.stage1['image_worst_group']:>11.1%}  {row.stage1['image_accuracy']:>7.1%}")
            for method, values in row.mitigation.items():
                name = "standard (= stage 1)" if method == "standard" else method
                print(f"  {name:<28} {values['image_worst_group']:>11.1%}  {values['image_accuracy']:>7.1%}")
    print(f"\nAudit report: {row.paths['report']}")
    print(f"Everything: {root}")
    if not args.no_tracking:
        from ravl_med.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri, Path(config.output_dir))
        print(f"MLflow: {uri}" + (f"  (UI: mlflow ui --backend-store-uri {uri})" if uri.startswith("sqlite") else ""))
    return 0
