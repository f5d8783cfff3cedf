"""Cold start: each command imports only the heavy libraries it needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import FakeEncoder

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "transformers",
    "sentence_transformers",
    "sklearn",
    "faiss",
    "igraph",
    "fastapi",
    "onnxruntime",
    "alembic",
    "scipy",
)
TOPICS = [
    ["card", "payment", "declined", "shop"],
    ["flight", "booking", "cancel", "airline"],
    ["weather", "rain", "forecast", "storm"],
    ["password", "reset", "login", "account"],
]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    from clusterer.api import Store

    folder = tmp_path_factory.mktemp("cli-imports") / "data"
    texts = [f"{' '.join(TOPICS[i % 4][j % 4] for j in range(i % 3, i % 3 + 3))} {i % 4} n{i}" for i in range(200)]
    store = Store.open(folder, encoder=FakeEncoder())
    try:
        store.ingest(texts)
    finally:
        store.close()
    return folder


def imported(*args: str) -> tuple[dict, set[str]]:
    """Run ``clusterer ARGS --json`` in a fresh interpreter: (its JSON output, heavy modules loaded)."""
    code = (
        "import json, sys\n"
        "from clusterer.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        f"print('\\nHEAVY', json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    body, _, heavy = out.stdout.rpartition("\nHEAVY ")
    return (json.loads(body) if body.strip().startswith("{") else {}), set(json.loads(heavy))


def test_help_imports_nothing_heavy():
    _, heavy = imported("--help")
    assert heavy == set()


def test_stats_imports_nothing_heavy(store_dir):
    data, heavy = imported("stats", "--data-dir", str(store_dir), "--json")
    assert data["sentences"] == 200
    assert heavy == set()


def test_cluster_imports_only_the_search(store_dir):
    data, heavy = imported(
        "cluster",
        "--method",
        "community",
        "--threshold",
        "0.8",
        "--min-size",
        "5",
        "--data-dir",
        str(store_dir),
        "--json",
    )
    assert data["run"]["clusters"] >= 1
    assert not heavy & {
        "torch",
        "transformers",
        "sentence_transformers",
        "sklearn",
        "igraph",
        "fastapi",
        "onnxruntime",
        "alembic",
    }
    assert "faiss" in heavy
    _, heavy = imported("clusters", "--data-dir", str(store_dir), "--json")
    assert heavy == set()
