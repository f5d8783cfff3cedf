"""`POST /lookup` under concurrency: batched answers equal the in-process `Store.lookup`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from clusterer.api import Store
from clusterer.server import create_app
from clusterer.settings import ServerSettings
from tests.fakes import topic_texts
from tests.test_server import make_store, wait_ready


def test_concurrent_lookups_are_batched_and_equal_store_lookup(tmp_path):
    path = tmp_path / "data"
    make_store(path).close()
    texts = [t + " maybe" for t in topic_texts()[::3]] + ["nothing like any topic at all"]
    settings = ServerSettings(lookup_wait_ms=20.0, lookup_batch=16)
    with TestClient(create_app(Store.open(path, device="cpu"), settings)) as client:
        assert wait_ready(client).status_code == 200
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda t: client.post("/lookup", json={"text": t, "members": 2}), texts))
        several = client.post("/lookup", json={"texts": texts[:5]}).json()
        metrics = client.get("/metrics").text
    assert all(r.status_code == 200 for r in answers)
    with Store.open(path, device="cpu") as store:
        assert [r.json() for r in answers] == [store.lookup(t, members=2) for t in texts]
        assert several == {"results": [store.lookup(t) for t in texts[:5]]}
    count = next(
        line for line in metrics.splitlines() if line.startswith('clusterer_batch_requests_count{stage="lookup"}')
    )
    total = next(
        line for line in metrics.splitlines() if line.startswith('clusterer_batch_requests_sum{stage="lookup"}')
    )
    assert float(count.split()[-1]) < float(total.split()[-1])  # fewer batches than requests


def test_a_bad_lookup_fails_alone(tmp_path):
    path = tmp_path / "data"
    make_store(path).close()
    with TestClient(create_app(Store.open(path, device="cpu"), ServerSettings(lookup_wait_ms=20.0))) as client:
        assert wait_ready(client).status_code == 200
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda t: client.post("/lookup", json={"text": t}), ["topic0 word", "   ", "topic1 word"])
            )
    assert [r.status_code for r in answers] == [200, 422, 200]
    assert "empty" in answers[1].json()["error"]
