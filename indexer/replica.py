"""Which index a lookup searches, and the compact copy that makes lookups fast above the exact range.

Off until :meth:`LookupCopy.enable` (a one-off command gains nothing from a copy it would build
and throw away; a server does). Then lookups of an index holding more than ``above`` vectors
search its :class:`indexer.coded_copy.CodedCopy` once that is built, and the index itself until
then and below that size.

The copy follows its source: once attached (:meth:`VectorIndex.attach_follower`), every ``add``
and ``remove`` of the source is applied to it too. It is built in a background thread from
copies of the source's vectors taken under the read side of the store's lock (an exact index at
once; an IVF index a few cells at a time, so writers are never held up for long), starting a
journal of the source's changes; the journal is replayed and the copy attached under the write
side. Building takes seconds (16 s for a million vectors on one core); lookups meanwhile search
the source.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator

import numpy as np

from indexer.coded_copy import TRAIN_MAX, codable, copy_of_exact, copy_of_ivf
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

EXACT_MAX = 20_000
"""Above this many vectors lookups search a copy (below, a flat scan of a query costs about what
the copy's cell comparison and re-ranking do)."""
LISTS_PER_CHUNK = 64


class _Swapped(Exception):
    """The cache replaced the index being copied."""


class LookupCopy:
    """See the module: ``index()`` is what a lookup searches; ``status()`` says which that is."""

    def __init__(self, cache):
        self.cache = cache
        self.above: int | None = None
        self._lock = threading.Lock()
        self._building: weakref.ref[VectorIndex] | None = None  # weak: a swapped-out index is freed
        self._thread: threading.Thread | None = None

    def enable(self, above: int | None = EXACT_MAX) -> None:
        """Copy indexes of more than ``above`` vectors (None: never)."""
        self.above = above

    def index(self):
        index = self.cache.index
        if index.follower is not None:
            return index.follower
        if self.above is not None and index.ntotal > self.above and codable(index.dimension):
            self._start(index)
        return index

    def status(self) -> str:
        """ "copy" (lookups search the copy), "building" (its copy is being built: the index
        meanwhile) or "source" (the index itself: off, small, or not loaded yet)."""
        index = self.cache.current
        if index is not None and index.follower is not None:
            return "copy"
        thread = self._thread
        building = self._building() if self._building is not None else None
        if index is not None and building is index and thread is not None and thread.is_alive():
            return "building"
        return "source"

    def _start(self, index: VectorIndex) -> None:
        with self._lock:
            if self._building is not None and self._building() is index:
                return
            self._building = weakref.ref(index)
            self._thread = threading.Thread(target=self.build, args=(index,), name="clusterer-lookup-copy", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a build in progress; True when none is left running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def build(self, index: VectorIndex) -> None:
        """Build the copy of ``index`` and attach it, unless the cache swapped ``index`` out meanwhile."""
        import faiss

        faiss.omp_set_num_threads(1)  # this thread only: the copy is built beside the service, not instead of it
        rw = self.cache.rw
        try:
            copy = self._copy_exact(index) if index.is_exact else self._copy_ivf(index)
            with rw.write():
                if self.cache.current is not index:
                    raise _Swapped
                index.attach_follower(copy)
        except _Swapped:
            index.drop_follower()
        except Exception as exc:  # noqa: BLE001 (lookups go on searching the index itself)
            log.warning("building the lookup copy of the index failed: %s", exc)
            with rw.write():
                index.drop_follower()

    def _copy_exact(self, index: VectorIndex):
        with self.cache.rw.read():
            if self.cache.current is not index:
                raise _Swapped
            ids, vectors = index.snapshot()
        return copy_of_exact(index, ids, vectors)

    def _copy_ivf(self, index: VectorIndex):
        nlist = index.index.nlist
        with self.cache.rw.read():
            if self.cache.current is not index:
                raise _Swapped
            index.start_journal()
            per_list = max(1, TRAIN_MAX // nlist)
            sample = np.vstack([index.list_vectors(first, first + 1, per_list)[1] for first in range(nlist)])

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for first in range(0, nlist, LISTS_PER_CHUNK):
                with self.cache.rw.read():
                    if self.cache.current is not index:
                        raise _Swapped
                    part = index.list_vectors(first, first + LISTS_PER_CHUNK)
                yield part

        return copy_of_ivf(index, sample, chunks())
