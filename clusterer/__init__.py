"""clusterer: cluster sentences at scale on a persistent FAISS index with SQL metadata."""

from __future__ import annotations

__all__ = ["Store"]


def __getattr__(name):
    if name == "Store":
        from clusterer.api import Store

        return Store
    raise AttributeError(name)
