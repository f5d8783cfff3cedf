"""Filtered subsets through the API: subset runs and upkeep, filtered search and export,
near-duplicate groups and deletion, near-duplicate skipping at ingest."""

from __future__ import annotations

import numpy as np
import pytest

from clusterer.api import Store
from indexer.vector_index import VectorIndex
from storage.filters import InvalidFilterError
from tests.fakes import FakeEncoder

TOPICS = {
    "card": "credit card payment declined",
    "flight": "flight booking cancel refund",
    "pin": "forgot pin code reset",
}
TEAM = {"card": "a", "flight": "a", "pin": "b"}
PER_TOPIC = 8


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")


@pytest.fixture
def store(tmp_path, db_url):
    s = Store.open(tmp_path / "data", db_url=db_url, device="cpu")
    texts = [f"{core} {name}{i}" for name, core in TOPICS.items() for i in range(PER_TOPIC)]
    metas = [{"team": TEAM[name], "n": i} for name in TOPICS for i in range(PER_TOPIC)]
    s.ingest(texts, metas)
    yield s
    s.close()


def run_ids(store, run_id):
    return {row["id"]: row["cluster"] for row in store.export(run_id)}


def test_subset_run_then_ingest_inside_and_outside_the_filter(store):
    run = store.cluster("community", threshold=0.6, min_size=3, where="team=a")
    assert run.params["where"] == ["team=a"]
    assert run.sentences == 2 * PER_TOPIC and run.clusters == 2
    texts = {i: r.text for i, r in store.get(list(run_ids(store, run.id))).items()}
    assert all(not t.startswith(TOPICS["pin"]) for t in texts.values())

    report = store.ingest(
        [f"{TOPICS['card']} card99", f"{TOPICS['card']} card98", f"{TOPICS['pin']} pin99"],
        [{"team": "a"}, {"team": "b"}, {"team": "a"}],
    )
    inside, outside, pin_inside = report.ids
    after = store.run(run.id)
    assert after.sentences == 2 * PER_TOPIC + 2
    assigned = run_ids(store, run.id)
    assert outside not in assigned  # no assignment row: the sentence is not part of the run
    card_label = assigned[inside]
    assert card_label is not None
    assert assigned[pin_inside] is None  # matches the filter, fits no cluster: assigned, unassigned
    info = store.cluster_of(outside)
    assert info["outside_filter"] is True and info["pending"] is False and info["cluster_id"] is None
    assert info["where"] == ["team=a"]
    assert store.cluster_of(inside)["cluster_id"] == card_label
    assert store.lookup(f"{TOPICS['card']} card97")["where"] == ["team=a"]


def test_recluster_keeps_the_filter(store):
    store.cluster("community", threshold=0.6, min_size=3, where={"team": "b"}, force=True)
    again = store.recluster(force=True)
    assert again.params["where"] == ["team=b"] and again.sentences == PER_TOPIC


def test_subset_run_rejects_unknown_field_before_starting(store):
    with pytest.raises(InvalidFilterError, match="unknown field 'colour'"):
        store.cluster("kmeans", k=2, where="colour=red")
    assert store.runs() == []


def test_filtered_export(store):
    run = store.cluster("kmeans", k=3)
    rows = list(store.export(run.id, where=["team=b", "n>=6"]))
    assert sorted(r["metadata"]["n"] for r in rows) == [6, 7]
    assert all(r["metadata"]["team"] == "b" for r in rows)


