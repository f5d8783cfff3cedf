"""Curating the latest run: merge clusters, split one, undo a merge; pure plans.

Each edit is a pure plan here (ids, vectors and term counts in, new cluster rows and
assignments out, no database) and a small writer in :mod:`clusterer.service.curation_writer`.
The edits are recorded, and every later labelling keeps them
(:func:`apply_constraints`, from :mod:`clusterer.service.constraints`: labels in, labels out,
for any re-optimisation: ``apply_constraints(new, ids, load_constraints(session, ids, current))``)
until they are undone.

- **merge**: the clusters become one, with the id of the largest (ties: the lowest id); its
  term counts are the sum of theirs (so its c-TF-IDF keywords are those of the union), its
  centroid, centre, representatives and cohesion are computed from all members.
- **split**: Leiden (modularity, ``resolution``, 1 by default) on the kNN graph among the
  cluster's members, the neighbours computed with :func:`clusterer.algorithms.knn.knn` from
  their stored vectors; parts smaller than the run's ``min_size`` join the part whose centroid
  is nearest; the parts get new ids from the run's id sequence, largest first.
- **unmerge**: the newest merge into a cluster is undone: the sentences it moved that are still
  there go back to the ids they came from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clusterer.algorithms import topics
from clusterer.errors import CurationError
from clusterer.service.constraints import Constraints, apply_constraints, load_constraints  # noqa: F401 (re-exported)
from storage.clusters import ClusterRow

REPRESENTATIVES = 3
SPLIT_K = 30
DEFAULT_SPLIT_RESOLUTION = 1.0
NAME_MAX = 200


@dataclass
class Part:
    """One cluster a plan writes: its row, members (sentence ids), their similarities and term counts."""

    row: ClusterRow
    members: np.ndarray
    similarities: np.ndarray
    terms: dict[str, int] = field(default_factory=dict)


@dataclass
class Edit:
    """What an edit did, as the faces show it."""

    kind: str
    run_id: int
    cluster_id: int | None
    related: list[int] = field(default_factory=list)
    size: int = 0
    keywords: list[str] = field(default_factory=list)
    label: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "cluster_id": self.cluster_id,
            "related": list(self.related),
            "size": self.size,
            "keywords": list(self.keywords),
            "label": self.label,
            **self.detail,
        }


def describe(
    label: int,
    ids: np.ndarray,
    x: np.ndarray,
    *,
    parent: int | None = None,
    centre_vector: np.ndarray | None = None,
    centre_id: int | None = None,
) -> tuple[ClusterRow, np.ndarray]:
    """A fine cluster's row (keywords left empty) and its members' similarities: to the centroid,
    or to ``centre_vector`` (community runs keep their centre, whose ball defines the cluster)."""
    x = np.asarray(x, dtype=np.float32)
    centroid = topics.normalized_centroid(x)
    reps = topics.representatives(x, np.arange(len(x)), centroid, n=REPRESENTATIVES)
    ref = centroid if centre_vector is None else np.asarray(centre_vector, np.float32)
    sims = (x @ ref).astype(np.float32)
    row = ClusterRow(
        label=int(label),
        size=len(ids),
        centre_id=int(ids[reps[0]]) if centre_id is None else int(centre_id),
        cohesion=round(topics.cohesion(x), 6),
        keywords=[],
        representatives=[int(ids[r]) for r in reps],
        centroid=centroid.astype(np.float32).tobytes(),
        level="fine",
        parent_label=parent,
    )
    return row, sims


def sum_counts(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def check_distinct(ids: Sequence[int]) -> list[int]:
    """The ids of a merge: at least two, none twice."""
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise CurationError(f"cannot merge cluster {i} with itself: each id once")
        seen.add(i)
    if len(seen) < 2:
        raise CurationError("a merge needs at least two cluster ids")
    return [int(i) for i in ids]


def merge_target(sizes: Mapping[int, int]) -> int:
    """The id a merge keeps: the largest cluster's, the lowest id among equals."""
    return min(sizes, key=lambda label: (-sizes[label], label))


def plan_merge(
    members: Mapping[int, np.ndarray],
    x: np.ndarray,
    counts: Mapping[int, Mapping[str, int]],
    parent: int | None = None,
    centre: tuple[int, np.ndarray] | None = None,
) -> tuple[Part, list[tuple[int, int]]]:
    """The merged cluster of ``members`` (``{label: sentence ids}``, vectors ``x`` in that order,
    concatenated) and the ``(sentence id, former label)`` of every sentence that changes label."""
    sizes = {label: len(ids) for label, ids in members.items()}
    target = merge_target(sizes)
    ids = np.concatenate([np.asarray(members[label], np.int64) for label in members])
    row, sims = describe(
        target,
        ids,
        x,
        parent=parent,
        centre_id=None if centre is None else centre[0],
        centre_vector=None if centre is None else centre[1],
    )
    moved = [(int(s), int(label)) for label in members if label != target for s in members[label]]
    return Part(row, ids, sims, sum_counts([counts.get(label, {}) for label in members])), moved


