"""Searches of many queries at once, shaped for BLAS instead of FAISS's query-by-query scans.

A batch of new sentences (upkeep's neighbour search, a range search for community upkeep) asks
for the neighbours of tens to thousands of queries. On an exact index one matrix product of the
queries with the stored vectors and a partial sort per row cost a fifth of FAISS's own batched
search (measured: 100 queries, 100,000 vectors, one thread: 0.13 against 0.65 s). On an IVF
index each inverted list is compared with all the queries that probe it in one product; the
lists probed are FAISS's, so the results are its own (up to float rounding at ties) in a
fraction of the time its scan takes.
"""

from __future__ import annotations

import numpy as np


def _faiss():
    import faiss

    return faiss


RANGE_MIN_QUERIES = 32


def probed_lists(index, lists: np.ndarray, d: int):
    """(start, end, vectors, ids) of each run of one inverted list in the sorted probe list
    ``lists``: the stored vectors and ids of that list, read in place; empty lists are skipped."""
    faiss = _faiss()
    starts = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]]) if len(lists) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(lists)]
    invlists = index.invlists
    for a, b in zip(starts.tolist(), ends.tolist()):
        lst = int(lists[a])
        size = invlists.list_size(lst)
        if not size:
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * d * 4).view(np.float32).reshape(size, d)
        yield a, b, codes, faiss.rev_swig_ptr(invlists.get_ids(lst), size)


def listed(index, first: int, last: int):
    """:func:`probed_lists` of the inverted lists ``first`` to ``last - 1`` (all of them)."""
    return probed_lists(index, np.arange(first, min(last, index.nlist), dtype=np.int64), index.d)


def ivf_range_search(index, queries: np.ndarray, threshold: np.float32):
    nq, d = queries.shape
    _, probes = index.quantizer.search(queries, index.nprobe)
    lists = probes.ravel()
    owners = np.repeat(np.arange(nq), probes.shape[1])
    valid = lists >= 0
    lists, owners = lists[valid], owners[valid]
    order = np.argsort(lists, kind="stable")
    lists, owners = lists[order], owners[order]
    rows, cols, sims = [], [], []
    for a, b, codes, list_ids in probed_lists(index, lists, d):
        q = owners[a:b]
        block = queries[q] @ codes.T
        r, c = np.nonzero(block >= threshold)
        if len(r):
            rows.append(q[r])
            cols.append(list_ids[c].astype(np.int64))
            sims.append(block[r, c])
    if not rows:
        return np.zeros(nq + 1, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    rows_all = np.concatenate(rows)
    by_query = np.argsort(rows_all, kind="stable")
    lims = np.zeros(nq + 1, np.int64)
    np.cumsum(np.bincount(rows_all, minlength=nq), out=lims[1:])
    return lims, np.concatenate(sims)[by_query], np.concatenate(cols)[by_query]


def one_blas_thread():
    """BLAS on one thread for a loop of small products: a multithreaded BLAS starts its team for
    each (25 x 384) x (384 x 80) product, which on a busy machine costs ten times the product
    (measured: 1.9 s against 0.17 s for the 1,264 lists of a 100k index, two cores under load)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


IVF_MIN_QUERIES = 64
IVF_CHUNK = 4096


def ivf_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the ``k`` best of each query among its ``nprobe`` lists, list by
    list: each inverted list is compared with all the queries that probe it in one matrix
    product (BLAS), and each (query, list) pair keeps its ``k`` best; the lists probed are
    FAISS's, so the results are its own (up to float rounding at ties) in a fraction of the time
    FAISS takes scanning the lists query by query."""
    sims_out = np.empty((len(queries), k), np.float32)
    ids_out = np.empty((len(queries), k), np.int64)
    with one_blas_thread():
        for start in range(0, len(queries), IVF_CHUNK):
            chunk = queries[start : start + IVF_CHUNK]
            sims_out[start : start + len(chunk)], ids_out[start : start + len(chunk)] = _ivf_chunk(index, chunk, k)
    return sims_out, ids_out


def _ivf_chunk(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nq, d = queries.shape
    nprobe = index.nprobe
    _, probes = index.quantizer.search(queries, nprobe)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[flat[order] >= 0]
    lists = flat[order]
    cand_s = np.full((nq, nprobe * k), -np.inf, np.float32)
    cand_i = np.full((nq, nprobe * k), -1, np.int64)
    for a, b, codes, list_ids in probed_lists(index, lists, d):
        size = len(codes)
        pairs = order[a:b]
        rows, slots = pairs // nprobe, pairs % nprobe
        block = queries[rows] @ codes.T
        kk = min(k, size)
        if kk < size:
            top = np.argpartition(block, size - kk, axis=1)[:, size - kk :]  # the kk largest, no negated copy
            block = np.take_along_axis(block, top, axis=1)
        else:
            top = np.broadcast_to(np.arange(kk), block.shape)
        cols = slots[:, None] * k + np.arange(kk)[None, :]
        cand_s[rows[:, None], cols] = block
        cand_i[rows[:, None], cols] = list_ids[top]
    if k < cand_s.shape[1]:
        part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        cand_s, cand_i = np.take_along_axis(cand_s, part, axis=1), np.take_along_axis(cand_i, part, axis=1)
    best = np.argsort(-cand_s, axis=1, kind="stable")
    sims = np.take_along_axis(cand_s, best, axis=1)
    found = np.isfinite(sims)
    ids = np.where(found, np.take_along_axis(cand_i, best, axis=1), -1)
    return np.where(found, sims, -np.finfo(np.float32).max).astype(np.float32), ids


FLAT_MIN_QUERIES = 20
"""From this many queries FAISS itself uses BLAS on a flat index, more slowly than this does."""
FLAT_BLOCK = 1 << 24
"""Similarities computed at a time (64 MB)."""


def flat_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the ``k`` best of each query in an ``IndexIDMap`` over an exact
    inner-product index: one matrix product per block of queries, then a partial sort per row,
    read from the index's own storage without a copy."""
    faiss = _faiss()
    n, d = int(index.ntotal), int(index.d)
    stored = faiss.rev_swig_ptr(faiss.downcast_index(index.index).get_xb(), n * d).reshape(n, d)
    ids = faiss.rev_swig_ptr(index.id_map.data(), n)
    k = min(k, n)
    sims_out = np.empty((len(queries), k), np.float32)
    ids_out = np.empty((len(queries), k), np.int64)
    step = max(1, FLAT_BLOCK // max(n, 1))
    for start in range(0, len(queries), step):
        block = queries[start : start + step] @ stored.T
        top = np.argpartition(block, n - k, axis=1)[:, n - k :] if k < n else np.argsort(-block, axis=1)
        best = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-best, axis=1, kind="stable")
        sims_out[start : start + step] = np.take_along_axis(best, order, axis=1)
        ids_out[start : start + step] = ids[np.take_along_axis(top, order, axis=1)]
    return sims_out, ids_out
