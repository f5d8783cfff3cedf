"""Curation edits through the Python API (clusterer.service.curation, curation_writer):
merge, split, label and unmerge, and each edit surviving ingest and recluster, on SQLite and
PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest

from clusterer.algorithms import topics
from clusterer.api import Store
from clusterer.errors import CurationError, UnknownClusterError
from clusterer.service.runs import NoRunError
from storage import clusters as cq
from tests.test_upkeep import TOPICS, consistent, topic_of, topic_texts


@pytest.fixture
def store(tmp_path, db_url, monkeypatch):
    """A leiden store of the three fake topics (k 10, resolution 1, min size 5: one cluster each)."""
    original = Store.cluster

    def cluster(self, method=None, **params):
        for name, value in (("k", 10), ("resolution", 1.0), ("min_size", 5)):
            params.setdefault(name, value)
        return original(self, method, **params)

    monkeypatch.setattr(Store, "cluster", cluster)
    s = Store.open(tmp_path / "data", db_url=db_url, device="cpu")
    s.ingest(topic_texts())
    s.cluster("leiden")
    yield s
    s.close()


def clustered_dir(path):
    """A data folder holding the topic corpus and BANK, clustered by leiden at resolution 1."""
    with Store.open(path, device="cpu") as s:
        s.ingest(topic_texts() + BANK)
        s.cluster("leiden", k=10, resolution=1.0, min_size=5)
    return path


def members(store, cluster_id):
    return {m.id for m in store.members(cluster_id, limit=100_000)}


def test_merge_keeps_the_largest_id_and_sums_terms(store):
    ids = topic_of(store)
    store.ingest(topic_texts(per_topic=2, start=50, topics={"card": TOPICS["card"]}))  # card is now largest
    ids = topic_of(store)
    card, flight = ids["card"], ids["flight"]
    before = members(store, card) | members(store, flight)
    counts_before = {
        c.id: topics.term_counts([m.text for m in store.members(c.id, limit=1000)]) for c in store.clusters()
    }
    edit = store.merge([flight, card])
    assert edit.kind == "merge" and edit.cluster_id == card and edit.related == [flight] and edit.size == 26
    assert members(store, card) == before
    with pytest.raises(UnknownClusterError):
        store.cluster_info(flight)
    assert [c.id for c in store.clusters()] == [card, ids["pin"]]
    run = consistent(store)  # sizes, counters, term counts and keywords equal a recount
    assert run.n_clusters == 2
    merged_counts = dict(topics.term_counts([m.text for m in store.members(card, limit=1000)]))
    expected = dict(counts_before[card])
    for term, c in counts_before[flight].items():
        expected[term] = expected.get(term, 0) + c
    assert merged_counts == expected
    info = store.cluster_info(card)
    centroid = topics.normalized_centroid(store.embeddings(sorted(before))[1])
    assert info.centre_id in before and info.cohesion == pytest.approx(
        float(np.mean(store.embeddings(sorted(before))[1] @ centroid)), abs=1e-5
    )
    kinds = [(e.kind, e.related) for e in store.history(card)]
    assert ("merge", [flight]) in kinds
    assert [e.detail.get("merged_into") for e in store.history(flight) if e.kind == "death"] == [card]
    coarse = store.clusters(level="coarse")
    assert sum(t.size for t in coarse) == sum(c.size for c in store.clusters())


def test_merge_survives_ingest_and_recluster_until_unmerged(store):
    ids = topic_of(store)
    card, flight, pin = ids["card"], ids["flight"], ids["pin"]
    target = store.merge([card, flight]).cluster_id
    source = flight if target == card else card
    # new sentences of either topic join the merged cluster (its id is the only one left)
    new = topic_texts(per_topic=2, start=100, topics={"card": TOPICS["card"], "flight": TOPICS["flight"]})
    report = store.ingest(new)
    assert report.clustering["assigned"] == 4 and report.clustering["new_clusters"] == 0
    assert store.cluster_info(target).size == 28
    together = members(store, target)
    run = store.recluster()
    assert {c.id for c in store.clusters()} == {target, pin}
    assert members(store, target) == together
    assert any(e.kind == "kept" and e.run_id == run.id for e in store.history(target))
    consistent(store)
    # undone: the sentences the merge moved go back to their id, and the next run may part them
    undone = store.unmerge(target)
    assert undone.kind == "unmerge" and undone.related == [source]
    assert store.cluster_info(source).size == 12 and store.cluster_info(target).size == 16
    consistent(store)
    store.recluster()
    assert {c.id for c in store.clusters()} == {card, flight, pin}
    with pytest.raises(CurationError, match="no merge to undo"):
        store.unmerge(target)


def test_split_gives_new_ids_and_parts_stay_apart_through_ingest_and_recluster(store):
    ids = topic_of(store)
    card, flight, pin = ids["card"], ids["flight"], ids["pin"]
    merged = store.merge([card, flight]).cluster_id
    top = max(ids.values())
    edit = store.split(merged)
    children = edit.related
    assert len(children) == 2 and min(children) > top
    assert sorted(p["size"] for p in edit.detail["parts"]) == [12, 12]
    assert {c.id for c in store.clusters()} == {pin, *children}
    with pytest.raises(UnknownClusterError):
        store.cluster_info(merged)
    parts = {c: members(store, c) for c in children}
    assert [e.kind for e in store.history(merged)][-1] == "split"
    assert all(any(e.kind == "split" and e.related == [merged] for e in store.history(c)) for c in children)
    consistent(store)
    store.ingest(topic_texts(per_topic=1, start=200))
    store.recluster()
    for c in children:
        assert parts[c] <= members(store, c)
    consistent(store)


BANK = [f"bank transfer sent wrong account visa online a{i}" for i in range(6)] + [
    f"bank transfer sent wrong account amex abroad b{i}" for i in range(6)
]


def test_split_constraint_keeps_parts_the_method_would_join(store):
    store.ingest(BANK)
    store.recluster()
    bank = next(c.id for c in store.clusters() if "bank transfer" in c.keywords)
    assert store.cluster_info(bank).size == 12  # the run sees one cluster
    edit = store.split(bank)
    children = edit.related
    parts = {c: members(store, c) for c in children}
    assert sorted(len(p) for p in parts.values()) == [6, 6]
    texts = {c: {m.text.split()[5] for m in store.members(c)} for c in children}
    assert sorted(map(sorted, texts.values())) == [["amex"], ["visa"]]
    store.ingest(["bank transfer sent wrong account visa online a99"])
    run = store.recluster()  # the method alone joins them again
    assert {c: members(store, c) for c in children}[children[0]] >= parts[children[0]]
    assert all(members(store, c) >= parts[c] for c in children)
    assert any(e.kind == "kept" and e.run_id == run.id for c in children for e in store.history(c))
    consistent(store)
    # merging the parts ends the split: the next run keeps them as one
    store.merge(children)
    store.recluster()
    assert len([c for c in store.clusters() if c.id in children]) == 1


def test_labels_show_everywhere_and_stay_on_their_ids(store):
    ids = topic_of(store)
    card = ids["card"]
    edit = store.label(card, "  card   payments ")
    assert edit.label == "card payments"
    assert {c.id: c.label for c in store.clusters()}[card] == "card payments"
    assert store.cluster_info(card).label == "card payments"
    assert store.cluster_info(ids["pin"]).label is None
    rows = {r["cluster"]: r["cluster_label"] for r in store.export()}
    assert rows[card] == "card payments" and rows[ids["pin"]] is None
    assert store.lookup(TOPICS["card"] + " card999")["cluster"]["label"] == "card payments"
    store.ingest(topic_texts(per_topic=2, start=300))
    store.recluster()
    assert store.cluster_info(card).label == "card payments"
    topic = store.clusters(level="coarse")[0].id
    store.label(topic, "a topic")
    assert store.clusters(level="coarse")[0].label == "a topic"
    cleared = store.label(card, None)
    assert cleared.detail == {"cleared": True} and store.cluster_info(card).label is None
    assert store.label(card, None).detail == {"cleared": False}
    assert any(e.kind == "label" for e in store.history(card))


def test_bad_edits_are_refused_with_one_line(store):
    ids = topic_of(store)
    card = ids["card"]
    with pytest.raises(UnknownClusterError, match="no cluster 999 in run"):
        store.merge([card, 999])
    with pytest.raises(CurationError, match=f"cannot merge cluster {card} with itself"):
        store.merge([card, card])
    with pytest.raises(CurationError, match="at least two"):
        store.merge([card])
    topic = store.clusters(level="coarse")[0].id
    with pytest.raises(CurationError, match="coarse topic"):
        store.merge([card, topic])
    with pytest.raises(CurationError, match="coarse topic"):
        store.split(topic)
    with pytest.raises(CurationError, match="does not split"):
        store.split(card, resolution=0.001)
    with pytest.raises(CurationError, match="needs some text"):
        store.label(card, "   ")
    with pytest.raises(UnknownClusterError):
        store.label(999, "x")
    # nothing of the refused edits was stored
    assert {c.id for c in store.clusters()} == set(ids.values())
    consistent(store)


def test_edits_need_a_run(tmp_path):
    with Store.open(tmp_path / "empty", device="cpu") as s:
        s.ingest(["one sentence"])
        with pytest.raises(NoRunError):
            s.merge([1, 2])
        with pytest.raises(NoRunError):
            s.label(1, "x")


def test_another_store_sees_an_edit_made_elsewhere(tmp_path):
    """Upkeep's cached centroids (k-means: the centroid rule) are dropped when another process
    edits the run: new sentences join the merged cluster, never the id that is gone."""
    path = tmp_path / "shared"
    with Store.open(path, device="cpu") as first:
        first.ingest(topic_texts())
        first.cluster("kmeans", k=3)
        first.ingest(topic_texts(per_topic=1, start=500))  # fills first's centroid cache
        ids = topic_of(first)
        with Store.open(path, device="cpu") as second:
            target = second.merge([ids["card"], ids["flight"]]).cluster_id
        gone = ids["flight"] if target == ids["card"] else ids["card"]
        first.ingest(topic_texts(per_topic=2, start=600, topics={"flight": TOPICS["flight"], "card": TOPICS["card"]}))
        assert {c.id for c in first.clusters()} == {target, ids["pin"]}
        assert first.cluster_info(target).size == 30
        with pytest.raises(UnknownClusterError):
            first.cluster_info(gone)
        consistent(first, keywords=False)


def test_apply_constraints_composes_with_a_relabelling(store):
    """The hook a re-optimisation calls: current labels in, constrained labels out."""
    from clusterer.service.curation import apply_constraints, load_constraints

    ids = topic_of(store)
    target = store.merge([ids["card"], ids["flight"]]).cluster_id
    with store.db.read() as session:
        sids, labels, _ = cq.assignments_of_run(session, cq.latest_run(session).id)
        now = np.array([-1 if l is None else l for l in labels])
        constraints = load_constraints(session, np.array(sids), now)
    relabelled = np.where(now == target, np.arange(len(now)) % 2 + 1000, now)  # a method that parts them
    out = apply_constraints(relabelled, np.array(sids), constraints)
    assert np.array_equal(out, now)
