"""The readers' micro-batcher, the embedding cache and the lookup pipeline of `clusterer serve`."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from clusterer.api import Store
from clusterer.server.batcher import (
    BatcherClosed,
    BatcherFull,
    EmbeddingCache,
    LookupPipeline,
    MicroBatcher,
)
from tests.fakes import NOISE, topic_texts


class Gate:
    """A process function whose first call waits for ``release`` (so requests pile up behind it)."""

    def __init__(self, fn=lambda items: [x * 2 for x in items]):
        self.fn, self.calls, self.release, self.entered = fn, [], threading.Event(), threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        self.entered.set()
        assert self.release.wait(10)
        return self.fn(items)


def test_concurrent_requests_coalesce_into_fewer_calls_with_their_own_answers():
    gate = Gate()
    batcher = MicroBatcher(gate, max_batch=64, max_wait=0.0)
    try:
        first = batcher.submit(0)
        assert gate.entered.wait(5)  # the worker is busy with the first request
        futures = [batcher.submit(i) for i in range(1, 21)]
        gate.release.set()
        assert first.result(5) == 0
        assert [f.result(5) for f in futures] == [2 * i for i in range(1, 21)]
        assert len(gate.calls) == 2 and gate.calls[1] == list(range(1, 21))
    finally:
        batcher.close()


def test_batches_respect_max_batch_by_size():
    gate = Gate(lambda items: items)
    batcher = MicroBatcher(gate, max_batch=5, max_wait=0.0)
    try:
        batcher.submit("a")
        assert gate.entered.wait(5)
        futures = [batcher.submit(f"r{i}", size=2) for i in range(6)]
        gate.release.set()
        assert [f.result(5) for f in futures] == [f"r{i}" for i in range(6)]
        assert [len(c) for c in gate.calls[1:]] == [2, 2, 2]  # two of size 2 fit in 5, a third does not
    finally:
        batcher.close()


def test_an_error_reaches_only_the_caller_it_belongs_to():
    def process(items):
        if any(x < 0 for x in items):
            raise ValueError(f"negative in {items}")
        return [x + 1 for x in items]

    gate = Gate(process)
    batcher = MicroBatcher(gate, max_wait=0.0)
    try:
        batcher.submit(0)
        assert gate.entered.wait(5)
        futures = [batcher.submit(x) for x in (1, -1, 2)]
        gate.release.set()
        assert futures[0].result(5) == 2 and futures[2].result(5) == 3
        with pytest.raises(ValueError, match=r"negative in \[-1\]"):
            futures[1].result(5)
    finally:
        batcher.close()


def test_the_wait_for_more_is_bounded():
    calls = []
    batcher = MicroBatcher(lambda items: calls.append(list(items)) or items, max_batch=8, max_wait=0.2)
    try:
        started = time.monotonic()
        assert batcher.submit(1).result(5) == 1
        alone = time.monotonic() - started
        assert 0.15 <= alone < 2.0  # waited for company about max_wait, then ran alone
        with ThreadPoolExecutor(4) as pool:  # arriving within the wait: one call
            results = list(pool.map(lambda x: batcher.submit(x).result(5), range(4)))
        assert results == list(range(4)) and len(calls) == 2
    finally:
        batcher.close()
    fast = MicroBatcher(lambda items: items, max_batch=8, max_wait=0.0)
    try:
        started = time.monotonic()
        for i in range(20):
            assert fast.submit(i).result(5) == i
        assert time.monotonic() - started < 2.0
    finally:
        fast.close()


def test_close_fails_waiting_requests_and_refuses_new_ones():
    gate = Gate()
    batcher = MicroBatcher(gate, max_wait=0.0, max_queued=3)
    first = batcher.submit(1)
    assert gate.entered.wait(5)
    waiting = [batcher.submit(i) for i in range(3)]
    with pytest.raises(BatcherFull):
        batcher.submit(99)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    gate.release.set()
    closer.join(10)
    assert first.result(5) == 2
    for f in waiting:  # taken into the next batch or failed: never left hanging
        with contextlib.suppress(BatcherClosed):
            f.result(5)
    with pytest.raises(BatcherClosed):
        batcher.submit(2)


def test_embedding_cache_is_lru_and_read_only():
    cache = EmbeddingCache(2)
    cache.put("a", np.ones(3))
    cache.put("b", np.zeros(3))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", np.ones(3))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and cache.hits == 3 and cache.misses == 1
    with pytest.raises(ValueError):
        cache.get("a")[0] = 5.0
    off = EmbeddingCache(0)
    off.put("a", np.ones(3))
    assert off.get("a") is None


class CountingEmbed:
    def __init__(self, store):
        self.store, self.calls = store, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return self.store.embed(texts)


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "data", device="cpu")
    store.ingest(topic_texts() + NOISE)
    store.cluster("community", threshold=0.6, min_size=5)
    yield store
    store.close()


def test_pipeline_answers_equal_single_lookups_with_fewer_batches(store):
    embed = CountingEmbed(store)
    batches = []
    pipeline = LookupPipeline(
        embed, store.lookup_vectors, max_batch=32, max_wait=0.05, on_batch=lambda s, n: batches.append((s, n))
    )
    texts = [t + " again" for t in topic_texts()[::7]] + ["zebra quantum kettle"]
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda text: pipeline.lookup([text], 3).result(10)[0], texts))
        assert answers == [store.lookup(t, members=3) for t in texts]
        lookup_batches = [n for s, n in batches if s == "lookup"]
        assert sum(lookup_batches) == len(texts) and len(lookup_batches) < len(texts)
        assert sorted(t for call in embed.calls for t in call) == sorted(texts)  # each text embedded once
        calls = len(embed.calls)
        pipeline.embed([texts[0]]).result(10)  # the cache answers a text seen before
        assert len(embed.calls) == calls and pipeline.cache.hits >= 1
        with pytest.raises(Exception, match="empty"):
            pipeline.lookup(["   "], 3).result(10)
        assert pipeline.lookup([texts[1]], 2).result(10) == [store.lookup(texts[1], members=2)]
    finally:
        pipeline.close()


def test_texts_waiting_together_are_embedded_in_one_call_and_errors_stay_apart(store):
    gate = threading.Event()
    calls = []

    def embed(texts):
        calls.append(list(texts))
        assert gate.wait(10)
        return store.embed(texts)

    pipeline = LookupPipeline(embed, store.lookup_vectors, max_batch=32, max_wait=0.0)
    try:
        first = pipeline.lookup(["the first question"], 1)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting = [pipeline.lookup([f"question number {i}"], 1) for i in range(6)]
        bad = pipeline.lookup([" "], 1)
        gate.set()
        first.result(10)
        answers = [f.result(10)[0] for f in waiting]
        with pytest.raises(Exception, match="empty"):
            bad.result(10)
        assert calls[1] == [f"question number {i}" for i in range(6)] + [" "]  # one call for all that waited
        assert answers == [store.lookup(f"question number {i}", members=1) for i in range(6)]
    finally:
        gate.set()
        pipeline.close()


def test_lookup_vectors_mixed_member_counts_equal_single_lookups(store):
    texts = topic_texts()[:12]
    vectors = store.embed(texts)
    counts = [i % 4 for i in range(len(texts))]
    assert store.lookup_vectors(vectors, members=counts) == [store.lookup(t, members=m) for t, m in zip(texts, counts)]


def test_ann_lookup_above_the_exact_range(tmp_path):
    store = Store.open(tmp_path / "data", device="cpu", flat_max=300, batch_size=512)
    try:
        texts = [f"item{i} talks about topic{i % 17} with colour{i % 5} and shape{i % 11}" for i in range(1500)]
        store.ingest(texts)
        store.cluster("kmeans", k=17)
        assert store.index.kind.startswith("IVFFlat") and not store.index.is_exact
        queries = [f"a question about topic{i % 17} in colour{i % 5}" for i in range(40)]
        vectors = store.embed(queries)
        batched = store.lookup_vectors(vectors)
        assert batched == [store.lookup(q) for q in queries]
        ids, x = store.embeddings()
        exact = ids[np.argsort(-(vectors @ x.T), axis=1)[:, :10]]
        found = [[n["id"] for n in a["nearest"]] for a in batched]
        recall = np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact.tolist(), found)])
        assert recall >= 0.9, recall
    finally:
        store.close()
