"""`clusterer ingest --ray` on a two-node Ray cluster on loopback: the same rows as a normal
ingest, idempotent re-runs, a worker killed mid-ingest losing and duplicating nothing,
PostgreSQL as the shared store, file-and-line errors from the workers' readers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clusterer.cli import cli
from clusterer.distributed.ray_embed import EncoderSpec
from clusterer.distributed.ray_ingest import ingest_on_ray
from clusterer.distributed.ray_read import ReadOptions
from clusterer.settings import Settings
from indexer.sentence_store import SentenceStore
from tests.fakes import FakeEncoder
from tests.ray_support import FAKE_FACTORY, sentences, time_guard, two_node_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with two_node_cluster() as c:
        yield c


@pytest.fixture
def inputs(tmp_path):
    texts = sentences(300)
    (tmp_path / "a.txt").write_text("\n".join(texts[:150] + texts[:10]) + "\n\n", encoding="utf-8")
    rows = ["text,lang"] + [f'"{t}",en' for t in texts[150:]]
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(sentences(40, 1000))) + "\n", encoding="utf-8"
    )
    return [str(tmp_path / n) for n in ("a.txt", "b.csv", "c.jsonl")]


def rows_of(data_dir, db_url=None):
    store = SentenceStore(data_dir, db_url=db_url, encoder=FakeEncoder(), create=False)
    try:
        ids, x = store.embeddings()
        got = store.get(ids.tolist())
        report = store.verify()
        assert report.ok, report.problems
        return [(got[i].text, got[i].meta, got[i].source_file, got[i].source_line) for i in ids.tolist()], x
    finally:
        store.close()


def ray_ingest(monkeypatch, data_dir, paths, *extra, db=None):
    monkeypatch.setenv("CLUSTERER_RAY_ENCODER", FAKE_FACTORY)
    args = ["ingest", *paths, "--data-dir", str(data_dir), "--ray", "local", "--json", *extra]
    if db:
        args += ["--db", db]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # stderr (Ray's own warnings) is mixed into the output: the summary is the JSON line
    return json.loads([line for line in result.output.splitlines() if line.startswith("{")][-1])


def test_same_rows_as_a_normal_ingest_and_idempotent(cluster, tmp_path, inputs, monkeypatch):
    with time_guard():
        normal = CliRunner().invoke(cli, ["ingest", *inputs, "--data-dir", str(tmp_path / "one"), "--json"])
        assert normal.exit_code == 0, normal.output
        summary = ray_ingest(monkeypatch, tmp_path / "ray", inputs)
        expected = json.loads(normal.output)
        for key in ("added", "duplicates", "empty", "invalid"):
            assert summary[key] == expected[key], key
        assert summary["added"] == 340 and summary["duplicates"] == 10 and summary["empty"] == 1
        assert summary["ray"]["cluster"]["nodes"] == 2 and summary["ray"]["workers"] == 2
        one, x_one = rows_of(tmp_path / "one")
        many, x_many = rows_of(tmp_path / "ray")
        assert many == one  # same texts, metadata, sources and lines, in the same order
        assert (x_many == x_one).all()

        again = ray_ingest(monkeypatch, tmp_path / "ray", inputs)
        assert again["added"] == 0 and again["duplicates"] == 350
        assert rows_of(tmp_path / "ray")[0] == one


def test_a_worker_killed_mid_ingest_loses_and_duplicates_nothing(cluster, tmp_path):
    with time_guard():
        texts = sentences(1200)
        path = tmp_path / "big.txt"
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
        flag = tmp_path / "killed"
        spec = EncoderSpec("tests.ray_support:KillOnceEncoder", {"flag": str(flag), "after": 2})
        settings = Settings(data_dir=tmp_path / "ray", ray_address="local", batch_size=100)
        done = ingest_on_ray(settings, [str(path)], spec=spec)
        assert flag.exists(), "no worker was killed"
        assert sum(r.added for r in done.reports) == 1200
        rows, _ = rows_of(tmp_path / "ray")
        assert [r[0] for r in rows] == texts  # every line once, in order


def test_postgresql_as_the_shared_store(cluster, tmp_path, inputs, pg_url, monkeypatch):
    with time_guard():
        summary = ray_ingest(monkeypatch, tmp_path / "host-a", inputs, db=pg_url)
        assert summary["added"] == 340
        # a second host (its own data folder) on the same database: everything is already there
        again = ray_ingest(monkeypatch, tmp_path / "host-b", inputs[:1], db=pg_url)
        assert again["added"] == 0 and again["duplicates"] == 160
        rows, _ = rows_of(tmp_path / "host-b", pg_url)
        assert len(rows) == 340 and len({r[0] for r in rows}) == 340


def test_bad_line_names_file_and_line(cluster, tmp_path, monkeypatch):
    with time_guard():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "fine sentence"}\n{"text": 5}\n', encoding="utf-8")
        monkeypatch.setenv("CLUSTERER_RAY_ENCODER", FAKE_FACTORY)
        result = CliRunner().invoke(cli, ["ingest", str(bad), "--data-dir", str(tmp_path / "d"), "--ray", "local"])
        assert result.exit_code == 1
        assert f"{bad}, line 2: text field 'text' is a number, expected a string" in result.output
        assert "Traceback" not in result.output


def test_parquet_input(cluster, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    with time_guard():
        texts = sentences(50)
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"body": texts, "stars": list(range(50))}), path)
        settings = Settings(data_dir=tmp_path / "ray", ray_address="local")
        spec = EncoderSpec("tests.fakes:FakeEncoder")
        done = ingest_on_ray(settings, [str(path)], read=ReadOptions(text_column="body"), spec=spec)
        assert done.reports[0].added == 50
        rows, _ = rows_of(tmp_path / "ray")
        assert rows[3] == (texts[3], {"stars": 3}, str(path), 4)
