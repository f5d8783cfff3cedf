"""The kNN graph of a run, kept beside the index as a derived cache.

A leiden run builds the k nearest neighbours of every sentence it clusters; upkeep computes
the same rows for every batch it assigns. Keeping them lets a later re-optimisation (automatic
upkeep, ``recluster --resolution``) rebuild the graph without a new neighbour search over the
whole store. The cache is never the truth: the database says which sentences a run holds, and
whatever is missing, short or unreadable here is recomputed from the FAISS index by the caller.

Layout: ``<data_dir>/run-graphs/<run_id>/part-<n>.npz``, one file per write (the run's graph,
then one per upkeep batch), each holding ``ids`` (m,) int64, ``neighbors`` (m, k) int64
sentence ids with -1 padding and ``sims`` (m, k) float32. Files are written to a temporary
name and renamed, so a reader sees whole parts only; a part that cannot be read is skipped.
Where parts give one id several rows, the latest part wins.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = "run-graphs"
KEEP_RUNS = 2
"""Graphs of this many of the most recent runs are kept; older ones are removed at save time."""
_PART = re.compile(r"^part-(\d+)\.npz$")


@dataclass
class RunGraph:
    """Stored kNN rows: sentence ``ids`` (n,), their ``neighbors`` (n, k) as sentence ids
    (-1 padding) and ``sims`` (n, k), most similar first."""

    ids: np.ndarray
    neighbors: np.ndarray
    sims: np.ndarray
    at: np.ndarray | None = None
    """How many sentences the store held when each row was searched (0: unknown)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return int(self.neighbors.shape[1])


def graph_dir(data_dir: str | Path, run_id: int) -> Path:
    return Path(data_dir) / FOLDER / str(int(run_id))


def _parts(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PART.match(p.name))]
    return sorted(found)


def _checked(ids, neighbors, sims) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    neighbors = np.asarray(neighbors, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float32)
    if neighbors.ndim != 2 or neighbors.shape != sims.shape or len(neighbors) != len(ids):
        raise ValueError(f"graph rows do not line up: ids {ids.shape}, neighbors {neighbors.shape}, sims {sims.shape}")
    return ids, neighbors, sims


def _at(at, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(0 if at is None else at, dtype=np.int64), (n,)).copy()


