"""A batch's results written in one transaction with one UPDATE of the images (statuses, errors,
near-duplicate flags) and one multi-row INSERT of the analyses, whatever the batch's size; a status
changes only while the worker holds the claim, and writing twice changes nothing."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select, text, update

from triage.db import Database
from triage.migrate import upgrade
from triage.schema import Analysis, Batch, Image, ImageStatus, ReviewCase, utcnow
from triage.settings import Settings
from triage.store import open_store
from worker.pipeline import Outcome, write_outcomes

NODE = "writer-node"


@pytest.fixture
def env(database_url, tmp_path):
    upgrade(database_url)
    db = Database(database_url)
    settings = Settings(data_dir=tmp_path, database_url=database_url, review_audit_share=1.0)
    yield db, open_store(settings), settings
    db.dispose()


def claimed_images(db, hashes: list[int | None], node: str = NODE) -> list[int]:
    with db.session() as s:
        batch = Batch(name="b")
        s.add(batch)
        s.flush()
        images = [Image(batch_id=batch.id, display_name=f"{k}.jpg", sha256=f"{batch.id:032x}{k:032x}",
                        store_key="0" * 64, size_bytes=1, width=300, height=300, format="JPEG", stored_format="JPEG",
                        status=ImageStatus.PROCESSING, claimed_by=node, lease_expires_at=utcnow(), attempts=1,
                        phash=None if h is None else f"{h:016x}") for k, h in enumerate(hashes)]
        s.add_all(images)
        s.flush()
        return [i.id for i in images]


def analysed(image_id: int, priority: str = "review", heatmap: bytes | None = None) -> Outcome:
    probabilities = {"melanoma": 0.7, "nevus": 0.3}
    return Outcome(image_id, ImageStatus.ANALYSED, analysis=dict(
        outcome=ImageStatus.ANALYSED, probabilities=probabilities, top_class="melanoma", confidence=0.7,
        top3=[["melanoma", 0.7], ["nevus", 0.3]], risk_level="high", priority=priority, reasons=["malignant"],
        recommendations=["See a dermatologist."], quality={"passed": True}, heatmap=heatmap),
        timings={"decode_ms": 1.0})


def reshoot(image_id: int) -> Outcome:
    return Outcome(image_id, ImageStatus.NEEDS_RESHOOT, error="The image is too small.", analysis=dict(
        outcome=ImageStatus.NEEDS_RESHOOT, priority="reshoot", reasons=["quality"],
        recommendations=["Take the photograph again."], quality={"passed": False}))


def failed(image_id: int) -> Outcome:
    return Outcome(image_id, ImageStatus.FAILED, error="The stored image could not be decoded (OSError: x).")


def write(env, outcomes, distance: int = 8):
    db, store, settings = env
    return write_outcomes(db, store, outcomes, node=NODE, model_version="m1", model_trained=False,
                          thresholds={"t": 1}, near_duplicate_distance=distance, settings=settings)


def statements(db):
    """The first three words of every statement the engine runs from now on."""
    seen: list[str] = []

    def note(conn, cursor, sql, *rest):
        seen.append(" ".join(sql.split()[:3]))

    event.listen(db.engine, "before_cursor_execute", note)
    return seen


def test_a_batch_of_eight_is_one_update_and_one_insert(env):
    db = env[0]
    base = 0x0123456789ABCDEF
    # Two of the batch 2 bits apart, the others far from everything.
    ids = claimed_images(db, [base, base ^ 0b101, None, 0xF0F0F0F0F0F0F0F0, 0x0F0F0F0F0F0F0F0F,
                              0xFFFF0000FFFF0000, 0x0000FFFF0000FFFF, 0xAAAAAAAAAAAAAAAA])
    outcomes = [analysed(ids[0], heatmap=b"\x89PNG fake heatmap"), analysed(ids[1], "urgent"), reshoot(ids[2]),
                failed(ids[3]), analysed(ids[4], "routine"), reshoot(ids[5]), analysed(ids[6]), analysed(ids[7])]
    seen = statements(db)
    written = write(env, outcomes)
    assert len(written.ages) == 8 and all(age >= 0 for age in written.ages)
    assert [s for s in seen if s.startswith("UPDATE images")] == ["UPDATE images SET"]
    assert [s for s in seen if s.startswith("INSERT INTO analyses")] == ["INSERT INTO analyses"]

    with db.session() as s:
        images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(ids)))}
        analyses = {a.image_id: a for a in s.scalars(select(Analysis))}
        cases = set(s.scalars(select(ReviewCase.analysis_id)))
        # A result without probabilities stores SQL NULL there, as a row inserted alone did.
        nulls = set(s.scalars(text("SELECT image_id FROM analyses WHERE probabilities IS NULL AND top3 IS NULL")))
    assert [images[i].status for i in ids] == [o.status for o in outcomes]
    assert [images[i].error for i in ids] == [o.error for o in outcomes]
    assert all(images[i].claimed_by is None and images[i].lease_expires_at is None for i in ids)
    assert images[ids[0]].near_duplicate_of_id == ids[1] and images[ids[1]].near_duplicate_of_id == ids[0]
    assert all(images[i].near_duplicate_of_id is None for i in ids[2:])
    assert set(analyses) == set(ids) - {ids[3]}
    assert nulls == {ids[2], ids[5]}
    assert analyses[ids[1]].probabilities == {"melanoma": 0.7, "nevus": 0.3} and analyses[ids[1]].priority == "urgent"
    assert analyses[ids[2]].probabilities is None and analyses[ids[2]].outcome == ImageStatus.NEEDS_RESHOOT
    assert analyses[ids[0]].heatmap_key and env[1].exists(analyses[ids[0]].heatmap_key)
    assert analyses[ids[4]].heatmap_key is None and analyses[ids[4]].thresholds == {"t": 1}
    assert analyses[ids[4]].timings == {"decode_ms": 1.0} and analyses[ids[4]].model_version == "m1"
    assert cases == {analyses[i].id for i in (ids[0], ids[1], ids[4], ids[6], ids[7])}  # analysed ones only


def test_writing_again_changes_nothing(env):
    db = env[0]
    ids = claimed_images(db, [1, 2, 3])
    outcomes = [analysed(ids[0]), reshoot(ids[1]), failed(ids[2])]
    write(env, outcomes)
    with db.session() as s:
        before = s.execute(select(Image.id, Image.status, Image.error, Image.updated_at)).all()
        count = len(s.scalars(select(Analysis.id)).all())
    again = write(env, outcomes)
    assert again.ages == [] and again.notifications == []
    with db.session() as s:
        assert s.execute(select(Image.id, Image.status, Image.error, Image.updated_at)).all() == before
        assert len(s.scalars(select(Analysis.id)).all()) == count == 2
        assert len(s.scalars(select(ReviewCase.id)).all()) == 1


def test_an_image_no_longer_held_keeps_its_state_and_the_rest_is_written(env):
    db = env[0]
    ids = claimed_images(db, [None, None, None])
    with db.session() as s:  # the lease ran out and another worker took the second image
        s.execute(update(Image).where(Image.id == ids[1]).values(claimed_by="other-node"))
    written = write(env, [analysed(ids[0]), analysed(ids[1]), failed(ids[2])])
    assert len(written.ages) == 2
    with db.session() as s:
        states = dict(s.execute(select(Image.id, Image.status)).all())
        holder = s.scalar(select(Image.claimed_by).where(Image.id == ids[1]))
        analysed_ids = set(s.scalars(select(Analysis.image_id)))
    assert states == {ids[0]: ImageStatus.ANALYSED, ids[1]: ImageStatus.PROCESSING, ids[2]: ImageStatus.FAILED}
    assert holder == "other-node" and analysed_ids == {ids[0]}


def test_an_analysis_already_there_is_kept_and_opens_no_second_case(env):
    db = env[0]
    ids = claimed_images(db, [None, None])
    write(env, [analysed(ids[0])])
    with db.session() as s:  # the same image claimed again (e.g. its job ran twice after a crash)
        s.execute(update(Image).where(Image.id == ids[0]).values(status=ImageStatus.PROCESSING, claimed_by=NODE))
        first = s.scalar(select(Analysis.id).where(Analysis.image_id == ids[0]))
    write(env, [analysed(ids[0], "urgent"), analysed(ids[1])])
    with db.session() as s:
        rows = s.execute(select(Analysis.id, Analysis.image_id, Analysis.priority).order_by(Analysis.id)).all()
        cases = s.scalars(select(ReviewCase.analysis_id).order_by(ReviewCase.analysis_id)).all()
        status = s.scalar(select(Image.status).where(Image.id == ids[0]))
    assert rows[0] == (first, ids[0], "review") and [r[1] for r in rows] == ids
    assert cases == [r[0] for r in rows] and status == ImageStatus.ANALYSED
