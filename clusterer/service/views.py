"""Plain result objects handed to API users and the CLI (no ORM objects leak out)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from clusterer.algorithms.matching import Event


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


@dataclass
class RunInfo:
    id: int
    method: str
    params: dict[str, Any]
    status: str
    started_at: str | None
    finished_at: str | None
    updated_at: str | None
    sentences: int
    clusters: int
    assigned: int
    unassigned: int
    seconds: float | None
    error: str | None = None

    @classmethod
    def from_row(cls, run) -> RunInfo:
        seconds = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
        return cls(
            run.id,
            run.method,
            dict(run.params or {}),
            run.status,
            _iso(run.started_at),
            _iso(run.finished_at),
            _iso(run.updated_at),
            run.n_sentences,
            run.n_clusters,
            run.n_assigned,
            run.n_sentences - run.n_assigned,
            round(seconds, 3) if seconds is not None else None,
            run.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Member:
    id: int
    text: str
    similarity: float | None
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClusterInfo:
    """A cluster of a run. ``level`` is "fine" (sentences are assigned to these) or "coarse" (a
    topic of fine clusters); ``parent`` is a fine cluster's coarse cluster (None when the run has
    no hierarchy) and ``children`` a coarse cluster's fine clusters, largest first; ``label`` is
    the name a user gave it (None without one)."""

    id: int
    run_id: int
    size: int
    keywords: list[str]
    centre_id: int | None
    centre_text: str | None
    cohesion: float | None
    representatives: list[Member] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    keyword_scores: list[float] = field(default_factory=list)
    level: str = "fine"
    parent: int | None = None
    children: list[int] = field(default_factory=list)
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cluster_detail(store, info: ClusterInfo) -> tuple[dict[str, Any], list[ClusterInfo], ClusterInfo | None]:
    """``info`` as `show --json` and `GET /clusters/{id}` give it: its dict plus ``child_clusters``
    and ``parent_cluster`` (id, size, keywords), and the child and parent clusters themselves."""
    children = [store.cluster_info(c, run_id=info.run_id, limit=0) for c in info.children]
    parent = store.cluster_info(info.parent, run_id=info.run_id, limit=0) if info.parent is not None else None

    def brief(c: ClusterInfo) -> dict[str, Any]:
        return {"id": c.id, "size": c.size, "keywords": c.keywords, "label": c.label}

    data = info.to_dict()
    data["child_clusters"] = [brief(c) for c in children]
    data["parent_cluster"] = None if parent is None else brief(parent)
    return data, children, parent


def event_from_row(row) -> Event:
    """A stored event row as the one :class:`Event` type."""
    return Event(
        row.label, row.kind, row.size, list(row.related or []), dict(row.detail or {}), row.run_id, _iso(row.at)
    )
