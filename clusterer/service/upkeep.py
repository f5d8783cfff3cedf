"""The store listener that keeps the latest run current as sentences arrive and leave.

:class:`Upkeep` is handed to the sentence store, which calls it inside the transaction that
inserts or deletes sentences; everything written here commits or rolls back with them. For a
batch it gathers what the rule needs (one index search, the labels of the neighbours it
touches, the rows of the clusters it touches), asks :mod:`clusterer.service.incremental` for a
plan and writes it (:func:`write_batch`); deletions go to :mod:`clusterer.service.deletions`.
Nothing is loaded when a store opens: the first batch costs what any batch costs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.service import incremental as inc
from clusterer.service import run_graph
from clusterer.service.upkeep_write import vector, write_batch
from storage import clusters as cq
from storage import filters
from storage import sentences as sq
from storage.models import Cluster


class Upkeep:
    """Listener (see :class:`indexer.listener.StoreListener`) of a :class:`clusterer.api.Store`."""

    def __init__(self, store: Any):
        self.store = store
        self.state: inc.RunState | None = None
        self._lock = threading.Lock()  # server threads share one state

    def state_for(self, session) -> inc.RunState | None:
        """The latest run's state (a fresh one when another writer changed the run)."""
        latest = cq.latest_run(session)
        with self._lock:
            if latest is None:
                self.state = None
            elif self.state is None or not self.state.is_current(latest):
                self.state = inc.RunState(
                    latest.id, latest.method, dict(latest.params or {}), n_sentences=latest.n_sentences
                )
            return self.state

    def on_writer(self, session):
        """The writer lock was taken: a run a killed process left running is marked interrupted."""
        cq.interrupt_running_runs(session)

    def on_insert(self, session, ids, vectors, texts, max_seq):
        state = self.state_for(session)
        if state is None:
            return None
        ids, vectors, texts = restrict_to_run(
            session, state, np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32), list(texts)
        )
        if len(ids) == 0:
            return None
        gather = Gather(session, state, self.store.index, self.store.dimension, self.store.embedding_dtype)
        plan = plan_batch(gather, ids, vectors)
        change = write_batch(gather, ids, vectors, list(texts), plan, max_seq)
        data_dir, run_id, size = self.store.data_dir, state.run_id, state.n_sentences + len(ids)

        def committed():
            if plan.knn is not None:  # the batch's kNN rows join the run's stored graph
                with contextlib.suppress(OSError):  # a cache: a re-optimisation searches what is missing
                    run_graph.append_rows(data_dir, run_id, ids, *plan.knn, at=size)
            return change.apply(state)

        return committed

    def on_delete(self, session, ids):
        from clusterer.service import deletions

        state = self.state_for(session)
        if state is None:
            return None
        change = deletions.delete_upkeep(session, state, list(ids), self.store.dimension, self.store.embedding_dtype)
        return lambda: change.apply(state)


def restrict_to_run(session, state: inc.RunState, ids: np.ndarray, vectors: np.ndarray, texts: list[str]):
    """The part of a batch the run covers: a run made over a ``where`` subset takes only the new
    sentences that match its filter; the others get no assignment row in it."""
    where = state.params.get("where")
    if not where or len(ids) == 0:
        return ids, vectors, texts
    keep = np.isin(ids, np.asarray(filters.matching_ids(session, ids.tolist(), where), dtype=np.int64))
    return ids[keep], vectors[keep], [t for t, k in zip(texts, keep) if k]


_ABSENT = object()
"""A sentence the run holds no assignment for (not the same as unassigned: None)."""


