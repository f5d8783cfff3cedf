"""The sentence store: database rows, embeddings and the FAISS index kept in step.

Writes (ingest, delete, rebuild) hold the writer lock of the data folder.  Rows
are committed batch by batch; the index file is a cache that is saved
atomically now and then and at the end of each write, with the highest sequence
number it covers (the watermark) and its checksum recorded in the database.
Opening the store replays rows past the watermark and rebuilds the index from
the stored embeddings when the file is missing, damaged or stale.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from indexer import readers
from indexer.errors import IndexerError, InputError
from indexer.listener import StoreListener
from indexer.lock import WriterLock
from indexer.normalize import normalize_text, text_hash
from indexer.rwlock import ReadWriteLock
from indexer.vector_index import FLAT_MAX, TRAIN_SAMPLE, IndexFileError, VectorIndex, load_index
from storage import sentences as q
from storage.db import Database, describe_url, sqlite_url
from storage.errors import ModelMismatchError, StorageError

DEFAULT_DATA_DIR = "clusterer-data"
DB_FILE = "clusterer.db"
INDEX_FILE = "index.faiss"
LOCK_FILE = "writer.lock"
SAVE_INTERVAL_S = 60.0
SMALL_INDEX = 100_000
UNSAVED_FRACTION = 0.02

Progress = Callable[[int], None]


class StoreNotFoundError(IndexerError):
    """No store exists at the given place yet."""


@dataclass
class IngestReport:
    source: str
    read: int = 0
    added: int = 0
    duplicates: int = 0
    empty: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ids: list[int] = field(default_factory=list)
    clustering: dict[str, int] = field(default_factory=dict)

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


@dataclass
class Hit:
    id: int
    text: str
    similarity: float
    metadata: dict[str, Any] | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str]
    sentences: int
    indexed: int
    watermark: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batched(items: Iterable, size: int) -> Iterator[list]:
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


def make_encoder(model: str | None, device: str = "auto", precision: str = "auto"):
    """The sentence-transformers encoder for ``model`` (None: the bundled default)."""
    from indexer.encoder import Encoder

    return Encoder(model, device=device, precision=precision)


class SentenceStore:
    """Sentences, their embeddings and metadata in SQL, plus a persistent FAISS index.

    ``encoder`` is any object with ``model_name``, ``dimension`` and
    ``encode(texts, show_progress=False) -> float32 array``; by default the
    sentence-transformers encoder of ``model`` (or of the model the store was
    created with) is loaded on first use.
    """

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        db_url: str | None = None,
        model: str | None = None,
        encoder: Any = None,
        device: str = "auto",
        precision: str = "auto",
        create: bool = True,
        lock_timeout: float = 30.0,
        batch_size: int = 4096,
        flat_max: int = FLAT_MAX,
        recover: bool = True,
        listener: StoreListener | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.index_path = self.data_dir / INDEX_FILE
        self.db_url = db_url or sqlite_url(self.data_dir / DB_FILE)
        self.batch_size = batch_size
        self.flat_max = flat_max
        self.listener = listener
        self._model = model
        self._encoder = encoder
        self._device = device
        self._precision = precision
        self._index: VectorIndex | None = None
        self._index_seq = 0
        self._saved_seq = 0
        self._deletions_seen = 0
        self._last_save = time.monotonic()
        self.lock = WriterLock(self.data_dir / LOCK_FILE, timeout=lock_timeout)
        self._rw = ReadWriteLock()
        if not create and db_url is None and not (self.data_dir / DB_FILE).exists():
            raise StoreNotFoundError(f"no store in {self.data_dir} (run `clusterer ingest` first)")
        if create:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.db_url, create=create)
        self.db.migrate()
        with self.db.read() as session:
            info = q.get_info(session)
            self.model_name = info.model_name if info else None
            self.dimension = info.dimension if info else None
            self.embedding_dtype = info.embedding_dtype if info else "float32"
        if info is None and not create:
            raise StoreNotFoundError(f"the database {describe_url(self.db_url)} holds no store yet")
        self._check_model()
        if recover:
            self.recover()

    @classmethod
    def open(cls, data_dir: str | Path = DEFAULT_DATA_DIR, **kwargs) -> "SentenceStore":
        return cls(data_dir, **kwargs)

    def close(self) -> None:
        self.lock.release()
        self.db.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- model ---------------------------------------------------------------------

    def _check_model(self) -> None:
        if self.model_name is None:
            return
        wanted = getattr(self._encoder, "model_name", None) or self._model
        if wanted is not None and wanted != self.model_name:
            raise ModelMismatchError(
                f"this store was built with model {self.model_name!r} ({self.dimension}-d); "
                f"it cannot be opened with {wanted!r}. Use a new --data-dir or --db for another model."
            )
        dim = getattr(self._encoder, "dimension", None)
        if dim is not None and dim != self.dimension:
            raise ModelMismatchError(
                f"this store holds {self.dimension}-d embeddings; the encoder gives {dim}-d"
            )

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = make_encoder(self._model or self.model_name, device=self._device, precision=self._precision)
            self._check_model()
        return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode([normalize_text(t) for t in texts])

    # -- index ---------------------------------------------------------------------

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            with self._rw.write():
                if self._index is None:
                    self._index = self._load_index()
        return self._index

    def reading(self):
        """Hold while searching the in-memory index from several threads: no batch, replay or
        swap changes it meanwhile (call :meth:`refresh` before, not inside)."""
        return self._rw.read()

    def recover(self) -> bool:
        """Bring the index file up to date with the database if no writer is busy.

        Replays rows committed after the file's watermark and rebuilds a
        missing, damaged or stale file.  Returns False when another process
        holds the writer lock (it will do the same when it finishes).
        """
        if self.dimension is None or not self.lock.try_acquire():
            return False
        try:
            with self._rw.write():
                self._index = self._load_index()
        finally:
            self.lock.release()
        return True

    def _load_index(self) -> VectorIndex:
        if self.dimension is None:
            return VectorIndex.flat(1)
        with self.db.read() as session:
            state = q.get_index_state(session)
            watermark, checksum, dirty = state.watermark, state.checksum, state.dirty
            self._deletions_seen = state.deletions or 0
        index = None
        if not dirty and checksum is not None:
            try:
                index = load_index(self.index_path, checksum)
            except IndexFileError:
                index = None
        if index is None or index.dimension != self.dimension:
            return self._build_from_db(persist=self.lock.held)
        self._index_seq = self._saved_seq = watermark
        if self._replay(index) and self.lock.held:
            self._save_if_due(index)
        return index

    def _replay(self, index: VectorIndex) -> int:
        """Add rows committed after ``self._index_seq``; returns how many."""
        added = 0
        with self.db.read() as session:
            for ids, matrix, last in q.iter_embeddings(
                session, self.dimension, self.embedding_dtype, after_seq=self._index_seq
            ):
                index.add(ids, matrix)
                added += len(ids)
                self._index_seq = last
        return added

    def refresh(self) -> None:
        """Catch up with what other processes committed since the index was loaded.

        New rows are replayed; if sentences were deleted meanwhile (the deletion
        counter moved), the index is loaded afresh. Both checks are single indexed
        lookups, so a refresh costs the same on any store size.
        """
        if self._index is None:
            self.index
            return
        with self.db.read() as session:
            deletions = q.deletion_count(session)
            newest = q.max_seq(session)
        if deletions == self._deletions_seen and newest <= self._index_seq:
            return
        with self._rw.write():
            if deletions != self._deletions_seen:
                self._index = self._load_index()
            elif newest > self._index_seq:
                self._replay(self._index)

    def _training_sample(self, session, n: int) -> np.ndarray | None:
        if n <= self.flat_max:
            return None
        parts, got = [], 0
        for _, matrix, _ in q.iter_embeddings(session, self.dimension, self.embedding_dtype):
            parts.append(matrix)
            got += len(matrix)
            if got >= TRAIN_SAMPLE:
                break
        return np.vstack(parts)

    def _build_from_db(self, persist: bool) -> VectorIndex:
        with self.db.read() as session:
            self._deletions_seen = q.deletion_count(session)
            n = q.count_sentences(session)
            index = VectorIndex.for_size(self.dimension, n, self._training_sample(session, n), self.flat_max)
            watermark = 0
            for ids, matrix, last in q.iter_embeddings(session, self.dimension, self.embedding_dtype):
                index.add(ids, matrix)
                watermark = last
        self._index_seq = watermark
        if persist:
            self._save(index, watermark)
        return index

    def _save(self, index: VectorIndex, watermark: int | None = None) -> None:
        if watermark is None:
            watermark = self._index_seq
        with self._rw.read():
            checksum = index.save(self.index_path)
        with self.db.write() as session:
            q.set_index_state(session, watermark=watermark, checksum=checksum, ntotal=index.ntotal, index_type=index.kind)
        self._last_save = time.monotonic()
        self._saved_seq = watermark

    def _save_if_due(self, index: VectorIndex) -> None:
        """Save after a write unless the unsaved tail is a small part of a large index.

        Rows past the file's watermark are safe in the database and replayed on
        open, so a 1,000-sentence batch on a million-sentence store need not
        rewrite a gigabyte-sized file; small indexes are always saved. (A long
        ingest also saves every ``SAVE_INTERVAL_S`` seconds of its own work, which
        bounds the replay after a crash.)
        """
        unsaved = self._index_seq - self._saved_seq
        if unsaved <= 0 and self.index_path.exists():
            return
        if index.ntotal <= SMALL_INDEX or unsaved >= UNSAVED_FRACTION * index.ntotal:
            self._save(index)

    def rebuild_index(self) -> dict[str, Any]:
        """Rebuild the FAISS file from the stored embeddings (no re-embedding)."""
        started = time.perf_counter()
        with self.lock, self._rw.write():
            self._index = self._build_from_db(persist=True)
        return {"indexed": self._index.ntotal, "index_type": self._index.kind, "seconds": round(time.perf_counter() - started, 3)}

    def _maybe_upgrade_index(self) -> bool:
        if self._index is not None and self._index.is_exact and self._index.ntotal > self.flat_max:
            with self._rw.write():
                self._index = self._build_from_db(persist=False)
            return True
        return False

    # -- writing -------------------------------------------------------------------

    def _ensure_info(self) -> None:
        if self.model_name is not None:
            return
        enc = self.encoder
        with self.db.write() as session:
            info = q.get_info(session)
            if info is None:
                info = q.init_info(session, enc.model_name, int(enc.dimension))
            self.model_name, self.dimension, self.embedding_dtype = info.model_name, info.dimension, info.embedding_dtype
        self._check_model()
        with self._rw.write():
            self._index = None

    def ingest(
        self,
        texts: Iterable[str],
        metadata: Iterable[dict[str, Any] | None] | None = None,
        *,
        source: str = "<python>",
        progress: Progress | None = None,
    ) -> IngestReport:
        """Add sentences (and optional metadata dicts, one per sentence)."""
        metas = iter(metadata) if metadata is not None else None
        records = (
            readers.Record(normalize_text(t), (next(metas) if metas else None) or {}, source, i + 1)
            for i, t in enumerate(texts)
        )
        return self.ingest_records(records, source=source, progress=progress, count_empty=True)

    def ingest_file(
        self,
        path: str | Path,
        *,
        format: str = "auto",
        text_column: str = "text",
        text_field: str = "text",
        skip_invalid: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Ingest a text, CSV/TSV or JSONL file, or standard input for ``"-"``."""
        stats = readers.ReadStats()
        records = readers.read_records(
            path, format=format, text_column=text_column, text_field=text_field, skip_invalid=skip_invalid, stats=stats
        )
        name = "<stdin>" if str(path) == "-" else str(path)
        return self.ingest_records(records, source=name, progress=progress, stats=stats)

    def ingest_records(
        self,
        records: Iterable[readers.Record],
        *,
        source: str,
        progress: Progress | None = None,
        stats: readers.ReadStats | None = None,
        count_empty: bool = False,
    ) -> IngestReport:
        report = IngestReport(source=source)
        started = time.perf_counter()
        call_started = time.monotonic()
        with self.lock:
            self._ensure_info()
            self.refresh()
            index = self.index
            with self.db.write() as session:
                ingest_id = q.start_ingest(session, source)
            try:
                for batch in _batched(records, self.batch_size):
                    if count_empty:
                        kept = [r for r in batch if r.text]
                        report.empty += len(batch) - len(kept)
                        batch = kept
                    self._ingest_batch(batch, index, report, ingest_id)
                    report.read += len(batch)
                    if progress:
                        progress(len(batch))
                    if time.monotonic() - max(self._last_save, call_started) > SAVE_INTERVAL_S:
                        self._save(index)
            except IndexerError as exc:
                exc.partial_report = report
                raise
            finally:
                if stats is not None:
                    report.empty, report.invalid, report.errors = stats.empty, stats.invalid, list(stats.errors)
                with self.db.write() as session:
                    q.update_ingest(session, ingest_id, finished=True, empty=report.empty, invalid=report.invalid)
                if self._maybe_upgrade_index():
                    self._save(self._index)
                else:
                    self._save_if_due(self._index)
                report.seconds = time.perf_counter() - started
        return report

    def _ingest_batch(self, batch: list[readers.Record], index: VectorIndex, report: IngestReport, ingest_id: int) -> None:
        fresh: dict[str, readers.Record] = {}
        for rec in batch:
            fresh.setdefault(text_hash(rec.text), rec)
        dups = len(batch) - len(fresh)
        with self.db.read() as session:
            known = q.existing_hashes(session, fresh.keys())
        for h in known:
            del fresh[h]
        dups += len(known)
        report.duplicates += dups
        if not fresh:
            with self.db.write() as session:
                q.update_ingest(session, ingest_id, duplicates=dups)
            return
        hashes = list(fresh)
        recs = [fresh[h] for h in hashes]
        vectors = self.encoder.encode([r.text for r in recs])
        blobs = q.encode_embeddings(vectors, self.embedding_dtype)
        rows = [
            q.NewSentence(r.text, h, b, r.metadata or None, r.source, r.line)
            for r, h, b in zip(recs, hashes, blobs)
        ]
        with self._rw.write():  # readers see the batch in the database, index and run at once
            with self.db.write() as session:
                ids, seqs = q.insert_sentences(session, rows)
                q.update_ingest(session, ingest_id, added=len(ids), duplicates=dups)
                after_commit = None
                if self.listener is not None:
                    after_commit = self.listener.on_insert(session, np.asarray(ids, dtype=np.int64), vectors,
                                                           [r.text for r in recs], int(seqs[-1]))
            if after_commit is not None:
                for key, value in (after_commit() or {}).items():
                    report.clustering[key] = report.clustering.get(key, 0) + value
            index.add(np.asarray(ids, dtype=np.int64), vectors)
            self._index_seq = max(self._index_seq, int(seqs[-1]))
        report.added += len(ids)
        report.ids.extend(ids)

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Remove sentences from the database and the index; returns the ids removed."""
        with self.lock:
            self.refresh()
            index = self.index
            after_commit = None
            with self._rw.write():
                with self.db.write() as session:
                    if self.listener is not None:
                        present = q.existing_ids(session, ids)
                        if present:
                            after_commit = self.listener.on_delete(session, present)
                    removed = q.delete_sentences(session, ids)
                    if removed:
                        self._deletions_seen = q.mark_index_dirty(session)
                if after_commit is not None:
                    after_commit()
                if removed:
                    index.remove(removed)
            if removed:
                self._save(index)
        return removed

    # -- reading -------------------------------------------------------------------

    def search(self, text: str, k: int = 10) -> list[Hit]:
        """The ``k`` stored sentences nearest to ``text``, most similar first."""
        if not self.count():
            return []
        query = self.embed([text])
        return self.search_vector(query[0], k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[Hit]:
        self.refresh()
        with self.reading():
            result = self.index.search(vector[None, :], k)
        pairs = [(int(i), float(s)) for i, s in zip(result.ids[0], result.similarities[0]) if i >= 0]
        with self.db.read() as session:
            rows = q.get_sentences(session, [i for i, _ in pairs])
            return [
                Hit(i, rows[i].text, s, rows[i].meta, f"{rows[i].source_file}:{rows[i].source_line}")
                for i, s in pairs
                if i in rows
            ]

    def count(self) -> int:
        with self.db.read() as session:
            return q.count_sentences(session)

    def get(self, ids: Sequence[int]) -> dict[int, Any]:
        with self.db.read() as session:
            return q.get_sentences(session, ids)

    def embeddings(self, ids: Sequence[int] | None = None, up_to_seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 embeddings) from the database: ``ids`` in that order, else all
        sentences (up to sequence number ``up_to_seq``) in insertion order."""
        if self.dimension is None:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        with self.db.read() as session:
            if ids is not None:
                ids = np.asarray(list(ids), dtype=np.int64)
                return ids, q.embeddings_for(session, ids.tolist(), self.dimension, self.embedding_dtype)
            id_parts, parts = [], []
            for batch_ids, matrix, _ in q.iter_embeddings(
                session, self.dimension, self.embedding_dtype, up_to_seq=up_to_seq
            ):
                id_parts.append(batch_ids)
                parts.append(matrix)
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dimension), np.float32)
        return np.concatenate(id_parts), np.vstack(parts)

    def stats(self) -> dict[str, Any]:
        with self.db.read() as session:
            totals = q.ingest_totals(session)
            state = q.get_index_state(session)
            n = q.count_sentences(session)
            last = q.max_seq(session)
            out = {
                "sentences": n,
                "duplicates_skipped": totals["duplicates"],
                "empty_skipped": totals["empty"],
                "invalid_skipped": totals["invalid"],
                "ingests": totals["ingests"],
                "model": self.model_name,
                "dimension": self.dimension,
                "database": describe_url(self.db_url),
                "data_dir": str(self.data_dir),
                "index": {
                    "file": str(self.index_path),
                    "exists": self.index_path.exists(),
                    "bytes": self.index_path.stat().st_size if self.index_path.exists() else 0,
                    "type": state.index_type,
                    "indexed": state.ntotal,
                    "watermark": state.watermark,
                    "pending": n - q.count_up_to(session, state.watermark),
                    "dirty": state.dirty,
                    "max_seq": last,
                },
            }
        return out

    def verify(self) -> VerifyReport:
        """Check that the index file and the database agree, without changing either."""
        problems: list[str] = []
        with self.db.read() as session:
            state = q.get_index_state(session)
            watermark, checksum, dirty = state.watermark, state.checksum, state.dirty
            db_ids = q.all_ids(session, up_to_seq=watermark)
            n = q.count_sentences(session)
        indexed = 0
        if dirty:
            problems.append("a deletion was not yet applied to the index file")
        if n == 0 and not self.index_path.exists():
            return VerifyReport(not problems, problems, 0, 0, watermark)
        try:
            index = load_index(self.index_path, checksum)
        except IndexFileError as exc:
            problems.append(str(exc))
        else:
            file_ids = index.ids()
            indexed = len(file_ids)
            uniq = np.unique(file_ids)
            if len(uniq) != len(file_ids):
                problems.append(f"{len(file_ids) - len(uniq)} duplicate ids in the index")
            missing = np.setdiff1d(db_ids, uniq)
            extra = np.setdiff1d(uniq, db_ids)
            if len(missing):
                problems.append(f"{len(missing)} sentences up to the watermark are missing from the index (e.g. id {missing[0]})")
            if len(extra):
                problems.append(f"{len(extra)} ids in the index are not in the database (e.g. id {extra[0]})")
            if self.dimension and index.dimension != self.dimension:
                problems.append(f"index dimension {index.dimension} != store dimension {self.dimension}")
        return VerifyReport(not problems, problems, n, indexed, watermark)
