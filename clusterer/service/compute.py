"""The functions behind the clustering methods: arrays in, :class:`Labels` out.

:mod:`clusterer.service.methods` names each one in its table; this module holds what they run:
community detection with its guard rails, k-means, agglomerative clustering and Leiden (whose
:class:`Labels` also carry the kNN graph it used, when asked, for the run's stored graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import graph as graph_algorithm
from clusterer.errors import ClustererError, InvalidParameterError

SEARCHES = ("auto", "exact", "approximate")
MAX_GRAPH_BYTES = 4 << 30
MAX_COMMUNITY_FRACTION = 0.5
EXACT_SEARCH_MAX = 20_000


class GuardRailError(ClustererError):
    """A run was refused because it would exhaust memory or produce one giant cluster."""


@dataclass
class Labels:
    """What an algorithm produced over positions 0..n-1: label (-1 unassigned), similarity, centre.

    ``parents`` maps each fine label to its coarse label for methods with a two-level hierarchy
    (None otherwise); ``info`` holds the JSON-serialisable facts the run stores in its stats.
    """

    labels: np.ndarray
    similarities: np.ndarray
    centres: dict[int, int] = field(default_factory=dict)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    parents: dict[int, int] | None = None
    graph: Any = None
    """The kNN graph the method clustered (:class:`clusterer.algorithms.graph.KnnGraph` over
    positions), for methods that build one; the run stores it (:mod:`clusterer.service.run_graph`)."""


def _cuda_available() -> bool:
    from indexer.hardware import cuda_available

    return cuda_available()


def _raise_threshold_hint(threshold: float) -> str:
    """What to suggest; never a "higher" threshold that is not above the current one."""
    higher = min(0.95, threshold + 0.1)
    if higher > threshold:
        return f"Raise --threshold (e.g. {higher:.2f}) or pass --force."
    return "Pass --force to run anyway."


def check_community_guards(
    x: np.ndarray, threshold: float, min_size: int, max_bytes: int = MAX_GRAPH_BYTES
) -> dict[str, Any]:
    """Estimate the neighbour graph from a sample; raise GuardRailError if it is unreasonable."""
    from clusterer.algorithms.neighbors import estimate_graph

    if len(x) < 2 * min_size:
        return {}
    est = estimate_graph(x, threshold, min_size, sample_size=min(2000, len(x)))
    facts = {
        "estimated_graph_bytes": int(est.expected_bytes),
        "largest_neighbourhood_fraction": round(est.max_neighborhood_fraction, 4),
        "candidate_fraction": round(est.candidate_fraction, 4),
    }
    if est.expected_bytes > max_bytes:
        raise GuardRailError(
            f"threshold {threshold} would build a neighbour graph of about {est.expected_bytes / 2**30:.1f} GiB "
            f"(limit {max_bytes / 2**30:.1f} GiB; {est.mean_neighborhood_size:.0f} neighbours per sentence on average). "
            f"{_raise_threshold_hint(threshold)}"
        )
    if est.max_neighborhood_fraction > MAX_COMMUNITY_FRACTION:
        raise GuardRailError(
            f"at threshold {threshold} one sentence is similar to {est.max_neighborhood_fraction:.0%} of the store, "
            f"so most sentences would land in one community. {_raise_threshold_hint(threshold)}"
        )
    return facts


def community_labels(
    x: np.ndarray,
    threshold: float,
    min_size: int,
    device: str = "auto",
    nprobe: int | None = None,
    search: str = "auto",
    show_progress: bool = False,
) -> Labels:
    """Community detection over ``x``.

    ``search``: "exact" (FAISS flat range search, or torch on CUDA), "approximate" (cell-blocked
    search of :mod:`clusterer.algorithms.partitioned`, ``nprobe`` cells per point) or "auto": exact up to
    ``EXACT_SEARCH_MAX`` sentences or on a GPU, approximate above.
    """
    from clusterer.algorithms.community import community_detection
    from clusterer.algorithms.neighbors import neighbor_graph
    from clusterer.algorithms.partitioned import (
        DEFAULT_NPROBE,
        partitioned_neighbor_graph,
    )

    if search not in SEARCHES:
        raise InvalidParameterError(f"search must be auto, exact or approximate, got {search!r}")
    n = len(x)
    labels = np.full(n, -1, dtype=np.int64)
    sims = np.full(n, np.nan, dtype=np.float32)
    if n == 0 or n < min_size:
        # fewer sentences than min_size: no community can be big enough (the reference clamps
        # min_size to n instead, which would turn any tiny store into one community)
        return Labels(labels, sims)
    if search == "auto":
        on_gpu = device == "cuda" or (device == "auto" and _cuda_available())
        search = "exact" if n <= EXACT_SEARCH_MAX or on_gpu else "approximate"
    if search == "exact":
        graph = neighbor_graph(x, threshold, min_size, device=device, show_progress=show_progress)
    else:
        graph = partitioned_neighbor_graph(
            x, threshold, min_size, nprobe=nprobe or DEFAULT_NPROBE, show_progress=show_progress
        )
    communities = community_detection(graph)
    centres: dict[int, int] = {}
    for k, com in enumerate(communities):
        members = np.asarray(com.members, dtype=np.int64)
        labels[members] = k
        sims[members] = com.similarities
        centres[k] = com.centre
    return Labels(labels, sims, centres, info={"search": search, "candidates": len(graph), "edges": graph.total_edges})


def run_community(x, params, *, device="auto", force=False, show_progress=False, initial=None, graph=None) -> Labels:
    t, m = float(params["threshold"]), int(params["min_size"])
    guards = {} if force else check_community_guards(x, t, m)
    out = community_labels(
        x,
        t,
        m,
        device=device,
        nprobe=params.get("nprobe"),
        search=params.get("search", "auto"),
        show_progress=show_progress,
    )
    out.info.update(guards)
    return out


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0) -> Labels:
    from clusterer.algorithms.kmeans import kmeans

    if len(x) == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
    res = kmeans(x, k, seed=seed)
    return Labels(
        res.labels.astype(np.int64),
        res.similarities.astype(np.float32),
        centroids={j: res.centroids[j] for j in range(res.k)},
        info={"inertia": res.inertia},
    )


def run_kmeans(x, params, *, device="auto", force=False, show_progress=False, initial=None, graph=None) -> Labels:
    return kmeans_labels(x, int(params["k"]), seed=int(params.get("seed", 0)))


def agglomerative_labels(x: np.ndarray, distance_threshold: float, linkage: str = "ward") -> Labels:
    from clusterer.algorithms.agglomerative import agglomerative

    if len(x) == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
    res = agglomerative(x, distance_threshold, linkage=linkage)
    return Labels(np.asarray(res.labels, dtype=np.int64), np.asarray(res.similarities, dtype=np.float32))


def run_agglomerative(
    x, params, *, device="auto", force=False, show_progress=False, initial=None, graph=None
) -> Labels:
    return agglomerative_labels(x, float(params["distance_threshold"]), params.get("linkage", "ward"))


def _compact(initial: np.ndarray) -> np.ndarray:
    """Arbitrary cluster ids (-1 for none) as 0..m-1, keeping -1."""
    initial = np.asarray(initial, dtype=np.int64)
    out = np.full(len(initial), -1, dtype=np.int64)
    have = initial >= 0
    if have.any():
        _, out[have] = np.unique(initial[have], return_inverse=True)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_leiden(x, params, *, device="auto", force=False, show_progress=False, initial=None, graph=None) -> Labels:
    n = len(x)
    if n == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32), parents={})
    res = graph_algorithm.graph_clustering(
        x,
        k=None if params.get("k") is None else int(params["k"]),
        resolution=params.get("resolution"),
        min_size=int(params["min_size"]),
        seed=int(params.get("seed", 0)),
        initial=None if initial is None else _compact(initial),
        search=params.get("search", "auto"),
        nprobe=params.get("nprobe"),
        device=device,
        show_progress=show_progress,
        graph=graph,
        keep_graph=True,
    )
    labels = np.asarray(res.labels, dtype=np.int64)
    present = set(np.unique(labels[labels >= 0]).tolist())  # with ``initial``, ids can have gaps
    parents = {int(f): int(c) for f, c in enumerate(np.asarray(res.parents, dtype=np.int64)) if f in present and c >= 0}
    outliers = int(np.count_nonzero(labels < 0))
    info = dict(_jsonable(res.info))
    info.update(
        resolution=_jsonable(res.resolution),
        coarse_resolution=_jsonable(res.coarse_resolution),
        scores=_jsonable(res.scores),
        outliers=outliers,
        outlier_share=round(outliers / n, 6),
        min_similarity=_jsonable(res.info.get("min_similarity", 0.0)),
        k=int(res.info.get("k") or params["k"]),
        warm_start=initial is not None,
    )
    return Labels(labels, np.full(n, np.nan, dtype=np.float32), info=info, parents=parents, graph=res.knn)
