"""The clustering commands of the CLI: cluster (community, kmeans, agglomerative), clusters,
show, runs, export, and their error paths."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clusterer.cli import cli

# Five topics with four shared words each (the fake encoder sums word vectors, so sentences of
# one topic have cosine ~0.8 and sentences of different topics ~0), plus unrelated noise.
TOPICS = {
    "card": "credit card payment declined",
    "flight": "flight booking cancel refund",
    "pin": "forgot pin code reset",
    "transfer": "bank transfer pending abroad",
    "atm": "atm cash withdrawal fee",
}
PER_TOPIC = 12
NOISE = 10


def corpus() -> list[str]:
    texts = [f"{core} {name}{i}" for name, core in TOPICS.items() for i in range(PER_TOPIC)]
    texts += [f"noise{i}a noise{i}b noise{i}c" for i in range(NOISE)]
    return texts


N = len(TOPICS) * PER_TOPIC + NOISE


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    # the faiss backend (no torch import) keeps the file fast; results are the same
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, args, data_dir, **kwargs):
    return runner.invoke(cli, [*args, "--data-dir", str(data_dir)], catch_exceptions=False, **kwargs)


def run_json(runner, args, data_dir, expect=0):
    result = run(runner, [*args, "--json"], data_dir)
    assert result.exit_code == expect, (result.exit_code, result.output)
    return json.loads(result.stdout)


COMMUNITY = ["cluster", "--method", "community", "--threshold", "0.6", "--min-size", "5"]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Build the ingested store and the clustered store once per module; tests get copies."""
    from tests.fakes import FakeEncoder

    base = tmp_path_factory.mktemp("templates")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("indexer.sentence_store.make_encoder", lambda *a, **k: FakeEncoder())
        mp.setenv("CLUSTERER_DEVICE", "cpu")
        path = base / "corpus.txt"
        path.write_text("\n".join(corpus()) + "\n", encoding="utf-8")
        out = run_json(runner, ["ingest", str(path)], base / "ingested")
        assert out["added"] == N
        shutil.copytree(base / "ingested", base / "clustered")
        clustered = run_json(runner, COMMUNITY, base / "clustered")
    return base, clustered


@pytest.fixture
def store_dir(templates, tmp_path):
    base, _ = templates
    return Path(shutil.copytree(base / "ingested", tmp_path / "data"))


@pytest.fixture
def clustered(templates, tmp_path):
    base, out = templates
    return Path(shutil.copytree(base / "clustered", tmp_path / "data")), out


def _topic_of(text: str) -> str | None:
    for name, core in TOPICS.items():
        if text.startswith(core):
            return name
    return None


def test_cluster_community_json(clustered):
    _, out = clustered
    run = out["run"]
    assert run["method"] == "community"
    assert run["status"] == "done"
    assert run["params"]["threshold"] == 0.6 and run["params"]["min_size"] == 5
    assert run["sentences"] == N
    assert run["clusters"] == len(TOPICS)
    assert run["assigned"] == len(TOPICS) * PER_TOPIC
    assert run["unassigned"] == NOISE
    assert run["seconds"] is not None and run["seconds"] >= 0
    top = out["top_clusters"]
    assert len(top) == len(TOPICS)
    assert all(c["size"] == PER_TOPIC for c in top)
    assert len({c["id"] for c in top}) == len(TOPICS)


def test_cluster_human_output(runner, store_dir):
    result = run(runner, COMMUNITY, store_dir)
    assert result.exit_code == 0, result.output
    assert f"{len(TOPICS)} clusters" in result.stdout
    assert f"{NOISE} unassigned" in result.stdout


def test_clusters_json_lists_every_cluster_with_keywords(runner, clustered):
    data_dir, first = clustered
    out = run_json(runner, ["clusters"], data_dir)
    assert out["run"]["id"] == first["run"]["id"]
    clusters = out["clusters"]
    assert len(clusters) == len(TOPICS)
    seen_topics = set()
    for c in clusters:
        assert c["size"] == PER_TOPIC
        topic = _topic_of(c["centre_text"])
        assert topic is not None
        seen_topics.add(topic)
        words = {w for k in c["keywords"] for w in k.split()}
        assert set(TOPICS[topic].split()) & words, (topic, c["keywords"])
        assert c["cohesion"] is not None and c["cohesion"] > 0.5
        assert 1 <= len(c["representatives"]) <= 3
    assert seen_topics == set(TOPICS)
    limited = run_json(runner, ["clusters", "--limit", "2"], data_dir)
    assert len(limited["clusters"]) == 2
    human = run(runner, ["clusters"], data_dir)
    assert human.exit_code == 0 and "keywords" in human.stdout


