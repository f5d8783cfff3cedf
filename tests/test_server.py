"""Every route of `clusterer serve` through FastAPI's test client, with the fake encoder:
answers match the Python API / `--json` commands, bad input gets 4xx JSON, auth and limits hold."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from clusterer.api import Store
from clusterer.cli import cli
from clusterer.server import create_app
from clusterer.settings import ServerSettings
from tests.fakes import NOISE, topic_texts


def make_store(path, clustered=True):
    store = Store.open(path, device="cpu")
    store.ingest(topic_texts() + NOISE, [{"n": i} for i in range(len(topic_texts()) + len(NOISE))])
    if clustered:
        store.cluster("community", threshold=0.6, min_size=5)
    return store


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    make_store(path).close()
    return path


def open_client(data_dir, **settings):
    store = Store.open(data_dir, device="cpu")
    return TestClient(create_app(store, ServerSettings(**settings)))


@pytest.fixture
def client(data_dir):
    with open_client(data_dir) as c:
        yield c


def cli_json(data_dir, *args):
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(data_dir), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def wait_job(client, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


# -- health, metrics, page ----------------------------------------------------------------


def wait_ready(client, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        ready = client.get("/readyz")
        if ready.status_code == 200 or time.monotonic() > deadline:
            return ready
        assert ready.status_code == 503 and ready.headers["retry-after"] and not ready.json()["ready"]
        time.sleep(0.05)


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = wait_ready(client)
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["index"]
    client.get("/clusters")
    client.get("/clusters/999999")
    text = client.get("/metrics").text
    assert 'clusterer_http_requests_total{method="GET",route="/clusters",status="200"} 1.0' in text
    assert 'clusterer_http_requests_total{method="GET",route="/clusters/{cluster_id}",status="404"} 1.0' in text
    assert 'clusterer_http_request_seconds_bucket{le="0.05",method="GET",route="/clusters"}' in text
    assert "clusterer_sentences 28.0" in text
    assert "clusterer_index_vectors 28.0" in text
    assert "clusterer_writer_queue_depth 0.0" in text
    assert "clusterer_last_run_id 1.0" in text


def test_page_and_static_files_need_no_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        body = client.get(asset)
        assert body.status_code == 200, asset
        assert "http://" not in body.text and "https://" not in body.text
    assert "https://" not in page.text and "http://" not in page.text


def test_openapi_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in (
        "/sentences",
        "/sentences/{sentence_id}",
        "/search",
        "/lookup",
        "/runs",
        "/jobs/{job_id}",
        "/clusters",
        "/clusters/{cluster_id}",
        "/clusters/{cluster_id}/members",
        "/sentences/{sentence_id}/cluster",
        "/clusters/{cluster_id}/history",
        "/unassigned",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert route in paths, route


# -- reads match the CLI's JSON -------------------------------------------------------------


def test_reads_answer_what_the_cli_prints(client, data_dir):
    store = client.app.state.service.store
    cid = store.clusters()[0].id
    sid = store.members(cid, limit=1)[0].id
    pairs = [
        ("/clusters", ["clusters"]),
        (f"/clusters/{cid}", ["show", str(cid)]),
        (f"/clusters/{cid}/members?limit=3&offset=1", ["members", str(cid), "--limit", "3", "--offset", "1"]),
        (f"/clusters/{cid}/history", ["history", str(cid)]),
        ("/unassigned?limit=2", ["unassigned", "--limit", "2"]),
        ("/runs", ["runs"]),
        (f"/sentences/{sid}/cluster", ["which", str(sid)]),
        ("/search?q=forgot%20pin%20code&k=4", ["search", "forgot pin code", "-k", "4"]),
    ]
    for path, args in pairs:
        got = client.get(path)
        assert got.status_code == 200, (path, got.text)
        assert got.json() == cli_json(data_dir, *args), path
    lookup = client.post("/lookup", json={"text": "forgot pin code reset please"})
    assert lookup.json() == cli_json(data_dir, "lookup", "forgot pin code reset please")
    assert lookup.json()["cluster"]["keywords"]


def test_lookup_batch_and_sentence(client):
    store = client.app.state.service.store
    texts = ["credit card payment declined again", "flight booking cancel refund now"]
    out = client.post("/lookup", json={"texts": texts, "members": 2}).json()["results"]
    assert [r["cluster_id"] for r in out] == [store.lookup(t)["cluster_id"] for t in texts]
    assert out[0]["cluster_id"] != out[1]["cluster_id"] and len(out[0]["cluster"]["members"]) == 2
    sid = out[0]["nearest"][0]["id"]
    got = client.get(f"/sentences/{sid}").json()
    row = store.get([sid])[sid]
    assert got == {
        "id": sid,
        "text": row.text,
        "metadata": row.meta,
        "source": row.source_file,
        "line": row.source_line,
    }


def get_map(client, path="/map", timeout=120):
    """The map, once its layout (computed in the background) is ready."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(path)
        if r.status_code != 202 or time.monotonic() > deadline:
            return r
        assert r.json()["state"] == "computing"
        time.sleep(0.2)


