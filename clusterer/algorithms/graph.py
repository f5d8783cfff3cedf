"""Graph clustering: Leiden communities of the symmetrised cosine kNN graph, two levels.

Pure functions over an embedding matrix (rows L2-normalised) and the kNN graph built from it.
This is the contract the service layer uses; the granularity rule and the search behind
:func:`knn_graph` may change without changing these signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_K = 10
DEFAULT_MIN_SIZE = 5
DEFAULT_RESOLUTION = 1.0


@dataclass
class KnnGraph:
    """Each point's nearest neighbours (positions, self excluded, -1 padding), most similar first."""

    neighbours: np.ndarray  # (n, k) int64
    similarities: np.ndarray  # (n, k) float32


@dataclass
class GraphClustering:
    """Two-level result over positions 0..n-1.

    ``labels``: fine cluster of each point, 0..L-1, or -1 for an outlier; ``parents``: the coarse
    cluster 0..C-1 of each fine cluster (so every fine cluster is inside exactly one coarse one);
    ``scores`` holds what the automatic granularity compared and ``info`` the facts a run stores
    (both JSON-serialisable); ``info["min_similarity"]`` is the outlier rule's similarity floor,
    which incremental upkeep applies to new sentences through :func:`assign_by_weight`.
    """

    labels: np.ndarray
    parents: np.ndarray
    resolution: float
    coarse_resolution: float
    scores: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def coarse_labels(self) -> np.ndarray:
        out = np.full(len(self.labels), -1, dtype=np.int64)
        assigned = self.labels >= 0
        out[assigned] = self.parents[self.labels[assigned]]
        return out


def knn_graph(x: np.ndarray, k: int = DEFAULT_K, *, search: str = "auto", nprobe: int | None = None,
              device: str = "auto", show_progress: bool = False) -> KnnGraph:
    """The ``k`` nearest neighbours of every row of ``x`` by inner product (exact flat search)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    kk = min(k + 1, n)
    if n == 0 or kk <= 1:
        return KnnGraph(np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, nbrs = index.search(x, kk)
    out_n = np.full((n, k), -1, np.int64)
    out_s = np.zeros((n, k), np.float32)
    for i in range(n):
        keep = nbrs[i] != i
        row_n, row_s = nbrs[i][keep][:k], sims[i][keep][:k]
        out_n[i, : len(row_n)] = row_n
        out_s[i, : len(row_s)] = row_s
    return KnnGraph(out_n, out_s)


def _igraph(graph: KnnGraph, n: int):
    import igraph

    rows = np.repeat(np.arange(n, dtype=np.int64), graph.neighbours.shape[1])
    cols = graph.neighbours.ravel()
    w = graph.similarities.ravel()
    keep = (cols >= 0) & (w > 0)
    a, b, w = rows[keep], cols[keep], w[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    g = igraph.Graph(n=n, edges=np.stack([lo, hi], axis=1).tolist(), directed=False)
    g.es["weight"] = w.astype(float).tolist()
    g.simplify(combine_edges="max")
    return g


def _leiden(g, resolution: float, seed: int, initial: np.ndarray | None = None) -> np.ndarray:
    import random

    import igraph

    igraph.set_random_number_generator(random.Random(seed))
    try:
        part = g.community_leiden(objective_function="modularity", weights="weight", resolution=resolution,
                                  n_iterations=-1, initial_membership=None if initial is None else initial.tolist())
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(part.membership, dtype=np.int64)


def _relabel_by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels 0..L-1 by decreasing size; groups under ``min_size`` become -1."""
    out = np.full(len(labels), -1, dtype=np.int64)
    uniq, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = np.lexsort((uniq, -counts))
    nxt = 0
    for j in order:
        if counts[j] >= min_size:
            out[labels == uniq[j]] = nxt
            nxt += 1
    return out


def graph_clustering(x: np.ndarray, *, k: int = DEFAULT_K, resolution: float | None = None,
                     min_size: int = DEFAULT_MIN_SIZE, seed: int = 0, initial: np.ndarray | None = None,
                     search: str = "auto", nprobe: int | None = None, device: str = "auto",
                     show_progress: bool = False) -> GraphClustering:
    """Leiden on the kNN graph of ``x``: fine clusters, their coarse parents, and outliers.

    ``resolution`` None chooses the granularity from the data; ``initial`` (one label per point,
    -1 for none) starts the fine level from an existing membership so that clusters persist.
    """
    n = len(x)
    if n == 0:
        return GraphClustering(np.zeros(0, np.int64), np.zeros(0, np.int64), DEFAULT_RESOLUTION, DEFAULT_RESOLUTION)
    graph = knn_graph(x, k, search=search, nprobe=nprobe, device=device, show_progress=show_progress)
    g = _igraph(graph, n)
    chosen = DEFAULT_RESOLUTION if resolution is None else float(resolution)
    init = None
    if initial is not None:
        init = np.asarray(initial, dtype=np.int64).copy()
        fresh = init < 0
        init[fresh] = init.max(initial=-1) + 1 + np.arange(int(fresh.sum()))
    fine = _relabel_by_size(_leiden(g, chosen, seed, init), min_size)
    n_fine = int(fine.max(initial=-1)) + 1
    coarse_resolution = chosen / 4
    parents = np.zeros(n_fine, dtype=np.int64)
    if n_fine > 1:
        contracted = g.copy()
        contracted.contract_vertices(np.where(fine >= 0, fine, n_fine).tolist(), combine_attrs="sum")
        contracted.simplify(combine_edges="sum")
        coarse = _leiden(contracted, coarse_resolution, seed)[:n_fine]
        _, parents = np.unique(coarse, return_inverse=True)
    return GraphClustering(fine, parents.astype(np.int64), chosen, coarse_resolution,
                           info={"k": k, "edges": g.ecount(), "min_similarity": 0.0,
                                 "outliers": int((fine < 0).sum())})


def assign_by_weight(neighbour_labels: np.ndarray, neighbour_sims: np.ndarray, *,
                     min_similarity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The incremental rule: each row joins the label holding most of its kNN similarity.

    ``neighbour_labels`` (m, k) with -1 for unassigned or padding; neighbours below
    ``min_similarity`` do not count. Returns (label or -1, that label's share of the row's
    counted weight).
    """
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    sims = np.asarray(neighbour_sims, dtype=np.float32)
    m = len(labels)
    out = np.full(m, -1, dtype=np.int64)
    share = np.zeros(m, dtype=np.float32)
    for i in range(m):
        ok = (labels[i] >= 0) & (sims[i] >= min_similarity) & (sims[i] > 0)
        if not ok.any():
            continue
        uniq, inv = np.unique(labels[i][ok], return_inverse=True)
        weight = np.zeros(len(uniq), dtype=np.float64)
        np.add.at(weight, inv, sims[i][ok])
        j = int(np.argmax(weight))
        out[i] = uniq[j]
        share[i] = weight[j] / float(sims[i][sims[i] > 0].sum())
    return out, share
