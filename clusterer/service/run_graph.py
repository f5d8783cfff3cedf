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

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def _write_part(folder: Path, number: int, ids, neighbors, sims) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{number:06d}.npz"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, ids=ids, neighbors=neighbors, sims=sims)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def save_graph(data_dir: str | Path, run_id: int, ids, neighbors, sims) -> Path:
    """Store a run's whole graph (replacing any stored for that run) and drop the graphs of
    runs older than the :data:`KEEP_RUNS` most recent."""
    ids, neighbors, sims = _checked(ids, neighbors, sims)
    folder = graph_dir(data_dir, run_id)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    path = _write_part(folder, 0, ids, neighbors, sims)
    root = Path(data_dir) / FOLDER
    runs = sorted((int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    for old in [r for r in runs if r != int(run_id)][KEEP_RUNS - 1 :]:
        if old < int(run_id):
            shutil.rmtree(root / str(old), ignore_errors=True)
    return path


def append_rows(data_dir: str | Path, run_id: int, ids, neighbors, sims) -> Path | None:
    """Add rows (an upkeep batch's kNN) to a run's stored graph; nothing for an empty batch."""
    ids, neighbors, sims = _checked(ids, neighbors, sims)
    if len(ids) == 0:
        return None
    folder = graph_dir(data_dir, run_id)
    parts = _parts(folder)
    return _write_part(folder, (parts[-1][0] + 1) if parts else 0, ids, neighbors, sims)


def load_graph(data_dir: str | Path, run_id: int) -> RunGraph | None:
    """Every stored row of a run's graph (one per id, the latest written), ids ascending;
    None when nothing readable is stored. Parts with different k are padded to the widest."""
    loaded = []
    for _, path in _parts(graph_dir(data_dir, run_id)):
        try:
            with np.load(path, allow_pickle=False) as z:
                loaded.append(_checked(z["ids"], z["neighbors"], z["sims"]))
        except (OSError, ValueError, KeyError, EOFError):
            continue  # a damaged part: its rows are recomputed by the caller
    if not loaded:
        return None
    k = max(n.shape[1] for _, n, _ in loaded)
    ids = np.concatenate([i for i, _, _ in loaded])
    neighbors = np.concatenate([np.pad(n, ((0, 0), (0, k - n.shape[1])), constant_values=-1) for _, n, _ in loaded])
    sims = np.concatenate([np.pad(s, ((0, 0), (0, k - s.shape[1]))) for _, _, s in loaded])
    # the latest row of each id: reverse, keep first occurrences, ids ascending
    rev = np.arange(len(ids) - 1, -1, -1)
    _, first = np.unique(ids[rev], return_index=True)
    keep = rev[first]
    return RunGraph(ids[keep], neighbors[keep], sims[keep])


def remove_graph(data_dir: str | Path, run_id: int) -> None:
    shutil.rmtree(graph_dir(data_dir, run_id), ignore_errors=True)