def test_show_members_centre_first_with_similarity(runner, clustered):
    data_dir, _ = clustered
    cid = run_json(runner, ["clusters"], data_dir)["clusters"][0]["id"]
    info = run_json(runner, ["show", str(cid), "--limit", "5"], data_dir)
    assert info["id"] == cid and info["size"] == PER_TOPIC
    members = info["members"]
    assert len(members) == 5
    assert members[0]["id"] == info["centre_id"]
    assert members[0]["text"] == info["centre_text"]
    sims = [m["similarity"] for m in members]
    assert all(s is not None for s in sims)
    assert sims[0] == pytest.approx(1.0, abs=1e-4)
    assert sims == sorted(sims, reverse=True)
    topic = _topic_of(info["centre_text"])
    assert all(_topic_of(m["text"]) == topic for m in members)
    # paging: the rest of the members, no overlap
    rest = run_json(runner, ["show", str(cid), "--limit", "20", "--offset", "5"], data_dir)["members"]
    assert len(rest) == PER_TOPIC - 5
    assert not {m["id"] for m in rest} & {m["id"] for m in members}
    human = run(runner, ["show", str(cid)], data_dir)
    assert human.exit_code == 0 and "keywords:" in human.stdout and "centre:" in human.stdout


def test_runs_lists_every_run_newest_first(runner, clustered):
    data_dir, first = clustered
    second = run_json(runner, ["cluster", "--method", "kmeans", "--k", "5"], data_dir)
    out = run_json(runner, ["runs"], data_dir)
    ids = [r["id"] for r in out["runs"]]
    assert ids == [second["run"]["id"], first["run"]["id"]]
    assert [r["method"] for r in out["runs"]] == ["kmeans", "community"]
    assert all(r["status"] == "done" for r in out["runs"])
    human = run(runner, ["runs"], data_dir)
    assert human.exit_code == 0 and "kmeans" in human.stdout and "community" in human.stdout


def test_older_run_still_reachable_with_run_option(runner, clustered):
    data_dir, first = clustered
    run_json(runner, ["cluster", "--method", "kmeans", "--k", "3"], data_dir)
    latest = run_json(runner, ["clusters"], data_dir)
    assert latest["run"]["method"] == "kmeans" and len(latest["clusters"]) == 3
    old = run_json(runner, ["clusters", "--run", str(first["run"]["id"])], data_dir)
    assert old["run"]["method"] == "community" and len(old["clusters"]) == len(TOPICS)


def _check_export_rows(rows, clusters_by_id):
    assert len(rows) == N
    assert len({r["id"] for r in rows}) == N
    assert sorted(r["text"] for r in rows) == sorted(corpus())
    unassigned = [r for r in rows if r["cluster"] is None]
    assert len(unassigned) == NOISE
    assert all(r["text"].startswith("noise") for r in unassigned)
    assert all(r["similarity"] is None for r in unassigned)
    for r in rows:
        if r["cluster"] is not None:
            assert r["cluster"] in clusters_by_id
            assert _topic_of(r["text"]) == _topic_of(clusters_by_id[r["cluster"]]["centre_text"])
            assert r["similarity"] is not None


def test_export_jsonl(runner, clustered):
    data_dir, _ = clustered
    by_id = {c["id"]: c for c in run_json(runner, ["clusters"], data_dir)["clusters"]}
    result = run(runner, ["export", "--format", "jsonl"], data_dir)
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    _check_export_rows(rows, by_id)


def test_export_csv(runner, clustered):
    data_dir, _ = clustered
    by_id = {c["id"]: c for c in run_json(runner, ["clusters"], data_dir)["clusters"]}
    result = run(runner, ["export", "--format", "csv"], data_dir)
    assert result.exit_code == 0
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames == ["id", "text", "metadata", "cluster", "similarity", "coarse_cluster", "cluster_label"]
    rows = []
    for r in reader:
        assert r["coarse_cluster"] == ""  # a community run has no coarse level
        rows.append(
            {
                "id": int(r["id"]),
                "text": r["text"],
                "cluster": int(r["cluster"]) if r["cluster"] != "" else None,
                "similarity": float(r["similarity"]) if r["similarity"] != "" else None,
            }
        )
    _check_export_rows(rows, by_id)


