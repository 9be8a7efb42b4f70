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


def test_0006_adds_patients_and_lesions_keeping_every_row_and_downgrades(database_url):
    """Images stored before 0006 keep every row and column and have no lesion (a photograph without
    identifiers, as today); after the upgrade an image can name a lesion of a patient; the downgrade
    gives back the images with what they had."""
    from datetime import datetime

    from alembic import command
    from sqlalchemy import text

    from triage.migrate import alembic_config

    upgrade(database_url, "0005")
    at = datetime(2026, 11, 30, 10, 0)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO batches (id, name, created_at) VALUES (1, 'b', :at)"), {"at": at})
        for image in (1, 2, 3):
            conn.execute(text("INSERT INTO images (id, batch_id, display_name, sha256, store_key, size_bytes, width, "
                              "height, format, stored_format, status, attempts, created_at, updated_at) VALUES "
                              "(:id, 1, :name, :sha, :sha, 1, 1, 1, 'JPEG', 'JPEG', 'analysed', 1, :at, :at)"),
                         {"id": image, "name": f"room/{image}.jpg", "sha": f"{image:064d}", "at": at})
        conn.execute(text("INSERT INTO analyses (id, image_id, model_version, model_trained, outcome, priority, "
                          "reasons, recommendations, quality, thresholds, timings, created_at) VALUES "
                          "(1, 2, 'v1', false, 'analysed', 'urgent', '[]', '[]', '{}', '{}', '{}', :at)"), {"at": at})
        conn.execute(text("INSERT INTO review_cases (analysis_id, image_id, batch_id, priority, priority_rank, "
                          "received_at, state, audit_sample, created_at) VALUES (1, 2, 1, 'urgent', 0, :at, "
                          "'pending', false, :at)"), {"at": at})
    before = _image_rows(engine)

    upgrade(database_url, "0006")
    assert _image_rows(engine) == before
    with engine.begin() as conn:
        assert conn.execute(text("SELECT lesion_id, age, sex, fitzpatrick, clinical_note FROM images")).all() == \
            [(None,) * 5] * 3
        conn.execute(text("INSERT INTO patients (id, external_id, created_at) VALUES (1, 'P-0042', :at)"), {"at": at})
        conn.execute(text("INSERT INTO lesions (id, patient_id, external_id, body_site, created_at) "
                          "VALUES (1, 1, 'L-7', 'back', :at)"), {"at": at})
        conn.execute(text("UPDATE images SET lesion_id = 1, age = 54, sex = 'female', fitzpatrick = 2 WHERE id = 2"))
        assert conn.execute(text("SELECT count(*) FROM review_cases")).scalar() == 1

    command.downgrade(alembic_config(database_url), "0005")
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        columns = {c["name"] for c in inspect(conn).get_columns("images")}
        assert conn.execute(text("SELECT count(*) FROM review_cases")).scalar() == 1
    assert _image_rows(engine) == before
    assert not {"patients", "lesions"} & tables and "lesion_id" not in columns
    upgrade(database_url)  # and up again: the downgrade left nothing in the way
    engine.dispose()


def _image_rows(engine) -> list[tuple]:
    from sqlalchemy import text

    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT id, batch_id, display_name, sha256, status, stored_format FROM images ORDER BY id"))]


