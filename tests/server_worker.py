"""The clusterer command line with the FakeEncoder, for tests that run a real server or a
CLI ingest in a subprocess:  python -m tests.server_worker serve --data-dir D --port P"""

from __future__ import annotations

import sys

import indexer.sentence_store as store_module
from tests.fakes import FakeEncoder

store_module.make_encoder = lambda *a, **k: FakeEncoder()

if __name__ == "__main__":
    from clusterer.cli import cli

    cli(sys.argv[1:], prog_name="clusterer")
