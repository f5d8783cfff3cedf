"""Queries on sentences, the store's model record, the index state and ingest log."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage.chunked import chunks
from storage.errors import StorageError
from storage.models import Assignment, Counter, IndexCacheState, IndexState, IngestLog, Sentence, StoreInfo, utcnow

SEQ_COUNTER = "seq"
MAX_ID = 2**63 - 1


class InvalidIdError(StorageError, ValueError):
    """A sentence id outside what the database can hold (0 to 2**63 - 1)."""


def _ids(ids: Iterable[int]) -> list[int]:
    """``ids`` as a list of ints, checked to fit the id column (SQLite would overflow)."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu" and ids.dtype.itemsize <= 8 and ids.dtype != np.uint64:
        out = ids.astype(np.int64, copy=False).tolist()
    else:
        out = [int(i) for i in ids]
    if out and (min(out) < 0 or max(out) > MAX_ID):
        bad = next(i for i in out if i < 0 or i > MAX_ID)
        raise InvalidIdError(f"{bad} is not a sentence id: ids go from 0 to {MAX_ID}")
    return out


@dataclass
class NewSentence:
    text: str
    text_hash: str
    embedding: bytes
    metadata: dict[str, Any] | None = None
    source_file: str | None = None
    source_line: int | None = None


def get_info(session: Session) -> StoreInfo | None:
    return session.get(StoreInfo, 1)


def init_info(session: Session, model_name: str, dimension: int, dtype: str = "float32") -> StoreInfo:
    info = StoreInfo(id=1, model_name=model_name, dimension=dimension, embedding_dtype=dtype)
    session.add(info)
    session.add(IndexState(id=1, watermark=0, ntotal=0, dirty=False))
    session.flush()
    return info


def existing_hashes(session: Session, hashes: Iterable[str]) -> set[str]:
    """The subset of ``hashes`` already stored."""
    found: set[str] = set()
    for chunk in chunks(hashes):
        found.update(session.scalars(select(Sentence.text_hash).where(Sentence.text_hash.in_(chunk))))
    return found


def max_seq(session: Session) -> int:
    return session.scalar(select(func.coalesce(func.max(Sentence.seq), 0))) or 0


def allocate_seqs(session: Session, n: int) -> int:
    """Reserve ``n`` consecutive sequence numbers from the database's counter; returns the first.

    The counter row stays locked until the transaction ends, so writers on any host get
    disjoint numbers and commit them in order (a reader's watermark never skips a row)."""
    last = session.execute(
        update(Counter).where(Counter.name == SEQ_COUNTER).values(value=Counter.value + n).returning(Counter.value)
    ).scalar()
    if last is None:
        raise StorageError("the database has no sequence counter: its schema is older than this program")
    return int(last) - n + 1


def insert_sentences(session: Session, rows: Sequence[NewSentence]) -> tuple[list[int], list[int]]:
    """Insert rows with consecutive sequence numbers; returns (ids, seqs) in row order."""
    if not rows:
        return [], []
    first = allocate_seqs(session, len(rows))
    now = utcnow()
    values = [
        {
            "text": r.text,
            "text_hash": r.text_hash,
            "meta": r.metadata or None,
            "source_file": r.source_file,
            "source_line": r.source_line,
            "created_at": now,
            "seq": first + i,
            "embedding": r.embedding,
        }
        for i, r in enumerate(rows)
    ]
    result = session.execute(
        insert(Sentence).returning(Sentence.id, Sentence.seq, sort_by_parameter_order=True), values
    )
    pairs = result.all()
    return [p[0] for p in pairs], [p[1] for p in pairs]


def count_sentences(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Sentence)) or 0


def count_up_to(session: Session, seq: int) -> int:
    return session.scalar(select(func.count()).select_from(Sentence).where(Sentence.seq <= seq)) or 0


def all_ids(session: Session, up_to_seq: int | None = None) -> np.ndarray:
    query = select(Sentence.id).order_by(Sentence.id)
    if up_to_seq is not None:
        query = query.where(Sentence.seq <= up_to_seq)
    return np.fromiter(session.scalars(query), dtype=np.int64)


