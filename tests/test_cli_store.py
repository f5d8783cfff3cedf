"""The store commands of the CLI: ingest (every format, stdin, bad input), stats, search,
verify (and --repair), rebuild-index, delete; --data-dir / CLUSTERER_DATA_DIR / --db."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clusterer.cli import cli

TEXTS = [
    "my credit card payment was declined",
    "credit card payment declined at the shop",
    "why was my card payment declined",
    "cancel my flight booking please",
    "how do I cancel a flight booking",
]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def run(runner, args, data_dir=None, **kwargs):
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return runner.invoke(cli, [*args, *extra], catch_exceptions=False, **kwargs)


def run_json(runner, args, data_dir=None, expect=0, **kwargs):
    result = run(runner, [*args, "--json"], data_dir, **kwargs)
    assert result.exit_code == expect, (result.exit_code, result.output)
    return json.loads(result.stdout)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stats(runner, data_dir, **kwargs):
    return run_json(runner, ["stats"], data_dir, **kwargs)


# -- ingest formats ----------------------------------------------------------------


def test_ingest_text_file_json_fields_and_idempotent_rerun(runner, tmp_path, data_dir):
    path = write_lines(tmp_path / "in.txt", [TEXTS[0], "", TEXTS[1], "   ", TEXTS[0], TEXTS[2]])
    out = run_json(runner, ["ingest", str(path)], data_dir)
    assert out["added"] == 3
    assert out["duplicates"] == 1
    assert out["empty"] == 2
    assert out["invalid"] == 0
    assert len(out["inputs"]) == 1 and out["inputs"][0]["source"] == str(path)
    assert out["inputs"][0]["added"] == 3
    again = run_json(runner, ["ingest", str(path)], data_dir)
    assert again["added"] == 0
    assert again["duplicates"] == 4
    s = stats(runner, data_dir)
    assert s["sentences"] == 3
    assert s["index"]["indexed"] == 3
    assert s["model"] == "fake-hashing-encoder" and s["dimension"] == 32


def test_ingest_human_output(runner, tmp_path, data_dir):
    path = write_lines(tmp_path / "in.txt", TEXTS)
    result = run(runner, ["ingest", str(path)], data_dir)
    assert result.exit_code == 0
    assert "5 added" in result.stdout and "0 duplicates" in result.stdout


def test_ingest_csv_with_text_column_puts_other_columns_in_metadata(runner, tmp_path, data_dir):
    path = tmp_path / "in.csv"
    path.write_text(
        'id,body,label\na1,my credit card payment was declined,card\n"a2","cancel my flight booking, please",travel\n',
        encoding="utf-8",
    )
    out = run_json(runner, ["ingest", str(path), "--text-column", "body"], data_dir)
    assert out["added"] == 2
    hits = run_json(runner, ["search", "cancel my flight booking, please", "-k", "2"], data_dir)["hits"]
    assert hits[0]["text"] == "cancel my flight booking, please"
    assert hits[0]["metadata"] == {"id": "a2", "label": "travel"}
    by_text = {h["text"]: h for h in hits}
    assert by_text["my credit card payment was declined"]["metadata"] == {"id": "a1", "label": "card"}


def test_ingest_jsonl_with_text_field(runner, tmp_path, data_dir):
    path = tmp_path / "in.jsonl"
    rows = [{"text": "ignored field", "body": TEXTS[0], "n": 1}, {"body": TEXTS[3], "tags": ["x"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = run_json(runner, ["ingest", str(path), "--text-field", "body"], data_dir)
    assert out["added"] == 2
    hits = run_json(runner, ["search", TEXTS[3], "-k", "1"], data_dir)["hits"]
    assert hits[0]["text"] == TEXTS[3]
    assert hits[0]["metadata"] == {"tags": ["x"]}


def test_ingest_stdin(runner, data_dir):
    out = run_json(runner, ["ingest", "-"], data_dir, input="\n".join(TEXTS) + "\n" + TEXTS[0] + "\n")
    assert out["added"] == 5 and out["duplicates"] == 1
    assert out["inputs"][0]["source"] == "<stdin>"
    assert stats(runner, data_dir)["sentences"] == 5


def test_ingest_several_inputs_sums_counts(runner, tmp_path, data_dir):
    a = write_lines(tmp_path / "a.txt", TEXTS[:3])
    b = write_lines(tmp_path / "b.txt", TEXTS[2:])
    out = run_json(runner, ["ingest", str(a), str(b)], data_dir)
    assert [i["added"] for i in out["inputs"]] == [3, 2]
    assert out["added"] == 5 and out["duplicates"] == 1


# -- where the store is -------------------------------------------------------------


def test_data_dir_option_and_env_var(runner, tmp_path, monkeypatch):
    path = write_lines(tmp_path / "in.txt", TEXTS)
    opt_dir, env_dir = tmp_path / "by-option", tmp_path / "by-env"
    run_json(runner, ["ingest", str(path)], opt_dir)
    assert (opt_dir / "clusterer.db").exists() and (opt_dir / "index.faiss").exists()

    monkeypatch.setenv("CLUSTERER_DATA_DIR", str(env_dir))
    out = run_json(runner, ["ingest", str(path)])
    assert out["added"] == 5
    assert (env_dir / "clusterer.db").exists()
    assert stats(runner, None)["data_dir"] == str(env_dir)
    # the option still wins over the variable
    assert stats(runner, opt_dir)["data_dir"] == str(opt_dir)


def test_data_dir_via_runner_env(runner, tmp_path):
    path = write_lines(tmp_path / "in.txt", TEXTS[:2])
    env = {"CLUSTERER_DATA_DIR": str(tmp_path / "env2")}
    assert run_json(runner, ["ingest", str(path)], env=env)["added"] == 2
    assert run_json(runner, ["stats"], env=env)["sentences"] == 2


def test_default_data_dir_is_cwd_clusterer_data(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("CLUSTERER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    write_lines(tmp_path / "in.txt", TEXTS[:2])
    run_json(runner, ["ingest", "in.txt"])
    assert (tmp_path / "clusterer-data" / "clusterer.db").exists()


def test_db_option_with_postgresql(runner, tmp_path, pg_url):
    path = write_lines(tmp_path / "in.txt", TEXTS)
    data_dir = tmp_path / "pgdata"
    out = run_json(runner, ["ingest", str(path), "--db", pg_url], data_dir)
    assert out["added"] == 5
    assert not (data_dir / "clusterer.db").exists()
    s = run_json(runner, ["stats", "--db", pg_url], data_dir)
    assert s["sentences"] == 5
    assert "postgresql" in s["database"]
    hits = run_json(runner, ["search", TEXTS[3], "-k", "1", "--db", pg_url], data_dir)["hits"]
    assert hits[0]["text"] == TEXTS[3]


# -- stats, search, verify, rebuild, delete -----------------------------------------


@pytest.fixture
def filled(runner, tmp_path, data_dir):
    path = write_lines(tmp_path / "in.txt", TEXTS)
    run_json(runner, ["ingest", str(path)], data_dir)
    return data_dir


def test_stats_json_fields(runner, filled):
    s = stats(runner, filled)
    assert s["sentences"] == 5
    assert s["duplicates_skipped"] == 0
    idx = s["index"]
    assert idx["exists"] is True and idx["bytes"] > 0
    assert idx["indexed"] == 5 and idx["pending"] == 0 and idx["dirty"] is False
    human = run(runner, ["stats"], filled)
    assert human.exit_code == 0 and "sentences:" in human.stdout and "5" in human.stdout


def test_search_returns_k_hits_most_similar_first(runner, filled):
    out = run_json(runner, ["search", "credit card payment declined", "-k", "2"], filled)
    assert out["query"] == "credit card payment declined"
    hits = out["hits"]
    assert len(hits) == 2
    assert hits[0]["similarity"] >= hits[1]["similarity"]
    assert all("card" in h["text"] for h in hits)
    assert {"id", "text", "similarity", "metadata", "source"} <= set(hits[0])


def test_search_exact_text_is_top_hit_with_similarity_one(runner, filled):
    hits = run_json(runner, ["search", TEXTS[4], "-k", "5"], filled)["hits"]
    assert len(hits) == 5
    assert hits[0]["text"] == TEXTS[4]
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True)


def test_verify_ok_then_corrupt_then_repair(runner, filled):
    ok = run(runner, ["verify"], filled)
    assert ok.exit_code == 0 and "OK" in ok.stdout
    assert run_json(runner, ["verify"], filled)["ok"] is True

    index_file = filled / "index.faiss"
    raw = bytearray(index_file.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    index_file.write_bytes(bytes(raw))

    bad = run(runner, ["verify"], filled)
    assert bad.exit_code == 1
    assert "problem" in bad.stdout
    bad_json = run_json(runner, ["verify"], filled, expect=1)
    assert bad_json["ok"] is False and bad_json["problems"]

    repaired = run_json(runner, ["verify", "--repair"], filled)
    assert repaired["ok"] is True and repaired["indexed"] == 5
    assert run(runner, ["verify"], filled).exit_code == 0


def test_verify_detects_missing_index_file(runner, filled):
    (filled / "index.faiss").unlink()
    assert run(runner, ["verify"], filled).exit_code == 1
    assert run(runner, ["verify", "--repair"], filled).exit_code == 0
    assert (filled / "index.faiss").exists()


def test_rebuild_index(runner, filled):
    (filled / "index.faiss").write_bytes(b"garbage")
    out = run_json(runner, ["rebuild-index"], filled)
    assert out["indexed"] == 5
    assert out["index_type"] == "Flat"
    assert run(runner, ["verify"], filled).exit_code == 0
    human = run(runner, ["rebuild-index"], filled)
    assert human.exit_code == 0 and "rebuilt" in human.stdout


def test_delete(runner, filled):
    out = run_json(runner, ["delete", "1", "2"], filled)
    assert out == {"deleted": [1, 2], "not_found": []}
    assert stats(runner, filled)["sentences"] == 3
    hits = run_json(runner, ["search", TEXTS[0], "-k", "5"], filled)["hits"]
    assert {h["id"] for h in hits} == {3, 4, 5}
    assert run(runner, ["verify"], filled).exit_code == 0
    # partly unknown ids: exit 0, reported
    out = run_json(runner, ["delete", "3", "99"], filled)
    assert out == {"deleted": [3], "not_found": [99]}
    # nothing deleted at all: exit 1
    result = run(runner, ["delete", "99"], filled)
    assert result.exit_code == 1 and "not found: 99" in result.stdout


def test_deleted_text_can_be_ingested_again(runner, tmp_path, filled):
    run_json(runner, ["delete", "1"], filled)
    path = write_lines(tmp_path / "again.txt", [TEXTS[0]])
    assert run_json(runner, ["ingest", str(path)], filled)["added"] == 1


# -- bad input ---------------------------------------------------------------------


def _no_traceback(result):
    assert "Traceback" not in result.output
    assert "Traceback" not in (result.stderr or "")


def test_invalid_utf8_names_file_and_line_and_keeps_earlier_lines(runner, tmp_path, data_dir):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"first good line\nsecond good line\nbroken \xff\xfe byte\nfourth line\n")
    result = run(runner, ["ingest", str(path)], data_dir)
    assert result.exit_code != 0
    _no_traceback(result)
    assert "bad.txt" in result.stderr
    assert "line 3" in result.stderr
    s = stats(runner, data_dir)
    assert s["sentences"] == 2
    texts = {h["text"] for h in run_json(runner, ["search", "good line", "-k", "5"], data_dir)["hits"]}
    assert texts == {"first good line", "second good line"}


def test_bad_input_rerun_is_idempotent(runner, tmp_path, data_dir):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"first good line\nsecond good line\nbroken \xff byte\n")
    assert run(runner, ["ingest", str(path)], data_dir).exit_code != 0
    assert run(runner, ["ingest", str(path)], data_dir).exit_code != 0
    assert stats(runner, data_dir)["sentences"] == 2


def test_nul_byte(runner, tmp_path, data_dir):
    path = tmp_path / "nul.txt"
    path.write_bytes(b"alpha beta\ngamma\x00delta\n")
    result = run(runner, ["ingest", str(path)], data_dir)
    assert result.exit_code != 0
    _no_traceback(result)
    assert "nul.txt" in result.stderr and "line 2" in result.stderr
    assert "NUL" in result.stderr
    assert stats(runner, data_dir)["sentences"] == 1


def test_csv_without_the_named_column_lists_columns(runner, tmp_path, data_dir):
    path = tmp_path / "in.csv"
    path.write_text("id,body,label\n1,hello there,x\n", encoding="utf-8")
    result = run(runner, ["ingest", str(path), "--text-column", "message"], data_dir)
    assert result.exit_code != 0
    _no_traceback(result)
    assert "in.csv" in result.stderr
    assert "message" in result.stderr
    for col in ("id", "body", "label"):
        assert col in result.stderr


def test_malformed_jsonl_line(runner, tmp_path, data_dir):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "good one"}\n{"text": "missing quote}\n{"text": "good two"}\n', encoding="utf-8")
    result = run(runner, ["ingest", str(path)], data_dir)
    assert result.exit_code != 0
    _no_traceback(result)
    assert "in.jsonl" in result.stderr and "line 2" in result.stderr
    assert stats(runner, data_dir)["sentences"] == 1


def test_skip_invalid_exits_zero_and_counts(runner, tmp_path, data_dir):
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"text": "good one"}\n{"text": broken\n{"text": "good two"}\n{"other": 1}\n{"text": "good three"}\n',
        encoding="utf-8",
    )
    out = run_json(runner, ["ingest", str(path), "--skip-invalid"], data_dir)
    assert out["added"] == 3
    assert out["invalid"] == 2
    assert any("line 2" in e for e in out["inputs"][0]["errors"])
    assert stats(runner, data_dir)["invalid_skipped"] == 2
    human = run(runner, ["ingest", str(path), "--skip-invalid"], data_dir)
    assert human.exit_code == 0 and "2 invalid skipped" in human.stdout


def test_skip_invalid_bad_utf8(runner, tmp_path, data_dir):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"one good\ntwo \xff bad\nthree good\n")
    out = run_json(runner, ["ingest", str(path), "--skip-invalid"], data_dir)
    assert out["added"] == 2 and out["invalid"] == 1


def test_missing_input_file(runner, tmp_path, data_dir):
    result = run(runner, ["ingest", str(tmp_path / "nope.txt")], data_dir)
    assert result.exit_code != 0
    _no_traceback(result)
    assert "nope.txt" in result.stderr


def test_stats_on_missing_data_dir(runner, tmp_path):
    missing = tmp_path / "does-not-exist"
    result = run(runner, ["stats"], missing)
    assert result.exit_code == 1
    _no_traceback(result)
    assert "no store" in result.stderr and str(missing) in result.stderr
    assert not missing.exists()


@pytest.mark.parametrize("command", [["stats"], ["search", "hello"], ["verify"], ["delete", "1"], ["rebuild-index"]])
def test_commands_on_missing_store_fail_cleanly(runner, tmp_path, command):
    result = run(runner, command, tmp_path / "missing")
    assert result.exit_code == 1
    _no_traceback(result)
    assert "no store" in result.stderr


def test_json_error_output_is_an_object_with_error(runner, tmp_path, data_dir):
    out = run_json(runner, ["stats"], tmp_path / "missing", expect=1)
    assert isinstance(out, dict) and "no store" in out["error"]
    assert out["command"] == "stats"
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok line\nbad \xff\n")
    out = run_json(runner, ["ingest", str(path)], data_dir, expect=1)
    assert "bad.txt" in out["error"] and "line 2" in out["error"]