def _write_part(folder: Path, number: int, ids, neighbors, sims, at=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{number:06d}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ids=ids, neighbors=neighbors, sims=sims, at=_at(at, len(ids)))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_graph(data_dir: str | Path, run_id: int, ids, neighbors, sims, at=None) -> Path:
    """Store a run's whole graph (replacing any stored for that run) and drop the graphs of
    runs older than the :data:`KEEP_RUNS` most recent. ``at``: the store's size when the rows
    were searched (one value or one per row)."""
    ids, neighbors, sims = _checked(ids, neighbors, sims)
    folder = graph_dir(data_dir, run_id)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    path = _write_part(folder, 0, ids, neighbors, sims, at)
    root = Path(data_dir) / FOLDER
    runs = sorted((int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    for old in [r for r in runs if r != int(run_id)][KEEP_RUNS - 1 :]:
        if old < int(run_id):
            shutil.rmtree(root / str(old), ignore_errors=True)
    return path


def append_rows(data_dir: str | Path, run_id: int, ids, neighbors, sims, at=None) -> Path | None:
    """Add rows (an upkeep batch's kNN) to a run's stored graph; nothing for an empty batch."""
    ids, neighbors, sims = _checked(ids, neighbors, sims)
    if len(ids) == 0:
        return None
    folder = graph_dir(data_dir, run_id)
    parts = _parts(folder)
    return _write_part(folder, (parts[-1][0] + 1) if parts else 0, ids, neighbors, sims, at)


def load_graph(data_dir: str | Path, run_id: int) -> RunGraph | None:
    """Every stored row of a run's graph (one per id, the latest written), ids ascending;
    None when nothing readable is stored. Parts with different k are padded to the widest."""
    loaded = []
    for _, path in _parts(graph_dir(data_dir, run_id)):
        try:
            with np.load(path, allow_pickle=False) as z:
                rows = _checked(z["ids"], z["neighbors"], z["sims"])
                at = _at(z["at"] if "at" in z.files else None, len(rows[0]))
                loaded.append((*rows, at))
        except (OSError, ValueError, KeyError, EOFError):
            continue  # a damaged part: its rows are recomputed by the caller
    if not loaded:
        return None
    k = max(n.shape[1] for _, n, _, _ in loaded)
    ids = np.concatenate([i for i, _, _, _ in loaded])
    neighbors = np.concatenate([np.pad(n, ((0, 0), (0, k - n.shape[1])), constant_values=-1) for _, n, _, _ in loaded])
    sims = np.concatenate([np.pad(s, ((0, 0), (0, k - s.shape[1]))) for _, _, s, _ in loaded])
    at = np.concatenate([a for _, _, _, a in loaded])
    # the latest row of each id: reverse, keep first occurrences, ids ascending
    rev = np.arange(len(ids) - 1, -1, -1)
    _, first = np.unique(ids[rev], return_index=True)
    keep = rev[first]
    return RunGraph(ids[keep], neighbors[keep], sims[keep], at[keep])


def remove_graph(data_dir: str | Path, run_id: int) -> None:
    shutil.rmtree(graph_dir(data_dir, run_id), ignore_errors=True)


# -- the graph of a run's sentences, from the cache and the index -----------------------------


def align(stored: RunGraph | None, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stored rows of ``ids`` (ascending sentence ids) as positions in ``ids``: neighbours
    (n, k), -1 where padding or outside ``ids``; their similarities; which rows are missing;
    and the store's size when each was searched (0 for missing or unknown)."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    nbrs = np.full((n, k), -1, np.int64)
    sims = np.zeros((n, k), np.float32)
    missing = np.ones(n, bool)
    at = np.zeros(n, np.int64)
    if stored is None or n == 0 or len(stored) == 0:
        return nbrs, sims, missing, at
    pos = np.minimum(np.searchsorted(stored.ids, ids), len(stored) - 1)
    have = stored.ids[pos] == ids
    rows = pos[have]
    width = min(k, stored.k)
    got = stored.neighbors[rows, :width]
    where = np.minimum(np.searchsorted(ids, np.maximum(got, 0)), n - 1)
    inside = (got >= 0) & (ids[where] == got)
    nbrs[have, :width] = np.where(inside, where, -1)
    sims[have, :width] = np.where(inside, stored.sims[rows, :width], 0.0)
    missing[have] = False
    if stored.at is not None:
        at[have] = stored.at[rows]
    return nbrs, sims, missing, at


def refine(nbrs: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node's ``k`` most similar among its own row and the rows that name it.

    A row stored when the store was smaller holds neighbours found at that density; sentences
    that arrived later and are closer name it in their own rows. Taking the best ``k`` of both
    lists replaces such stale neighbours with the closer newcomers, without a search. On a
    graph whose rows are all current, the result is the graph itself (a sentence that names
    ``i`` is no closer to ``i`` than ``i``'s own k-th neighbour)."""
    n, width = nbrs.shape
    out_n = np.full((n, k), -1, np.int64)
    out_s = np.zeros((n, k), np.float32)
    if n == 0:
        return out_n, out_s
    rows = np.repeat(np.arange(n, dtype=np.int64), width)
    cols = nbrs.reshape(-1)
    w = sims.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    rows, cols, w = rows[keep], cols[keep], w[keep]
    src = np.concatenate([rows, cols])
    dst = np.concatenate([cols, rows])
    w = np.concatenate([w, w])
    del rows, cols
    _, first = np.unique(src * n + dst, return_index=True)
    src, dst, w = src[first], dst[first], w[first]
    order = np.lexsort((dst, -w, src))
    src, dst, w = src[order], dst[order], w[order]
    start = np.searchsorted(src, np.arange(n))
    rank = np.arange(len(src)) - start[src]
    top = rank < k
    out_n[src[top], rank[top]] = dst[top]
    out_s[src[top], rank[top]] = w[top]
    return out_n, out_s


def search_rows(index, x: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN rows of ``ids[rows]`` from the FAISS index, as positions in ``ids`` (sentences the
    index holds outside ``ids``, e.g. beyond a run's filter, are dropped)."""
    nbrs = np.full((len(rows), k), -1, np.int64)
    sims = np.zeros((len(rows), k), np.float32)
    if len(rows) == 0 or index.ntotal == 0:
        return nbrs, sims
    found = index.search(np.ascontiguousarray(x[rows], dtype=np.float32), k + 1)
    got, got_s = np.asarray(found.ids, np.int64), np.asarray(found.similarities, np.float32)
    where = np.minimum(np.searchsorted(ids, np.maximum(got, 0)), len(ids) - 1)
    ok = (got >= 0) & (ids[where] == got) & (where != rows[:, None])
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # the kept ones first, in order
    kept = np.take_along_axis(ok, order, axis=1)
    width = order.shape[1]
    nbrs[:, :width] = np.where(kept, np.take_along_axis(where, order, axis=1), -1)
    sims[:, :width] = np.where(kept, np.take_along_axis(got_s, order, axis=1), 0.0)
    return nbrs, sims


STALE = 2.0
"""A stored row searched when the store held less than 1/STALE of the sentences it holds now is
searched again: its neighbours were found at a lower density, and some of them (weak links
across topics) would not be among its nearest now, which shifts the granularity the rule
chooses. With re-optimisation at every doubling each row is searched again at most once per
doubling, so the searches of a whole stream add up to about one search over the final store."""


def graph_for_run(
    data_dir: str | Path, run_id: int, index, ids: np.ndarray, x: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]] | None:
    """The kNN graph over ``ids`` (ascending; ``x`` their vectors) from run ``run_id``'s stored
    rows, the missing and stale ones (:data:`STALE`) searched in ``index``, refined
    (:func:`refine`): (neighbour positions, similarities, each row's search size, counts of
    stored and searched rows). None when the stored graph is absent or narrower than ``k``
    (a full search is then the honest answer)."""
    stored = load_graph(data_dir, run_id)
    if stored is None or stored.k < k:
        return None
    nbrs, sims, missing, at = align(stored, ids, k)
    stale = ~missing & (at * STALE < len(ids))
    rows = np.flatnonzero(missing | stale)
    if len(rows):
        nbrs[rows], sims[rows] = search_rows(index, x, ids, rows, k)
        at[rows] = len(ids)
    nbrs, sims = refine(nbrs, sims, k)
    facts = {"stored_rows": int(len(ids) - len(rows)), "searched_rows": len(rows), "stale_rows": int(stale.sum())}
    return nbrs, sims, at, facts


def stored_knn(store, run_id: int, ids: np.ndarray, x: np.ndarray, params: dict[str, Any]):
    """(:class:`clusterer.algorithms.graph.KnnGraph` over the positions of ``ids``, facts, each
    row's search size) from run ``run_id``'s stored graph for a run with ``params``, or
    (None, None, None) when it cannot serve."""
    from clusterer.algorithms.graph import KnnGraph, default_k

    k = int(params["k"]) if params.get("k") is not None else default_k(len(ids))
    if len(ids) and np.any(np.diff(ids) <= 0):
        return None, None, None  # positions need ascending ids
    found = graph_for_run(store.data_dir, run_id, store.index, ids, x, k)
    if found is None:
        return None, None, None
    nbrs, sims, at, facts = found
    return KnnGraph(nbrs, sims), facts, at


def save_run_graph(store, run_id: int, ids: np.ndarray, graph, at=None) -> None:
    """Keep a run's kNN graph (positions of ``ids``) as sentence ids, with each row's search
    size (``at``; None: all searched now); a cache, so a failure to write it only costs the
    next re-optimisation a search."""
    nbrs = np.asarray(graph.neighbours, dtype=np.int64)
    at = len(ids) if at is None else at
    with contextlib.suppress(OSError):
        save_graph(
            store.data_dir, run_id, ids, np.where(nbrs >= 0, ids[np.maximum(nbrs, 0)], -1), graph.similarities, at
        )
