"""The lookup commands of the CLI: lookup, which, members, unassigned, recluster, history, and
their error paths (exit 1 with one clear line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clusterer.cli import cli

TOPICS = {
    "card": "credit card payment declined",
    "flight": "flight booking cancel refund",
    "pin": "forgot pin code reset",
}
PER_TOPIC = 10
NOISE = [f"noise{i}a noise{i}b noise{i}c" for i in range(5)]
COMMUNITY = ["cluster", "--method", "community", "--threshold", "0.6", "--min-size", "5"]


def corpus() -> list[str]:
    return [f"{core} {name}{i}" for name, core in TOPICS.items() for i in range(PER_TOPIC)] + NOISE


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, args, data_dir):
    return runner.invoke(cli, [*args, "--data-dir", str(data_dir)], catch_exceptions=False)


def run_json(runner, args, data_dir, expect=0):
    result = run(runner, [*args, "--json"], data_dir)
    assert result.exit_code == expect, (result.exit_code, result.output)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    from tests.fakes import FakeEncoder

    base = tmp_path_factory.mktemp("lookup-templates")
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("indexer.sentence_store.make_encoder", lambda *a, **k: FakeEncoder())
        mp.setenv("CLUSTERER_DEVICE", "cpu")
        path = base / "corpus.txt"
        path.write_text("\n".join(corpus()) + "\n", encoding="utf-8")
        assert run_json(runner, ["ingest", str(path)], base / "ingested")["added"] == len(corpus())
        shutil.copytree(base / "ingested", base / "clustered")
        run_json(runner, COMMUNITY, base / "clustered")
    return base


@pytest.fixture
def store_dir(templates, tmp_path):
    return Path(shutil.copytree(templates / "ingested", tmp_path / "data"))


@pytest.fixture
def clustered(templates, tmp_path):
    return Path(shutil.copytree(templates / "clustered", tmp_path / "data"))


def cluster_ids(runner, data_dir) -> dict[str, int]:
    out = {}
    for c in run_json(runner, ["clusters"], data_dir)["clusters"]:
        out[next(n for n, core in TOPICS.items() if c["centre_text"].startswith(core))] = c["id"]
    return out


def sentence_id(runner, data_dir, text) -> int:
    return run_json(runner, ["search", text, "-k", "1"], data_dir)["hits"][0]["id"]


def test_lookup_json(runner, clustered):
    ids = cluster_ids(runner, clustered)
    before = run_json(runner, ["stats"], clustered)
    out = run_json(runner, ["lookup", "forgot pin code reset please", "--members", "3"], clustered)
    assert out["cluster_id"] == ids["pin"] and out["cluster"]["id"] == ids["pin"]
    assert out["cluster"]["size"] == PER_TOPIC and len(out["cluster"]["members"]) == 3
    assert any("pin" in k for k in out["cluster"]["keywords"][:3])
    assert out["similarity"] >= 0.6 and out["votes"] >= 5
    assert out["nearest"][0]["cluster"] == ids["pin"]
    assert run_json(runner, ["stats"], clustered) == before  # nothing stored


def test_lookup_human(runner, clustered):
    result = run(runner, ["lookup", "credit card payment declined again"], clustered)
    assert result.exit_code == 0, result.output
    assert "cluster " in result.output and "keywords:" in result.output and "nearest stored sentences:" in result.output
    nowhere = run(runner, ["lookup", "zebra quantum umbrella"], clustered)
    assert nowhere.exit_code == 0 and "no cluster" in nowhere.output


def test_which(runner, clustered):
    ids = cluster_ids(runner, clustered)
    sid = sentence_id(runner, clustered, "flight booking cancel refund flight3")
    out = run_json(runner, ["which", str(sid)], clustered)
    assert out["sentence"]["id"] == sid and out["sentence"]["text"] == "flight booking cancel refund flight3"
    assert out["cluster_id"] == ids["flight"] and out["cluster"]["id"] == ids["flight"]
    assert len(out["history"]) == 1 and out["history"][0]["cluster"] == ids["flight"]
    human = run(runner, ["which", str(sid)], clustered)
    assert human.exit_code == 0 and f"cluster {ids['flight']}" in human.output
    noise = sentence_id(runner, clustered, NOISE[2])
    assert "unassigned" in run(runner, ["which", str(noise)], clustered).output


def test_which_unknown_id(runner, clustered):
    result = run(runner, ["which", "999999"], clustered)
    assert result.exit_code == 1
    assert "no sentence with id 999999" in result.output
    assert "Traceback" not in result.output
    out = run_json(runner, ["which", "999999"], clustered, expect=1)
    assert "999999" in out["error"]


def test_members_offset_limit(runner, clustered):
    cid = cluster_ids(runner, clustered)["card"]
    everything = run_json(runner, ["members", str(cid), "--limit", "100"], clustered)["members"]
    assert len(everything) == PER_TOPIC and all(m["text"].startswith(TOPICS["card"]) for m in everything)
    sims = [m["similarity"] for m in everything]
    assert sims == sorted(sims, reverse=True)
    page = run_json(runner, ["members", str(cid), "--offset", "4", "--limit", "3"], clustered)
    assert (page["offset"], page["limit"]) == (4, 3)
    assert [m["id"] for m in page["members"]] == [m["id"] for m in everything[4:7]]
    assert run_json(runner, ["members", str(cid), "--offset", "50"], clustered)["members"] == []
    unknown = run(runner, ["members", "424242"], clustered)
    assert unknown.exit_code == 1 and "no cluster 424242" in unknown.output


def test_unassigned(runner, clustered):
    out = run_json(runner, ["unassigned"], clustered)
    assert out["total"] == len(NOISE) and sorted(s["text"] for s in out["sentences"]) == sorted(NOISE)
    page = run_json(runner, ["unassigned", "--offset", "1", "--limit", "2"], clustered)
    assert page["total"] == len(NOISE) and [s["id"] for s in page["sentences"]] == [
        s["id"] for s in out["sentences"][1:3]
    ]
    human = run(runner, ["unassigned"], clustered)
    assert human.exit_code == 0 and f"{len(NOISE)} unassigned sentences" in human.output


def test_recluster_reports_kept_ids(runner, clustered, tmp_path):
    ids = cluster_ids(runner, clustered)
    extra = tmp_path / "more.txt"
    extra.write_text("\n".join(f"{TOPICS['card']} card{i}" for i in range(100, 104)) + "\n", encoding="utf-8")
    assert run_json(runner, ["ingest", str(extra)], clustered)["added"] == 4
    out = run_json(runner, ["recluster"], clustered)
    assert out["kept_ids"] == len(ids) == 3
    assert out["events"] == []
    assert out["run"]["id"] == out["previous_run"] + 1 and out["run"]["params"]["threshold"] == 0.6
    assert cluster_ids(runner, clustered) == ids
    sizes = {c["id"]: c["size"] for c in run_json(runner, ["clusters"], clustered)["clusters"]}
    assert sizes[ids["card"]] == PER_TOPIC + 4
    human = run(runner, ["recluster"], clustered)
    assert human.exit_code == 0 and "3 ids kept" in human.output


def test_history(runner, clustered, tmp_path):
    cid = cluster_ids(runner, clustered)["pin"]
    out = run_json(runner, ["history", str(cid)], clustered)
    assert out["cluster_id"] == cid and [e["kind"] for e in out["events"]] == ["birth"]
    extra = tmp_path / "more.txt"
    extra.write_text(f"{TOPICS['pin']} pin77\n", encoding="utf-8")
    run_json(runner, ["ingest", str(extra)], clustered)
    run_json(runner, ["recluster"], clustered)
    events = run_json(runner, ["history", str(cid)], clustered)["events"]
    assert [e["kind"] for e in events] == ["birth", "growth", "continued"]
    assert [e["size"] for e in events] == [PER_TOPIC, PER_TOPIC + 1, PER_TOPIC + 1]
    assert all(e["at"] for e in events)
    human = run(runner, ["history", str(cid)], clustered)
    assert human.exit_code == 0 and "continued" in human.output and "birth" in human.output


def test_history_unknown_id(runner, clustered):
    result = run(runner, ["history", "424242"], clustered)
    assert result.exit_code == 1 and "cluster 424242 never existed" in result.output
    assert "error" in run_json(runner, ["history", "424242"], clustered, expect=1)


@pytest.mark.parametrize(
    "args", [["lookup", "credit card payment"], ["which", "1"], ["unassigned"], ["members", "0"], ["recluster"]]
)
def test_before_any_cluster_run(runner, store_dir, args):
    result = run(runner, args, store_dir)
    assert result.exit_code == 1, result.output
    assert "no clustering run" in result.output
    assert "Traceback" not in result.output


def test_lookup_on_missing_store(runner, tmp_path):
    result = run(runner, ["lookup", "anything"], tmp_path / "nothing")
    assert result.exit_code == 1 and "no store" in result.output
