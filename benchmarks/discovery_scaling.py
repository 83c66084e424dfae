"""RaVL discovery time and peak memory vs number of regions (10^3 .. 10^6), 512-d float32 embeddings.

Synthetic data with a planted spurious feature (:func:`ravl_med.discover.synthetic.make_planted_spurious`,
2 classes, 4 regions per image, so k is swept over [4, 10]). Each size runs in its own subprocess so
that the max RSS (``resource.getrusage``) is that size's own; the traced peak (``tracemalloc``,
numpy allocations included) is the memory ``fit`` itself allocated on top of its inputs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/discovery_scaling.py --max-regions 100000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/discovery_scaling.py --sizes 1000 20000 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc


def run_one(n_regions: int, dim: int, exact_max_regions: int, seed: int) -> dict:
    from ravl_med.discover import RaVLDiscoverer, precision_at_k
    from ravl_med.discover.synthetic import make_planted_spurious

    start = time.perf_counter()
    data = make_planted_spurious(n_images=n_regions // 4, regions_per_image=4, n_classes=2, spurious_class=1,
                                 dim=dim, random_state=seed)
    generate_s = time.perf_counter() - start
    tracemalloc.start()
    start = time.perf_counter()
    disc = RaVLDiscoverer(exact_max_regions=exact_max_regions, n_boot=200).fit(*data.fit_args())
    fit_s = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    top = disc.ranked_clusters_[0] if disc.ranked_clusters_ else None
    return {
        "n_regions": int(data.region_embeddings.shape[0]),
        "mode": disc.clustering_mode_,
        "k": disc.n_clusters_,
        "fit_s": round(fit_s, 2),
        "generate_s": round(generate_s, 2),
        "fit_traced_peak_mib": round(traced_peak / 2**20, 1),
        "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "inputs_mib": round((data.region_embeddings.nbytes + data.region_scores.nbytes) / 2**20, 1),
        "outcome": disc.outcome_,
        "attribute_ok": top is not None and top.attribute == data.spurious_class,
        "p_at_10": precision_at_k(disc.top_ranked_regions(), data.region_is_spurious, k=10),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 1000000])
    parser.add_argument("--max-regions", type=int, default=None, help="skip sizes above this")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--exact-max-regions", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        print(json.dumps(run_one(args.single, args.dim, args.exact_max_regions, args.seed)))
        return
    sizes = [n for n in args.sizes if args.max_regions is None or n <= args.max_regions]
    header = f"{'regions':>9} {'mode':>8} {'k':>3} {'fit s':>8} {'traced MiB':>11} {'maxRSS MiB':>11} " \
             f"{'inputs MiB':>11} {'outcome':>9} {'attr':>5} {'P@10':>5}"
    print(header, flush=True)
    for n in sizes:
        cmd = [sys.executable, __file__, "--single", str(n), "--dim", str(args.dim),
               "--exact-max-regions", str(args.exact_max_regions), "--seed", str(args.seed)]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{n:>9} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['n_regions']:>9} {r['mode']:>8} {r['k']!s:>3} {r['fit_s']:>8.1f} {r['fit_traced_peak_mib']:>11.0f} "
              f"{r['process_max_rss_mib']:>11.0f} {r['inputs_mib']:>11.0f} {r['outcome']:>9} "
              f"{r['attribute_ok']!s:>5} {r['p_at_10']:>5.2f}", flush=True)


if __name__ == "__main__":
    main()
