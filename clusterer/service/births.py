"""Clusters born during upkeep: new fine clusters found among the unassigned pool.

:func:`plan_graph_births` (leiden runs) and :func:`plan_community_births` (community runs)
propose groups with the run's own method and parameters; :func:`describe_birth` gives each the
rows a run stores (centroid, centre, cohesion, representatives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from clusterer.algorithms import topics
from clusterer.service.graph_rule import UNASSIGNED, weighted_label


@dataclass
class Birth:
    """A cluster born incrementally: its members (sentence ids, batch ones included)."""

    label: int
    members: list[int]
    centre: int
    similarities: list[float]
    centroid: np.ndarray
    cohesion: float
    representatives: list[int]
    parent: int | None = None
    from_unassigned: int = 0
    centre_vector: np.ndarray | None = None


def describe_birth(
    label: int,
    member_ids: list[int],
    vectors: np.ndarray,
    stored: int,
    centre: int | None = None,
    similarities: list[float] | None = None,
    parent: int | None = None,
) -> Birth:
    """A :class:`Birth` with its centroid, centre (the member nearest the centroid unless given),
    similarities (to the centroid unless given), cohesion and three representatives."""
    centroid = topics.normalized_centroid(vectors)
    reps = topics.representatives(vectors, list(range(len(member_ids))), centroid, n=3)
    to_centroid = (vectors @ centroid).astype(np.float32)
    if centre is None:
        centre = member_ids[reps[0]]
    sims = list(map(float, to_centroid)) if similarities is None else [float(s) for s in similarities]
    return Birth(
        label,
        list(member_ids),
        int(centre),
        sims,
        centroid,
        round(topics.cohesion(vectors), 6),
        [member_ids[r] for r in reps],
        parent,
        stored,
        vectors[list(member_ids).index(centre)].copy(),
    )


def coarse_parent(neighbour_labels: np.ndarray, neighbour_sims: np.ndarray, parent_of: Mapping[int, int]) -> int | None:
    """The coarse cluster holding most of the kNN weight of a new fine cluster's members
    (their neighbours' fine labels mapped to parents); None when no neighbour has one."""
    labels = np.asarray(neighbour_labels, dtype=np.int64).ravel()
    sims = np.asarray(neighbour_sims, dtype=np.float64).ravel()
    weight: dict[int, float] = {}
    for label, s in zip(labels, sims):
        parent = parent_of.get(int(label)) if label >= 0 else None
        if parent is not None and s > 0:
            weight[parent] = weight.get(parent, 0.0) + float(s)
    if not weight:
        return None
    return min(weight, key=lambda p: (-weight[p], p))


def plan_graph_births(
    pool_ids: np.ndarray,
    pool_vectors: np.ndarray,
    pool_keys: np.ndarray,
    pool_sims: np.ndarray,
    key_label: Callable[[np.ndarray], np.ndarray],
    *,
    k: int,
    resolution: float,
    min_size: int,
    min_similarity: float,
    next_label: int,
    parent_of: Mapping[int, int],
    stored: set[int],
    seed: int = 0,
) -> list[Birth]:
    """New fine clusters among the unassigned pool (sentence ids ``pool_ids``).

    Leiden (:func:`graph_clustering`, the run's k and resolution) proposes groups among the pool;
    a member keeps its group only if, by the graph rule over its kNN among every stored sentence
    (``pool_keys``/``pool_sims``, labelled by ``key_label``, pool members counting with their
    proposed group), the group holds most of its weight; a group keeping ``min_size`` members is
    born. A group of noise points loses this test to the clusters around them.
    """
    from clusterer.algorithms.graph import graph_clustering

    pool_ids = np.asarray(pool_ids, dtype=np.int64)
    n = len(pool_ids)
    if n < max(min_size, 2):
        return []
    found = graph_clustering(
        pool_vectors,
        k=min(k, n - 1),
        resolution=resolution,
        min_size=min_size,
        seed=seed,
        min_similarity=min_similarity,
    )
    proposed = np.asarray(found.labels, dtype=np.int64)
    if not (proposed >= 0).any():
        return []
    offset = next_label + 1_000_000_000
    labels = key_label(pool_keys)
    order = np.argsort(pool_ids)
    where = np.minimum(np.searchsorted(pool_ids[order], pool_keys), n - 1)
    in_pool = (pool_keys >= 0) & (pool_ids[order][where] == pool_keys)
    group = proposed[order][where]
    labels = np.where(in_pool, np.where(group >= 0, offset + group, UNASSIGNED), labels)
    won, _ = weighted_label(labels, pool_sims, min_similarity)
    keep = (proposed >= 0) & (won == offset + proposed)
    births = []
    label = next_label
    for group in np.unique(proposed[keep]):
        members = np.flatnonzero(keep & (proposed == group))
        if len(members) < min_size:
            continue
        ids = [int(pool_ids[p]) for p in members]
        outside = labels[members]
        parent = coarse_parent(np.where(outside < offset, outside, -1), pool_sims[members], parent_of)
        births.append(describe_birth(label, ids, pool_vectors[members], sum(i in stored for i in ids), parent=parent))
        label += 1
    return births


def plan_community_births(
    pool_ids: list[int], pool_vectors: np.ndarray, threshold: float, min_size: int, next_label: int, stored: set[int]
) -> list[Birth]:
    """Communities (the full run's rule, same threshold and minimum size) among the unassigned pool."""
    from clusterer.algorithms.community import detect_communities

    if len(pool_ids) < min_size:
        return []
    found = detect_communities(np.asarray(pool_vectors, np.float32), threshold, min_size, device="cpu", normalize=False)
    births = []
    for j, c in enumerate(found):
        ids = [int(pool_ids[p]) for p in c.members]
        births.append(
            describe_birth(
                next_label + j,
                ids,
                pool_vectors[list(c.members)],
                sum(i in stored for i in ids),
                centre=int(pool_ids[c.centre]),
                similarities=list(c.similarities),
            )
        )
    return births
