"""The FAISS file of one data folder, kept in step with the database it caches.

The database is the truth and may be shared by several hosts; each data folder holds its
own index file and its own record in the database (keyed by the identity in the folder's
``folder-id`` file): the highest sequence number the file covers (the watermark), its
checksum, and the value of the store's deletion counter it reflects. Loading replays rows
past the watermark and rebuilds a missing, damaged or stale file from the stored
embeddings; saving writes the file atomically and then its record. Only a holder of the
writer lock saves.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.rwlock import ReadWriteLock
from indexer.vector_index import TRAIN_SAMPLE, IndexFileError, VectorIndex, checksum_bytes, load_index
from storage import sentences as q

FOLDER_ID_FILE = "folder-id"
SAVE_INTERVAL_S = 60.0
SMALL_INDEX = 100_000
UNSAVED_FRACTION = 0.02
REPLAY_REPAIR_FRACTION = 0.5
STATS_HASH_MAX_BYTES = 64 << 20


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str]
    sentences: int
    indexed: int
    watermark: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_folder_id(folder: Path, create: bool) -> str | None:
    """The identity stored in ``folder`` (made on first use when ``create``), else None."""
    path = folder / FOLDER_ID_FILE
    try:
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value
    except (OSError, UnicodeDecodeError):
        pass
    if not create:
        return None
    value = uuid.uuid4().hex
    tmp = folder / f".{FOLDER_ID_FILE}.{os.getpid()}.tmp"
    tmp.write_text(value + "\n", encoding="ascii")
    os.replace(tmp, path)
    return value


class IndexCache:
    """Load, replay, rebuild, save and verify the FAISS file of one data folder."""

    def __init__(self, db: Any, data_dir: Path, index_path: Path, lock: Any, flat_max: int):
        self.db = db
        self.data_dir = data_dir
        self.index_path = index_path
        self.lock = lock
        self.flat_max = flat_max
        self.dimension: int | None = None
        self.dtype = "float32"
        self.index_seq = 0
        self.last_load: str | None = None
        self.last_save = time.monotonic()
        self._index: VectorIndex | None = None
        self._saved_seq = 0
        self._deletions_seen = 0
        self._folder_id: str | None = None
        self.rw = ReadWriteLock()

    def configure(self, dimension: int | None, dtype: str) -> None:
        with self.rw.write():
            self.dimension, self.dtype = dimension, dtype
            self._index = None

    @property
    def folder_id(self) -> str | None:
        if self._folder_id is None:
            self._folder_id = read_folder_id(self.data_dir, create=self.lock.held)
        return self._folder_id

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            with self.rw.write():
                if self._index is None:
                    self._index = self.load()
        return self._index

    @index.setter
    def index(self, value: VectorIndex | None) -> None:
        self._index = value

    @property
    def loaded(self) -> bool:
        return self._index is not None

    @property
    def version(self) -> tuple[int, int]:
        """(the last sequence number in the index, the deletions it reflects): a change of
        either means the store changed."""
        return self.index_seq, self._deletions_seen

    @property
    def current(self) -> VectorIndex | None:
        """The index in memory (None before the first load), without loading it."""
        return self._index

    # -- loading -------------------------------------------------------------------

    def _record(self, session):
        state = q.get_cache_state(session, self.folder_id)
        return state

    def load(self) -> VectorIndex:
        """The index from the file when its record matches, replayed; else rebuilt."""
        if self.dimension is None:
            return VectorIndex.flat(1)
        if self.lock.held and self.folder_id is not None:
            with self.db.write() as session:
                if q.get_cache_state(session, self.folder_id) is None:
                    q.adopt_legacy_state(session, self.folder_id)
        with self.db.read() as session:
            deletions = q.deletion_count(session)
            state = self._record(session)
            record = None if state is None else (state.watermark, state.checksum, state.deletions)
        index = None
        if record is not None and record[1] is not None and record[2] == deletions:
            try:
                index = load_index(self.index_path, record[1])
            except IndexFileError:
                index = None
        if index is None or index.dimension != self.dimension:
            self.last_load = "rebuilt"
            return self.build(persist=self.lock.held)
        assert record is not None, "a file is loaded only when its record matches"
        self._deletions_seen = deletions
        self.index_seq = self._saved_seq = record[0]
        replayed = self.replay(index)
        self.last_load = "replayed" if replayed else "loaded"
        if replayed and self.lock.held:
            self.save_if_due(index)
        return index

    def replay(self, index: VectorIndex) -> int:
        """Add rows committed after ``index_seq``; returns how many."""
        if self.dimension is None:  # nothing stored yet (the store configures the cache first)
            return 0
        added = 0
        with self.db.read() as session:
            for ids, matrix, last in q.iter_embeddings(session, self.dimension, self.dtype, after_seq=self.index_seq):
                index.add(ids, matrix)
                added += len(ids)
                self.index_seq = last
        return added

    def recover(self) -> bool:
        """Bring the file up to date with the database if no writer is busy (False if one is)."""
        if self.dimension is None or not self.lock.try_acquire():
            return False
        try:
            with self.rw.write():
                self._index = self.load()
        finally:
            self.lock.release()
        return True

    def refresh(self) -> None:
        """Catch up with what other processes committed since the index was loaded: new
        rows are replayed; after a deletion elsewhere the index is loaded afresh. Both
        checks are single indexed lookups."""
        if self._index is None:
            self.index  # noqa: B018  (loaded now, so that readers never load it under the read lock)
            return
        with self.db.read() as session:
            deletions, newest = q.change_marks(session)
        if deletions == self._deletions_seen and newest <= self.index_seq:
            return
        with self.rw.write():  # re-checked inside: two threads never replay the same rows
            if deletions != self._deletions_seen:
                self._index = self.load()
            elif newest > self.index_seq:
                self.replay(self._index)

    def _training_sample(self, session, dimension: int, n: int) -> np.ndarray | None:
        if n <= self.flat_max:
            return None
        parts, got = [], 0
        for _, matrix, _ in q.iter_embeddings(session, dimension, self.dtype):
            parts.append(matrix)
            got += len(matrix)
            if got >= TRAIN_SAMPLE:
                break
        return np.vstack(parts)

    def build(self, persist: bool) -> VectorIndex:
        """A new index from every stored embedding (no re-embedding)."""
        dimension = self.dimension
        if dimension is None:  # nothing stored yet: the same placeholder as load()
            return VectorIndex.flat(1)
        with self.db.read() as session:
            self._deletions_seen = q.deletion_count(session)
            n = q.count_sentences(session)
            index = VectorIndex.for_size(dimension, n, self._training_sample(session, dimension, n), self.flat_max)
            watermark = 0
            for ids, matrix, last in q.iter_embeddings(session, dimension, self.dtype):
                index.add(ids, matrix)
                watermark = last
        self.index_seq = watermark
        if persist:
            self.save(index, watermark)
        return index

    # -- writing (writer lock held) ------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, last_seq: int) -> None:
        self.index.add(ids, vectors)
        self.index_seq = max(self.index_seq, int(last_seq))

    def removed(self, ids, deletions: int) -> None:
        """Sentences ``ids`` were deleted (the deletion counter is now ``deletions``)."""
        self._deletions_seen = deletions
        self.index.remove(ids)
        self.save(self.index)

    def save(self, index: VectorIndex, watermark: int | None = None) -> None:
        if watermark is None:
            watermark = self.index_seq
        folder_id = self.folder_id
        with self.rw.read():
            checksum = index.save(self.index_path)
        if folder_id is not None:
            with self.db.write() as session:
                q.set_cache_state(
                    session,
                    folder_id,
                    watermark=watermark,
                    checksum=checksum,
                    ntotal=index.ntotal,
                    file_bytes=self.index_path.stat().st_size,
                    index_type=index.kind,
                    deletions=self._deletions_seen,
                    host=socket.gethostname(),
                    data_dir=str(self.data_dir.resolve()),
                )
        self.last_save = time.monotonic()
        self._saved_seq = watermark

    def save_if_due(self, index: VectorIndex) -> None:
        """Save after a write unless the unsaved tail is a small part of a large index.

        Rows past the file's watermark are safe in the database and replayed on open, so
        a 1,000-sentence batch on a million-sentence store need not rewrite a
        gigabyte-sized file; small indexes are always saved.
        """
        unsaved = self.index_seq - self._saved_seq
        if unsaved <= 0 and self.index_path.exists():
            return
        if index.ntotal <= SMALL_INDEX or unsaved >= UNSAVED_FRACTION * index.ntotal:
            self.save(index)

    def finish_write(self) -> None:
        """After a write: move a flat index that outgrew ``flat_max`` to IVF, save if due."""
        if self._index is None:
            return
        if self._index.is_exact and self._index.ntotal > self.flat_max:
            with self.rw.write():
                self._index = self.build(persist=False)
            self.save(self._index)
        else:
            self.save_if_due(self._index)

    def rebuild(self) -> dict[str, Any]:
        started = time.perf_counter()
        with self.lock, self.rw.write():
            index = self._index = self.build(persist=True)
            self.last_load = "rebuilt"
        return {"indexed": index.ntotal, "index_type": index.kind, "seconds": round(time.perf_counter() - started, 3)}

    def repair(self) -> dict[str, Any]:
        """Bring the file in line with the database: add missing rows and drop ids no longer
        stored when the file itself is sound; rebuild only a missing, damaged or
        inconsistent file (or one missing more than half the rows)."""
        started = time.perf_counter()
        with self.lock:
            action, added, removed = self._repair()
            self.last_load = action if action != "none" else self.last_load
        index = self.index
        return {
            "action": action,
            "added": added,
            "removed": removed,
            "indexed": index.ntotal,
            "index_type": index.kind,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _repair(self) -> tuple[str, int, int]:
        if self.dimension is None:
            return "none", 0, 0
        with self.db.read() as session:
            state = self._record(session)
            checksum = None if state is None else state.checksum
            deletions = q.deletion_count(session)
            db_ids = q.all_ids(session)
            newest = q.max_seq(session)
        index = None
        if checksum is not None:
            try:
                index = load_index(self.index_path, checksum)
            except IndexFileError:
                index = None
        if index is not None and index.dimension == self.dimension:
            file_ids = index.ids()
            uniq = np.unique(file_ids)
            missing = np.setdiff1d(db_ids, uniq)
            extra = np.setdiff1d(uniq, db_ids)
            if len(uniq) == len(file_ids) and len(missing) <= REPLAY_REPAIR_FRACTION * max(len(db_ids), 1):
                if not len(missing) and not len(extra) and state.deletions == deletions and state.watermark == newest:
                    self._index, self.index_seq, self._saved_seq = index, newest, newest
                    self._deletions_seen = deletions
                    return "none", 0, 0
                if len(extra):
                    index.remove(extra)
                with self.db.read() as session:
                    for chunk_start in range(0, len(missing), 20_000):
                        chunk = missing[chunk_start : chunk_start + 20_000]
                        index.add(chunk, q.embeddings_for(session, chunk.tolist(), self.dimension, self.dtype))
                self._deletions_seen = deletions
                self.index_seq = newest
                self._index = index
                self.save(index, newest)
                return "replayed", len(missing), len(extra)
        self._index = self.build(persist=True)
        return "rebuilt", len(db_ids), 0

    # -- checking ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """This folder's record and the store's counters, for ``stats``."""
        with self.db.read() as session:
            state = self._record(session)
            deletions = q.deletion_count(session)
            n = q.count_sentences(session)
            last = q.max_seq(session)
            watermark = state.watermark if state else 0
            pending = n - q.count_up_to(session, watermark)
            size = self.index_path.stat().st_size if self.index_path.exists() else 0
            out = {
                "file": str(self.index_path),
                "folder_id": self.folder_id,
                "exists": self.index_path.exists(),
                "bytes": size,
                "type": state.index_type if state else None,
                "indexed": state.ntotal if state else 0,
                "watermark": watermark,
                "pending": pending,
                "dirty": bool(state) and state.deletions != deletions,
                "max_seq": last,
            }
        out["damaged"] = state is not None and not self._file_matches(state, size)
        if out["damaged"]:
            out["indexed"] = 0
        return out

    def _file_matches(self, state, size: int) -> bool:
        """Whether the file is the one the record describes: its size always, its checksum
        too when it is small enough to hash at once (verify hashes any size)."""
        if not size or (state.file_bytes is not None and size != state.file_bytes):
            return False
        if size > STATS_HASH_MAX_BYTES:
            return True
        try:
            return checksum_bytes(self.index_path.read_bytes()) == state.checksum
        except OSError:
            return False

    def verify(self) -> VerifyReport:
        """Check that this folder's index file and the database agree, changing neither."""
        problems: list[str] = []
        with self.db.read() as session:
            state = self._record(session)
            deletions = q.deletion_count(session)
            watermark = state.watermark if state else 0
            db_ids = q.all_ids(session, up_to_seq=watermark)
            n = q.count_sentences(session)
        if n == 0 and not self.index_path.exists():
            return VerifyReport(True, [], 0, 0, watermark)
        if state is None:
            problems.append(f"{self.index_path}: no index record for this data folder yet")
            return VerifyReport(False, problems, n, 0, watermark)
        if state.deletions != deletions:
            problems.append("a deletion was not yet applied to the index file")
        indexed = 0
        try:
            index = load_index(self.index_path, state.checksum)
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
                problems.append(
                    f"{len(missing)} sentences up to the watermark are missing from the index (e.g. id {missing[0]})"
                )
            if len(extra):
                problems.append(f"{len(extra)} ids in the index are not in the database (e.g. id {extra[0]})")
            if self.dimension and index.dimension != self.dimension:
                problems.append(f"index dimension {index.dimension} != store dimension {self.dimension}")
        return VerifyReport(not problems, problems, n, indexed, watermark)