def split_labels(
    x: np.ndarray, *, resolution: float, min_size: int, seed: int = 0, k: int = SPLIT_K, device: str = "cpu"
) -> np.ndarray:
    """Part of each row of ``x`` (0 = largest): Leiden on the rows' kNN graph at ``resolution``;
    then, while a part is below ``min_size``, the smallest joins the part with the nearest centroid."""
    from clusterer.algorithms.knn import knn
    from clusterer.algorithms.leiden import build_graph, leiden

    n = len(x)
    if n < 2:
        return np.zeros(n, np.int64)
    nbrs, sims = knn(x, min(k, n - 1), device=device, seed=seed)
    parts = leiden(build_graph(nbrs, sims), resolution, seed)
    while True:  # the smallest part below min_size joins the part with the nearest centroid
        uniq, counts = np.unique(parts, return_counts=True)
        if len(uniq) == 1 or counts.min() >= min_size:
            break
        smallest = uniq[np.lexsort((uniq, counts))[0]]
        others = uniq[uniq != smallest]
        centroids = np.vstack([topics.normalized_centroid(x[parts == o]) for o in others])
        mine = topics.normalized_centroid(x[parts == smallest])
        parts[parts == smallest] = others[int(np.argmax(centroids @ mine))]
    uniq, inverse, counts = np.unique(parts, return_inverse=True, return_counts=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.lexsort((uniq, -counts))] = np.arange(len(uniq))
    return rank[inverse]


def plan_split(
    ids: np.ndarray,
    x: np.ndarray,
    texts: Sequence[str],
    next_label: int,
    *,
    cluster_id: int,
    resolution: float | None = None,
    min_size: int = 1,
    parent: int | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[Part]:
    """The parts of cluster ``cluster_id`` (members ``ids``, vectors ``x``, ``texts``), with new
    ids from ``next_label`` up, largest first; at least two, else :class:`CurationError`."""
    res = DEFAULT_SPLIT_RESOLUTION if resolution is None else float(resolution)
    if res <= 0:
        raise CurationError(f"--resolution must be above 0, got {res}")
    ids = np.asarray(ids, np.int64)
    parts = split_labels(np.asarray(x, np.float32), resolution=res, min_size=max(1, min_size), seed=seed, device=device)
    if len(ids) < 2 or int(parts.max(initial=0)) == 0:
        raise CurationError(
            f"cluster {cluster_id} ({len(ids)} sentences) does not split at resolution {res:g}: "
            "its kNN graph is one community; try a higher --resolution"
        )
    counts = topics.count_terms(list(texts), parts)
    out = []
    for p in range(int(parts.max()) + 1):
        pos = np.flatnonzero(parts == p)
        row, sims = describe(next_label + p, ids[pos], x[pos], parent=parent)
        out.append(Part(row, ids[pos], sims, dict(counts.get(p, {}))))
    return out


def plan_unmerge(
    members: np.ndarray,
    x: np.ndarray,
    moved: Mapping[int, int],
    target: int,
    parent: int | None = None,
) -> list[Part]:
    """Undoing a merge into ``target``: the target's remaining members and each former cluster
    of ``moved`` (``{sentence id: former label}``) with those of its sentences still in
    ``target`` (``members``, vectors ``x``); term counts are left to the writer. The target is
    absent from the result when none of its own members is left."""
    members = np.asarray(members, np.int64)
    former = np.array([moved.get(int(s), target) for s in members], np.int64)
    if (former == target).all():
        raise CurationError(f"none of the sentences the merge into {target} moved is still in it")
    out = []
    for label in [target, *sorted(set(former.tolist()) - {target})]:
        pos = np.flatnonzero(former == label)
        if len(pos) == 0:  # the target's own members are all gone: its id ends
            continue
        row, sims = describe(label, members[pos], x[pos], parent=parent)
        out.append(Part(row, members[pos], sims))
    return out


def check_name(text: str) -> str:
    name = " ".join(str(text).split())
    if not name:
        raise CurationError("a label needs some text (use --clear to remove one)")
    if len(name) > NAME_MAX:
        raise CurationError(f"a label has at most {NAME_MAX} characters, got {len(name)}")
    return name