def test_export_to_file(runner, clustered, tmp_path):
    data_dir, _ = clustered
    target = tmp_path / "out.jsonl"
    out = run_json(runner, ["export", "--format", "jsonl", "-o", str(target)], data_dir)
    assert out == {"exported": N, "output": str(target), "format": "jsonl"}
    assert len(target.read_text(encoding="utf-8").splitlines()) == N


def test_cluster_kmeans(runner, store_dir):
    out = run_json(runner, ["cluster", "--method", "kmeans", "--k", "5"], store_dir)
    run = out["run"]
    assert run["method"] == "kmeans" and run["params"]["k"] == 5
    assert run["clusters"] == 5
    assert run["assigned"] == N and run["unassigned"] == 0
    sizes = [c["size"] for c in run_json(runner, ["clusters"], store_dir)["clusters"]]
    assert sum(sizes) == N


def test_cluster_agglomerative(runner, store_dir):
    out = run_json(
        runner,
        ["cluster", "--method", "agglomerative", "--distance-threshold", "1.0", "--linkage", "average"],
        store_dir,
    )
    run = out["run"]
    assert run["method"] == "agglomerative"
    assert run["params"]["distance_threshold"] == 1.0 and run["params"]["linkage"] == "average"
    assert run["clusters"] >= 1
    assert run["assigned"] == N
    sizes = [c["size"] for c in run_json(runner, ["clusters"], store_dir)["clusters"]]
    assert sum(sizes) == N


def test_agglomerative_small_threshold_separates_topics(runner, store_dir):
    out = run_json(
        runner,
        ["cluster", "--method", "agglomerative", "--distance-threshold", "0.5", "--linkage", "average"],
        store_dir,
    )
    clusters = run_json(runner, ["clusters"], store_dir)["clusters"]
    big = [c for c in clusters if c["size"] > 1]
    assert len(big) == len(TOPICS) and all(c["size"] == PER_TOPIC for c in big)
    assert out["run"]["clusters"] == len(TOPICS) + NOISE


# -- errors ------------------------------------------------------------------------


def test_param_of_another_method_is_a_usage_error(runner, store_dir):
    result = run(runner, ["cluster", "--method", "kmeans", "--threshold", "0.5"], store_dir)
    assert result.exit_code == 2
    assert "--threshold" in result.stderr
    assert "Traceback" not in result.output


def test_unknown_method_is_a_usage_error(runner, store_dir):
    result = run(runner, ["cluster", "--method", "spectral"], store_dir)
    assert result.exit_code == 2


def test_k_larger_than_store_fails_cleanly(runner, store_dir):
    result = run(runner, ["cluster", "--method", "kmeans", "--k", str(N + 1)], store_dir)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"k={N + 1}" in result.stderr
    runs = run_json(runner, ["runs"], store_dir)["runs"]
    assert [r["status"] for r in runs] == ["failed"]
    assert "k=" in runs[0]["error"]
    # a failed run is not the latest run
    assert run(runner, ["clusters"], store_dir).exit_code == 1


def test_show_unknown_cluster(runner, clustered):
    data_dir, _ = clustered
    result = run(runner, ["show", "99999"], data_dir)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "no cluster 99999" in result.stderr
    out = run_json(runner, ["show", "99999"], data_dir, expect=1)
    assert "99999" in out["error"]


def test_show_unknown_run(runner, clustered):
    data_dir, _ = clustered
    result = run(runner, ["show", "0", "--run", "424242"], data_dir)
    assert result.exit_code == 1 and "424242" in result.stderr


@pytest.mark.parametrize("command", [["clusters"], ["show", "0"], ["export"]])
def test_before_any_run(runner, store_dir, command):
    result = run(runner, command, store_dir)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "no clustering run" in result.stderr
    out = run_json(runner, command, store_dir, expect=1)
    assert "no clustering run" in out["error"]


def test_runs_before_any_run_is_empty(runner, store_dir):
    assert run_json(runner, ["runs"], store_dir) == {"runs": []}


def test_cluster_on_missing_store(runner, tmp_path):
    result = run(runner, COMMUNITY, tmp_path / "missing")
    assert result.exit_code == 1
    assert "no store" in result.stderr
