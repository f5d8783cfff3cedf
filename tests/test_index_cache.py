"""The index upkeep of one data folder: its own record (folder-id), adoption of the record of a
store made before per-folder records, and the 0004 migration's sequence counter."""

from __future__ import annotations

from sqlalchemy import text

from indexer.index_cache import FOLDER_ID_FILE
from indexer.sentence_store import INDEX_FILE, SentenceStore
from storage import migrate
from storage import sentences as q
from storage.db import Database
from storage.models import IndexCacheState, IndexState
from tests.fakes import FakeEncoder


def test_each_folder_gets_an_identity_and_a_record(tmp_path, db_url):
    data = tmp_path / "data"
    with SentenceStore(data, db_url=db_url) as store:
        store.ingest(["first sentence", "second sentence"])
        folder_id = (data / FOLDER_ID_FILE).read_text().strip()
        assert store.cache.folder_id == folder_id and len(folder_id) == 32
        with store.db.read() as session:
            record = q.get_cache_state(session, folder_id)
            assert (record.ntotal, record.file_bytes) == (2, (data / INDEX_FILE).stat().st_size)
    with SentenceStore(data, db_url=db_url) as store:
        assert store.cache.last_load == "loaded"


def test_store_from_before_per_folder_records_keeps_its_index_file(tmp_path, db_url):
    data = tmp_path / "data"
    with SentenceStore(data, db_url=db_url) as store:
        store.ingest([f"sentence number {i}" for i in range(20)])
        with store.db.write() as session:  # what revision 0003 left: one record, no folder ids
            record = session.get(IndexCacheState, store.cache.folder_id)
            legacy = session.get(IndexState, 1)
            legacy.watermark, legacy.checksum, legacy.ntotal = record.watermark, record.checksum, record.ntotal
            legacy.index_type, legacy.dirty = record.index_type, False
            session.delete(record)
    (data / FOLDER_ID_FILE).unlink()
    before = (data / INDEX_FILE).stat().st_mtime_ns
    with SentenceStore(data, db_url=db_url) as store:
        assert store.cache.last_load == "loaded", "the old index file was rebuilt instead of adopted"
        assert store.verify().ok
    assert (data / INDEX_FILE).stat().st_mtime_ns == before


def test_migration_0004_starts_the_sequence_counter_after_the_stored_rows(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    with db.engine.begin() as conn:
        migrate.upgrade(conn, "0003")
        conn.execute(
            text(
                "INSERT INTO store_info (id, model_name, dimension, embedding_dtype, created_at)"
                " VALUES (1, 'm', 2, 'float32', CURRENT_TIMESTAMP)"
            )
        )
        for seq in (1, 2, 7):
            conn.execute(
                text(
                    "INSERT INTO sentences (text, text_hash, seq, embedding, created_at)"
                    " VALUES (:t, :h, :s, :e, CURRENT_TIMESTAMP)"
                ),
                {"t": f"s{seq}", "h": f"h{seq}", "s": seq, "e": b"\0" * 8},
            )
    db.migrate()
    rows = [q.NewSentence("new", "hnew", b"\0" * 8)]
    with db.write() as session:
        _, seqs = q.insert_sentences(session, rows)
    assert seqs == [8]
    db.dispose()


def test_a_store_opened_empty_sees_the_first_rows_another_process_stores(tmp_path, db_url):
    data = tmp_path / "data"
    with SentenceStore(data, db_url=db_url, encoder=FakeEncoder()) as reader:
        assert reader.dimension is None and reader.index.ntotal == 0
        with SentenceStore(data, db_url=db_url, encoder=FakeEncoder()) as writer:
            writer.ingest(["the cat sat on the mat", "stock markets fell today"])
        reader.refresh()
        assert reader.dimension == FakeEncoder().dimension
        assert [h.text for h in reader.search("a cat on a mat", k=1)] == ["the cat sat on the mat"]


def test_rebuild_and_repair_of_an_empty_store_report_an_empty_index(tmp_path, db_url):
    with SentenceStore(tmp_path / "data", db_url=db_url, encoder=FakeEncoder()) as store:
        assert store.rebuild_index()["indexed"] == 0
        repaired = store.repair()
        assert (repaired["action"], repaired["indexed"]) == ("none", 0)
