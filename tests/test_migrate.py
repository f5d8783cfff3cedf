"""storage.migrate: revisions read without Alembic agree with Alembic's own answers."""

from __future__ import annotations

import textwrap

from sqlalchemy import create_engine

from storage import migrate
from storage.db import Database


def test_head_revision_is_alembics():
    from alembic.script import ScriptDirectory

    assert migrate.head_revision() == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


def _script(folder, name, body):
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


def test_head_revision_from_script_assignments(tmp_path, monkeypatch):
    versions = tmp_path / "versions"
    versions.mkdir()
    _script(versions, "a", 'revision = "a"\ndown_revision = None\n')
    _script(versions, "b", 'revision: str = "b"\ndown_revision = "a"\n')
    _script(versions, "c1", 'revision = "c1"\ndown_revision = "b"\n')
    _script(versions, "c2", 'revision = "c2"\ndown_revision = "b"\n')
    _script(versions, "m", 'revision = "m"\ndown_revision = ("c1", "c2")\n')
    (versions / "notes.py").write_text("x = 1\n")
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path)
    assert migrate.head_revision() == "m"


def test_current_revision_is_alembics(db_url):
    from alembic.runtime.migration import MigrationContext

    database = Database(db_url)
    try:
        with database.engine.connect() as conn:
            fresh = migrate.current_revision(conn)
        database.migrate()
        with database.engine.connect() as conn:
            assert migrate.current_revision(conn) == MigrationContext.configure(conn).get_current_revision()
            assert migrate.current_revision(conn) == migrate.head_revision()
    finally:
        database.dispose()
    if db_url.startswith("sqlite"):
        assert fresh is None


def test_empty_sqlite_database_has_no_revision(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with engine.connect() as conn:
        assert migrate.current_revision(conn) is None
    engine.dispose()


def test_up_to_date_store_opens_without_alembic(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path / 'store.db'}"
    database = Database(url)
    database.migrate()
    database.dispose()
    code = (
        "import sys\n"
        "from storage.db import Database\n"
        f"d = Database({url!r}); d.migrate(); d.dispose()\n"
        "print('alembic' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
