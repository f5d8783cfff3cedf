"""The one writer of the HTTP service: a thread draining a bounded queue of writes.

Every change (a batch of sentences, a deletion, a clustering run) is a job on the queue; the
thread runs them one at a time through the store, which takes the data folder's writer lock
for each, so a CLI ingest on the same folder waits its turn and both land. Batches of
sentences waiting together are stored in one call (coalesced) and each caller gets its own
answer. When the queue is full, :meth:`Writer.submit` raises :class:`QueueFull` at once.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from clusterer.server.write_encoder import one_core
from clusterer.service.batches import Batch, ingest_batches


class QueueFull(Exception):
    """The writer queue holds as many jobs as it may."""


class ShuttingDown(Exception):
    """The service is stopping and takes no more writes."""


@dataclass
class Job:
    """A write the caller may follow: state, progress messages, result or error."""

    id: int
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    progress: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "state": self.state,
            "progress": list(self.progress),
            "result": self.result,
            "error": self.error,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass
class _Item:
    kind: str
    payload: Any
    future: Future
    job: Job | None = None


class Writer:
    JOBS_KEPT = 200

    def __init__(
        self, store, *, maxsize: int = 64, coalesce: int = 4096, on_done: Callable[[str, float], None] | None = None
    ):
        self.store = store
        self.coalesce = coalesce
        self.on_done = on_done or (lambda kind, seconds: None)
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize)
        self._jobs: dict[int, Job] = {}
        self._job_ids = itertools.count(1)
        self._jobs_lock = threading.Lock()
        self._stopping = threading.Event()
        self._pending: _Item | None = None
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name="clusterer-writer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (1 if self.busy else 0)

    def _put(self, item: _Item) -> Future:
        if self._stopping.is_set():
            raise ShuttingDown("the service is shutting down")
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise QueueFull(f"the writer queue is full ({self._queue.maxsize} writes waiting)") from None
        return item.future

    def ingest(self, batch: Batch) -> Future:
        return self._put(_Item("ingest", batch, Future()))

    def delete(self, ids: list[int]) -> Future:
        return self._put(_Item("delete", ids, Future()))

    def call(self, work: Callable[[], Any], kind: str = "edit") -> Future:
        """Run ``work`` (a write through the store, e.g. a curation edit) on the writer thread."""
        return self._put(_Item(kind, work, Future()))

    def cluster(self, method: str | None, params: dict[str, Any], force: bool = False) -> Job:
        with self._jobs_lock:
            job = Job(
                next(self._job_ids), "cluster", {"method": method, **params, **({"force": True} if force else {})}
            )
            self._jobs[job.id] = job
            for old in sorted(self._jobs)[: max(0, len(self._jobs) - self.JOBS_KEPT)]:
                if self._jobs[old].finished_at is not None:
                    del self._jobs[old]
        try:
            self._put(_Item("cluster", (method, params, force), Future(), job))
        except Exception:
            with self._jobs_lock:
                del self._jobs[job.id]
            raise
        return job

    def job(self, job_id: int) -> Job | None:
        with self._jobs_lock:
            return self._jobs.get(job_id)

    # -- the thread ----------------------------------------------------------------

    def _next(self) -> _Item:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        return self._queue.get()

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item.kind == "stop":
                return
            self.busy = True
            started = time.perf_counter()
            try:
                if item.kind == "ingest":
                    self._ingest(item)
                elif item.kind == "delete":
                    self._run(item, partial(self.store.delete, item.payload))
                elif item.job is None and callable(item.payload):
                    self._run(item, item.payload)
                else:
                    self._cluster(item)
            finally:
                self.busy = False
                self.on_done(item.kind, time.perf_counter() - started)

    def _ingest(self, first: _Item) -> None:
        items, total = [first], len(first.payload.texts)
        while total < self.coalesce:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt.kind != "ingest" or total + len(nxt.payload.texts) > self.coalesce:
                self._pending = nxt
                break
            items.append(nxt)
            total += len(nxt.payload.texts)
        try:
            with one_core():
                answers = ingest_batches(self.store, [i.payload for i in items])
        except BaseException as exc:  # noqa: BLE001 (handed to every waiting caller)
            for i in items:
                i.future.set_exception(exc)
            return
        for i, answer in zip(items, answers):
            i.future.set_result(answer)

    @staticmethod
    def _run(item: _Item, work: Callable[[], Any]) -> None:
        try:
            item.future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            item.future.set_exception(exc)

    def _cluster(self, item: _Item) -> None:
        job = item.job
        assert job is not None, "a clustering item always carries its job"
        method, params, force = item.payload
        job.state, job.started_at = "running", time.time()

        def say(message: str) -> None:
            job.progress.append(message)

        try:
            args = {"force": force, "progress": say, **params}
            run = self.store.cluster(method, **args) if method else self.store.cluster(**args)
            top = self.store.clusters(run.id)[:10]
            job.result = {"run": run.to_dict(), "top_clusters": [c.to_dict() for c in top]}
            job.state = "done"
            item.future.set_result(job.result)
        except BaseException as exc:  # noqa: BLE001 (recorded in the job)
            job.state, job.error, job.error_type = (
                "failed",
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                type(exc).__name__,
            )
            item.future.set_exception(exc)
        finally:
            job.finished_at = time.time()

    def stop(self, timeout: float = 30.0) -> bool:
        """Refuse new writes, fail those still queued, let the one in flight finish; True if it did."""
        self._stopping.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item.kind != "stop":
                if item.job is not None:
                    item.job.state, item.job.error = "cancelled", "the service shut down before the job started"
                item.future.set_exception(ShuttingDown("the service shut down before this write started"))
        self._queue.put(_Item("stop", None, Future()))
        self._thread.join(timeout)
        return not self._thread.is_alive()
