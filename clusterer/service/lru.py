"""A bounded, thread-safe map that forgets its least recently used entries first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any


class LRU:
    """At most ``size`` entries (0: none are kept); ``hits`` and ``misses`` count lookups."""

    def __init__(self, size: int):
        self.size = max(0, int(size))
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any:
        """The value of ``key`` (now the most recent), or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """The values of those of ``keys`` held."""
        out = {}
        with self._lock:
            for key in keys:
                value = self._data.get(key)
                if value is None:
                    self.misses += 1
                    continue
                self._data.move_to_end(key)
                self.hits += 1
                out[key] = value
        return out

    def put(self, key: Hashable, value: Any) -> None:
        self.put_many({key: value})

    def put_many(self, values: Mapping[Hashable, Any]) -> None:
        if not self.size:
            return
        with self._lock:
            for key, value in values.items():
                self._data[key] = value
                self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
