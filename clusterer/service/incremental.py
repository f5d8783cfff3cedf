"""Keeping the latest run current as sentences arrive: the rules, as pure plans.

Everything here takes arrays and ids and returns decisions; :mod:`clusterer.service.upkeep`
gathers the inputs (index searches, labels from SQL) and writes the plans.  The rule depends
on the run's method (:func:`clusterer.service.methods.upkeep_rule`):

- ``graph`` (leiden runs): a new sentence joins the cluster holding most of its kNN weight
  (:func:`graph_assign`, the run's ``k``; neighbours below the run's ``min_similarity`` do not
  count), or stays unassigned.  Its neighbours are the stored sentences and the batch's other
  sentences; a batch neighbour counts with the label the stored neighbours alone give it, so the
  result does not depend on the batch's order.  New clusters are born from the unassigned pool
  (:func:`plan_graph_births`).
- ``community``: a new sentence joins the cluster with which it has the most members at
  similarity >= threshold, among the clusters whose centre is itself within the threshold
  (:func:`community_vote`); new communities are looked for among the unassigned sentences of
  the batch and their unassigned neighbours (:func:`plan_community_births`).
- ``centroid`` (k-means, agglomerative): nearest centroid; the centroid moves to the running mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import topics


@dataclass
class RunState:
    """What upkeep keeps in memory about the latest run between batches: caches only.

    Labels and sizes are always read from the database (the labels of the neighbours a batch
    touches, the rows of the clusters it touches), so opening a store costs one row read
    whatever its size; centres, centroids and term totals are filled as batches need them.
    """

    run_id: int
    method: str
    params: dict[str, Any]
    n_sentences: int = 0  # the run's n_sentences this state reflects; another writer changes it
    centres: dict[int, np.ndarray] = field(default_factory=dict)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)
    centroids_complete: bool = False
    term_mass: tuple[int, int] | None = None
    term_totals: dict[str, int] = field(default_factory=dict)

    @property
    def rule(self) -> str:
        """'community', 'graph' or 'centroid', as the method table says."""
        from clusterer.service import methods

        return methods.upkeep_rule(self.method)

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.params.get("stats") or {})

    def param(self, name: str, default: Any) -> Any:
        """A run parameter, then a statistic the run recorded, then ``default``."""
        value = self.params.get(name)
        if value is None:
            value = self.stats.get(name)
        return default if value is None else value

    def is_current(self, run) -> bool:
        """Whether this state still describes ``run`` (no other process or Store object has
        changed it since)."""
        edits = (run.params or {}).get("edits") if run is not None else None  # curation edits made
        return (
            run is not None
            and run.id == self.run_id
            and run.n_sentences == self.n_sentences
            and edits == self.params.get("edits")
        )

    def forget(self, labels) -> None:
        for label in labels:
            self.centres.pop(int(label), None)
            self.centroids.pop(int(label), None)


# -- community rule ------------------------------------------------------------------------


def vote(neighbor_labels: np.ndarray, neighbor_sims: np.ndarray) -> tuple[int, float, int]:
    """(label, best similarity, votes): the label held by most neighbours, ties to the
    label with the most similar neighbour, then to the smaller label; (-1, nan, 0) if none."""
    labels = np.asarray(neighbor_labels)
    sims = np.asarray(neighbor_sims, dtype=np.float32)
    keep = labels >= 0
    if not keep.any():
        return -1, float("nan"), 0
    labels, sims = labels[keep], sims[keep]
    uniq, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    best = np.full(len(uniq), -np.inf, dtype=np.float32)
    np.maximum.at(best, inverse, sims)
    order = np.lexsort((uniq, -best, -counts))
    k = order[0]
    return int(uniq[k]), float(best[k]), int(counts[k])


def community_vote(
    centres: Mapping[int, np.ndarray],
    neighbor_labels: np.ndarray,
    neighbor_sims: np.ndarray,
    vector: np.ndarray,
    threshold: float,
) -> tuple[int, float, int]:
    """:func:`vote` among the clusters the sentence could belong to under the full run's rule.

    A community of the full run is the ball ``sim(member, centre) >= threshold``
    around its centre, so a neighbour's cluster only counts when the sentence is
    also within ``threshold`` of that cluster's centre.  Without this a cluster
    grows by chaining (a member's neighbour's neighbour ...) far past the radius
    the full run gives it; on the BANKING77 sample streamed in 10 batches this
    raised the agreement with a full run (ARI) from 0.41 to 0.52 at 0.7/8 and from
    0.50 to 0.64 at 0.75/5.  Clusters without a known centre keep the plain vote.
    """
    labels = np.asarray(neighbor_labels).copy()
    vec = np.asarray(vector, dtype=np.float32)
    for label in {int(l) for l in labels if l >= 0}:
        ref = centres.get(label)
        if ref is not None and float(vec @ ref) < np.float32(threshold):
            labels[labels == label] = -1
    return vote(labels, neighbor_sims)


def community_assign(
    centres: Mapping[int, np.ndarray],
    neighbour_labels: list[np.ndarray],
    neighbour_sims: list[np.ndarray],
    vectors: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (-1: none) and votes of a batch of a community run.

    Only stored sentences vote (``neighbour_labels`` are the labels of each sentence's stored
    neighbours at similarity >= threshold); the batch's own sentences do not, so the result
    does not depend on the batch's order. Sentences left out may still found a new community
    together (:func:`plan_community_births`).
    """
    labels = np.full(len(vectors), -1, dtype=np.int64)
    votes = np.zeros(len(vectors), dtype=np.int64)
    for i, (n_labels, n_sims) in enumerate(zip(neighbour_labels, neighbour_sims)):
        label, _, v = community_vote(centres, n_labels, n_sims, vectors[i], threshold)
        labels[i], votes[i] = label, v
    return labels, votes


