"""The IVF copy of an exact index that lookups search above the exact range."""

from __future__ import annotations

import numpy as np
import pytest

from clusterer.api import Store
from indexer.replica import LookupCopy, build_replica, replica_nlist
from indexer.vector_index import VectorIndex


def clustered(n: int, d: int = 32, groups: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, d)).astype(np.float32)
    x = centres[rng.integers(0, groups, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(queries: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ x.T), axis=1)[:, :k]]


def test_the_copy_finds_the_exact_neighbours_with_their_exact_similarities():
    x = clustered(6000)
    ids = np.arange(100, 6100, dtype=np.int64)
    copy = build_replica(ids, x)
    assert copy.kind.startswith("IVFFlat") and copy.ntotal == len(ids)
    queries = clustered(50, seed=1)
    found = copy.search(queries, 20)
    truth = exact_top(queries, x, ids, 20)
    recall = np.mean([len(set(t) & set(f)) / 20 for t, f in zip(truth.tolist(), found.ids.tolist())])
    assert recall >= 0.95, recall
    rows = {int(i): r for r, i in enumerate(ids)}
    for q, (hit_ids, sims) in enumerate(zip(found.ids, found.similarities)):
        expected = x[[rows[int(i)] for i in hit_ids]] @ queries[q]
        np.testing.assert_allclose(sims, expected, atol=1e-5)


def test_cells_grow_with_the_square_root_of_the_size():
    assert replica_nlist(10_000) == 200 and replica_nlist(1_000_000) == 2000
    assert replica_nlist(10) == 16


def test_a_follower_sees_every_change_made_while_it_was_built_and_after():
    x = clustered(3000)
    index = VectorIndex.flat(x.shape[1])
    index.add(np.arange(1, 2001), x[:2000])
    ids, vectors = index.snapshot()
    assert ids.tolist() == list(range(1, 2001)) and np.array_equal(vectors, x[:2000])
    copy = build_replica(ids, vectors)
    index.add(np.arange(2001, 2501), x[2000:2500])  # while the copy was built
    index.remove([1, 2, 3])
    index.attach_follower(copy)
    index.add(np.arange(2501, 3001), x[2500:])  # after
    index.remove([2600])
    assert copy.ntotal == index.ntotal == 3000 - 4
    assert np.array_equal(np.sort(copy.ids()), np.sort(index.ids()))
    index.drop_follower()
    index.add(np.array([5000]), x[:1])
    assert copy.ntotal == index.ntotal - 1


@pytest.fixture
def big_store(tmp_path):
    store = Store.open(tmp_path / "data", device="cpu", batch_size=1024)
    texts = [f"item{i} talks about topic{i % 23} with colour{i % 7} and shape{i % 13}" for i in range(3000)]
    store.ingest(texts)
    store.cluster("kmeans", k=23)
    yield store
    store.close()


def test_lookups_use_the_copy_once_built_and_it_follows_ingests_and_deletes(big_store):
    store = big_store
    assert store.lookup_index() is store.index  # off by default: one-off commands keep the exact search
    assert store.lookup_copy.status() == "exact"
    queries = [f"a question about topic{i % 23} in colour{i % 7}" for i in range(30)]
    vectors = store.embed(queries)
    exact = store.lookup_vectors(vectors)
    store.lookup_copy.enable(above=1000)
    first = store.lookup_index()  # starts the build; the exact index answers meanwhile
    assert first is store.index or first is store.index.follower
    assert store.lookup_copy.status() in ("building", "copy")
    assert store.lookup_copy.wait(60)
    assert store.lookup_copy.status() == "copy"
    copy = store.lookup_index()
    assert copy is store.index.follower and copy.kind.startswith("IVFFlat")
    approx = store.lookup_vectors(vectors)
    same = np.mean([a["cluster_id"] == e["cluster_id"] for a, e in zip(approx, exact)])
    assert same >= 0.9, same
    report = store.ingest(["a brand new sentence about topic3 and colour2"])
    (new_id,) = report.ids
    assert new_id in set(copy.ids().tolist())
    hit = store.lookup("a brand new sentence about topic3 and colour2")
    assert hit["nearest"][0]["id"] == new_id
    store.delete([new_id])
    assert new_id not in set(store.lookup_index().ids().tolist())


def test_the_copy_is_not_built_for_small_or_approximate_indexes(tmp_path, big_store):
    copies = LookupCopy(big_store.cache)
    copies.enable(above=10_000)
    assert copies.index() is big_store.index and copies.wait(1) and big_store.index.follower is None
    store = Store.open(tmp_path / "ivf", device="cpu", flat_max=500, batch_size=1024)
    try:
        store.ingest([f"row {i} on subject{i % 9}" for i in range(1500)])
        assert not store.index.is_exact
        store.lookup_copy.enable(above=100)
        assert store.lookup_index() is store.index and store.lookup_copy.wait(1)
        assert store.lookup_copy.status() == "approximate"
    finally:
        store.close()
