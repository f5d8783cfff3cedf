"""One writer at a time across processes: an advisory lock on a file in the data folder
(SQLite), or a database advisory lock (PostgreSQL, shared by every host using the database)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from indexer.errors import IndexerError, ReadOnlyStoreError


def _acquired(lock: Any) -> None:
    """Run the lock's ``on_acquire`` hook; if it fails, give the lock back and re-raise."""
    if lock.on_acquire is None:
        return
    try:
        lock.on_acquire()
    except BaseException:
        lock.release()
        raise


class LockTimeoutError(IndexerError):
    """Another process held the writer lock for longer than we were willing to wait."""


_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def ensure_writable(folder: Path) -> None:
    """Raise ReadOnlyStoreError unless a file can be created in ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe.{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in _READ_ONLY_ERRNOS:
            raise ReadOnlyStoreError(
                f"the data folder {folder} is not writable ({exc.strerror}): reads work, writes need write access"
            ) from None
        raise


_L = TypeVar("_L", bound="_ReentrantLock")


class _ReentrantLock:
    """What both writer locks share: re-entrant acquire/release within one object, waiting
    with a deadline, and the ``on_acquire`` hook. Subclasses take and drop the real lock."""

    def __init__(self, timeout: float, poll: float):
        self.timeout = timeout
        self.poll = poll
        self._depth = 0
        self.on_acquire: Callable[[], None] | None = None

    @property
    def held(self) -> bool:
        raise NotImplementedError

    def _take(self, timeout: float) -> None:
        raise NotImplementedError

    def _drop(self) -> None:
        raise NotImplementedError

    def _wait(self, attempt: Callable[[], bool], timeout: float, busy: Callable[[], str]) -> None:
        """Call ``attempt`` every ``poll`` seconds until it succeeds; past ``timeout`` raise
        LockTimeoutError saying ``busy()``."""
        deadline = time.monotonic() + timeout
        while not attempt():
            if time.monotonic() >= deadline:
                raise LockTimeoutError(f"{busy()}; waited {timeout:g} s for it to finish")
            time.sleep(self.poll)

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now; never waits."""
        try:
            self.acquire(timeout=0.0)
        except LockTimeoutError:
            return False
        return True

    def acquire(self, timeout: float | None = None) -> None:
        if self.held:
            self._depth += 1
            return
        self._take(self.timeout if timeout is None else timeout)
        self._depth = 1
        _acquired(self)

    def release(self) -> None:
        if not self.held:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        self._drop()

    def __enter__(self: _L) -> _L:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class WriterLock(_ReentrantLock):
    """``flock``-based exclusive lock; re-entrant within one object.

    The lock dies with its process, so a writer killed with SIGKILL never
    leaves a stale lock behind.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0, poll: float = 0.1):
        super().__init__(timeout, poll)
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid else ""

    def _take(self, timeout: float) -> None:
        ensure_writable(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

        def attempt() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            self._wait(
                attempt,
                timeout,
                lambda: f"another ingest or admin command is running on {self.path.parent}{self._holder()}",
            )
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def _drop(self) -> None:
        assert self._fd is not None
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class DatabaseWriterLock(_ReentrantLock):
    """The writer lock of a store on PostgreSQL: a session-level advisory lock held on one
    connection, so writers on every host that shares the database take turns. Same
    interface as :class:`WriterLock`; ``folder`` (the data folder whose index file the
    writer updates) must be writable."""

    def __init__(self, db: Any, folder: str | Path, timeout: float = 30.0, poll: float = 0.1):
        super().__init__(timeout, poll)
        self.db = db
        self.folder = Path(folder)
        self._conn: Any = None
        self._key: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def _take(self, timeout: float) -> None:
        from storage.locks import advisory_holder, lock_key, try_advisory_lock

        ensure_writable(self.folder)
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

        def busy() -> str:
            holder = advisory_holder(conn, key)
            return (
                f"another writer (on this or another host) holds the lock of the store in "
                f"{self.db.describe()}{f' ({holder})' if holder else ''}"
            )

        try:
            key = lock_key(conn, "clusterer-writer")
            self._wait(lambda: try_advisory_lock(conn, key), timeout, busy)
        except BaseException:
            conn.close()
            raise
        self._conn, self._key = conn, key

    def _drop(self) -> None:
        from storage.locks import advisory_unlock

        conn, key, self._conn = self._conn, self._key, None
        assert key is not None
        try:
            advisory_unlock(conn, key)
        finally:
            conn.close()
