"""The persistent FAISS index whose ids are the database's sentence ids.

Index type by size: an exact ``IndexIDMap2(IndexFlatIP)`` while the store holds
at most ``FLAT_MAX`` vectors, above that an ``IndexIVFFlat`` (inner product)
with ``nlist ~ 4 sqrt(n)`` lists, trained on a sample of the stored vectors.
Both support ``add_with_ids``, ``remove_ids`` and range search, which the
clustering needs; HNSW was ruled out because it cannot remove vectors.  The
IVF recall knob is ``nprobe`` (default ``DEFAULT_NPROBE``).

Files are written atomically (temporary file, fsync, rename, fsync of the
folder) and identified by a BLAKE2b checksum that the database records.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import IndexerError

FLAT_MAX = 200_000
DEFAULT_NPROBE = 32
TRAIN_SAMPLE = 100_000


class IndexFileError(IndexerError):
    """The index file is missing, truncated, corrupt or does not match the database."""


def checksum_bytes(data) -> str:
    return hashlib.blake2b(memoryview(data), digest_size=16).hexdigest()


def _faiss():
    import faiss

    return faiss


BLOCKED_RANGE_MIN_QUERIES = 32


def _probed_lists(index, lists: np.ndarray, d: int):
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


def _listed(index, first: int, last: int):
    """:func:`_probed_lists` of the lists ``first`` to ``last - 1``."""
    return _probed_lists(index, np.arange(first, min(last, index.nlist), dtype=np.int64), index.d)


def _blocked_ivf_range_search(index, queries: np.ndarray, threshold: np.float32):
    nq, d = queries.shape
    _, probes = index.quantizer.search(queries, index.nprobe)
    lists = probes.ravel()
    owners = np.repeat(np.arange(nq), probes.shape[1])
    valid = lists >= 0
    lists, owners = lists[valid], owners[valid]
    order = np.argsort(lists, kind="stable")
    lists, owners = lists[order], owners[order]
    rows, cols, sims = [], [], []
    for a, b, codes, list_ids in _probed_lists(index, lists, d):
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


BLOCKED_SEARCH_MIN_QUERIES = 64
BLOCKED_SEARCH_CHUNK = 4096


def _blocked_ivf_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the ``k`` best of each query among its ``nprobe`` lists, list by
    list: each inverted list is compared with all the queries that probe it in one matrix
    product (BLAS), and each (query, list) pair keeps its ``k`` best; the lists probed are
    FAISS's, so the results are its own (up to float rounding at ties) in a fraction of the time
    FAISS takes scanning the lists query by query."""
    sims_out = np.empty((len(queries), k), np.float32)
    ids_out = np.empty((len(queries), k), np.int64)
    with one_blas_thread():
        for start in range(0, len(queries), BLOCKED_SEARCH_CHUNK):
            chunk = queries[start : start + BLOCKED_SEARCH_CHUNK]
            sims_out[start : start + len(chunk)], ids_out[start : start + len(chunk)] = _blocked_chunk(index, chunk, k)
    return sims_out, ids_out


