"""Clustering runs through the Python API (``clusterer.api.Store``): edge cases, stored runs,
keywords, stable cluster ids, failed runs and guard rails."""

from __future__ import annotations

import numpy as np
import pytest

import clusterer.algorithms.agglomerative
import clusterer.service.runs
from clusterer.api import Store, UnknownClusterError
from clusterer.errors import InvalidParameterError, TooLargeError
from clusterer.service.runs import GuardRailError, NoRunError
from storage import clusters as cq

TOPICS = {
    "card": "credit card payment declined",
    "flight": "flight booking cancel refund",
    "pin": "forgot pin code reset",
}
PER_TOPIC = 8


def topic_texts(topics=TOPICS, per_topic=PER_TOPIC) -> list[str]:
    return [f"{core} {name}{i}" for name, core in topics.items() for i in range(per_topic)]


def topic_of(text: str) -> str | None:
    for name, core in TOPICS.items():
        if text.startswith(core):
            return name
    return None


@pytest.fixture
def open_store(tmp_path):
    opened = []

    def _open(**kwargs):
        store = Store.open(tmp_path / "data", **kwargs)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store):
    return open_store()


@pytest.fixture
def topic_store(store):
    store.ingest(topic_texts())
    return store


def events_of(store, run_id):
    with store.db.read() as session:
        return [
            (e.label, e.kind, e.size, list(e.related or []), dict(e.detail or {}))
            for e in cq.events(session)
            if e.run_id == run_id
        ]


def cluster_ids(store, run_id=None):
    return sorted(c.id for c in store.clusters(run_id))


def members_by_cluster(store, run_id=None):
    out: dict[int | None, set[str]] = {}
    for row in store.export(run_id):
        out.setdefault(row["cluster"], set()).add(row["text"])
    return out


# -- a basic run on both databases ---------------------------------------------------


def test_basic_community_run(tmp_path, db_url):
    with Store(tmp_path / "data", db_url=db_url) as store:
        store.ingest([*topic_texts(), "lonely sentence here", "another unrelated remark"])
        run = store.cluster("community", threshold=0.6, min_size=4)
        assert run.status == "done"
        assert run.method == "community"
        assert run.params["threshold"] == 0.6 and run.params["min_size"] == 4
        assert run.sentences == len(TOPICS) * PER_TOPIC + 2
        assert run.clusters == len(TOPICS)
        assert run.assigned == len(TOPICS) * PER_TOPIC
        assert run.unassigned == 2
        clusters = store.clusters()
        assert [c.size for c in clusters] == [PER_TOPIC] * len(TOPICS)
        groups = members_by_cluster(store)
        assert groups.pop(None) == {"lonely sentence here", "another unrelated remark"}
        for texts in groups.values():
            assert len({topic_of(t) for t in texts}) == 1
        info = store.cluster_info(clusters[0].id, limit=3)
        assert len(info.members) == 3
        assert info.members[0].id == info.centre_id
        assert info.members[0].similarity == pytest.approx(1.0, abs=1e-4)
        sims = [m.similarity for m in info.members]
        assert sims == sorted(sims, reverse=True)
        assert [r.id for r in store.runs()] == [run.id]


@pytest.mark.parametrize(
    "method,params",
    [
        ("kmeans", {"k": 3}),
        ("agglomerative", {"distance_threshold": 0.5, "linkage": "average"}),
    ],
)
def test_other_methods_find_the_topics(topic_store, method, params):
    run = topic_store.cluster(method, **params)
    assert run.status == "done" and run.clusters == len(TOPICS)
    assert run.assigned == len(TOPICS) * PER_TOPIC
    groups = members_by_cluster(topic_store)
    assert None not in groups
    assert sorted(len(v) for v in groups.values()) == [PER_TOPIC] * len(TOPICS)
    for texts in groups.values():
        assert len({topic_of(t) for t in texts}) == 1


