"""SQLAlchemy 2 typed models.

The database is the source of truth: every sentence keeps its embedding, so the
FAISS file can always be rebuilt without re-embedding.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StoreInfo(Base):
    """One row: the embedding model and dimension the store was created with."""

    __tablename__ = "store_info"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(500))
    dimension: Mapped[int] = mapped_column(Integer)
    embedding_dtype: Mapped[str] = mapped_column(String(16), default="float32")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class IndexState(Base):
    """One row: what the FAISS file on disk covers.

    ``watermark`` is the highest sentence sequence number in the file,
    ``checksum`` the digest of the file's bytes.  ``dirty`` is set in the same
    transaction as a deletion and cleared once the file reflects it; ``deletions``
    counts deletions ever made, so a reader can tell cheaply that its index is stale.
    """

    __tablename__ = "index_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    watermark: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ntotal: Mapped[int] = mapped_column(BigInteger, default=0)
    index_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dirty: Mapped[bool] = mapped_column(default=False)
    deletions: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Counter(Base):
    """Named counters handed out by the database (``seq``: the last sentence sequence
    number given), so writers on several hosts never collide."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class IndexCacheState(Base):
    """One row per data folder: what that folder's FAISS file covers.

    Several hosts may share one database, each with its own data folder and index file;
    ``folder_id`` is the identity stored in the folder (its ``folder-id`` file).
    ``watermark`` is the highest sequence number in the file, ``checksum`` the digest of
    its bytes, ``deletions`` the value of the store's deletion counter the file reflects
    (the file is stale when the counter has moved on).
    """

    __tablename__ = "index_caches"

    folder_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ntotal: Mapped[int] = mapped_column(BigInteger, default=0)
    index_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deletions: Mapped[int] = mapped_column(BigInteger, default=0)
    file_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    data_dir: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Sentence(Base):
    __tablename__ = "sentences"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 (SQLAlchemy's declarative table options)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64), unique=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    source_file: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    source_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class IngestLog(Base):
    """One row per ingest call: where the sentences came from and what was skipped."""

    __tablename__ = "ingests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(1000))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    added: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    near_duplicates: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    empty: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)


class Run(Base):
    """A clustering run: method, parameters, timing and what it covered.

    ``max_seq`` is the highest sentence sequence number the run has seen; it
    grows as incremental updates assign new sentences to the run.
    """

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    n_sentences: Mapped[int] = mapped_column(BigInteger, default=0)
    n_clusters: Mapped[int] = mapped_column(Integer, default=0)
    n_assigned: Mapped[int] = mapped_column(BigInteger, default=0)
    max_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Cluster(Base):
    """A cluster of one run.  ``label`` is the user-facing id, stable across runs.

    ``level`` is "fine" (sentences are assigned to these) or "coarse" (a topic made of fine
    clusters, for methods with a hierarchy); a fine cluster's ``parent_label`` is its coarse one.
    """

    __tablename__ = "clusters"
    __table_args__ = (Index("ix_clusters_run_label", "run_id", "label", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer, default=0)
    centre_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cohesion: Mapped[float | None] = mapped_column(Float, nullable=True)
    keywords: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    representatives: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    centroid: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="fine", server_default="fine")
    parent_label: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Assignment(Base):
    """Which cluster a sentence is in for a run; ``label`` is NULL when unassigned."""

    __tablename__ = "assignments"
    __table_args__ = (Index("ix_assignments_run_label", "run_id", "label"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sentence_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)
    similarity: Mapped[float | None] = mapped_column(Float, nullable=True)
    assigned_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ClusterTerm(Base):
    """Per-cluster term counts, so keywords can be updated without recounting."""

    __tablename__ = "cluster_terms"
    __table_args__ = (Index("ix_cluster_terms_run_term", "run_id", "term"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[int] = mapped_column(Integer, primary_key=True)
    term: Mapped[str] = mapped_column(String(200), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class ClusterEvent(Base):
    """Birth, growth, merge, split, death or carry-over of a cluster id."""

    __tablename__ = "cluster_events"
    __table_args__ = (Index("ix_cluster_events_label", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer, default=0)
    related: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ClusterMerge(Base):
    """A user's merge of clusters ``sources`` into ``target`` (the largest's id); ``active``
    until undone. :class:`MergeMember` keeps the label each moved sentence had, for undo."""

    __tablename__ = "cluster_merges"
    __table_args__ = (Index("ix_cluster_merges_target", "target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    target: Mapped[int] = mapped_column(Integer)
    sources: Mapped[list[int]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    undone_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class MergeMember(Base):
    """A sentence a merge moved, with the cluster it came from."""

    __tablename__ = "merge_members"

    merge_id: Mapped[int] = mapped_column(ForeignKey("cluster_merges.id", ondelete="CASCADE"), primary_key=True)
    sentence_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    label: Mapped[int] = mapped_column(Integer)


class ClusterSplit(Base):
    """A user's split of cluster ``parent`` into ``children`` (new ids), kept apart while active."""

    __tablename__ = "cluster_splits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    parent: Mapped[int] = mapped_column(Integer)
    children: Mapped[list[int]] = mapped_column(JSON)
    resolution: Mapped[float | None] = mapped_column(Float, nullable=True)
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    undone_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class ClusterName(Base):
    """A user's name for a cluster id (ids are never reused, so the name follows the id across runs)."""

    __tablename__ = "cluster_names"

    label: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
