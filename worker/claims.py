"""Claiming images for analysis: SQL decides who works on what, so Redis only carries wake-ups.

A job names a few images (up to a batch); the worker claims those still waiting plus other waiting
images to fill a batch. Claims are
conditional updates in one write transaction, so two workers never take the same image, and the
attempt counter is committed before the model runs, so a file that keeps killing workers stops.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from triage.db import Database
from triage.schema import Image, ImageStatus, utcnow

WAITING = (ImageStatus.RECEIVED, ImageStatus.QUEUED)


@dataclass(frozen=True)
class Claimed:
    id: int
    store_key: str
    attempts: int


def _claimable(now, node: str):
    # A node runs one job at a time, so an image it still holds when a new job starts was left by a
    # job that died (database outage, crash): it may take it back without waiting for the lease.
    expired = and_(Image.status == ImageStatus.PROCESSING,
                   or_(Image.lease_expires_at < now, Image.claimed_by == node))
    return or_(Image.status.in_(WAITING), expired)


def claim_batch(db: Database, image_ids: list[int], *, limit: int, lease_s: int, max_attempts: int,
                node: str) -> tuple[list[Claimed], list[int]]:
    """Claim the job's own images still waiting (the first of them, if it is being retried, alone) and
    fill the batch up to `limit` with other fresh waiting images, oldest first.

    Returns (claimed, given_up): given_up are images past their attempts, now marked failed.
    An image being retried is claimed alone so one poisonous file cannot sink a whole batch again;
    the job's other images wait for its next claim (tasks._analyse_named).
    """
    now = utcnow()
    with db.session() as s:
        # The job's own images wait for a lock rather than skipping it: the lock's holder is brief (the
        # portal marking them queued just after sending this job, or another worker's claim), and a skip
        # would leave them to the reconciler, minutes later.
        named = s.execute(_lock(s, select(Image.id, Image.store_key, Image.attempts, Image.claimed_by,
                                          Image.lease_expires_at)
                                .where(Image.id.in_(image_ids), _claimable(now, node)).order_by(Image.id),
                                wait=True)).all()
        if not named:
            return [], []
        first = named[0]
        if first.claimed_by == node and first.lease_expires_at and first.lease_expires_at >= now:
            # Still held, under a live lease, by this node: its last job failed on the database or the
            # broker before it could hand the image back. Not the image's fault: no attempt is spent.
            s.execute(update(Image).where(Image.id == first.id)
                      .values(lease_expires_at=now + timedelta(seconds=lease_s)))
            return [Claimed(first.id, first.store_key, first.attempts)], []
        if first.attempts > 0:
            rows = [first]
        else:
            rows = [r for r in named if r.attempts == 0][:limit]
            if len(rows) < limit:
                rows += s.execute(_fresh(s, limit - len(rows), exclude=[r.id for r in named])).all()
        given_up = [r.id for r in rows if r.attempts >= max_attempts]
        live = [r for r in rows if r.attempts < max_attempts]
        if given_up:
            s.execute(update(Image).where(Image.id.in_(given_up)).values(
                status=ImageStatus.FAILED, lease_expires_at=None, claimed_by=None,
                error=f"Gave up after {max_attempts} attempts: analysing this image repeatedly crashed "
                      "or timed out the worker."))
        return _take(s, live, now, lease_s, node), given_up


def claim_more(db: Database, count: int, *, lease_s: int, node: str) -> list[Claimed]:
    """Top a batch up with fresh waiting images (used after waiting briefly for a batch to fill)."""
    with db.session() as s:
        return _take(s, s.execute(_fresh(s, count)).all(), utcnow(), lease_s, node)


def _fresh(session, count: int, exclude: list[int] | None = None):
    """Waiting images never tried before, oldest first. (Retries are claimed alone, never as filler.)"""
    query = select(Image.id, Image.store_key, Image.attempts).where(Image.status.in_(WAITING),
                                                                    Image.attempts == 0)
    if exclude:
        query = query.where(Image.id.not_in(exclude))
    return _lock(session, query.order_by(Image.id).limit(count))


def _take(session, rows, now, lease_s: int, node: str) -> list[Claimed]:
    if rows:
        # Core, not the ORM's bulk update: no Image objects are in this session to synchronise, and with
        # every batch the ORM's bookkeeping cost more than the statement.
        images = Image.__table__
        session.connection().execute(update(images).where(images.c.id.in_([r.id for r in rows])).values(
            status=ImageStatus.PROCESSING, attempts=images.c.attempts + 1, claimed_by=node,
            lease_expires_at=now + timedelta(seconds=lease_s)))
    return [Claimed(r.id, r.store_key, r.attempts + 1) for r in rows]


def _lock(session, stmt, wait: bool = False):
    # PostgreSQL: skip rows another worker is claiming right now (or, with `wait`, wait for them and see
    # them as they are after that commit). SQLite: BEGIN IMMEDIATE already serialises writers, so plain
    # selects are safe.
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=not wait)
    return stmt


def release(db: Database, ids: list[int], *, node: str, error: str, max_attempts: int,
            refund: bool = False) -> list[int]:
    """Hand claimed images back after an error: to the queue again, or failed when out of attempts.

    `refund` gives the attempt back when the error was the infrastructure's (database, broker), not
    the image's. Returns the ids that went back to the queue (the caller re-enqueues them).
    """
    if not ids:
        return []
    with db.session() as s:
        mine = and_(Image.id.in_(ids), Image.status == ImageStatus.PROCESSING, Image.claimed_by == node)
        if refund:
            s.execute(update(Image).where(mine, Image.attempts > 0).values(attempts=Image.attempts - 1))
        else:
            s.execute(update(Image).where(mine, Image.attempts >= max_attempts).values(
                status=ImageStatus.FAILED, error=f"Failed after {max_attempts} attempts: {error}",
                lease_expires_at=None, claimed_by=None))
        back = s.scalars(select(Image.id).where(mine)).all()
        s.execute(update(Image).where(Image.id.in_(back)).values(
            status=ImageStatus.QUEUED, error=error, lease_expires_at=None, claimed_by=None))
        return list(back)


def expire_claims_of(db: Database, node: str) -> list[int]:
    """A fresh worker process on `node` owns nothing yet: whatever that node held died with it.

    Returns the ids released, for the caller to re-enqueue (their jobs were acknowledged as no-ops
    while the dead process held them, so no message is left to bring them back).
    """
    with db.session() as s:
        held = Image.status == ImageStatus.PROCESSING, Image.claimed_by == node
        ids = list(s.scalars(select(Image.id).where(*held)))
        s.execute(update(Image).where(*held).values(lease_expires_at=utcnow()))
        return ids


def stale_images(db: Database, older_than_s: int) -> list[int]:
    """Images whose job was probably lost: waiting too long, or held under an expired lease."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    with db.session() as s:
        return list(s.scalars(select(Image.id).where(or_(
            and_(Image.status.in_(WAITING), Image.updated_at < cutoff),
            and_(Image.status == ImageStatus.PROCESSING, Image.lease_expires_at < now),
        )).order_by(Image.id)).all())


def touch(db: Database, ids: list[int]) -> None:
    """Mark re-enqueued images as freshly queued so the reconciler leaves them alone for a while."""
    with db.session() as s:
        s.execute(update(Image).where(Image.id.in_(ids), Image.status.in_(WAITING))
                  .values(status=ImageStatus.QUEUED, updated_at=utcnow()))
