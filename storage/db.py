"""Engine and session setup for SQLite and any other SQLAlchemy URL.

SQLite runs in WAL mode with a busy timeout set before the switch to WAL, and
write transactions start with ``BEGIN IMMEDIATE`` so that two writers queue on
the busy timeout instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage import migrate
from storage.errors import DatabaseUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 60_000


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if conn.get_execution_options().get("sqlite_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Database:
    """A database handle: engine, schema migration and sessions."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise DatabaseUnavailableError(f"invalid database URL {url!r}: {exc}") from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                folder = Path(database).parent
                if not folder.exists():
                    if not create:
                        raise DatabaseUnavailableError(f"no database at {database}")
                    folder.mkdir(parents=True, exist_ok=True)
                if not create and not Path(database).exists():
                    raise DatabaseUnavailableError(f"no database at {database}")
        try:
            self.engine = create_engine(url, pool_pre_ping=self.dialect != "sqlite")
        except (ArgumentError, ImportError, SQLAlchemyError) as exc:
            raise DatabaseUnavailableError(f"cannot use database {describe_url(url)}: {exc}") from exc
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer_engine = self.engine.execution_options(sqlite_write=True)
        self._write_sessions = sessionmaker(self._writer_engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest revision."""
        try:
            with self._writer_engine.begin() as conn:
                if migrate.current_revision(conn) != migrate.head_revision():
                    migrate.upgrade(conn)
        except OperationalError as exc:
            raise DatabaseUnavailableError(
                f"cannot open database {describe_url(self.url)}: {exc.orig}"
            ) from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; nothing it changes is committed."""
        with self._sessions() as session:
            try:
                yield session
            finally:
                # Detach what was loaded first: a rollback expires every instance in
                # the session, which would leave the rows returned to callers (e.g.
                # SentenceStore.get) unreadable once the session is closed.
                session.expunge_all()
                session.rollback()

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on error."""
        with self._write_sessions() as session:
            with session.begin():
                yield session

    def dispose(self) -> None:
        self.engine.dispose()