def test_map_projects_every_sentence_of_a_small_run_and_is_cached(client):
    store = client.app.state.service.store
    first = get_map(client).json()
    assert first["projection"] == "umap" and first["state"] == "done"
    assert first["total"] == store.count() == first["sampled"] == len(first["points"])
    labels = {p["id"]: p["cluster"] for p in first["points"]}
    cid = store.clusters()[0].id
    assert all(labels[m.id] == cid for m in store.members(cid, limit=100))
    assert client.get("/map").status_code == 200 and first["run_id"] in client.app.state.service.maps
    assert client.get("/map?run=99").status_code == 404


# -- writes -----------------------------------------------------------------------------------


def test_post_sentences_reports_ids_duplicates_and_clusters(client):
    store = client.app.state.service.store
    before = store.count()
    texts = [
        "forgot pin code reset pin77",
        "credit card payment declined card77",
        "  ",
        "forgot pin code reset pin0",
        "forgot pin code reset pin77",
    ]
    r = client.post("/sentences", json={"texts": texts, "metadata": [{"k": 1}, None, None, None, None]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == 2 and body["duplicates"] == 2 and body["empty"] == 1
    assert body["inputs"][0]["read"] == 5
    rows = body["sentences"]
    assert [s["status"] for s in rows] == ["added", "added", "empty", "duplicate", "duplicate"]
    assert rows[4]["id"] == rows[0]["id"] and rows[3]["id"] is not None
    assert store.count() == before + 2
    pin_cluster = store.lookup("forgot pin code reset")["cluster_id"]
    assert rows[0]["cluster"] == pin_cluster and rows[0]["similarity"] > 0.6
    assert client.get(f"/sentences/{rows[0]['id']}").json()["metadata"] == {"k": 1}
    assert client.get(f"/sentences/{rows[0]['id']}/cluster").json()["cluster_id"] == pin_cluster
    hits = client.get("/search", params={"q": "forgot pin code reset pin77", "k": 1}).json()["hits"]
    assert hits[0]["id"] == rows[0]["id"]


def test_delete_sentence(client):
    sid = client.get("/search", params={"q": "noise1a noise1b noise1c", "k": 1}).json()["hits"][0]["id"]
    assert client.delete(f"/sentences/{sid}").json() == {"deleted": [sid], "not_found": []}
    assert client.get(f"/sentences/{sid}").status_code == 404
    second = client.delete(f"/sentences/{sid}")
    assert second.status_code == 404 and "no sentence" in second.json()["error"]
    assert client.get("/verify").json()["ok"] is True


def test_post_runs_starts_a_background_job(client):
    r = client.post("/runs", json={"method": "kmeans", "params": {"k": 3, "seed": 1}})
    assert r.status_code == 202 and r.headers["location"] == f"/jobs/{r.json()['job']['id']}"
    job = wait_job(client, r.json()["job"]["id"])
    assert job["state"] == "done", job
    assert job["result"]["run"]["method"] == "kmeans" and job["result"]["run"]["clusters"] == 3
    assert "loading embeddings" in job["progress"]
    runs = client.get("/runs").json()["runs"]
    assert runs[0]["id"] == job["result"]["run"]["id"]
    assert client.get("/clusters").json()["run"]["id"] == runs[0]["id"]


def test_run_with_bad_parameters_is_refused_or_fails_cleanly(client):
    bad = client.post("/runs", json={"method": "kmeans", "params": {"bogus": 1}})
    assert bad.status_code == 422 and "bogus" in bad.json()["error"]
    unknown = client.post("/runs", json={"method": "nope"})
    assert unknown.status_code == 422 and "nope" in unknown.json()["error"]
    r = client.post("/runs", json={"method": "kmeans", "params": {"k": 10_000}})
    if r.status_code == 202:
        job = wait_job(client, r.json()["job"]["id"])
        assert job["state"] == "failed" and job["error"]
    else:
        assert r.status_code == 422
    assert client.get("/jobs/9999").status_code == 404


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,kwargs,status,needle",
    [
        ("get", "/clusters/424242", {}, 404, "no cluster 424242"),
        ("get", "/clusters/424242/members", {}, 404, "no cluster"),
        ("get", "/clusters/424242/history", {}, 404, "never existed"),
        ("get", "/sentences/999999", {}, 404, "no sentence"),
        ("get", "/sentences/999999/cluster", {}, 404, "no sentence"),
        ("get", "/sentences/abc", {}, 422, "sentence_id"),
        ("get", "/sentences/99999999999999999999999", {}, 422, "sentence_id"),
        ("get", "/clusters?run=77", {}, 404, "no run with id 77"),
        ("get", "/clusters/1/members?limit=0", {}, 422, "limit"),
        ("get", "/clusters/1/members?offset=-1", {}, 422, "offset"),
        ("get", "/search?k=3", {}, 422, "q"),
        ("get", "/search?q=x&k=0", {}, 422, "k"),
        ("get", "/search?q=x&k=abc", {}, 422, "k"),
        ("get", "/nowhere", {}, 404, "Not Found"),
        (
            "post",
            "/sentences",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ("post", "/sentences", {"json": {"texts": "not a list"}}, 422, "texts"),
        ("post", "/sentences", {"json": {}}, 422, "texts"),
        ("post", "/sentences", {"json": {"texts": []}}, 422, "texts"),
        ("post", "/sentences", {"json": {"texts": ["a", "b"], "metadata": [{}]}}, 422, "metadata"),
        ("post", "/sentences", {"json": {"texts": ["a", 5]}}, 422, "texts.1"),
        ("post", "/lookup", {"json": {}}, 422, "text"),
        ("post", "/lookup", {"json": {"text": "a", "texts": ["b"]}}, 422, "text"),
        ("post", "/lookup", {"json": {"text": "a", "members": -1}}, 422, "members"),
        ("post", "/runs", {"json": {"params": []}}, 422, "params"),
        ("delete", "/sentences/0", {}, 422, "sentence_id"),
    ],
)
def test_bad_requests_get_json_4xx(client, method, path, kwargs, status, needle):
    r = getattr(client, method)(path, **kwargs) if method != "post" else client.post(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert needle in body["error"]
    assert "Traceback" not in r.text


def test_limits_name_the_field(data_dir):
    with open_client(data_dir, max_batch=3, max_text=20, max_body=2048) as client:
        many = client.post("/sentences", json={"texts": ["a", "b", "c", "d"]})
        assert many.status_code == 413 and many.json()["field"] == "texts"
        long = client.post("/sentences", json={"texts": ["ok", "x" * 21]})
        assert long.status_code == 422 and long.json()["field"] == "texts[1]"
        huge = client.post("/sentences", json={"texts": ["y" * 3000]})
        assert huge.status_code == 413 and huge.json()["field"] == "body"

        def chunks():
            for _ in range(5):
                yield b" " * 1000

        streamed = client.post("/sentences", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["field"] == "body"
        assert client.get("/search", params={"q": "z" * 21}).json()["field"] == "q"
        assert client.post("/lookup", json={"text": "z" * 21}).json()["field"] == "text"
        assert client.app.state.service.store.count() == 28


def test_no_run_yet_is_a_404_and_empty_store_searches_empty(tmp_path):
    store = Store.open(tmp_path / "empty", device="cpu")
    with TestClient(create_app(store)) as client:
        assert client.get("/search", params={"q": "hello"}).json() == {"query": "hello", "where": [], "hits": []}
        r = client.post("/lookup", json={"text": "hello"})
        assert r.status_code == 404 and "no clustering run" in r.json()["error"]
        assert client.get("/clusters").status_code == 404
        added = client.post("/sentences", json={"texts": ["first sentence here"]}).json()
        assert added["added"] == 1 and added["run_id"] is None and added["sentences"][0]["cluster"] is None
        assert client.get("/search", params={"q": "first sentence"}).json()["hits"][0]["text"] == "first sentence here"


def test_a_full_queue_answers_503_with_retry_after(data_dir, monkeypatch):
    import threading

    from clusterer.service import batches

    gate = threading.Event()
    real = batches.ingest_batches

    def slow(store, items):
        gate.wait(10)
        return real(store, items)

    monkeypatch.setattr("clusterer.server.writer.ingest_batches", slow)
    with open_client(data_dir, queue_size=1) as client:
        writer = client.app.state.service.writer
        first = writer.ingest(batches.Batch(["queued one alpha"]))
        deadline = time.monotonic() + 5
        while not writer.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        second = writer.ingest(batches.Batch(["queued two beta"]))
        r = client.post("/sentences", json={"texts": ["refused gamma"]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
        assert "clusterer_writer_queue_depth 2.0" in client.get("/metrics").text
        gate.set()
        assert first.result(10)["added"] == 1 and second.result(10)["added"] == 1
        store = client.app.state.service.store
        assert store.search("refused gamma", 1)[0].text != "refused gamma"


def test_coalesced_batches_get_their_own_answers(data_dir):
    from clusterer.service.batches import Batch, ingest_batches

    store = Store.open(data_dir, device="cpu")
    try:
        a, b = ingest_batches(
            store, [Batch(["shared text here", "only in a"]), Batch(["shared text here", "only in b"])]
        )
        assert [s["status"] for s in a["sentences"]] == ["added", "added"]
        assert [s["status"] for s in b["sentences"]] == ["duplicate", "added"]
        assert b["sentences"][0]["id"] == a["sentences"][0]["id"]
        assert a["added"] == 2 and b["added"] == 1 and b["duplicates"] == 1
    finally:
        store.close()


# -- security ----------------------------------------------------------------------------------


def test_token_guards_every_route_but_healthz(data_dir):
    with open_client(data_dir, token="s3cret-token") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200  # the page shell holds no data
        for path in ("/clusters", "/metrics", "/readyz", "/runs", "/openapi.json", "/docs", "/search?q=a", "/map"):
            r = client.get(path)
            assert r.status_code == 401, path
            assert r.json() == {"error": "missing or wrong bearer token"}
        assert client.post("/sentences", json={"texts": ["x"]}).status_code == 401
        assert client.get("/clusters", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/clusters", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        ok = client.get("/clusters", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["clusters"]
        assert client.get("/metrics").status_code == 401
        metrics = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).text
        assert 'route="unauthorized",status="401"' in metrics


def test_no_cors_unless_asked(data_dir):
    origin = {"Origin": "http://example.test"}
    with open_client(data_dir) as client:
        assert "access-control-allow-origin" not in client.get("/clusters", headers=origin).headers
    with open_client(data_dir, cors_origins=("http://example.test",)) as client:
        assert client.get("/clusters", headers=origin).headers["access-control-allow-origin"] == "http://example.test"


def test_serve_refuses_a_public_bind_without_a_token(data_dir, monkeypatch):
    monkeypatch.delenv("CLUSTERER_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--data-dir", str(data_dir)])
    assert result.exit_code == 2 and "refusing to listen on 0.0.0.0 without a token" in result.output
    from clusterer.server.security import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    assert check_bind("0.0.0.0", "t") is None and check_bind("192.168.1.5", None)


def test_other_commands_do_not_import_fastapi():
    import subprocess
    import sys

    code = "import sys, clusterer.cli; print(any(m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == "False", out.stderr


def test_map_samples_large_runs(data_dir):
    with open_client(data_dir, map_sample=10) as client:
        m = get_map(client).json()
        assert m["total"] == 28 and m["sampled"] == 10 == len({p["id"] for p in m["points"]})


@pytest.mark.postgres
def test_server_on_postgresql(pg_url, tmp_path):
    store = Store.open(tmp_path / "pgdata", db_url=pg_url, device="cpu")
    store.ingest(topic_texts() + NOISE)
    store.cluster("community", threshold=0.6, min_size=5)
    with TestClient(create_app(store)) as client:
        added = client.post("/sentences", json={"texts": ["forgot pin code reset pin99"]}).json()
        pin = client.post("/lookup", json={"text": "forgot pin code reset"}).json()["cluster_id"]
        assert added["added"] == 1 and added["sentences"][0]["cluster"] == pin
        hit = client.get("/search", params={"q": "forgot pin code reset pin99", "k": 1}).json()["hits"][0]
        assert hit["id"] == added["sentences"][0]["id"]
        assert client.get("/verify").json()["ok"]


def test_writes_wait_for_the_folders_writer_lock(data_dir):
    from indexer.lock import WriterLock

    store = Store.open(data_dir, device="cpu", lock_timeout=0.5)
    with TestClient(create_app(store)) as client:
        client.get("/readyz")
        other = WriterLock(data_dir / "writer.lock")  # what a CLI ingest on the same folder holds
        other.acquire()
        try:
            r = client.post("/sentences", json={"texts": ["while the cli writes"]})
            assert r.status_code == 503 and r.headers["retry-after"] and "another ingest" in r.json()["error"]
            assert client.get("/search", params={"q": "credit card", "k": 2}).status_code == 200  # reads go on
        finally:
            other.release()
        r = client.post("/sentences", json={"texts": ["while the cli writes"]})
        assert r.status_code == 200 and r.json()["added"] == 1


def test_writer_stop_finishes_the_write_in_flight_and_refuses_the_queued(data_dir, monkeypatch):
    import threading

    from clusterer.server.writer import ShuttingDown, Writer
    from clusterer.service import batches

    gate, started = threading.Event(), threading.Event()
    real = batches.ingest_batches

    def slow(store, items):
        started.set()
        gate.wait(10)
        return real(store, items)

    monkeypatch.setattr("clusterer.server.writer.ingest_batches", slow)
    store = Store.open(data_dir, device="cpu")
    try:
        writer = Writer(store, maxsize=4, coalesce=1)
        first = writer.ingest(batches.Batch(["in flight at shutdown"]))
        assert started.wait(10)
        queued = writer.ingest(batches.Batch(["queued at shutdown"]))
        job = writer.cluster("kmeans", {"k": 2})
        threading.Timer(0.2, gate.set).start()
        assert writer.stop(timeout=20)
        assert first.result(1)["added"] == 1
        with pytest.raises(ShuttingDown):
            queued.result(1)
        assert writer.job(job.id).state == "cancelled"
        with pytest.raises(ShuttingDown):
            writer.ingest(batches.Batch(["after shutdown"]))
        assert store.search("in flight at shutdown", 1)[0].text == "in flight at shutdown"
        assert store.search("queued at shutdown", 1)[0].text != "queued at shutdown"
    finally:
        store.close()


def test_hierarchy_passes_through_where_runs_have_levels(data_dir):
    import inspect

    store = Store.open(data_dir, device="cpu")
    if "level" not in inspect.signature(store.clusters).parameters:
        store.close()
        pytest.skip("this version's runs have no cluster levels")
    with TestClient(create_app(store)) as client:
        job = wait_job(client, client.post("/runs", json={}).json()["job"]["id"], timeout=120)
        assert job["state"] == "done", job
        fine = client.get("/clusters", params={"level": "fine"}).json()
        coarse = client.get("/clusters", params={"level": "coarse"}).json()
        assert fine["level"] == "fine" and coarse["level"] == "coarse"
        assert fine == cli_json(data_dir, "clusters", "--level", "fine")
        coarse_ids = {c["id"] for c in coarse["clusters"]}
        for c in fine["clusters"]:
            assert c["parent"] is None or c["parent"] in coarse_ids
        for c in coarse["clusters"]:
            shown = client.get(f"/clusters/{c['id']}").json()
            assert [k["id"] for k in shown["child_clusters"]] == c["children"]
            assert shown == cli_json(data_dir, "show", str(c["id"]))
        assert client.get("/clusters", params={"level": "medium"}).status_code in (400, 422)
