"""The duplicates command, --where on search/export/cluster/clusters, and ingest
--near-duplicates-threshold, through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from clusterer.cli import cli

ROWS = [
    {"text": "alpha beta gamma delta", "lang": "en", "stars": 5},
    {"text": "red green blue yellow", "lang": "fr", "stars": 2},
    {"text": "alpha beta gamma delta epsilon", "lang": "en", "stars": 3},
    {"text": "one two three four", "lang": "en", "stars": 4},
    {"text": "alpha beta gamma delta zeta", "lang": "fr", "stars": 1},
    {"text": "red green blue yellow purple", "lang": "fr", "stars": 4},
]


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")


@pytest.fixture
def data_dir(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    d = tmp_path / "data"
    result = CliRunner().invoke(cli, ["ingest", str(src), "--data-dir", str(d)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return d


def invoke(args, data_dir, **kwargs):
    return CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir)], catch_exceptions=False, **kwargs)


def as_json(args, data_dir, expect=0):
    result = invoke([*args, "--json"], data_dir)
    assert result.exit_code == expect, result.output
    return json.loads(result.stdout)


def test_duplicates_report(data_dir):
    d = as_json(["duplicates", "--threshold", "0.8"], data_dir)
    assert (d["sentences"], d["groups"], d["in_groups"], d["removable"]) == (6, 2, 5, 3)
    first = d["items"][0]
    assert first["size"] == 3 and first["members"][0]["id"] == 1 and first["members"][0]["similarity"] == 1.0
    assert first["members"][0]["metadata"] == {"lang": "en", "stars": 5}
    assert all(m["similarity"] >= 0.8 for m in first["members"])
    human = invoke(["duplicates", "--threshold", "0.8"], data_dir)
    assert human.exit_code == 0
    assert "2 groups of near-duplicates" in human.output and "[5] alpha beta gamma delta zeta" in human.output


def test_duplicates_where_and_limit(data_dir):
    d = as_json(["duplicates", "--threshold", "0.8", "--where", "lang=fr"], data_dir)
    assert d["where"] == ["lang=fr"] and d["sentences"] == 3
    assert [sorted(m["id"] for m in g["members"]) for g in d["items"]] == [[2, 6]]
    d = as_json(["duplicates", "--threshold", "0.8", "--where", "lang=en", "--where", "stars>=4"], data_dir)
    assert d["sentences"] == 2 and d["groups"] == 0
    d = as_json(["duplicates", "--threshold", "0.8", "--limit", "1"], data_dir)
    assert d["groups"] == 2 and len(d["items"]) == 1


def test_duplicates_export_formats(data_dir, tmp_path):
    out = tmp_path / "groups.csv"
    result = invoke(["duplicates", "--threshold", "0.8", "--format", "csv", "-o", str(out)], data_dir)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [(r["group"], r["id"]) for r in rows][:1] == [("1", "1")]
    assert len(rows) == 5 and json.loads(rows[0]["metadata"]) == {"lang": "en", "stars": 5}
    result = invoke(["duplicates", "--threshold", "0.8", "--format", "jsonl"], data_dir)
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert len(lines) == 5 and {x["group"] for x in lines} == {1, 2}


def test_bad_where_is_one_line_error(data_dir):
    for args in (
        ["duplicates", "--where", "colour=red"],
        ["search", "alpha", "--where", "stars>abc"],
        ["duplicates", "--where", "a'); DROP TABLE sentences;--=1"],
    ):
        result = invoke(args, data_dir)
        assert result.exit_code != 0
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    err = as_json(["duplicates", "--where", "colour=red"], data_dir, expect=1)
    assert "unknown field 'colour'" in err["error"]
    assert as_json(["stats"], data_dir)["sentences"] == 6


def test_delete_keep_asks_and_honours_no(data_dir):
    result = invoke(["duplicates", "--threshold", "0.8", "--delete-keep", "first"], data_dir, input="n\n")
    assert result.exit_code == 0
    assert "will delete 3 sentences" in result.output and "delete [3]" in result.output
    assert "keep   [1]" in result.output and "nothing deleted" in result.output
    assert as_json(["stats"], data_dir)["sentences"] == 6


def test_delete_keep_confirmed_and_yes(data_dir):
    result = invoke(
        ["duplicates", "--threshold", "0.8", "--delete-keep", "first", "--limit", "1"], data_dir, input="y\n"
    )
    assert result.exit_code == 0, result.output
    assert "deleted 2 sentences" in result.output
    assert as_json(["stats"], data_dir)["sentences"] == 4
    d = as_json(["duplicates", "--threshold", "0.8", "--delete-keep", "longest", "--yes"], data_dir)
    assert d["deleted"] == [2] and d["delete_keep"] == "longest"
    assert as_json(["stats"], data_dir)["sentences"] == 3
    assert as_json(["duplicates", "--threshold", "0.8"], data_dir)["groups"] == 0
    assert as_json(["verify"], data_dir)["ok"]


def test_search_export_cluster_with_where(data_dir, tmp_path):
    d = as_json(["search", "alpha beta gamma delta", "-k", "2", "--where", "lang=fr"], data_dir)
    assert d["where"] == ["lang=fr"]
    assert len(d["hits"]) == 2 and d["hits"][0]["id"] == 5
    assert all(h["metadata"]["lang"] == "fr" for h in d["hits"])
    run = as_json(["cluster", "--method", "kmeans", "--k", "2", "--where", "lang=en"], data_dir)["run"]
    assert run["params"]["where"] == ["lang=en"] and run["sentences"] == 3
    listing = invoke(["clusters"], data_dir)
    assert "covers only sentences where lang=en" in listing.output
    out = tmp_path / "e.jsonl"
    assert invoke(["export", "--where", "stars>=4", "-o", str(out)], data_dir).exit_code == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in exported) == [1, 4]


def test_ingest_near_duplicates_threshold(data_dir, tmp_path):
    src = tmp_path / "more.txt"
    src.write_text(
        "alpha beta gamma delta eta\nalpha beta gamma delta\nbrand new words here\nbrand new words here again\n",
        encoding="utf-8",
    )
    d = as_json(["ingest", str(src), "--near-duplicates-threshold", "0.85"], data_dir)
    assert (d["added"], d["duplicates"], d["near_duplicates"]) == (1, 1, 2)
    human = invoke(["ingest", str(src), "--near-duplicates-threshold", "0.85"], data_dir)
    assert "0 added, 2 duplicates, 2 near-duplicates" in human.output
    assert invoke(["ingest", str(src), "--near-duplicates-threshold", "1.5"], data_dir).exit_code == 2
    assert as_json(["stats"], data_dir)["near_duplicates_skipped"] == 4
    assert "near-dups skipped:  4" in invoke(["stats"], data_dir).output
