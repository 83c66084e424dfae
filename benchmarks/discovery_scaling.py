"""RaVL discovery time and peak memory vs number of regions, and against the authors' k sweep.

Synthetic 512-d float32 embeddings with a planted spurious feature
(:func:`ravl_med.discover.synthetic.make_planted_spurious`, 4 regions per image, class 1 spurious).
Every size runs in its own subprocess, so the max RSS (``resource.getrusage``) is that size's own.

* **scaling** (default): ``RaVLDiscoverer.fit`` at 10^3 .. 10^6 regions, 2 classes (k swept over
  [4, 10]); fit seconds, the traced peak (``tracemalloc``, numpy allocations included: what ``fit``
  allocated on top of its inputs) and the process max RSS, in MiB.
* **compare** (``--compare``): per size and class count C, on the same data in the same process,
  a faithful re-implementation of the authors' ``discover()`` clustering (:func:`reference_sweep`:
  full float32 cosine distance matrix; for every k in [2C, 5C), scikit-learn-extra's
  ``KMedoids(method="alternate", init="k-medoids++", max_iter=300)`` re-written in numpy, then
  ``sklearn.metrics.silhouette_score(D, labels, metric="precomputed")``; best silhouette wins)
  against ours (:func:`ravl_med.discover._clustering.cluster_regions` with the defaults, which
  sweeps one more k: [2C, 5C]). Both run inside ``RaVLDiscoverer.fit`` (the reference through a
  patched ``cluster_regions``), so recovery is scored the same way: chosen k, outcome, whether the
  top cluster's attribute is the planted class, P@10 of the planted regions, and the adjusted Rand
  index of each labelling against the planted components; "purity" is the fraction of the top
  cluster that is planted. "ref s" and "ours s" are the clustering wall-clock seconds, "ratio" =
  ref s / ours s; "fit s" adds the cluster statistics (n_boot = 200, the same code for both).

Measured (2 shared cores, load average ~4, one run each, seed 0; ours = the defaults: k chosen on
1000 sampled regions, chosen k refit on 2 samples of 2000; seconds of the clustering step inside
``RaVLDiscoverer.fit``, whose total was within 0.1 s of it for both):

    regions  C  ref s  ours s  ratio   k ref/ours  P@10, attribute, purity (both)  ARI ref/ours
       8000  2    8.0     0.8   10.4       6/6      1.00, right, 1.0               1.0/1.0
       8000 10   29.1     1.7   17.4      23/20     1.00, right, 1.0               0.673/0.565
      16000  2   29.1     0.6   51.1       6/6      1.00, right, 1.0               1.0/1.0
      16000 10   69.7     0.9   79.2      20/20     1.00, right, 1.0               0.689/0.561
      32000  2  128.7     0.6  211.0       6/6      1.00, right, 1.0               1.0/1.0
      32000 10  257.0     1.5  176.0      21/20     1.00, right, 1.0               0.573/0.561
    scaling (C = 2): 10^6 regions fit in 4.2 s, 63 MiB traced on top of the inputs, max RSS 3718 MiB
    (inputs 1961 MiB).

With C = 10 (14 planted components, k >= 20) both split the three large background components and
the planted one; the ARI gap is where those splits fall (at 8000 regions, k = 20: the same
components split, exact silhouette 0.2204 ours vs 0.2205 reference, total cost 1.3% higher ours).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/discovery_scaling.py --max-regions 100000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/discovery_scaling.py --sizes 1000 20000 1000000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/discovery_scaling.py --compare --sizes 8000 16000 32000 --classes 2 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

# Benchmark the checkout this file lives in, not whichever ravl_med the interpreter has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def run_one(n_regions: int, dim: int, exact_max_regions: int | None, seed: int) -> dict:
    from ravl_med.discover import RaVLDiscoverer, precision_at_k
    from ravl_med.discover.synthetic import make_planted_spurious

    start = time.perf_counter()
    data = make_planted_spurious(n_images=n_regions // 4, regions_per_image=4, n_classes=2, spurious_class=1,
                                 dim=dim, random_state=seed)
    generate_s = time.perf_counter() - start
    tracemalloc.start()
    start = time.perf_counter()
    params = {} if exact_max_regions is None else {"exact_max_regions": exact_max_regions}
    disc = RaVLDiscoverer(n_boot=200, **params).fit(*data.fit_args())
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


# -- the authors' sweep, re-implemented (scikit-learn-extra needs numpy < 2) -----------------------


def _kpp_init(distances: np.ndarray, k: int, random_state: np.random.RandomState) -> np.ndarray:
    """scikit-learn-extra's ``KMedoids._kpp_init``: k-means++ on D with 2 + log(k) local trials."""
    n = distances.shape[0]
    n_local_trials = 2 + int(np.log(k))
    centers = np.empty(k, dtype=int)
    centers[0] = random_state.randint(n)
    closest_dist_sq = distances[centers[0], :] ** 2
    current_pot = closest_dist_sq.sum()
    for c in range(1, k):
        rand_vals = random_state.random_sample(n_local_trials) * current_pot
        candidate_ids = np.searchsorted(np.cumsum(closest_dist_sq, dtype=np.float64), rand_vals)
        np.clip(candidate_ids, None, n - 1, out=candidate_ids)
        distance_to_candidates = distances[candidate_ids, :] ** 2
        best_candidate, best_pot, best_dist_sq = None, None, None
        for trial in range(n_local_trials):
            new_dist_sq = np.minimum(closest_dist_sq, distance_to_candidates[trial])
            new_pot = new_dist_sq.sum()
            if best_candidate is None or new_pot < best_pot:
                best_candidate, best_pot, best_dist_sq = candidate_ids[trial], new_pot, new_dist_sq
        centers[c], current_pot, closest_dist_sq = best_candidate, best_pot, best_dist_sq
    return centers


