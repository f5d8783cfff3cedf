"""The seam between the sentence store and whatever keeps state about its sentences.

The store knows nothing of clusters: a layer above hands it a listener, and the store calls
it inside the transaction that inserts or deletes sentences, so the listener's own writes
commit or roll back with the sentences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

AfterCommit = Callable[[], "dict[str, int] | None"]


class StoreListener(Protocol):
    def on_insert(
        self, session: Any, ids: np.ndarray, vectors: np.ndarray, texts: list[str], max_seq: int
    ) -> AfterCommit | None:
        """A batch was inserted (not yet added to the FAISS index). May return a callable run
        once the transaction has committed; the counts it returns are summed into the
        ingest report's ``clustering``."""

    def on_delete(self, session: Any, ids: Sequence[int]) -> AfterCommit | None:
        """Sentences ``ids`` are being deleted in this transaction (their rows still exist)."""

    # Optional: ``on_writer(session)`` is called, when the listener has it, each time this
    # store takes the writer lock, so the listener can clean up after a writer that was
    # killed while holding it (e.g. mark its unfinished work as interrupted).
