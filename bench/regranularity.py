"""Re-granularity with the stored kNN graph: ``recluster --resolution R`` against a full run.

A store of ``--n`` synthetic 384-d sentences (groups of 50 around random centres, as in
bench/incremental.py) is clustered once with the default leiden (which stores its kNN graph),
then clustered again at ``--resolution`` two ways on the same store: ``recluster`` (warm start,
the stored graph: no neighbour search) and a fresh ``cluster --resolution`` (a full neighbour
search). Printed: the seconds of each (whole run and per stage), their ratio, the agreement of
the two partitions (ARI), and the peak memory.

    flock /tmp/heavy.lock python bench/regranularity.py [--n 200000] [--resolution 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.incremental import TableEncoder, peak_gib, synthetic
from clusterer.api import Store


def labels_of(store, run_id: int, ids: list[int]) -> np.ndarray:
    found = {r["id"]: r["cluster"] for r in store.export(run_id)}
    out = np.array([-1 if found.get(i) is None else found[i] for i in ids], dtype=np.int64)
    free = out < 0
    out[free] = out.max(initial=0) + 1 + np.arange(int(free.sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--resolution", type=float, default=4.0)
    args = parser.parse_args()
    x = synthetic(args.n)
    texts = [f"synthetic {i}" for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "data", encoder=TableEncoder(dict(zip(texts, x)), "synthetic"), device="cpu")
        t = time.perf_counter()
        store.ingest(texts)
        print(f"ingested {args.n:,} in {time.perf_counter() - t:.1f}s", flush=True)
        first = store.cluster(device="cpu")
        print(
            f"full run: {first.clusters} clusters, {first.seconds:.1f}s {first.params['stats']['seconds']}", flush=True
        )
        again = store.recluster(resolution=args.resolution, device="cpu")
        print(
            f"recluster --resolution {args.resolution:g}: {again.clusters} clusters, {again.seconds:.1f}s "
            f"{again.params['stats']['seconds']} graph {again.params['stats'].get('graph')}",
            flush=True,
        )
        fresh = store.cluster(resolution=args.resolution, device="cpu")
        print(
            f"cluster --resolution {args.resolution:g}: {fresh.clusters} clusters, {fresh.seconds:.1f}s "
            f"{fresh.params['stats']['seconds']}",
            flush=True,
        )
        ids = [r["id"] for r in store.export(fresh.id)]
        ari = adjusted_rand_score(labels_of(store, again.id, ids), labels_of(store, fresh.id, ids))
        store.close()
    print()
    print(
        "| n | resolution | full run s (auto) | recluster --resolution s (stored graph) | fresh cluster --resolution s | ratio | ARI recluster vs fresh | peak GiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.n:,} | {args.resolution:g} | {first.seconds:.1f} | {again.seconds:.1f} | {fresh.seconds:.1f} | "
        f"{fresh.seconds / again.seconds:.2f}x | {ari:.3f} | {peak_gib():.2f} |"
    )


if __name__ == "__main__":
    main()
