"""kill -9 at random instants of an ingest, a rebuild and a delete loses nothing committed
and never leaves the index and the database disagreeing after the next open."""

from __future__ import annotations

import os
import random
import select as select_module
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from indexer.normalize import normalize_text
from indexer.sentence_store import SentenceStore
from storage.models import Sentence

pytestmark = pytest.mark.slow  # SIGKILLs real writer processes for tens of seconds

ROOT = Path(__file__).resolve().parents[1]
ROUND_LINES = 4_000
INGEST_KILLS = 20
SEED = 20240611


def _round_lines(round_no: int) -> list[str]:
    """ROUND_LINES lines for one round: new sentences (so every round has real work to do),
    exact and whitespace duplicates within the round, lines of the previous round, empty lines."""
    lines: list[str] = []
    for i in range(ROUND_LINES):
        if i % 97 == 96:
            lines.append("   ")
        elif i % 50 == 49:
            lines.append("  " + lines[i - 31].replace(" ", "   ") + " ")
        elif i % 89 == 88 and round_no > 0:
            lines.append(_sentence(round_no - 1, i))
        else:
            lines.append(_sentence(round_no, i))
    return lines


def _sentence(round_no: int, i: int) -> str:
    return f"alpha{i % 60} beta{(i // 60) % 60} gamma{i // 3600} delta{i % 7} round{round_no}"


def _write_input(path: Path, lines: list[str]) -> list[str]:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [normalize_text(ln) for ln in lines if normalize_text(ln)]


class Worker:
    """The fork server of tests/crash_worker.py and a line reader on its stdout."""

    def __init__(self, log: Path):
        self.log = open(log, "w")  # noqa: SIM115 (the worker's stderr for its whole life; closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_worker", "serve"],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            bufsize=0,
        )
        self._buf = b""
        assert self.readline(timeout=60) == "serving", self.errors()

    def errors(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def readline(self, timeout: float | None = None) -> str | None:
        """The next line, or None if none is complete within ``timeout`` seconds."""
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select_module.select([fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"crash worker server died: {self.errors()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def run(self, mode: str, data: Path, input_file: str, progress: Path, kill_after: float | None) -> bool:
        """Run one child; SIGKILL it ``kill_after`` s after it is ready. True if it was killed."""
        self.proc.stdin.write(f"{mode} {data} {input_file} {progress}\n".encode())
        line = self.readline(timeout=60)
        assert line and line.startswith("ready "), f"child failed to start: {line!r} {self.errors()}"
        pid = int(line.split()[1])
        ready = time.monotonic()
        line = self.readline(timeout=kill_after)
        if line is None:  # still working: kill it now
            os.kill(pid, signal.SIGKILL)
        while line is None or not line.startswith("exit "):
            line = self.readline(timeout=120)
            assert line is not None, "child did not end"
        self.busy_seconds = time.monotonic() - ready
        _, got_pid, code = line.split()
        assert int(got_pid) == pid
        assert int(code) in (0, -signal.SIGKILL), f"child failed by itself ({code}): {self.errors()}"
        return int(code) == -signal.SIGKILL

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def _progress_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    # a line cut by the kill has no newline yet: ignore it
    return [ln for ln in path.read_text().split("\n")[:-1]]


def _check_store(data: Path) -> SentenceStore:
    """Open with recovery and check the invariants; returns the open store."""
    store = SentenceStore(data, recover=True)
    report = store.verify()
    assert report.ok, report.problems
    ids = store.index.ids()
    assert len(np.unique(ids)) == len(ids), "duplicate ids in the index"
    n = store.count()
    assert store.index.ntotal == n == report.indexed
    with store.db.read() as session:
        assert set(session.scalars(select(Sentence.id))) == set(ids.tolist())
    return store


def _stored_texts(store: SentenceStore) -> set[str]:
    with store.db.read() as session:
        return set(session.scalars(select(Sentence.text)))


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path / "worker.log")
    yield w
    if w.proc.poll() is None:
        w.close()


def test_kill_minus_nine_during_ingest_rebuild_and_delete(tmp_path, worker):
    started = time.monotonic()
    rng = random.Random(SEED)
    data = tmp_path / "data"

    # How long one round's ingest takes here, measured on a scratch store: every kill is drawn
    # within that span, so it lands while the worker is busy on a slow or a fast machine. A
    # round that ends before its kill shows a shorter span, which later kills use.
    calibration = _write_input(tmp_path / "calibrate.txt", _round_lines(INGEST_KILLS + 1))
    assert calibration
    assert not worker.run(
        "ingest",
        tmp_path / "scratch",
        str(tmp_path / "calibrate.txt"),
        tmp_path / "calibrate.progress",
        kill_after=None,
    )
    span = worker.busy_seconds

    kills = 0
    max_committed = 0
    every_record: list[str] = []
    for round_no in range(INGEST_KILLS):
        input_file = tmp_path / f"round-{round_no}.txt"
        records = _write_input(input_file, _round_lines(round_no))
        every_record += records
        assert len(set(records)) < len(records)  # the round really has duplicates
        progress = tmp_path / f"ingest-{round_no}.progress"
        killed = worker.run("ingest", data, str(input_file), progress, kill_after=rng.uniform(0.05, 0.85) * span)
        kills += killed
        if not killed:
            span = min(span, worker.busy_seconds)
        reported = _progress_lines(progress)
        committed = int(reported[-1]) if reported else 0
        max_committed = max(max_committed, committed)
        with _check_store(data) as store:
            texts = _stored_texts(store)
            # every record of a batch reported committed is in the database
            missing = [t for t in records[:committed] if t not in texts]
            assert not missing, f"round {round_no}: {len(missing)} committed sentences lost, e.g. {missing[0]!r}"
            assert len(texts) == store.count() <= len(set(every_record))
    assert kills >= INGEST_KILLS // 2, f"too few kills landed while the worker was busy ({kills} of {INGEST_KILLS})"
    assert max_committed > 0, "no kill landed after a committed batch"

    # running every round's input to completion gives exactly the unique lines
    everything = tmp_path / "everything.txt"
    everything.write_text("\n".join(every_record) + "\n", encoding="utf-8")
    unique = len(set(every_record))
    assert not worker.run("ingest", data, str(everything), tmp_path / "final.progress", kill_after=None)
    with _check_store(data) as store:
        assert store.count() == unique
        assert _stored_texts(store) == set(every_record)
        assert store.stats()["index"]["pending"] == 0

    # kills during rebuild_index
    for round_no in range(2):
        assert worker.run("rebuild", data, "-", tmp_path / f"rebuild-{round_no}.progress", rng.uniform(0.05, 0.6))
        with _check_store(data) as store:
            assert store.count() == unique

    # kills during delete
    deleted: set[int] = set()
    for round_no in range(2):
        progress = tmp_path / f"delete-{round_no}.progress"
        assert worker.run("delete", data, "-", progress, kill_after=rng.uniform(0.1, 0.8))
        for line in _progress_lines(progress):
            deleted.update(int(x) for x in line.split())
        with _check_store(data) as store:
            assert not store.get(sorted(deleted)), "a reported deletion came back"
            assert not deleted & set(store.index.ids().tolist())
            assert store.count() <= unique - len(deleted)
    assert deleted, "no delete finished before the kills"
    assert time.monotonic() - started < 300
