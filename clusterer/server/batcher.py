"""Dynamic batching for concurrent readers, as inference servers do it.

A :class:`MicroBatcher` is a queue and one worker thread: the worker takes the first request
waiting, then every request that arrives within ``max_wait`` seconds of it (up to
``max_batch`` items), and answers them all with one call. Two of them in a row make the lookup
pipeline (:class:`LookupPipeline`): the first embeds every text waiting with one model call
(recent texts come from an LRU cache) and hands each request on to the second, which answers
the batch with one index search and one set of database reads (``Store.lookup_vectors``). A
request is one future from the first stage to the last, so the event loop is woken once per
lookup; the two stages overlap, since the model runs outside the GIL.

A failing batch is answered again item by item, so an error reaches only the caller it
belongs to.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import numpy as np

from clusterer.service.lru import LRU

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(Exception):
    """The batcher has stopped and takes no more requests."""


class BatcherFull(Exception):
    """As many requests wait as the batcher may hold."""


@dataclass
class _Request(Generic[T]):
    item: T
    size: int
    future: Future


_STOP: Any = object()


class MicroBatcher(Generic[T, R]):
    """``submit(item)`` returns a future answered by ``process([items...]) -> [results...]``.

    ``max_batch`` bounds the summed ``size`` of a batch (a single larger item still runs alone);
    ``max_wait`` is how long the worker waits after the first item for more (0: only those
    already waiting); ``max_queued`` bounds the requests waiting (:class:`BatcherFull` beyond).
    ``forward(item, result, future)``, when given, may take a result on to a next stage with
    the request's future and return True; the future is then that stage's to answer.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.002,
        max_queued: int = 4096,
        name: str = "clusterer-batcher",
        on_batch: Callable[[int], None] | None = None,
        forward: Callable[[T, R, Future], bool] | None = None,
    ):
        self._process = process
        self.forward = forward
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait))
        self.on_batch = on_batch or (lambda n: None)
        self._queue: queue.Queue[_Request[T]] = queue.Queue(max_queued)
        self._closed = threading.Event()
        self._held: _Request[T] | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, size: int = 1, future: Future | None = None) -> Future:
        """Queue ``item``; its answer is set on ``future`` (a new one by default), which is returned."""
        if self._closed.is_set():
            raise BatcherClosed("the service is shutting down")
        request = _Request(item, max(1, size), future or Future())
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise BatcherFull(f"{self._queue.maxsize} requests are waiting; try again shortly") from None
        return request.future

    def __call__(self, item: T, size: int = 1) -> R:
        """Submit and wait for the answer (from a thread that may block)."""
        return self.submit(item, size).result()

    def _take(self) -> list[_Request[T]] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first.item is _STOP:
            return None
        batch, total = [first], first.size
        deadline = time.monotonic() + self.max_wait
        while total < self.max_batch:
            try:
                left = deadline - time.monotonic()
                nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt.item is _STOP or total + nxt.size > self.max_batch:
                self._held = nxt  # the next batch starts with it (or stops there)
                break
            batch.append(nxt)
            total += nxt.size
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                break
            self.on_batch(len(batch))
            self._answer(batch)
        self._fail_waiting()

    def _answer(self, batch: list[_Request[T]]) -> None:
        try:
            results = list(self._process([r.item for r in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} answers")
        except BaseException as exc:  # noqa: BLE001 (handed to the caller it belongs to)
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                for r in batch:
                    self._answer([r])
            return
        for r, result in zip(batch, results):
            try:
                if self.forward is not None and self.forward(r.item, result, r.future):
                    continue
            except Exception as exc:  # noqa: BLE001 (the next stage refused it: the caller hears why)
                r.future.set_exception(exc)
                continue
            r.future.set_result(result)

    def _fail_waiting(self) -> None:
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                return
            if r.item is not _STOP:
                r.future.set_exception(BatcherClosed("the service shut down before this request ran"))

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new requests, answer those taken, fail those still waiting."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(_Request(_STOP, 1, Future()))
        self._thread.join(timeout)


class EmbeddingCache(LRU):
    """Recent texts' embeddings, least recently used dropped first (``size`` 0 keeps none).

    Thread-safe; the arrays handed out are read-only so no caller can change a cached one."""

    def __init__(self, size: int = 4096):
        super().__init__(size)

    def put(self, key, value) -> None:
        vector = np.array(value, dtype=np.float32)
        vector.flags.writeable = False
        super().put(key, vector)


class Embedder:
    """Embeds the texts of a batch of requests with one model call, through the cache."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], cache: EmbeddingCache):
        self.embed, self.cache = embed, cache

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[np.ndarray | None] = [self.cache.get(t) for t in texts]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = self.embed([texts[i] for i in missing])
            for i, vector in zip(missing, fresh):
                rows[i] = vector
                self.cache.put(texts[i], vector)
        return np.vstack(cast(list[np.ndarray], rows)).astype(np.float32, copy=False)

    def batch(self, requests: Sequence[tuple[list[str], Any]]) -> list[np.ndarray]:
        """The embeddings of each request's texts (``(texts, anything)`` pairs), all in one call;
        a bad text fails the batch, which :class:`MicroBatcher` then answers request by request."""
        vectors = self([t for texts, _ in requests for t in texts])
        out, start = [], 0
        for texts, _ in requests:
            out.append(vectors[start : start + len(texts)])
            start += len(texts)
        return out


class LookupPipeline:
    """``lookup(texts, members)``: the embedding stage, then the batched lookup stage, one future."""

    def __init__(
        self,
        embed: Callable[[list[str]], np.ndarray],
        lookup_vectors: Callable[..., list[dict[str, Any]]],
        *,
        max_batch: int = 32,
        max_wait: float = 0.002,
        cache_size: int = 4096,
        on_batch: Callable[[str, int], None] | None = None,
    ):
        self.cache = EmbeddingCache(cache_size)
        self.embedder = Embedder(embed, self.cache)
        self.lookup_vectors = lookup_vectors
        report = on_batch or (lambda stage, n: None)
        self.searcher: MicroBatcher[tuple[np.ndarray, int], list[dict[str, Any]]] = MicroBatcher(
            self._lookups,
            max_batch=max_batch,
            max_wait=max_wait,  # besides what arrived while the previous batch ran
            name="clusterer-lookup",
            on_batch=lambda n: report("lookup", n),
        )
        self.encoder: MicroBatcher[tuple[list[str], int | None], np.ndarray] = MicroBatcher(
            self.embedder.batch,
            max_batch=max_batch,
            max_wait=0.0,  # what waits while the previous batch ran is the batch: no timer
            name="clusterer-embed",
            on_batch=lambda n: report("embed", n),
            forward=self._to_search,
        )

    def _to_search(self, item: tuple[list[str], int | None], vectors: np.ndarray, future: Future) -> bool:
        members = item[1]
        if members is None:  # an embedding was asked for, not a lookup
            return False
        self.searcher.submit((vectors, members), len(vectors), future)
        return True

    def _lookups(self, requests: list[tuple[np.ndarray, int]]) -> list[list[dict[str, Any]]]:
        vectors = np.vstack([v for v, _ in requests])
        members = [m for v, m in requests for _ in range(len(v))]
        answers = self.lookup_vectors(vectors, members=members)
        out, start = [], 0
        for v, _ in requests:
            out.append(answers[start : start + len(v)])
            start += len(v)
        return out

    def embed(self, texts: list[str]) -> Future:
        """A future of the texts' embeddings."""
        return self.encoder.submit((list(texts), None), len(texts))

    def lookup(self, texts: list[str], members: int) -> Future:
        """A future of the lookups of ``texts`` (embedded, then searched with company)."""
        return self.encoder.submit((list(texts), int(members)), len(texts))

    def close(self) -> None:
        self.encoder.close()
        self.searcher.close()