def _alternate(distances: np.ndarray, medoids: np.ndarray, max_iter: int = 300) -> np.ndarray:
    """scikit-learn-extra's ``method="alternate"``: assign, move each medoid to its cluster's
    min-sum point, until the medoids stop changing (an empty cluster keeps its medoid)."""
    medoids = medoids.copy()
    for _ in range(max_iter):
        old = medoids.copy()
        labels = np.argmin(distances[medoids, :], axis=0)
        for c in range(medoids.size):
            members = np.flatnonzero(labels == c)
            if members.size == 0:
                continue
            costs = distances[members, members[:, None]].sum(axis=1)
            best = int(np.argmin(costs))
            current = costs[np.argmax(members == medoids[c])]
            if costs[best] < current:
                medoids[c] = members[best]
        if np.array_equal(old, medoids):
            break
    return medoids


def reference_sweep(embeddings: np.ndarray, ks: list[int], random_state: int = 0):
    """The authors' ``discover()`` clustering -> a :class:`ClusteringResult` (mode "reference")."""
    from sklearn.metrics import silhouette_score

    from ravl_med.discover._clustering import ClusteringResult, cosine_distance_matrix

    distances = cosine_distance_matrix(embeddings)  # (n, n) float32, as the brief's reference
    rs = np.random.RandomState(random_state)
    silhouettes, losses, medoid_sets = {}, {}, {}
    for k in ks:
        medoids = _alternate(distances, _kpp_init(distances, k, rs))
        labels = np.argmin(distances[medoids, :], axis=0)
        silhouettes[k] = float(silhouette_score(distances, labels, metric="precomputed"))
        losses[k] = float(distances[medoids[labels], np.arange(distances.shape[0])].sum(dtype=np.float64))
        medoid_sets[k] = medoids
    k = max(silhouettes, key=lambda q: silhouettes[q])  # first best, as their loop keeps it
    medoids = medoid_sets[k].astype(np.int64)
    labels = np.argmin(distances[medoids, :], axis=0).astype(np.int64)
    similarity = (1.0 - distances[medoids[labels], np.arange(distances.shape[0])]).astype(np.float32)
    return ClusteringResult(k, labels, medoids, similarity, silhouettes, losses, "reference", [])


