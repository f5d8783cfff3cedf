"""Benchmark: clustering quality of our default against BERTopic's pipeline, k-means and the threshold method.

    python bench/quality.py                          # the four labelled corpora
    python bench/quality.py --corpus banking77 --corpus clinc150
    python bench/quality.py --sweep                  # also our method at fixed resolutions
    python bench/quality.py --subsample 10 --seeds 3 # random subsets of 10 classes (generalisation check)
    python bench/quality.py --synthetic-1m           # 1M x 384 synthetic runs: time split and peak RSS

Per corpus, on the same cached embeddings (bundled all-MiniLM-L6-v2, fp32) in one process:
ours (``graph_clustering`` with no resolution), UMAP (n_neighbors 15, n_components 5,
min_dist 0, cosine, random_state 42) + HDBSCAN (min_cluster_size 10, eom) as BERTopic runs them,
k-means given the true number of classes, and the threshold community method at its defaults
(0.75, min size 10). Unassigned and noise points count as singletons for ARI and NMI.
Needs the ``bench`` extra (umap-learn, hdbscan).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CORPORA = ("banking77", "clinc150", "stackoverflow", "20newsgroups")


def singletons(labels: np.ndarray) -> np.ndarray:
    out = np.asarray(labels, dtype=np.int64).copy()
    free = np.flatnonzero(out < 0)
    out[free] = out.max(initial=-1) + 1 + np.arange(len(free))
    return out


def scores(truth: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, int]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    s = singletons(labels)
    clusters = len(np.unique(labels[labels >= 0]))
    return (
        adjusted_rand_score(truth, s),
        normalized_mutual_info_score(truth, s),
        float(np.mean(labels >= 0)),
        clusters,
    )


def ours(x: np.ndarray, resolution: float | None = None) -> tuple[np.ndarray, dict]:
    from clusterer.algorithms.graph import graph_clustering

    r = graph_clustering(x, resolution=resolution)
    return r.labels, {
        "resolution": round(r.resolution, 3),
        "coarse": r.info["coarse_clusters"],
        "coarse_labels": r.coarse_labels,
        "outliers": round(r.info["outlier_share"], 4),
    }


def umap_hdbscan(x: np.ndarray) -> tuple[np.ndarray, dict]:
    import hdbscan
    import umap

    reduced = umap.UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=42).fit_transform(x)
    return hdbscan.HDBSCAN(min_cluster_size=10, cluster_selection_method="eom").fit_predict(reduced), {}


def kmeans_true_k(x: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    from clusterer.algorithms.kmeans import kmeans

    return np.asarray(kmeans(x, k, seed=0).labels, dtype=np.int64), {}


def community(x: np.ndarray) -> tuple[np.ndarray, dict]:
    from clusterer.algorithms.community import (
        detect_communities,
        labels_from_communities,
    )

    return labels_from_communities(detect_communities(x, 0.75, 10, normalize=False), len(x)), {}


def timed(fn, *args) -> tuple[np.ndarray, dict, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    labels, extra = fn(*args)
    return labels, extra, time.perf_counter() - t0, time.process_time() - c0


def row(name: str, truth: np.ndarray, labels: np.ndarray, wall: float, cpu: float, extra: dict) -> dict:
    ari, nmi, cov, k = scores(truth, labels)
    shown = {key: v for key, v in extra.items() if key != "coarse_labels"}
    print(
        f"  {name:<22} ARI {ari:.3f}  NMI {nmi:.3f}  coverage {cov:.3f}  clusters {k:5d}  {wall:7.1f}s wall {cpu:7.1f}s cpu  {shown or ''}",
        flush=True,
    )
    return {"ari": ari, "nmi": nmi, "wall": wall, "cpu": cpu}


def subset(x: np.ndarray, y: np.ndarray, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keep = rng.choice(int(y.max()) + 1, classes, replace=False)
    m = np.isin(y, keep)
    _, y2 = np.unique(y[m], return_inverse=True)
    return x[m], y2


def run_corpora(names: list[str], peers: bool, sweep: bool, subsample: int, seeds: int) -> None:
    from bench._data import labelled

    ours(np.eye(4, 8, dtype=np.float32))  # imports and first-call costs outside the timings
    table: dict[str, dict[str, dict]] = {}
    for name in names:
        x, y, _ = labelled(name)
        cases = (
            [(name, x, y)]
            if not subsample
            else [(f"{name}[{subsample} classes, seed {s}]", *subset(x, y, subsample, s)) for s in range(seeds)]
        )
        for title, xs, ys in cases:
            k_true = int(ys.max()) + 1
            print(f"\n{title}: {len(xs)} sentences, {k_true} classes", flush=True)
            res: dict[str, dict] = {}
            labels, extra, wall, cpu = timed(ours, xs)
            res["ours"] = row("ours (auto)", ys, labels, wall, cpu, extra)
            row("ours, coarse level", ys, extra["coarse_labels"], 0.0, 0.0, {})
            if sweep:
                for r in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
                    labels, extra, wall, cpu = timed(ours, xs, r)
                    res[f"r={r}"] = row(f"ours resolution {r}", ys, labels, wall, cpu, {})
            if peers:
                labels, extra, wall, cpu = timed(umap_hdbscan, xs)
                res["umap"] = row("UMAP+HDBSCAN", ys, labels, wall, cpu, extra)
                labels, extra, wall, cpu = timed(kmeans_true_k, xs, k_true)
                res["kmeans"] = row(f"k-means (true k={k_true})", ys, labels, wall, cpu, extra)
                labels, extra, wall, cpu = timed(community, xs)
                res["community"] = row("community (0.75, 10)", ys, labels, wall, cpu, extra)
                u, o = res["umap"], res["ours"]
                print(
                    f"  ours / UMAP+HDBSCAN time: {o['wall'] / u['wall']:.3f} wall, {o['cpu'] / u['cpu']:.3f} cpu; "
                    f"ARI {o['ari'] - u['ari']:+.3f}, NMI {o['nmi'] - u['nmi']:+.3f}",
                    flush=True,
                )
            table[title] = res
    if peers and len(table) > 1:
        print("\nmeans over corpora:")
        for method in ("ours", "umap", "kmeans", "community"):
            print(
                f"  {method:<10} ARI {np.mean([t[method]['ari'] for t in table.values()]):.3f}  "
                f"NMI {np.mean([t[method]['nmi'] for t in table.values()]):.3f}"
            )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def harder_mixture(n: int, d: int = 384, centres: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of very different sizes (Zipf-like) and spreads, 10 % uniform background."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, centres + 1) ** 0.8
    weights /= weights.sum()
    spread = rng.uniform(0.02, 0.08, centres).astype(np.float32)
    x = np.empty((n, d), np.float32)
    y = np.empty(n, np.int64)
    step = 65536
    for s in range(0, n, step):
        m = min(step, n - s)
        block = rng.standard_normal((m, d), dtype=np.float32)
        who = rng.choice(centres, m, p=weights)
        background = rng.random(m) < 0.1
        inside = ~background
        block[inside] = c[who[inside]] + spread[who[inside], None] * block[inside]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s : s + m] = block
        y[s : s + m] = np.where(background, -1, who)
    return x, y


def run_scale(n: int, which: str) -> None:
    from bench.community import synthetic
    from clusterer.algorithms.graph import graph_clustering

    runs = (
        ("community", "bench/community.py generator", lambda: (synthetic(n), None)),
        ("harder", "harder mixture (Zipf sizes, varied spreads, 10 % background)", lambda: harder_mixture(n)),
    )
    for key, title, make in runs:
        if which not in (key, "both"):
            continue
        t0 = time.perf_counter()
        x, y = make()
        print(
            f"\n{title}: {x.shape} generated in {time.perf_counter() - t0:.1f}s, peak RSS {peak_rss_gib():.2f} GiB",
            flush=True,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        r = graph_clustering(x, show_progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        line = (
            f"  total {wall:.1f}s wall ({cpu:.1f}s cpu), split {r.info['seconds']}, resolution {r.resolution:.3g}, "
            f"{r.info['clusters']} clusters, {r.info['coarse_clusters']} coarse, outliers {r.info['outlier_share']:.3f}, "
            f"{r.info['edges']} edges, peak RSS {peak_rss_gib():.2f} GiB"
        )
        if y is not None:
            from sklearn.metrics import adjusted_rand_score

            line += f", ARI vs planted (background as singletons) {adjusted_rand_score(singletons(y), singletons(r.labels)):.3f}"
        print(line, flush=True)
        del x, r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", action="append", choices=CORPORA, help="corpus to run (repeatable; default all four)")
    p.add_argument("--no-peers", action="store_true", help="ours only")
    p.add_argument("--sweep", action="store_true", help="also ours at fixed resolutions 0.25-8")
    p.add_argument("--subsample", type=int, default=0, help="keep a random subset of this many classes")
    p.add_argument("--seeds", type=int, default=1, help="number of random class subsets with --subsample")
    p.add_argument("--synthetic-1m", action="store_true", help="1M x 384 synthetic runs (time split, peak RSS)")
    p.add_argument("--n", type=int, default=1_000_000, help="points for --synthetic-1m")
    p.add_argument(
        "--mixture", choices=("community", "harder", "both"), default="both", help="which --synthetic-1m data"
    )
    a = p.parse_args()
    if a.synthetic_1m:
        run_scale(a.n, a.mixture)
        return
    run_corpora(a.corpus or list(CORPORA), not a.no_peers, a.sweep, a.subsample, a.seeds)


if __name__ == "__main__":
    main()
