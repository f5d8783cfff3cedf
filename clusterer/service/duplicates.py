"""Near-duplicate groups of stored sentences (optionally a ``where`` subset), and removing them.

The grouping rule is :mod:`clusterer.algorithms.duplicates`' (star groups, greedy in sequence
order, so a group's first member is its earliest stored sentence). Embeddings are read from the
database (the subset only), searched exactly up to ``EXACT_MAX`` sentences and with an IVF range
search above that.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import duplicates as algo
from clusterer.errors import InvalidParameterError
from clusterer.service.methods import SEARCHES
from storage import filters
from storage import sentences as sq

KEEP_RULES = ("first", "longest")


@dataclass
class DuplicateMember:
    id: int
    text: str
    similarity: float
    metadata: dict[str, Any] | None = None
    source: str | None = None
    line: int | None = None


@dataclass
class DuplicateGroupInfo:
    size: int
    members: list[DuplicateMember]

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.members]


@dataclass
class DuplicatesReport:
    threshold: float
    where: list[str]
    search: str
    sentences: int
    groups: int
    in_groups: int
    removable: int
    seconds: float
    items: list[DuplicateGroupInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["items"] = [{"size": g.size, "members": [asdict(m) for m in g.members]} for g in self.items]
        return out


def _load(store, flt) -> tuple[np.ndarray, np.ndarray]:
    parts_ids, parts = [], []
    with store.db.read() as session:
        for ids, matrix in filters.iter_filtered_embeddings(session, flt, store.dimension, store.embedding_dtype):
            parts_ids.append(ids)
            parts.append(matrix)
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, store.dimension or 1), np.float32)
    return np.concatenate(parts_ids), np.vstack(parts)


def find_duplicates(
    store,
    threshold: float = 0.95,
    *,
    where: filters.WhereSpec = None,
    limit: int | None = None,
    search: str = "auto",
    nprobe: int | None = None,
) -> DuplicatesReport:
    """Near-duplicate groups among the stored sentences matching ``where``, largest first;
    ``limit`` keeps the largest ``limit`` groups in ``items`` (the counts cover all)."""
    if not -1.0 <= float(threshold) <= 1.0:
        raise InvalidParameterError(f"--threshold must be between -1 and 1, got {threshold}")
    if search not in SEARCHES:
        raise InvalidParameterError(f"search must be auto, exact or approximate, got {search!r}")
    started = time.perf_counter()
    if store.dimension is None:
        return DuplicatesReport(float(threshold), [], "exact", 0, 0, 0, 0, 0.0)
    with store.db.read() as session:
        flt = filters.check_fields(session, where)
    ids, x = _load(store, flt)
    nb = algo.threshold_neighbours(x, float(threshold), search=search, nprobe=nprobe or algo.DEFAULT_NPROBE)
    groups = algo.star_groups(nb)
    shown = groups if limit is None else groups[:limit]
    wanted = [int(ids[p]) for g in shown for p in g.members]
    with store.db.read() as session:
        rows = sq.get_sentences(session, wanted)
    items = []
    for g in shown:
        members = [
            DuplicateMember(
                int(ids[p]),
                rows[int(ids[p])].text,
                round(float(s), 6),
                rows[int(ids[p])].meta,
                rows[int(ids[p])].source_file,
                rows[int(ids[p])].source_line,
            )
            for p, s in zip(g.members, g.similarities)
            if int(ids[p]) in rows
        ]
        items.append(DuplicateGroupInfo(len(members), members))
    in_groups = sum(len(g.members) for g in groups)
    kind = "exact" if nb.exact else f"approximate(nprobe={nprobe or algo.DEFAULT_NPROBE})"
    return DuplicatesReport(
        float(threshold),
        flt.to_strings(),
        kind,
        len(ids),
        len(groups),
        in_groups,
        in_groups - len(groups),
        round(time.perf_counter() - started, 3),
        items,
    )


def deletion_plan(report: DuplicatesReport, keep: str = "first") -> list[list[int]]:
    """Per reported group, the sentence ids to delete so one member stays (see
    :func:`clusterer.algorithms.duplicates.keep_one`)."""
    if keep not in KEEP_RULES:
        raise InvalidParameterError(f"--delete-keep must be one of {', '.join(KEEP_RULES)}, got {keep!r}")
    groups: list[algo.DuplicateGroup] = []
    members: list[int] = []
    lengths: list[int] = []
    for g in report.items:
        start = len(members)
        members.extend(g.ids)
        lengths.extend(len(m.text) for m in g.members)
        groups.append(algo.DuplicateGroup(list(range(start, len(members))), [m.similarity for m in g.members]))
    return [[members[p] for p in drop] for drop in algo.keep_one(groups, keep, lengths)]