def test_0008_moves_everything_to_the_default_site_and_downgrades(database_url):
    """Every batch, patient, lesion and user of a populated database lands in "Default site" (each user
    with the role they had), ids stay unique per site (two sites may share a pseudonym), the audit log
    keeps its rows and its append-only trigger, and the downgrade gives back what was there."""
    from datetime import datetime

    import pytest
    from alembic import command
    from sqlalchemy import text

    from triage.migrate import alembic_config

    upgrade(database_url, "0007")
    at = datetime(2026, 12, 1, 9, 0)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        for user, role in ((1, "admin"), (2, "reviewer"), (3, "uploader")):
            conn.execute(text("INSERT INTO users (id, username, password_hash, role, active, created_at) "
                              "VALUES (:id, :name, 'x', :role, true, :at)"),
                         {"id": user, "name": f"user{user}", "role": role, "at": at})
        for batch in (1, 2):
            conn.execute(text("INSERT INTO batches (id, name, created_at, created_by_id) VALUES (:id, :name, :at, 3)"),
                         {"id": batch, "name": f"batch {batch}", "at": at})
        conn.execute(text("INSERT INTO patients (id, external_id, created_at) VALUES (1, 'P-0042', :at)"), {"at": at})
        conn.execute(text("INSERT INTO lesions (id, patient_id, external_id, body_site, created_at) "
                          "VALUES (1, 1, 'L-7', 'back', :at)"), {"at": at})
        conn.execute(text("INSERT INTO images (id, batch_id, display_name, sha256, store_key, size_bytes, width, "
                          "height, format, stored_format, status, attempts, created_at, updated_at, lesion_id) VALUES "
                          "(1, 2, 'a.jpg', :sha, :sha, 1, 1, 1, 'JPEG', 'JPEG', 'analysed', 1, :at, :at, 1)"),
                     {"sha": "1" * 64, "at": at})
        conn.execute(text("INSERT INTO audit_log (at, actor_id, action, details) VALUES (:at, 3, 'batch.upload', '{}')"),
                     {"at": at})
    before = _image_rows(engine)

    upgrade(database_url, "0008")
    with engine.begin() as conn:
        sites = conn.execute(text("SELECT id, name FROM sites")).all()
        assert [name for _, name in sites] == ["Default site"]
        site = sites[0][0]
        assert conn.execute(text("SELECT user_id, site_id, role FROM site_memberships ORDER BY user_id")).all() == \
            [(1, site, "admin"), (2, site, "reviewer"), (3, site, "uploader")]
        assert conn.execute(text("SELECT id, role FROM users ORDER BY id")).all() == \
            [(1, "admin"), (2, "reviewer"), (3, "uploader")]
        for table in ("batches", "patients", "lesions"):
            assert {r[0] for r in conn.execute(text(f"SELECT site_id FROM {table}"))} == {site}, table
        assert conn.execute(text("SELECT id, name, created_by_id FROM batches ORDER BY id")).all() == \
            [(1, "batch 1", 3), (2, "batch 2", 3)]
        assert conn.execute(text("SELECT action, site_id FROM audit_log")).all() == [("batch.upload", None)]
        # Pseudonyms are the site's own: another site may use the same ones.
        conn.execute(text("INSERT INTO sites (id, name, active, created_at) VALUES (2, 'B', true, :at)"), {"at": at})
        conn.execute(text("INSERT INTO patients (id, site_id, external_id, created_at) VALUES (2, 2, 'P-0042', :at)"),
                     {"at": at})
    assert _image_rows(engine) == before
    with pytest.raises(Exception), engine.begin() as conn:  # still append-only
        conn.execute(text("UPDATE audit_log SET site_id = 1"))
    with pytest.raises(Exception), engine.begin() as conn:  # and still unique within a site
        conn.execute(text("INSERT INTO patients (id, site_id, external_id, created_at) VALUES (3, 2, 'P-0042', :at)"),
                     {"at": at})
    with pytest.raises(Exception):  # two sites would merge: refused
        command.downgrade(alembic_config(database_url), "0007")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM patients WHERE site_id = 2"))
        conn.execute(text("DELETE FROM sites WHERE id = 2"))

    command.downgrade(alembic_config(database_url), "0007")
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        assert not {"sites", "site_memberships"} & tables
        assert "site_id" not in {c["name"] for c in inspect(conn).get_columns("batches")}
        assert conn.execute(text("SELECT count(*) FROM batches")).scalar() == 2
        assert conn.execute(text("SELECT external_id FROM lesions")).all() == [("L-7",)]
        assert conn.execute(text("SELECT action FROM audit_log")).all() == [("batch.upload",)]
    assert _image_rows(engine) == before
    upgrade(database_url)  # and up again
    engine.dispose()


