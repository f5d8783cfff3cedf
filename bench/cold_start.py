"""Benchmark: the ``clusterer cluster`` command end to end (a fresh process: start-up, imports,
opening the store, the run, printing) against sentence-transformers' in-process
``util.community_detection`` on the same mix50k embeddings, plus the start-up of ``--help`` and
``stats``.

    python bench/cold_start.py                       # builds the store in a temporary folder
    python bench/cold_start.py --store /tmp/mix50k-store --runs 5

The store is built once from the cached mix50k embeddings (``bench/_data.py``) through an
encoder that looks texts up instead of embedding them, so building it needs no model; ``--store``
keeps it for later calls.  Each command runs ``--runs`` times (after one warm-up) and the median
wall time is printed; the peer's time is the median of ``--runs`` in-process calls, its imports
excluded.  The ratio is the peer's in-process time over our command's whole-process time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class TableEncoder:
    """Looks precomputed embeddings up by (normalised) text."""

    def __init__(self, table: dict[str, np.ndarray], model_name: str, dimension: int) -> None:
        self.table, self.model_name, self.dimension, self.precision = table, model_name, dimension, "precomputed"

    def encode(self, texts, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        return np.vstack([self.table[t] for t in texts])


def build_store(folder: Path, texts: list[str], emb: np.ndarray) -> None:
    from clusterer.api import Store
    from indexer.model_resolution import DEFAULT_MODEL
    from indexer.normalize import normalize_text

    table = dict(zip(map(normalize_text, texts), emb))
    store = Store.open(folder, encoder=TableEncoder(table, DEFAULT_MODEL, emb.shape[1]))
    try:
        store.ingest(texts)
    finally:
        store.close()


def wall(cmd: list[str], runs: int, env: dict[str, str]) -> tuple[float, float, float]:
    """(min, median, max) wall seconds of ``cmd`` over ``runs`` runs after one warm-up."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        if i:
            times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=None, help="build (or reuse) the store here")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--min-size", type=int, default=25)
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        help="a .npy of the mix50k embeddings (rows in load_mix50k order) instead of the bench cache",
    )
    args = parser.parse_args()

    from bench._data import load_mix50k, mix50k

    texts, _ = load_mix50k()
    emb = np.load(args.embeddings) if args.embeddings else mix50k()[0]
    if len(emb) != len(texts):
        parser.error(f"{args.embeddings} holds {len(emb)} rows, mix50k has {len(texts)} texts")
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        folder = args.store or Path(tmp) / "store"
        if not (folder / "clusterer.db").exists() and not any(folder.glob("*.db")):
            t0 = time.perf_counter()
            build_store(folder, texts, emb)
            print(f"built the mix50k store in {time.perf_counter() - t0:.1f} s -> {folder}", flush=True)

        import torch
        from sentence_transformers.util import community_detection

        x = torch.from_numpy(emb)
        peer = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            community_detection(x, threshold=args.threshold, min_community_size=args.min_size)
            peer.append(time.perf_counter() - t0)
        peer_s = statistics.median(peer)
        print(
            f"peer  util.community_detection in process ({args.threshold}/{args.min_size}): "
            f"median {peer_s:.2f} s (min {min(peer):.2f}, max {max(peer):.2f})",
            flush=True,
        )

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cli = [sys.executable, "-m", "clusterer"]
        store = ["--data-dir", str(folder)]
        for name, cmd in (
            ("--help", [*cli, "--help"]),
            ("stats", [*cli, "stats", *store, "--json"]),
            (
                "cluster",
                [
                    *cli,
                    "cluster",
                    "--method",
                    "community",
                    "--threshold",
                    str(args.threshold),
                    "--min-size",
                    str(args.min_size),
                    *store,
                    "--json",
                ],
            ),
        ):
            lo, med, hi = wall(cmd, args.runs, env)
            extra = f"; peer/ours {peer_s / med:.1f}x" if name == "cluster" else ""
            print(
                f"ours  clusterer {name}: whole process median {med:.2f} s (min {lo:.2f}, max {hi:.2f}){extra}",
                flush=True,
            )


if __name__ == "__main__":
    main()
