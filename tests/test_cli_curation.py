"""`clusterer merge/split/unmerge/label` through click's CliRunner: text and --json answers,
labels in clusters/show/export, and one-line errors with exit codes."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from clusterer.api import Store
from clusterer.cli import cli
from tests.test_curation import clustered_dir
from tests.test_upkeep import topic_of


@pytest.fixture
def data_dir(tmp_path):
    return clustered_dir(tmp_path / "data")


def run(data_dir, *args, code=0):
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == code, result.output
    return result


def as_json(data_dir, *args, code=0):
    return json.loads(run(data_dir, *args, "--json", code=code).output.strip().splitlines()[-1])


def ids_of(data_dir):
    with Store.open(data_dir, device="cpu") as s:
        return topic_of(s)


def test_merge_label_show_export_and_unmerge(data_dir):
    ids = ids_of(data_dir)
    card, flight = ids["card"], ids["flight"]
    merged = as_json(data_dir, "merge", str(card), str(flight))
    assert merged["kind"] == "merge" and merged["cluster_id"] == card and merged["related"] == [flight]
    out = run(data_dir, "label", str(card), "cards & flights").output
    assert f'cluster {card} is now labelled "cards & flights"' in out
    listed = as_json(data_dir, "clusters")
    assert {c["id"]: c["label"] for c in listed["clusters"]}[card] == "cards & flights"
    assert '"cards & flights"' in run(data_dir, "clusters").output
    shown = as_json(data_dir, "show", str(card))
    assert shown["label"] == "cards & flights" and shown["size"] == 24
    assert f'cluster {card} "cards & flights"' in run(data_dir, "show", str(card)).output
    rows = list(csv.DictReader(io.StringIO(run(data_dir, "export", "--format", "csv").output)))
    assert {r["cluster_label"] for r in rows if r["cluster"] == str(card)} == {"cards & flights"}
    lines = [json.loads(line) for line in run(data_dir, "export").output.splitlines()]
    assert {r["cluster_label"] for r in lines if r["cluster"] == card} == {"cards & flights"}
    events = as_json(data_dir, "history", str(card))["events"]
    assert [e["kind"] for e in events if e["detail"].get("curated")] == ["merge", "label"]
    undone = as_json(data_dir, "unmerge", str(card))
    assert undone["related"] == [flight] and undone["size"] == 12
    cleared = as_json(data_dir, "label", str(card), "--clear")
    assert cleared["label"] is None and cleared["cleared"] is True


def test_split_text_and_json(data_dir):
    with Store.open(data_dir, device="cpu") as s:
        bank = next(c.id for c in s.clusters() if "bank transfer" in c.keywords)
    out = run(data_dir, "split", str(bank), "--resolution", "1").output
    assert f"split {bank} (12 sentences) at resolution 1 into:" in out
    listed = as_json(data_dir, "clusters")["clusters"]
    assert bank not in {c["id"] for c in listed} and sorted(c["size"] for c in listed) == [6, 6, 12, 12, 12]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["merge", "999", "{card}"], "no cluster 999 in run 1", 1),
        (["merge", "{card}", "{card}"], "cannot merge cluster {card} with itself", 1),
        (["merge", "{card}"], "a merge needs at least two cluster ids", 1),
        (["merge", "{card}", "{topic}"], "{topic} is a coarse topic of run 1; merge its fine clusters", 1),
        (["split", "{topic}"], "{topic} is a coarse topic of run 1; split its fine clusters", 1),
        (["split", "{card}", "--resolution", "0"], "0.0 is not in the range x>0", 2),
        (["unmerge", "{card}"], "cluster {card} has no merge to undo", 1),
        (["label", "{card}"], "give either TEXT or --clear", 2),
        (["label", "{card}", "x", "--clear"], "give either TEXT or --clear", 2),
        (["label", "777", "x"], "no cluster 777 in run 1", 1),
        (["merge", "x", "1"], "'x' is not a cluster id", 2),
    ],
)
def test_bad_edits_get_one_line_and_an_exit_code(data_dir, args, message, code):
    ids = ids_of(data_dir)
    with Store.open(data_dir, device="cpu") as s:
        topic = s.clusters(level="coarse")[0].id
    fill = {"card": ids["card"], "topic": topic}
    args = [a.format(**fill) for a in args]
    result = run(data_dir, *args, code=code)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message.format(**fill) in lines[0], result.output
    error = as_json(data_dir, *args, code=code)
    assert message.format(**fill) in error["error"] and error["command"] == args[0]


def test_edits_without_a_run(tmp_path):
    path = tmp_path / "empty"
    with Store.open(path, device="cpu") as s:
        s.ingest(["one sentence", "two sentences"])
    result = run(path, "merge", "1", "2", code=1)
    assert "no clustering run yet" in result.output
