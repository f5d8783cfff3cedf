"""The CLI's failure behaviour (issue 8's faults): one line and exit 1 for errors, exit 2 for
usage errors, {"error": ...} with --json, tracebacks only with --debug; ids out of range;
empty query texts; export's JSON Lines contract; verify --repair; read-only data folders;
runs left `running` by a killed process; a store whose first ingest died early."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clusterer.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    f"{topic} sentence number {i}" for topic in ("credit card declined", "flight booking cancelled") for i in range(8)
]


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("CLUSTERER_DEVICE", "cpu")
    monkeypatch.delenv("CLUSTERER_DEBUG", raising=False)


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, args, data_dir=None, **kwargs):
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return runner.invoke(cli, [*args, *extra], **kwargs)


@pytest.fixture
def filled(runner, tmp_path):
    data = tmp_path / "data"
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert run(runner, ["ingest", str(src)], data).exit_code == 0
    return data


@pytest.fixture
def clustered(runner, filled):
    result = run(runner, ["cluster", "--method", "kmeans", "--k", "2"], filled)
    assert result.exit_code == 0, result.output
    return filled


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# -- fault 3: internal errors, --debug ---------------------------------------------------


def test_unexpected_exception_is_one_line_and_exit_1_and_traceback_with_debug(runner, filled, monkeypatch):
    def broken(self, *a, **k):
        raise KeyError(12345)

    monkeypatch.setattr("indexer.sentence_store.SentenceStore.stats", broken)
    result = run(runner, ["stats"], filled)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "KeyError" in line and "--debug" in line
    as_json = run(runner, ["stats", "--json"], filled)
    assert as_json.exit_code == 1 and "KeyError" in json.loads(as_json.stdout)["error"]
    debug = run(runner, ["--debug", "stats"], filled)
    assert debug.exit_code == 1 and isinstance(debug.exception, KeyError)
    monkeypatch.setenv("CLUSTERER_DEBUG", "1")
    assert isinstance(run(runner, ["stats"], filled).exception, KeyError)


def test_value_error_from_deep_inside_is_one_line(runner, filled, monkeypatch):
    monkeypatch.setattr(
        "indexer.sentence_store.SentenceStore.verify",
        lambda self: (_ for _ in ()).throw(ValueError("bad\nsecond line")),
    )
    result = run(runner, ["verify"], filled)
    assert result.exit_code == 1
    assert "bad second line" in one_error_line(result)


# -- fault 14: usage errors with --json, negative ids ----------------------------------


def test_usage_errors_are_one_line_exit_2_and_json_objects_with_json(runner, tmp_path):
    plain = run(runner, ["ingest", "--no-such-flag", "x"])
    assert plain.exit_code == 2
    assert "no-such-flag" in one_error_line(plain)
    as_json = run(runner, ["ingest", "--no-such-flag", "x", "--json"])
    assert as_json.exit_code == 2
    payload = json.loads(as_json.stdout)
    assert "no-such-flag" in payload["error"] and payload["command"] == "ingest"
    missing_arg = run(runner, ["search", "--json"])
    assert missing_arg.exit_code == 2 and "error" in json.loads(missing_arg.stdout)


@pytest.mark.parametrize(
    "command", [["members", "-1"], ["show", "-3"], ["history", "-1"], ["which", "-7"], ["delete", "-2"]]
)
def test_negative_ids_get_a_clear_message(runner, clustered, command):
    result = run(runner, command, clustered)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "No such option" not in line and "not an id" in line
    payload = json.loads(run(runner, [*command, "--json"], clustered).stdout)
    assert "not an id" in payload["error"]


# -- fault 8: ids >= 2**63 -----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["which", "99999999999999999999"],
        ["members", "99999999999999999999"],
        ["show", str(2**63)],
        ["history", str(2**63)],
        ["delete", str(2**63)],
        ["delete", "5", str(2**64)],
        ["clusters", "--run", str(2**63)],
    ],
)
def test_huge_ids_are_rejected_in_one_line(runner, clustered, command):
    result = run(runner, command, clustered)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "OverflowError" not in line and "is not a" in line and "id" in line


def test_largest_sentence_id_is_accepted_and_simply_not_found(runner, clustered):
    result = run(runner, ["which", str(2**63 - 1)], clustered)
    assert result.exit_code == 1
    assert "no sentence with id" in one_error_line(result)


# -- fault 11: empty texts -------------------------------------------------------------


@pytest.mark.parametrize("command", [["search", ""], ["search", "   "], ["lookup", ""]])
def test_empty_query_text_is_an_error(runner, clustered, command):
    result = run(runner, command, clustered)
    assert result.exit_code == 1
    assert "empty" in one_error_line(result)


# -- fault 4: export --json is JSON Lines ------------------------------------------------


def test_export_json_to_stdout_is_json_lines(runner, clustered):
    result = run(runner, ["export", "--json"], clustered)
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(TEXTS)
    assert all(
        set(r) == {"id", "text", "metadata", "cluster", "similarity", "coarse_cluster", "cluster_label"} for r in rows
    )
    csv_json = run(runner, ["export", "--json", "--format", "csv"], clustered)
    assert csv_json.exit_code == 2 and "JSON Lines" in json.loads(csv_json.stdout)["error"]


def test_export_json_with_output_prints_one_summary_document(runner, clustered, tmp_path):
    out = tmp_path / "out.csv"
    result = run(runner, ["export", "--json", "--format", "csv", "--output", str(out)], clustered)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"exported": len(TEXTS), "output": str(out), "format": "csv"}


# -- fault 6: verify --repair replays when a replay is enough, and verifies once ----------


def _drop_from_index_file(data: Path, how_many: int) -> None:
    from indexer.sentence_store import SentenceStore

    with SentenceStore(data, recover=False) as store, store.lock:
        index = store.index
        index.remove(np.sort(index.ids())[-how_many:])
        store.cache.save(index)


def test_verify_repair_replays_missing_rows_without_rebuilding(runner, filled, monkeypatch):
    _drop_from_index_file(filled, 3)
    assert run(runner, ["verify"], filled).exit_code == 1
    from indexer.index_cache import IndexCache

    calls = {"build": 0, "verify": 0}
    real_build, real_verify = IndexCache.build, IndexCache.verify

    def counting_build(self, *a, **k):
        calls["build"] += 1
        return real_build(self, *a, **k)

    def counting_verify(self, *a, **k):
        calls["verify"] += 1
        return real_verify(self, *a, **k)

    monkeypatch.setattr(IndexCache, "build", counting_build)
    monkeypatch.setattr(IndexCache, "verify", counting_verify)
    result = run(runner, ["verify", "--repair", "--json"], filled)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["indexed"] == len(TEXTS)
    assert out["repair"]["action"] == "replayed" and out["repair"]["added"] == 3
    assert calls == {"build": 0, "verify": 1}
    assert run(runner, ["verify"], filled).exit_code == 0


def test_verify_repair_rebuilds_a_damaged_file(runner, filled):
    (filled / "index.faiss").write_bytes(b"garbage")
    out = json.loads(run(runner, ["verify", "--repair", "--json"], filled).stdout)
    assert out["ok"] is True and out["repair"]["action"] == "rebuilt"


# -- fault 14: stats on a damaged index file, corrupt database names the file ----------


def test_stats_does_not_report_a_damaged_index_file_as_indexed(runner, filled):
    before = json.loads(run(runner, ["stats", "--json"], filled).stdout)["index"]
    assert before["indexed"] == len(TEXTS) and before["damaged"] is False
    path = filled / "index.faiss"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    after = json.loads(run(runner, ["stats", "--json"], filled).stdout)["index"]
    assert after["damaged"] is True and after["indexed"] == 0
    human = run(runner, ["stats"], filled)
    assert "DAMAGED" in human.stdout


def test_corrupt_database_message_names_the_file(runner, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "clusterer.db").write_bytes(b"this is not a database at all" * 200)
    result = run(runner, ["stats"], data)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert str(data / "clusterer.db") in line and "not a" in line


# -- fault 12: a run killed while running ----------------------------------------------


def test_run_left_running_by_a_killed_process_is_marked_interrupted_by_the_next_writer(runner, filled, tmp_path):
    from clusterer.api import Store
    from storage import clusters as cq

    with (
        Store(filled, recover=False) as store,
        store.db.write() as session,
    ):  # what a SIGKILL during `clusterer cluster` leaves behind
        run_id = cq.create_run(session, "kmeans", {"k": 2}).id
    listed = json.loads(run(runner, ["runs", "--json"], filled).stdout)["runs"]
    assert [r["status"] for r in listed if r["id"] == run_id] == ["running"]  # readers change nothing
    more = tmp_path / "more.txt"
    more.write_text("one more sentence about refunds\n", encoding="utf-8")
    assert run(runner, ["ingest", str(more)], filled).exit_code == 0
    listed = json.loads(run(runner, ["runs", "--json"], filled).stdout)["runs"]
    (mine,) = [r for r in listed if r["id"] == run_id]
    assert mine["status"] == "interrupted" and "ended before it finished" in mine["error"]


def test_sigkilled_cluster_command_leaves_an_interrupted_run(tmp_path, filled):
    """The real thing: kill -9 `clusterer cluster` while its run is in progress."""
    code = (
        "import os, signal, sys\n"
        "import indexer.sentence_store as m\n"
        "from tests.fakes import FakeEncoder\n"
        "m.make_encoder = lambda *a, **k: FakeEncoder()\n"
        "import clusterer.service.runs as r\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "r.compute_labels = die\n"
        "from clusterer.cli import cli\n"
        "cli(['cluster', '--method', 'kmeans', '--k', '2', '--data-dir', sys.argv[1]], prog_name='clusterer')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(filled)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    from clusterer.api import Store

    with Store(filled, recover=False) as store:
        assert [r.status for r in store.runs()] == ["running"]
    with Store(filled) as store:  # a writer opens the store (recovery takes the writer lock)
        assert [r.status for r in store.runs()] == ["interrupted"]


# -- fault 13: the first ingest died before any commit ----------------------------------


def test_store_whose_first_ingest_died_before_any_commit_verifies_as_empty(runner, tmp_path):
    code = (
        "import os, signal, sys\n"
        "import indexer.sentence_store as m\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "m.make_encoder = die\n"  # dies while the model loads, before the first commit
        "from clusterer.cli import cli\n"
        "cli(['ingest', sys.argv[2], '--data-dir', sys.argv[1]], prog_name='clusterer')\n"
    )
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(data), str(src)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert (data / "clusterer.db").exists()
    verify = run(runner, ["verify", "--json"], data)
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout) == {"ok": True, "problems": [], "sentences": 0, "indexed": 0, "watermark": 0}
    assert json.loads(run(runner, ["stats", "--json"], data).stdout)["sentences"] == 0
    assert run(runner, ["ingest", str(src)], data).exit_code == 0
    assert json.loads(run(runner, ["verify", "--json"], data).stdout)["sentences"] == len(TEXTS)


# -- fault 14: connection refused in one line --------------------------------------------


def test_connection_refused_is_one_line(runner, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = run(runner, ["stats", "--db", f"postgresql://127.0.0.1:{port}/nothing"], tmp_path / "d")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"127.0.0.1:{port}" in line and "refused" in line.lower()


# -- fault 10: a read-only data folder ------------------------------------------------------


def _cli_read_only_user(args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI so that file modes bind it: root ignores them, so as root the child runs
    without the capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), which
    makes a chmod-ed folder really read-only for it, as for any other user."""
    code = (
        "import sys\n"
        "import indexer.sentence_store as m\n"
        "from tests.fakes import FakeEncoder\n"
        "m.make_encoder = lambda *a, **k: FakeEncoder()\n"
        "from clusterer.cli import cli\n"
        "cli(sys.argv[1:], prog_name='clusterer')\n"
    )
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make file modes bind")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), CLUSTERER_DEVICE="cpu")
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture
def read_only_store(runner, filled, tmp_path):
    """A clustered store copied to a folder made read-only with chmod."""
    assert run(runner, ["cluster", "--method", "kmeans", "--k", "2"], filled).exit_code == 0
    data = tmp_path / "ro" / "data"
    shutil.copytree(filled, data)
    for path in [*data.iterdir(), data]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    probe = _cli_read_only_user(["--help"])
    assert probe.returncode == 0, probe.stderr
    touch = subprocess.run(
        [
            *(["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []),
            "touch",
            str(data / "probe"),
        ],
        capture_output=True,
    )
    assert touch.returncode != 0, "the folder is still writable for the child"
    yield data
    for path in [data, *data.iterdir()]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def test_read_only_folder_reads_work_and_writes_say_not_writable(read_only_store, tmp_path):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in read_only_store.iterdir())
    for command in (
        ["stats"],
        ["search", "credit card declined"],
        ["verify"],
        ["clusters"],
        ["lookup", "flight booking cancelled"],
        ["which", "1"],
        ["export"],
        ["runs"],
    ):
        result = _cli_read_only_user([*command, "--json", "--data-dir", str(read_only_store)])
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        json.loads(result.stdout.splitlines()[0])
    stats = json.loads(_cli_read_only_user(["stats", "--json", "--data-dir", str(read_only_store)]).stdout)
    assert stats["read_only"] is True and stats["sentences"] == len(TEXTS)
    src = tmp_path / "more.txt"
    src.write_text("a new sentence\n", encoding="utf-8")
    for command in (
        ["ingest", str(src)],
        ["delete", "1"],
        ["rebuild-index"],
        ["cluster", "--method", "kmeans", "--k", "2"],
    ):
        result = _cli_read_only_user([*command, "--data-dir", str(read_only_store)])
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "not writable" in lines[0] and str(read_only_store) in lines[0], result.stderr
    after = sorted((p.name, p.stat().st_mtime_ns) for p in read_only_store.iterdir())
    assert after == before
    conn = sqlite3.connect(f"file:{read_only_store / 'clusterer.db'}?mode=ro", uri=True)
    assert conn.execute("SELECT count(*) FROM sentences").fetchone()[0] == len(TEXTS)
    conn.close()
