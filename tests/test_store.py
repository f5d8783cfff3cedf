"""SentenceStore: ingesting every input format, dedup, search, delete, locking, IVF."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from indexer.errors import InputError
from indexer.lock import LockTimeoutError, WriterLock
from indexer.sentence_store import LOCK_FILE, SentenceStore
from storage.errors import ModelMismatchError
from tests.fakes import FakeEncoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def open_store(tmp_path, db_url):
    """Open stores on one data folder and ``db_url``; all are closed afterwards."""
    opened = []

    def _open(**kwargs):
        store = SentenceStore(tmp_path / "data", db_url=db_url, **kwargs)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


def _by_text(store, ids):
    return {row.text: row for row in store.get(ids).values()}


# -- input formats -----------------------------------------------------------------


def test_ingest_text_file_dedup_and_empty(open_store, tmp_path):
    path = tmp_path / "in.txt"
    lines = [
        "The café is open",  # NFC composed
        "The cafe\u0301 is open",  # decomposed: same after NFC
        "",
        "   ",
        "  the   dog\tbarks  ",
        "the dog barks",  # same after whitespace collapse
        "The Dog barks",  # case differs: kept
        "The café is open",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = open_store()
    report = store.ingest_file(path)
    assert (report.added, report.duplicates, report.empty, report.invalid) == (3, 3, 2, 0)
    assert report.read == 6
    assert store.count() == 3
    rows = _by_text(store, report.ids)
    assert set(rows) == {"The café is open", "the dog barks", "The Dog barks"}
    assert rows["the dog barks"].source_file == str(path) and rows["the dog barks"].source_line == 5
    stats = store.stats()
    assert stats["sentences"] == 3 and stats["duplicates_skipped"] == 3 and stats["empty_skipped"] == 2
    assert store.verify().ok

    again = store.ingest_file(path)
    assert (again.added, again.duplicates) == (0, 6)
    assert store.count() == 3
    assert store.stats()["duplicates_skipped"] == 9
    assert store.verify().ok


def test_ingest_csv_with_text_column_and_metadata(open_store, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        'id,sentence,label\n1,"Hello, world",greeting\n2,How are you?,question\n3,"Hello,  world",dup\n',
        encoding="utf-8",
    )
    store = open_store()
    report = store.ingest_file(path, text_column="sentence")
    assert (report.added, report.duplicates) == (2, 1)
    rows = _by_text(store, report.ids)
    assert rows["Hello, world"].meta == {"id": "1", "label": "greeting"}
    assert rows["How are you?"].meta == {"id": "2", "label": "question"}
    assert rows["How are you?"].source_line == 3
    hit = store.search("How are you?", k=1)[0]
    assert hit.text == "How are you?" and hit.metadata == {"id": "2", "label": "question"}
    assert hit.source == f"{path}:3"


def test_ingest_tsv(open_store, tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text("text\tlang\nbonjour le monde\tfr\nhello world\ten\n", encoding="utf-8")
    store = open_store()
    report = store.ingest_file(path)
    assert report.added == 2
    rows = _by_text(store, report.ids)
    assert rows["bonjour le monde"].meta == {"lang": "fr"}
    assert rows["hello world"].meta == {"lang": "en"}


def test_ingest_jsonl_nested_metadata(open_store, tmp_path):
    path = tmp_path / "in.jsonl"
    records = [
        {"text": "first sentence here", "meta": {"tags": ["a", "b"], "score": 0.5, "ok": True}, "n": 1},
        {"text": "second sentence here", "meta": {"nested": {"deep": [1, {"x": None}]}}},
        {"body": "ignored", "text": "third one"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    store = open_store()
    report = store.ingest_file(path)
    assert (report.added, report.empty) == (3, 1)
    rows = _by_text(store, report.ids)
    assert rows["first sentence here"].meta == {"meta": {"tags": ["a", "b"], "score": 0.5, "ok": True}, "n": 1}
    assert rows["second sentence here"].meta == {"meta": {"nested": {"deep": [1, {"x": None}]}}}
    assert rows["third one"].meta == {"body": "ignored"}
    hit = store.search("second sentence here", k=1)[0]
    assert hit.metadata == {"meta": {"nested": {"deep": [1, {"x": None}]}}}


def test_ingest_jsonl_text_field(open_store, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"body": "custom field text", "k": 2}\n', encoding="utf-8")
    store = open_store()
    report = store.ingest_file(path, text_field="body")
    assert report.added == 1
    assert store.get(report.ids)[report.ids[0]].meta == {"k": 2}


def test_ingest_stdin(open_store, monkeypatch):
    data = b"from standard input\n\nanother line\nfrom standard input\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    store = open_store()
    report = store.ingest_file("-")
    assert report.source == "<stdin>"
    assert (report.added, report.duplicates, report.empty) == (2, 1, 1)
    rows = _by_text(store, report.ids)
    assert rows["another line"].source_file == "<stdin>" and rows["another line"].source_line == 3


# -- Python API --------------------------------------------------------------------


def test_python_ingest_and_search(open_store):
    store = open_store()
    texts = [
        "the cat sat on the mat",
        "the cat sat on the mat today",
        "dogs chase cats in the park",
        "stock markets fell sharply today",
        "the weather is sunny and warm",
        "",
        "the cat sat on the mat",
    ]
    metas = [{"i": i} for i in range(len(texts))]
    report = store.ingest(texts, metas)
    assert (report.added, report.duplicates, report.empty) == (5, 1, 1)
    hits = store.search("the cat sat on the mat", k=3)
    assert len(hits) == 3
    assert hits[0].text == "the cat sat on the mat" and hits[0].metadata == {"i": 0}
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert hits[1].text == "the cat sat on the mat today"
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert len(store.search("cat", k=100)) == 5
    assert len(store.search("cat", k=1)) == 1
    assert store.stats()["sentences"] == 5


def test_search_on_empty_store(open_store):
    assert open_store().search("anything", k=5) == []


def test_delete_removes_from_db_and_index(open_store, tmp_path, db_url):
    store = open_store()
    report = store.ingest(["alpha beta gamma", "delta epsilon zeta", "eta theta iota"])
    victim = report.ids[1]
    assert store.search("delta epsilon zeta", k=1)[0].id == victim
    assert store.delete([victim, 987654]) == [victim]
    assert store.count() == 2
    assert victim not in store.get([victim])
    assert victim not in [h.id for h in store.search("delta epsilon zeta", k=10)]
    assert victim not in store.index.ids()
    assert store.verify().ok
    assert store.delete([victim]) == []
    store.close()
    reopened = open_store()
    assert reopened.verify().ok
    assert reopened.index.ntotal == 2
    assert victim not in [h.id for h in reopened.search("delta epsilon zeta", k=10)]


# -- model mismatch ----------------------------------------------------------------


def test_model_mismatch(open_store):
    store = open_store()
    store.ingest(["one sentence"])
    store.close()
    with pytest.raises(ModelMismatchError, match="fake-hashing-encoder"):
        open_store(encoder=FakeEncoder(model_name="another-model"))
    with pytest.raises(ModelMismatchError):
        open_store(model="another-model")
    with pytest.raises(ModelMismatchError):
        open_store(encoder=FakeEncoder(dimension=16))
    assert open_store(encoder=FakeEncoder()).count() == 1


# -- bad input ---------------------------------------------------------------------


def test_bad_utf8_mid_file(open_store, tmp_path):
    path = tmp_path / "bad.txt"
    good = [f"sentence number {i} is fine" for i in range(1, 131)]
    with open(path, "wb") as fh:
        for line in good[:123]:
            fh.write(line.encode() + b"\n")
        fh.write(b"broken \xff\xfe bytes\n")  # line 124
        for line in good[123:]:
            fh.write(line.encode() + b"\n")
    store = open_store(batch_size=50)
    with pytest.raises(InputError) as info:
        store.ingest_file(path)
    err = info.value
    assert err.path == str(path) and err.line == 124
    assert str(path) in str(err) and "line 124" in str(err)
    committed = store.count()
    # every row before the bad line is committed (also those of the unfinished batch)
    assert committed == 123
    assert err.partial_report.added == 123
    stored = {h.text for h in store.search("sentence number is fine", k=500)}
    assert stored == set(good[:123])
    assert store.verify().ok
    store.close()

    reopened = open_store(batch_size=50)
    assert reopened.count() == committed
    assert reopened.verify().ok
    report = reopened.ingest_file(path, skip_invalid=True)
    assert report.invalid == 1 and len(report.errors) == 1 and "line 124" in report.errors[0]
    assert report.added == len(good) - committed and report.duplicates == committed
    assert reopened.count() == len(good)
    assert reopened.stats()["invalid_skipped"] == 1
    assert reopened.verify().ok


# -- locking and readers -----------------------------------------------------------


def test_writer_lock_blocks_second_writer(open_store, tmp_path, db_url):
    store = open_store(lock_timeout=0.2)
    store.ingest(["before the lock"])
    other = (
        open_store(lock_timeout=0.2).lock
        if db_url.startswith("postgresql")
        else WriterLock(tmp_path / "data" / LOCK_FILE, timeout=0.2)
    )
    with other:
        with pytest.raises(LockTimeoutError, match="another"):
            store.ingest(["while locked"])
        with pytest.raises(LockTimeoutError, match="another"):
            store.delete([1])
    assert store.count() == 1
    assert store.ingest(["after the lock"]).added == 1
    assert store.verify().ok


def test_writer_lock_held_by_another_process(open_store, tmp_path, db_url):
    import subprocess

    store = open_store(lock_timeout=0.2)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from indexer.sentence_store import SentenceStore;"
            " s = SentenceStore(sys.argv[1], db_url=sys.argv[2], recover=False); s.lock.acquire();"
            " print('locked', flush=True); sys.stdin.read()",
            str(tmp_path / "data"),
            db_url,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        holder = (
            f"another writer.*clusterer .* pid {child.pid}"
            if db_url.startswith("postgresql")
            else f"another.*pid {child.pid}"
        )
        with pytest.raises(LockTimeoutError, match=holder):
            store.ingest(["blocked"])
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert store.ingest(["free again"]).added == 1


def test_reader_sees_rows_committed_by_another_writer(open_store):
    writer = open_store()
    writer.ingest(["first sentence from the writer"])
    reader = open_store()
    lazy = open_store(recover=False)
    assert reader.search("first sentence from the writer", k=1)[0].text == "first sentence from the writer"
    report = writer.ingest(["a brand new sentence about zebras", "another fresh line on giraffes"])
    for store in (reader, lazy):
        hits = store.search("a brand new sentence about zebras", k=1)
        assert hits and hits[0].id == report.ids[0]
        assert store.count() == 3
    writer.delete([report.ids[1]])
    hits = reader.search("another fresh line on giraffes", k=3)
    assert report.ids[1] not in [h.id for h in hits]
    assert reader.verify().ok


# -- switching to IVF --------------------------------------------------------------


def test_switches_to_ivf_above_flat_max(open_store):
    store = open_store(flat_max=300, batch_size=256)
    texts = [f"item{i} talks about topic{i % 17} with colour{i % 5} and shape{i % 11}" for i in range(1100)]
    report = store.ingest(texts, [{"i": i} for i in range(len(texts))])
    assert report.added == 1100
    stats = store.stats()
    assert stats["index"]["type"].startswith("IVFFlat"), stats["index"]
    assert stats["index"]["indexed"] == 1100
    assert store.verify().ok
    for i in (0, 517, 1099):
        hit = store.search(texts[i], k=5)[0]
        assert hit.id == report.ids[i] and hit.metadata == {"i": i}
    more = store.ingest([f"late{i} addition on topic{i}" for i in range(50)])
    assert store.verify().ok
    store.close()
    reopened = open_store(flat_max=300)
    assert reopened.index.kind.startswith("IVFFlat")
    assert reopened.index.ntotal == 1150
    assert reopened.verify().ok
    assert reopened.search("late7 addition on topic7", k=1)[0].id == more.ids[7]
    assert reopened.search(texts[42], k=1)[0].id == report.ids[42]


def test_reader_reloads_when_another_writer_deleted_and_added(tmp_path):
    writer = SentenceStore(tmp_path)
    writer.ingest([f"alpha {i} beta" for i in range(20)])
    reader = SentenceStore(tmp_path)
    assert len(reader.search("alpha 3 beta", 5)) == 5
    writer.delete([1, 2, 3, 4])
    writer.ingest([f"gamma {i} delta" for i in range(4)])
    hits = reader.search("alpha 3 beta", 20)
    assert len(hits) == 20
    assert not {1, 2, 3, 4} & {h.id for h in hits}
    assert reader.index.ntotal == 20


# -- issue 8: faults 2, 7 and 11 through the Python API -------------------------------------


def test_fewer_metadata_entries_than_texts_is_a_clear_error_and_stores_nothing(open_store):
    store = open_store()
    with pytest.raises(InputError, match="2 texts but 1 metadata") as err:
        store.ingest(["first text", "second text"], [{"a": 1}])
    assert err.value.line is None
    assert store.count() == 0


def test_metadata_generator_running_out_is_a_clear_error(open_store):
    store = open_store()
    with pytest.raises(InputError, match="no metadata entry") as err:
        store.ingest(iter(["one", "two", "three"]), iter([{"n": 1}, {"n": 2}]))
    assert err.value.line == 3
    with pytest.raises(InputError, match="more metadata entries than texts"):
        store.ingest(iter(["four"]), iter([{"n": 4}, {"n": 5}]))


def test_unpaired_surrogate_in_metadata_is_rejected_and_reads_keep_working(open_store):
    store = open_store()
    with pytest.raises(InputError, match="surrogate"):
        store.ingest(["x"], [{"note": "\ud800"}])
    assert store.count() == 0
    store.ingest(["fine text"], [{"note": "ok"}])
    hit = store.search("fine text", k=1)[0]
    json.dumps(hit.to_dict(), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("text", ["", "   ", "\u200b"])
def test_search_for_an_empty_text_is_an_error(open_store, text):
    from indexer.errors import InvalidArgumentError

    store = open_store()
    store.ingest(["something stored"])
    with pytest.raises(InvalidArgumentError, match="empty"):
        store.search(text)
    with pytest.raises(InvalidArgumentError, match="empty"):
        store.embed([text])


@pytest.mark.parametrize("bad", [2**63, 2**64 + 5, -1])
def test_sentence_ids_outside_the_column_are_a_clear_error(open_store, bad):
    from storage.sentences import InvalidIdError

    store = open_store()
    store.ingest(["one stored sentence"])
    with pytest.raises(InvalidIdError, match=f"{bad} is not a sentence id"):
        store.get([1, bad])
    with pytest.raises(InvalidIdError):
        store.delete([bad])
    assert store.count() == 1
