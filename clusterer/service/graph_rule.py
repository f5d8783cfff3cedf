"""The graph rule of incremental upkeep (leiden runs), as pure functions over neighbour tables.

A new sentence joins the cluster holding most of its kNN weight (:func:`graph_assign`), or stays
unassigned when more of it lies with unassigned sentences. Neighbour keys name stored sentences
by id and the batch's own sentences by position (:data:`BATCH_KEY`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
