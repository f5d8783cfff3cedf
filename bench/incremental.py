"""Incremental assignment and lookup latency on a store of a million sentences.

Builds a store of ``--synthetic`` (default 1,000,000) synthetic 384-d sentences with cluster
structure plus the mix50k corpus (real embeddings of the bundled model, cached by
bench/_data.py), clusters it once, then measures:

- the time to ingest and assign batches of 1,000 new sentences (half near existing synthetic
  clusters, half held-out real questions), excluding their embedding time (the encoder used
  for ingestion returns precomputed vectors; its time is measured and subtracted);
- the latency of 1,000 ``store.lookup(text)`` calls with the real model, embedding included
  (p50, p99).

The peer for lookups is what users do today without a store: ``model.encode`` of the query
plus a brute-force ``util.semantic_search`` over all embeddings, with the same model; its
latency is printed beside ours.

    python bench/incremental.py [--synthetic N] [--method community|kmeans|leiden] [--keep DIR]

``--method leiden`` measures the graph rule. The run it keeps current is written through the
ordinary run writer from the generator's planted groups (synthetic rows: group ``i // 50``)
and Leiden (:func:`graph_clustering`, k 10) on the real rows, since what is measured is the
upkeep of a run, not how its labels were found; the new synthetic rows of each batch belong to
groups the store has not seen, so every batch also gives births from the unassigned pool.
With ``--keep`` the second and later invocations reopen the kept store, so the first batch
is a cold one: it shows what an ingest of a small file into that store pays.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._data import load_mix50k, mix50k

DIM = 384


def synthetic(n: int, per_cluster: int = 50, noise: float = 0.45, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in clusters of ``per_cluster`` around random centres."""
    rng = np.random.default_rng(seed)
    k = max(1, n // per_cluster)
    centres = rng.standard_normal((k, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        which = (np.arange(start, start + m) // per_cluster) % k
        x = centres[which] + noise * rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class TableEncoder:
    """Returns precomputed vectors for known texts (ingestion without a model)."""

    def __init__(self, table: dict[str, np.ndarray], model_name: str):
        self.table = table
        self.model_name = model_name
        self.dimension = DIM
        self.precision = "precomputed"
        self.seconds = 0.0

    def encode(self, texts, show_progress=False):
        start = time.perf_counter()
        out = np.vstack([self.table[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)
        self.seconds += time.perf_counter() - start
        return out


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_near(syn: np.ndarray, n_base: int, n: int, seed: int = 1) -> tuple[list[str], np.ndarray]:
    """``n`` texts and vectors near random stored synthetic sentences (growth of stored groups)."""
    rng = np.random.default_rng(seed)
    near = rng.integers(0, n_base, n)
    x = syn[near] + 0.2 * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [f"synthetic extra {i} near group {j // 50}" for i, j in enumerate(near)], x.astype(np.float32)


def planted_leiden_run(store, n_synthetic: int, params: dict):
    """A ``leiden`` run of the store written by the run writer: planted groups for the synthetic
    rows (stored first, in order), Leiden on the real rows."""
    from clusterer.algorithms.graph import graph_clustering
    from clusterer.service import runs

    def compute_labels(method, x, p, **kwargs):
        labels = np.full(len(x), -1, dtype=np.int64)
        labels[:n_synthetic] = np.arange(n_synthetic) // 50
        info: dict = {"planted": n_synthetic}
        if len(x) > n_synthetic:
            real = graph_clustering(x[n_synthetic:], k=p["k"], resolution=p["resolution"], min_size=p["min_size"])
            offset = int(labels.max(initial=-1)) + 1
            labels[n_synthetic:] = np.where(real.labels >= 0, real.labels + offset, -1)
            info.update(real.info)
        return runs.Labels(labels, np.full(len(x), np.nan, np.float32), info=info)

    saved = runs.compute_labels
    runs.compute_labels = compute_labels
    try:
        return store.cluster("leiden", **params)
    finally:
        runs.compute_labels = saved


def exact_top(q: np.ndarray, ids: np.ndarray, x: np.ndarray, k: int, block: int = 200_000) -> np.ndarray:
    """Ids of the exact top ``k`` of each query, merged block by block."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(x), block):
        sims = q @ x[start : start + block].T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        both_s = np.hstack([best_s, np.take_along_axis(sims, top, axis=1)])
        both_i = np.hstack([best_i, ids[start:][top]])
        keep = np.argsort(-both_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(both_s, keep, 1), np.take_along_axis(both_i, keep, 1)
    return best_i


def knn_recall(store, queries: np.ndarray, k: int) -> None:
    """Time of the upkeep's kNN search of a 1,000-query batch (list-blocked, as upkeep runs it, and
    FAISS's own scan) and its recall@k against an exact search, at several probe counts."""
    import faiss

    from clusterer.service.upkeep import knn

    index = store.index
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ids, x = store.embeddings()
    exact = exact_top(q, ids, x, k)
    default = getattr(index.index, "nprobe", None)
    for nprobe in sorted({8, 16, default or 32}):
        index.set_nprobe(nprobe)
        t = time.perf_counter()
        found = knn(index, q, k)[0]
        blocked_s = time.perf_counter() - t
        t = time.perf_counter()
        faiss_ids = index.index.search(q, k)[1]
        faiss_s = time.perf_counter() - t
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), exact.tolist())])
        agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), faiss_ids.tolist())])
        print(
            f"kNN of {len(q):,} queries, k {k}, {index.kind}: nprobe {nprobe}: list-blocked {blocked_s:.3f} s, "
            f"FAISS scan {faiss_s:.3f} s (omp {faiss.omp_get_max_threads()}), recall@{k} vs exact {recall:.4f}, "
            f"agreement with FAISS {agree:.4f}",
            flush=True,
        )
    if default:
        index.set_nprobe(default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    parser.add_argument("--method", choices=["community", "kmeans", "leiden"], default="community")
    parser.add_argument("--no-lookups", action="store_true", help="skip the lookup latency and the peer")
    parser.add_argument(
        "--synthetic-only",
        action="store_true",
        help="no real sentences (no mix50k embeddings needed): each batch is 500 sentences of new "
        "synthetic groups and 500 near stored ones; implies --no-lookups",
    )
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument(
        "--recall", action="store_true", help="also time the batch kNN search and its recall@10 against exact"
    )
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="build the store in this folder and keep it; reuse it when it already holds a run",
    )
    args = parser.parse_args()

    from clusterer.api import Store
    from indexer.encoder import DEFAULT_MODEL, Encoder
    from indexer.normalize import normalize_text

    syn = synthetic(args.synthetic + args.batches * 500)
    if args.synthetic_only:
        args.no_lookups = True
        texts, real = synthetic_near(syn, args.synthetic, args.batches * 500)
        args.queries = 0
    else:
        texts, _ = load_mix50k()
        real, _ = mix50k()
    n_real_base = len(texts) - args.batches * 500 - args.queries
    syn_texts = [f"synthetic sentence {i} in group {i // 50}" for i in range(len(syn))]
    base_texts = syn_texts[: args.synthetic] + texts[:n_real_base]
    table = dict(zip(syn_texts, syn))
    table.update(zip(map(normalize_text, texts), real))
    encoder = TableEncoder(table, DEFAULT_MODEL)

    with tempfile.TemporaryDirectory(dir=str(Path(__file__).resolve().parent)) as tmp:
        store = Store.open(args.keep or Path(tmp) / "store", encoder=encoder)
        reuse = args.keep is not None and store.runs()
        t0 = time.perf_counter()
        for start in range(0, 0 if reuse else len(base_texts), 200_000):
            store.ingest(base_texts[start : start + 200_000])
            print(f"  {min(start + 200_000, len(base_texts)):,} stored, {time.perf_counter() - t0:.0f} s", flush=True)
        print(
            f"{'reused' if reuse else 'built'} store of {store.count():,} sentences in {time.perf_counter() - t0:.0f} s "
            f"({store.index.kind}), peak RSS {peak_gib():.1f} GiB",
            flush=True,
        )

        t0 = time.perf_counter()
        params = {
            "community": {"threshold": 0.75, "min_size": 10},
            "kmeans": {"k": 2000},
            "leiden": {"k": 10, "resolution": 1.0, "min_size": 5},
        }[args.method]
        if reuse:
            run = store.runs()[0]
        elif args.method == "leiden":
            run = planted_leiden_run(store, args.synthetic, params)
        else:
            run = store.cluster(args.method, **params)
        print(
            f"{args.method} run {params}: {run.clusters:,} clusters, {run.assigned:,} assigned, "
            f"{time.perf_counter() - t0:.0f} s, peak RSS {peak_gib():.1f} GiB",
            flush=True,
        )

        batch_times = []
        for b in range(args.batches):
            new = (
                syn_texts[args.synthetic + b * 500 : args.synthetic + (b + 1) * 500]
                + texts[n_real_base + b * 500 : n_real_base + (b + 1) * 500]
            )
            if reuse:  # a kept store already holds these texts: same vectors under new texts
                tag = f" [{time.time_ns()}]"
                for t in new:
                    table[normalize_text(t + tag)] = table[normalize_text(t)]
                new = [t + tag for t in new]
            encoder.seconds = 0.0
            t0 = time.perf_counter()
            report = store.ingest(new)
            total = time.perf_counter() - t0
            batch_times.append(total - encoder.seconds)
            print(
                f"batch {b + 1}: {report.added} added, {report.clustering}, "
                f"{batch_times[-1]:.3f} s excluding embedding",
                flush=True,
            )
        steady = batch_times[1:] or batch_times
        print(
            f"ingest+assign 1,000 sentences: first batch {batch_times[0]:.3f} s (loads the run state), "
            f"then median {np.median(steady):.3f} s, max {max(steady):.3f} s"
        )

        if args.recall:
            knn_recall(store, real[:1000] if args.synthetic_only else real[-1000:], k=10)

        if args.no_lookups:
            print(f"peak RSS {peak_gib():.1f} GiB")
            store.close()
            return
        store._encoder = Encoder().load()
        queries = texts[len(texts) - args.queries :]
        store.lookup(queries[0])
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            store.lookup(q)
            lat.append(time.perf_counter() - t0)
        lat_ms = np.array(lat) * 1000
        print(
            f"lookup (embedding included), {len(queries)} queries: p50 {np.percentile(lat_ms, 50):.1f} ms, "
            f"p99 {np.percentile(lat_ms, 99):.1f} ms"
        )

        from sentence_transformers import SentenceTransformer, util

        from indexer.encoder import resolve_model

        model = SentenceTransformer(resolve_model(None), device="cpu")
        ids, corpus = store.embeddings()
        import torch

        corpus_t = torch.from_numpy(corpus)
        peer = []
        for q in queries[:200]:
            t0 = time.perf_counter()
            qv = model.encode([q], convert_to_tensor=True, normalize_embeddings=True).float()
            util.semantic_search(qv, corpus_t, top_k=10)
            peer.append(time.perf_counter() - t0)
        peer_ms = np.array(peer) * 1000
        print(
            f"peer encode + util.semantic_search over {len(ids):,}: p50 {np.percentile(peer_ms, 50):.1f} ms, "
            f"p99 {np.percentile(peer_ms, 99):.1f} ms; ratio p50 {np.percentile(peer_ms, 50) / np.percentile(lat_ms, 50):.1f}x"
        )
        print(f"peak RSS {peak_gib():.1f} GiB")
        store.close()


if __name__ == "__main__":
    main()
