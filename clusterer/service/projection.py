"""The sentence map of a run: its sentences laid out in 2D by UMAP from the run's kNN graph,
computed once per run in the background and cached; each answer shows a sample of it coloured
by the clusters the sentences are in now (so edits and upkeep show at once).

The neighbours are the run's stored kNN graph (:mod:`clusterer.service.run_graph`) where it
covers the run, else the project's own kNN search (:func:`clusterer.algorithms.knn.knn`) over
the run's vectors. The layout is kept in memory and in ``<data_dir>/maps/run-<id>.npz``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clusterer.algorithms.layout import umap_layout
from clusterer.algorithms.projection import sample_positions
from storage import clusters as cq
from storage import curation as cur
from storage import sentences as sq

log = logging.getLogger("clusterer.map")

TEXT_CHARS = 120
MAP_K = 15
"""Neighbours per sentence UMAP is given (its own default)."""
MAX_POINTS = 200_000
"""Larger runs are laid out on a sample of this many sentences."""
FOLDER = "maps"


@dataclass
class Layout:
    """2D coordinates ``xy`` of sentences ``ids`` (ascending) of run ``run_id``."""

    run_id: int
    ids: np.ndarray
    xy: np.ndarray
    projection: str
    seconds: float = 0.0
    neighbours: str = "search"
    texts: dict[int, str] = field(default_factory=dict)
    """Texts of the sentences shown so far (sentences never change their text)."""


def _cache_path(data_dir: Path, run_id: int) -> Path:
    return Path(data_dir) / FOLDER / f"run-{int(run_id)}.npz"


def _neighbours(store, run_id: int, ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(positions, similarities) of each row's nearest among ``ids``: the stored run graph when
    it has a row for every id, else a kNN search over ``x``."""
    from clusterer.algorithms.knn import knn

    try:
        from clusterer.service.run_graph import load_graph

        graph = load_graph(store.data_dir, run_id)
    except (ImportError, OSError, ValueError):
        graph = None
    if graph is not None and len(graph) and np.isin(ids, graph.ids).all():
        rows = np.searchsorted(graph.ids, ids)
        nbr_ids, sims = graph.neighbors[rows, :MAP_K], graph.sims[rows, :MAP_K]
        pos = np.minimum(np.searchsorted(ids, nbr_ids), len(ids) - 1)
        found = (nbr_ids >= 0) & (ids[pos] == nbr_ids)
        return np.where(found, pos, -1), np.where(found, sims, 0).astype(np.float32), "run graph"
    nbrs, sims = knn(x, min(MAP_K, max(1, len(x) - 1)), device="cpu")
    return nbrs, sims, "search"


def compute_layout(store, run_id: int, max_points: int = MAX_POINTS) -> Layout:
    """Lay out (a sample of at most ``max_points`` of) the sentences of run ``run_id``."""
    started = time.perf_counter()
    with store.db.read() as session:
        listed, _, _ = cq.assignments_of_run(session, run_id)
    ids = np.asarray(listed, dtype=np.int64)
    ids = ids[sample_positions(len(ids), max_points)]
    if len(ids) == 0 or store.dimension is None:
        return Layout(run_id, ids, np.zeros((len(ids), 2), np.float32), "umap")
    all_ids, x = store.embeddings()
    keep = np.isin(all_ids, ids)
    order = np.argsort(all_ids[keep], kind="stable")
    ids, x = all_ids[keep][order], x[keep][order]
    nbrs, sims, source = _neighbours(store, run_id, ids, x)
    xy = umap_layout(x, nbrs, sims)
    return Layout(run_id, ids, xy, "umap", round(time.perf_counter() - started, 3), source)


def save_layout(data_dir: Path, layout: Layout) -> None:
    path = _cache_path(data_dir, layout.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, ids=layout.ids, xy=layout.xy, seconds=layout.seconds)
    tmp.replace(path)


def load_layout(data_dir: Path, run_id: int) -> Layout | None:
    try:
        with np.load(_cache_path(data_dir, run_id), allow_pickle=False) as z:
            return Layout(run_id, z["ids"], z["xy"], "umap", float(z["seconds"]), "cache")
    except (OSError, ValueError, KeyError, EOFError):
        return None


def map_points(store, layout: Layout, limit: int = 5000) -> dict[str, Any]:
    """Up to ``limit`` sentences of a layout with x, y, their cluster now and its label."""
    keep = sample_positions(len(layout.ids), limit)
    ids = [int(i) for i in layout.ids[keep]]
    with store.db.read() as session:
        labels = cq.labels_for(session, layout.run_id, ids)
        missing = [i for i in ids if i not in layout.texts]
        if missing:
            layout.texts.update({i: t[:TEXT_CHARS] for i, t in sq.texts_for(session, missing).items()})
        names = cur.names(session, {l for l in labels.values() if l is not None})
        run = cq.get_run(session, layout.run_id)
        total = run.n_sentences if run is not None else len(layout.ids)
    texts = layout.texts
    points = []
    for i, (x, y) in zip(ids, layout.xy[keep].tolist()):
        if i not in labels:  # deleted since the layout was made
            continue
        label = labels.get(i)
        points.append(
            {
                "id": i,
                "x": round(float(x), 4),
                "y": round(float(y), 4),
                "cluster": label,
                "label": None if label is None else names.get(label),
                "text": texts.get(i, ""),
            }
        )
    return {
        "run_id": layout.run_id,
        "state": "done",
        "total": total,
        "laid_out": len(layout.ids),
        "sampled": len(points),
        "projection": layout.projection,
        "seconds": layout.seconds,
        "points": points,
    }


class MapCache:
    """Layouts by run id, each computed once on a background thread (or read from its file)."""

    def __init__(self, store):
        self.store = store
        self.layouts: dict[int, Layout] = {}
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()

    def __getitem__(self, run_id: int) -> Layout:
        return self.layouts[run_id]

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.layouts

    def start(self, run_id: int) -> Future:
        """The layout of ``run_id``, computing it in the background unless known or under way."""
        with self._lock:
            if run_id in self.layouts:
                done: Future = Future()
                done.set_result(self.layouts[run_id])
                return done
            if run_id in self._pending:
                return self._pending[run_id]
            future: Future = Future()
            self._pending[run_id] = future
        threading.Thread(
            target=self._compute, args=(run_id, future), name=f"clusterer-map-{run_id}", daemon=True
        ).start()
        return future

    def _compute(self, run_id: int, future: Future) -> None:
        try:
            layout = load_layout(self.store.data_dir, run_id)
            if layout is None:
                layout = compute_layout(self.store, run_id)
                try:
                    save_layout(self.store.data_dir, layout)
                except OSError as exc:  # a read-only folder: keep it in memory only
                    log.warning("map of run %s not saved: %s", run_id, exc)
            with self._lock:
                self.layouts[run_id] = layout
                self._pending.pop(run_id, None)
            future.set_result(layout)
        except BaseException as exc:  # noqa: BLE001 (handed to whoever waits; the next call retries)
            with self._lock:
                self._pending.pop(run_id, None)
            future.set_exception(exc)

    def get(self, run_id: int, wait: float) -> Layout | None:
        """The layout, waiting at most ``wait`` seconds for it; None while it is still computed."""
        future = self.start(run_id)
        try:
            return future.result(timeout=wait)
        except TimeoutError:
            return None


def run_map(store, run_id: int | None = None, limit: int = 5000) -> dict[str, Any]:
    """The map of a run computed here and now (the CLI and tests; the server uses :class:`MapCache`)."""
    rid = store.run(run_id).id
    return map_points(store, compute_layout(store, rid), limit)
