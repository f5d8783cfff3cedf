"""Clustering runs over a store: load embeddings, run an algorithm, attach topics, persist.

The algorithms stay pure (arrays in, lists out); this module wires them to the
database.  A run row is written first with status ``running`` so that a failed
or killed run is visible; everything else is written in one transaction at the
end, so a run is either complete or absent from lookups.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from clusterer.algorithms import topics
from clusterer.errors import ClustererError, InvalidParameterError
from clusterer.algorithms.matching import groups_from_labels, match_clusters
from storage import clusters as cq
from storage import sentences as sq

METHODS = ("community", "kmeans", "agglomerative")
MAX_GRAPH_BYTES = 4 << 30
MAX_COMMUNITY_FRACTION = 0.5
EXACT_SEARCH_MAX = 20_000
KEYWORDS_PER_CLUSTER = 10
REPRESENTATIVES = 3
MIN_JACCARD = 0.3

Progress = Callable[[str], None]


class GuardRailError(ClustererError):
    """A run was refused because it would exhaust memory or produce one giant cluster."""


class NoRunError(ClustererError):
    """No clustering run has been made yet."""


@dataclass
class Labels:
    """What an algorithm produced over positions 0..n-1: label (-1 unassigned), similarity, centre."""

    labels: np.ndarray
    similarities: np.ndarray
    centres: dict[int, int] = field(default_factory=dict)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def default_params(method: str, **given: Any) -> dict[str, Any]:
    if method not in METHODS:
        raise InvalidParameterError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    defaults: dict[str, dict[str, Any]] = {
        "community": {"threshold": 0.75, "min_size": 10},
        "kmeans": {"k": 50, "seed": 0},
        "agglomerative": {"distance_threshold": 1.5, "linkage": "ward"},
    }
    allowed = set(defaults[method]) | ({"nprobe", "search"} if method == "community" else set())
    unknown = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if unknown:
        raise InvalidParameterError(
            f"{method} does not take {', '.join(unknown)}; its parameters are {', '.join(sorted(allowed))}"
        )
    params = dict(defaults[method])
    params.update({k: v for k, v in given.items() if v is not None})
    return params


def _raise_threshold_hint(threshold: float) -> str:
    """What to suggest; never a "higher" threshold that is not above the current one."""
    higher = min(0.95, threshold + 0.1)
    if higher > threshold:
        return f"Raise --threshold (e.g. {higher:.2f}) or pass --force."
    return "Pass --force to run anyway."


def check_community_guards(x: np.ndarray, threshold: float, min_size: int, max_bytes: int = MAX_GRAPH_BYTES) -> dict[str, Any]:
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


def community_labels(x: np.ndarray, threshold: float, min_size: int, device: str = "auto",
                     nprobe: int | None = None, search: str = "auto", show_progress: bool = False) -> Labels:
    """Community detection over ``x``.

    ``search``: "exact" (FAISS flat range search, or torch on CUDA), "approximate" (cell-blocked
    search of :mod:`clusterer.algorithms.partitioned`, ``nprobe`` cells per point) or "auto": exact up to
    ``EXACT_SEARCH_MAX`` sentences or on a GPU, approximate above.
    """
    from clusterer.algorithms.community import community_detection
    from clusterer.algorithms.neighbors import neighbor_graph
    from clusterer.algorithms.partitioned import DEFAULT_NPROBE, partitioned_neighbor_graph

    if search not in ("auto", "exact", "approximate"):
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
        graph = partitioned_neighbor_graph(x, threshold, min_size, nprobe=nprobe or DEFAULT_NPROBE, show_progress=show_progress)
    communities = community_detection(graph)
    centres: dict[int, int] = {}
    for k, com in enumerate(communities):
        members = np.asarray(com.members, dtype=np.int64)
        labels[members] = k
        sims[members] = com.similarities
        centres[k] = com.centre
    return Labels(labels, sims, centres, info={"search": search, "candidates": len(graph), "edges": graph.total_edges})


def _cuda_available() -> bool:
    from indexer.hardware import cuda_available

    return cuda_available()


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0) -> Labels:
    from clusterer.algorithms.kmeans import kmeans

    if len(x) == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
    res = kmeans(x, k, seed=seed)
    return Labels(res.labels.astype(np.int64), res.similarities.astype(np.float32),
                  centroids={j: res.centroids[j] for j in range(res.k)}, info={"inertia": res.inertia})


def agglomerative_labels(x: np.ndarray, distance_threshold: float, linkage: str = "ward") -> Labels:
    from clusterer.algorithms.agglomerative import agglomerative

    if len(x) == 0:
        return Labels(np.zeros(0, np.int64), np.zeros(0, np.float32))
    res = agglomerative(x, distance_threshold, linkage=linkage)
    return Labels(np.asarray(res.labels, dtype=np.int64), np.asarray(res.similarities, dtype=np.float32))


def compute_labels(method: str, x: np.ndarray, params: dict[str, Any], device: str = "auto",
                   force: bool = False, show_progress: bool = False) -> Labels:
    """Run one algorithm over the embedding matrix ``x`` (rows L2-normalised)."""
    if method == "community":
        t, m = float(params["threshold"]), int(params["min_size"])
        if not -1.0 <= t <= 1.0:
            raise InvalidParameterError(f"--threshold must be between -1 and 1, got {t}")
        if m < 1:
            raise InvalidParameterError(f"--min-size must be at least 1, got {m}")
        guards = {} if force else check_community_guards(x, t, m)
        out = community_labels(x, t, m, device=device, nprobe=params.get("nprobe"),
                               search=params.get("search", "auto"), show_progress=show_progress)
        out.info.update(guards)
        return out
    if method == "kmeans":
        return kmeans_labels(x, int(params["k"]), seed=int(params.get("seed", 0)))
    if method == "agglomerative":
        return agglomerative_labels(x, float(params["distance_threshold"]), params.get("linkage", "ward"))
    raise InvalidParameterError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def describe_clusters(x: np.ndarray, ids: np.ndarray, texts: list[str], result: Labels, label_of: dict[int, int]) -> tuple[list[cq.ClusterRow], dict[int, dict[str, int]]]:
    """Cluster rows (size, centre, cohesion, keywords, representatives) and term counts per final label."""
    final = np.array([label_of.get(int(l), -1) if l >= 0 else -1 for l in result.labels], dtype=np.int64)
    counts = topics.count_terms(texts, final) if len(texts) else {}
    keywords = topics.ctfidf_keywords(counts, top_n=KEYWORDS_PER_CLUSTER) if counts else {}
    rows = []
    for raw, label in label_of.items():
        pos = np.flatnonzero(result.labels == raw)
        vectors = x[pos]
        centroid = result.centroids.get(raw)
        if centroid is None:
            centroid = topics.normalised_centroid(vectors)
        reps = topics.representatives(x, pos, centroid, n=REPRESENTATIVES)
        centre_pos = result.centres.get(raw, reps[0] if reps else int(pos[0]))
        rows.append(cq.ClusterRow(
            label=label,
            size=len(pos),
            centre_id=int(ids[centre_pos]),
            cohesion=round(topics.cohesion(vectors), 6),
            keywords=[[t, round(s, 6)] for t, s in keywords.get(label, [])],
            representatives=[int(ids[p]) for p in reps],
            centroid=np.asarray(centroid, dtype=np.float32).tobytes(),
        ))
    return rows, counts


def similarities_for_storage(result: Labels, x: np.ndarray) -> np.ndarray:
    """Each assigned point's similarity to its centre (community) or centroid (others)."""
    sims = result.similarities.astype(np.float32).copy()
    missing = (result.labels >= 0) & ~np.isfinite(sims)
    if missing.any():
        for raw in np.unique(result.labels[missing]):
            pos = np.flatnonzero(result.labels == raw)
            centroid = topics.normalised_centroid(x[pos])
            sims[pos] = x[pos] @ centroid
    return sims


