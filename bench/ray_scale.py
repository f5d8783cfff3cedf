"""One machine against Ray with 1 and 2 workers: ingest and cluster rates, and agreement.

In one process, on the same data:

1. **ingest**: ``Store.ingest_file`` (the peer: one process, the bundled model) against
   ``clusterer ingest --ray`` (:func:`ingest_on_ray`) with 1 and 2 embedding workers on a local
   Ray started for the bench. Same rows? Sentences per second and the ratio.
2. **cluster**: the default leiden (and k-means) on one machine against the Ray path with 1
   and 2 shards, over the same stored vectors: seconds, ratio, ARI against the one-machine run.

The ingest texts are the first ``--ingest-n`` texts of the shared corpora (real model). The
clustering store holds ``--cluster-n`` vectors: the cached mix50k embeddings when
``bench/.cache/mix50k.npy`` exists, else a planted mixture of unit vectors (384-d, 400 centres,
20 % uniform noise), said in the output.

    flock /tmp/heavy.lock python bench/ray_scale.py [--ingest-n 3000] [--cluster-n 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench._data import CACHE_DIR, DATA_ROOT, read_csv


def start_local_ray():
    """A local Ray of two CPUs on 127.0.0.1, quiet and without the dashboard; returns the module."""
    from clusterer.distributed.ray_env import import_ray

    ray = import_ray()
    ray.init(
        address="local",
        num_cpus=2,
        logging_level="ERROR",
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    return ray


def texts_for(n: int) -> list[str]:
    texts: list[str] = []
    for name in ("clinc150/clinc150.csv", "banking77/banking77.csv", "stackoverflow/stackoverflow.csv"):
        texts.extend(read_csv(DATA_ROOT / name)[0])
        if len(texts) >= n:
            break
    return texts[:n]


def planted(n: int, d: int = 384, centres: int = 400, noise: float = 0.2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    n_noise = int(n * noise)
    which = rng.integers(centres, size=n - n_noise)
    x = c[which] + rng.standard_normal((n - n_noise, d)).astype(np.float32) * (0.9 / np.sqrt(d))
    x = np.vstack([x, rng.standard_normal((n_noise, d)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[rng.permutation(n)]


def stored_rows(store) -> list[tuple]:
    ids, _ = store.embeddings()
    got = store.get(ids.tolist())
    return [(got[i].text, got[i].source_line) for i in ids.tolist()]


def bench_ingest(n: int, root: Path) -> None:
    from clusterer.api import Store
    from clusterer.distributed.ray_ingest import ingest_on_ray
    from clusterer.settings import Settings

    texts = texts_for(n)
    path = root / "in.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    tick = time.perf_counter()
    with Store(root / "one") as store:
        report = store.ingest_file(str(path))
        one_rows = stored_rows(store)
    one_s = time.perf_counter() - tick
    print(f"ingest {len(texts):,} texts, real model, load {os.getloadavg()[0]:.1f}")
    print(
        f"  one machine (Store.ingest_file, model load included): {one_s:.1f} s, {report.added / one_s:,.0f} sentences/s"
    )
    ray = start_local_ray()
    try:
        for workers in (1, 2):
            settings = Settings(data_dir=root / f"ray{workers}", ray_address="local", device="cpu")
            tick = time.perf_counter()
            done = ingest_on_ray(settings, [str(path)], workers=workers)
            secs = time.perf_counter() - tick
            with Store(settings.data_dir) as store:
                same = stored_rows(store) == one_rows
            added = sum(r.added for r in done.reports)
            print(
                f"  ray, {workers} worker(s): {secs:.1f} s, {added / secs:,.0f} sentences/s "
                f"(x{one_s / secs:.2f} of one machine); same rows: {same}; stages {done.to_dict()['stages']}"
            )
    finally:
        ray.shutdown()


def recall(x: np.ndarray, ray, k: int = 30) -> None:
    """recall@k against the exact search of the two approximate kNN searches (one machine, 2 shards)."""
    from clusterer.algorithms.graph import unique_rows
    from clusterer.algorithms.knn import exact_knn, knn
    from clusterer.distributed.ray_shards import sharded_knn, start_shards, stop_shards

    x = x[unique_rows(x)[0]]  # what the leiden method searches: distinct rows
    ref, _ = exact_knn(x, k)

    def score(nbrs: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nbrs, ref)]))

    tick = time.perf_counter()
    one, _ = knn(x, k)
    one_s = time.perf_counter() - tick
    actors = start_shards(x, 2, approximate=True, nprobe=16)
    tick = time.perf_counter()
    many, _ = sharded_knn(actors, x, k)
    many_s = time.perf_counter() - tick
    stop_shards(actors)
    print(
        f"  kNN recall@{k} vs exact ({len(x):,} distinct rows): one machine cell-blocked {score(one):.3f} "
        f"({one_s:.1f} s), ray 2 shards {score(many):.3f} ({many_s:.1f} s)"
    )


def bench_cluster(n: int, root: Path, pg_url: str | None = None) -> None:
    from sklearn.metrics import adjusted_rand_score

    from clusterer.api import Store
    from clusterer.distributed.ray_cluster import cluster_on_ray
    from storage import clusters as cq
    from tests.fakes import LookupEncoder

    cache = CACHE_DIR / "mix50k.npy"
    if cache.exists():
        x, source = np.load(cache)[:n], "mix50k cached all-MiniLM-L6-v2 embeddings"
    else:
        x, source = planted(n), "planted mixture (no cached embeddings here)"
    texts = [f"sentence {i}" for i in range(len(x))]
    if pg_url:
        import psycopg

        schema = f"bench_ray_{os.getpid()}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            url = f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}"
            tick = time.perf_counter()
            with Store(root / "pg", db_url=url, encoder=LookupEncoder(texts, x, model_name="bench")) as pg:
                pg.ingest(texts)
            secs = time.perf_counter() - tick
            print(f"writer (one process, precomputed vectors, PostgreSQL): {len(x) / secs:,.0f} sentences/s")
        finally:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    tick = time.perf_counter()
    store = Store(root / "cluster", encoder=LookupEncoder(texts, x, model_name="bench"))
    store.ingest(texts)
    secs = time.perf_counter() - tick
    print(f"writer (one process, precomputed vectors, SQLite): {len(x) / secs:,.0f} sentences/s")

    def labels(run_id: int) -> np.ndarray:
        with store.db.read() as session:
            _, lab, _ = cq.assignments_of_run(session, run_id)
        return np.asarray([-1 if v is None else v for v in lab])

    print(f"cluster {len(x):,} vectors ({source}), load {os.getloadavg()[0]:.1f}")
    ray = start_local_ray()
    try:
        runs: dict[str, np.ndarray] = {}
        for method, params in (("leiden", {}), ("leiden", {"search": "exact"}), ("kmeans", {"k": 100})):
            name = method + (f" {params['search']}" if "search" in params else "")
            tick = time.perf_counter()
            one = store.cluster(method, **params)
            one_s = time.perf_counter() - tick
            base = runs[f"{name} one"] = labels(one.id)
            print(
                f"  {name} one machine: {one_s:.1f} s ({one.clusters} clusters) stages {one.params['stats']['seconds']}"
            )
            for shards in (1, 2):
                tick = time.perf_counter()
                run = cluster_on_ray(store, "local", method, shards=shards, **params)
                secs = time.perf_counter() - tick
                got = runs[f"{name} ray{shards}"] = labels(run.id)
                print(
                    f"  {name} ray {shards} shard(s): {secs:.1f} s (x{one_s / secs:.2f}), {run.clusters} clusters, "
                    f"ARI {adjusted_rand_score(base, got):.3f}; ray stages {run.params['stats']['ray']['seconds']}"
                )
        exact = runs["leiden exact one"]
        for name in ("leiden one", "leiden ray2"):
            print(
                f"  ARI of {name} (approximate search) against leiden one machine exact: "
                f"{adjusted_rand_score(exact, runs[name]):.3f}"
            )
        recall(x, ray)
    finally:
        ray.shutdown()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ingest-n", type=int, default=3000)
    parser.add_argument("--cluster-n", type=int, default=20000)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--pg", default=None, metavar="URL", help="also time the writer on this PostgreSQL database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ingest:
            bench_ingest(args.ingest_n, Path(tmp))
        if not args.skip_cluster:
            bench_cluster(args.cluster_n, Path(tmp), args.pg)


if __name__ == "__main__":
    main()
