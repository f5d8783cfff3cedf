"""Thresholded neighbour graphs: the search step of community detection.

For L2-normalised embeddings ``E`` (float32, one row per point), a threshold ``t`` and a minimum
size ``m``, the neighbourhood of point ``i`` is ``N(i) = {j : sim(i, j) >= t}`` where ``sim`` is
the float32 inner product and ``t`` is rounded to float32 first (as
``sentence_transformers.util.community_detection`` does with ``torch.tensor(threshold)``).
A point is a *candidate* when ``|N(i)| >= m``; it normally belongs to its own neighbourhood
(self-similarity ~1), except when ``t`` exceeds its rounded self-similarity.

A :class:`NeighborGraph` keeps the neighbourhoods of the candidates only, in CSR form, each list
sorted by decreasing similarity with ties broken by lower position. Two backends build it:

* :func:`faiss_neighbor_graph` -- one range search per batch of queries collects every
  neighbourhood; rows with fewer than ``m`` neighbours (the candidate test) are dropped at once,
  so only the candidates' lists are kept. With the default exact
  ``IndexFlatIP`` the result equals a dense ``E @ E.T >= t`` computed exactly: faiss' inner
  products, like any float32 matmul's, are a few ulps off, so the search runs with a margin
  ``eps`` below ``t`` and every pair whose faiss similarity lies within ``eps`` of ``t`` is
  recomputed in float64 (numpy, no torch import) and decided by that value. A float32 matmul
  (sentence-transformers' torch one) can only disagree on pairs within its own rounding error,
  about 1e-7, of ``t``: none of the 36 such candidates on mix50k at 0.75. Any faiss index whose ids are
  positions ``0..n-1`` may be passed instead (IVF, HNSW, ...); its recall settings are the
  caller's.
* :func:`torch_neighbor_graph` -- chunked dense products on a torch device (CUDA or CPU), a
  threshold mask for the candidate test and the lists, all on the device
  (:mod:`clusterer.algorithms.device_search`).

Neither builds the ``n x n`` similarity matrix; memory is bounded by the batch sizes and the
number of edges kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BORDER_EPS = 1e-5
"""Margin around the threshold inside which faiss similarities are recomputed in float64."""

_TORCH_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class NeighborGraph:
    """Neighbourhoods of the candidate points, in CSR form.

    ``centres[k]`` is the position (row in the embedding matrix) of the k-th candidate, in
    increasing order; its neighbours are ``neighbors[lims[k]:lims[k+1]]`` with similarities
    ``similarities[lims[k]:lims[k+1]]``, sorted by decreasing similarity, ties by lower position.
    Every list has at least ``min_size`` entries, all with similarity ``>= float32(threshold)``.
    ``n`` is the number of points the graph was built over.
    """

    centres: np.ndarray
    lims: np.ndarray
    neighbors: np.ndarray
    similarities: np.ndarray
    n: int
    threshold: float
    min_size: int

    def __len__(self) -> int:
        return len(self.centres)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(centre, neighbour positions, similarities)`` for every candidate."""
        for k, centre in enumerate(self.centres.tolist()):
            a, b = self.lims[k], self.lims[k + 1]
            yield centre, self.neighbors[a:b], self.similarities[a:b]

    @property
    def list_sizes(self) -> np.ndarray:
        """Neighbourhood size of every candidate, aligned with ``centres``."""
        return np.diff(self.lims)

    @property
    def max_list_size(self) -> int:
        """Size of the largest neighbourhood (0 for an empty graph)."""
        return int(self.list_sizes.max()) if len(self.centres) else 0

    @property
    def total_edges(self) -> int:
        """Number of (centre, neighbour) pairs stored, self-pairs included."""
        return int(self.lims[-1])

    @classmethod
    def empty(cls, n: int, threshold: float, min_size: int) -> NeighborGraph:
        """A graph without candidates over ``n`` points."""
        return cls(
            centres=np.zeros(0, np.int64),
            lims=np.zeros(1, np.int64),
            neighbors=np.zeros(0, np.int64),
            similarities=np.zeros(0, np.float32),
            n=int(n),
            threshold=float(threshold),
            min_size=int(min_size),
        )


