"""Queries on curation edits: merges (with the members they moved), splits and cluster names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.orm import Session

from storage.chunked import chunks
from storage.clusters import INSERT_CHUNK
from storage.models import ClusterMerge, ClusterName, ClusterSplit, MergeMember, utcnow


def add_merge(
    session: Session, run_id: int | None, target: int, sources: Sequence[int], moved: Sequence[tuple[int, int]]
) -> int:
    """Record a merge of ``sources`` into ``target`` and the ``(sentence id, old label)`` of each
    sentence it moved; returns the merge's id."""
    row = ClusterMerge(run_id=run_id, target=int(target), sources=[int(s) for s in sources], active=True)
    session.add(row)
    session.flush()
    rows = [{"merge_id": row.id, "sentence_id": int(s), "label": int(label)} for s, label in moved]
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(MergeMember), rows[start : start + INSERT_CHUNK])
    return row.id


def active_merges(session: Session) -> list[ClusterMerge]:
    """Every merge not undone, oldest first."""
    return list(session.scalars(select(ClusterMerge).where(ClusterMerge.active.is_(True)).order_by(ClusterMerge.id)))


def last_active_merge(session: Session, target: int) -> ClusterMerge | None:
    """The newest merge into ``target`` that is not undone."""
    return session.scalars(
        select(ClusterMerge)
        .where(ClusterMerge.target == int(target), ClusterMerge.active.is_(True))
        .order_by(ClusterMerge.id.desc())
        .limit(1)
    ).first()


def merge_members(session: Session, merge_id: int) -> dict[int, int]:
    """``{sentence id: label it had before}`` of the sentences a merge moved."""
    return dict(
        session.execute(
            select(MergeMember.sentence_id, MergeMember.label).where(MergeMember.merge_id == merge_id)
        ).all()
    )


def undo_merge(session: Session, merge_id: int) -> None:
    session.execute(update(ClusterMerge).where(ClusterMerge.id == merge_id).values(active=False, undone_at=utcnow()))


def add_split(
    session: Session, run_id: int | None, parent: int, children: Sequence[int], resolution: float | None
) -> int:
    row = ClusterSplit(
        run_id=run_id, parent=int(parent), children=[int(c) for c in children], resolution=resolution, active=True
    )
    session.add(row)
    session.flush()
    return row.id


def active_splits(session: Session) -> list[ClusterSplit]:
    return list(session.scalars(select(ClusterSplit).where(ClusterSplit.active.is_(True)).order_by(ClusterSplit.id)))


def set_split_children(session: Session, split_id: int, children: Sequence[int]) -> None:
    """Change the parts a split keeps apart; fewer than two parts ends it."""
    values: dict[str, Any] = {"children": [int(c) for c in children]}
    if len(set(children)) < 2:
        values.update(active=False, undone_at=utcnow())
    session.execute(update(ClusterSplit).where(ClusterSplit.id == split_id).values(**values))


def set_name(session: Session, label: int, name: str) -> None:
    row = session.get(ClusterName, int(label))
    if row is None:
        session.add(ClusterName(label=int(label), name=name, updated_at=utcnow()))
    else:
        row.name, row.updated_at = name, utcnow()
    session.flush()


def clear_name(session: Session, label: int) -> bool:
    """Remove a cluster's name; False when it had none."""
    result = session.execute(delete(ClusterName).where(ClusterName.label == int(label)))
    return (cast(CursorResult[Any], result).rowcount or 0) > 0


def names(session: Session, labels: Iterable[int] | None = None) -> dict[int, str]:
    """``{cluster id: name}`` of ``labels`` that have a name (every named id when None)."""
    if labels is None:
        return dict(session.execute(select(ClusterName.label, ClusterName.name)).all())
    out: dict[int, str] = {}
    for chunk in chunks(sorted({int(label) for label in labels})):
        out.update(
            session.execute(select(ClusterName.label, ClusterName.name).where(ClusterName.label.in_(chunk))).all()
        )
    return out
