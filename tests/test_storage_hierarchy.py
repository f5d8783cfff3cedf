"""Migration 0005 (cluster level and parent) on SQLite and PostgreSQL: a store made before it keeps
its clusters as fine clusters without a parent, and new rows carry both columns."""

from __future__ import annotations

from sqlalchemy import inspect, text

from storage import clusters as cq
from storage import migrate
from storage.db import Database


def test_upgrade_keeps_old_clusters_as_fine(db_url):
    database = Database(db_url)
    with database._writer_engine.begin() as conn:
        migrate.upgrade(conn, "0003")
        assert "level" not in {c["name"] for c in inspect(conn).get_columns("clusters")}
        conn.execute(
            text(
                "INSERT INTO runs (method, params, status, started_at, n_sentences, n_clusters, "
                "n_assigned, max_seq) VALUES ('community', '{}', 'done', '2026-01-01', 0, 1, 0, 0)"
            )
        )
        run_id = conn.execute(text("SELECT max(id) FROM runs")).scalar()
        conn.execute(
            text(
                "INSERT INTO clusters (run_id, label, size, created_at, updated_at) "
                "VALUES (:r, 4, 3, '2026-01-01', '2026-01-01')"
            ),
            {"r": run_id},
        )
    database.migrate()
    with database.engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    with database.read() as session:
        (old,) = cq.clusters_of_run(session, run_id, level=None)
        assert (old.label, old.level, old.parent_label) == (4, "fine", None)
    with database.write() as session:
        cq.insert_clusters(
            session,
            run_id,
            [
                cq.ClusterRow(
                    label=9, size=3, centre_id=None, cohesion=None, keywords=None, representatives=None, level="coarse"
                ),
            ],
        )
        session.flush()
        cq.update_clusters(session, run_id, {4: {"parent_label": 9}})
    with database.read() as session:
        assert [c.label for c in cq.clusters_of_run(session, run_id)] == [4]
        assert [c.label for c in cq.clusters_of_run(session, run_id, level="coarse")] == [9]
        assert cq.get_cluster(session, run_id, 4).parent_label == 9
    database.dispose()
