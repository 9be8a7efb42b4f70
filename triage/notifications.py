"""Announcing urgent cases to the deployment's webhook: the outbox rows, what they say, how they are
signed, and the record of every attempt.

A notification is written in the worker's transaction that opens an urgent case (worker/pipeline.py),
delivered by a job sent after the commit (worker/notify.py), retried with growing delays until the
receiver answers 2xx, and sent again by the reconciler if its job is lost. It carries the link to the
case, the priority and the reasons: never the image, its file name, the batch's name or anything else
that could identify a patient. Receivers check `X-DermaTriage-Signature: sha256=<hex>`, the HMAC-SHA256
of the exact body under the shared secret; the body's `sent_at` (also in `X-DermaTriage-Timestamp`)
lets them refuse replays, and `notification_id` lets them ignore a repeat.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from .audit import record
from .catalogue import DISCLAIMER, UNTRAINED_WARNING
from .risk import URGENT
from .schema import Analysis, Notification, utcnow

EVENT = "case.urgent"
ATTEMPT_ACTION = "notification.attempt"  # the audit log's name for one delivery attempt
SIGNATURE_HEADER = "X-DermaTriage-Signature"
TIMESTAMP_HEADER = "X-DermaTriage-Timestamp"
FIRST_RETRY_S = 2.0
# A retry waits in the broker as a delayed message, which Redis hands out again once its visibility
# timeout passes: the longest delay stays well under it.
MAX_RETRY_S = 300.0
# An attempt holds its notification for the HTTP timeout plus this, so two attempts never overlap.
ATTEMPT_MARGIN_S = 30.0
# A notification due this long that nobody has taken lost its job (broker restart, killed worker):
# the reconciler sends it again. Longer than a job's wait behind one analysis job on a busy worker.
LOST_AFTER_S = 120.0


@dataclass(frozen=True)
class Attempt:
    notification_id: int
    number: int  # 1 for the first attempt
    payload: dict


def announce_urgent(session, cases: list[dict], settings) -> list[int]:
    """Add a notification for each urgent case among `cases` (as `reviews.open_cases` returns them) to
    the session's transaction; returns their ids (for the jobs sent after the commit). None without a
    webhook."""
    urgent = [case for case in cases if case["priority"] == URGENT]
    if not settings.webhook_url or not urgent:
        return []
    analyses = {row.id: row for row in session.execute(
        select(Analysis.id, Analysis.reasons, Analysis.model_version, Analysis.model_trained)
        .where(Analysis.id.in_([case["analysis_id"] for case in urgent])))}
    now = utcnow()
    rows = [Notification(case_id=case["id"], payload=payload(case, analyses[case["analysis_id"]], settings.public_url),
                         attempts=0, due_at=now, created_at=now) for case in urgent]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def payload(case: dict, analysis, public_url: str) -> dict:
    """What a notification says, chosen field by field: nothing about the image or the patient."""
    return {"event": EVENT, "case_id": case["id"], "analysis_id": case["analysis_id"],
            "case_url": f"{public_url}/review/{case['analysis_id']}", "priority": case["priority"],
            "reasons": list(analysis.reasons), "opened_at": _iso(case["created_at"]),
            "model": {"version": analysis.model_version, "trained": analysis.model_trained},
            "disclaimer": DISCLAIMER, "warning": None if analysis.model_trained else UNTRAINED_WARNING}


def body(attempt: Attempt, sent_at: int) -> bytes:
    """The exact bytes sent (and signed) for one attempt."""
    message = {**attempt.payload, "notification_id": attempt.notification_id, "attempt": attempt.number,
               "sent_at": sent_at}
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, content: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def retry_delay(attempt: int) -> float:
    """Seconds before the attempt after failed attempt number `attempt`: 2, 4, 8, ... up to 5 minutes."""
    return min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** (attempt - 1))


def take(db, notification_id: int, timeout_s: float) -> Attempt | None:
    """Start an attempt, or None if the notification is delivered, not due yet or being attempted.

    One conditional update: of two jobs for one notification (a retry and the reconciler's), one wins.
    Delivered notifications have no due time, so they never match.
    """
    now = utcnow()
    with db.session() as s:
        row = s.execute(update(Notification).where(Notification.id == notification_id, Notification.due_at <= now)
                        .values(attempts=Notification.attempts + 1, last_attempt_at=now,
                                due_at=now + timedelta(seconds=timeout_s + ATTEMPT_MARGIN_S))
                        .returning(Notification.attempts, Notification.payload)).first()
    return Attempt(notification_id, row.attempts, row.payload) if row else None


def settle(db, attempt: Attempt, *, status: int | None, error: str | None, elapsed_ms: float) -> float | None:
    """Record how an attempt ended, with its audit event, in one transaction. Returns the seconds until
    the next attempt, or None when this one was acknowledged (`error` None)."""
    now = utcnow()
    delay = None if error is None else retry_delay(attempt.number)
    with db.session() as s:
        s.execute(update(Notification).where(Notification.id == attempt.notification_id,
                                             Notification.attempts == attempt.number)
                  .values(last_error=error, delivered_at=now if error is None else None,
                          due_at=None if delay is None else now + timedelta(seconds=delay)))
        record(s, ATTEMPT_ACTION, target=("notification", attempt.notification_id),
               details={"case_id": attempt.payload["case_id"], "attempt": attempt.number,
                        "delivered": error is None, "status": status, "error": error, "elapsed_ms": elapsed_ms,
                        "next_attempt_in_s": delay})
    return delay


def requeue_lost(db) -> list[int]:
    """Notifications due for a while that nobody has taken: their ids, for the reconciler to send again.
    Their due time is moved to now, so the next reconciler run leaves them to the job just sent."""
    now = utcnow()
    lost = Notification.due_at <= now - timedelta(seconds=LOST_AFTER_S)
    with db.session() as s:
        ids = list(s.scalars(select(Notification.id).where(lost).order_by(Notification.id).limit(1000)))
        if ids:  # still lost: an attempt that started meanwhile keeps its hold
            s.execute(update(Notification).where(Notification.id.in_(ids), lost).values(due_at=now))
    return ids


def undelivered(session, limit: int = 200) -> list[Notification]:
    """Notifications not yet acknowledged, oldest first (the admins' page)."""
    return list(session.scalars(select(Notification).where(Notification.delivered_at.is_(None))
                                .order_by(Notification.id).limit(limit)))


def _iso(at: datetime) -> str:
    return at.isoformat() + "Z"
