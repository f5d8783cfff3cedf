"""The curation routes of `clusterer serve` through FastAPI's test client: merge, split, label,
unmerge and the granularity control answer like the `--json` commands, refuse bad ids with 4xx
JSON, need the token like every write, and labels show in the JSON faces."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from clusterer.api import Store
from clusterer.server import create_app
from clusterer.settings import ServerSettings
from tests.test_curation import clustered_dir
from tests.test_server import get_map, wait_job, wait_ready
from tests.test_upkeep import topic_of


@pytest.fixture
def data_dir(tmp_path):
    return clustered_dir(tmp_path / "data")


def open_client(data_dir, **settings):
    return TestClient(create_app(Store.open(data_dir, device="cpu"), ServerSettings(**settings)))


@pytest.fixture
def client(data_dir):
    with open_client(data_dir) as c:
        wait_ready(c)
        yield c


def test_merge_label_unmerge_and_faces(client):
    ids = topic_of(client.app.state.service.store)
    card, flight = ids["card"], ids["flight"]
    merged = client.post("/clusters/merge", json={"ids": [flight, card]})
    assert merged.status_code == 200, merged.text
    assert merged.json()["cluster_id"] == card and merged.json()["related"] == [flight]
    assert client.get(f"/clusters/{flight}").status_code == 404
    labelled = client.put(f"/clusters/{card}/label", json={"label": "travel & cards"})
    assert labelled.status_code == 200 and labelled.json()["label"] == "travel & cards"
    assert {c["id"]: c["label"] for c in client.get("/clusters").json()["clusters"]}[card] == "travel & cards"
    assert client.get(f"/clusters/{card}").json()["label"] == "travel & cards"
    looked = client.post("/lookup", json={"text": "credit card payment declined card77"}).json()
    assert looked["cluster"]["label"] == "travel & cards"
    events = client.get(f"/clusters/{card}/history").json()["events"]
    assert [e["kind"] for e in events if e["detail"].get("curated")] == ["merge", "label"]
    # the map shows the edit at once (its coordinates are cached, its clusters are not)
    points = get_map(client).json()["points"]
    assert flight not in {p["cluster"] for p in points} and card in {p["cluster"] for p in points}
    undone = client.post(f"/clusters/{card}/unmerge")
    assert undone.status_code == 200 and undone.json()["related"] == [flight]
    assert client.get(f"/clusters/{flight}").json()["size"] == 12
    assert flight in {p["cluster"] for p in client.get("/map").json()["points"]}
    cleared = client.delete(f"/clusters/{card}/label")
    assert cleared.json()["cleared"] is True and client.get(f"/clusters/{card}").json()["label"] is None


def test_split_and_the_granularity_control(client):
    store = client.app.state.service.store
    bank = next(c.id for c in store.clusters() if "bank transfer" in c.keywords)
    split = client.post(f"/clusters/{bank}/split", json={"resolution": 1.0})
    assert split.status_code == 200, split.text
    children = split.json()["related"]
    assert len(children) == 2 and all(client.get(f"/clusters/{c}").status_code == 200 for c in children)
    started = client.post("/recluster", json={"resolution": 2.0})
    assert started.status_code == 202 and started.headers["location"].startswith("/jobs/")
    job = wait_job(client, started.json()["job"]["id"])
    assert job["state"] == "done", job
    run = client.get("/runs").json()["runs"][0]
    assert run["params"]["resolution"] == 2.0 and run["params"]["stats"]["warm_start"] is True
    ids = {c["id"] for c in client.get("/clusters").json()["clusters"]}
    assert set(children) <= ids  # the split is kept by the new run
    refused = client.post("/recluster", json={"resolution": -1})
    assert refused.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/clusters/merge", {"ids": [0, 999]}, 404, "no cluster 999 in run 1"),
        ("post", "/clusters/merge", {"ids": [0, 0]}, 422, "cannot merge cluster 0 with itself"),
        ("post", "/clusters/merge", {"ids": [0]}, 422, "at least two"),
        ("post", "/clusters/merge", {"ids": [0, "{topic}"]}, 422, "is a coarse topic"),
        ("post", "/clusters/{topic}/split", {}, 422, "is a coarse topic"),
        ("post", "/clusters/0/split", {"resolution": 0}, 422, "resolution"),
        ("post", "/clusters/999/unmerge", None, 404, "no cluster 999"),
        ("post", "/clusters/0/unmerge", None, 422, "no merge to undo"),
        ("put", "/clusters/999/label", {"label": "x"}, 404, "no cluster 999"),
        ("put", "/clusters/0/label", {"label": "  "}, 422, "needs some text"),
    ],
)
def test_bad_edits_get_json_errors(client, method, path, body, status, message):
    topic = client.get("/clusters", params={"level": "coarse"}).json()["clusters"][0]["id"]
    if body and "ids" in body:
        body = {"ids": [topic if i == "{topic}" else i for i in body["ids"]]}
    kwargs = {} if body is None else {"json": body}
    r = getattr(client, method)(path.format(topic=topic), **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_edits_need_the_token(data_dir):
    with open_client(data_dir, token="s3cret-token") as c:
        assert c.post("/clusters/merge", json={"ids": [0, 1]}).status_code == 401
        assert c.put("/clusters/0/label", json={"label": "x"}).status_code == 401
        assert c.post("/recluster", json={}).status_code == 401
        ok = c.put("/clusters/0/label", json={"label": "x"}, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
