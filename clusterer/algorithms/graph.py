"""Graph clustering: Leiden communities of the symmetrised cosine kNN graph, two levels.

Pure functions over an embedding matrix (rows L2-normalised) and the kNN graph built from it.
This is the contract the service layer uses. The pieces live beside it: the search in
:mod:`clusterer.algorithms.knn`, the igraph graph and Leiden in :mod:`clusterer.algorithms.leiden`,
the automatic resolution in :mod:`clusterer.algorithms.granularity`.

Outliers: a point whose most similar neighbour is below a floor learnt from the data (the
lower Tukey fence, ``Q1 - 1.5 IQR``, of every point's best-neighbour similarity, exact duplicates
set aside, and never above the 5 % quantile) is left
unassigned, and so is every member of a cluster smaller than ``min_size``. The floor is
returned as ``info["min_similarity"]``; :func:`assign_by_weight` applies the same floor to new
sentences (neighbours below it do not count, so one with none above it stays unassigned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_K = 30
"""Neighbours per point up to :data:`LARGE_N` points (measured: k 30 beats k 10 on every corpus)."""
LARGE_N = 200_000
DEFAULT_K_LARGE = 15
"""Neighbours per point above :data:`LARGE_N` points, where the graph's size bounds time and memory."""
LARGE_START_RESOLUTION = 256.0
"""Above :data:`LARGE_N` points the granularity's base partition starts this fine, so one Leiden
pass over the full graph usually gives a base finer than the resolution chosen (from 16 the
rule needed a second full pass, the costliest step at 1M); the choice itself is then made on
the contracted graph as below that size."""
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
    knn: KnnGraph | None = None
    """The kNN graph over positions 0..n-1 (with ``keep_graph``), for callers that store it."""

    @property
    def coarse_labels(self) -> np.ndarray:
        out = np.full(len(self.labels), -1, dtype=np.int64)
        assigned = self.labels >= 0
        out[assigned] = self.parents[self.labels[assigned]]
        return out


def knn_graph(
    x: np.ndarray,
    k: int = DEFAULT_K,
    *,
    search: str = "auto",
    nprobe: int | None = None,
    device: str = "auto",
    show_progress: bool = False,
) -> KnnGraph:
    """The ``k`` nearest neighbours of every row of ``x`` by inner product: exact below
    :data:`clusterer.algorithms.knn.EXACT_BELOW` rows, cell-blocked approximate above."""
    from clusterer.algorithms.knn import knn

    nbrs, sims = knn(x, k, search=search, nprobe=nprobe, device=device, show_progress=show_progress)
    return KnnGraph(nbrs, sims)


OUTLIER_CAP = 0.05
"""The floor never flags more than this share of points as weak."""
DUPLICATE_SIMILARITY = 0.999


def outlier_floor(best_similarity: np.ndarray) -> float:
    """Lower Tukey fence (``Q1 - 1.5 IQR``) of the best-neighbour similarities, ignoring exact
    duplicates (which would pull the quartiles to 1), never above the :data:`OUTLIER_CAP` quantile."""
    if len(best_similarity) < 4:
        return 0.0
    cap = float(np.quantile(best_similarity, OUTLIER_CAP))
    distinct = best_similarity[best_similarity < DUPLICATE_SIMILARITY]
    if len(distinct) < 4:
        return float(np.clip(cap, 0.0, 1.0))
    q1, q3 = np.percentile(distinct, [25, 75])
    return float(np.clip(min(q1 - 1.5 * (q3 - q1), cap), 0.0, 1.0))