# -- edge cases ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,params",
    [
        ("community", {"threshold": 0.75, "min_size": 2}),
        ("kmeans", {"k": 3}),
        ("agglomerative", {"distance_threshold": 1.0}),
    ],
)
def test_empty_store(store, method, params):
    run = store.cluster(method, **params)
    assert run.status == "done"
    assert (run.sentences, run.clusters, run.assigned, run.unassigned) == (0, 0, 0, 0)
    assert store.clusters() == []
    assert list(store.export()) == []


def test_fewer_sentences_than_min_size(store):
    texts = ["credit card payment declined a", "credit card payment declined b", "credit card payment declined c"]
    store.ingest(texts)
    run = store.cluster("community", threshold=0.5, min_size=10)
    assert run.status == "done"
    assert run.clusters == 0 and run.assigned == 0
    assert run.unassigned == 3 and run.sentences == 3
    rows = list(store.export())
    assert len(rows) == 3 and all(r["cluster"] is None and r["similarity"] is None for r in rows)


VARIANTS = [
    "hello world",
    "Hello world",
    "hello, world!",
    "HELLO WORLD.",
    "Hello World?",
    "hello world!!",
    "hello... world",
    "(hello world)",
]


def test_all_identical_vectors_form_one_community(store):
    report = store.ingest(VARIANTS)
    assert report.added == len(VARIANTS)  # different texts, same vector under the fake encoder
    _, x = store.embeddings()
    assert np.allclose(x, x[0], atol=1e-6)
    # min_size 5 > n / 2: the guard rail's sample is skipped
    run = store.cluster("community", threshold=0.9, min_size=5)
    assert run.clusters == 1 and run.assigned == len(VARIANTS) and run.unassigned == 0
    (only,) = store.clusters()
    assert only.size == len(VARIANTS)
    info = store.cluster_info(only.id, limit=100)
    assert {m.text for m in info.members} == set(VARIANTS)
    assert all(m.similarity == pytest.approx(1.0, abs=1e-5) for m in info.members)


def test_all_identical_vectors_trip_the_one_giant_cluster_guard(store):
    store.ingest(VARIANTS)
    with pytest.raises(GuardRailError, match="--force"):
        store.cluster("community", threshold=0.9, min_size=2)
    run = store.cluster("community", threshold=0.9, min_size=2, force=True)
    assert run.clusters == 1 and run.assigned == len(VARIANTS)


def test_threshold_one_only_clusters_identical_vectors(store):
    store.ingest(topic_texts() + VARIANTS[:3])
    run = store.cluster("community", threshold=1.0, min_size=2)
    assert run.status == "done"
    for label, texts in members_by_cluster(store).items():
        if label is not None:
            assert texts <= set(VARIANTS[:3]), texts
    # just below 1 (float32 rounding of the self-similarity), the exact duplicates do cluster
    store.cluster("community", threshold=1.0 - 1e-4, min_size=2)
    groups = members_by_cluster(store)
    assert [t for k, t in groups.items() if k is not None] == [set(VARIANTS[:3])]
    assert len(groups[None]) == len(TOPICS) * PER_TOPIC


def test_guard_hint_never_suggests_a_lower_threshold(store):
    store.ingest(VARIANTS)
    with pytest.raises(GuardRailError) as err:
        store.cluster("community", threshold=0.97, min_size=2)
    msg = str(err.value)
    assert "--force" in msg
    assert "e.g. 0.95" not in msg and "Raise --threshold" not in msg
    with pytest.raises(GuardRailError, match=r"Raise --threshold \(e.g. 0.60\)"):
        store.cluster("community", threshold=0.5, min_size=2)


def test_threshold_zero_needs_force(topic_store):
    with pytest.raises(GuardRailError) as err:
        topic_store.cluster("community", threshold=0.0, min_size=2)
    assert "--force" in str(err.value) and "threshold" in str(err.value)
    failed = topic_store.runs()[0]
    assert failed.status == "failed" and "GuardRailError" in failed.error
    with pytest.raises(NoRunError):
        topic_store.clusters()
    run = topic_store.cluster("community", threshold=0.0, min_size=2, force=True)
    assert run.status == "done" and run.clusters >= 1
    assert max(c.size for c in topic_store.clusters()) > len(TOPICS) * PER_TOPIC / 2


