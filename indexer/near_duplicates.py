"""Skipping near-duplicates at ingest: which vectors of a batch to leave out."""

from __future__ import annotations

import numpy as np

BLOCK = 2048


def near_duplicate_mask(index, vectors: np.ndarray, threshold: float) -> np.ndarray:
    """True for each row of ``vectors`` whose nearest indexed vector, or an earlier row of the
    batch that is itself kept, has inner product >= ``threshold``.

    ``index`` is a :class:`indexer.vector_index.VectorIndex` (exact when flat; on IVF the nearest
    neighbour is the one found in the probed lists).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    skip = np.zeros(n, dtype=bool)
    if n == 0:
        return skip
    t = np.float32(threshold)
    if index.ntotal:
        found = index.search(vectors, 1)
        skip |= (found.ids[:, 0] >= 0) & (found.similarities[:, 0] >= t)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        close = (vectors[start:stop] @ vectors[:stop].T) >= t
        rows, cols = np.nonzero(close)
        earlier = cols < rows + start
        rows, cols = rows[earlier] + start, cols[earlier]
        for i in np.unique(rows).tolist():
            if not skip[i] and not skip[cols[rows == i]].all():
                skip[i] = True
    return skip
