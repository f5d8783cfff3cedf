"""The ingest pipeline: records in, batches deduplicated, embedded, stored and indexed.

Each batch is one transaction: new rows (numbered by the database's counter) and whatever
the store's listener writes about them commit together; the FAISS index of the data folder
is then extended and saved now and then (see :mod:`indexer.index_cache`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from indexer import readers
from indexer.errors import IndexerError, InputError
from indexer.index_cache import SAVE_INTERVAL_S
from indexer.normalize import normalize_text, text_hash
from storage import sentences as q


class IngestTarget(Protocol):
    """What the ingest pipeline uses of a store (:class:`indexer.sentence_store.SentenceStore`)."""

    cache: Any
    lock: Any
    db: Any
    batch_size: int
    embedding_dtype: str
    listener: Any

    @property
    def encoder(self) -> Any: ...

    def _ensure_info(self) -> None: ...


Progress = Callable[[int], None]
PYTHON_SOURCE = "<python>"


@dataclass
class IngestReport:
    source: str
    read: int = 0
    added: int = 0
    duplicates: int = 0
    near_duplicates: int = 0
    empty: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ids: list[int] = field(default_factory=list)
    clustering: dict[str, int] = field(default_factory=dict)
    upkeep: dict[str, Any] = field(default_factory=dict)
    """What the listener's layer did after the batches beyond assigning them (e.g. a re-optimisation)."""

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_ids:
            out.pop("ids")
        out["sentences_per_second"] = round(self.rate, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    try:
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
    except InputError:
        # Bad input at line N: hand over the rows read before it, so that they are
        # committed, then raise.
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def python_records(
    texts: Iterable[str], metadata: Iterable[dict[str, Any] | None] | None, source: str = PYTHON_SOURCE
) -> Iterator[readers.Record]:
    """Records of texts (and one metadata dict, or None, per text) handed over in Python."""
    if isinstance(texts, Sized) and isinstance(metadata, Sized) and len(metadata) != len(texts):
        raise InputError(
            source,
            None,
            f"{len(texts)} texts but {len(metadata)} metadata entries: give one metadata dict (or None) per text",
        )
    metas = iter(metadata) if metadata is not None else None
    n = 0
    for n, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise InputError(source, n, f"text must be a string, not {type(text).__name__}")
        meta = None
        if metas is not None:
            meta = next(metas, _MISSING)
            if meta is _MISSING:
                raise InputError(
                    source, n, "no metadata entry for this text: give one metadata dict (or None) per text"
                )
        problem = readers.metadata_problem(meta)
        if problem:
            raise InputError(source, n, problem)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(source, n, "unpaired surrogate in the text (not valid Unicode)") from None
        yield readers.Record(normalize_text(text), meta if isinstance(meta, dict) else {}, source, n)
    if metas is not None and next(metas, _MISSING) is not _MISSING:
        raise InputError(source, n + 1, "more metadata entries than texts")


_MISSING = object()


def ingest_records(
    store: IngestTarget,
    records: Iterable[readers.Record],
    *,
    source: str,
    progress: Progress | None = None,
    stats: readers.ReadStats | None = None,
    count_empty: bool = False,
    near_duplicates: float | None = None,
) -> IngestReport:
    """``near_duplicates``: skip a sentence whose nearest stored sentence (or an earlier kept
    sentence of the same batch) has cosine similarity >= this value; counted apart from exact
    duplicates in ``report.near_duplicates``."""
    report = IngestReport(source=source)
    started = time.perf_counter()
    call_started = time.monotonic()
    cache = store.cache
    with store.lock:
        store._ensure_info()
        cache.refresh()
        cache.index  # noqa: B018  (loaded before the first batch)
        with store.db.write() as session:
            ingest_id = q.start_ingest(session, source)
        try:
            for batch in batched(records, store.batch_size):
                if count_empty:
                    kept = [r for r in batch if r.text]
                    report.empty += len(batch) - len(kept)
                    batch = kept
                _ingest_batch(store, batch, report, ingest_id, near_duplicates)
                report.read += len(batch)
                if progress:
                    progress(len(batch))
                if time.monotonic() - max(cache.last_save, call_started) > SAVE_INTERVAL_S:
                    cache.save(cache.index)
        except IndexerError as exc:
            exc.partial_report = report  # type: ignore[attr-defined]
            raise
        finally:
            if stats is not None:
                report.empty, report.invalid, report.errors = stats.empty, stats.invalid, list(stats.errors)
            with store.db.write() as session:
                q.update_ingest(session, ingest_id, finished=True, empty=report.empty, invalid=report.invalid)
            cache.finish_write()
            report.seconds = time.perf_counter() - started
    return report


def _ingest_batch(
    store: IngestTarget,
    batch: list[readers.Record],
    report: IngestReport,
    ingest_id: int,
    near_duplicates: float | None = None,
) -> None:
    fresh: dict[str, readers.Record] = {}
    for rec in batch:
        fresh.setdefault(text_hash(rec.text), rec)
    dups = len(batch) - len(fresh)
    with store.db.read() as session:
        known = q.existing_hashes(session, fresh.keys())
    for h in known:
        del fresh[h]
    dups += len(known)
    report.duplicates += dups
    if not fresh:
        with store.db.write() as session:
            q.update_ingest(session, ingest_id, duplicates=dups)
        return
    hashes = list(fresh)
    recs = [fresh[h] for h in hashes]
    vectors = store.encoder.encode([r.text for r in recs])
    near = 0
    if near_duplicates is not None:
        recs, hashes, vectors, near = _drop_near_duplicates(store, recs, hashes, vectors, near_duplicates)
        report.near_duplicates += near
        if not recs:
            with store.db.write() as session:
                q.update_ingest(session, ingest_id, duplicates=dups, near_duplicates=near)
            return
    blobs = q.encode_embeddings(vectors, store.embedding_dtype)
    rows = [q.NewSentence(r.text, h, b, r.metadata or None, r.source, r.line) for r, h, b in zip(recs, hashes, blobs)]
    # Readers see the batch in the database, the index and the run at once, but are held only
    # while it is committed and applied: the rows and the run's upkeep are written first in a
    # transaction that readers cannot see yet.
    gate = EnteredLater(store.cache.rw.write)
    with gate:
        with store.db.write() as session:
            ids, seqs = q.insert_sentences(session, rows)
            q.update_ingest(session, ingest_id, added=len(ids), duplicates=dups, near_duplicates=near)
            after_commit = None
            if store.listener is not None:
                after_commit = store.listener.on_insert(
                    session, np.asarray(ids, dtype=np.int64), vectors, [r.text for r in recs], int(seqs[-1])
                )
            gate.enter()
        if after_commit is not None:
            for key, value in (after_commit() or {}).items():
                report.clustering[key] = report.clustering.get(key, 0) + value
        store.cache.add(np.asarray(ids, dtype=np.int64), vectors, int(seqs[-1]))
    report.added += len(ids)
    report.ids.extend(ids)


class EnteredLater:
    """A context manager entered on demand inside its ``with`` block and left at its end."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._entered: Any = None

    def enter(self) -> None:
        if self._entered is None:
            cm = self._factory()
            cm.__enter__()
            self._entered = cm

    def __enter__(self) -> EnteredLater:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._entered is not None:
            cm, self._entered = self._entered, None
            cm.__exit__(*exc)


def _drop_near_duplicates(store: IngestTarget, recs, hashes, vectors, threshold: float):
    """The records, hashes and vectors left after near-duplicates, and how many were dropped."""
    from indexer.near_duplicates import near_duplicate_mask

    skip = near_duplicate_mask(store.cache.index, vectors, float(threshold))
    keep = np.flatnonzero(~skip)
    return [recs[i] for i in keep], [hashes[i] for i in keep], vectors[keep], int(skip.sum())
