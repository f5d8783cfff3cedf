"""The bounded map behind the service's caches (clusterer.service.lru)."""

from __future__ import annotations

import threading

from clusterer.service.lru import LRU


def test_the_least_recently_used_goes_first_and_lookups_are_counted():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get_many(["a", "c", "z"]) == {"a": 1, "c": 3}
    assert len(lru) == 2 and lru.hits == 3 and lru.misses == 2
    lru.put_many({"d": 4, "e": 5, "f": 6})
    assert lru.get_many(["d", "e", "f"]) == {"e": 5, "f": 6}
    lru.clear()
    assert len(lru) == 0 and lru.get("f") is None


def test_size_zero_keeps_nothing():
    lru = LRU(0)
    lru.put("a", 1)
    assert lru.get("a") is None and len(lru) == 0


def test_threads_share_it_safely():
    lru = LRU(100)

    def work(n: int) -> None:
        for i in range(2000):
            lru.put((n, i % 150), i)
            lru.get((n, (i * 7) % 150))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lru) == 100 and lru.hits + lru.misses == 8000
