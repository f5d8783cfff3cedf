"""Engine and session setup for SQLite and any other SQLAlchemy URL.

SQLite runs in WAL mode with a busy timeout set before the switch to WAL, and
write transactions start with ``BEGIN IMMEDIATE`` so that two writers queue on
the busy timeout instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage import locks, migrate
from storage.errors import DatabaseUnavailableError, ReadOnlyDatabaseError

SQLITE_BUSY_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT_S = 5.0


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def one_line(message: object) -> str:
    """A driver's message (often several lines with hints) as one line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def sqlite_read_only(database: str) -> bool:
    """True when the SQLite file or its folder cannot be written (WAL needs both)."""
    path = Path(database)
    return path.exists() and not (_writable(path) and _writable(path.parent))


def _read_only_sqlite_url(database: str) -> str:
    path = Path(database).resolve()
    wal_ready = path.with_name(path.name + "-shm").exists()
    # A WAL database opens read-only only beside its -shm file; without one (a cleanly
    # closed store in a read-only folder) nobody can be writing it, so it is immutable.
    flag = "mode=ro" if wal_ready else "immutable=1"
    return f"sqlite:///file:{path}?{flag}&uri=true"


def _sqlite_setup(engine: Engine, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not read_only:
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

    def __init__(self, url: str, *, create: bool = True, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.url = url
        self.read_only = False
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
                self.read_only = sqlite_read_only(database)
                if self.read_only:
                    url = _read_only_sqlite_url(database)
        connect_args: dict[str, int | str] = {}
        if self.dialect == "postgresql":
            connect_args["connect_timeout"] = max(1, round(connect_timeout))
            if "application_name" not in parsed.query:
                connect_args["application_name"] = f"clusterer {socket.gethostname()} pid {os.getpid()}"[:63]
        try:
            self.engine = create_engine(url, pool_pre_ping=self.dialect != "sqlite", connect_args=connect_args)
        except (ArgumentError, ImportError, SQLAlchemyError) as exc:
            raise DatabaseUnavailableError(f"cannot use database {describe_url(url)}: {exc}") from exc
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine, self.read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writer_engine = self.engine.execution_options(sqlite_write=True)
        self._write_sessions = sessionmaker(self._writer_engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest revision."""
        try:
            if self.read_only:
                with self.engine.connect() as conn:
                    if migrate.current_revision(conn) != migrate.head_revision():
                        raise ReadOnlyDatabaseError(
                            f"the database {describe_url(self.url)} is read-only and needs a schema upgrade: "
                            "open it once where it can be written"
                        )
                return
            with self._writer_engine.begin() as conn:
                if self.dialect == "postgresql":
                    # hosts opening one new database at once take turns at creating it
                    locks.advisory_xact_lock(conn, locks.lock_key(conn, "clusterer-migrate"))
                if migrate.current_revision(conn) != migrate.head_revision():
                    migrate.upgrade(conn)
        except DBAPIError as exc:
            raise self.unavailable(exc) from exc

    def unavailable(self, exc: DBAPIError) -> DatabaseUnavailableError:
        """The error to raise when the database cannot be opened, naming it."""
        reason = one_line(exc.orig)
        if "readonly database" in reason or "read-only" in reason:
            return ReadOnlyDatabaseError(f"the database {describe_url(self.url)} is not writable ({reason})")
        if "not a database" in reason or "malformed" in reason:
            return DatabaseUnavailableError(
                f"{describe_url(self.url)} is damaged or not a clusterer database ({reason})"
            )
        return DatabaseUnavailableError(f"cannot open database {describe_url(self.url)}: {reason}")

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
        try:
            with self._write_sessions() as session, session.begin():
                yield session
        except OperationalError as exc:
            if "readonly database" in str(exc.orig):
                raise ReadOnlyDatabaseError(f"the database {describe_url(self.url)} is not writable") from exc
            raise

    def describe(self) -> str:
        return describe_url(self.url)

    def dispose(self) -> None:
        self.engine.dispose()
