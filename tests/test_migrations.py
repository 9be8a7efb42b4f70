"""Alembic owns the schema: one head, and `upgrade head` builds exactly what the models describe."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from triage.db import make_engine
from triage.migrate import alembic_config, upgrade
from triage.schema import Base


def test_exactly_one_head():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_upgrade_head_matches_the_models(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == []
    assert {"batches", "images", "analyses", "alembic_version"} <= tables


def test_upgrade_is_repeatable(sqlite_url):
    upgrade(sqlite_url)
    upgrade(sqlite_url)  # a second run at head is a no-op, as the run script relies on


def test_sqlite_runs_wal_with_foreign_keys_and_busy_timeout(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()


def test_0003_opens_the_cases_page_views_used_to_open(database_url, monkeypatch):
    """Before 0003 a case opened only when someone viewed the queue: analyses nobody looked at have none.
    The upgrade opens theirs as the worker now does: drawn at the deployment's audit share (1.0 here, so
    the draw is certain), older analyses of an image superseded, quality failures and existing cases
    left alone."""
    from datetime import datetime

    from sqlalchemy import text

    monkeypatch.setenv("DERMATRIAGE_REVIEW_AUDIT_SHARE", "1.0")
    upgrade(database_url, "0002")
    at = datetime(2026, 11, 1, 9, 30)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO batches (id, name, created_at) VALUES (1, 'b', :at)"), {"at": at})
        for image in range(1, 6):
            conn.execute(text("INSERT INTO images (id, batch_id, display_name, sha256, store_key, size_bytes, width, "
                              "height, format, status, attempts, created_at, updated_at) VALUES (:id, 1, 'x.jpg', "
                              ":sha, :sha, 1, 1, 1, 'JPEG', 'analysed', 1, :at, :at)"),
                         {"id": image, "sha": f"{image:064d}", "at": at})
        plan = [(1, 1, "urgent", "analysed", "v1"), (2, 2, "routine", "analysed", "v1"),
                (3, 3, "review", "analysed", "v1"), (4, 3, "review", "analysed", "v2"),
                (5, 4, "reshoot", "needs_reshoot", "v1"), (6, 5, "urgent", "analysed", "v1")]
        for analysis, image, priority, outcome, version in plan:
            conn.execute(text("INSERT INTO analyses (id, image_id, model_version, model_trained, outcome, top_class, "
                              "priority, reasons, recommendations, quality, thresholds, timings, created_at) VALUES "
                              "(:id, :image, :version, false, :outcome, 'melanoma', :priority, '[]', '[]', '{}', "
                              "'{}', '{}', :at)"),
                         {"id": analysis, "image": image, "version": version, "outcome": outcome,
                          "priority": priority, "at": at})
        conn.execute(text("INSERT INTO review_cases (analysis_id, image_id, batch_id, priority, priority_rank, "
                          "received_at, state, audit_sample, created_at) VALUES (6, 5, 1, 'urgent', 0, :at, "
                          "'decided', false, :at)"), {"at": at})
    upgrade(database_url, "0003")
    with engine.connect() as conn:
        cases = {row[0]: tuple(row[1:]) for row in conn.execute(text(
            "SELECT analysis_id, state, priority_rank, audit_sample, received_at FROM review_cases"))}
    engine.dispose()
    assert {k: v[:3] for k, v in cases.items()} == {
        1: ("pending", 0, False), 2: ("pending", 2, True), 3: ("superseded", 1, False), 4: ("pending", 1, False),
        6: ("decided", 0, False)}
    assert str(cases[1][3])[:19] == str(at)  # the image's upload time: its place in the queue


def test_0004_records_the_stored_format_and_keeps_every_row(database_url):
    """Images get the format their file is stored in (a multi-picture JPEG is stored as JPEG); on SQLite
    the images table is copied to add it, which must not cascade into analyses and cases."""
    from datetime import datetime

    from sqlalchemy import text

    upgrade(database_url, "0003")
    at = datetime(2026, 11, 2, 8, 0)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO batches (id, name, created_at) VALUES (1, 'b', :at)"), {"at": at})
        for image, fmt in enumerate(("JPEG", "MPO", "PNG", "WEBP"), start=1):
            conn.execute(text("INSERT INTO images (id, batch_id, display_name, sha256, store_key, size_bytes, width, "
                              "height, format, status, attempts, created_at, updated_at) VALUES (:id, 1, 'x', :sha, "
                              ":sha, 1, 1, 1, :fmt, 'analysed', 1, :at, :at)"),
                         {"id": image, "sha": f"{image:064d}", "fmt": fmt, "at": at})
        conn.execute(text("INSERT INTO analyses (id, image_id, model_version, model_trained, outcome, priority, "
                          "reasons, recommendations, quality, thresholds, timings, created_at) VALUES "
                          "(1, 2, 'v1', false, 'needs_reshoot', 'reshoot', '[]', '[]', '{}', '{}', '{}', :at)"),
                     {"at": at})
    upgrade(database_url)
    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT format, stored_format FROM images")).all())
        analyses = conn.execute(text("SELECT id, image_id FROM analyses")).all()
    engine.dispose()
    assert stored == {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "PNG"}
    assert [tuple(a) for a in analyses] == [(1, 2)]
