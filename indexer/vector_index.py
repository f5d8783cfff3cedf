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

from indexer import batch_search
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

    def _flat_ip(self) -> bool:
        faiss = _faiss()
        if not isinstance(self.index, faiss.IndexIDMap):
            return False
        inner = faiss.downcast_index(self.index.index)
        return isinstance(inner, faiss.IndexFlat) and inner.metric_type == faiss.METRIC_INNER_PRODUCT

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
        if self._flat_ip():
            n = self.ntotal
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            flat = faiss.rev_swig_ptr(faiss.downcast_index(self.index.index).get_xb(), n * self.dimension)
            vectors = np.array(flat, dtype=np.float32).reshape(n, self.dimension)
        else:
            ids, vectors = self.vectors()
        self.start_journal()
        return ids, vectors

    def list_vectors(self, first: int, last: int, per_list: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) copies of the inverted lists ``first`` to ``last - 1`` of an IVF index
        (at most ``per_list`` of each)."""
        lists = batch_search.listed(self.index, first, last)
        parts = [(ids[:per_list].copy(), codes[:per_list].copy()) for _, _, codes, ids in lists]
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
        faiss = _faiss()
        if len(queries) >= batch_search.IVF_MIN_QUERIES and isinstance(self.index, faiss.IndexIVFFlat):
            return SearchResult(*batch_search.ivf_search(self.index, queries, k))
        if len(queries) >= batch_search.FLAT_MIN_QUERIES and self._flat_ip():
            return SearchResult(*batch_search.flat_search(self.index, queries, k))
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
        if len(queries) >= batch_search.RANGE_MIN_QUERIES and isinstance(self.index, _faiss().IndexIVFFlat):
            with batch_search.one_blas_thread():
                return batch_search.ivf_range_search(self.index, queries, np.float32(threshold))
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