@dataclass(frozen=True)
class GraphEstimate:
    """Sample-based estimate of a neighbour graph's size (see :func:`estimate_graph`)."""

    n: int
    sample_size: int
    candidate_fraction: float
    expected_edges: float
    expected_bytes: float
    max_neighborhood_fraction: float
    mean_neighborhood_size: float


def _as_matrix(embeddings) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :] if x.size else x.reshape(0, 0)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _check(threshold: float, min_size: int) -> None:
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")


def _pair_similarities(embeddings: np.ndarray, rows: np.ndarray, cols: np.ndarray, block: int = 65536) -> np.ndarray:
    """``sim(rows[p], cols[p])`` of the float32 vectors, computed in float64 (exact to far below
    a float32 ulp, so no BLAS's summation order decides a pair at the threshold)."""
    out = np.empty(len(rows), np.float64)
    for s in range(0, len(rows), block):
        a = embeddings[rows[s : s + block]].astype(np.float64)
        b = embeddings[cols[s : s + block]].astype(np.float64)
        out[s : s + block] = np.einsum("ij,ij->i", a, b)
    return out


def _assemble(
    rows_parts: list[np.ndarray],
    cols_parts: list[np.ndarray],
    sims_parts: list[np.ndarray],
    n: int,
    threshold: float,
    min_size: int,
) -> NeighborGraph:
    """Join the per-batch pairs, sort them per centre (decreasing similarity, then position)
    and keep lists >= min_size."""
    if not rows_parts:
        return NeighborGraph.empty(n, threshold, min_size)
    rows, cols, sims = np.concatenate(rows_parts), np.concatenate(cols_parts), np.concatenate(sims_parts)
    centres, counts, cols, sims = sort_lists(rows, cols, sims, min_size)
    return assemble_lists(centres, counts, cols, sims, n, threshold, min_size)


def settle_border(
    x: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, t32: np.float32, eps: float
) -> np.ndarray:
    """Recompute ``values`` within ``eps`` of the threshold as ``sim(rows, cols)`` in float64
    (stored back as float32, in place) and return the mask of pairs at or above it, those pairs
    decided by their float64 value."""
    keep = values >= t32
    border = np.flatnonzero(np.abs(values - t32) <= eps)
    if len(border):
        exact = _pair_similarities(x, rows[border], cols[border])
        values[border] = exact
        keep[border] = exact >= np.float64(t32)
    return keep


