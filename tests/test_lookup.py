"""Lookups through the Python API: lookup (nothing stored), cluster_of, members, unassigned,
history, on community and k-means runs."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from clusterer.api import Store, UnknownClusterError, UnknownSentenceError
from clusterer.service.runs import NoRunError
from storage.models import Assignment
from tests.fakes import NOISE, TOPICS, topic_texts


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "data", device="cpu")
    s.ingest(topic_texts() + NOISE)
    yield s
    s.close()


@pytest.fixture
def clustered(store):
    store.cluster("community", threshold=0.6, min_size=5)
    return store


def topic_clusters(store):
    out = {}
    for c in store.clusters():
        first = store.members(c.id, limit=1)[0].text
        out[next(n for n, core in TOPICS.items() if first.startswith(core))] = c.id
    return out


def assignment_rows(store):
    with store.db.read() as session:
        return session.scalar(select(func.count()).select_from(Assignment))


def test_lookup_returns_the_cluster_of_the_nearest_members_and_stores_nothing(clustered):
    store = clustered
    ids = topic_clusters(store)
    count, rows = store.count(), assignment_rows(store)
    out = store.lookup("forgot pin code reset please")
    assert out["cluster_id"] == ids["pin"] and out["method"] == "community"
    assert out["run_id"] == store.run().id
    assert out["votes"] >= 5 and 0.6 <= out["similarity"] <= 1.0
    cluster = out["cluster"]
    assert cluster["id"] == ids["pin"] and cluster["size"] == 8
    assert any("pin" in k for k in cluster["keywords"][:3])
    assert len(cluster["members"]) == 5 and all(m["text"].startswith(TOPICS["pin"]) for m in cluster["members"])
    sims = [m["similarity"] for m in cluster["members"]]
    assert sims == sorted(sims, reverse=True)
    assert out["nearest"][0]["text"].startswith(TOPICS["pin"]) and out["nearest"][0]["cluster"] == ids["pin"]
    assert [n["similarity"] for n in out["nearest"]] == sorted((n["similarity"] for n in out["nearest"]), reverse=True)
    assert len(store.lookup("forgot pin code reset", members=2)["cluster"]["members"]) == 2
    # nothing was stored
    assert store.count() == count and assignment_rows(store) == rows
    assert store.run().sentences == count
    assert not store.search("forgot pin code reset please", k=1)[0].text.endswith("please")


def test_lookup_counts_every_member_above_the_threshold_beyond_one_scan(tmp_path):
    from clusterer.service.lookups import SCAN as LOOKUP_SCAN

    with Store.open(tmp_path / "big", device="cpu") as store:
        store.ingest(topic_texts(per_topic=LOOKUP_SCAN + 16))
        store.cluster("community", threshold=0.6, min_size=5)
        out = store.lookup("forgot pin code reset please")
        assert out["votes"] == LOOKUP_SCAN + 16 == out["cluster"]["size"]
        assert len(out["nearest"]) == 10


def test_lookup_of_a_sentence_that_fits_nowhere(clustered):
    out = clustered.lookup("zebra quantum umbrella")
    assert out["cluster_id"] is None and out["cluster"] is None and out["similarity"] is None
    assert out["votes"] == 0 and out["nearest"]


def test_lookup_keeps_the_model_loaded(clustered):
    clustered.lookup("credit card payment declined")
    encoder = clustered.encoder
    for text in ("flight booking cancel", "forgot pin", "credit card declined"):
        clustered.lookup(text)
    assert clustered.encoder is encoder


def test_lookup_before_any_run(store):
    with pytest.raises(NoRunError, match="no clustering run"):
        store.lookup("credit card payment declined")


def test_cluster_of_current_and_history_across_runs(clustered):
    store = clustered
    first = store.run()
    sid = store.search("credit card payment declined card3", k=1)[0].id
    now = store.cluster_of(sid)
    card = topic_clusters(store)["card"]
    assert now["sentence"]["id"] == sid and now["sentence"]["text"] == "credit card payment declined card3"
    assert now["run_id"] == first.id and now["cluster_id"] == card and not now["pending"]
    assert now["cluster"]["id"] == card and now["similarity"] > 0.6
    assert [h["run_id"] for h in now["history"]] == [first.id]
    second = store.cluster("kmeans", k=3)
    later = store.cluster_of(sid)
    assert later["run_id"] == second.id
    assert [(h["run_id"], h["method"]) for h in later["history"]] == [(first.id, "community"), (second.id, "kmeans")]
    assert later["history"][0]["cluster"] == card
    noise = store.search(NOISE[0], k=1)[0].id
    info = store.cluster_of(noise)
    assert info["history"][0]["cluster"] is None  # unassigned in the community run


def test_cluster_of_errors(store):
    with pytest.raises(NoRunError):
        store.cluster_of(store.search("credit card", k=1)[0].id)
    store.cluster("community", threshold=0.6, min_size=5)
    with pytest.raises(UnknownSentenceError, match="999999"):
        store.cluster_of(999999)


def test_sentence_ingested_after_the_run_is_assigned_not_pending(clustered):
    report = clustered.ingest(["credit card payment declined card99"])
    info = clustered.cluster_of(report.ids[0])
    assert not info["pending"] and info["cluster_id"] == topic_clusters(clustered)["card"]


def test_members_paging(clustered):
    cid = topic_clusters(clustered)["flight"]
    everything = clustered.members(cid, limit=100)
    assert len(everything) == 8
    sims = [m.similarity for m in everything]
    assert sims == sorted(sims, reverse=True)
    pages = [clustered.members(cid, offset=o, limit=3) for o in (0, 3, 6, 9)]
    assert [len(p) for p in pages] == [3, 3, 2, 0]
    assert [m.id for p in pages for m in p] == [m.id for m in everything]
    with pytest.raises(UnknownClusterError):
        clustered.members(424242)


def test_unassigned_total_and_page(clustered):
    total, page = clustered.unassigned()
    assert total == len(NOISE) and sorted(m.text for m in page) == sorted(NOISE)
    total2, page2 = clustered.unassigned(offset=1, limit=2)
    assert total2 == len(NOISE) and [m.id for m in page2] == [m.id for m in page][1:3]
    assert all(m.similarity is None for m in page)
    clustered.ingest(["zebra quantum umbrella"])
    assert clustered.unassigned()[0] == len(NOISE) + 1


def test_history_events(clustered):
    store = clustered
    cid = topic_clusters(store)["card"]
    run1 = store.run().id
    hist = store.history(cid)
    assert [(e.kind, e.run_id, e.size) for e in hist] == [("birth", run1, 8)]
    assert hist[0].at is not None
    store.ingest(topic_texts(per_topic=2, start=40)[:2])
    grown = store.history(cid)
    assert [e.kind for e in grown] == ["birth", "growth"] and grown[-1].size == 10
    run2 = store.recluster().id
    last = store.history(cid)[-1]
    assert (last.kind, last.run_id, last.size) == ("continued", run2, 10)
    assert last.detail == {"previous_size": 10}
    with pytest.raises(UnknownClusterError):
        store.history(424242)


def test_lookups_on_a_kmeans_run(store):
    run = store.cluster("kmeans", k=3, seed=0)
    out = store.lookup("flight booking cancel refund now")
    assert out["method"] == "kmeans" and out["run_id"] == run.id and out["votes"] == 0
    cid = out["cluster_id"]
    assert cid is not None and out["cluster"]["id"] == cid
    vec = store.embed(["flight booking cancel refund now"])[0]
    with store.db.read() as session:
        from storage import clusters as cq

        centroids = {c.label: np.frombuffer(c.centroid, np.float32) for c in cq.clusters_of_run(session, run.id)}
    nearest = max(centroids, key=lambda l: float(vec @ centroids[l]))
    assert cid == nearest
    assert out["similarity"] == pytest.approx(float(vec @ centroids[nearest]), abs=1e-5)
    # stored sentences look up to the cluster the run gave them (nearest centroid at convergence)
    for text in ("flight booking cancel refund flight2", "forgot pin code reset pin4", NOISE[1]):
        hit = store.search(text, k=1)[0]
        assert store.lookup(text)["cluster_id"] == store.cluster_of(hit.id)["cluster_id"]
    # even a sentence far from everything gets the nearest centroid
    assert store.lookup("zebra quantum umbrella")["cluster_id"] is not None


def test_lookup_cards_are_cached_until_the_store_changes(tmp_path, clustered):
    store = clustered
    pin = topic_clusters(store)["pin"]
    first = store.lookup("forgot pin code reset please")
    hits = store.lookup_caches.cards.hits
    again = store.lookup("forgot pin code reset again")
    assert again["cluster"] == first["cluster"] and store.lookup_caches.cards.hits == hits + 1
    again["cluster"]["members"][0]["text"] = "changed by the caller"
    again["cluster"]["keywords"].append("mine")
    assert store.lookup("forgot pin code reset")["cluster"] == first["cluster"]  # the cached card is untouched

    report = store.ingest([TOPICS["pin"] + " once more"])  # a new member: the card is read again
    assert report.clustering["assigned"] == 1
    grown = store.lookup("forgot pin code reset please")["cluster"]
    assert grown["size"] == first["cluster"]["size"] + 1
    store.label(pin, "PIN resets")
    assert store.lookup("forgot pin code reset please")["cluster"]["label"] == "PIN resets"

    other = Store.open(store.data_dir, device="cpu")  # another process's writes are seen too
    try:
        other.label(pin, "PINs")
        other.delete([other.members(pin, limit=1)[0].id])
    finally:
        other.close()
    after = store.lookup("forgot pin code reset please")["cluster"]
    assert after["label"] == "PINs" and after["size"] == grown["size"] - 1
