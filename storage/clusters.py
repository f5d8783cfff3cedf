"""Queries on clustering runs, clusters, assignments, term counts and cluster events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage.chunked import chunks
from storage.models import Assignment, Cluster, ClusterEvent, ClusterTerm, Run, Sentence, utcnow

INSERT_CHUNK = 10_000


@dataclass
class ClusterRow:
    label: int
    size: int
    centre_id: int | None
    cohesion: float | None
    keywords: list | None
    representatives: list[int] | None
    centroid: bytes | None = None
    level: str = "fine"
    parent_label: int | None = None


def create_run(session: Session, method: str, params: dict[str, Any]) -> Run:
    run = Run(method=method, params=params, status="running")
    session.add(run)
    session.flush()
    return run


def finish_run(
    session: Session, run_id: int, *, n_sentences: int, n_clusters: int, n_assigned: int, max_seq: int
) -> None:
    now = utcnow()
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(
            status="done",
            finished_at=now,
            updated_at=now,
            n_sentences=n_sentences,
            n_clusters=n_clusters,
            n_assigned=n_assigned,
            max_seq=max_seq,
        )
    )


def fail_run(session: Session, run_id: int, error: str) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(status="failed", error=error, finished_at=utcnow()))


def interrupt_running_runs(session: Session) -> int:
    """Mark every run still ``running`` as ``interrupted``; returns how many. Call it holding
    the writer lock: runs are made under that lock, so one still running then was killed."""
    result = session.execute(
        update(Run)
        .where(Run.status == "running")
        .values(
            status="interrupted",
            finished_at=utcnow(),
            error="the process running it ended before it finished (killed or crashed)",
        )
    )
    return cast(CursorResult[Any], result).rowcount or 0


def latest_run(session: Session) -> Run | None:
    return session.scalars(select(Run).where(Run.status == "done").order_by(Run.id.desc()).limit(1)).first()


def get_run(session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def list_runs(session: Session, limit: int = 50) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id.desc()).limit(limit)))


def insert_clusters(session: Session, run_id: int, rows: Sequence[ClusterRow]) -> None:
    if not rows:
        return
    now = utcnow()
    session.execute(
        insert(Cluster),
        [
            {
                "run_id": run_id,
                "label": r.label,
                "size": r.size,
                "centre_id": r.centre_id,
                "cohesion": r.cohesion,
                "keywords": r.keywords,
                "representatives": r.representatives,
                "centroid": r.centroid,
                "level": r.level,
                "parent_label": r.parent_label,
                "created_at": now,
                "updated_at": now,
            }
            for r in rows
        ],
    )


def update_clusters(session: Session, run_id: int, values: Mapping[int, Mapping[str, Any]]) -> None:
    """Set columns of many clusters of a run (``{label: {column: value}}``): one executemany
    per set of columns changed."""
    now = utcnow()
    table = cast(Table, Cluster.__table__)
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for label, cols in values.items():
        row = {f"v_{k}": v for k, v in cols.items()}
        row.update(r=run_id, l=int(label), v_updated_at=now)
        by_columns.setdefault(tuple(sorted(cols)), []).append(row)
    for columns, rows in by_columns.items():
        statement = (
            update(table)
            .where(table.c.run_id == bindparam("r"), table.c.label == bindparam("l"))
            .values({c: bindparam(f"v_{c}") for c in (*columns, "updated_at")})
        )
        session.connection().execute(statement, rows)


def insert_assignments(
    session: Session,
    run_id: int,
    sentence_ids: Sequence[int],
    labels: Sequence[int | None],
    similarities: Sequence[float | None],
) -> None:
    now = utcnow()
    rows = [
        {
            "run_id": run_id,
            "sentence_id": int(s),
            "label": None if lab is None else int(lab),
            "similarity": None if sim is None else float(sim),
            "assigned_at": now,
        }
        for s, lab, sim in zip(sentence_ids, labels, similarities)
    ]
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(Assignment), rows[start : start + INSERT_CHUNK])


def set_assignments(
    session: Session,
    run_id: int,
    sentence_ids: Sequence[int],
    labels: Sequence[int | None],
    similarities: Sequence[float | None],
) -> None:
    """Replace the assignments of ``sentence_ids`` in a run."""
    ids = [int(s) for s in sentence_ids]
    for chunk in chunks(ids):
        session.execute(delete(Assignment).where(Assignment.run_id == run_id, Assignment.sentence_id.in_(chunk)))
    insert_assignments(session, run_id, ids, labels, similarities)


def insert_terms(session: Session, run_id: int, counts: Mapping[int, Mapping[str, int]]) -> None:
    rows = [
        {"run_id": run_id, "label": int(label), "term": term, "count": int(c)}
        for label, terms in counts.items()
        for term, c in terms.items()
    ]
    for start in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(ClusterTerm), rows[start : start + INSERT_CHUNK])


def add_terms(
    session: Session, run_id: int, added: Mapping[int, Mapping[str, int]], current: Mapping[int, Mapping[str, int]]
) -> None:
    """Add ``added[label]`` to the stored term counts of each cluster, ``current`` being what
    is stored now (as :func:`term_counts` returns it): one bulk update and one bulk insert."""
    changed, new = [], []
    for label, counts in added.items():
        have = current.get(label, {})
        for term, c in counts.items():
            if term in have:
                changed.append({"r": run_id, "l": int(label), "t": term, "c": have[term] + int(c)})
            else:
                new.append({"run_id": run_id, "label": int(label), "term": term, "count": int(c)})
    if changed:
        table = cast(Table, ClusterTerm.__table__)
        session.connection().execute(
            update(table)
            .where(table.c.run_id == bindparam("r"), table.c.label == bindparam("l"), table.c.term == bindparam("t"))
            .values(count=bindparam("c")),
            changed,
        )
    for start in range(0, len(new), INSERT_CHUNK):
        session.execute(insert(ClusterTerm), new[start : start + INSERT_CHUNK])


def term_counts(session: Session, run_id: int, labels: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
    query = select(ClusterTerm.label, ClusterTerm.term, ClusterTerm.count).where(ClusterTerm.run_id == run_id)
    if labels is not None:
        query = query.where(ClusterTerm.label.in_(list(labels)))
    out: dict[int, dict[str, int]] = {}
    for label, term, count in session.execute(query):
        out.setdefault(label, {})[term] = count
    return out


def clusters_of_run(
    session: Session, run_id: int, order_by_size: bool = True, level: str | None = "fine"
) -> list[Cluster]:
    """The clusters of a run at ``level`` ("fine", the ones sentences are assigned to; "coarse";
    None for both)."""
    query = select(Cluster).where(Cluster.run_id == run_id)
    if level is not None:
        query = query.where(Cluster.level == level)
    query = query.order_by(Cluster.size.desc(), Cluster.label) if order_by_size else query.order_by(Cluster.label)
    return list(session.scalars(query))


def get_cluster(session: Session, run_id: int, label: int) -> Cluster | None:
    return session.scalars(select(Cluster).where(Cluster.run_id == run_id, Cluster.label == label)).first()


MemberRow = tuple[int, str, dict[str, Any] | None, float | None]
"""A member: (sentence id, text, metadata, similarity to its cluster's centre)."""


def members(
    session: Session, run_id: int, label: int | None, offset: int = 0, limit: int | None = 50
) -> list[MemberRow]:
    """Sentences of a cluster (or the unassigned ones for ``label=None``), most similar to the centre first."""
    cond = Assignment.label.is_(None) if label is None else Assignment.label == label
    query = (
        select(Sentence.id, Sentence.text, Sentence.meta, Assignment.similarity)
        .join(Assignment, and_(Assignment.sentence_id == Sentence.id, Assignment.run_id == run_id))
        .where(cond)
        .order_by(Assignment.similarity.desc().nulls_last() if label is not None else Sentence.id, Sentence.id)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    return [(row[0], row[1], row[2], row[3]) for row in session.execute(query)]


def members_of_labels(
    session: Session, run_id: int, labels: Sequence[int], offset: int = 0, limit: int | None = 50
) -> list[MemberRow]:
    """Sentences of several clusters (a coarse cluster's children), most similar to their
    own cluster's centre first."""
    if not labels:
        return []
    query = (
        select(Sentence.id, Sentence.text, Sentence.meta, Assignment.similarity)
        .join(Assignment, and_(Assignment.sentence_id == Sentence.id, Assignment.run_id == run_id))
        .where(Assignment.label.in_([int(label) for label in labels]))
        .order_by(Assignment.similarity.desc().nulls_last(), Sentence.id)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    return [(row[0], row[1], row[2], row[3]) for row in session.execute(query)]


def count_members(session: Session, run_id: int, label: int | None) -> int:
    cond = Assignment.label.is_(None) if label is None else Assignment.label == label
    return session.scalar(select(func.count()).select_from(Assignment).where(Assignment.run_id == run_id, cond)) or 0


def sentences_in_clusters_from(session: Session, run_id: int, first_label: int) -> int:
    """How many sentences the run's fine clusters with ids >= ``first_label`` hold (the clusters
    upkeep founded after the run was made)."""
    total = session.scalar(
        select(func.coalesce(func.sum(Cluster.size), 0)).where(
            Cluster.run_id == run_id, Cluster.label >= first_label, Cluster.level == "fine"
        )
    )
    return int(total or 0)


def label_sizes(session: Session, run_id: int) -> dict[int | None, int]:
    rows = session.execute(
        select(Assignment.label, func.count()).where(Assignment.run_id == run_id).group_by(Assignment.label)
    )
    return {label: n for label, n in rows}


def assignments_of_run(session: Session, run_id: int) -> tuple[list[int], list[int | None], list[float | None]]:
    rows = session.execute(
        select(Assignment.sentence_id, Assignment.label, Assignment.similarity)
        .where(Assignment.run_id == run_id)
        .order_by(Assignment.sentence_id)
    ).all()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def assignment_of(session: Session, run_id: int, sentence_id: int) -> Assignment | None:
    return session.get(Assignment, (run_id, sentence_id))


def assignment_history(session: Session, sentence_id: int) -> list[tuple[Run, Assignment]]:
    rows = session.execute(
        select(Run, Assignment)
        .join(Assignment, Assignment.run_id == Run.id)
        .where(Assignment.sentence_id == sentence_id)
        .order_by(Run.id)
    )
    return [(r[0], r[1]) for r in rows]


def record_event(
    session: Session,
    run_id: int,
    label: int,
    kind: str,
    size: int,
    related: list[int] | None = None,
    detail: dict | None = None,
) -> None:
    session.add(ClusterEvent(run_id=run_id, label=label, kind=kind, size=size, related=related, detail=detail))


def record_events(session: Session, run_id: int, events: Sequence[tuple[int, str, int, dict | None]]) -> None:
    """Insert many ``(label, kind, size, detail)`` events of one run in one statement."""
    if not events:
        return
    now = utcnow()
    session.execute(
        insert(ClusterEvent),
        [
            {
                "run_id": run_id,
                "label": int(label),
                "kind": kind,
                "size": int(size),
                "related": None,
                "detail": detail,
                "at": now,
            }
            for label, kind, size, detail in events
        ],
    )


def events(session: Session, label: int | None = None, run_id: int | None = None) -> list[ClusterEvent]:
    query = select(ClusterEvent).order_by(ClusterEvent.id)
    if label is not None:
        query = query.where(ClusterEvent.label == label)
    if run_id is not None:
        query = query.where(ClusterEvent.run_id == run_id)
    return list(session.scalars(query))


def max_label(session: Session) -> int:
    """The highest cluster label ever used, so new clusters never reuse an id."""
    a = session.scalar(select(func.max(Cluster.label)))
    b = session.scalar(select(func.max(ClusterEvent.label)))
    return max(x for x in (a, b, -1) if x is not None)


def touch_run(session: Session, run_id: int, **values: Any) -> None:
    values.setdefault("updated_at", utcnow())
    session.execute(update(Run).where(Run.id == run_id).values(**values))


def term_totals(session: Session, run_id: int, terms: Iterable[str]) -> dict[str, int]:
    """Total count of each of ``terms`` over all clusters of a run."""
    totals: dict[str, int] = {}
    for chunk in chunks(terms):
        totals.update(
            (t, int(c))
            for t, c in session.execute(
                select(ClusterTerm.term, func.sum(ClusterTerm.count))
                .where(ClusterTerm.run_id == run_id, ClusterTerm.term.in_(chunk))
                .group_by(ClusterTerm.term)
            )
        )
    return totals


def term_mass(session: Session, run_id: int) -> tuple[int, int]:
    """(all term occurrences, clusters with any terms) of a run."""
    total, classes = session.execute(
        select(func.coalesce(func.sum(ClusterTerm.count), 0), func.count(func.distinct(ClusterTerm.label))).where(
            ClusterTerm.run_id == run_id
        )
    ).one()
    return int(total), int(classes)


def assignments_for(
    session: Session, run_id: int, sentence_ids: Sequence[int]
) -> dict[int, tuple[int | None, float | None]]:
    """(label, similarity) under ``run_id`` of each of ``sentence_ids`` the run has assigned (or left out)."""
    ids = list(sentence_ids)
    out: dict[int, tuple[int | None, float | None]] = {}
    for chunk in chunks(ids):
        rows = session.execute(
            select(Assignment.sentence_id, Assignment.label, Assignment.similarity).where(
                Assignment.run_id == run_id, Assignment.sentence_id.in_(chunk)
            )
        )
        out.update({sid: (label, sim) for sid, label, sim in rows})
    return out


def labels_for(session: Session, run_id: int, sentence_ids: Sequence[int]) -> dict[int, int | None]:
    """The label (None: unassigned) of each of ``sentence_ids`` that the run holds; ids the run
    has no assignment for are absent."""
    ids = sorted({int(i) for i in sentence_ids})
    out: dict[int, int | None] = {}
    for chunk in chunks(ids):
        out.update(
            session.execute(
                select(Assignment.sentence_id, Assignment.label).where(
                    Assignment.run_id == run_id, Assignment.sentence_id.in_(chunk)
                )
            ).all()
        )
    return out


def clusters_by_label(session: Session, run_id: int, labels: Iterable[int]) -> dict[int, Cluster]:
    """The cluster rows of ``labels`` in a run (labels without a row are absent)."""
    labels = sorted({int(l) for l in labels})
    out: dict[int, Cluster] = {}
    for chunk in chunks(labels):
        for row in session.scalars(select(Cluster).where(Cluster.run_id == run_id, Cluster.label.in_(chunk))):
            out[row.label] = row
    return out


def member_ids(session: Session, run_id: int, label: int) -> list[int]:
    """Ids of every sentence assigned to ``label`` in a run, ascending."""
    return list(
        session.scalars(
            select(Assignment.sentence_id)
            .where(Assignment.run_id == run_id, Assignment.label == label)
            .order_by(Assignment.sentence_id)
        )
    )


def subtract_terms(
    session: Session, run_id: int, removed: Mapping[int, Mapping[str, int]], current: Mapping[int, Mapping[str, int]]
) -> None:
    """Take ``removed[label]`` off the stored term counts (``current`` being what is stored now);
    a count that reaches zero loses its row."""
    changed, gone = [], []
    for label, counts in removed.items():
        have = current.get(label, {})
        for term, c in counts.items():
            if term not in have:
                continue
            left = have[term] - int(c)
            if left > 0:
                changed.append({"r": run_id, "l": int(label), "t": term, "c": left})
            else:
                gone.append({"r": run_id, "l": int(label), "t": term})
    table = cast(Table, ClusterTerm.__table__)
    where = (table.c.run_id == bindparam("r"), table.c.label == bindparam("l"), table.c.term == bindparam("t"))
    if changed:
        session.connection().execute(update(table).where(*where).values(count=bindparam("c")), changed)
    if gone:
        session.connection().execute(delete(table).where(*where), gone)


def delete_clusters(session: Session, run_id: int, labels: Sequence[int]) -> None:
    """Remove clusters of a run with their term counts (their events stay)."""
    labels = [int(l) for l in labels]
    if labels:
        session.execute(delete(ClusterTerm).where(ClusterTerm.run_id == run_id, ClusterTerm.label.in_(labels)))
        session.execute(delete(Cluster).where(Cluster.run_id == run_id, Cluster.label.in_(labels)))


def parent_labels(session: Session, run_id: int, labels: Iterable[int]) -> dict[int, int]:
    """The coarse parent of each fine cluster of ``labels`` that has one (runs without a
    hierarchy, or a schema without the column, give {})."""
    column = getattr(Cluster, "parent_label", None)
    labels = sorted({int(l) for l in labels})
    if column is None or not labels:
        return {}
    out: dict[int, int] = {}
    for chunk in chunks(labels):
        out.update(
            (l, p)
            for l, p in session.execute(
                select(Cluster.label, column).where(Cluster.run_id == run_id, Cluster.label.in_(chunk))
            )
            if p is not None
        )
    return out


def set_similarities(
    session: Session, run_id: int, sentence_ids: Sequence[int], similarities: Sequence[float | None]
) -> None:
    """Set the stored similarity of assignments of a run (one executemany)."""
    table = cast(Table, Assignment.__table__)
    rows = [
        {"r": run_id, "s": int(i), "v": None if v is None else float(v)} for i, v in zip(sentence_ids, similarities)
    ]
    if rows:
        session.connection().execute(
            update(table)
            .where(table.c.run_id == bindparam("r"), table.c.sentence_id == bindparam("s"))
            .values(similarity=bindparam("v")),
            rows,
        )
