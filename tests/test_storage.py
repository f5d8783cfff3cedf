"""The storage layer on SQLite and PostgreSQL: schema, sentence queries, index state."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from storage import migrate
from storage import sentences as q
from storage.db import SQLITE_BUSY_TIMEOUT_MS, Database, sqlite_url
from storage.errors import DatabaseUnavailableError

DIM = 8


def _rows(rng, n, start=0, dim=DIM):
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    blobs = q.encode_embeddings(vectors)
    rows = [
        q.NewSentence(
            f"sentence {start + i}", f"hash{start + i:08d}", blobs[i], {"i": start + i}, "f.txt", start + i + 1
        )
        for i in range(n)
    ]
    return rows, vectors


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


def test_migrations_create_schema_and_are_idempotent(db_url):
    database = Database(db_url)
    database.migrate()
    database.migrate()  # a second run must be a no-op, not an error
    again = Database(db_url)
    again.migrate()
    tables = set(inspect(database.engine).get_table_names())
    assert {"sentences", "store_info", "index_state", "ingests", "runs", "clusters", "assignments"} <= tables
    with database.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    columns = {c["name"] for c in inspect(database.engine).get_columns("sentences")}
    assert {"id", "text", "text_hash", "metadata", "seq", "embedding", "source_file", "source_line"} <= columns
    database.dispose()
    again.dispose()


def test_insert_returns_ids_and_seqs_in_order(db):
    rng = np.random.default_rng(0)
    rows1, _ = _rows(rng, 5)
    rows2, _ = _rows(rng, 7, start=5)
    with db.write() as s:
        ids1, seqs1 = q.insert_sentences(s, rows1)
    with db.write() as s:
        ids2, seqs2 = q.insert_sentences(s, rows2)
    assert len(ids1) == 5 and len(ids2) == 7
    seqs = seqs1 + seqs2
    assert all(b > a for a, b in pairwise(seqs)), seqs
    assert len(set(ids1 + ids2)) == 12
    with db.read() as s:
        got = q.get_sentences(s, ids1 + ids2)
        assert q.max_seq(s) == seqs[-1]
        assert q.count_sentences(s) == 12
        assert q.count_up_to(s, seqs1[-1]) == 5
    # ids and seqs come back in the order of the rows given
    for row, i, seq in zip(rows1 + rows2, ids1 + ids2, seqs):
        assert got[i].text == row.text
        assert got[i].seq == seq
        assert got[i].meta == row.metadata
        assert got[i].source_line == row.source_line
    with db.write() as s:
        assert q.insert_sentences(s, []) == ([], [])


def test_unique_text_hash_enforced(db):
    rng = np.random.default_rng(1)
    rows, _ = _rows(rng, 2)
    with db.write() as s:
        q.insert_sentences(s, rows[:1])
    dup = q.NewSentence("other text", rows[0].text_hash, rows[1].embedding)
    with pytest.raises(IntegrityError), db.write() as s:
        q.insert_sentences(s, [dup])
    with db.read() as s:
        assert q.count_sentences(s) == 1
        assert q.existing_hashes(s, [rows[0].text_hash, rows[1].text_hash]) == {rows[0].text_hash}


def test_delete_sentences(db):
    rng = np.random.default_rng(2)
    rows, _ = _rows(rng, 6)
    with db.write() as s:
        ids, _ = q.insert_sentences(s, rows)
    with db.write() as s:
        removed = q.delete_sentences(s, [ids[4], ids[1], 999_999])
    assert removed == sorted([ids[1], ids[4]])
    with db.read() as s:
        assert q.count_sentences(s) == 4
        assert set(q.get_sentences(s, ids)) == set(ids) - {ids[1], ids[4]}
        assert q.all_ids(s).tolist() == sorted(set(ids) - {ids[1], ids[4]})
    with db.write() as s:
        assert q.delete_sentences(s, [ids[1]]) == []


def test_index_records_per_data_folder_and_deletion_counter(db):
    with db.read() as s:
        assert q.get_cache_state(s, "folder-a") is None
        assert q.deletion_count(s) == 0
    with db.write() as s:
        q.set_cache_state(s, "folder-a", watermark=42, checksum="abc123", ntotal=40, index_type="Flat", deletions=0)
        q.set_cache_state(s, "folder-b", watermark=7, checksum="fff", ntotal=7, index_type="Flat", deletions=0)
    with db.read() as s:
        a = q.get_cache_state(s, "folder-a")
        assert (a.watermark, a.checksum, a.ntotal, a.index_type, a.deletions) == (42, "abc123", 40, "Flat", 0)
        assert q.get_cache_state(s, "folder-b").watermark == 7
    with db.write() as s:
        assert q.mark_index_dirty(s) == 1
    with db.write() as s:
        q.set_cache_state(s, "folder-a", watermark=43, checksum="def", ntotal=41, index_type="Flat", deletions=1)
    with db.read() as s:
        assert q.get_cache_state(s, "folder-a").deletions == q.deletion_count(s) == 1
        assert q.get_cache_state(s, "folder-b").deletions == 0  # folder b's file is stale now


def test_sequence_numbers_come_from_the_database_counter(db):
    rng = np.random.default_rng(5)
    rows, _ = _rows(rng, 6)
    with db.write() as s:
        _, seqs = q.insert_sentences(s, rows[:3])
    with db.write() as s:
        q.delete_sentences(s, [i for i in q.all_ids(s).tolist()])
    with db.write() as s:
        _, more = q.insert_sentences(s, rows[3:])
    # numbers are never reused, even after the newest rows were deleted (max_seq + 1 would)
    assert seqs == [1, 2, 3] and more == [4, 5, 6]


def test_iter_embeddings_round_trips_float32_exactly(db):
    rng = np.random.default_rng(3)
    rows, vectors = _rows(rng, 25)
    with db.write() as s:
        ids, seqs = q.insert_sentences(s, rows)
    with db.read() as s:
        batches = list(q.iter_embeddings(s, DIM, batch_size=10))
        assert [len(b[0]) for b in batches] == [10, 10, 5]
        got_ids = np.concatenate([b[0] for b in batches])
        got = np.vstack([b[1] for b in batches])
        assert batches[-1][2] == seqs[-1]
        assert got.dtype == np.float32
        assert got_ids.tolist() == ids
        assert np.array_equal(got, vectors)  # bit-exact
        tail = list(q.iter_embeddings(s, DIM, after_seq=seqs[19]))
        assert np.concatenate([b[0] for b in tail]).tolist() == ids[20:]
        upto = list(q.iter_embeddings(s, DIM, up_to_seq=seqs[2]))
        assert np.concatenate([b[0] for b in upto]).tolist() == ids[:3]
        picked = q.embeddings_for(s, [ids[7], ids[2]], DIM)
        assert np.array_equal(picked, vectors[[7, 2]])


def test_store_info_and_ingest_totals(db):
    with db.write() as s:
        assert q.get_info(s) is None
        q.init_info(s, "some-model", 384)
    with db.read() as s:
        info = q.get_info(s)
        assert (info.model_name, info.dimension, info.embedding_dtype) == ("some-model", 384, "float32")
        assert q.ingest_totals(s) == {"ingests": 0, "added": 0, "duplicates": 0, "empty": 0, "invalid": 0}
    with db.write() as s:
        a = q.start_ingest(s, "a.txt")
        b = q.start_ingest(s, "b.txt")
    with db.write() as s:
        q.update_ingest(s, a, added=5, duplicates=2)
        q.update_ingest(s, a, added=3, empty=1)
        q.update_ingest(s, b, finished=True, invalid=4, duplicates=1)
    with db.read() as s:
        assert q.ingest_totals(s) == {"ingests": 2, "added": 8, "duplicates": 3, "empty": 1, "invalid": 4}


def test_sqlite_wal_and_busy_timeout(tmp_path):
    database = Database(sqlite_url(tmp_path / "x.db"))
    database.migrate()
    with database.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar().lower() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS
        assert SQLITE_BUSY_TIMEOUT_MS >= 5000
    database.dispose()


def test_missing_sqlite_without_create(tmp_path):
    with pytest.raises(DatabaseUnavailableError, match="no database"):
        Database(sqlite_url(tmp_path / "nope.db"), create=False)
    with pytest.raises(DatabaseUnavailableError):
        Database(sqlite_url(tmp_path / "no-folder" / "nope.db"), create=False)
    assert not (tmp_path / "nope.db").exists()
    assert not (tmp_path / "no-folder").exists()


def test_unreachable_postgresql(tmp_path):
    url = "postgresql+psycopg://user:secret@127.0.0.1:1/nothing"
    with pytest.raises(DatabaseUnavailableError) as info:
        database = Database(url)
        database.migrate()
    message = str(info.value)
    assert "127.0.0.1:1" in message and "cannot open database" in message
    assert "secret" not in message  # the password is hidden

    from indexer.sentence_store import SentenceStore

    with pytest.raises(DatabaseUnavailableError):
        SentenceStore(tmp_path / "data", db_url=url)


def test_invalid_url():
    with pytest.raises(DatabaseUnavailableError):
        Database("not a url at all")


def _silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()

    return server.getsockname()[1], accepted, close


def test_postgresql_server_that_never_answers_fails_within_the_connect_timeout(tmp_path):
    import time

    port, accepted, close = _silent_server()
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as info:
            Database(f"postgresql://127.0.0.1:{port}/test", connect_timeout=2).migrate()
        took = time.monotonic() - started
        assert accepted, "the client never reached the silent server"
        assert took < 15, f"hung for {took:.1f} s"
        message = str(info.value)
        assert f"127.0.0.1:{port}" in message and "\n" not in message
    finally:
        close()


def test_cli_with_a_silent_postgresql_server_fails_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port, accepted, close = _silent_server()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "clusterer",
                "stats",
                "--db",
                f"postgresql://127.0.0.1:{port}/test",
                "--data-dir",
                str(tmp_path / "d"),
            ],
            cwd=root,
            env=dict(os.environ, PYTHONPATH=str(root), CLUSTERER_CONNECT_TIMEOUT="2"),
            capture_output=True,
            text=True,
            timeout=30,
        )  # raises TimeoutExpired if the command hangs
        assert result.returncode == 1
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr
        assert accepted
    finally:
        close()
