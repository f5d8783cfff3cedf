"""One writer at a time across processes: an advisory lock on a file in the data folder."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from indexer.errors import IndexerError


class LockTimeoutError(IndexerError):
    """Another process held the writer lock for longer than we were willing to wait."""


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
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

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
