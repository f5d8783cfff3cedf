"""Delete upkeep: the latest run stays right when sentences are deleted.

Called through :class:`clusterer.service.upkeep.Upkeep.on_delete` inside the deleting
transaction, while the rows still exist. For every cluster of the latest run that loses
members: its size drops; the deleted texts' terms are taken off its term counts and its
keywords are recomputed; its centroid moves; if its centre sentence was deleted, the remaining
member most similar to the (recomputed) centroid becomes the centre (community runs: every
member's similarity is then measured to it); a cluster left empty dies (its row goes, a
``death`` event stays). Earlier runs are records of the past and are left as they were made.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from clusterer.algorithms import topics
from clusterer.service import incremental as inc
from clusterer.service.upkeep_write import Change, keywords_for
from clusterer.service.upkeep_write import vector as _vector
from storage import clusters as cq
from storage import sentences as sq


@dataclass
class Loss:
    """What deleting ``removed`` members does to one cluster (pure, see :func:`plan_loss`)."""

    label: int
    size: int
    dies: bool
    centroid: np.ndarray | None
    centre_lost: bool
    representatives: list[int]


def plan_loss(
    label: int,
    size: int,
    centre_id: int | None,
    centroid: np.ndarray | None,
    representatives: list[int],
    removed: list[int],
    removed_vectors: np.ndarray,
) -> Loss:
    """A cluster's size, centroid and surviving representatives after losing ``removed``;
    whether it dies (nothing left) and whether it needs a new centre."""
    left = size - len(removed)
    gone = set(removed)
    if left <= 0:
        return Loss(label, 0, True, None, False, [])
    moved = None if centroid is None else inc.shrunk_centroid(centroid, size, removed_vectors)
    reps = [r for r in representatives if r not in gone]
    return Loss(label, left, False, moved, centre_id is not None and centre_id in gone, reps)


def delete_upkeep(session, state: inc.RunState, ids: list[int], dimension: int, dtype: str = "float32") -> Change:
    """Update the latest run for the deletion of ``ids`` (rows still present); returns the
    change to apply to the in-memory state after commit."""
    run_id = state.run_id
    known = cq.labels_for(session, run_id, ids)
    by_label: dict[int, list[int]] = {}
    for sid, label in known.items():
        if label is not None:
            by_label.setdefault(int(label), []).append(int(sid))
    change = Change(added=-len(known))
    n_removed_assigned = sum(len(v) for v in by_label.values())
    deaths: list[int] = []
    values: dict[int, dict] = {}
    events = []
    pending: Counter[str] = Counter()
    mass = [0, 0]
    if by_label:
        rows = cq.clusters_by_label(session, run_id, by_label)
        removed_ids = [i for v in by_label.values() for i in v]
        texts = sq.texts_for(session, removed_ids)
        vecs = sq.embeddings_found(session, removed_ids, dimension, dtype)
        current = cq.term_counts(session, run_id, list(by_label))
        removed_counts = topics.count_terms(
            [texts.get(i, "") for i in removed_ids], np.array([known[i] for i in removed_ids], dtype=np.int64)
        )
        counts: dict[int, dict[str, int]] = {}
        for label, members in sorted(by_label.items()):
            row = rows.get(label)
            if row is None:
                continue
            loss = plan_loss(
                label,
                row.size,
                row.centre_id,
                _vector(row.centroid) if row.centroid else None,
                list(row.representatives or []),
                members,
                np.vstack([vecs[i] for i in members if i in vecs]) if vecs else np.zeros((0, dimension), np.float32),
            )
            have = current.get(label, {})
            if loss.dies:
                deaths.append(label)
                pending.subtract(have)
                mass[0] -= sum(have.values())
                mass[1] -= 1 if have else 0
                events.append((label, "death", 0, {"deleted": len(members)}))
                continue
            gone = removed_counts.get(label, {})
            left = {t: c - gone.get(t, 0) for t, c in have.items() if c > gone.get(t, 0)}
            pending.subtract({t: c - left.get(t, 0) for t, c in have.items()})
            mass[0] -= sum(have.values()) - sum(left.values())
            mass[1] -= 1 if have and not left else 0
            counts[label] = left
            values[label] = {"size": loss.size, "representatives": loss.representatives}
            detail = {"deleted": len(members)}
            if loss.centroid is not None:
                values[label]["centroid"] = loss.centroid.tobytes()
            if loss.centre_lost or not loss.representatives:
                detail.update(_recentre(session, state, label, set(members), dimension, dtype, values[label]))
            events.append((label, "shrink", loss.size, detail))
        cq.subtract_terms(session, run_id, {l: removed_counts.get(l, {}) for l in by_label if l not in deaths}, current)
        values.update(_coarse_loss(session, run_id, {l: len(m) for l, m in by_label.items()}))
        cq.delete_clusters(session, run_id, deaths)
        for label, kw in keywords_for(session, state, counts, dict(pending), (mass[0], mass[1])).items():
            values[label].update(kw)
        cq.update_clusters(session, run_id, values)
        cq.record_events(session, run_id, events)
        change.forget = set(by_label)
    if known:
        run = cq.get_run(session, run_id)
        assert run is not None, "runs are never deleted and this change upkeeps an existing one"
        cq.touch_run(
            session,
            run_id,
            n_sentences=run.n_sentences - len(known),
            n_assigned=run.n_assigned - n_removed_assigned,
            n_clusters=run.n_clusters - len(deaths),
        )
    change.mass, change.terms = (mass[0], mass[1]), dict(pending)
    return change


def _recentre(
    session, state: inc.RunState, label: int, gone: set[int], dimension: int, dtype: str, values: dict
) -> dict:
    """Choose a new centre (the member most similar to the recomputed centroid) and
    representatives; on community runs, measure every member's similarity to the new centre."""
    members = [i for i in cq.member_ids(session, state.run_id, label) if i not in gone]
    found = sq.embeddings_found(session, members, dimension, dtype)
    members = [i for i in members if i in found]
    if not members:
        return {}
    vectors = np.vstack([found[i] for i in members])
    centroid = topics.normalized_centroid(vectors)
    centre, to_centre = inc.new_centre(members, vectors, centroid)
    reps = topics.representatives(vectors, list(range(len(members))), centroid, n=3)
    values.update(
        centre_id=centre,
        centroid=centroid.tobytes(),
        representatives=[members[r] for r in reps],
        cohesion=round(topics.cohesion(vectors), 6),
    )
    if state.rule == "community":
        cq.set_similarities(session, state.run_id, members, to_centre.tolist())
    return {"new_centre": centre}


def _coarse_loss(session, run_id: int, removed: dict[int, int]) -> dict[int, dict]:
    """New sizes of the coarse parents of fine clusters that lost members (runs with a hierarchy)."""
    parent_of = cq.parent_labels(session, run_id, removed)
    if not parent_of:
        return {}
    by_parent: Counter[int] = Counter()
    for label, n in removed.items():
        if label in parent_of:
            by_parent[parent_of[label]] += n
    rows = cq.clusters_by_label(session, run_id, by_parent)
    return {p: {"size": max(0, rows[p].size - n)} for p, n in by_parent.items() if p in rows}
