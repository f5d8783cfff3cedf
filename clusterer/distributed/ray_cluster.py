"""``clusterer cluster --ray``: the heavy stage on a Ray cluster, everything else as on one machine.

The run is the ordinary one (:func:`clusterer.service.runs.run_clustering`: load, plan, keywords,
stable ids, save) with its compute step replaced:

- ``leiden``: the method's own code (:mod:`clusterer.service.methods` calling
  :func:`clusterer.algorithms.graph.graph_clustering`), so the granularity rule, the outlier
  floor and the coarse level are the same; only its kNN search is fanned over shard actors
  (:func:`clusterer.distributed.ray_shards.sharded_knn`; exact below 5,000 rows, above them an
  inverted file over one shared cell partition whose cells the shards own). The edges are
  gathered here and Leiden runs in this process.
- ``kmeans``: centroids trained as the method trains them, on a sample of at most k x 256 rows,
  then Lloyd's iterations over all rows on the shards
  (:func:`~clusterer.distributed.ray_shards.sharded_kmeans`: per iteration each shard returns
  its sums and counts per centroid) and every row assigned on its shard.

The run's ``params.stats.ray`` records the cluster (nodes, CPUs, GPUs), the shards and each
stage's seconds; ``clusterer runs`` prints them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from clusterer.distributed.ray_env import RayCluster, ray_session
from clusterer.distributed.ray_shards import sharded_kmeans, sharded_knn, start_shards, stop_shards
from clusterer.errors import ClustererError, InvalidParameterError
from clusterer.service import methods
from clusterer.service.methods import Labels

RAY_METHODS = ("leiden", "kmeans")
TRAIN_POINTS_PER_CENTROID = 256
"""What the one-machine kmeans trains on per centroid (FAISS's default sample)."""


def _refusal(method: str) -> str:
    return (
        f"--ray runs {' and '.join(RAY_METHODS)}; run --method {method} on one machine "
        "(without --ray and CLUSTERER_RAY_ADDRESS)"
    )


class FanOutError(ClustererError):
    """The leiden method no longer builds its graph where the Ray run can fan it out."""


@contextmanager
def fanned_knn(
    search_fn: Callable[[np.ndarray, int, str, int | None], tuple[np.ndarray, np.ndarray]],
) -> Iterator[list]:
    """While inside, the leiden method's kNN graph (``graph.knn_graph``, which
    :func:`graph_clustering` calls with its distinct rows) comes from ``search_fn``; yields the
    sizes it was asked for, so that a caller can check the fan-out really happened."""
    from clusterer.algorithms import graph

    original = graph.knn_graph
    calls: list[int] = []

    def knn_graph(x, k=graph.DEFAULT_K, *, search="auto", nprobe=None, device="auto", show_progress=False):
        calls.append(len(x))
        nbrs, sims = search_fn(np.ascontiguousarray(x, dtype=np.float32), int(k), search, nprobe)
        return graph.KnnGraph(nbrs, sims)

    graph.knn_graph = knn_graph  # type: ignore[assignment]
    try:
        yield calls
    finally:
        graph.knn_graph = original  # type: ignore[assignment]


class RayCompute:
    """The compute step of a run on Ray: same arguments and result as ``runs.compute_labels``."""

    def __init__(self, cluster: RayCluster, shards: int | None = None, progress: Callable[[int], None] | None = None):
        self.cluster = cluster
        self.shards = shards or max(1, cluster.nodes)
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.search: str | None = None

    def _facts(self) -> dict[str, Any]:
        facts = {**self.cluster.to_dict(), "shards": self.shards}
        if self.search is not None:
            facts["knn_search"] = self.search
        facts["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return facts

    def __call__(self, method: str, x: np.ndarray, params: dict[str, Any], **kwargs: Any) -> Labels:
        if method not in RAY_METHODS:
            raise InvalidParameterError(_refusal(method))
        result = self._leiden(x, params, **kwargs) if method == "leiden" else self._kmeans(x, params)
        result.info["ray"] = self._facts()
        return result

    def _search(self, x: np.ndarray, k: int, search: str, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        from clusterer.algorithms.knn import DEFAULT_KNN_NPROBE, EXACT_BELOW, LARGE_ABOVE, LARGE_KNN_NPROBE

        if search not in methods.SEARCHES:
            raise InvalidParameterError(f"search must be one of {', '.join(methods.SEARCHES)}, not {search!r}")
        approximate = search == "approximate" or (search == "auto" and len(x) >= EXACT_BELOW)
        tick = time.perf_counter()
        default_nprobe = DEFAULT_KNN_NPROBE if len(x) <= LARGE_ABOVE else LARGE_KNN_NPROBE
        actors = start_shards(x, self.shards, approximate=approximate, nprobe=nprobe or default_nprobe)
        self.seconds["shards_start"] = time.perf_counter() - tick
        try:
            tick = time.perf_counter()
            out = sharded_knn(actors, x, k, self.progress)
            self.seconds["knn_fanout"] = time.perf_counter() - tick
        finally:
            stop_shards(actors)
        self.search = "approximate" if approximate else "exact"
        return out

    def _leiden(self, x: np.ndarray, params: dict[str, Any], **kwargs: Any) -> Labels:
        tick = time.perf_counter()
        with fanned_knn(self._search) as calls:
            result = methods.get("leiden").compute(x, params, **kwargs)
        if len(x) > 1 and not calls:
            raise FanOutError("the leiden method did not build its kNN graph through graph.knn_graph")
        self.seconds["leiden_total"] = time.perf_counter() - tick
        for stage, secs in (result.info.get("seconds") or {}).items():
            self.seconds[f"driver_{stage}"] = float(secs)
        return result

    def _kmeans(self, x: np.ndarray, params: dict[str, Any]) -> Labels:
        k, seed = int(params["k"]), int(params.get("seed", 0))
        n = len(x)
        if n == 0:
            return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
        if k > n:
            raise InvalidParameterError(f"k={k} is larger than the number of sentences ({n}); choose k <= {n}")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit = np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)
        tick = time.perf_counter()
        init = kmeans_init(unit, k, seed)
        self.seconds["kmeans_init"] = time.perf_counter() - tick
        tick = time.perf_counter()
        actors = start_shards(unit, self.shards)
        self.seconds["shards_start"] = time.perf_counter() - tick
        try:
            res = sharded_kmeans(actors, unit, k, seed=seed, init=init)
        finally:
            stop_shards(actors)
        self.seconds["kmeans_iterations"] = res["seconds"]["iterations"]
        centroids = res["centroids"]
        return Labels(
            res["labels"],
            res["similarities"],
            centroids={j: centroids[j] for j in range(k)},
            info={"inertia": res["inertia"], "iterations": len(res["objective"])},
        )


def kmeans_init(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Starting centroids: the kmeans method's own training (FAISS, the same seed) on what it
    trains on, a seeded sample of at most ``k * 256`` rows (all of them below that), so that the
    Lloyd iterations over the shards start where the one-machine run ends."""
    from clusterer.algorithms.kmeans import kmeans

    limit = k * TRAIN_POINTS_PER_CENTROID
    sample = x
    if len(x) > limit:
        sample = x[np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))]
    return kmeans(sample, k, seed=seed, max_points_per_centroid=TRAIN_POINTS_PER_CENTROID).centroids


def cluster_on_ray(
    store: Any,
    address: str,
    method: str | None = None,
    *,
    device: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    show_progress: bool = False,
    where: Any = None,
    shards: int | None = None,
    **params: Any,
) -> Any:
    """:meth:`Store.cluster` with the method's heavy stage on the Ray cluster at ``address``;
    returns the stored run's summary."""
    from clusterer.service import runs as run_service

    spec = methods.get(method)
    if spec.name not in RAY_METHODS:
        raise InvalidParameterError(_refusal(spec.name))
    spec.resolve(params)
    with ray_session(address) as cluster:
        compute = RayCompute(cluster, shards)
        with store.lock:
            store.refresh()
            run_id, _ = run_service.run_clustering(
                store,
                spec.name,
                device=device or "auto",
                force=force,
                progress=progress,
                show_progress=show_progress,
                where=where,
                compute=compute,
                **params,
            )
    return store.run(run_id)