def test_k_larger_than_the_store(topic_store):
    n = len(TOPICS) * PER_TOPIC
    with pytest.raises(InvalidParameterError) as err:
        topic_store.cluster("kmeans", k=n + 1)
    msg = str(err.value)
    assert f"k={n + 1}" in msg and str(n) in msg
    assert topic_store.runs()[0].status == "failed"


def test_invalid_parameters(topic_store):
    with pytest.raises(InvalidParameterError, match="unknown method"):
        topic_store.cluster("spectral")
    with pytest.raises(InvalidParameterError, match="threshold"):
        topic_store.cluster("kmeans", k=3, threshold=0.5)
    with pytest.raises(InvalidParameterError, match="threshold"):
        topic_store.cluster("community", threshold=1.5, min_size=2)
    with pytest.raises(InvalidParameterError, match="min-size"):
        topic_store.cluster("community", threshold=0.5, min_size=0)
    with pytest.raises(InvalidParameterError, match="linkage"):
        topic_store.cluster("agglomerative", distance_threshold=1.0, linkage="single")


def test_agglomerative_over_the_size_limit(topic_store, monkeypatch):
    monkeypatch.setattr(clusterer.algorithms.agglomerative, "MAX_AGGLOMERATIVE_SIZE", 5)
    with pytest.raises(TooLargeError) as err:
        topic_store.cluster("agglomerative", distance_threshold=1.0)
    msg = str(err.value)
    assert "community" in msg or "kmeans" in msg
    assert "5" in msg
    assert topic_store.runs()[0].status == "failed"


# -- keywords ------------------------------------------------------------------------


def test_keywords_come_from_the_cluster_texts(store):
    texts = [f"credit card payment declined at shop {i}" for i in range(6)]
    texts += [f"flight booking cancel for trip {i}" for i in range(6)]
    store.ingest(texts)
    run = store.cluster("community", threshold=0.6, min_size=3)
    assert run.clusters == 2
    by_topic = {}
    for c in store.clusters():
        words = {w for k in c.keywords for w in k.split()}
        key = "card" if "card" in c.centre_text else "flight"
        by_topic[key] = words
        assert len(c.keyword_scores) == len(c.keywords)
        assert c.keyword_scores == sorted(c.keyword_scores, reverse=True)
    assert {"card", "payment", "declined"} <= by_topic["card"]
    assert not {"flight", "booking"} & by_topic["card"]
    assert {"flight", "booking", "cancel"} <= by_topic["flight"]
    assert not {"card", "payment"} & by_topic["flight"]


# -- runs are stored -------------------------------------------------------------------


def test_runs_are_listed_and_latest_wins(topic_store):
    first = topic_store.cluster("community", threshold=0.6, min_size=4)
    second = topic_store.cluster("kmeans", k=2)
    third = topic_store.cluster("agglomerative", distance_threshold=0.5, linkage="average")
    assert [r.id for r in topic_store.runs()] == [third.id, second.id, first.id]
    assert [r.method for r in topic_store.runs()] == ["agglomerative", "kmeans", "community"]
    assert topic_store.run().id == third.id
    assert {c.run_id for c in topic_store.clusters()} == {third.id}
    assert len(topic_store.clusters(second.id)) == 2
    assert len(topic_store.clusters(first.id)) == len(TOPICS)
    assert topic_store.run(first.id).method == "community"
    some = topic_store.clusters(second.id)[0]
    info = topic_store.cluster_info(some.id, run_id=second.id)
    assert info.run_id == second.id and info.size == some.size
    assert len(list(topic_store.export(first.id))) == len(TOPICS) * PER_TOPIC
    assert topic_store.runs(limit=1)[0].id == third.id


def test_no_run_yet(topic_store):
    with pytest.raises(NoRunError, match="no clustering run"):
        topic_store.clusters()
    with pytest.raises(NoRunError):
        topic_store.run()
    assert topic_store.runs() == []


