"""The sentence store: database rows, embeddings and a FAISS index kept in step.

Writes (ingest, delete, rebuild) hold the writer lock: a file in the data folder on SQLite,
a database advisory lock on PostgreSQL (shared by every host using the database). The
ingest pipeline lives in :mod:`indexer.ingest`, the upkeep of the data folder's index file
(load, replay, rebuild, save, verify against its watermark) in :mod:`indexer.index_cache`;
this class ties them to one data folder and one database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import readers
from indexer.errors import IndexerError, InvalidArgumentError
from indexer.index_cache import IndexCache, VerifyReport
from indexer.ingest import PYTHON_SOURCE, IngestReport, Progress, ingest_records, python_records
from indexer.listener import StoreListener
from indexer.lock import DatabaseWriterLock, WriterLock
from indexer.normalize import normalize_text
from indexer.replica import LookupCopy
from indexer.vector_index import FLAT_MAX, VectorIndex
from storage import sentences as q
from storage.db import CONNECT_TIMEOUT_S, Database, describe_url, sqlite_url
from storage.errors import ModelMismatchError

__all__ = ["Hit", "IngestReport", "SentenceStore", "StoreNotFoundError", "VerifyReport", "make_encoder"]

DEFAULT_DATA_DIR = "clusterer-data"
DB_FILE = "clusterer.db"
INDEX_FILE = "index.faiss"
LOCK_FILE = "writer.lock"


class StoreNotFoundError(IndexerError):
    """No store exists at the given place yet."""


@dataclass
class Hit:
    id: int
    text: str
    similarity: float
    metadata: dict[str, Any] | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        connect_timeout: float = CONNECT_TIMEOUT_S,
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
        if not create and db_url is None and not (self.data_dir / DB_FILE).exists():
            raise StoreNotFoundError(f"no store in {self.data_dir} (run `clusterer ingest` first)")
        if create and db_url is None:
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreNotFoundError(f"cannot create the data folder {self.data_dir}: {exc.strerror}") from None
        self.db = Database(self.db_url, create=create, connect_timeout=connect_timeout)
        if self.db.dialect == "postgresql":
            self.lock: Any = DatabaseWriterLock(self.db, self.data_dir, timeout=lock_timeout)
        else:
            self.lock = WriterLock(self.data_dir / LOCK_FILE, timeout=lock_timeout)
        self.lock.on_acquire = self._writer_opened
        self.db.migrate()
        with self.db.read() as session:
            info = q.get_info(session)
            self.model_name = info.model_name if info else None
            self.dimension = info.dimension if info else None
            self.embedding_dtype = info.embedding_dtype if info else "float32"
        self.cache = IndexCache(self.db, self.data_dir, self.index_path, self.lock, flat_max)
        self.cache.configure(self.dimension, self.embedding_dtype)
        self.lookup_copy = LookupCopy(self.cache)
        self._check_model()
        if recover:
            self.recover()

    @classmethod
    def open(cls, data_dir: str | Path = DEFAULT_DATA_DIR, **kwargs) -> SentenceStore:
        return cls(data_dir, **kwargs)

    def close(self) -> None:
        self.lock.release()
        self.db.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _writer_opened(self) -> None:
        hook = getattr(self.listener, "on_writer", None)
        if hook is not None:
            with self.db.write() as session:
                hook(session)

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
            raise ModelMismatchError(f"this store holds {self.dimension}-d embeddings; the encoder gives {dim}-d")

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = make_encoder(self._model or self.model_name, device=self._device, precision=self._precision)
            self._check_model()
        return self._encoder

    def wrap_encoder(self, wrap) -> None:
        """Use ``wrap(encoder)`` as the encoder from now on (the model is loaded first); the
        wrapper must keep the encoder's ``model_name``, ``dimension`` and ``encode``."""
        self._encoder = wrap(self.encoder)
        self._check_model()

    def embed(self, texts: Sequence[str], encoder: Any = None) -> np.ndarray:
        """Embeddings of ``texts`` (as ingest would store them), by ``encoder`` when given (the
        store's model behind another wrapper than the store's); an empty text is an error."""
        normalised = [normalize_text(t) for t in texts]
        if any(not t for t in normalised):
            raise InvalidArgumentError("the text is empty: give a sentence to compare")
        return (encoder or self.encoder).encode(normalised)

    def _ensure_info(self) -> None:
        if self.model_name is not None:
            return
        enc = self.encoder
        with self.db.write() as session:
            info = q.get_info(session)
            if info is None:
                info = q.init_info(session, enc.model_name, int(enc.dimension))
        self._adopt_info(info)

    def _adopt_info(self, info) -> None:
        """Take the model, dimension and dtype recorded in the store; check the encoder
        matches and size the index cache to them."""
        self.model_name, self.dimension, self.embedding_dtype = (
            info.model_name,
            info.dimension,
            info.embedding_dtype,
        )
        self._check_model()
        self.cache.configure(self.dimension, self.embedding_dtype)

    # -- the index -----------------------------------------------------------------

    @property
    def index(self) -> VectorIndex:
        return self.cache.index

    def lookup_index(self) -> VectorIndex:
        """The index lookups and unfiltered searches use: the cache's, or its coded copy once
        :attr:`lookup_copy` is enabled and the copy is built (see :mod:`indexer.replica`)."""
        return self.lookup_copy.index()

    def reading(self):
        """Hold while searching the in-memory index from several threads: no batch, replay or
        swap changes it meanwhile (call :meth:`refresh` before, not inside)."""
        return self.cache.rw.read()

    def recover(self) -> bool:
        """Bring the index file up to date with the database if no writer is busy.

        Replays rows committed after the file's watermark and rebuilds a missing, damaged
        or stale file. Returns False when another process holds the writer lock (it will
        do the same when it finishes) or the data folder is read-only.
        """
        from indexer.errors import ReadOnlyStoreError

        try:
            return self.cache.recover()
        except ReadOnlyStoreError:
            return False

    def refresh(self) -> None:
        """Catch up with what other processes committed since the index was loaded."""
        if self.model_name is None:  # opened empty: another process may have stored the first rows
            with self.db.read() as session:
                info = q.get_info(session)
            if info is not None:
                self._adopt_info(info)
        self.cache.refresh()

    def rebuild_index(self) -> dict[str, Any]:
        """Rebuild the FAISS file from the stored embeddings (no re-embedding)."""
        return self.cache.rebuild()

    def repair(self) -> dict[str, Any]:
        """Bring the index file in line with the database, replaying when that is enough."""
        return self.cache.repair()

    def verify(self) -> VerifyReport:
        """Check that the index file and the database agree, without changing either."""
        return self.cache.verify()

    # -- writing -------------------------------------------------------------------

    def ingest(
        self,
        texts: Iterable[str],
        metadata: Iterable[dict[str, Any] | None] | None = None,
        *,
        source: str = PYTHON_SOURCE,
        progress: Progress | None = None,
        near_duplicates: float | None = None,
    ) -> IngestReport:
        """Add sentences (and optional metadata dicts, one per sentence).

        ``near_duplicates``: skip a sentence whose nearest stored sentence (or an earlier kept
        sentence of the same batch) has cosine similarity >= this value; counted apart from exact
        duplicates in ``report.near_duplicates``."""
        return self.ingest_records(
            python_records(texts, metadata, source),
            source=source,
            progress=progress,
            count_empty=True,
            near_duplicates=near_duplicates,
        )

    def ingest_file(
        self,
        path: str | Path,
        *,
        format: str = "auto",
        text_column: str = "text",
        text_field: str = "text",
        skip_invalid: bool = False,
        progress: Progress | None = None,
        near_duplicates: float | None = None,
    ) -> IngestReport:
        """Ingest a text, CSV/TSV or JSONL file, or standard input for ``"-"``."""
        stats = readers.ReadStats()
        records = readers.read_records(
            path, format=format, text_column=text_column, text_field=text_field, skip_invalid=skip_invalid, stats=stats
        )
        name = "<stdin>" if str(path) == "-" else str(path)
        return self.ingest_records(
            records, source=name, progress=progress, stats=stats, near_duplicates=near_duplicates
        )

    def ingest_records(
        self,
        records: Iterable[readers.Record],
        *,
        source: str,
        progress: Progress | None = None,
        stats: readers.ReadStats | None = None,
        count_empty: bool = False,
        near_duplicates: float | None = None,
    ) -> IngestReport:
        return ingest_records(
            self,
            records,
            source=source,
            progress=progress,
            stats=stats,
            count_empty=count_empty,
            near_duplicates=near_duplicates,
        )

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Remove sentences from the database and the index; returns the ids removed."""
        with self.lock:
            self.refresh()
            self.cache.index  # noqa: B018  (loaded before the rows go)
            after_commit = None
            deletions: int | None = None
            with self.cache.rw.write():
                with self.db.write() as session:
                    if self.listener is not None:
                        present = q.existing_ids(session, ids)
                        if present:
                            after_commit = self.listener.on_delete(session, present)
                    removed = q.delete_sentences(session, ids)
                    if removed:
                        deletions = q.mark_index_dirty(session)
                if after_commit is not None:
                    after_commit()
                if deletions is not None:
                    self.cache.removed(removed, deletions)
        return removed

    # -- reading -------------------------------------------------------------------

    def search(self, text: str, k: int = 10, where: Any = None) -> list[Hit]:
        """The ``k`` stored sentences nearest to ``text``, most similar first; ``where`` (a
        ``--where`` string, list or dict, see :mod:`storage.filters`) restricts them to a subset."""
        if not normalize_text(text):
            raise InvalidArgumentError("the text is empty: give a sentence to search for")
        if not self.count():
            return []
        query = self.embed([text])
        return self.search_vector(query[0], k, where=where)

    def search_vector(self, vector: np.ndarray, k: int = 10, where: Any = None) -> list[Hit]:
        self.refresh()
        allowed = None
        if where is not None:
            from storage import filters

            with self.db.read() as session:
                flt = filters.check_fields(session, where)
                allowed = filters.filtered_ids(session, flt) if flt else None
        with self.reading():
            if allowed is not None:
                result = self.index.search_within(vector[None, :], k, allowed)
            else:
                result = self.lookup_index().search(vector[None, :], k)
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

    def embeddings(
        self, ids: Sequence[int] | None = None, up_to_seq: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 embeddings) from the database: ``ids`` in that order, else all
        sentences (up to sequence number ``up_to_seq``) in insertion order."""
        if self.dimension is None:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        with self.db.read() as session:
            if ids is not None:
                wanted = np.asarray(list(ids), dtype=np.int64)
                return wanted, q.embeddings_for(session, wanted.tolist(), self.dimension, self.embedding_dtype)
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
            near = q.near_duplicates_total(session)
            n = q.count_sentences(session)
        return {
            "sentences": n,
            "duplicates_skipped": totals["duplicates"],
            "near_duplicates_skipped": near,
            "empty_skipped": totals["empty"],
            "invalid_skipped": totals["invalid"],
            "ingests": totals["ingests"],
            "model": self.model_name,
            "dimension": self.dimension,
            "database": describe_url(self.db_url),
            "data_dir": str(self.data_dir),
            "read_only": self.db.read_only,
            "index": self.cache.state(),
        }