def iter_embeddings(
    session: Session,
    dimension: int,
    dtype: str = "float32",
    after_seq: int = 0,
    up_to_seq: int | None = None,
    batch_size: int = 20_000,
    *conditions: Any,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield (ids, float32 matrix, max seq) batches of stored embeddings in seq order, of the
    sentences that also meet every SQL condition in ``conditions``."""
    last = after_seq
    while True:
        query = (
            select(Sentence.id, Sentence.seq, Sentence.embedding)
            .where(Sentence.seq > last, *conditions)
            .order_by(Sentence.seq)
            .limit(batch_size)
        )
        if up_to_seq is not None:
            query = query.where(Sentence.seq <= up_to_seq)
        rows = session.execute(query).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = decode_embeddings([r[2] for r in rows], dimension, dtype)
        last = rows[-1][1]
        yield ids, matrix, last


def decode_embeddings(blobs: Sequence[bytes], dimension: int, dtype: str = "float32") -> np.ndarray:
    if not blobs:
        return np.zeros((0, dimension), dtype=np.float32)
    raw = np.frombuffer(b"".join(blobs), dtype=np.dtype(dtype))
    return raw.reshape(len(blobs), dimension).astype(np.float32, copy=False)


def encode_embeddings(matrix: np.ndarray, dtype: str = "float32") -> list[bytes]:
    arr = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    return [row.tobytes() for row in arr]


def embeddings_for(session: Session, ids: Sequence[int], dimension: int, dtype: str = "float32") -> np.ndarray:
    """Embeddings of ``ids`` in the given order; unknown ids raise KeyError."""
    ids = _ids(ids)
    found: dict[int, bytes] = {}
    for chunk in chunks(ids):
        found.update(session.execute(select(Sentence.id, Sentence.embedding).where(Sentence.id.in_(chunk))).all())
    missing = [i for i in ids if i not in found]
    if missing:
        raise KeyError(missing[0])
    return decode_embeddings([found[i] for i in ids], dimension, dtype)


def get_sentences(session: Session, ids: Sequence[int]) -> dict[int, Sentence]:
    ids = _ids(ids)
    out: dict[int, Sentence] = {}
    for chunk in chunks(ids):
        for row in session.scalars(select(Sentence).where(Sentence.id.in_(chunk))):
            out[row.id] = row
    return out


def texts_for(session: Session, ids: Sequence[int]) -> dict[int, str]:
    ids = _ids(ids)
    out: dict[int, str] = {}
    for chunk in chunks(ids):
        out.update(session.execute(select(Sentence.id, Sentence.text).where(Sentence.id.in_(chunk))).all())
    return out


def existing_ids(session: Session, ids: Sequence[int]) -> list[int]:
    """The ids of ``ids`` that are stored, ascending."""
    ids = _ids(ids)
    present: list[int] = []
    for chunk in chunks(ids):
        present.extend(session.scalars(select(Sentence.id).where(Sentence.id.in_(chunk))))
    return sorted(present)


def delete_sentences(session: Session, ids: Sequence[int]) -> list[int]:
    """Delete the rows of ``ids`` that exist; returns the ids actually deleted."""
    ids = _ids(ids)
    present: list[int] = []
    for chunk in chunks(ids):
        present.extend(session.scalars(select(Sentence.id).where(Sentence.id.in_(chunk))))
        session.execute(delete(Assignment).where(Assignment.sentence_id.in_(chunk)))
        session.execute(delete(Sentence).where(Sentence.id.in_(chunk)))
    return sorted(present)


def _legacy_index_state(session: Session) -> IndexState:
    state = session.get(IndexState, 1)
    if state is None:
        state = IndexState(id=1, watermark=0, ntotal=0, dirty=False)
        session.add(state)
        session.flush()
    return state


def get_cache_state(session: Session, folder_id: str | None) -> IndexCacheState | None:
    """What the FAISS file of data folder ``folder_id`` covers (None: no record yet)."""
    if folder_id is None:
        return None
    return session.get(IndexCacheState, folder_id)


def set_cache_state(
    session: Session,
    folder_id: str,
    *,
    watermark: int,
    checksum: str | None,
    ntotal: int,
    index_type: str | None,
    deletions: int,
    file_bytes: int | None = None,
    host: str | None = None,
    data_dir: str | None = None,
) -> None:
    values = dict(
        watermark=watermark,
        checksum=checksum,
        ntotal=ntotal,
        index_type=index_type,
        deletions=deletions,
        file_bytes=file_bytes,
        host=host,
        data_dir=data_dir,
        updated_at=utcnow(),
    )
    if session.get(IndexCacheState, folder_id) is None:
        session.add(IndexCacheState(folder_id=folder_id, **values))
        session.flush()
    else:
        session.execute(update(IndexCacheState).where(IndexCacheState.folder_id == folder_id).values(**values))


def adopt_legacy_state(session: Session, folder_id: str) -> IndexCacheState | None:
    """Give a store made before per-folder records its old single record, once: the first
    folder that asks while no folder has a record inherits it, so an upgrade does not
    force a rebuild."""
    if session.scalar(select(func.count()).select_from(IndexCacheState)):
        return None
    legacy = session.get(IndexState, 1)
    if legacy is None or legacy.checksum is None:
        return None
    deletions = -1 if legacy.dirty else (legacy.deletions or 0)
    set_cache_state(
        session,
        folder_id,
        watermark=legacy.watermark,
        checksum=legacy.checksum,
        ntotal=legacy.ntotal,
        index_type=legacy.index_type,
        deletions=deletions,
    )
    return session.get(IndexCacheState, folder_id)


def mark_index_dirty(session: Session) -> int:
    """Record a deletion: every index file made before it is stale, and the deletion
    counter moves; returns the counter."""
    _legacy_index_state(session)
    session.execute(
        update(IndexState)
        .where(IndexState.id == 1)
        .values(dirty=True, deletions=IndexState.deletions + 1, updated_at=utcnow())
    )
    return deletion_count(session)


def deletion_count(session: Session) -> int:
    return session.scalar(select(IndexState.deletions).where(IndexState.id == 1)) or 0


def change_marks(session: Session) -> tuple[int, int]:
    """(:func:`deletion_count`, :func:`max_seq`) in one round trip: what a reader compares to
    learn whether anything was stored or deleted since it last looked."""
    deletions = select(IndexState.deletions).where(IndexState.id == 1).scalar_subquery()
    row = session.execute(select(deletions, func.coalesce(func.max(Sentence.seq), 0))).one()
    return int(row[0] or 0), int(row[1] or 0)


def start_ingest(session: Session, source: str) -> int:
    log = IngestLog(source=source)
    session.add(log)
    session.flush()
    return log.id


def update_ingest(session: Session, ingest_id: int, *, finished: bool = False, **counts: int) -> None:
    values: dict[str, Any] = {k: IngestLog.__table__.c[k] + v for k, v in counts.items()}
    if finished:
        values["finished_at"] = utcnow()
    session.execute(update(IngestLog).where(IngestLog.id == ingest_id).values(**values))


def ingest_totals(session: Session) -> dict[str, int]:
    row = session.execute(
        select(
            func.count(IngestLog.id),
            func.coalesce(func.sum(IngestLog.added), 0),
            func.coalesce(func.sum(IngestLog.duplicates), 0),
            func.coalesce(func.sum(IngestLog.empty), 0),
            func.coalesce(func.sum(IngestLog.invalid), 0),
        )
    ).one()
    return {"ingests": row[0], "added": row[1], "duplicates": row[2], "empty": row[3], "invalid": row[4]}


def near_duplicates_total(session: Session) -> int:
    """Sentences every ingest skipped as near-duplicates (``--near-duplicates-threshold``)."""
    return session.scalar(select(func.coalesce(func.sum(IngestLog.near_duplicates), 0))) or 0


def ids_by_hash(session: Session, hashes: Iterable[str]) -> dict[str, int]:
    """The id of each stored sentence whose text hash is in ``hashes``."""
    found: dict[str, int] = {}
    for chunk in chunks(hashes):
        found.update(
            session.execute(select(Sentence.text_hash, Sentence.id).where(Sentence.text_hash.in_(chunk))).all()
        )
    return found


def embeddings_found(
    session: Session, ids: Sequence[int], dimension: int, dtype: str = "float32"
) -> dict[int, np.ndarray]:
    """Embeddings of those of ``ids`` that are stored (``{id: vector}``; missing ids are absent)."""
    found: dict[int, bytes] = {}
    for chunk in chunks(sorted({int(i) for i in ids})):
        found.update(session.execute(select(Sentence.id, Sentence.embedding).where(Sentence.id.in_(chunk))).all())
    keys = list(found)
    return dict(zip(keys, decode_embeddings([found[i] for i in keys], dimension, dtype)))
