"""PostgreSQL advisory locks: one writer at a time across every host sharing a database.

The key is derived from a name and the current schema, so stores in different schemas of
one database do not block each other. A session-level advisory lock lives as long as the
connection that took it, so a killed writer never leaves it behind.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.engine import Connection


def lock_key(conn: Connection, name: str) -> int:
    schema = conn.execute(text("SELECT current_schema()")).scalar() or ""
    digest = hashlib.blake2b(f"{name}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_advisory_lock(conn: Connection, key: int) -> bool:
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())


def advisory_unlock(conn: Connection, key: int) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def advisory_xact_lock(conn: Connection, key: int) -> None:
    """Wait for a lock that the current transaction holds until it ends."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def advisory_holder(conn: Connection, key: int) -> str | None:
    """Who holds advisory lock ``key``: the holder's application name (clusterer sets host and
    pid there), its address and backend pid; None when nobody does."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = conn.execute(
        text(
            "SELECT a.application_name, a.client_addr, l.pid FROM pg_locks l"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
        ),
        {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
    ).first()
    if row is None:
        return None
    name, addr, pid = row
    where = f" from {addr}" if addr else ""
    return f"{name or 'a client'}{where}, backend pid {pid}"
