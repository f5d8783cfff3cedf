"""The Python API: a sentence store with clustering on top.

``Store`` mirrors the command line: ``Store.open(path)``, ``store.ingest(texts,
metadata)``, ``store.search(text, k)`` and, from the clustering layer,
``store.cluster(...)`` and the lookups.
"""

from __future__ import annotations

from indexer.store import SentenceStore


class Store(SentenceStore):
    """A sentence store that also runs and maintains clusterings."""
