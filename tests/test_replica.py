"""The coded copy lookups search above the exact range (indexer.coded_copy, indexer.replica)."""

from __future__ import annotations

import numpy as np
import pytest

from clusterer.api import Store
from indexer.coded_copy import codable, copy_nlist, copy_of_exact, copy_of_ivf
from indexer.replica import LookupCopy
from indexer.vector_index import VectorIndex


def clustered(n: int, d: int = 64, groups: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, d)).astype(np.float32)
    x = centres[rng.integers(0, groups, n)] + 0.25 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth.tolist(), found.tolist())]))


def flat_index(x: np.ndarray, ids: np.ndarray) -> VectorIndex:
    index = VectorIndex.flat(x.shape[1])
    index.add(ids, x)
    return index


def test_a_copy_of_an_exact_index_finds_its_neighbours_with_exact_similarities():
    both = clustered(6050)
    x, queries, ids = both[:6000], both[6000:], np.arange(100, 6100, dtype=np.int64)
    source = flat_index(x, ids)
    copy = copy_of_exact(source, *source.snapshot())
    assert copy.kind.startswith("IVFPQFastScan") and copy.ntotal == len(ids) and not copy.is_exact
    found, truth = copy.search(queries, 20), source.search(queries, 20)
    assert recall(found.ids, truth.ids) >= 0.95
    rows = {int(i): r for r, i in enumerate(ids)}
    for q, (hit_ids, sims) in enumerate(zip(found.ids, found.similarities)):
        np.testing.assert_allclose(sims, x[[rows[int(i)] for i in hit_ids]] @ queries[q], atol=1e-5)
        assert list(sims) == sorted(sims, reverse=True)
    lims, _, _ = copy.range_search(queries[:3], 0.8)  # range searches are the source's, exactly
    assert np.array_equal(lims, source.range_search(queries[:3], 0.8)[0])


def test_a_copy_of_an_ivf_index_shares_its_cells():
    both = clustered(8040, seed=2)
    x, queries, ids = both[:8000], both[8000:], np.arange(1, 8001, dtype=np.int64)
    source = VectorIndex.ivf(x.shape[1], x, nlist=64, nprobe=8)
    source.add(ids, x)
    source.start_journal()
    chunks = (source.list_vectors(first, first + 16) for first in range(0, 64, 16))
    copy = copy_of_ivf(source, source.list_vectors(0, 64, 20)[1], chunks)
    assert copy.codes.quantizer is not None and copy.codes.nprobe == 8 and copy.ntotal == 8000
    assert recall(copy.search(queries, 10).ids, source.search(queries, 10).ids) >= 0.95


def test_cells_and_codes():
    assert copy_nlist(10_000) == 200 and copy_nlist(1_000_000) == 2000 and copy_nlist(10) == 16
    assert codable(384) and codable(768) and not codable(385) and not codable(4)


def test_a_follower_sees_every_change_made_while_it_was_built_and_after():
    x = clustered(3000)
    index = flat_index(x[:2000], np.arange(1, 2001))
    snapshot = index.snapshot()
    assert snapshot[0].tolist() == list(range(1, 2001)) and np.array_equal(snapshot[1], x[:2000])
    copy = copy_of_exact(index, *snapshot)
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


def test_a_journalled_add_the_copy_caught_already_is_held_once():
    x = clustered(1200)
    index = flat_index(x[:1000], np.arange(1, 1001))
    index.start_journal()
    index.add(np.arange(1001, 1201), x[1000:])
    copy = copy_of_exact(index, *index.vectors())  # the copy saw the late rows too
    index.attach_follower(copy)
    assert copy.ntotal == 1200 and len(np.unique(copy.ids())) == 1200


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
    assert store.lookup_index() is store.index  # off by default: one-off commands search the index itself
    assert store.lookup_copy.status() == "source"
    queries = [f"a question about topic{i % 23} in colour{i % 7}" for i in range(30)]
    vectors = store.embed(queries)
    exact = store.lookup_vectors(vectors)
    store.lookup_copy.enable(above=1000)
    first = store.lookup_index()  # starts the build; the index itself answers meanwhile
    assert first is store.index or first is store.index.follower
    assert store.lookup_copy.status() in ("building", "copy")
    assert store.lookup_copy.wait(60)
    assert store.lookup_copy.status() == "copy"
    copy = store.lookup_index()
    assert copy is store.index.follower and copy.kind.startswith("IVFPQFastScan")
    approx = store.lookup_vectors(vectors)
    same = np.mean([a["cluster_id"] == e["cluster_id"] for a, e in zip(approx, exact)])
    assert same >= 0.9, same
    report = store.ingest(["a brand new sentence about topic3 and colour2"])
    (new_id,) = report.ids
    assert new_id in set(copy.ids().tolist())
    hit = store.lookup("a brand new sentence about topic3 and colour2")
    assert hit["nearest"][0]["id"] == new_id and hit["nearest"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    store.delete([new_id])
    assert new_id not in set(store.lookup_index().ids().tolist())


def test_small_indexes_are_not_copied_and_ivf_ones_are(tmp_path, big_store):
    copies = LookupCopy(big_store.cache)
    copies.enable(above=10_000)
    assert copies.index() is big_store.index and copies.wait(1) and big_store.index.follower is None
    store = Store.open(tmp_path / "ivf", device="cpu", flat_max=500, batch_size=1024)
    try:
        store.ingest([f"row {i} on subject{i % 9} and item{i % 31}" for i in range(1500)])
        assert not store.index.is_exact
        store.lookup_copy.enable(above=100)
        store.lookup_index()
        assert store.lookup_copy.wait(60) and store.lookup_copy.status() == "copy"
        copy = store.lookup_index()
        assert copy.codes.quantizer is not None and copy.codes.nlist == store.index.index.nlist
        queries = store.embed([f"a row on subject{i % 9} with item{i}" for i in range(20)])
        assert recall(copy.search(queries, 10).ids, store.index.search(queries, 10).ids) >= 0.9
    finally:
        store.close()