def _relabel_by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels 0..L-1 by decreasing size; groups under ``min_size`` become -1."""
    out = np.full(len(labels), -1, dtype=np.int64)
    ok = labels >= 0
    if not ok.any():
        return out
    uniq, inv, counts = np.unique(labels[ok], return_inverse=True, return_counts=True)
    order = np.lexsort((uniq, -counts))
    new = np.full(len(uniq), -1, np.int64)
    big = order[counts[order] >= min_size]
    new[big] = np.arange(len(big))
    out[ok] = new[inv]
    return out


def _keep_initial_ids(labels: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Relabel clusters (0..L-1, -1 outliers) to the ``initial`` id most of their members had,
    largest overlaps first, each initial id used once; the rest get ids above every initial one."""
    out = np.full(len(labels), -1, np.int64)
    both = (labels >= 0) & (initial >= 0)
    n_new = int(labels.max(initial=-1)) + 1
    mapping = np.full(n_new, -1, np.int64)
    if both.any():
        pairs, counts = np.unique(np.stack([labels[both], initial[both]], axis=1), axis=0, return_counts=True)
        used: set[int] = set()
        for j in np.lexsort((pairs[:, 0], -counts)):
            new_id, old_id = int(pairs[j, 0]), int(pairs[j, 1])
            if mapping[new_id] < 0 and old_id not in used:
                mapping[new_id] = old_id
                used.add(old_id)
    fresh = np.flatnonzero(mapping < 0)
    mapping[fresh] = int(initial.max(initial=-1)) + 1 + np.arange(len(fresh))
    ok = labels >= 0
    out[ok] = mapping[labels[ok]]
    return out