def test_search_with_filter_returns_the_k_best_matching_rows(tmp_path, db_url):
    s = Store.open(tmp_path / "data", db_url=db_url, device="cpu")
    try:
        texts = [f"{TOPICS['card']} extra{i}" for i in range(40)] + [
            f"{TOPICS['card']} other words {i}" for i in range(3)
        ]
        metas = [{"kind": "common"}] * 40 + [{"kind": "rare"}] * 3
        s.ingest(texts, metas)
        plain = s.search(TOPICS["card"], k=5)
        assert all(h.metadata["kind"] == "common" for h in plain)
        hits = s.search(TOPICS["card"], k=2, where="kind=rare")
        enc = FakeEncoder()
        q = enc.encode([TOPICS["card"]])[0]
        rare = enc.encode(texts[40:]) @ q
        want = [texts[40 + i] for i in np.argsort(-rare)[:2]]
        assert [h.text for h in hits] == want
        assert [h.text for h in s.search(TOPICS["card"], k=10, where="kind=rare")] == [
            texts[40 + i] for i in np.argsort(-rare)
        ]
        assert s.search(TOPICS["card"], k=3, where="kind=none") == []
        with pytest.raises(InvalidFilterError):
            s.search(TOPICS["card"], where="nokey=1")
    finally:
        s.close()


def test_search_within_on_ivf_equals_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex.ivf(16, x, nlist=64, nprobe=1)
    ids = np.arange(1000, 4000, dtype=np.int64)
    index.add(ids, x)
    allowed = rng.choice(ids, 25, replace=False)
    queries = x[:5]
    got = index.search_within(queries, 10, allowed)
    sims = queries @ x[allowed - 1000].T
    for row in range(len(queries)):
        want = allowed[np.argsort(-sims[row])[:10]]
        assert got.ids[row].tolist() == want.tolist()


def test_duplicates_and_delete_keep(tmp_path, db_url):
    s = Store.open(tmp_path / "data", db_url=db_url, device="cpu")
    try:
        base = ["alpha beta gamma delta", "red green blue yellow", "one two three four"]
        texts = [base[0], base[1], base[0] + " epsilon", base[2], base[0] + " zeta", base[1] + " purple"]
        s.ingest(texts, [{"src": "x"}, {"src": "y"}, {"src": "x"}, {"src": "x"}, {"src": "y"}, {"src": "y"}])
        s.cluster("kmeans", k=2)
        report = s.duplicates(threshold=0.8)
        assert report.sentences == 6 and report.groups == 2 and report.in_groups == 5 and report.removable == 3
        assert [g.ids for g in report.items] == [[1, 3, 5], [2, 6]] or [g.ids for g in report.items] == [
            [1, 5, 3],
            [2, 6],
        ]
        assert report.items[0].members[0].similarity == 1.0
        approx = s.duplicates(threshold=0.8, search="approximate", nprobe=4)
        assert approx.search.startswith("approximate") and [g.ids for g in approx.items] == [
            g.ids for g in report.items
        ]
        assert report.items[0].members[1].metadata["src"] in ("x", "y")
        only_x = s.duplicates(threshold=0.8, where="src=x")
        assert [sorted(g.ids) for g in only_x.items] == [[1, 3]]
        assert s.duplicates(threshold=0.8, limit=1).groups == 2
        assert len(s.duplicates(threshold=0.8, limit=1).items) == 1
        removed = s.delete_duplicates(report, keep="longest")
        assert sorted(removed) == [1, 2, 5]
        assert s.count() == 3 and s.duplicates(threshold=0.8).groups == 0
        exported = {r["id"] for r in s.export()}
        assert exported == {3, 4, 6}
    finally:
        s.close()


def test_ingest_skips_near_duplicates_counted_apart(tmp_path, db_url):
    s = Store.open(tmp_path / "data", db_url=db_url, device="cpu")
    try:
        first = s.ingest(["a b c d", "a b c d e", "w x y z", "a b c d"], near_duplicates=0.85)
        assert (first.added, first.near_duplicates, first.duplicates) == (2, 1, 1)
        second = s.ingest(["a b c d f", "w x y z", "p q r s"], near_duplicates=0.85)
        assert (second.added, second.near_duplicates, second.duplicates) == (1, 1, 1)
        third = s.ingest(["a b c d g"])
        assert (third.added, third.near_duplicates) == (1, 0)
        assert s.count() == 4
        assert s.verify().ok
        stats = s.stats()
        assert stats["near_duplicates_skipped"] == 2 and stats["duplicates_skipped"] == 2
    finally:
        s.close()