def _blocked_chunk(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    nq, d = queries.shape
    nprobe = index.nprobe
    _, probes = index.quantizer.search(queries, nprobe)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[flat[order] >= 0]
    lists = flat[order]
    cand_s = np.full((nq, nprobe * k), -np.inf, np.float32)
    cand_i = np.full((nq, nprobe * k), -1, np.int64)
    for a, b, codes, list_ids in _probed_lists(index, lists, d):
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


def nlist_for(n: int) -> int:
    return max(64, min(65536, int(4 * math.sqrt(max(n, 1)))))


@dataclass
class SearchResult:
    similarities: np.ndarray
    ids: np.ndarray


class VectorIndex:
    """A FAISS index over L2-normalised vectors with sentence ids."""

    def __init__(self, index, dimension: int):
        self.index = index
        self.dimension = dimension
        self.follower: Any = None
        self._journal: list[tuple[np.ndarray, np.ndarray | None]] | None = None

    @classmethod
    def flat(cls, dimension: int) -> VectorIndex:
        faiss = _faiss()
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dimension)), dimension)

    @classmethod
    def ivf(
        cls, dimension: int, training: np.ndarray, nlist: int | None = None, nprobe: int = DEFAULT_NPROBE
    ) -> VectorIndex:
        faiss = _faiss()
        nlist = nlist or nlist_for(len(training))
        nlist = max(1, min(nlist, len(training) // 39 or 1))
        quantizer = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(training, dtype=np.float32))
        index.nprobe = min(nprobe, nlist)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return cls(index, dimension)

    @classmethod
    def for_size(
        cls, dimension: int, n: int, sample: np.ndarray | None = None, flat_max: int = FLAT_MAX
    ) -> VectorIndex:
        if n <= flat_max or sample is None or len(sample) < 1000:
            return cls.flat(dimension)
        return cls.ivf(dimension, sample)

    @property
    def kind(self) -> str:
        faiss = _faiss()
        if isinstance(self.index, faiss.IndexIVF):
            return f"IVFFlat(nlist={self.index.nlist},nprobe={self.index.nprobe})"
        return "Flat"

    @property
    def is_exact(self) -> bool:
        return self.kind == "Flat"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        faiss = _faiss()
        if isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = max(1, min(int(nprobe), self.index.nlist))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.index.add_with_ids(vectors, ids)
        if self.follower is not None:
            self.follower.add(ids, vectors)
        if self._journal is not None:
            self._journal.append((ids.copy(), vectors.copy()))

    def remove(self, ids) -> int:
        faiss = _faiss()
        ids = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64))
        if len(ids) == 0:
            return 0
        selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        removed = int(self.index.remove_ids(selector))
        if self.follower is not None:
            self.follower.remove(ids)
        if self._journal is not None:
            self._journal.append((ids.copy(), None))  # None: removed
        return removed

    # -- a follower: a copy kept in step with this index ---------------------------

    def start_journal(self) -> None:
        """Record every change from now on, for :meth:`attach_follower`. Call it where nothing
        changes the index meanwhile (under the read side of the store's lock)."""
        self._journal = []

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) copies of everything stored, and a journal started (see
        :meth:`start_journal`, whose conditions apply)."""
        faiss = _faiss()
        if isinstance(self.index, faiss.IndexIDMap) and isinstance(self.index.index, faiss.IndexFlat):
            n = self.ntotal
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            flat = faiss.rev_swig_ptr(self.index.index.get_xb(), n * self.dimension)
            vectors = np.array(flat, dtype=np.float32).reshape(n, self.dimension)
        else:
            ids, vectors = self.vectors()
        self.start_journal()
        return ids, vectors

    def list_vectors(self, first: int, last: int, per_list: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) copies of the inverted lists ``first`` to ``last - 1`` of an IVF index
        (at most ``per_list`` of each)."""
        parts = [
            (ids[:per_list].copy(), codes[:per_list].copy()) for _, _, codes, ids in _listed(self.index, first, last)
        ]
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dimension), np.float32)
        return np.concatenate([p[0] for p in parts]).astype(np.int64), np.vstack([p[1] for p in parts])

    def attach_follower(self, follower) -> None:
        """Bring ``follower`` (built from copies taken after :meth:`start_journal`) up to date with
        the changes journalled since, and keep it so: every later add and remove is applied to it
        too. A journalled add is removed first, so a copy that caught it already holds it once.
        Call it where nothing searches or changes the index meanwhile (under the write side)."""
        for ids, vectors in self._journal or []:
            follower.remove(ids)
            if vectors is not None:
                follower.add(ids, vectors)
        self._journal = None
        self.follower = follower

    def drop_follower(self) -> None:
        self.follower, self._journal = None, None

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, max(self.ntotal, 1)))
        if len(queries) >= BLOCKED_SEARCH_MIN_QUERIES and isinstance(self.index, _faiss().IndexIVFFlat):
            return SearchResult(*_blocked_ivf_search(self.index, queries, k))
        sims, ids = self.index.search(queries, k)
        return SearchResult(sims, ids)

    def search_within(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> SearchResult:
        """The ``k`` nearest among the ids ``allowed`` only, through a FAISS id selector (the
        selector is applied during the scan, so a filter never loses results to a post-filter).

        On an IVF index a query that found fewer than ``min(k, len(allowed))`` hits in its
        ``nprobe`` lists is searched again over every list.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        allowed = np.ascontiguousarray(np.unique(np.asarray(allowed, dtype=np.int64)))
        if len(allowed) == 0 or self.ntotal == 0:
            return SearchResult(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
        k = max(1, min(k, len(allowed), self.ntotal))
        selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        if isinstance(self.index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nprobe)
            sims, ids = self.index.search(queries, k, params=params)
            short = np.flatnonzero((ids < 0).any(axis=1))
            if len(short) and self.index.nprobe < self.index.nlist:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.index.nlist)
                sims[short], ids[short] = self.index.search(queries[short], k, params=params)
        else:
            sims, ids = self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        return SearchResult(sims, ids)

    def range_search(self, queries: np.ndarray, threshold: float):
        """(lims, similarities, ids) of every stored vector with similarity >= threshold.

        On an IVF index a batch of queries is answered list by list: each inverted list
        is compared with all the queries that probe it in one matrix product, which is
        several times faster than FAISS scanning the lists query by query; the lists
        probed are the same, so the results are too (up to float rounding at the threshold).
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(queries) >= BLOCKED_RANGE_MIN_QUERIES and isinstance(self.index, _faiss().IndexIVFFlat):
            with one_blas_thread():
                return _blocked_ivf_range_search(self.index, queries, np.float32(threshold))
        lims, sims, ids = self.index.range_search(queries, float(threshold))
        return lims, sims, ids

    def ids(self) -> np.ndarray:
        """Every id stored in the index (unordered)."""
        faiss = _faiss()
        if isinstance(self.index, faiss.IndexIDMap):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        invlists = self.index.invlists
        parts = []
        for lst in range(self.index.nlist):
            size = invlists.list_size(lst)
            if size:
                parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def reconstruct(self, ids) -> np.ndarray:
        ids = [int(i) for i in ids]
        if not ids:
            return np.zeros((0, self.dimension), np.float32)
        return np.vstack([self.index.reconstruct(i) for i in ids])

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything in the index, in id order."""
        ids = np.sort(self.ids())
        return ids, self.reconstruct(ids)

    def to_bytes(self) -> np.ndarray:
        return _faiss().serialize_index(self.index)

    @classmethod
    def from_bytes(cls, data: np.ndarray | bytes) -> VectorIndex:
        faiss = _faiss()
        arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
        try:
            index = faiss.deserialize_index(arr)
        except Exception as exc:
            raise IndexFileError(f"cannot read FAISS index: {exc}".splitlines()[0]) from exc
        return cls(index, index.d)

    def save(self, path: str | Path) -> str:
        """Write atomically to ``path``; returns the checksum of what was written."""
        data = self.to_bytes()
        write_atomic(Path(path), data)
        return checksum_bytes(data)


def write_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(memoryview(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_index(path: str | Path, expected_checksum: str | None) -> VectorIndex:
    """Read and check an index file; raises IndexFileError on any mismatch or damage."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IndexFileError(f"{path}: index file is missing") from None
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot read index file: {exc.strerror}") from exc
    if not data:
        raise IndexFileError(f"{path}: index file is empty")
    if expected_checksum is not None and checksum_bytes(data) != expected_checksum:
        raise IndexFileError(f"{path}: checksum does not match the database record")
    return VectorIndex.from_bytes(data)
