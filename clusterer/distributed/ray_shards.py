"""Vectors in shards on Ray actors: the kNN graph fanned out by query block, k-means by shard.

The matrix is cut into shards, one per :class:`ShardActor` (spread over the nodes). The kNN
graph: every block of query rows goes to every shard, each shard returns its ``k + 1`` best
(global positions, similarities) for the block, and the driver merges them, drops each row's own
position and keeps the ``k`` best. Exact search (contiguous row shards, every row compared) gives
exactly the single-machine exact neighbours. Approximate search (above ``EXACT_BELOW`` rows, or
``search="approximate"``) cuts the rows into cells of about 128 around spherical k-means
centroids, the same partition for every shard, and gives each shard whole cells: a query probes
its ``nprobe`` nearest cells and each shard scans only those it owns, so adding shards divides
the scanning instead of repeating it.

k-means: Lloyd's iterations of spherical k-means, each shard returning per iteration the sum of
its vectors and their count per nearest centroid; the driver divides and normalises.

Pure arrays in and out on the driver side; the actors only ever see their shard and the blocks.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from clusterer.distributed.ray_env import import_ray

QUERY_BLOCK = 2048
SHARD_CPUS = 0.5
RETRIES = 3
PARTITION_ITERATIONS = 10
POINTS_PER_CELL = 128
IN_FLIGHT_PER_SHARD = 4


class ShardActor:
    """One shard of the vectors (the rows at global ``positions``), searched and summed in place.

    With ``centroids`` the shard is an inverted file over the cells of one shared partition
    (``centroids``, the same on every shard), holding only the rows of the cells it owns: a
    search probes the query's ``nprobe`` nearest cells and finds rows in those this shard owns,
    so the shards together scan each probed cell once."""

    def __init__(
        self, vectors: np.ndarray, positions: np.ndarray, centroids: np.ndarray | None = None, nprobe: int = 16
    ):
        import faiss

        self.x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.positions = np.asarray(positions, dtype=np.int64)
        d = self.x.shape[1]
        index: Any
        if centroids is not None and len(centroids) > 1:
            quantizer = faiss.IndexFlatIP(d)
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            index = faiss.IndexIVFFlat(quantizer, d, len(centroids), faiss.METRIC_INNER_PRODUCT)
            index.is_trained = True  # the shared partition: nothing to train
            index.nprobe = int(nprobe)
            self._quantizer = quantizer
        else:
            index = faiss.IndexFlatIP(d)
        if len(self.x):
            index.add(self.x)
        self.index = index

    def size(self) -> int:
        return len(self.x)

    def search(self, queries: np.ndarray, take: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``take`` best rows of this shard for each query: (global positions, similarities)."""
        if not len(self.x):
            return np.full((len(queries), 0), -1, np.int64), np.zeros((len(queries), 0), np.float32)
        take = min(take, len(self.x))
        sims, pos = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), take)
        pos = pos.astype(np.int64)
        return np.where(pos >= 0, self.positions[np.maximum(pos, 0)], -1), sims.astype(np.float32)

    def kmeans_step(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Per centroid: the sum (float64) and count of this shard's rows nearest to it, and the
        shard's sum of similarities to their centroid."""
        labels, sims = self._nearest(centroids)
        k = len(centroids)
        sums = np.zeros((k, self.x.shape[1]), dtype=np.float64)
        counts = np.bincount(labels, minlength=k)
        if len(labels):
            order = np.argsort(labels, kind="stable")
            present = np.flatnonzero(counts)
            starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
            sums[present] = np.add.reduceat(self.x[order].astype(np.float64), starts, axis=0)
        return sums, counts, float(sims.sum(dtype=np.float64))

    def assign(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._nearest(centroids)

    def _nearest(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = np.empty(len(self.x), np.float32)
        labels = np.empty(len(self.x), np.int64)
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        for s in range(0, len(self.x), QUERY_BLOCK):
            block = self.x[s : s + QUERY_BLOCK] @ c.T
            labels[s : s + QUERY_BLOCK] = block.argmax(axis=1)
            sims[s : s + QUERY_BLOCK] = block[np.arange(len(block)), labels[s : s + QUERY_BLOCK]]
        return labels, sims


def partition(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids of about ``len(x) / POINTS_PER_CELL`` cells by spherical k-means on a
    sample, the cell of every row)."""
    import faiss

    from clusterer.algorithms.knn import default_knn_nlist

    nlist = default_knn_nlist(len(x))
    km = faiss.Kmeans(
        x.shape[1], nlist, niter=PARTITION_ITERATIONS, seed=seed, spherical=True, max_points_per_centroid=64
    )
    km.train(x)
    _, cell = km.index.search(x, 1)
    return np.asarray(km.centroids, dtype=np.float32), cell.reshape(-1).astype(np.int64)


def start_shards(x: np.ndarray, n_shards: int, *, approximate: bool = False, nprobe: int = 16) -> list[Any]:
    """``n_shards`` actors holding the rows of ``x`` (spread over the nodes): contiguous row
    ranges, or with ``approximate`` whole cells of one shared partition (balanced by rows)."""
    ray = import_ray()
    remote = ray.remote(ShardActor).options(
        num_cpus=SHARD_CPUS, max_restarts=RETRIES, max_task_retries=RETRIES, scheduling_strategy="SPREAD"
    )
    n_shards = max(1, min(n_shards, len(x)))
    centroids = None
    if approximate and len(x) > 2 * POINTS_PER_CELL:
        centroids, cell = partition(x)
        counts = np.bincount(cell, minlength=len(centroids))
        owner = np.minimum(n_shards - 1, (np.cumsum(counts) - counts) * n_shards // len(x))  # cells in order
        groups = [np.flatnonzero(owner[cell] == s) for s in range(n_shards)]
    else:
        bounds = np.linspace(0, len(x), n_shards + 1).astype(int)
        groups = [np.arange(a, b) for a, b in itertools.pairwise(bounds)]
    shared = None if centroids is None else ray.put(centroids)
    actors = [remote.remote(ray.put(np.ascontiguousarray(x[g])), g, shared, nprobe) for g in groups]
    ray.get([a.size.remote() for a in actors])  # built (and failed loudly) before the work starts
    return actors


def stop_shards(actors: list[Any]) -> None:
    ray = import_ray()
    for a in actors:
        ray.kill(a)


def merge_top_k(parts: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best neighbours of each of ``rows`` (global positions) from every shard's
    candidates, its own position dropped, most similar first (ties: lower position), -1 padding."""
    pos = np.concatenate([p for p, _ in parts], axis=1)
    sims = np.concatenate([s for _, s in parts], axis=1)
    valid = (pos >= 0) & (pos != rows[:, None])
    sims = np.where(valid, sims, -np.inf)
    order = np.lexsort((np.where(valid, pos, np.iinfo(np.int64).max), -sims), axis=1)[:, :k]
    top_pos = np.take_along_axis(pos, order, axis=1)
    top_sims = np.take_along_axis(sims, order, axis=1)
    keep = np.isfinite(top_sims)
    out_pos = np.where(keep, top_pos, -1)
    out_sims = np.where(keep, top_sims, 0.0).astype(np.float32)
    if out_pos.shape[1] < k:
        extra = k - out_pos.shape[1]
        out_pos = np.pad(out_pos, ((0, 0), (0, extra)), constant_values=-1)
        out_sims = np.pad(out_sims, ((0, 0), (0, extra)))
    return out_pos, out_sims


def sharded_knn(
    actors: list[Any], x: np.ndarray, k: int, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """kNN of every row of ``x`` over the shard ``actors`` (which hold ``x``), by query block."""
    ray = import_ray()
    n = len(x)
    nbrs = np.full((n, k), -1, np.int64)
    sims = np.zeros((n, k), np.float32)
    starts = list(range(0, n, QUERY_BLOCK))
    window = max(1, IN_FLIGHT_PER_SHARD)
    pending: dict[int, list[Any]] = {}
    next_block = 0
    done = 0
    while done < len(starts):
        while next_block < len(starts) and len(pending) < window:
            s = starts[next_block]
            ref = ray.put(np.ascontiguousarray(x[s : s + QUERY_BLOCK]))
            pending[s] = [a.search.remote(ref, k + 1) for a in actors]
            next_block += 1
        s = min(pending)  # oldest block first: results fill in order
        parts = ray.get(pending.pop(s))
        rows = np.arange(s, min(s + QUERY_BLOCK, n))
        nbrs[rows], sims[rows] = merge_top_k(parts, rows, k)
        done += 1
        if progress is not None:
            progress(len(rows))
    return nbrs, sims


INIT_SAMPLE_PER_CENTROID = 64


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means++ seeds (cosine distance) picked from a seeded sample of ``x`` of at most
    ``INIT_SAMPLE_PER_CENTROID * k`` rows: one random row, then each next row with probability
    proportional to its distance from the nearest seed so far."""
    rng = np.random.default_rng(seed)
    n = len(x)
    size = min(n, max(k, INIT_SAMPLE_PER_CENTROID * k))
    sample = x[np.sort(rng.choice(n, size=size, replace=False))]
    chosen = [int(rng.integers(size))]
    dist = np.maximum(0.0, 1.0 - sample @ sample[chosen[0]]).astype(np.float64)
    for _ in range(1, k):
        total = float(dist.sum())
        nxt = int(rng.choice(size, p=dist / total)) if total > 0 else int(rng.integers(size))
        chosen.append(nxt)
        dist = np.minimum(dist, np.maximum(0.0, 1.0 - sample @ sample[nxt]))
    return np.ascontiguousarray(sample[chosen], dtype=np.float32)


def sharded_kmeans(
    actors: list[Any],
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 20,
    tol: float = 1e-6,
    init: np.ndarray | None = None,
) -> dict[str, Any]:
    """Spherical k-means (Lloyd) over the shard ``actors`` holding ``x`` (rows unit-normalised),
    from the centroids ``init`` (default: :func:`kmeans_plus_plus`): labels, similarities, unit
    centroids, inertia and the objective per iteration."""
    ray = import_ray()
    centroids = kmeans_plus_plus(x, k, seed) if init is None else np.ascontiguousarray(init, dtype=np.float32)
    objective: list[float] = []
    timings = {"iterations": 0.0}
    tick = time.perf_counter()
    for _ in range(niter):
        ref = ray.put(centroids)
        parts = ray.get([a.kmeans_step.remote(ref) for a in actors])
        sums = np.sum([p[0] for p in parts], axis=0)
        counts = np.sum([p[1] for p in parts], axis=0)
        objective.append(float(sum(p[2] for p in parts)))
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        moved = np.where((counts[:, None] > 0) & (norms > 0), sums / np.where(norms > 0, norms, 1.0), centroids)
        centroids = np.ascontiguousarray(moved, dtype=np.float32)
        if len(objective) > 1 and abs(objective[-1] - objective[-2]) <= tol * max(1.0, abs(objective[-2])):
            break
    timings["iterations"] = time.perf_counter() - tick
    ref = ray.put(centroids)
    assigned = ray.get([a.assign.remote(ref) for a in actors])
    labels = np.concatenate([a[0] for a in assigned])
    similarities = np.concatenate([a[1] for a in assigned]).astype(np.float32)
    inertia = float(2.0 * np.sum(1.0 - similarities, dtype=np.float64))
    return {
        "labels": labels,
        "similarities": similarities,
        "centroids": centroids,
        "inertia": inertia,
        "objective": objective,
        "seconds": timings,
    }
