"""A cluster's card: its row of a run, as the plain :class:`ClusterInfo` every face shows (size,
keywords, centre, representatives, members, name), and the cache of the cards lookups answer with.

A lookup names the cluster a text would join and shows that cluster's card. Cards change only
when the store does, and a busy service answers many lookups with the same few clusters, so
:class:`CardCache` keeps the cards of the latest run for as long as nothing was written: its
entries are keyed by the store's version (:func:`store_version`), which every ingest, deletion,
run and curation edit changes, in this process or any other.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from clusterer.service.lru import LRU
from clusterer.service.views import ClusterInfo, Member
from storage import curation as cur
from storage import sentences as sq


def members_of(rows) -> list[Member]:
    """Member rows (:data:`storage.clusters.MemberRow`) as members."""
    return [Member(i, text, None if sim is None else round(float(sim), 6), meta) for i, text, meta, sim in rows]


def card(
    session,
    cluster,
    members: list[Member] | None = None,
    children: list[int] | None = None,
    texts: dict[int, str] | None = None,
    names: dict[int, str] | None = None,
) -> ClusterInfo:
    """The card of a cluster row. ``texts``: the texts of its centre and representatives, when
    already read; ``names``: the curated names of clusters, when already read."""
    names = cur.names(session, [cluster.label]) if names is None else names
    if texts is None:
        wanted = list(cluster.representatives or [])
        if cluster.centre_id is not None:
            wanted.append(cluster.centre_id)
        texts = sq.texts_for(session, wanted)
    kw = cluster.keywords or []
    return ClusterInfo(
        id=cluster.label,
        run_id=cluster.run_id,
        size=cluster.size,
        keywords=[k[0] for k in kw],
        keyword_scores=[k[1] for k in kw],
        centre_id=cluster.centre_id,
        centre_text=texts.get(cluster.centre_id),
        cohesion=cluster.cohesion,
        representatives=[Member(i, texts.get(i, ""), None) for i in (cluster.representatives or []) if i in texts],
        members=members or [],
        level=cluster.level or "fine",
        parent=cluster.parent_label,
        children=children or [],
        label=names.get(cluster.label),
    )


def store_version(state, index_seq: int, deletions: int) -> tuple[int, int, int, int, int]:
    """What a card depends on: the run (id, sentences, curation edits) and the store (the last
    sequence number indexed, deletions)."""
    edits = int((state.params or {}).get("edits", 0))
    return (state.run_id, state.n_sentences, edits, int(index_seq), int(deletions))


def copy_card(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a card's dict that its receiver may change without touching the cached one."""
    out = dict(data)
    for key in ("keywords", "keyword_scores", "children"):
        out[key] = list(data[key])
    for key in ("representatives", "members"):
        out[key] = [{**m, "metadata": _copy_meta(m.get("metadata"))} for m in data[key]]
    return out


def _copy_meta(meta):
    if isinstance(meta, dict):
        return {k: _copy_meta(v) for k, v in meta.items()}
    if isinstance(meta, list):
        return [_copy_meta(v) for v in meta]
    return meta


class CardCache:
    """The dicts of recent cards of one store version, least recently used dropped first; the
    entries of an older version go when a newer one is first seen. Thread-safe. The dicts are
    shared: hand out a :func:`copy_card` of one, never the dict itself."""

    def __init__(self, size: int = 1024):
        self._cards = LRU(size)
        self._version: Hashable = None
        self._lock = threading.Lock()

    @property
    def hits(self) -> int:
        return self._cards.hits

    def get(self, version: Hashable, key: Hashable) -> dict[str, Any] | None:
        with self._lock:
            if version != self._version:
                self._cards.clear()
                self._version = version
        return self._cards.get(key)

    def put(self, version: Hashable, key: Hashable, data: dict[str, Any]) -> None:
        with self._lock:
            if version == self._version:
                self._cards.put(key, data)


class TextCache:
    """Texts by sentence id. A stored sentence's text never changes and ids are never reused,
    so an entry never goes stale (a deleted sentence is simply no longer found by a search)."""

    def __init__(self, size: int = 65536):
        self._texts = LRU(size)

    def read(self, ids, fetch) -> dict[int, str]:
        """``{id: text}`` of ``ids``, those not held read with ``fetch(missing_ids)``."""
        out: dict[int, str] = {int(i): t for i, t in self._texts.get_many(ids).items()}  # type: ignore[call-overload]
        missing = [i for i in ids if i not in out]
        if missing:
            found = fetch(missing)
            self._texts.put_many(found)
            out.update(found)
        return out


class LabelCache:
    """The labels of sentences under the latest run, for one store version at a time: the memo a
    batch's :class:`clusterer.service.upkeep.Gather` reads through, kept for the next batches
    until the store changes (then a new, empty one). Dropped whole when it outgrows ``size``."""

    def __init__(self, size: int = 200_000):
        self.size = max(0, int(size))
        self._version: Hashable = None
        self._labels: dict[int, Any] = {}
        self._lock = threading.Lock()

    def for_version(self, version: Hashable) -> dict[int, Any]:
        with self._lock:
            if version != self._version or len(self._labels) > self.size:
                self._version, self._labels = version, {}
            return self._labels if self.size else {}


@dataclass
class LookupCaches:
    """What a store's lookups keep between batches (see :func:`clusterer.service.lookups.answer_batch`)."""

    cards: CardCache = field(default_factory=CardCache)
    texts: TextCache = field(default_factory=TextCache)
    labels: LabelCache = field(default_factory=LabelCache)