@dataclass
class Gather:
    """Reads a batch's inputs inside its transaction, caching centres and centroids in the state."""

    session: Any
    state: inc.RunState
    index: Any
    dimension: int
    dtype: str = "float32"
    known: dict[int, Any] = field(default_factory=dict, repr=False)
    """Labels read so far (a lookup passes one kept while the store is unchanged)."""

    def labels(self, ids) -> dict[int, int | None]:
        """The labels of ``ids`` (those the run holds), each read once per transaction."""
        seen = self.known
        asked = {int(i) for i in np.asarray(ids).ravel() if i >= 0}
        wanted = [i for i in asked if i not in seen]
        if wanted:
            found = cq.labels_for(self.session, self.state.run_id, wanted)
            seen.update({i: found.get(i, _ABSENT) for i in wanted})
        return {i: label for i in asked if (label := seen[i]) is not _ABSENT}

    @staticmethod
    def label_fn(known: dict[int, int | None]) -> Callable[[np.ndarray], np.ndarray]:
        def of(ids: np.ndarray) -> np.ndarray:
            flat = np.asarray(ids).ravel()
            return np.fromiter(
                (-1 if (l := known.get(int(i), -1)) == -1 else inc.UNASSIGNED if l is None else l for i in flat),
                dtype=np.int64,
                count=flat.size,
            ).reshape(np.shape(ids))

        return of

    def rows(self, labels) -> dict[int, Cluster]:
        return cq.clusters_by_label(self.session, self.state.run_id, labels)

    def centres(self, labels) -> dict[int, np.ndarray]:
        """Centre vectors of ``labels`` (clusters whose centre is gone have none)."""
        state = self.state
        missing = [int(l) for l in labels if l >= 0 and int(l) not in state.centres]
        if missing:
            centre_of = {l: r.centre_id for l, r in self.rows(missing).items() if r.centre_id is not None}
            vecs = sq.embeddings_found(self.session, list(centre_of.values()), self.dimension, self.dtype)
            state.centres.update({l: vecs[c] for l, c in centre_of.items() if c in vecs})
        return state.centres

    def centroids(self, labels=None) -> dict[int, np.ndarray]:
        """Centroids of ``labels``, or of every cluster of the run when None."""
        state = self.state
        if labels is None:
            if not state.centroids_complete:
                rows = cq.clusters_of_run(self.session, state.run_id, order_by_size=False)
                state.centroids.update({r.label: vector(r.centroid) for r in rows if r.centroid})
                state.centroids_complete = True
            return state.centroids
        missing = [int(l) for l in labels if l >= 0 and int(l) not in state.centroids]
        if missing:
            state.centroids.update({l: vector(r.centroid) for l, r in self.rows(missing).items() if r.centroid})
        return state.centroids


def plan_batch(gather: Gather, ids: np.ndarray, vectors: np.ndarray) -> inc.BatchPlan:
    """The plan for a freshly inserted batch under the run's rule."""
    rule = gather.state.rule
    if rule == "graph":
        return _plan_graph(gather, ids, vectors)
    if rule == "community":
        return _plan_community(gather, ids, vectors)
    labels, sims = inc.assign_to_centroids(gather.centroids(), vectors)
    return inc.BatchPlan(labels, sims)


def _plan_community(gather: Gather, ids: np.ndarray, vectors: np.ndarray) -> inc.BatchPlan:
    state = gather.state
    threshold = float(state.param("threshold", 0.75))
    min_size = int(state.param("min_size", 10))
    found = range_neighbours(gather.index, vectors, threshold)
    known = gather.labels(np.concatenate([f[0] for f in found]) if found else [])
    label_of = gather.label_fn(known)
    n_labels = [label_of(n_ids) for n_ids, _ in found]
    centres = gather.centres({int(l) for ls in n_labels for l in ls if l >= 0})
    labels, _ = inc.community_assign(centres, n_labels, [s for _, s in found], vectors, threshold)
    sims = inc.similarities_to(centres, labels, vectors)
    lost = (labels >= 0) & np.isnan(sims)  # a centre gone from a store made before delete upkeep
    if lost.any():
        sims[lost] = inc.similarities_to(gather.centroids(set(labels[lost].tolist())), labels[lost], vectors[lost])
    plan = inc.BatchPlan(labels, sims)
    fresh = np.flatnonzero(labels < 0)
    pool = {int(ids[p]) for p in fresh}
    for p in fresh:
        pool.update(int(i) for i in found[p][0] if int(i) in known and known[int(i)] is None)
    if len(fresh) and len(pool) >= min_size:
        pool_ids = sorted(pool)
        stored = set(pool_ids) - set(ids.tolist())
        plan.births = inc.plan_community_births(
            pool_ids,
            _pool_vectors(gather, pool_ids, ids, vectors),
            threshold,
            min_size,
            cq.max_label(gather.session) + 1,
            stored,
        )
    return plan


