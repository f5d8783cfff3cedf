"""Approximate neighbour graphs by cell-blocked matrix products.

Points are partitioned into cells around centroids (spherical k-means on a sample; for many
cells a two-level partition, so neither training nor assignment costs ``n x nlist``). Each
point probes its ``nprobe`` most similar cells, like an IVF index; but instead of scanning the
probed lists query by query, all points of one home cell are compared at once with every point
of the union of the cells they probe, in one dense float32 matrix product. The work is the same
order as IVF search, done by BLAS at full speed, and the recall is at least that of an IVF
index with the same cells and ``nprobe`` (a point also sees the cells its cell-mates probe).

Similarities are exact inner products for every pair compared; pairs within ``eps`` of the
threshold are recomputed in torch float32 arithmetic as in :mod:`clusterer.neighbors`, so with
``nprobe >= nlist`` the graph equals the exact one. Only pairs that are never compared are
missed; ``nprobe`` is the recall knob.
"""

from __future__ import annotations

import math

import numpy as np

from clusterer.neighbors import (
    BORDER_EPS,
    NeighborGraph,
    _as_matrix,
    _check,
    _pair_similarities,
    assemble_lists,
    sort_lists,
)

QUERY_BLOCK = 1024
TRAIN_PER_CENTROID = 32
TWO_LEVEL_ABOVE = 1024


