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
from typing import Any

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


class WriterLock:
    """``flock``-based exclusive lock; re-entrant within one object.

    The lock dies with its process, so a writer killed with SIGKILL never
    leaves a stale lock behind.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0, poll: float = 0.05):
        self.path = Path(path)
        self.timeout = timeout
        self.poll = poll
        self._fd: int | None = None
        self._depth = 0
        self.on_acquire: Callable[[], None] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid else ""

    def try_acquire(self) -> bool:
        """Take the lock if it is free right now; never waits."""
        try:
            self.acquire(timeout=0.0)
        except LockTimeoutError:
            return False
        return True

    def acquire(self, timeout: float | None = None) -> None:
        if self._fd is not None:
            self._depth += 1
            return
        timeout = self.timeout if timeout is None else timeout
        ensure_writable(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeoutError(
                        f"another ingest or admin command is running on {self.path.parent}"
                        f"{self._holder()}; waited {timeout:g} s for it to finish"
                    ) from None
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        self._depth = 1
        _acquired(self)

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class DatabaseWriterLock:
    """The writer lock of a store on PostgreSQL: a session-level advisory lock held on one
    connection, so writers on every host that shares the database take turns. Same
    interface as :class:`WriterLock`; ``folder`` (the data folder whose index file the
    writer updates) must be writable."""

    def __init__(self, db: Any, folder: str | Path, timeout: float = 30.0, poll: float = 0.1):
        self.db = db
        self.folder = Path(folder)
        self.timeout = timeout
        self.poll = poll
        self._conn = None
        self._key: int | None = None
        self._depth = 0
        self.on_acquire: Callable[[], None] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        try:
            self.acquire(timeout=0.0)
        except LockTimeoutError:
            return False
        return True

    def acquire(self, timeout: float | None = None) -> None:
        from storage.locks import advisory_holder, lock_key, try_advisory_lock

        if self._conn is not None:
            self._depth += 1
            return
        timeout = self.timeout if timeout is None else timeout
        ensure_writable(self.folder)
        conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            key = lock_key(conn, "clusterer-writer")
            deadline = time.monotonic() + timeout
            while not try_advisory_lock(conn, key):
                if time.monotonic() >= deadline:
                    holder = advisory_holder(conn, key)
                    raise LockTimeoutError(
                        f"another writer (on this or another host) holds the lock of the store in "
                        f"{self.db.describe()}{f' ({holder})' if holder else ''}; waited {timeout:g} s for it to finish"
                    )
                time.sleep(self.poll)
        except BaseException:
            conn.close()
            raise
        self._conn, self._key, self._depth = conn, key, 1
        _acquired(self)

    def release(self) -> None:
        from storage.locks import advisory_unlock

        if self._conn is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        conn, self._conn = self._conn, None
        try:
            advisory_unlock(conn, self._key)
        finally:
            conn.close()

    def __enter__(self) -> DatabaseWriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
