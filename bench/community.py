"""Benchmark: our community detection against sentence_transformers.util.community_detection.

    python3 bench/community.py                      # mix50k, exact and approximate (default) search
    python3 bench/community.py --synthetic 1000000  # ours only, time and peak RSS

ARI treats every unassigned point as its own singleton cluster.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def singleton_labels(labels: np.ndarray) -> np.ndarray:
    """Labels with every -1 replaced by a fresh singleton label."""
    out = labels.copy()
    free = np.flatnonzero(out < 0)
    out[free] = out.max(initial=-1) + 1 + np.arange(len(free))
    return out


def st_labels(communities: list[list[int]], n: int) -> np.ndarray:
    labels = np.full(n, -1, np.int64)
    for k, members in enumerate(communities):
        labels[members] = k
    return labels


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_mix50k(settings: list[tuple[float, int]], nprobe: int) -> None:
    import faiss
    import torch
    from sentence_transformers.util import community_detection as st_cd
    from sklearn.metrics import adjusted_rand_score

    from bench._data import mix50k
    from clusterer.algorithms.community import community_detection, labels_from_communities
    from clusterer.algorithms.neighbors import faiss_neighbor_graph
    from clusterer.algorithms.partitioned import default_nlist, partitioned_neighbor_graph

    emb, _ = mix50k()
    n = len(emb)
    x = torch.nn.functional.normalize(torch.from_numpy(emb)).numpy()
    print(
        f"mix50k: {n} x {emb.shape[1]}, torch threads {torch.get_num_threads()}, faiss threads {faiss.omp_get_max_threads()}"
    )
    for threshold, min_size in settings:
        t0 = time.perf_counter()
        ref = st_cd(emb, threshold=threshold, min_community_size=min_size)
        t_st = time.perf_counter() - t0
        ref_labels = singleton_labels(st_labels(ref, n))
        print(
            f"\n(threshold={threshold}, min_size={min_size}) sentence-transformers: {t_st:.2f}s, {len(ref)} communities"
        )

        t0 = time.perf_counter()
        exact = community_detection(faiss_neighbor_graph(x, threshold, min_size))
        t_exact = time.perf_counter() - t0
        same = [set(c.members) for c in exact] == [set(r) for r in ref]
        ari = adjusted_rand_score(ref_labels, singleton_labels(labels_from_communities(exact, n)))
        print(
            f"  ours exact (IndexFlatIP): {t_exact:.2f}s  speed-up {t_st / t_exact:.1f}x  ARI {ari:.4f}  identical={same}"
        )

        t0 = time.perf_counter()
        graph = partitioned_neighbor_graph(x, threshold, min_size, nprobe=nprobe)
        approx = community_detection(graph)
        t_part = time.perf_counter() - t0
        ari = adjusted_rand_score(ref_labels, singleton_labels(labels_from_communities(approx, n)))
        exact_graph = faiss_neighbor_graph(x, threshold, min_size)
        recall = graph.total_edges / max(exact_graph.total_edges, 1)
        print(
            f"  ours approximate (default above 20k: cell-blocked, nlist={default_nlist(n)}, nprobe={nprobe}): "
            f"{t_part:.2f}s  speed-up {t_st / t_part:.1f}x  ARI {ari:.4f}  edge recall {recall:.4f}  "
            f"communities {len(approx)}"
        )


def synthetic(
    n: int, d: int = 384, centres: int = 5000, clustered: float = 0.5, noise: float = 0.02, seed: int = 0
) -> np.ndarray:
    """``n`` unit vectors: a ``clustered`` share around ``centres`` gaussian centres, the rest uniform."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    step = 65536
    for s in range(0, n, step):
        m = min(step, n - s)
        block = rng.standard_normal((m, d), dtype=np.float32)
        inside = rng.random(m) < clustered
        block[inside] = c[rng.integers(0, centres, inside.sum())] + noise * block[inside]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[s : s + m] = block
    return x


def run_synthetic(n: int, threshold: float, min_size: int, nprobe: int, nlist: int | None) -> None:
    from clusterer.algorithms.community import community_detection
    from clusterer.algorithms.partitioned import default_nlist, partitioned_neighbor_graph

    t0 = time.perf_counter()
    x = synthetic(n)
    print(f"synthetic {x.shape} generated in {time.perf_counter() - t0:.1f}s, RSS {peak_rss_gib():.2f} GiB")
    t0 = time.perf_counter()
    graph = partitioned_neighbor_graph(x, threshold, min_size, nlist=nlist, nprobe=nprobe, show_progress=True)
    t_graph = time.perf_counter() - t0
    communities = community_detection(graph)
    total = time.perf_counter() - t0
    assigned = sum(len(c) for c in communities)
    print(
        f"ours cell-blocked (nlist={nlist or default_nlist(n)}, nprobe={nprobe}) at ({threshold}, {min_size}): "
        f"total {total:.1f}s (graph {t_graph:.1f}s, communities {total - t_graph:.1f}s); "
        f"{len(communities)} communities, {assigned} points assigned, {graph.total_edges} edges; "
        f"peak RSS {peak_rss_gib():.2f} GiB"
    )
    rng = np.random.default_rng(1)
    probe = np.sort(rng.choice(n, 200, replace=False))
    t32 = np.float32(threshold)
    true_edges = found = 0
    lists = dict(zip(graph.centres.tolist(), range(len(graph.centres))))
    for i in probe.tolist():
        exact = np.flatnonzero(x @ x[i] >= t32)
        if len(exact) < min_size:
            continue
        true_edges += len(exact)
        k = lists.get(i)
        if k is not None:
            found += len(np.intersect1d(exact, graph.neighbors[graph.lims[k] : graph.lims[k + 1]]))
    print(f"edge recall on 200 sampled points vs exact: {found / max(true_edges, 1):.4f}")


def main() -> None:
    from clusterer.algorithms.partitioned import DEFAULT_NPROBE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", type=int, default=0, help="run on N synthetic vectors (ours only)")
    p.add_argument("--threshold", type=float, default=0.75)
    p.add_argument("--min-size", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--nlist", type=int, default=None)
    a = p.parse_args()
    if a.synthetic:
        run_synthetic(a.synthetic, a.threshold, a.min_size, a.nprobe or DEFAULT_NPROBE, a.nlist)
    else:
        run_mix50k([(0.75, 25), (0.75, 10)], a.nprobe or DEFAULT_NPROBE)


if __name__ == "__main__":
    main()