def test_0007_gives_existing_cases_their_patient_and_lesion_keys_and_downgrades(database_url):
    """Cases opened before 0007 get the queue's patient and lesion keys from their images' lesions (a
    photograph without one keeps its own rank and time, keys 0); the downgrade gives back the old
    queue indexes with every case and review."""
    from datetime import datetime, timedelta

    from alembic import command
    from sqlalchemy import text

    from triage.migrate import alembic_config

    upgrade(database_url, "0006")
    at = datetime(2026, 12, 1, 9, 0)
    engine = make_engine(database_url)
    # image: (lesion, priority, rank, state, minutes after `at`)
    plan = {1: (1, "routine", 2, "pending", 5), 2: (2, "urgent", 0, "pending", 7), 3: (1, "review", 1, "pending", 3),
            4: (None, "review", 1, "pending", 1), 5: (1, "urgent", 0, "decided", 0)}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO batches (id, name, created_at) VALUES (1, 'b', :at)"), {"at": at})
        conn.execute(text("INSERT INTO users (id, username, password_hash, role, active, created_at) "
                          "VALUES (1, 'rita', 'x', 'reviewer', true, :at)"), {"at": at})
        conn.execute(text("INSERT INTO patients (id, external_id, created_at) VALUES (1, 'P-0042', :at)"), {"at": at})
        for lesion in (1, 2):
            conn.execute(text("INSERT INTO lesions (id, patient_id, external_id, created_at) VALUES (:id, 1, :ext, :at)"),
                         {"id": lesion, "ext": f"L-{lesion}", "at": at})
        for image, (lesion, priority, rank, state, minutes) in plan.items():
            received = at + timedelta(minutes=minutes)
            conn.execute(text("INSERT INTO images (id, batch_id, display_name, sha256, store_key, size_bytes, width, "
                              "height, format, stored_format, status, attempts, created_at, updated_at, lesion_id) "
                              "VALUES (:id, 1, 'x.jpg', :sha, :sha, 1, 1, 1, 'JPEG', 'JPEG', 'analysed', 1, :at, :at, "
                              ":lesion)"), {"id": image, "sha": f"{image:064d}", "at": received, "lesion": lesion})
            conn.execute(text("INSERT INTO analyses (id, image_id, model_version, model_trained, outcome, priority, "
                              "reasons, recommendations, quality, thresholds, timings, created_at) VALUES "
                              "(:id, :id, 'v1', false, 'analysed', :priority, '[]', '[]', '{}', '{}', '{}', :at)"),
                         {"id": image, "priority": priority, "at": received})
            conn.execute(text("INSERT INTO review_cases (id, analysis_id, image_id, batch_id, priority, priority_rank, "
                              "received_at, state, audit_sample, created_at) VALUES (:id, :id, :id, 1, :priority, "
                              ":rank, :at, :state, false, :at)"),
                         {"id": image, "priority": priority, "rank": rank, "state": state, "at": received})
        conn.execute(text("INSERT INTO reviews (id, analysis_id, reviewer_id, decision, created_at) "
                          "VALUES (1, 5, 1, 'confirm', :at)"), {"at": at})

    def keys():
        with engine.connect() as conn:
            # SQLite hands a time back as text: compare both to the second, as text.
            return {row[0]: (*row[1:4], str(row[4])[:19], row[5]) for row in conn.execute(text(
                "SELECT id, patient_key, lesion_key, patient_rank, patient_since, lesion_rank FROM review_cases"))}

    upgrade(database_url, "0007")
    minute = lambda m: str(at + timedelta(minutes=m))  # noqa: E731
    # The patient's pending cases: most urgent rank 0 (lesion 2), oldest upload 09:03 (lesion 1's review).
    assert keys() == {1: (1, 1, 0, minute(3), 1), 2: (1, 2, 0, minute(3), 0), 3: (1, 1, 0, minute(3), 1),
                      4: (0, 0, 1, minute(1), 1), 5: (1, 1, 0, minute(0), 0)}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT settled_by_id FROM reviews")).all() == [(None,)]
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("review_cases")}
    assert indexes["ix_review_cases_queue"][:4] == ["state", "patient_rank", "patient_since", "patient_key"]

    command.downgrade(alembic_config(database_url), "0006")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("review_cases")}
        indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("review_cases")}
        cases = conn.execute(text("SELECT id, priority_rank, state FROM review_cases ORDER BY id")).all()
        assert conn.execute(text("SELECT count(*) FROM reviews")).scalar() == 1
    assert not {"patient_key", "lesion_key", "patient_rank", "patient_since", "lesion_rank"} & columns
    assert indexes["ix_review_cases_queue"] == ["state", "priority_rank", "received_at", "id"]
    assert [tuple(c) for c in cases] == [(i, plan[i][2], plan[i][3]) for i in sorted(plan)]
    upgrade(database_url)  # and up again
    engine.dispose()
