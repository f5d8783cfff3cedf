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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import topics
from clusterer.service.births import (  # noqa: F401  (re-exported: the rules in one place)
    Birth,
    coarse_parent,
    describe_birth,
    plan_community_births,
    plan_graph_births,
)
from clusterer.service.graph_rule import (  # noqa: F401
    BATCH_KEY,
    UNASSIGNED,
    batch_key,
    graph_assign,
    key_labels,
    merge_neighbours,
    weighted_label,
)


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


# -- the plan of a batch -------------------------------------------------------------------


@dataclass
class BatchPlan:
    """What one batch does to the run: each new sentence's label (-1: unassigned) and similarity,
    the clusters born (possibly taking stored unassigned sentences along), and which existing
    clusters grow by which batch positions."""

    labels: np.ndarray
    similarities: np.ndarray
    births: list[Birth] = field(default_factory=list)
    knn: tuple[np.ndarray, np.ndarray] | None = None
    """The batch's kNN rows (neighbour sentence ids with -1 padding, similarities), graph runs."""

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
