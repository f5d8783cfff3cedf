"""An approximate copy of an exact index, for searches of a few queries at a time.

An exact (flat) index answers a query by reading every stored vector: at 100,000 vectors of
384 dimensions that is 150 MB of memory traffic, 10-30 ms a query on a small CPU, and FAISS
scans query by query below 20 queries, so a batch of 8 lookups pays it 8 times. An IVF copy
compares each query with the cell centroids and then with the vectors of the nearest tenth of
the cells only (:data:`PROBED_SHARE`). The similarities it returns are exact inner products;
what it may lose is a true neighbour in a cell it did not probe (about 3 % of the 10 nearest on
real sentence embeddings; bench/service.py measures how often a lookup's answer changes).

The copy follows its source: once attached (:meth:`VectorIndex.attach_follower`), every
``add`` and ``remove`` of the source is applied to it too. It is built from a snapshot of the
source outside any lock (training the cells takes seconds); what the source changed meanwhile is
journalled and replayed under the source's write lock when the copy is attached.
:class:`LookupCopy` decides when a copy is worth building and which index a lookup searches.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

EXACT_MAX = 20_000
"""Above this many vectors an exact index is copied for lookups (below, a flat search of a query
costs about as much as the IVF copy's centroid comparison)."""
PROBED_SHARE = 0.1
"""The share of the cells a query probes: recall depends on it more than on the number of cells
(measured on 50,000 real sentence embeddings: 0.86 of the 10 nearest at 2 %, 0.97 at 10 %,
0.99 at 30 %), and a tenth of the vectors is still a tenth of a flat scan's memory traffic."""
TRAIN_PER_LIST = 40
"""Training points per cell (FAISS warns below 39)."""
TRAIN_ITERATIONS = 10


def replica_nlist(n: int) -> int:
    """Cells of a copy of ``n`` vectors: about 2 sqrt(n), so that a cell holds about sqrt(n) / 2
    vectors and the centroid comparison and the cell scans cost about the same."""
    return max(16, min(16384, int(2 * math.sqrt(max(n, 1)))))


def build_replica(ids: np.ndarray, vectors: np.ndarray, *, probed: float = PROBED_SHARE, seed: int = 0) -> VectorIndex:
    """An IVF copy of the ``(ids, vectors)`` snapshot of an exact index."""
    import faiss

    started = time.perf_counter()
    n, d = vectors.shape
    nlist = max(1, min(replica_nlist(n), n // TRAIN_PER_LIST))
    sample = vectors
    if n > nlist * TRAIN_PER_LIST:
        pick = np.random.default_rng(seed).choice(n, nlist * TRAIN_PER_LIST, replace=False)
        sample = vectors[np.sort(pick)]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = TRAIN_ITERATIONS
    index.cp.seed = seed
    index.cp.max_points_per_centroid = TRAIN_PER_LIST
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = max(1, min(nlist, math.ceil(probed * nlist)))
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
    replica = VectorIndex(index, d)
    replica.add(ids, vectors)
    log.info("built an IVF copy of %d vectors (nlist %d) in %.1f s", n, nlist, time.perf_counter() - started)
    return replica


class LookupCopy:
    """Decides which index a lookup searches, and keeps the IVF copy of an exact one.

    Off until :meth:`enable` (a one-off command gains nothing from a copy it would build and
    throw away; a server does). Then :meth:`index` returns the copy of the cache's current index
    once it is built, and starts building it (in a background thread, once per index object)
    when the index is exact and holds more than ``above`` vectors; until it is ready, and for
    small or already approximate (IVF) indexes, the cache's own index.
    """

    def __init__(self, cache):
        self.cache = cache
        self.above: int | None = None
        self._lock = threading.Lock()
        self._building: VectorIndex | None = None
        self._thread: threading.Thread | None = None

    def enable(self, above: int | None = EXACT_MAX) -> None:
        """Copy exact indexes of more than ``above`` vectors (None: never)."""
        self.above = above

    def index(self) -> VectorIndex:
        index = self.cache.index
        if index.follower is not None:
            return index.follower
        if self.above is not None and index.ntotal > self.above and index.is_exact:
            self._start(index)
        return index

    def _start(self, index: VectorIndex) -> None:
        with self._lock:
            if self._building is index:
                return
            self._building = index
            self._thread = threading.Thread(target=self.build, args=(index,), name="clusterer-lookup-copy", daemon=True)
            self._thread.start()

    def status(self) -> str:
        """What lookups search: "exact" (the index itself: off, small or being loaded), "building"
        (its copy is being built; the index itself meanwhile), "copy" or "approximate" (an IVF
        index too large to copy)."""
        index = self.cache.current
        if index is None:
            return "exact"
        if index.follower is not None:
            return "copy"
        if not index.is_exact:
            return "approximate"
        thread = self._thread
        if self._building is index and thread is not None and thread.is_alive():
            return "building"
        return "exact"

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
            with rw.read():
                if self.cache.current is not index:
                    return
                ids, vectors = index.snapshot()
            copy = build_replica(ids, vectors)
            del ids, vectors
            with rw.write():
                if self.cache.current is index:
                    index.attach_follower(copy)
                else:
                    index.drop_follower()
        except Exception as exc:  # noqa: BLE001 (lookups go on searching the exact index)
            log.warning("building the lookup copy of the index failed: %s", exc)
            with rw.write():
                index.drop_follower()
