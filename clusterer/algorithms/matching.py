"""Stable cluster ids: match the clusters of a new run to those of the previous one.

Clusters are matched one-to-one by member overlap (Jaccard index), greedily from
the most similar pair down, and only pairs with Jaccard >= ``min_jaccard``
match.  A matched cluster keeps its old id; every other new cluster gets a
fresh id above ``next_label`` so an id is never reused.  The events describe
what happened to each id:

- ``continued``: an old id persists (possibly grown or shrunk);
- ``birth``: a new id for a cluster that does not come mostly from one old cluster;
- ``split``: a new id whose members come mostly (> 50 %) from an old cluster
  that persists under its own id; recorded on both ids;
- ``merge``: an old id whose members went mostly into another surviving
  cluster; recorded on the surviving id, and ``death`` (with ``merged_into``)
  on the old one;
- ``death``: an old id with no successor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Event:
    """Birth, growth, merge, split, death or carry-over of cluster ``label``: the one event type,
    made by matching and upkeep, stored, and read back (with ``run_id`` and ``at``) by the API."""

    label: int
    kind: str
    size: int
    related: list[int] = field(default_factory=list)
    detail: dict = field(default_factory=dict)
    run_id: int | None = None
    at: str | None = None

    @property
    def cluster_id(self) -> int:
        return self.label

    def to_dict(self) -> dict:
        return {
            "cluster_id": self.label,
            "run_id": self.run_id,
            "kind": self.kind,
            "size": self.size,
            "related": list(self.related),
            "detail": dict(self.detail),
            "at": self.at,
        }


@dataclass
class MatchResult:
    labels: list[int]
    events: list[Event]


def match_clusters(
    previous: Mapping[int, Sequence[int]],
    current: Sequence[Sequence[int]],
    next_label: int,
    min_jaccard: float = 0.3,
) -> MatchResult:
    """Labels for ``current`` clusters (lists of sentence ids) given ``previous`` ``{label: ids}``.

    ``next_label`` is the first id that may be handed out to a new cluster.
    """
    owner: dict[int, int] = {}
    for label, ids in previous.items():
        for sid in ids:
            owner[int(sid)] = label
    old_size = {label: len(ids) for label, ids in previous.items()}
    overlaps: list[Counter] = []
    for ids in current:
        overlaps.append(Counter(owner[s] for s in map(int, ids) if s in owner))
    pairs = []
    for j, counts in enumerate(overlaps):
        for label, inter in counts.items():
            jac = inter / (len(current[j]) + old_size[label] - inter)
            if jac >= min_jaccard:
                pairs.append((-jac, j, label))
    pairs.sort()
    labels: list[int | None] = [None] * len(current)
    used: set[int] = set()
    for _, j, label in pairs:
        if labels[j] is None and label not in used:
            labels[j] = label
            used.add(label)
    events: list[Event] = []
    fresh = next_label
    final: list[int] = []
    for j, ids in enumerate(current):
        kept = labels[j]
        if kept is not None:
            events.append(Event(kept, "continued", len(ids), [], {"previous_size": old_size[kept]}))
            final.append(int(kept))
            continue
        new = fresh
        final.append(new)
        fresh += 1
        source, inter = overlaps[j].most_common(1)[0] if overlaps[j] else (None, 0)
        if source is not None and inter * 2 > len(ids) and source in used:
            events.append(Event(new, "split", len(ids), [source], {"from": source}))
            events.append(Event(source, "split", len(current[labels.index(source)]), [new], {"into": new}))
        else:
            events.append(Event(new, "birth", len(ids), sorted(overlaps[j]), {}))
    for label in sorted(set(previous) - used):
        went: Counter[int] = Counter()
        for j, counts in enumerate(overlaps):
            if counts.get(label):
                went[j] = counts[label]
        target = went.most_common(1)[0] if went else None
        if target is not None and target[1] * 2 > old_size[label]:
            into = final[target[0]]
            events.append(Event(into, "merge", len(current[target[0]]), [label], {"absorbed": label}))
            events.append(Event(label, "death", 0, [into], {"merged_into": into}))
        else:
            events.append(Event(label, "death", 0, [], {}))
    return MatchResult(final, events)


def groups_from_labels(ids: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{label: ids}`` for every label >= 0."""
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    keep = labels >= 0
    ids, labels = ids[keep], labels[keep]
    order = np.argsort(labels, kind="stable")
    ids, labels = ids[order], labels[order]
    uniq, starts = np.unique(labels, return_index=True)
    bounds = [*starts[1:].tolist(), len(labels)]
    return {int(u): ids[s:e] for u, s, e in zip(uniq, starts, bounds)}