def compare_one(n_regions: int, n_classes: int, dim: int, seed: int) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from ravl_med.discover import RaVLDiscoverer, precision_at_k
    from ravl_med.discover import ravl as ravl_module
    from ravl_med.discover.synthetic import make_planted_spurious

    data = make_planted_spurious(n_images=n_regions // 4, regions_per_image=4, n_classes=n_classes,
                                 spurious_class=1, dim=dim, random_state=seed)
    ours_fn = ravl_module.cluster_regions
    clock: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(embeddings, ks, **kwargs):
            start = time.perf_counter()
            result = fn(embeddings, ks, **kwargs)
            clock[name] = time.perf_counter() - start
            return result
        return wrapper

    def reference(embeddings, ks, **kwargs):
        return reference_sweep(embeddings, ks, random_state=kwargs.get("random_state") or 0)

    # Warm-up on a small slice: imports, BLAS and kmedoids start-up are not what is compared.
    small = make_planted_spurious(n_images=200, regions_per_image=4, n_classes=n_classes, spurious_class=1,
                                  dim=dim, random_state=seed)
    reference_sweep(small.region_embeddings, [2 * n_classes])
    RaVLDiscoverer(n_boot=10).fit(*small.fit_args())

    row: dict = {"n_regions": int(data.region_embeddings.shape[0]), "C": n_classes}
    for name, fn, params in (("ref", reference, {"k_range_inclusive": False}), ("ours", ours_fn, {})):
        ravl_module.cluster_regions = timed(name, fn)
        try:
            start = time.perf_counter()
            disc = RaVLDiscoverer(n_boot=200, random_state=seed, **params).fit(*data.fit_args())
            fit_s = time.perf_counter() - start
        finally:
            ravl_module.cluster_regions = ours_fn
        top = disc.ranked_clusters_[0] if disc.ranked_clusters_ else None
        row[name] = {
            "s": round(clock[name], 2), "fit_s": round(fit_s, 2), "k": disc.n_clusters_, "mode": disc.clustering_mode_,
            "ks": f"{min(disc.silhouette_)}-{max(disc.silhouette_)}", "outcome": disc.outcome_,
            "attribute_ok": top is not None and top.attribute == data.spurious_class,
            "p_at_10": precision_at_k(disc.top_ranked_regions(), data.region_is_spurious, k=10),
            # Fraction of the top cluster that is the planted feature (1.0: a pure planted cluster).
            "purity": round(float(data.region_is_spurious[disc.ranked_regions_[0]].mean()), 3) if top else None,
            "ari": None if disc.labels_ is None else round(adjusted_rand_score(data.region_component, disc.labels_), 3),
        }
    row["ratio"] = round(row["ref"]["s"] / max(row["ours"]["s"], 1e-9), 1)
    row["process_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def _subprocess(args: list[str]) -> dict | str:
    done = subprocess.run([sys.executable, __file__, *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="regions (default: 1e3 1e4 1e5 1e6; with --compare 8000 16000 32000)")
    parser.add_argument("--max-regions", type=int, default=None, help="skip sizes above this")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--exact-max-regions", type=int, default=None, help="default: RaVLDiscoverer's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="ours vs the authors' sweep, same data, same run")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 10], help="C values (--compare)")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--single-classes", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single is not None:
        if args.single_classes is not None:
            print(json.dumps(compare_one(args.single, args.single_classes, args.dim, args.seed)))
        else:
            print(json.dumps(run_one(args.single, args.dim, args.exact_max_regions, args.seed)))
        return
    default = [8000, 16000, 32000] if args.compare else [1000, 10000, 100000, 1000000]
    sizes = [n for n in (args.sizes or default) if args.max_regions is None or n <= args.max_regions]
    common = ["--dim", str(args.dim), "--seed", str(args.seed)]
    if args.compare:
        print(f"{'regions':>8} {'C':>3} {'ref s':>7} {'ours s':>7} {'ratio':>6} | {'fit s ref/ours':>15} | "
              f"{'k ref/ours':>11} {'outcome ref/ours':>17} {'attr':>11} {'P@10':>9} {'purity':>11} {'ARI ref/ours':>13} "
              f"{'maxRSS MiB':>10}", flush=True)
        for n in sizes:
            for c in args.classes:
                r = _subprocess(["--single", str(n), "--single-classes", str(c), *common])
                if isinstance(r, str):
                    print(f"{n:>8} {c:>3} {r}", flush=True)
                    continue
                a, b = r["ref"], r["ours"]
                print(f"{r['n_regions']:>8} {c:>3} {a['s']:>7.1f} {b['s']:>7.1f} {r['ratio']:>6.1f} | "
                      f"{a['fit_s']:>7.1f}/{b['fit_s']:<7.1f} | {a['k']!s:>5}/{b['k']!s:<5} "
                      f"{a['outcome']:>8}/{b['outcome']:<8} {a['attribute_ok']!s:>5}/{b['attribute_ok']!s:<5} "
                      f"{a['p_at_10']:>4.2f}/{b['p_at_10']:<4.2f} {a['purity']!s:>5}/{b['purity']!s:<5} {a['ari']!s:>6}/{b['ari']!s:<6} "
                      f"{r['process_max_rss_mib']:>10.0f}", flush=True)
        return
    header = f"{'regions':>9} {'mode':>8} {'k':>3} {'fit s':>8} {'traced MiB':>11} {'maxRSS MiB':>11} " \
             f"{'inputs MiB':>11} {'outcome':>9} {'attr':>5} {'P@10':>5}"
    print(header, flush=True)
    for n in sizes:
        extra = [] if args.exact_max_regions is None else ["--exact-max-regions", str(args.exact_max_regions)]
        r = _subprocess(["--single", str(n), *common, *extra])
        if isinstance(r, str):
            print(f"{n:>9} {r}", flush=True)
            continue
        print(f"{r['n_regions']:>9} {r['mode']:>8} {r['k']!s:>3} {r['fit_s']:>8.1f} {r['fit_traced_peak_mib']:>11.0f} "
              f"{r['process_max_rss_mib']:>11.0f} {r['inputs_mib']:>11.0f} {r['outcome']:>9} "
              f"{r['attribute_ok']!s:>5} {r['p_at_10']:>5.2f}", flush=True)


if __name__ == "__main__":
    main()
