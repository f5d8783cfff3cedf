"""One PostgreSQL database, several data folders (hosts): each folder keeps its own FAISS
file and watermark, sequence numbers come from the database, the writer lock is a database
advisory lock. Two folders writing in turn and at once lose and duplicate nothing, both
indexes verify, and neither rebuilds its index on every open."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from indexer.sentence_store import SentenceStore
from storage.models import IndexCacheState, Sentence

ROOT = Path(__file__).resolve().parents[1]

WRITER = (
    "import sys\n"
    "import indexer.sentence_store as m\n"
    "from tests.fakes import FakeEncoder\n"
    "m.make_encoder = lambda *a, **k: FakeEncoder()\n"
    "store = m.SentenceStore(sys.argv[1], db_url=sys.argv[2], batch_size=25, lock_timeout=120)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "for path in sys.argv[3:]:\n"
    "    store.ingest_file(path)\n"
    "store.close()\n"
)


def lines(start: int, stop: int) -> list[str]:
    return [f"shared database sentence {i} about topic {i % 13}" for i in range(start, stop)]


def write(path: Path, texts: list[str]) -> str:
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return str(path)


def check(store: SentenceStore, expected: set[str]) -> None:
    report = store.verify()
    assert report.ok, report.problems
    with store.db.read() as session:
        texts = list(session.scalars(select(Sentence.text)))
        seqs = list(session.scalars(select(Sentence.seq)))
        ids = set(session.scalars(select(Sentence.id)))
    assert len(texts) == len(set(texts)), "a sentence was stored twice"
    assert set(texts) == expected, "a sentence was lost"
    assert len(seqs) == len(set(seqs)), "two rows share a sequence number"
    index_ids = store.index.ids()
    assert len(index_ids) == len(np.unique(index_ids)) and set(index_ids.tolist()) == ids


def test_two_data_folders_writing_in_turn(tmp_path, pg_url):
    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    expected: set[str] = set()
    built: set[Path] = set()  # a folder's first open builds its cache; later ones never rebuild
    for round_no in range(3):
        for folder, (start, stop) in (
            (a_dir, (round_no * 40, round_no * 40 + 50)),
            (b_dir, (round_no * 40 + 30, round_no * 40 + 80)),
        ):
            with SentenceStore(folder, db_url=pg_url) as store:
                report = store.ingest(lines(start, stop))
                expected |= set(lines(start, stop))
                assert report.added + report.duplicates == stop - start
            for other in (a_dir, b_dir):
                with SentenceStore(other, db_url=pg_url) as store:
                    if other in built:
                        assert store.cache.last_load in ("loaded", "replayed"), "the index was rebuilt"
                    built.add(other)
                    check(store, expected)
    # the other folder's writes are replayed, never rebuilt; with nothing new, the file is
    # loaded as it is and not rewritten
    for folder in (a_dir, b_dir):
        before = (folder / "index.faiss").stat().st_mtime_ns
        with SentenceStore(folder, db_url=pg_url) as store:
            assert store.cache.last_load == "loaded"
            assert store.verify().ok
        assert (folder / "index.faiss").stat().st_mtime_ns == before
    with SentenceStore(a_dir, db_url=pg_url) as store:
        with store.db.read() as session:
            folders = list(session.scalars(select(IndexCacheState.folder_id)))
        assert len(folders) == 2 and len(set(folders)) == 2


def test_two_data_folders_writing_at_once_in_two_processes(tmp_path, pg_url):
    a_dir, b_dir = tmp_path / "host-a", tmp_path / "host-b"
    a_files = [write(tmp_path / f"a{i}.txt", lines(i * 100, i * 100 + 150)) for i in range(3)]
    b_files = [write(tmp_path / f"b{i}.txt", lines(i * 100 + 50, i * 100 + 200)) for i in range(3)]
    expected = {t for i in range(3) for t in lines(i * 100, i * 100 + 150) + lines(i * 100 + 50, i * 100 + 200)}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), pg_url, *files],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, files in ((a_dir, a_files), (b_dir, b_files))
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:  # start both at once
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for folder in (a_dir, b_dir):
        with SentenceStore(folder, db_url=pg_url) as store:
            assert store.cache.last_load in ("loaded", "replayed")
            check(store, expected)
        with SentenceStore(folder, db_url=pg_url) as store:
            assert store.cache.last_load == "loaded"
    with SentenceStore(a_dir, db_url=pg_url, recover=False) as store, store.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Sentence)) == len(expected)


def test_postgresql_writer_lock_is_shared_across_folders_but_not_across_schemas(tmp_path, pg_url):
    from indexer.lock import DatabaseWriterLock, LockTimeoutError

    a = SentenceStore(tmp_path / "a", db_url=pg_url, lock_timeout=0.3)
    b = SentenceStore(tmp_path / "b", db_url=pg_url, lock_timeout=0.3)
    try:
        assert isinstance(a.lock, DatabaseWriterLock)
        with a.lock, pytest.raises(LockTimeoutError, match="another writer"):
            b.ingest(["blocked while the other folder writes"])
        assert b.ingest(["lands once the lock is free"]).added == 1
    finally:
        a.close()
        b.close()
