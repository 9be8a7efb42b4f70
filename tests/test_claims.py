"""SQL claims: who works on what, attempt counting, release, and what the reconciler finds."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
from sqlalchemy import update

from triage.schema import Batch, Image, ImageStatus, utcnow
from worker import claims


def add_images(db, n: int, status=ImageStatus.QUEUED) -> list[int]:
    with db.session() as s:
        batch = Batch(name="b")
        s.add(batch)
        s.flush()
        images = [Image(batch_id=batch.id, display_name=f"{i}.jpg", sha256=f"{i:064x}", store_key=f"{i:064x}",
                        size_bytes=1, width=300, height=300, format="JPEG", stored_format="JPEG", status=status)
                  for i in range(n)]
        s.add_all(images)
        s.flush()
        return [i.id for i in images]


def rows(db) -> dict[int, Image]:
    with db.session() as s:
        return {i.id: i for i in s.query(Image).all()}


def claim(db, image_id, node="n1", limit=4, max_attempts=3):
    named = [image_id] if isinstance(image_id, int) else image_id
    return claims.claim_batch(db, named, limit=limit, lease_s=60, max_attempts=max_attempts, node=node)


def test_a_job_fills_its_batch_and_a_second_worker_takes_the_rest(db):
    ids = add_images(db, 6)
    first, _ = claim(db, ids[0], "n1")
    assert [c.id for c in first] == ids[:4] and all(c.attempts == 1 for c in first)
    second, _ = claim(db, ids[1], "n2")  # already held by n1: nothing to do
    assert second == []
    third, _ = claim(db, ids[4], "n2")
    assert [c.id for c in third] == ids[4:]
    state = rows(db)
    assert {state[i].claimed_by for i in ids[:4]} == {"n1"} and {state[i].claimed_by for i in ids[4:]} == {"n2"}
    assert all(state[i].status == ImageStatus.PROCESSING for i in ids)


def test_a_job_takes_the_images_it_names_first_then_fills_with_the_oldest(db):
    ids = add_images(db, 8)
    got, _ = claim(db, [ids[6], ids[5], ids[7]], limit=4)
    assert [c.id for c in got] == [ids[5], ids[6], ids[7], ids[0]]
    again, _ = claim(db, [ids[5], ids[6], ids[7]], "n2")  # its images are taken: the next round ends the job
    assert again == []


def test_a_retried_image_among_a_jobs_images_goes_alone_and_the_others_follow(db):
    ids = add_images(db, 4)
    with db.session() as s:
        s.execute(update(Image).where(Image.id == ids[0]).values(attempts=1))
    first, _ = claim(db, ids[:3], limit=4)
    assert [c.id for c in first] == [ids[0]] and first[0].attempts == 2
    with db.session() as s:  # the round analyses it
        s.execute(update(Image).where(Image.id == ids[0]).values(status=ImageStatus.ANALYSED, claimed_by=None))
    second, _ = claim(db, ids[:3], limit=4)
    assert [c.id for c in second] == [ids[1], ids[2], ids[3]]  # never the retried one as filler


def test_a_retried_image_is_claimed_alone(db):
    ids = add_images(db, 3)
    with db.session() as s:
        s.execute(update(Image).where(Image.id == ids[0]).values(attempts=1))
    got, _ = claim(db, ids[0])
    assert [c.id for c in got] == [ids[0]] and got[0].attempts == 2


def test_out_of_attempts_becomes_failed_with_a_reason(db):
    ids = add_images(db, 1)
    with db.session() as s:
        s.execute(update(Image).values(attempts=3))
    got, given_up = claim(db, ids[0], max_attempts=3)
    assert got == [] and given_up == ids
    image = rows(db)[ids[0]]
    assert image.status == ImageStatus.FAILED and "Gave up after 3 attempts" in image.error


def test_an_expired_lease_can_be_claimed_again_but_a_live_one_cannot(db):
    ids = add_images(db, 1)
    claim(db, ids[0], "dead")
    assert claim(db, ids[0], "n2")[0] == []
    with db.session() as s:
        s.execute(update(Image).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    got, _ = claim(db, ids[0], "n2")
    assert [c.id for c in got] == ids and got[0].attempts == 2


def test_release_requeues_or_fails_only_what_this_node_holds(db):
    ids = add_images(db, 3)
    claim(db, ids[0], "n1", limit=2)
    claim(db, ids[2], "n2", limit=1)
    with db.session() as s:
        s.execute(update(Image).where(Image.id == ids[1]).values(attempts=3))
    back = claims.release(db, ids, node="n1", error="boom", max_attempts=3)
    state = rows(db)
    assert back == [ids[0]] and state[ids[0]].status == ImageStatus.QUEUED and state[ids[0]].error == "boom"
    assert state[ids[1]].status == ImageStatus.FAILED and "boom" in state[ids[1]].error
    assert state[ids[2]].status == ImageStatus.PROCESSING  # n2's claim is untouched


def test_a_new_worker_process_frees_what_its_node_held(db):
    ids = add_images(db, 2)
    claim(db, ids[0], "node-a", limit=2)
    claims.expire_claims_of(db, "node-a")
    assert sorted(claims.stale_images(db, older_than_s=3600)) == ids


def test_the_reconciler_finds_waiting_images_only_after_the_deadline(db):
    ids = add_images(db, 2, status=ImageStatus.RECEIVED)
    assert claims.stale_images(db, older_than_s=60) == []
    with db.session() as s:
        s.execute(update(Image).where(Image.id == ids[0]).values(updated_at=utcnow() - timedelta(minutes=5)))
    assert claims.stale_images(db, older_than_s=60) == [ids[0]]
    claims.touch(db, [ids[0]])
    state = rows(db)
    assert state[ids[0]].status == ImageStatus.QUEUED and claims.stale_images(db, older_than_s=60) == []


def test_perceptual_hash_nearest_prefers_the_closest_then_the_oldest():
    from triage.phash import hamming, nearest

    assert hamming("0" * 16, "f" + "0" * 15) == 4
    ids = np.array([9, 5, 3, 4], np.int64)  # 9 is the image looked up; 5 and 4 tie at distance 4
    hashes = np.array([0x0, 0xF, 0xFF, 0xF], np.uint64)
    assert nearest(ids, hashes, 0, max_distance=8) == 4
    assert nearest(ids, hashes, 0, max_distance=3) is None
    assert nearest(ids, hashes, 1, max_distance=0) == 4  # an identical hash, never itself


def test_a_node_takes_back_what_its_own_failed_job_left_without_spending_an_attempt(db):
    ids = add_images(db, 1)
    claim(db, ids[0], "n1")
    assert claim(db, ids[0], "n2")[0] == []  # another node must wait for the lease
    for _ in range(5):  # e.g. the database was down each time the job tried to finish
        got, given_up = claim(db, ids[0], "n1", max_attempts=3)
        assert [c.id for c in got] == ids and got[0].attempts == 1 and given_up == []


def test_release_with_refund_gives_the_attempt_back(db):
    ids = add_images(db, 1)
    claim(db, ids[0], "n1")
    assert claims.release(db, ids, node="n1", error="database down", max_attempts=1, refund=True) == ids
    image = rows(db)[ids[0]]
    assert image.status == ImageStatus.QUEUED and image.attempts == 0


def test_claim_more_tops_up_with_fresh_images_only(db):
    ids = add_images(db, 4)
    with db.session() as s:
        s.execute(update(Image).where(Image.id == ids[1]).values(attempts=1))
    claim(db, ids[0], limit=1)
    more = claims.claim_more(db, 5, lease_s=60, node="n1")
    assert [c.id for c in more] == ids[2:]  # the retried image is left to be claimed alone

