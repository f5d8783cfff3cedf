"""Ingestion end to end against plain ``SentenceTransformer.encode`` (fp32 defaults).

Reads the five shared corpora (about 112k sentences), then in one process:

1. the peer: ``SentenceTransformer(bundled model).encode(texts)`` with its defaults (fp32);
2. ours: ``Store.ingest_file`` of the same sentences as one CSV (reading, dedup, embedding,
   SQLite inserts, FAISS, index save), with the time spent inside the encoder measured, and
   the same job through the ``clusterer ingest`` command in a subprocess.

Prints sentences per second of each, the ratio, the share of our time spent outside the
encoder (storage and indexing), and the cosine agreement of our stored embeddings with the
peer's fp32 ones.

    python bench/ingest.py [--limit N] [--skip-cli]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._data import DATA_ROOT, load_model

CORPORA = [
    "banking77/banking77.csv",
    "clinc150/clinc150.csv",
    "quora/quora_questions_clusters.csv",
    "stackoverflow/stackoverflow.csv",
    "20newsgroups/20newsgroups_subjects.csv",
]


def load_texts(limit: int | None) -> list[str]:
    texts: list[str] = []
    for name in CORPORA:
        with open(DATA_ROOT / name, newline="", encoding="utf-8") as fh:
            texts.extend(row["text"] for row in csv.DictReader(fh))
    return texts[:limit] if limit else texts


class TimedEncoder:
    """Wraps an encoder and adds up the seconds spent in ``encode``."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, show_progress=False):
        start = time.perf_counter()
        try:
            return self.inner.encode(texts, show_progress=show_progress)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    parser.add_argument("--skip-cli", action="store_true", help="skip the subprocess `clusterer ingest` run")
    args = parser.parse_args()

    from clusterer.api import Store
    from indexer.encoder import Encoder

    texts = load_texts(args.limit)
    print(f"{len(texts):,} sentences from {len(CORPORA)} corpora", flush=True)

    model = load_model()
    model.encode(texts[:64])
    start = time.perf_counter()
    peer = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    peer_s = time.perf_counter() - start
    peer_rate = len(texts) / peer_s
    print(f"peer  SentenceTransformer.encode fp32: {peer_s:8.1f} s  {peer_rate:8.0f} sentences/s", flush=True)
    del model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "all.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text"])
            writer.writerows([t] for t in texts)

        encoder = TimedEncoder(Encoder().load())
        store = Store.open(Path(tmp) / "store", encoder=encoder)
        start = time.perf_counter()
        report = store.ingest_file(path)
        ours_s = time.perf_counter() - start
        ours_rate = len(texts) / ours_s
        other = ours_s - encoder.seconds
        print(
            f"ours  Store.ingest_file ({encoder.inner.precision}, fidelity {encoder.inner.fidelity}): "
            f"{ours_s:8.1f} s  {ours_rate:8.0f} sentences/s  "
            f"(encoder {encoder.seconds:.1f} s, storage+indexing {other:.1f} s = {other / ours_s:.1%})",
            flush=True,
        )
        print(f"      added {report.added:,}, duplicates {report.duplicates:,}, empty {report.empty:,}")

        ids, stored = store.embeddings()
        first_index = {}
        from indexer.normalize import normalize_text

        for i, t in enumerate(texts):
            first_index.setdefault(normalize_text(t), i)
        rows = store.get(ids.tolist())
        ref = np.vstack([peer[first_index[rows[int(i)].text]] for i in ids])
        cos = np.sum(ref * stored, axis=1)
        print(f"      cosine to fp32 peer embeddings: min {cos.min():.4f}, mean {cos.mean():.5f}")
        store.close()

        cli_rate = None
        if not args.skip_cli:
            env = dict(os.environ, CLUSTERER_DATA_DIR=str(Path(tmp) / "cli-store"))
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "clusterer", "ingest", str(path), "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            cli_s = time.perf_counter() - start
            cli_rate = len(texts) / cli_s
            added = json.loads(out.stdout)["added"]
            print(
                f"ours  `clusterer ingest` (process start and model load included): {cli_s:8.1f} s  "
                f"{cli_rate:8.0f} sentences/s  ({added:,} added)",
                flush=True,
            )

    print()
    print(f"ratio Store.ingest_file / plain fp32 encode: {ours_rate / peer_rate:.2f}x")
    if cli_rate:
        print(f"ratio `clusterer ingest` / plain fp32 encode: {cli_rate / peer_rate:.2f}x")
    print(f"storage and indexing share of ingest time: {other / ours_s:.1%}")


if __name__ == "__main__":
    main()
