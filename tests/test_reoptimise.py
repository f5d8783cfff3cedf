"""Automatic re-optimisation of leiden runs as the store grows (clusterer.service.reoptimise):
the drift rule, streams on the fake encoder whose granularity must change with growth, ids and
events, every face (Store.ingest, the server's batch writer, the CLI, runs over a subset), the
stored kNN graph reused by recluster, and community runs left as they were."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

from clusterer.api import Store
from clusterer.cli import cli
from clusterer.service import reoptimise
from clusterer.service import run_graph as rg
from clusterer.service.batches import Batch, ingest_batches
from tests.fakes import FakeEncoder

# -- the rule (pure) ----------------------------------------------------------------------


def test_due_when_a_quarter_of_the_run_is_in_clusters_founded_since():
    params = {"stats": {"optimised_sentences": 100}}
    assert reoptimise.due("leiden", params, 150, 3, born=37) is None
    trigger = reoptimise.due("leiden", params, 150, 3, born=38)
    assert trigger["rule"] == "births" and trigger["born_sentences"] == 38
    assert trigger["reason"] == "25% of the sentences are in clusters founded since the last optimisation"
    assert reoptimise.due("community", params, 150, 3, born=100) is None


def test_due_at_twice_the_optimised_size_for_leiden_only():
    params = {"stats": {"optimised_sentences": 100}}
    assert reoptimise.due("leiden", params, 199, 3) is None
    trigger = reoptimise.due("leiden", params, 200, 3)
    assert trigger is not None and trigger["previous_run"] == 3 and trigger["growth"] == 2.0
    assert trigger["reason"] == "store grew 2.0x since the last optimisation"
    assert reoptimise.due("community", params, 1000, 3) is None
    assert reoptimise.due("kmeans", params, 1000, 3) is None
    assert reoptimise.due("leiden", {"stats": {"distinct_points": 10}}, 25, 1)["growth"] == 2.5
    assert reoptimise.due("leiden", {}, 10**6, 1) is None  # nothing to compare with


# -- a corpus whose right granularity changes with its size ---------------------------------

TOPICS, SUBTOPICS, PER = 15, 4, 40


def hierarchical(order: str) -> tuple[list[str], dict[str, int]]:
    """15 topics of 4 subtopics each (a subtopic's sentences share 5 of 6 words, a topic's 3).
    With a few sentences per subtopic the right clusters are the topics (subtopics are smaller
    than the minimum size); with 40 each the subtopics separate: a granularity chosen on the
    first tenth is wrong for the whole."""
    rows = [
        (f"topic{a}w1 topic{a}w2 topic{a}w3 sub{a}x{b}p sub{a}x{b}q uniq{a}x{b}x{i}", a * SUBTOPICS + b)
        for a in range(TOPICS)
        for b in range(SUBTOPICS)
        for i in range(PER)
    ]
    if order == "random":
        random.Random(1).shuffle(rows)
    return [t for t, _ in rows], dict(rows)


def _ari(store, truth, run_id=None) -> float:
    rows = list(store.export(run_id))
    labels = [r["cluster"] if r["cluster"] is not None else -1 - i for i, r in enumerate(rows)]
    return adjusted_rand_score([truth[r["text"]] for r in rows], labels)


def _stream(tmp_path, order: str, first: float = 0.1, batches: int = 9, db_url: str | None = None):
    texts, truth = hierarchical(order)
    store = Store.open(tmp_path / "data", db_url=db_url, encoder=FakeEncoder(dimension=128), device="cpu")
    n0 = int(first * len(texts))
    store.ingest(texts[:n0])
    store.cluster()
    reports = [store.ingest([texts[i] for i in part]) for part in np.array_split(np.arange(n0, len(texts)), batches)]
    return store, truth, reports


@pytest.mark.parametrize("order", ["random", "label"])
def test_a_stream_stays_as_right_as_a_full_run(tmp_path, order):
    store, truth, reports = _stream(tmp_path, order)
    try:
        streamed = _ari(store, truth)
        done = [r.upkeep for r in reports if r.upkeep]
        if order == "random":  # no new topics: the doubling schedule only
            assert [d["reason"] for d in done] == ["store grew 2.0x since the last optimisation"] * 3
        else:  # whole topics arrive late: clusters founded by upkeep also trigger it
            assert any("in clusters founded since the last optimisation" in d["reason"] for d in done)
        full = store.cluster()
        full_ari = _ari(store, truth, full.id)
        assert full_ari > 0.9  # the subtopics
        assert streamed >= 0.9 * full_ari, f"streamed ARI {streamed:.3f} vs full {full_ari:.3f}"
    finally:
        store.close()


def test_reoptimisation_is_a_recorded_run_with_its_reason_and_events(tmp_path, db_url):
    store, _truth, reports = _stream(tmp_path, "random", db_url=db_url)
    try:
        runs = store.runs()
        made = [r for r in runs if r.params["stats"].get("trigger")]
        assert len(made) == 3 and len(runs) == 4
        trigger = made[0].params["stats"]["trigger"]
        assert trigger["by"] == "upkeep" and trigger["previous_run"] == made[0].id - 1
        graphs = [r.params["stats"]["graph"] for r in reversed(made)]  # oldest first
        assert graphs[0]["searched_rows"] == 0  # at 2x the stored rows are all current enough
        # later, rows searched when the store was under half its size are searched again
        assert all(g["searched_rows"] == g["stale_rows"] > 0 for g in graphs[1:])
        assert all(g["stored_rows"] > g["searched_rows"] for g in graphs)
        done = next(r.upkeep for r in reports if r.upkeep)
        assert done["message"].startswith("re-optimised (store grew 2.0x since the last optimisation): ")
        events = [e for r in made for e in store.events(r.id)]
        kinds = {e.kind for e in events}
        assert "continued" in kinds and kinds & {"split", "birth"}
        split = next(e for e in events if e.kind in ("split", "birth") and e.related)
        assert any(h.kind in ("split", "birth") for h in store.history(split.cluster_id))
    finally:
        store.close()


def test_ids_persist_across_a_reoptimisation_that_changes_nothing(tmp_path):
    texts, _ = hierarchical("label")
    store = Store.open(tmp_path / "data", encoder=FakeEncoder(dimension=128), device="cpu")
    try:
        whole = [t for t in texts if " sub0x" in t or " sub1x" in t]  # two topics, all their subtopics
        store.ingest(whole[: len(whole) // 2])
        store.cluster()
        before = {r["id"]: r["cluster"] for r in store.export()}
        report = store.ingest(whole[len(whole) // 2 :])
        assert report.upkeep["action"] == "re-optimised"
        after = {r["id"]: r["cluster"] for r in store.export()}
        kept = sum(after[i] == c for i, c in before.items() if c is not None)
        assert kept >= 0.9 * sum(c is not None for c in before.values())
    finally:
        store.close()


def test_every_face_follows_the_rule(tmp_path):
    texts, _ = hierarchical("random")
    texts = texts[:400]
    # the server's writer stores batches through ingest_batches
    store = Store.open(tmp_path / "server", encoder=FakeEncoder(dimension=128), device="cpu")
    try:
        store.ingest(texts[:100])
        store.cluster()
        ingest_batches(store, [Batch(texts[100:150]), Batch(texts[150:200])])
        assert len(store.runs()) == 2 and store.run().params["stats"]["trigger"]["sentences"] == 200
    finally:
        store.close()
    # the command line says what upkeep did
    data = tmp_path / "cli"
    (tmp_path / "a.txt").write_text("\n".join(texts[:100]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(texts[100:250]) + "\n")
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(tmp_path / "a.txt"), "--data-dir", str(data)]).exit_code == 0
    assert runner.invoke(cli, ["cluster", "--data-dir", str(data)]).exit_code == 0
    out = runner.invoke(cli, ["ingest", str(tmp_path / "b.txt"), "--data-dir", str(data)])
    assert out.exit_code == 0, out.output
    assert "upkeep: re-optimised (store grew 2.5x since the last optimisation): " in out.output
    listed = runner.invoke(cli, ["runs", "--data-dir", str(data)])
    assert "made by upkeep: store grew 2.5x since the last optimisation (after run 1)" in listed.output
    as_json = json.loads(runner.invoke(cli, ["runs", "--json", "--data-dir", str(data)]).output)
    assert as_json["runs"][0]["params"]["stats"]["trigger"]["previous_run"] == 1


def test_a_run_over_a_subset_is_reoptimised_over_that_subset(tmp_path):
    texts, _ = hierarchical("random")
    store = Store.open(tmp_path / "data", encoder=FakeEncoder(dimension=128), device="cpu")
    try:
        meta = [{"lang": "en" if i % 2 else "fr"} for i in range(400)]
        store.ingest(texts[:100], meta[:100])
        store.cluster(where="lang=en")
        report = store.ingest(texts[100:300], meta[100:300])  # 100 more en: the subset doubled
        assert report.upkeep["action"] == "re-optimised"
        run = store.run()
        assert run.params["where"] == ["lang=en"] and run.sentences == 150
        assert run.params["stats"]["optimised_sentences"] == 150
    finally:
        store.close()


def test_community_runs_keep_their_upkeep(tmp_path):
    texts, _ = hierarchical("random")
    store = Store.open(tmp_path / "data", encoder=FakeEncoder(dimension=128), device="cpu")
    try:
        store.ingest(texts[:100])
        store.cluster("community", threshold=0.6, min_size=3)
        report = store.ingest(texts[100:400])
        assert not report.upkeep and len(store.runs()) == 1
    finally:
        store.close()


def test_recluster_at_a_new_resolution_reuses_the_stored_graph(tmp_path):
    texts, _ = hierarchical("random")
    store = Store.open(tmp_path / "data", encoder=FakeEncoder(dimension=128), device="cpu")
    try:
        store.ingest(texts[:600])
        first = store.cluster()
        assert rg.load_graph(store.data_dir, first.id) is not None
        store.ingest(texts[600:700])  # appended rows
        finer = store.recluster(resolution=8.0)
        facts = finer.params["stats"]["graph"]
        assert facts == {"reused_from_run": first.id, "stored_rows": 700, "searched_rows": 0, "stale_rows": 0}
        assert finer.params["resolution"] == 8.0 and finer.clusters > first.clusters
        # a damaged cache: the missing rows are searched in the index, the run is the same
        shutil.rmtree(rg.graph_dir(store.data_dir, finer.id))
        rg.append_rows(store.data_dir, finer.id, *_rows_of(store, 50), at=700)
        again = store.recluster()
        assert again.params["stats"]["graph"]["searched_rows"] == 650
        shutil.rmtree(rg.graph_dir(store.data_dir, again.id))
        last = store.recluster()
        assert "graph" not in last.params["stats"] and abs(last.clusters - again.clusters) <= 2
    finally:
        store.close()


def _rows_of(store, n):
    ids, x = store.embeddings()
    ids, x = ids[:n], x[:n]
    sims = x @ x.T
    np.fill_diagonal(sims, -1)
    order = np.argsort(-sims, axis=1)[:, :30]
    return ids, ids[order], np.take_along_axis(sims, order, axis=1).astype(np.float32)


def test_cli_recluster_takes_a_resolution(tmp_path):
    texts, _ = hierarchical("random")
    data = tmp_path / "data"
    (tmp_path / "a.txt").write_text("\n".join(texts[:300]) + "\n")
    runner = CliRunner()
    runner.invoke(cli, ["ingest", str(tmp_path / "a.txt"), "--data-dir", str(data)])
    runner.invoke(cli, ["cluster", "--data-dir", str(data)])
    out = runner.invoke(cli, ["recluster", "--resolution", "6", "--json", "--data-dir", str(data)])
    assert out.exit_code == 0, out.output
    run = json.loads(out.output)["run"]
    assert run["params"]["resolution"] == 6.0 and run["params"]["stats"]["graph"]["searched_rows"] == 0
    bad = runner.invoke(cli, ["recluster", "--resolution", "0", "--data-dir", str(data)])
    assert bad.exit_code == 2


def test_readers_keep_the_previous_run_until_the_reoptimisation_commits(tmp_path, monkeypatch):
    import threading

    from clusterer.service import runs

    texts, _ = hierarchical("random")
    store = Store.open(tmp_path / "data", encoder=FakeEncoder(dimension=128), device="cpu")
    try:
        store.ingest(texts[:100])
        first = store.cluster()
        inside, release = threading.Event(), threading.Event()
        compute = runs.compute_labels

        def slow(*args, **kwargs):
            inside.set()
            assert release.wait(30)
            return compute(*args, **kwargs)

        monkeypatch.setattr(runs, "compute_labels", slow)
        writer = threading.Thread(target=lambda: store.ingest(texts[100:200]))
        writer.start()
        assert inside.wait(30), "the re-optimisation did not start"
        # the batch is stored and assigned to the previous run, which readers still see
        assert store.run().id == first.id and store.run().sentences == 200
        assert store.lookup(texts[150])["run_id"] == first.id
        release.set()
        writer.join(30)
        assert store.run().id != first.id and store.run().params["stats"]["trigger"]["previous_run"] == first.id
    finally:
        release.set()
        store.close()


def test_post_sentences_reoptimises_in_the_writer(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clusterer.server import create_app
    from clusterer.settings import ServerSettings

    texts, _ = hierarchical("random")
    store = Store.open(tmp_path / "data", encoder=FakeEncoder(dimension=128), device="cpu")
    store.ingest(texts[:100])
    first = store.cluster()
    with TestClient(create_app(store, ServerSettings())) as client:
        answer = client.post("/sentences", json={"texts": texts[100:210]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        upkeep = body["inputs"][0]["upkeep"]
        assert upkeep["action"] == "re-optimised" and upkeep["previous_run"] == first.id
        assert body["run_id"] == upkeep["run"]  # the answer's clusters are the new run's
        runs = client.get("/runs").json()["runs"]
        assert runs[0]["params"]["stats"]["trigger"]["reason"] == "store grew 2.1x since the last optimisation"
