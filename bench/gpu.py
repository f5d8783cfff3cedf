"""Benchmark: our torch search paths against sentence-transformers on the same device, one process.

    python bench/gpu.py                               # cuda: 50k, 200k and 1M
    python bench/gpu.py --n 20000 --device cpu --centres 200   # the same code on CPU tensors, small n

Data: the planted mixture of ``bench/_data.planted_mixture`` (1,000 centres whose spreads make
similarities straddle 0.75, 40 % uniform points). Per size:

- community (0.75, min size 10): ``sentence_transformers.util.community_detection`` against
  ``community_detection(torch_neighbor_graph(...))`` on the same device tensor; identical = the
  same communities as sets, in the same order, with the same centres;
- kNN (k 30): ``util.semantic_search`` (exact, float32; on at most ``--knn-sample`` query rows,
  its time scaled to all rows) against :func:`clusterer.algorithms.device_search.exact_knn`
  (every row); recall@k of ours against it on the sampled rows;
- the default (``graph_clustering`` with ``device``, when igraph and faiss are importable): its
  stage times and ARI against the planted labels (uniform points as singletons).

Times exclude the transfer of the input to the device; the peak is the device's allocated
memory (``torch.cuda.max_memory_allocated``) on CUDA, the process's peak RSS on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def singletons(labels: np.ndarray) -> np.ndarray:
    out = np.asarray(labels, dtype=np.int64).copy()
    free = np.flatnonzero(out < 0)
    out[free] = out.max(initial=-1) + 1 + np.arange(len(free))
    return out


class Device:
    """Synchronisation, peak memory and its reset for one torch device."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def timed(self, fn, *args, **kwargs):
        self.reset()
        self.sync()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        return out, time.perf_counter() - t0, self.peak_gib()


def community(dev: Device, xt, threshold: float, min_size: int) -> None:
    from sentence_transformers.util import community_detection as st_cd
    from sklearn.metrics import adjusted_rand_score

    from clusterer.algorithms.community import community_detection, labels_from_communities
    from clusterer.algorithms.neighbors import torch_neighbor_graph

    n = len(xt)
    ref, t_st, m_st = dev.timed(st_cd, xt, threshold=threshold, min_community_size=min_size)
    ours, t_us, m_us = dev.timed(
        lambda: community_detection(torch_neighbor_graph(xt, threshold, min_size, device=dev.name))
    )
    same = [set(c.members) for c in ours] == [set(r) for r in ref] and [c.centre for c in ours] == [r[0] for r in ref]
    ref_labels = np.full(n, -1, np.int64)
    for k, members in enumerate(ref):
        ref_labels[members] = k
    ari = adjusted_rand_score(singletons(ref_labels), singletons(labels_from_communities(ours, n)))
    print(
        f"  community {threshold}/{min_size}: sentence-transformers {t_st:.2f} s (peak {m_st:.2f} GiB), "
        f"ours {t_us:.2f} s (peak {m_us:.2f} GiB), ratio {t_st / t_us:.2f}x, identical={same}, ARI {ari:.4f}, "
        f"{len(ours)} communities",
        flush=True,
    )


def knn(dev: Device, xt, k: int, sample: int) -> None:
    from sentence_transformers.util import semantic_search

    from clusterer.algorithms.device_search import exact_knn

    n = len(xt)
    rows = np.sort(np.random.default_rng(0).choice(n, min(sample, n), replace=False))
    hits, t_st, m_st = dev.timed(semantic_search, xt[rows], xt, top_k=k + 1)
    scaled = t_st * n / len(rows)
    (nbrs, _), t_us, m_us = dev.timed(exact_knn, xt, k, device=dev.name)
    recall = []
    for r, row_hits in zip(rows.tolist(), hits):
        truth = [h["corpus_id"] for h in row_hits if h["corpus_id"] != r][:k]
        recall.append(len(set(truth) & set(nbrs[r].tolist())) / max(len(truth), 1))
    print(
        f"  kNN k={k}: sentence-transformers semantic_search {t_st:.2f} s on {len(rows):,} rows "
        f"(scaled to all {n:,}: {scaled:.2f} s, peak {m_st:.2f} GiB), ours {t_us:.2f} s (peak {m_us:.2f} GiB), "
        f"ratio {scaled / t_us:.2f}x, recall@{k} {np.mean(recall):.4f}",
        flush=True,
    )


def default(dev: Device, x: np.ndarray, y: np.ndarray) -> None:
    try:
        import faiss  # noqa: F401
        import igraph  # noqa: F401
    except ImportError as missing:
        print(f"  default: skipped ({missing.name} is not installed)", flush=True)
        return
    from sklearn.metrics import adjusted_rand_score

    from clusterer.algorithms.graph import graph_clustering

    r, t_us, m_us = dev.timed(graph_clustering, x, device=dev.name.split(":")[0])
    ari = adjusted_rand_score(singletons(y), singletons(r.labels))
    print(
        f"  default (leiden): {t_us:.2f} s, stages {r.info['seconds']}, {r.info['clusters']} clusters, "
        f"resolution {r.resolution:.3g}, ARI vs planted {ari:.4f}, peak {m_us:.2f} GiB (no peer)",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, action="append", help="sizes (repeatable; default 50k, 200k, 1M)")
    p.add_argument("--device", default="cuda", help="torch device (cuda, cuda:1, cpu)")
    p.add_argument("--threshold", type=float, default=0.75)
    p.add_argument("--min-size", type=int, default=10)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--knn-sample", type=int, default=20_000, help="query rows the peer kNN runs on")
    p.add_argument("--centres", type=int, default=1000, help="planted centres (fewer for a small n)")
    p.add_argument("--skip", action="append", default=[], choices=("community", "knn", "default"))
    a = p.parse_args()

    import torch

    from bench._data import planted_mixture

    dev = Device(a.device)
    name = torch.cuda.get_device_name(a.device) if dev.cuda else "CPU"
    print(f"device {a.device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    warm = torch.from_numpy(planted_mixture(2000, seed=9)[0]).to(a.device)
    community(dev, warm, a.threshold, a.min_size)  # kernels, allocator, imports
    for n in a.n or [50_000, 200_000, 1_000_000]:
        x, y = planted_mixture(n, centres=a.centres)
        xt = torch.from_numpy(x).to(a.device)
        print(f"\nn = {n:,} x {x.shape[1]} (planted share {np.mean(y >= 0):.2f})", flush=True)
        if "community" not in a.skip:
            community(dev, xt, a.threshold, a.min_size)
        if "knn" not in a.skip:
            knn(dev, xt, a.k, a.knn_sample)
        if "default" not in a.skip:
            default(dev, x, y)
        del xt, x, y


if __name__ == "__main__":
    main()