def _coarse_parents(wg, fine: np.ndarray, n_fine: int, resolution: float, seed: int) -> tuple[np.ndarray, float]:
    """Coarse cluster of each fine cluster: Leiden on the graph contracted by the fine level,
    at a quarter of its resolution, lowered until it at least halves the number of clusters."""
    from clusterer.algorithms.leiden import contract, leiden

    if n_fine <= 2:
        return np.zeros(n_fine, np.int64), resolution / 4
    small = contract(wg, fine, n_fine)
    strength = wg.strengths()
    ok = fine >= 0
    node_w = np.bincount(fine[ok], weights=strength[ok], minlength=n_fine)
    res = resolution / 4
    while True:
        coarse = leiden(small, res, seed, node_weights=node_w)
        if coarse.max() + 1 <= max(1, n_fine // 2) or res < 1e-4:
            break
        res /= 2
    _, parents = np.unique(coarse, return_inverse=True)
    return parents.astype(np.int64), res


def default_k(n: int) -> int:
    """:data:`DEFAULT_K` up to :data:`LARGE_N` points, :data:`DEFAULT_K_LARGE` above."""
    return DEFAULT_K if n <= LARGE_N else DEFAULT_K_LARGE


def unique_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first position of each distinct row, ascending; row -> distinct index), rows compared by two
    random float64 projections (identical rows always match; distinct ones practically never)."""
    proj = np.random.default_rng(0).standard_normal((x.shape[1], 2))
    h = np.empty((len(x), 2), np.float64)
    for s in range(0, len(x), 65536):
        h[s : s + 65536] = x[s : s + 65536].astype(np.float64) @ proj
    order = np.lexsort((h[:, 1], h[:, 0]))  # stable: equal rows stay in position order
    hs = h[order]
    new = np.ones(len(x), bool)
    new[1:] = np.any(hs[1:] != hs[:-1], axis=1)
    if new.all():
        every = np.arange(len(x))
        return every, every
    starts = np.flatnonzero(new)
    first = order[starts]
    inverse = np.empty(len(x), np.int64)
    inverse[order] = np.cumsum(new) - 1
    by_position = np.argsort(first)
    rank = np.empty_like(by_position)
    rank[by_position] = np.arange(len(by_position))
    return first[by_position], rank[inverse]


def graph_clustering(
    x: np.ndarray,
    *,
    k: int | None = None,
    resolution: float | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    seed: int = 0,
    initial: np.ndarray | None = None,
    search: str = "auto",
    nprobe: int | None = None,
    device: str = "auto",
    show_progress: bool = False,
    min_similarity: float | None = None,
    graph: KnnGraph | None = None,
    keep_graph: bool = False,
) -> GraphClustering:
    """Leiden on the kNN graph of ``x``: fine clusters, their coarse parents, and outliers.

    ``min_similarity`` None learns the outlier floor from the data (:func:`outlier_floor`); a
    value applies an existing run's floor instead (incremental upkeep clustering a small pool).

    ``k`` None takes :func:`default_k` (the value used is ``info["k"]``, which upkeep should
    search with). ``resolution`` None chooses the granularity from the data (see
    :mod:`clusterer.algorithms.granularity`); ``initial`` (one label per point, -1 for none)
    starts the fine level from an existing membership, and every cluster then keeps the
    initial id most of its members had (ids may have gaps; ``parents`` is indexed by id, -1 for
    unused ids); without ``initial`` labels are 0..L-1 by decreasing size.

    Identical rows (a sentence stored several times) are one node of the graph, so copies do
    not fill each other's neighbour lists; every copy gets that node's label.

    ``graph`` (rows over the positions of ``x``, self excluded) replaces the neighbour search
    (a stored graph being re-optimised); ``keep_graph`` returns the graph used as ``knn``.
    """
    import time

    from clusterer.algorithms.granularity import START_RESOLUTION, choose_resolution
    from clusterer.algorithms.leiden import build_graph, leiden

    n = len(x)
    k = default_k(n) if k is None else int(k)
    if n == 0:
        return GraphClustering(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            DEFAULT_RESOLUTION,
            DEFAULT_RESOLUTION,
            info={"k": k, "edges": 0, "min_similarity": 0.0, "outliers": 0, "outlier_share": 0.0},
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    first, inverse = unique_rows(x)
    full_n = n
    if len(first) < n:
        x = x[first]
        n = len(x)
    if graph is None:
        graph = knn_graph(x, k, search=search, nprobe=nprobe, device=device, show_progress=show_progress)
    elif len(first) < full_n:
        graph = distinct_graph(graph, first, inverse)
    timings["knn"] = time.perf_counter() - t0
    best = graph.similarities[:, 0].copy() if graph.similarities.shape[1] else np.zeros(n, np.float32)
    has = graph.neighbours[:, 0] >= 0 if graph.neighbours.shape[1] else np.zeros(n, bool)
    t0 = time.perf_counter()
    wg = build_graph(graph.neighbours, graph.similarities)
    kept = expand_graph(graph, first, inverse) if keep_graph else None
    del graph
    timings["graph"] = time.perf_counter() - t0
    init = None
    if initial is not None:
        init = np.asarray(initial, dtype=np.int64)[first].copy()
        fresh = init < 0
        init[fresh] = init.max(initial=-1) + 1 + np.arange(int(fresh.sum()))
        _, init = np.unique(init, return_inverse=True)
    t0 = time.perf_counter()
    scores: dict[str, Any] = {}
    if resolution is None:
        large = n > LARGE_N
        start = LARGE_START_RESOLUTION if large else START_RESOLUTION
        chosen, membership, scores = choose_resolution(wg, wg.strengths(), seed, iterations=2, start=start)
        timings["granularity"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if init is not None or not large:
            membership = leiden(wg, chosen, seed, initial=membership if init is None else init, iterations=2)
    else:
        chosen = float(resolution)
        membership = leiden(wg, chosen, seed, initial=init)
    timings["leiden"] = time.perf_counter() - t0
    floor = outlier_floor(best[has]) if min_similarity is None else float(min_similarity)
    weak = ~has | (best < floor)
    membership = np.where(weak, -1, membership)
    fine = _relabel_by_size(membership[inverse], min_size)
    n_fine = int(fine.max(initial=-1)) + 1
    t0 = time.perf_counter()
    parents, coarse_resolution = _coarse_parents(wg, fine[first], n_fine, chosen, seed)
    timings["coarse"] = time.perf_counter() - t0
    if initial is not None:
        ids = _keep_initial_ids(fine, np.asarray(initial, dtype=np.int64))
        by_id = np.full(int(ids.max(initial=-1)) + 1, -1, np.int64)
        ok = fine >= 0
        by_id[ids[ok]] = parents[fine[ok]]
        fine, parents = ids, by_id
    outliers = int((fine < 0).sum())
    info = {
        "k": k,
        "edges": wg.edge_count,
        "min_similarity": floor,
        "outliers": outliers,
        "outlier_share": outliers / full_n,
        "weak_points": int(weak[inverse].sum()),
        "clusters": n_fine,
        "distinct_points": n,
        "coarse_clusters": int(parents.max(initial=-1)) + 1,
        "min_size": min_size,
        "seconds": {key: round(v, 3) for key, v in timings.items()},
    }
    return GraphClustering(fine, parents, chosen, coarse_resolution, scores=scores, info=info, knn=kept)


def distinct_graph(graph: KnnGraph, first: np.ndarray, inverse: np.ndarray) -> KnnGraph:
    """A graph over all rows as a graph over the distinct rows (:func:`unique_rows`): each
    distinct row keeps its first copy's neighbours, mapped to distinct rows, copies of itself
    dropped, most similar first."""
    nbrs = graph.neighbours[first]
    sims = graph.similarities[first]
    mapped = np.where(nbrs >= 0, inverse[np.maximum(nbrs, 0)], -1)
    own = np.arange(len(first))[:, None]
    valid = (mapped >= 0) & (mapped != own)
    key = np.where(valid, -sims.astype(np.float64), np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    mapped = np.take_along_axis(np.where(valid, mapped, -1), order, axis=1)
    sims = np.take_along_axis(np.where(valid, sims, 0.0), order, axis=1).astype(np.float32)
    return KnnGraph(mapped, sims)


def expand_graph(graph: KnnGraph, first: np.ndarray, inverse: np.ndarray) -> KnnGraph:
    """A graph over the distinct rows as one over every row: each copy takes its distinct row's
    neighbours, as positions of their first copies."""
    if len(first) == len(inverse):
        return graph
    nbrs = graph.neighbours[inverse]
    return KnnGraph(np.where(nbrs >= 0, first[np.maximum(nbrs, 0)], -1), graph.similarities[inverse])


def assign_by_weight(
    neighbour_labels: np.ndarray, neighbour_sims: np.ndarray, *, min_similarity: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The incremental rule: each row joins the label holding most of its kNN similarity.

    ``neighbour_labels`` (m, k) with -1 for unassigned or padding; neighbours below
    ``min_similarity`` (or not positive) do not count. Returns (label or -1, that label's share
    of the row's positive similarity). Ties go to the smaller label.
    """
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    sims = np.asarray(neighbour_sims, dtype=np.float64)
    m = len(labels)
    out = np.full(m, -1, dtype=np.int64)
    share = np.zeros(m, dtype=np.float32)
    if m == 0 or labels.shape[1] == 0:
        return out, share
    counted = (labels >= 0) & (sims >= min_similarity) & (sims > 0)
    w = np.where(counted, sims, 0.0)
    key = np.where(counted, labels, np.iinfo(np.int64).max)
    order = np.argsort(key, axis=1, kind="stable")
    key = np.take_along_axis(key, order, axis=1)
    w = np.take_along_axis(w, order, axis=1)
    start = np.ones_like(counted)
    start[:, 1:] = key[:, 1:] != key[:, :-1]
    group = np.cumsum(start, axis=1) - 1
    totals = np.zeros(labels.shape, np.float64)
    rows = np.repeat(np.arange(m), labels.shape[1])
    np.add.at(totals, (rows, group.ravel()), w.ravel())
    valid_group = np.zeros(labels.shape, bool)
    valid_group[rows, group.ravel()] = (key != np.iinfo(np.int64).max).ravel()
    totals = np.where(valid_group, totals, -1.0)
    best = np.argmax(totals, axis=1)
    best_w = totals[np.arange(m), best]
    hit = best_w > 0
    label_of_group = np.full(labels.shape, -1, np.int64)
    label_of_group[rows, group.ravel()] = key.ravel()
    out[hit] = label_of_group[np.arange(m), best][hit]
    positive = np.where(sims > 0, sims, 0.0).sum(axis=1)
    share[hit] = (best_w[hit] / positive[hit]).astype(np.float32)
    return out, share
