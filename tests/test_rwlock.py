"""The readers-writer lock, and one store object shared by threads while another process writes:
concurrent refreshes never replay a batch twice, searches never see a half-added batch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clusterer.api import Store
from indexer.rwlock import ReadWriteLock


def test_readers_share_and_a_writer_is_alone():
    lock = ReadWriteLock()
    inside, most, writer_saw = [0], [0], []
    guard = threading.Lock()
    start = threading.Barrier(5)

    def reader():
        start.wait()
        for _ in range(50):
            with lock.read():
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.001)
                with guard:
                    inside[0] -= 1

    def writer():
        start.wait()
        for _ in range(20):
            with lock.write():
                with guard:
                    writer_saw.append(inside[0])
                time.sleep(0.001)

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] > 1, "readers never overlapped"
    assert writer_saw == [0] * 20, "a writer ran beside a reader"


def test_reentrancy_and_no_upgrade():
    lock = ReadWriteLock()
    with lock.write(), lock.write(), lock.read():
        pass
    with lock.read():
        with lock.read():
            pass
        with pytest.raises(RuntimeError), lock.write():
            pass
    with lock.write():  # released properly after all that
        pass


def test_waiting_writer_goes_before_new_readers():
    lock = ReadWriteLock()
    order = []
    first_reader_in = threading.Event()
    release_first = threading.Event()

    def first():
        with lock.read():
            first_reader_in.set()
            release_first.wait(5)

    def writer():
        with lock.write():
            order.append("writer")

    def late_reader():
        with lock.read():
            order.append("reader")

    t1 = threading.Thread(target=first)
    t1.start()
    first_reader_in.wait(5)
    tw = threading.Thread(target=writer)
    tw.start()
    time.sleep(0.05)
    tr = threading.Thread(target=late_reader)
    tr.start()
    time.sleep(0.05)
    assert order == []
    release_first.set()
    for t in (t1, tw, tr):
        t.join(5)
    assert order == ["writer", "reader"]


def test_threads_sharing_a_store_replay_another_writers_batches_once(tmp_path):
    path = tmp_path / "data"
    with Store.open(path, device="cpu") as seed:
        seed.ingest([f"seed sentence {i} word{i % 7}" for i in range(50)])
    shared = Store.open(path, device="cpu")
    other = Store.open(path, device="cpu")
    stop = threading.Event()
    errors: list[BaseException] = []
    vector = shared.embed(["seed sentence word3"])[0]

    def search_loop():
        try:
            while not stop.is_set():
                hits = shared.search_vector(vector, 5)
                assert len({h.id for h in hits}) == len(hits)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=search_loop) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for b in range(15):
            other.ingest([f"other batch{b} item{i} word{i % 5}" for i in range(20)])
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    shared.refresh()
    ids = shared.index.ids()
    assert len(ids) == len(np.unique(ids)) == shared.count() == 50 + 15 * 20
    shared.close()
    other.close()


def test_readers_go_on_while_a_batch_and_its_upkeep_are_written(tmp_path):
    """The listener's upkeep runs inside the batch's open transaction; readers are not held for
    it and see the store as it was, then the whole batch once it is committed."""
    from indexer.sentence_store import SentenceStore

    class SlowUpkeep:
        def __init__(self):
            self.entered, self.release = threading.Event(), threading.Event()

        def on_insert(self, session, ids, vectors, texts, max_seq):
            if any("slow" in t for t in texts):
                self.entered.set()
                assert self.release.wait(10)
            return None

        def on_delete(self, session, ids):
            return None

    upkeep = SlowUpkeep()
    store = SentenceStore(tmp_path / "data", device="cpu", listener=upkeep)
    try:
        store.ingest(["alpha one", "beta two", "gamma three"])
        writer = threading.Thread(target=store.ingest, args=(["slow delta four", "slow epsilon five"],))
        writer.start()
        assert upkeep.entered.wait(10)
        found: list = []
        reader = threading.Thread(target=lambda: found.append(store.search("slow delta four", k=10)))
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "a reader waited for the writer's upkeep"
        assert {h.text for h in found[0]} == {"alpha one", "beta two", "gamma three"}
        upkeep.release.set()
        writer.join(10)
        assert {h.text for h in store.search("slow delta four", k=10)} >= {"slow delta four", "slow epsilon five"}
    finally:
        upkeep.release.set()
        store.close()
