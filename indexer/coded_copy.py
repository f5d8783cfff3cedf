"""A compact copy of an index for fast lookups: 4-bit product-quantised codes in IVF cells, read
with FAISS's fast-scan kernels, whose candidates are re-ranked with the exact vectors of the
index it copies.

What a lookup's search costs is the memory it reads. A flat index reads every stored vector
(150 MB at 100,000 vectors of 384 dimensions, 10-30 ms a query); an IVF index reads the cells it
probes, which for a recall near 0.99 on sentence embeddings is still a few percent of the store
(38 MB a query at a million vectors, 1.5 ms). The copy holds 48 bytes a vector instead of 1,536
(``d / 4`` sub-quantisers of 16 centroids), scans the probed cells' codes several times faster,
keeps the :data:`RERANK_FACTOR` x k best candidates, and ranks those by their exact inner
products with the source's own vectors. What it returns is exact for what it found; what it may
miss is a neighbour whose code ranked it out of the candidates or that sits in a cell not probed.

The copy shares the cells of an IVF source (its coarse quantiser and probe count), so it finds
what the source would, less what the codes lose; for an exact source it trains cells of its own
and probes :data:`PROBED_SHARE` of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import numpy as np

from indexer.vector_index import SearchResult, VectorIndex

log = logging.getLogger(__name__)

PROBED_SHARE = 0.1
"""The share of its own cells a copy of an exact index probes: recall depends on it more than on
the number of cells (on 50,000 real sentence embeddings: 0.86 of the 10 nearest at 2 %, 0.97 at
10 %, 0.99 at 30 %)."""
RERANK_FACTOR = 4
RERANK_MIN = 256
"""Candidates re-ranked exactly: 4 x k, at least 256 (k = 64, a lookup's scan: 1.000 of the 10
nearest and 0.86 of the 64 nearest the IVF source finds, at a million synthetic vectors;
0.971 / 0.945 of the exact index's at 100,000 real ones, bench/service.py)."""
TRAIN_PER_LIST = 40
TRAIN_ITERATIONS = 10
TRAIN_MAX = 65_536


def copy_nlist(n: int) -> int:
    """Cells of a copy of an exact index of ``n`` vectors: about 2 sqrt(n)."""
    return max(16, min(16384, int(2 * math.sqrt(max(n, 1)))))


def codable(dimension: int) -> bool:
    """Whether vectors of ``dimension`` split into 4-dimensional sub-vectors."""
    return dimension >= 8 and dimension % 4 == 0


class CodedCopy:
    """The copy: searches return exact similarities of re-ranked candidates; range searches are the
    source's; :meth:`add` and :meth:`remove` keep it in step (as a follower of the source)."""

    def __init__(self, codes, source: VectorIndex):
        self.codes, self.source = codes, source
        self.dimension = source.dimension

    @property
    def kind(self) -> str:
        return f"IVFPQFastScan(nlist={self.codes.nlist},nprobe={self.codes.nprobe},M={self.codes.pq.M})+rerank"

    @property
    def is_exact(self) -> bool:
        return False

    @property
    def ntotal(self) -> int:
        return int(self.codes.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        self.codes.nprobe = max(1, min(int(nprobe), self.codes.nlist))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.codes.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
            )

    def remove(self, ids) -> int:
        import faiss

        ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
        if len(ids) == 0:
            return 0
        return int(self.codes.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))))

    def ids(self) -> np.ndarray:
        import faiss

        invlists, parts = self.codes.invlists, []
        for lst in range(self.codes.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        nq = len(queries)
        k = max(1, min(k, max(self.ntotal, 1)))
        wanted = min(max(RERANK_MIN, RERANK_FACTOR * k), max(self.ntotal, 1))
        _, found = self.codes.search(queries, wanted)
        flat = found.ravel()
        hit = flat >= 0
        sims = np.full(flat.shape, -np.inf, np.float32)
        if hit.any():
            vectors = self.source.index.reconstruct_batch(np.ascontiguousarray(flat[hit]))
            rows = np.repeat(np.arange(nq), wanted)[hit]
            sims[hit] = np.einsum("ij,ij->i", vectors, queries[rows])
        sims, found = sims.reshape(nq, wanted), found.reshape(nq, wanted)
        best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(sims, best, axis=1)
        ids = np.where(np.isfinite(top), np.take_along_axis(found, best, axis=1), -1)
        return SearchResult(np.where(np.isfinite(top), top, -np.finfo(np.float32).max).astype(np.float32), ids)

    def range_search(self, queries: np.ndarray, threshold: float):
        return self.source.range_search(queries, threshold)


def _codes_index(quantizer, dimension: int, nlist: int):
    import faiss

    codes = faiss.IndexIVFPQFastScan(quantizer, dimension, nlist, dimension // 4, 4, faiss.METRIC_INNER_PRODUCT)
    codes.by_residual = False
    codes.cp.niter = TRAIN_ITERATIONS
    codes.cp.max_points_per_centroid = TRAIN_PER_LIST
    return codes


def _sample(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(vectors) <= n:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(len(vectors), n, replace=False))
    return np.ascontiguousarray(vectors[pick], dtype=np.float32)


def copy_of_exact(source: VectorIndex, ids: np.ndarray, vectors: np.ndarray) -> CodedCopy:
    """A copy of the ``(ids, vectors)`` snapshot of the exact index ``source``, with cells of its own."""
    import faiss

    started = time.perf_counter()
    n, d = vectors.shape
    nlist = max(1, min(copy_nlist(n), n // TRAIN_PER_LIST))
    codes = _codes_index(faiss.IndexFlatIP(d), d, nlist)
    codes.train(_sample(vectors, min(TRAIN_MAX, max(nlist * TRAIN_PER_LIST, 4096))))
    codes.nprobe = max(1, min(nlist, math.ceil(PROBED_SHARE * nlist)))
    copy = CodedCopy(codes, source)
    copy.add(ids, vectors)
    log.info("built a coded copy of %d vectors (nlist %d) in %.1f s", n, nlist, time.perf_counter() - started)
    return copy


def copy_of_ivf(source: VectorIndex, sample: np.ndarray, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> CodedCopy:
    """A copy of the IVF index ``source`` in its own cells: codes trained on ``sample``, then the
    ``(ids, vectors)`` of ``chunks`` added."""
    started = time.perf_counter()
    index = source.index
    codes = _codes_index(index.quantizer, source.dimension, index.nlist)
    codes.train(np.ascontiguousarray(sample, dtype=np.float32))  # the cells are trained: only the codes learn
    codes.nprobe = index.nprobe
    copy = CodedCopy(codes, source)
    for ids, vectors in chunks:
        copy.add(ids, vectors)
    log.info("built a coded copy of %d vectors in %.1f s", copy.ntotal, time.perf_counter() - started)
    return copy
