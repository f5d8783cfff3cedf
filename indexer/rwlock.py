"""A readers-writer lock for threads sharing one store object.

Any number of threads may search the in-memory index at once; a thread that changes it
(adding a committed batch, replaying another process's rows, swapping in a rebuilt index)
waits until the readers in flight are done and keeps new readers out until it is. Waiting
writers go first, so a stream of readers cannot starve them. The thread holding the write
side may take either side again; a thread holding the read side may take it again, but
may not upgrade to the write side (that would deadlock two upgrading readers).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._write_depth = 0
        self._writers_waiting = 0
        self._local = threading.local()

    def _read_depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        me = threading.get_ident()
        depth = self._read_depth()
        if self._writer == me or depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._writer == me:
            self._write_depth += 1
            try:
                yield
            finally:
                self._write_depth -= 1
            return
        if self._read_depth():
            raise RuntimeError("a thread holding the read lock cannot take the write lock")
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = me
            self._write_depth = 1
        try:
            yield
        finally:
            with self._cond:
                self._writer = None
                self._write_depth = 0
                self._cond.notify_all()