def default_nlist(n: int) -> int:
    """About ``2 sqrt(n)`` cells up to 200,000 points, then cells of about 128 points.

    Measured on mix50k (50,000 MiniLM embeddings, threshold 0.75): 447 cells with ``nprobe``
    16 kept 99.3 % of the edges and gave ARI 0.995 against the exact graph.
    """
    target = 2 * math.sqrt(n) if n <= 200_000 else n / 128
    return int(max(1, min(target, n // 32)))


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int = 8) -> np.ndarray:
    import faiss

    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= k * TRAIN_PER_CENTROID else x[np.sort(rng.choice(len(x), k * TRAIN_PER_CENTROID, replace=False))]
    if k == 1 or len(sample) <= k:
        centroids = sample[:k].copy()
    else:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True,
                          max_points_per_centroid=TRAIN_PER_CENTROID, min_points_per_centroid=1, verbose=False)
        km.train(np.ascontiguousarray(sample))
        centroids = km.centroids
    return np.ascontiguousarray(centroids, dtype=np.float32)


def _top_cells(x: np.ndarray, centroids: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    _, cells = index.search(x, min(k, len(centroids)))
    return cells


def partition(x: np.ndarray, nlist: int, nprobe: int, seed: int = 0) -> np.ndarray:
    """For each point, the ids of its ``nprobe`` nearest cells (first = home cell)."""
    if nlist <= TWO_LEVEL_ABOVE:
        return _top_cells(x, _kmeans(x, nlist, seed), nprobe)
    coarse_k = int(math.ceil(math.sqrt(nlist)))
    coarse = _kmeans(x, coarse_k, seed)
    coarse_of = _top_cells(x, coarse, 2)
    home_coarse = coarse_of[:, 0]
    fine_parts, owner = [], []
    for c in range(len(coarse)):
        members = np.flatnonzero(home_coarse == c)
        if not len(members):
            continue
        k = max(1, round(nlist * len(members) / len(x)))
        fine_parts.append(_kmeans(x[members], k, seed + 1 + c))
        owner.append(np.full(len(fine_parts[-1]), c))
    fine = np.vstack(fine_parts)
    owner_arr = np.concatenate(owner)
    starts = np.zeros(len(coarse) + 1, np.int64)
    np.add.at(starts, owner_arr + 1, 1)
    starts = np.cumsum(starts)
    cells = np.empty((len(x), nprobe), np.int64)
    key = coarse_of[:, 0] * len(coarse) + (coarse_of[:, 1] if coarse_of.shape[1] > 1 else coarse_of[:, 0])
    by_key = np.argsort(key, kind="stable")
    keys, key_starts = np.unique(key[by_key], return_index=True)
    key_bounds = list(key_starts[1:]) + [len(key)]
    for kv, a, b in zip(keys.tolist(), key_starts.tolist(), key_bounds):
        sel = by_key[a:b]
        first, second = divmod(kv, len(coarse))
        cand = np.concatenate([np.arange(starts[first], starts[first + 1]), np.arange(starts[second], starts[second + 1])])
        cand = np.unique(cand)
        cells[sel] = cand[_top_k_rows(x[sel] @ fine[cand].T, nprobe)]
    return cells


def _top_k_rows(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest values, largest first (repeating the best
    column when a row has fewer than ``k`` columns)."""
    m = sims.shape[1]
    if k >= m:
        top = np.argsort(-sims, axis=1)
        return np.concatenate([top, np.repeat(top[:, :1], k - m, axis=1)], axis=1) if k > m else top
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _cell_means(x: np.ndarray, order: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Normalised mean of each cell's points (points sorted by cell in ``order``)."""
    nlist = len(bounds) - 1
    sizes = np.diff(bounds)
    starts = np.minimum(bounds[:-1], len(order) - 1)
    sums = np.add.reduceat(x[order], starts, axis=0).astype(np.float64)
    sums[sizes == 0] = 0.0
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.ascontiguousarray(sums / np.where(norms > 0, norms, 1.0), dtype=np.float32).reshape(nlist, x.shape[1])


def partitioned_neighbor_graph(
    embeddings: np.ndarray,
    threshold: float,
    min_size: int,
    nlist: int | None = None,
    nprobe: int = 16,
    seed: int = 0,
    eps: float = BORDER_EPS,
    show_progress: bool = False,
    probe: str = "cell",
) -> NeighborGraph:
    """Approximate :class:`NeighborGraph` of ``embeddings`` (see the module docstring)."""
    _check(threshold, min_size)
    x = _as_matrix(embeddings)
    n = len(x)
    if n < min_size or n == 0:
        return NeighborGraph.empty(n, threshold, min_size)
    nlist = max(1, min(nlist or default_nlist(n), n))
    nprobe = max(1, min(nprobe, nlist))
    cells = partition(x, nlist, nprobe if probe == "query" else 1, seed)
    home = cells[:, 0]
    order = np.argsort(home, kind="stable")
    bounds = np.searchsorted(home[order], np.arange(nlist + 1))
    cell_probes = None
    if probe == "cell":
        centroids = _cell_means(x, order, bounds)
        cell_probes = _top_cells(centroids, centroids, nprobe)
    t32 = np.float32(threshold)
    low = t32 - np.float32(eps)

    from tqdm.auto import tqdm

    index_dtype = np.int32 if n < 2**31 else np.int64
    centre_parts, count_parts, cols_parts, sims_parts = [], [], [], []
    for c in tqdm(range(nlist), desc="Neighbour search", disable=not show_progress, mininterval=1.0):
        queries = order[bounds[c] : bounds[c + 1]]
        if not len(queries):
            continue
        probed = np.unique(cells[queries]) if cell_probes is None else cell_probes[c]
        cand = np.concatenate([order[bounds[p] : bounds[p + 1]] for p in probed])
        xc = np.ascontiguousarray(x[cand].T)
        for s in range(0, len(queries), QUERY_BLOCK):
            q = queries[s : s + QUERY_BLOCK]
            sims = x[q] @ xc
            r, k = np.nonzero(sims >= low)
            if not len(r):
                continue
            values = sims[r, k]
            cols = cand[k]
            border = np.flatnonzero(np.abs(values - t32) <= eps)
            if len(border):
                values[border] = _pair_similarities(x, q[r[border]], cols[border])
            keep = values >= t32
            local, counts, cols, values = sort_lists(r[keep], cols[keep], values[keep], min_size)
            if not len(local):
                continue
            centre_parts.append(q[local])
            count_parts.append(counts)
            cols_parts.append(cols.astype(index_dtype))
            sims_parts.append(values)
    if not centre_parts:
        return NeighborGraph.empty(n, threshold, min_size)
    centres = np.concatenate(centre_parts)
    counts = np.concatenate(count_parts)
    del centre_parts, count_parts
    cols = np.concatenate(cols_parts)
    del cols_parts
    sims = np.concatenate(sims_parts)
    del sims_parts
    return assemble_lists(centres, counts, cols, sims, n, threshold, min_size)