def test_unknown_cluster_and_run(topic_store):
    topic_store.cluster("community", threshold=0.6, min_size=4)
    with pytest.raises(UnknownClusterError, match="99999"):
        topic_store.cluster_info(99999)
    with pytest.raises(NoRunError, match="424242"):
        topic_store.clusters(424242)


# -- stable ids ----------------------------------------------------------------------


def test_same_clustering_twice_keeps_every_id(topic_store):
    first = topic_store.cluster("community", threshold=0.6, min_size=4)
    second = topic_store.cluster("community", threshold=0.6, min_size=4)
    ids1, ids2 = cluster_ids(topic_store, first.id), cluster_ids(topic_store, second.id)
    assert len(ids1) == len(TOPICS)
    assert ids2 == ids1
    assert members_by_cluster(topic_store, first.id) == members_by_cluster(topic_store, second.id)
    ev1 = events_of(topic_store, first.id)
    assert sorted(label for label, kind, *_ in ev1 if kind == "birth") == ids1
    ev2 = events_of(topic_store, second.id)
    assert sorted(label for label, kind, *_ in ev2 if kind == "continued") == ids1
    assert {kind for _, kind, *_ in ev2} == {"continued"}


def test_ids_survive_new_sentences(topic_store):
    first = topic_store.cluster("community", threshold=0.6, min_size=4)
    topic_store.ingest([f"{core} extra{name}" for name, core in TOPICS.items()])
    second = topic_store.cluster("community", threshold=0.6, min_size=4)
    assert cluster_ids(topic_store, second.id) == cluster_ids(topic_store, first.id)
    old = {frozenset(v): k for k, v in members_by_cluster(topic_store, first.id).items()}
    for label, texts in members_by_cluster(topic_store, second.id).items():
        topic = {topic_of(t) for t in texts}
        assert len(topic) == 1
        previous = [k for members, k in old.items() if {topic_of(t) for t in members} == topic]
        assert previous == [label]


def test_new_ids_are_never_reused(topic_store):
    first = topic_store.cluster("community", threshold=0.6, min_size=4)
    old_ids = cluster_ids(topic_store, first.id)
    # one cluster of everything: at most one old id continues, the others die
    merged = topic_store.cluster("kmeans", k=1)
    (m,) = topic_store.clusters(merged.id)
    assert m.id in old_ids
    kinds = [kind for _, kind, *_ in events_of(topic_store, merged.id)]
    assert kinds.count("death") == len(TOPICS) - 1
    # split again: the dead ids must not come back
    again = topic_store.cluster("community", threshold=0.6, min_size=4)
    new_ids = cluster_ids(topic_store, again.id)
    dead = set(old_ids) - {m.id}
    assert not dead & set(new_ids)
    assert m.id in new_ids
    assert all(i > max(old_ids) for i in set(new_ids) - {m.id})


# -- failed runs ---------------------------------------------------------------------


def test_failing_run_is_recorded_and_not_latest(topic_store, monkeypatch):
    good = topic_store.cluster("community", threshold=0.6, min_size=4)

    def boom(*args, **kwargs):
        raise RuntimeError("algorithm exploded")

    monkeypatch.setattr(clusterer.service.runs, "compute_labels", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        topic_store.cluster("kmeans", k=3)
    runs = topic_store.runs()
    assert [r.status for r in runs] == ["failed", "done"]
    assert "algorithm exploded" in runs[0].error
    assert topic_store.run().id == good.id
    assert {c.run_id for c in topic_store.clusters()} == {good.id}
    assert topic_store.clusters(runs[0].id) == []
    monkeypatch.undo()
    # the next good run still continues the ids of the last good run
    after = topic_store.cluster("community", threshold=0.6, min_size=4)
    assert cluster_ids(topic_store, after.id) == cluster_ids(topic_store, good.id)


def test_store_reopened_sees_runs(open_store, tmp_path):
    store = open_store()
    store.ingest(topic_texts())
    run = store.cluster("community", threshold=0.6, min_size=4)
    store.close()
    again = open_store()
    assert again.run().id == run.id
    assert len(again.clusters()) == len(TOPICS)