def sort_lists(
    local_rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, min_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort one batch of complete neighbour lists and drop those shorter than ``min_size``.

    ``local_rows`` numbers the lists of the batch; every list must be complete in it. Returns
    ``(rows, counts, cols, sims)``: the kept list numbers, their sizes and the pairs in graph
    order (decreasing similarity, ties by lower position).
    """
    order = np.lexsort((cols, -sims, local_rows))
    local_rows, cols, sims = local_rows[order], cols[order], sims[order]
    rows, counts = np.unique(local_rows, return_counts=True)
    keep = counts >= min_size
    if not keep.all():
        edge_keep = np.repeat(keep, counts)
        cols, sims = cols[edge_keep], sims[edge_keep]
        rows, counts = rows[keep], counts[keep]
    return rows, counts, cols, sims


def assemble_lists(
    centres: np.ndarray,
    counts: np.ndarray,
    neighbors: np.ndarray,
    similarities: np.ndarray,
    n: int,
    threshold: float,
    min_size: int,
) -> NeighborGraph:
    """A :class:`NeighborGraph` from lists already sorted and filtered, given in any centre order.

    Lists are moved into increasing centre order with one gather, so large graphs never pay for
    a global sort of their edges.
    """
    if not len(centres):
        return NeighborGraph.empty(n, threshold, min_size)
    counts = counts.astype(np.int64)
    order = np.argsort(centres, kind="stable")
    if np.any(order != np.arange(len(order))):
        starts = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        new_counts = counts[order]
        new_starts = np.zeros(len(counts), np.int64)
        np.cumsum(new_counts[:-1], out=new_starts[1:])
        gather = np.arange(int(new_counts.sum()), dtype=np.int64)
        gather += np.repeat(starts[order] - new_starts, new_counts)
        neighbors, similarities = neighbors[gather], similarities[gather]
        del gather
        centres, counts = centres[order], new_counts
    lims = np.zeros(len(centres) + 1, np.int64)
    np.cumsum(counts, out=lims[1:])
    return NeighborGraph(
        centres=np.asarray(centres, np.int64),
        lims=lims,
        neighbors=np.asarray(neighbors, np.int64),
        similarities=np.asarray(similarities, np.float32),
        n=int(n),
        threshold=float(threshold),
        min_size=int(min_size),
    )


def build_flat_index(embeddings: np.ndarray):
    """An exact inner-product faiss index over ``embeddings`` (ids are positions)."""
    import faiss

    x = _as_matrix(embeddings)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def build_ivf_index(
    embeddings: np.ndarray, nlist: int | None = None, nprobe: int = 16, train_size: int = 100_000, seed: int = 0
):
    """An approximate inverted-file inner-product index over ``embeddings`` (ids are positions).

    ``nlist`` defaults to about ``4 * sqrt(n)`` cells, trained on at most ``train_size`` rows;
    ``nprobe`` (cells visited per query) is the recall knob.
    """
    import faiss

    x = _as_matrix(embeddings)
    n, d = x.shape
    if nlist is None:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = x if n <= train_size else x[np.sort(rng.choice(n, train_size, replace=False))]
    index.train(train)
    index.add(x)
    index.nprobe = nprobe
    return index


def _range_search(index, queries: np.ndarray, radius: float):
    """``(lims, sims, ids)`` of ``index`` points with similarity > radius, by range search or growing kNN."""
    try:
        lims, sims, ids = index.range_search(queries, float(radius))
        return lims.astype(np.int64), sims, ids.astype(np.int64)
    except RuntimeError:
        pass
    k = min(64, index.ntotal)
    while True:
        sims, ids = index.search(queries, k)
        if k >= index.ntotal or not (sims[:, -1] > radius).any():
            break
        k = min(2 * k, index.ntotal)
    mask = (sims > radius) & (ids >= 0)
    lims = np.zeros(len(queries) + 1, np.int64)
    np.cumsum(mask.sum(1), out=lims[1:])
    return lims, sims[mask], ids[mask].astype(np.int64)


def faiss_neighbor_graph(
    embeddings: np.ndarray,
    threshold: float,
    min_size: int,
    index=None,
    batch_size: int = 4096,
    show_progress: bool = False,
    eps: float = BORDER_EPS,
) -> NeighborGraph:
    """Neighbour graph of ``embeddings`` from one faiss range search per batch of queries.

    Each batch's neighbourhoods come from a single range search; rows with fewer than
    ``min_size`` neighbours (the candidate test) are dropped right away, so memory holds only
    the candidates' lists. A separate kNN pass for the candidate test would scan the index a
    second time for the same answer.

    ``index`` defaults to an exact ``IndexFlatIP`` built here; otherwise it must hold exactly the
    rows of ``embeddings`` with ids ``0..n-1`` (an IVF index makes the search approximate, with
    ``nprobe`` as the recall knob). Queries run in batches of ``batch_size`` rows.
    Pairs whose faiss similarity is within ``eps`` of the threshold are recomputed in float64,
    so with an exact index the lists equal those of an exact ``E @ E.T >= float32(threshold)``.
    Similarities of the other pairs are faiss' (a few ulps from any other float32 matmul's).
    """
    _check(threshold, min_size)
    x = _as_matrix(embeddings)
    n = len(x)
    if n < min_size or n == 0:
        return NeighborGraph.empty(n, threshold, min_size)
    if index is None:
        index = build_flat_index(x)
    elif index.ntotal != n:
        raise ValueError(f"index holds {index.ntotal} vectors, embeddings have {n} rows")
    t32 = np.float32(threshold)
    low = float(t32) - eps

    from tqdm.auto import tqdm

    batches = range(0, n, batch_size)
    rows_parts, cols_parts, sims_parts = [], [], []
    for start in tqdm(batches, desc="Neighbour search", disable=not show_progress):
        q = x[start : start + batch_size]
        lims, sims, ids = _range_search(index, q, low)
        counts = np.diff(lims)
        if not (counts >= min_size).any():
            continue
        rows = np.repeat(np.arange(start, start + len(q), dtype=np.int64), counts)
        keep = settle_border(x, rows, ids, sims, t32, eps)
        rows, ids, sims = rows[keep], ids[keep], sims[keep]
        sizes = np.bincount(rows - start, minlength=len(q))
        enough = np.repeat(sizes >= min_size, sizes)
        rows_parts.append(rows[enough])
        cols_parts.append(ids[enough])
        sims_parts.append(sims[enough].astype(np.float32))
    return _assemble(rows_parts, cols_parts, sims_parts, n, threshold, min_size)


def torch_neighbor_graph(
    embeddings,
    threshold: float,
    min_size: int,
    device: str = "cpu",
    batch_size: int | None = None,
    show_progress: bool = False,
    precision: str = "auto",
) -> NeighborGraph:
    """Neighbour graph of ``embeddings`` by chunked dense products on a torch ``device``
    (:func:`clusterer.algorithms.device_search.threshold_graph`: chunks sized from the device's
    free memory, at most ``batch_size`` rows; float16 screening with a float32 recheck on CUDA);
    ``embeddings`` may be a numpy array or a torch tensor."""
    from clusterer.algorithms.device_search import threshold_graph

    _check(threshold, min_size)
    centres, counts, cols, sims, n = threshold_graph(
        embeddings,
        threshold,
        min_size,
        device=device,
        batch_size=batch_size,
        precision=precision,
        show_progress=show_progress,
    )
    return assemble_lists(centres, counts, cols, sims, n, threshold, min_size)


def neighbor_graph(
    embeddings,
    threshold: float,
    min_size: int,
    device: str = "auto",
    index=None,
    batch_size: int | None = None,
    show_progress: bool = False,
) -> NeighborGraph:
    """Neighbour graph with the backend chosen by ``device``.

    ``"auto"``: torch on CUDA when available (and no ``index`` is given), else faiss on CPU;
    ``"cuda"``: torch on CUDA; ``"cpu"``: faiss (with ``index`` when given).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "auto":
        from indexer.hardware import cuda_available

        device = "cuda" if index is None and cuda_available() else "cpu"
    if device == "cuda":
        return torch_neighbor_graph(
            embeddings, threshold, min_size, device="cuda", batch_size=batch_size, show_progress=show_progress
        )
    return faiss_neighbor_graph(
        embeddings, threshold, min_size, index=index, batch_size=batch_size or 4096, show_progress=show_progress
    )


