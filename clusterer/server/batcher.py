"""Embedding for concurrent readers: texts that wait together are encoded in one call.

One model call for eight queries costs little more than one for a single query, so under
concurrent load each request waits at most for the call in flight plus its own batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np


class EncodeBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 64):
        self._encode = encode
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[list[str], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="clusterer-encoder", daemon=True)
        self._thread.start()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        future: Future = Future()
        self._queue.put((list(texts), future))
        return future.result()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            waiting, total, stop = [first], len(first[0]), False
            while total < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                waiting.append(nxt)
                total += len(nxt[0])
            try:
                vectors = self._encode([t for texts, _ in waiting for t in texts])
            except BaseException as exc:  # noqa: BLE001 (handed to every waiting caller)
                for _, fut in waiting:
                    fut.set_exception(exc)
            else:
                start = 0
                for texts, fut in waiting:
                    fut.set_result(vectors[start : start + len(texts)])
                    start += len(texts)
            if stop:
                return

    def close(self) -> None:
        self._queue.put(None)