def run_clustering(store, method: str = "community", *, device: str = "auto", force: bool = False,
                   progress: Progress | None = None, show_progress: bool = False, **given: Any):
    """Cluster every stored sentence, store the run, and return its id and summary."""
    params = default_params(method, **given)
    say = progress or (lambda _msg: None)
    with store.db.write() as session:
        run_id = cq.create_run(session, method, params).id
    started = time.perf_counter()
    try:
        with store.db.read() as session:
            max_seq = sq.max_seq(session)
        say("loading embeddings")
        ids, x = store.embeddings(up_to_seq=max_seq)
        say(f"clustering {len(ids):,} sentences ({method})")
        result = compute_labels(method, x, params, device=device, force=force, show_progress=show_progress)
        raw_labels = [int(l) for l in np.unique(result.labels) if l >= 0]
        with store.db.read() as session:
            previous = cq.latest_run(session)
            prev_groups: dict[int, list[int]] = {}
            if previous is not None:
                p_ids, p_labels, _ = cq.assignments_of_run(session, previous.id)
                prev_groups = {k: v.tolist() for k, v in groups_from_labels(
                    np.asarray(p_ids, np.int64), np.asarray([-1 if l is None else l for l in p_labels], np.int64)).items()}
            next_label = cq.max_label(session) + 1
        groups = groups_from_labels(ids, result.labels)
        match = match_clusters(prev_groups, [groups[r] for r in raw_labels], next_label, MIN_JACCARD)
        label_of = dict(zip(raw_labels, match.labels))
        say("keywords and representatives")
        assigned = result.labels >= 0
        with store.db.read() as session:
            text_map = sq.texts_for(session, ids[assigned].tolist())
        texts_all = [text_map.get(int(i), "") if a else "" for i, a in zip(ids, assigned)]
        rows, counts = describe_clusters(x, ids, texts_all, result, label_of)
        sims = similarities_for_storage(result, x)
        final_labels = [label_of[int(l)] if l >= 0 else None for l in result.labels]
        final_sims = [float(s) if l is not None else None for s, l in zip(sims, final_labels)]
        say("saving")
        with store.db.write() as session:
            cq.insert_clusters(session, run_id, rows)
            cq.insert_assignments(session, run_id, ids.tolist(), final_labels, final_sims)
            cq.insert_terms(session, run_id, counts)
            for ev in match.events:
                cq.record_event(session, run_id, ev.label, ev.kind, ev.size, ev.related or None, ev.detail or None)
            run = cq.get_run(session, run_id)
            run.params = {**params, **({"stats": result.info} if result.info else {})}
            cq.finish_run(session, run_id, n_sentences=len(ids), n_clusters=len(rows),
                          n_assigned=int(assigned.sum()), max_seq=max_seq)
    except BaseException as exc:
        with store.db.write() as session:
            cq.fail_run(session, run_id, f"{type(exc).__name__}: {exc}")
        raise
    return run_id, time.perf_counter() - started
