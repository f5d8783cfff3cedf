"""How the service's writes use the model without slowing its readers.

A batch posted to ``POST /sentences`` must be embedded too, and on a small machine the model is
most of the CPU a lookup needs: a write embedding 100 texts on every core for half a second
doubles the readers' tail latency meanwhile. :class:`BackgroundEncoder` stands in for the
store's encoder in the writer's hands. It embeds each write's texts on a thread of its own whose
operating-system priority is lowered (``nice``, Linux), with a model session of one thread, so
a write takes at most one core and only the CPU the lookups leave idle; when no lookups run, the
write still proceeds at that one core's full speed. Lookups call the model directly
(:class:`clusterer.server.batcher.LookupPipeline`), as does anything on that thread.

The lowered priority is confined to that thread, which holds no lock and holds the GIL only to
tokenise and copy arrays: a thread that waited for it behind busier ones cannot hold up a reader.
The rest of a write (its neighbour search, its index and database work) runs on the writer
thread at the usual priority but on one core (:func:`one_core`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WRITE_NICE = 10
"""How much lower the writes' embedding thread runs: at 10 the scheduler gives it about a tenth
of a core the readers want (19 would starve a write for as long as readers keep every core busy)."""


def lower_priority(nice: int) -> bool:
    """Lower the calling thread's CPU priority by ``nice`` (Linux schedules threads one by one;
    elsewhere this would renice the whole process, so nothing is done). True when it was done."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as exc:
        log.info("could not lower the priority of the write embedding thread: %s", exc)
        return False
    return True


class BackgroundEncoder:
    """The store's encoder for writes: ``encode`` runs on a low-priority thread with ``model``
    (a one-thread session of the same model, or the encoder itself). Everything else is the
    wrapped encoder's."""

    def __init__(self, inner: Any, model: Any = None, *, nice: int = WRITE_NICE):
        self.inner = inner
        self.model = model if model is not None else inner
        self.nice = nice
        self.lowered = False
        self._jobs: queue.Queue[tuple[list[str], bool, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="clusterer-write-embed", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            return self.model.encode(list(texts), show_progress=show_progress)
        done: Future = Future()
        self._jobs.put((list(texts), show_progress, done))
        return done.result()

    def _loop(self) -> None:
        self.lowered = lower_priority(self.nice)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            texts, show_progress, done = job
            try:
                done.set_result(self.model.encode(texts, show_progress=show_progress))
            except BaseException as exc:  # noqa: BLE001 (raised in the writer that asked)
                done.set_exception(exc)

    def close(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """FAISS (OpenMP, this thread) and BLAS on one thread meanwhile: a write's searches and
    products then leave the other cores to the readers."""
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        faiss.omp_set_num_threads(before)
