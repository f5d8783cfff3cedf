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