def _pool_vectors(gather: Gather, pool_ids: list[int], ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    pos = {int(i): p for p, i in enumerate(ids)}
    stored = sq.embeddings_found(gather.session, [i for i in pool_ids if i not in pos], gather.dimension, gather.dtype)
    return np.vstack([vectors[pos[i]] if i in pos else stored[i] for i in pool_ids]).astype(np.float32)


def range_neighbours(index, vectors: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (ids, similarities) of indexed vectors at similarity >= threshold."""
    if len(vectors) == 0 or index.ntotal == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(vectors))]
    lims, sims, ids = index.range_search(vectors, threshold)
    return [(ids[lims[i] : lims[i + 1]], sims[lims[i] : lims[i + 1]]) for i in range(len(vectors))]


def graph_params(state: inc.RunState) -> dict[str, Any]:
    from clusterer.algorithms.graph import (
        DEFAULT_K,
        DEFAULT_MIN_SIZE,
        DEFAULT_RESOLUTION,
    )

    return {
        "k": int(state.param("k", DEFAULT_K)),
        "min_size": int(state.param("min_size", DEFAULT_MIN_SIZE)),
        "resolution": float(state.param("resolution", DEFAULT_RESOLUTION)),
        "min_similarity": float(state.stats.get("min_similarity", state.params.get("min_similarity", 0.0)) or 0.0),
    }


def knn(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, similarities) of the ``k`` nearest indexed vectors of each query (-1 padding)."""
    if len(queries) == 0 or index.ntotal == 0:
        return np.full((len(queries), k), -1, np.int64), np.zeros((len(queries), k), np.float32)
    found = index.search(queries, k)
    return found.ids, found.similarities


def graph_neighbours(gather: Gather, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each batch row's k nearest among stored sentences and the rest of the batch."""
    ids, sims = knn(gather.index, vectors, k)
    return inc.merge_neighbours(ids, sims, vectors, vectors, k, self_in_batch=True)


def _plan_graph(gather: Gather, ids: np.ndarray, vectors: np.ndarray) -> inc.BatchPlan:
    state = gather.state
    p = graph_params(state)
    keys, sims = graph_neighbours(gather, vectors, p["k"])
    known = gather.labels(keys[keys >= 0])
    labels, _ = inc.graph_assign(keys, sims, gather.label_fn(known), p["min_similarity"])
    plan = inc.BatchPlan(labels, inc.similarities_to(gather.centroids(set(labels.tolist())), labels, vectors))
    in_batch = keys <= inc.BATCH_KEY
    plan.knn = (np.where(in_batch, ids[np.where(in_batch, inc.BATCH_KEY - keys, 0)], keys), sims)
    fresh = np.flatnonzero(labels < 0)
    pool = {int(ids[q]) for q in fresh}
    for q in fresh:
        pool.update(int(i) for i in keys[q] if i >= 0 and int(i) in known and known[int(i)] is None)
    if len(fresh) == 0 or len(pool) < p["min_size"]:
        return plan
    pool_ids = np.array(sorted(pool), dtype=np.int64)
    pool_vectors = _pool_vectors(gather, pool_ids.tolist(), ids, vectors)
    pos = {int(i): q for q, i in enumerate(ids)}
    in_batch = np.array([int(i) in pos for i in pool_ids])
    pool_keys = np.full((len(pool_ids), p["k"]), -1, np.int64)
    pool_sims = np.zeros((len(pool_ids), p["k"]), np.float32)
    rows = [pos[int(i)] for i in pool_ids[in_batch]]
    pool_keys[in_batch], pool_sims[in_batch] = keys[rows], sims[rows]
    if (~in_batch).any():
        s_ids, s_sims = knn(gather.index, pool_vectors[~in_batch], p["k"] + 1)
        pool_keys[~in_batch], pool_sims[~in_batch] = inc.merge_neighbours(
            s_ids, s_sims, pool_vectors[~in_batch], vectors, p["k"], self_ids=pool_ids[~in_batch]
        )
    batch = pool_keys <= inc.BATCH_KEY
    pool_keys[batch] = ids[inc.BATCH_KEY - pool_keys[batch]]
    known.update(gather.labels(pool_keys[(pool_keys >= 0) & ~np.isin(pool_keys, ids)]))
    known.update({int(i): (int(l) if l >= 0 else None) for i, l in zip(ids, labels)})
    parent_of = cq.parent_labels(gather.session, state.run_id, {l for l in known.values() if l is not None})
    plan.births = inc.plan_graph_births(
        pool_ids,
        pool_vectors,
        pool_keys,
        pool_sims,
        gather.label_fn(known),
        k=p["k"],
        resolution=p["resolution"],
        min_size=p["min_size"],
        min_similarity=p["min_similarity"],
        next_label=cq.max_label(gather.session) + 1,
        parent_of=parent_of,
        stored=set(pool_ids[~in_batch].tolist()),
    )
    return plan