# -- centroid rule -------------------------------------------------------------------------


def assign_to_centroids(centroids: Mapping[int, np.ndarray], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each vector: (labels, similarities); -1 when there is no centroid."""
    if not centroids or len(vectors) == 0:
        return np.full(len(vectors), -1, np.int64), np.full(len(vectors), np.nan, np.float32)
    labels = np.array(sorted(centroids), dtype=np.int64)
    matrix = np.vstack([centroids[l] for l in labels]).astype(np.float32)
    sims = vectors @ matrix.T
    best = sims.argmax(axis=1)
    return labels[best], sims[np.arange(len(vectors)), best].astype(np.float32)


def similarities_to(refs: Mapping[int, np.ndarray], labels: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Each assigned vector's similarity to its cluster's reference vector (nan when none)."""
    out = np.full(len(labels), np.nan, dtype=np.float32)
    for i, label in enumerate(labels):
        ref = refs.get(int(label)) if label >= 0 else None
        if ref is not None:
            out[i] = float(np.asarray(vectors[i], np.float32) @ ref)
    return out


# -- graph rule ----------------------------------------------------------------------------

BATCH_KEY = -2
"""Neighbour keys: a stored sentence is its id (>= 0), -1 is padding, and the batch's own
sentence at position p is ``BATCH_KEY - p``."""


def batch_key(positions: np.ndarray) -> np.ndarray:
    return BATCH_KEY - np.asarray(positions, dtype=np.int64)


def merge_neighbours(
    stored_ids: np.ndarray,
    stored_sims: np.ndarray,
    queries: np.ndarray,
    batch: np.ndarray,
    k: int,
    self_ids: np.ndarray | None = None,
    self_in_batch: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of each query among stored sentences and the batch.

    ``stored_ids``/``stored_sims`` (m, any) come from the index (-1 padding); ``batch`` holds the
    batch's vectors (rows L2-normalised, not in the index yet), compared with the queries by one
    matrix product. ``self_ids`` (one per query) drops a stored sentence from its own list and
    ``self_in_batch`` says the queries are the batch itself (a row is not its own neighbour).
    Returns (keys, similarities), (m, k), most similar first; see :data:`BATCH_KEY`.
    """
    m = len(queries)
    stored_ids = np.asarray(stored_ids, dtype=np.int64).reshape(m, -1)
    stored_sims = np.asarray(stored_sims, dtype=np.float32).reshape(m, -1)
    sims = np.where(stored_ids >= 0, stored_sims, -np.inf).astype(np.float32)
    if self_ids is not None:
        sims = np.where(stored_ids == np.asarray(self_ids, np.int64)[:, None], -np.inf, sims)
    keys = stored_ids
    if len(batch):
        inner = np.asarray(queries, np.float32) @ np.asarray(batch, np.float32).T
        if self_in_batch:
            np.fill_diagonal(inner, -np.inf)
        keys = np.concatenate([keys, np.broadcast_to(batch_key(np.arange(len(batch))), (m, len(batch)))], axis=1)
        sims = np.concatenate([sims, inner], axis=1)
    kk = min(k, sims.shape[1])
    if kk < sims.shape[1]:  # the k best of each row, then only those sorted
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        keys, sims = np.take_along_axis(keys, part, axis=1), np.take_along_axis(sims, part, axis=1)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
    out_keys = np.take_along_axis(keys, top, axis=1)
    out_sims = np.take_along_axis(sims, top, axis=1)
    finite = np.isfinite(out_sims)
    out_keys = np.where(finite, out_keys, -1)
    out_sims = np.where(finite, out_sims, 0.0).astype(np.float32)
    if kk < k:
        out_keys = np.pad(out_keys, ((0, 0), (0, k - kk)), constant_values=-1)
        out_sims = np.pad(out_sims, ((0, 0), (0, k - kk)))
    return out_keys, out_sims


UNASSIGNED = -2
"""The label of a neighbour that is stored but in no cluster (or a batch sentence not yet
placed): under the graph rule the unassigned weight competes with every cluster's."""
_POOL = np.iinfo(np.int64).max


def key_labels(
    keys: np.ndarray, stored_label: Callable[[np.ndarray], np.ndarray], batch_labels: np.ndarray
) -> np.ndarray:
    """Labels of neighbour keys: stored ids through ``stored_label`` (ids -> labels,
    :data:`UNASSIGNED`, or -1 when the run does not know the id), batch keys from
    ``batch_labels`` (one per batch position; -1 there means unassigned), padding -1."""
    keys = np.asarray(keys, dtype=np.int64)
    out = np.full(keys.shape, -1, dtype=np.int64)
    stored = keys >= 0
    if stored.any():
        out[stored] = stored_label(keys[stored])
    batch = keys <= BATCH_KEY
    if batch.any():
        given = np.asarray(batch_labels, dtype=np.int64)[BATCH_KEY - keys[batch]]
        out[batch] = np.where(given >= 0, given, UNASSIGNED)
    return out


def weighted_label(labels: np.ndarray, sims: np.ndarray, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clusterer.algorithms.graph.assign_by_weight` over all rows at once (the same rule:
    neighbours below ``min_similarity`` or at similarity <= 0 do not count, ties go to the lower
    label, the share is of all the row's positive weight), with the unassigned weight
    (:data:`UNASSIGNED` neighbours) as one more contender: a row whose winner it is gets -1."""
    labels = np.asarray(labels, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float32)
    m = len(labels)
    out = np.full(m, -1, dtype=np.int64)
    share = np.zeros(m, dtype=np.float32)
    labels = np.where(labels == UNASSIGNED, _POOL, labels)
    ok = (labels >= 0) & (sims >= np.float32(min_similarity)) & (sims > 0)
    if m == 0 or not ok.any():
        return out, share
    rows = np.broadcast_to(np.arange(m)[:, None], labels.shape)[ok]
    labs, w = labels[ok], sims[ok].astype(np.float64)
    order = np.lexsort((labs, rows))
    rows, labs, w = rows[order], labs[order], w[order]
    starts = np.flatnonzero(np.concatenate([[True], (rows[1:] != rows[:-1]) | (labs[1:] != labs[:-1])]))
    weight, g_rows, g_labs = np.add.reduceat(w, starts), rows[starts], labs[starts]
    best = np.lexsort((g_labs, -weight, g_rows))
    first = best[np.concatenate([[True], g_rows[best][1:] != g_rows[best][:-1]])]
    positive = np.where(sims > 0, sims, 0).sum(axis=1, dtype=np.float64)
    won = g_labs[first]
    out[g_rows[first]] = np.where(won == _POOL, -1, won)
    share[g_rows[first]] = np.where(won == _POOL, 0.0, weight[first] / positive[g_rows[first]])
    return out, share


def graph_assign(
    keys: np.ndarray, sims: np.ndarray, stored_label: Callable[[np.ndarray], np.ndarray], min_similarity: float
) -> tuple[np.ndarray, np.ndarray]:
    """The graph rule over a batch: (labels or -1, the winning label's share of the kNN weight).

    A row joins the cluster holding most of its kNN weight, unless more of it lies with
    unassigned sentences (then it stays unassigned and may found a cluster with them). Pass one
    counts the batch's other sentences as unassigned; pass two lets each count with the label
    pass one gave it. Both passes treat every row alike, so the order of the batch does not matter.
    """
    m = len(keys)
    first, share = weighted_label(key_labels(keys, stored_label, np.full(m, -1)), sims, min_similarity)
    if not (np.asarray(keys) <= BATCH_KEY).any():
        return first, share
    return weighted_label(key_labels(keys, stored_label, first), sims, min_similarity)


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


# -- the plan of a batch -------------------------------------------------------------------


@dataclass
class BatchPlan:
    """What one batch does to the run: each new sentence's label (-1: unassigned) and similarity,
    the clusters born (possibly taking stored unassigned sentences along), and which existing
    clusters grow by which batch positions."""

    labels: np.ndarray
    similarities: np.ndarray
    births: list[Birth] = field(default_factory=list)

    def apply_births(self, ids: np.ndarray) -> dict[int, tuple[int, float]]:
        """Put the batch's members of born clusters into ``labels``; returns the stored
        sentences that join a born cluster as ``{id: (label, similarity)}``."""
        pos_of = {int(i): p for p, i in enumerate(ids)}
        relabelled: dict[int, tuple[int, float]] = {}
        for b in self.births:
            for m, s in zip(b.members, b.similarities):
                if m in pos_of:
                    self.labels[pos_of[m]] = b.label
                    self.similarities[pos_of[m]] = s
                else:
                    relabelled[m] = (b.label, s)
        return relabelled

    def growth(self) -> dict[int, np.ndarray]:
        """Batch positions joining each existing cluster."""
        born = {b.label for b in self.births}
        grown = np.flatnonzero((self.labels >= 0) & ~np.isin(self.labels, list(born)))
        return {int(l): grown[self.labels[grown] == l] for l in np.unique(self.labels[grown])}


def grown_centroid(centroid: np.ndarray, size: int, added: np.ndarray) -> np.ndarray:
    """A centroid after ``added`` vectors joined its ``size`` members (running mean, normalised)."""
    from clusterer.algorithms.kmeans import update_centroid

    new, _ = update_centroid(np.asarray(centroid, np.float32), size, np.asarray(added, np.float32))
    return new


def shrunk_centroid(centroid: np.ndarray, size: int, removed: np.ndarray) -> np.ndarray | None:
    """A normalised centroid after ``removed`` vectors left its ``size`` members (None when
    nothing is left). Exact for the mean of unit vectors; for a stored normalised centroid it
    weighs the members as if they lay on it, as :func:`grown_centroid` does."""
    left = size - len(removed)
    if left <= 0:
        return None
    total = np.asarray(centroid, np.float64) * size - np.asarray(removed, np.float64).sum(axis=0)
    norm = np.linalg.norm(total)
    if norm <= 1e-9:
        return np.asarray(centroid, np.float32)
    return (total / norm).astype(np.float32)


def new_centre(member_ids: list[int], vectors: np.ndarray, centroid: np.ndarray) -> tuple[int, np.ndarray]:
    """The member most similar to the centroid (ties: the lower id) and every member's similarity to it."""
    sims = vectors @ np.asarray(centroid, np.float32)
    order = np.lexsort((np.asarray(member_ids), -sims))
    centre = int(order[0])
    return int(member_ids[centre]), (vectors @ vectors[centre]).astype(np.float32)


TERM_CACHE_MAX = 2_000_000
KEYWORDS = 10


def keyword_scores(
    counts: dict[int, dict[str, int]], totals: Mapping[str, int], mass: tuple[int, int], top_n: int = KEYWORDS
) -> dict[int, dict[str, Any]]:
    """The ``keywords`` column of each cluster in ``counts`` given every term's total over the
    run and the run's (term occurrences, clusters with terms)."""
    average = mass[0] / mass[1] if mass[1] else None
    scored = topics.ctfidf_keywords(counts, top_n=top_n, term_totals=totals, average=average)
    return {label: {"keywords": [[t, round(s, 6)] for t, s in scored.get(label, [])]} for label in counts}