def estimate_graph(
    embeddings: np.ndarray,
    threshold: float,
    min_size: int,
    sample_size: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
) -> GraphEstimate:
    """Estimate the size of the neighbour graph from ``sample_size`` random rows.

    For each sampled point the exact neighbourhood size ``|N(i)|`` over all ``n`` points is
    counted; ``candidate_fraction`` is the share with ``|N(i)| >= min_size``,
    ``expected_edges`` is ``n`` times the mean of ``|N(i)|`` over candidates (zero elsewhere),
    ``expected_bytes`` the memory those edges take in a :class:`NeighborGraph` (int64 id and
    float32 similarity, plus the CSR offsets) and ``max_neighborhood_fraction`` the largest
    sampled ``|N(i)| / n``. No policy is applied here.
    """
    _check(threshold, min_size)
    x = _as_matrix(embeddings)
    n = len(x)
    if n == 0:
        return GraphEstimate(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(sample_size, n), replace=False))
    t32 = np.float32(threshold)
    counts = np.zeros(len(sample), np.int64)
    rows_per_step = max(1, min(batch_size, _TORCH_CHUNK_ELEMENTS // max(n, 1)))
    col_step = max(1, _TORCH_CHUNK_ELEMENTS // rows_per_step)
    for s in range(0, len(sample), rows_per_step):
        q = x[sample[s : s + rows_per_step]]
        for c in range(0, n, col_step):
            counts[s : s + len(q)] += (q @ x[c : c + col_step].T >= t32).sum(1)
    is_cand = counts >= min_size
    cand_fraction = float(is_cand.mean())
    edges = float(n * np.where(is_cand, counts, 0).mean())
    return GraphEstimate(
        n=n,
        sample_size=len(sample),
        candidate_fraction=cand_fraction,
        expected_edges=edges,
        expected_bytes=edges * 12.0 + cand_fraction * n * 16.0,
        max_neighborhood_fraction=float(counts.max() / n),
        mean_neighborhood_size=float(counts.mean()),
    )
