"""The default clustering (leiden) through ``Store.cluster`` and the CLI: stored resolution, scores,
outlier share and stage timings, the two-level topic hierarchy (clusters --level, show, export),
recluster from the current membership, and the pure run plan (no database)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

import clusterer.algorithms.graph
from clusterer.algorithms import graph, topics
from clusterer.algorithms.matching import Event
from clusterer.api import Store, UnknownClusterError
from clusterer.cli import cli
from clusterer.errors import InvalidParameterError
from clusterer.service import runs
from clusterer.service.methods import Labels
from tests.fakes import LookupEncoder

# Two families of three topics: the fake encoder sums word vectors, so sentences of one topic share
# most words, topics of one family share the family words, and the families share nothing.
FAMILIES = {
    "money": ["credit card payment declined", "bank transfer pending abroad", "atm cash withdrawal fee"],
    "travel": ["flight booking cancel refund", "hotel room reservation change", "train ticket seat upgrade"],
}
PER_TOPIC = 10
LARGE = 40  # the default k looks at many neighbours: the tests of the defaults use bigger topics
TOPIC_LIST = [t for topics in FAMILIES.values() for t in topics]
N = len(TOPIC_LIST) * PER_TOPIC
STAGES = {"load", "cluster", "keywords", "save"}
# The tests of the plumbing fix the granularity, so that they do not depend on the automatic rule.
PARAMS = {"k": 10, "resolution": 1.0}


def corpus(per_topic: int = PER_TOPIC) -> list[str]:
    return [
        f"{fam} {t} {t.split()[0]}{i}" for fam, topics in FAMILIES.items() for t in topics for i in range(per_topic)
    ]


def topic_of(text: str) -> str:
    return next(t for t in TOPIC_LIST if t in text)


def family_of(text: str) -> str:
    return text.split()[0]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "data", device="cpu")
    s.ingest(corpus())
    yield s
    s.close()


def _export(store, run_id=None):
    return list(store.export(run_id))


# -- leiden is the default ---------------------------------------------------------------------


def test_leiden_default_run(tmp_path, db_url):
    with Store(tmp_path / "data", db_url=db_url, device="cpu") as store:
        store.ingest(corpus(LARGE))
        run = store.cluster()
        assert run.status == "done" and run.method == "leiden"
        assert {k: v for k, v in run.params.items() if k != "stats"} == {
            "min_size": graph.DEFAULT_MIN_SIZE,
            "seed": 0,
            "search": "auto",
        }  # k and resolution: automatic
        stats = run.params["stats"]
        assert stats["resolution"] > 0 and stats["coarse_resolution"] > 0
        assert isinstance(stats["scores"], dict)
        assert stats["outlier_share"] == pytest.approx(run.unassigned / run.sentences, abs=1e-6)
        assert stats["outliers"] == run.unassigned
        assert stats["k"] == graph.DEFAULT_K and "min_similarity" in stats  # the k the size chose
        assert set(stats["seconds"]) == STAGES and all(v >= 0 for v in stats["seconds"].values())
        assert stats["coarse_clusters"] == len(store.clusters(level="coarse")) >= 1
        rows = _export(store)
        assert len(rows) == len(TOPIC_LIST) * LARGE == run.sentences
        found = [r["cluster"] if r["cluster"] is not None else -1 - i for i, r in enumerate(rows)]
        assert adjusted_rand_score([topic_of(r["text"]) for r in rows], found) >= 0.9
        assert run.clusters == len(store.clusters()) >= len(TOPIC_LIST) - 1
        json.dumps(run.to_dict())  # the stats are plain JSON


def test_run_is_listed_with_its_stats(store):
    run = store.cluster(**PARAMS)
    (listed,) = store.runs()
    assert listed.id == run.id and listed.params["stats"]["resolution"] == run.params["stats"]["resolution"]
    assert set(listed.params["stats"]["seconds"]) == STAGES


def test_a_given_resolution_is_kept(store):
    run = store.cluster("leiden", k=10, resolution=0.5)
    assert run.params["resolution"] == 0.5 and run.params["stats"]["resolution"] == 0.5


def test_other_methods_record_stage_seconds_too(store):
    run = store.cluster("kmeans", k=6)
    assert set(run.params["stats"]["seconds"]) == STAGES
    assert run.params["stats"]["coarse_clusters"] == 0


def test_bad_parameters_fail_before_a_run(store):
    with pytest.raises(InvalidParameterError, match="--resolution must be above 0"):
        store.cluster(resolution=-1)
    with pytest.raises(InvalidParameterError, match="leiden does not take threshold"):
        store.cluster(threshold=0.7)
    assert store.runs() == []


# -- the hierarchy -----------------------------------------------------------------------------


def test_every_fine_cluster_is_inside_one_coarse_cluster(store):
    run = store.cluster(**PARAMS)
    fine = store.clusters()
    coarse = store.clusters(level="coarse")
    assert fine and coarse
    assert {c.level for c in fine} == {"fine"} and {c.level for c in coarse} == {"coarse"}
    coarse_ids = {c.id for c in coarse}
    assert not coarse_ids & {c.id for c in fine}
    assert all(c.parent in coarse_ids and c.children == [] for c in fine)
    size_of = {c.id: c.size for c in fine}
    children = sorted(x for c in coarse for x in c.children)
    assert children == sorted(size_of)  # each fine cluster under exactly one coarse cluster
    for c in coarse:
        assert c.parent is None and c.children
        assert c.size == sum(size_of[x] for x in c.children)
        assert [size_of[x] for x in c.children] == sorted((size_of[x] for x in c.children), reverse=True)
        assert all(f.parent == c.id for f in fine if f.id in c.children)
    assert sum(c.size for c in coarse) == run.assigned


def test_keywords_and_centres_at_both_levels(store):
    store.cluster(**PARAMS)
    rows = _export(store)
    texts_of: dict[int, list[str]] = {}
    for r in rows:
        if r["cluster"] is not None:
            texts_of.setdefault(r["cluster"], []).append(r["text"])
            texts_of.setdefault(r["coarse_cluster"], []).append(r["text"])
    for level in ("fine", "coarse"):
        for c in store.clusters(level=level):
            assert c.keywords and len(c.keyword_scores) == len(c.keywords)
            assert c.keyword_scores == sorted(c.keyword_scores, reverse=True)
            words = " ".join(texts_of[c.id])
            assert all(k in words for k in c.keywords)  # keywords come from the members' texts
            assert c.centre_text in texts_of[c.id]
            assert len(c.representatives) == 3 and 0 < c.cohesion <= 1
    # a coarse topic made of one family's topics is described by the family word
    for c in store.clusters(level="coarse"):
        families = {family_of(t) for t in texts_of[c.id]}
        if len(families) == 1 and len(c.children) > 1:
            assert families.pop() in c.keywords[:3]


def test_show_lists_children_and_parent(store):
    store.cluster(**PARAMS)
    coarse = store.clusters(level="coarse")[0]
    info = store.cluster_info(coarse.id, limit=1000)
    assert info.level == "coarse" and info.children == coarse.children and info.parent is None
    assert len(info.members) == info.size
    fine_members = set()
    for child in info.children:
        sub = store.cluster_info(child, limit=1000)
        assert sub.level == "fine" and sub.parent == coarse.id and sub.children == []
        fine_members |= {m.id for m in sub.members}
    assert {m.id for m in info.members} == fine_members
    paged = store.cluster_info(coarse.id, limit=2, offset=1)
    assert [m.id for m in paged.members] == [m.id for m in info.members[1:3]]
    assert [m.id for m in store.members(coarse.id, limit=1000)] == [m.id for m in info.members]


def test_export_carries_both_levels(store):
    store.cluster(**PARAMS)
    parent = {c.id: c.parent for c in store.clusters()}
    rows = _export(store)
    assert all(
        set(r) == {"id", "text", "metadata", "cluster", "similarity", "coarse_cluster", "cluster_label"} for r in rows
    )
    for r in rows:
        if r["cluster"] is None:
            assert r["coarse_cluster"] is None
        else:
            assert r["coarse_cluster"] == parent[r["cluster"]]


def test_runs_without_a_hierarchy_have_only_the_fine_level(store):
    run = store.cluster("kmeans", k=6)
    assert store.clusters(level="coarse") == []
    assert all(c.parent is None and c.level == "fine" for c in store.clusters())
    assert all(r["coarse_cluster"] is None for r in _export(store, run.id))
    with pytest.raises(InvalidParameterError, match="level must be fine or coarse"):
        store.clusters(level="middle")


# -- stable ids and recluster ------------------------------------------------------------------


def _members(store, run_id, level):
    out = {}
    for c in store.clusters(run_id, level=level):
        out[c.id] = frozenset(m.id for m in store.cluster_info(c.id, run_id=run_id, limit=10_000).members)
    return out


def test_recluster_keeps_ids_at_both_levels(store):
    first = store.cluster(**PARAMS)
    second = store.recluster()
    assert second.method == "leiden" and second.params["stats"]["warm_start"] is True
    for level in ("fine", "coarse"):
        assert _members(store, second.id, level) == _members(store, first.id, level)
    kinds = {(e.kind, e.detail.get("level", "fine")) for e in store.events(second.id)}
    assert kinds == {("continued", "fine"), ("continued", "coarse")}
    coarse_events = [e for e in store.events(second.id) if e.detail.get("level") == "coarse"]
    assert sorted(e.cluster_id for e in coarse_events) == sorted(c.id for c in store.clusters(level="coarse"))


def test_recluster_starts_from_the_current_membership(store, monkeypatch):
    store.cluster(**PARAMS)
    store.ingest([f"money credit card payment declined late{i}" for i in range(3)])
    current = {r["id"]: r["cluster"] for r in _export(store)}  # upkeep assigned the new ones
    seen = {}
    real = clusterer.algorithms.graph.graph_clustering

    def spy(x, **kwargs):
        seen["initial"], seen["n"] = kwargs.get("initial"), len(x)
        return real(x, **kwargs)

    monkeypatch.setattr(clusterer.algorithms.graph, "graph_clustering", spy)
    ids, _ = store.embeddings()
    run = store.recluster()
    initial = seen["initial"]
    assert initial is not None and len(initial) == seen["n"] == len(ids) == N + 3
    labels = [current.get(int(i)) for i in ids]
    assigned = np.array([label is not None for label in labels])
    assert (initial[~assigned] == -1).all() and (initial[assigned] >= 0).all()
    # the warm start is the latest run's partition, row for row (ids compacted)
    assert adjusted_rand_score([label for label in labels if label is not None], initial[assigned]) == pytest.approx(
        1.0
    )
    assert run.params["stats"]["warm_start"] is True
    store.cluster(**PARAMS)  # a plain run does not warm start
    assert seen["initial"] is None


def test_ids_persist_when_sentences_are_added(store):
    first = store.cluster(**PARAMS)
    before = _members(store, first.id, "fine")
    store.ingest([f"{fam} {t} extra{j}" for fam, topics in FAMILIES.items() for j, t in enumerate(topics)])
    second = store.recluster()
    after = _members(store, second.id, "fine")
    for cid, members in before.items():
        assert cid in after and members <= after[cid]
    assert set(_members(store, first.id, "coarse")) <= set(_members(store, second.id, "coarse"))


def test_new_sentences_join_a_fine_cluster_after_a_leiden_run(store):
    store.cluster(**PARAMS)
    by_topic = {}
    for r in _export(store):
        by_topic.setdefault(topic_of(r["text"]), set()).add(r["cluster"])
    store.ingest(["travel hotel room reservation change hotel99"])
    latest = {r["text"]: r["cluster"] for r in _export(store)}
    label = latest["travel hotel room reservation change hotel99"]
    assert label is not None and label in by_topic["hotel room reservation change"]


def test_unknown_cluster_at_any_level(store):
    store.cluster(**PARAMS)
    with pytest.raises(UnknownClusterError):
        store.cluster_info(99999)


# -- the plan, without a database --------------------------------------------------------------


def _blobs(sizes, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim))
    x = np.vstack([c + 0.05 * rng.standard_normal((n, dim)) for c, n in zip(centres, sizes)]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_plan_without_a_database():
    # four fine groups (raw labels 0..3) under two coarse groups, two outliers at the end
    sizes = [4, 3, 3, 2]
    x = _blobs([*sizes, 1, 1])
    ids = np.arange(100, 100 + len(x), dtype=np.int64)
    raw = np.array([0] * 4 + [1] * 3 + [2] * 3 + [3] * 2 + [-1, -1], dtype=np.int64)
    words = {0: "apple banana", 1: "apple cherry", 2: "rocket engine", 3: "rocket fuel"}
    texts = [f"{words[l]} item{i}" if l >= 0 else "" for i, l in enumerate(raw)]
    result = Labels(
        raw, np.full(len(raw), np.nan, np.float32), parents={0: 0, 1: 0, 2: 1, 3: 1}, info={"resolution": 1.0}
    )
    # the previous run had fine cluster 7 = today's group 0 and coarse 9 = today's groups 2 and 3
    previous = runs.Previous(
        run_id=1, fine={7: [100, 101, 102, 103], 8: [200, 201]}, coarse={9: [107, 108, 109, 110, 111], 10: [200, 201]}
    )
    plan = runs.plan_run(ids, x, texts, result, previous, next_label=11)

    fine = {c.label: c for c in plan.fine}
    coarse = {c.label: c for c in plan.coarse}
    assert sorted(fine) == [7, 11, 12, 13]  # group 0 keeps 7; 1, 2, 3 get fresh ids in order
    assert sorted(coarse) == [9, 14]  # coarse {2, 3} keeps 9; coarse {0, 1} is new, after the fine ids
    assert plan.labels == [7] * 4 + [11] * 3 + [12] * 3 + [13] * 2 + [None, None]
    assert plan.n_assigned == 12 and plan.ids.tolist() == ids.tolist()
    assert [fine[label].parent_label for label in (7, 11, 12, 13)] == [14, 14, 9, 9]
    assert coarse[14].size == 7 and coarse[9].size == 5
    assert all(c.parent_label is None for c in plan.coarse)
    assert coarse[9].centre_id in range(107, 112) and set(coarse[9].representatives) <= set(range(107, 112))
    # a coarse row read child by child equals the same figures over all its members at once
    members = x[7:12]
    centroid = topics.normalized_centroid(members)
    assert np.allclose(np.frombuffer(coarse[9].centroid, np.float32), centroid, atol=1e-5)
    assert coarse[9].cohesion == pytest.approx(topics.cohesion(members), abs=1e-5)
    assert coarse[9].representatives == [107 + p for p in topics.representatives(members, range(5), centroid, n=3)]
    assert coarse[9].centre_id == coarse[9].representatives[0]
    # term counts are stored for fine clusters only; coarse keywords come from the children's sums
    assert set(plan.terms) == {7, 11, 12, 13}
    assert plan.terms[7]["apple"] == 4 and plan.terms[11]["cherry"] == 3
    assert coarse[14].keywords[0][0] == "apple" and coarse[9].keywords[0][0] == "rocket"
    assert "apple cherry" in [k for k, _ in fine[11].keywords]
    # similarities: to the cluster's centroid for members, None for outliers
    assert all(0.9 < s <= 1.0 for s in plan.similarities[:12]) and plan.similarities[12:] == [None, None]
    # events: fine 7 continued, 8 died; coarse 9 continued, 10 died, 14 born, marked coarse
    kinds = {(e.label, e.kind, e.detail.get("level", "fine")) for e in plan.events}
    assert {
        (7, "continued", "fine"),
        (8, "death", "fine"),
        (11, "birth", "fine"),
        (9, "continued", "coarse"),
        (10, "death", "coarse"),
        (14, "birth", "coarse"),
    } <= kinds
    assert all(isinstance(e, Event) for e in plan.events)
    assert plan.stats == {"resolution": 1.0}


def test_plan_of_a_method_without_levels():
    x = _blobs([3, 3])
    ids = np.array([5, 6, 7, 8, 9, 10], dtype=np.int64)
    result = Labels(np.array([0, 0, 0, 1, 1, 1]), np.linspace(0.9, 1.0, 6).astype(np.float32), centres={0: 1, 1: 4})
    plan = runs.plan_run(ids, x, ["a b"] * 6, result, runs.Previous(), next_label=0)
    assert plan.coarse == [] and [c.label for c in plan.fine] == [0, 1]
    assert [c.centre_id for c in plan.fine] == [6, 9]
    assert plan.similarities == pytest.approx(np.linspace(0.9, 1.0, 6).tolist(), abs=1e-6)
    assert {e.kind for e in plan.events} == {"birth"}


def test_previous_labels_for_aligns_ids():
    prev = runs.Previous(run_id=3, ids=np.array([2, 5, 9]), labels=np.array([4, -1, 6]))
    assert prev.labels_for(np.array([9, 1, 2, 5, 10])).tolist() == [6, -1, 4, -1, -1]
    assert runs.Previous().labels_for(np.array([1, 2])).tolist() == [-1, -1]


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def cli_store(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(corpus(LARGE)) + "\n", encoding="utf-8")
    return path, tmp_path / "data"


def _json(runner, args, expect=0):
    result = runner.invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cli_cluster_defaults_to_leiden(cli_store, backend, request):
    path, data_dir = cli_store
    where = ["--data-dir", str(data_dir)]
    if backend == "postgresql":
        where += ["--db", request.getfixturevalue("pg_url")]
    runner = CliRunner()
    assert _json(runner, ["ingest", str(path), *where])["added"] == len(TOPIC_LIST) * LARGE
    out = _json(runner, ["cluster", *where])
    run = out["run"]
    assert run["method"] == "leiden" and run["status"] == "done"
    stats = run["params"]["stats"]
    assert set(stats["seconds"]) == STAGES and "resolution" in stats and "outlier_share" in stats
    assert out["top_clusters"] and out["top_coarse_clusters"]
    assert all(c["level"] == "fine" and c["parent"] is not None for c in out["top_clusters"])
    listed = _json(runner, ["runs", *where])["runs"][0]
    assert listed["params"]["stats"]["outlier_share"] == stats["outlier_share"]
    human = runner.invoke(cli, ["runs", *where])
    assert "outliers" in human.stdout and "resolution" in human.stdout and "seconds load" in human.stdout
    coarse = _json(runner, ["clusters", "--level", "coarse", *where])
    assert coarse["level"] == "coarse" and coarse["clusters"]
    fine = _json(runner, ["clusters", *where])
    assert fine["level"] == "fine" and len(fine["clusters"]) == run["clusters"]
    topic = coarse["clusters"][0]
    shown = _json(runner, ["show", str(topic["id"]), *where])
    assert shown["level"] == "coarse" and shown["children"] == topic["children"]
    assert [c["id"] for c in shown["child_clusters"]] == topic["children"]
    child = _json(runner, ["show", str(topic["children"][0]), *where])
    assert child["parent"] == topic["id"] and child["parent_cluster"]["id"] == topic["id"]
    text = runner.invoke(cli, ["show", str(topic["id"]), *where]).stdout
    assert text.startswith(f"coarse topic {topic['id']}") and f"cluster:  [{topic['children'][0]}]" in text
    text = runner.invoke(cli, ["clusters", "--level", "coarse", *where]).stdout
    assert "coarse topics" in text and f"({len(topic['children'])} clusters)" in text
    result = runner.invoke(cli, ["export", "--format", "csv", *where])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(TOPIC_LIST) * LARGE and "coarse_cluster" in rows[0]
    parent = {c["id"]: c["parent"] for c in fine["clusters"]}
    for r in rows:
        assert r["coarse_cluster"] == ("" if r["cluster"] == "" else str(parent[int(r["cluster"])]))


def test_cli_bad_values_are_one_line_usage_errors(cli_store):
    _, data_dir = cli_store
    runner = CliRunner()
    for args, words in [
        (["cluster", "--resolution", "-1"], "leiden: --resolution must be above 0, got -1.0"),
        (["cluster", "--k", "0"], "leiden: --k must be at least 1, got 0"),
        (["cluster", "--threshold", "0.7"], "--method leiden does not use --threshold"),
        (["cluster", "--method", "kmeans", "--resolution", "2"], "--method kmeans does not use --resolution"),
    ]:
        result = runner.invoke(cli, [*args, "--data-dir", str(data_dir)])
        assert result.exit_code == 2, args
        assert words in result.stderr and "Traceback" not in result.output
        assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
    result = runner.invoke(cli, ["clusters", "--level", "middle", "--data-dir", str(data_dir)])
    assert result.exit_code == 2


def test_cli_human_cluster_output(cli_store):
    path, data_dir = cli_store
    runner = CliRunner()
    runner.invoke(cli, ["ingest", str(path), "--data-dir", str(data_dir)], catch_exceptions=False)
    result = runner.invoke(
        cli, ["cluster", "--k", "10", "--resolution", "1", "--data-dir", str(data_dir)], catch_exceptions=False
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("run 1: leiden")
    assert "resolution 1 " not in result.stdout and "resolution 1;" in result.stdout
    assert "coarse topics:" in result.stdout and "seconds load" in result.stdout
    again = runner.invoke(cli, ["recluster", "--data-dir", str(data_dir), "--json"], catch_exceptions=False)
    out = json.loads(again.stdout)
    assert out["run"]["method"] == "leiden" and out["run"]["params"]["resolution"] == 1.0
    assert (
        out["events"] == []
        and out["kept_ids"] == out["run"]["clusters"] + out["run"]["params"]["stats"]["coarse_clusters"]
    )


# -- the real model ----------------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.slow
def test_leiden_default_beats_community_on_banking77(banking77_embeddings, tmp_path):
    texts, intents, x = banking77_embeddings
    with Store.open(
        tmp_path / "data", encoder=LookupEncoder(texts, x, model_name="all-MiniLM-L6-v2 (precomputed)"), device="cpu"
    ) as store:
        store.ingest(texts)
        scores = {}
        for name, method, params in [
            ("leiden", None, {}),
            ("community", "community", {"threshold": 0.75, "min_size": 10}),
        ]:
            run = store.cluster(method, **params)
            rows = _export(store, run.id)
            intent_of = dict(zip(texts, intents))
            found = [r["cluster"] if r["cluster"] is not None else -1 - i for i, r in enumerate(rows)]
            scores[name] = adjusted_rand_score([intent_of[r["text"]] for r in rows], found)
            if name == "leiden":
                assert run.method == "leiden" and run.params["stats"]["outlier_share"] < 0.2
                assert store.clusters(level="coarse") and len(store.clusters(level="coarse")) < run.clusters
        print(
            f"banking77 sample ARI: leiden default {scores['leiden']:.3f}, community 0.75/10 {scores['community']:.3f}"
        )
        assert scores["leiden"] > scores["community"]
