"""Urgent cases announced to a webhook: real receivers on 127.0.0.1, a real worker process, real SQL.

Every photograph here opens an urgent case (a malignant threshold of 0 makes any output high risk).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from harness import imagegen
from tests.support import seed_analysis, seed_batch, wait_until
from tests.webhook import Receiver
from triage import notifications
from triage.audit import settings_snapshot
from triage.catalogue import DISCLAIMER, UNTRAINED_WARNING
from triage.reviews import open_cases
from triage.schema import Analysis, AuditEvent, Image, Notification, ReviewCase, Role, utcnow
from triage.settings import Settings

SECRET = "webhook-shared-secret-for-tests"
PUBLIC = "https://triage.example.org"
# What a notification may say, and nothing else: no image, file name, batch name or hash.
FIELDS = {"event", "notification_id", "attempt", "sent_at", "case_id", "analysis_id", "case_url", "priority",
          "reasons", "opened_at", "model", "disclaimer", "warning"}


@pytest.fixture
def receivers():
    started = []

    def start(**behaviour) -> Receiver:
        started.append(Receiver(**behaviour).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def urgent_stack(make_stack, database_url, receiver: Receiver, **overrides):
    return make_stack(database_url, malignant_threshold=0.0, webhook_url=receiver.url, webhook_secret=SECRET,
                      public_url=PUBLIC + "/", **overrides)


def expected_signature(content: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), content, hashlib.sha256).hexdigest()


def attempts_audited(stack) -> list[dict]:
    with stack.db.session() as s:
        return list(s.scalars(select(AuditEvent.details).where(AuditEvent.action == "notification.attempt")
                              .order_by(AuditEvent.id)))


def notification_rows(stack) -> list[Notification]:
    with stack.db.session() as s:
        return list(s.scalars(select(Notification).order_by(Notification.id)))


def test_urgent_cases_are_announced_signed_and_without_identifying_data(make_stack, database_url, receivers):
    receiver = receivers()
    stack = urgent_stack(make_stack, database_url, receiver)
    batch = stack.client.post("/api/batches", json={"name": "Jane Doe, MRN 4711"}).get_json()["batch_id"]
    photos = [(imagegen.jpeg(seed), f"Jane Doe 1970-01-01/left-arm-{seed}.jpg") for seed in (1, 2)]
    assert stack.upload(photos, batch_id=batch).get_json()["accepted"] == 2
    stack.start_worker()
    got = receiver.wait_for(2, 90)
    stack.wait_final(batch)

    with stack.db.session() as s:
        analyses = {a.id: a for a in s.scalars(select(Analysis))}
        cases = {c.analysis_id: c for c in s.scalars(select(ReviewCase))}
        images = list(s.scalars(select(Image)))
    # The worker opened both cases with their analyses: nobody has viewed a page.
    assert set(cases) == set(analyses) and all(c.priority == "urgent" and c.state == "pending" for c in cases.values())
    assert sorted(r.json["analysis_id"] for r in got) == sorted(analyses)
    for request in got:
        body = request.json
        assert request.path == "/hooks/dermatriage" and request.headers["Content-Type"] == "application/json"
        assert request.headers["X-DermaTriage-Signature"] == expected_signature(request.content)
        assert request.headers["X-DermaTriage-Timestamp"] == str(body["sent_at"])
        assert set(body) == FIELDS
        analysis = analyses[body["analysis_id"]]
        assert body["case_url"] == f"{PUBLIC}/review/{analysis.id}" and body["case_id"] == cases[analysis.id].id
        assert body["priority"] == "urgent" and body["reasons"] == analysis.reasons and body["reasons"]
        assert body["event"] == "case.urgent" and body["attempt"] == 1
        assert body["disclaimer"] == DISCLAIMER and body["warning"] == UNTRAINED_WARNING
        text = request.content.decode()
        for secret_of_the_patient in ("Jane", "Doe", "1970", "MRN", "4711", "left-arm", ".jpg"):
            assert secret_of_the_patient not in text
        for image in images:
            assert image.sha256 not in text and image.store_key not in text
        assert analysis.heatmap_key is None or analysis.heatmap_key not in text

    rows = wait_until(lambda: (r := notification_rows(stack)) and all(n.delivered_at for n in r) and r, 10,
                      message="both notifications marked delivered")
    assert [(n.attempts, n.last_error, n.due_at) for n in rows] == [(1, None, None)] * 2
    audited = attempts_audited(stack)
    assert sorted((e["case_id"], e["attempt"], e["delivered"], e["status"]) for e in audited) == sorted(
        (c.id, 1, True, 200) for c in cases.values())
    page = stack.login().get("/admin/notifications").get_data(as_text=True)
    assert "Every notification has been delivered." in page and "data-notification=" not in page


def test_a_receiver_that_fails_twice_gets_it_on_the_third_attempt_with_growing_pauses(make_stack, sqlite_url,
                                                                                     receivers):
    receiver = receivers(statuses=(500, 500))
    stack = urgent_stack(make_stack, sqlite_url, receiver)
    stack.upload([(imagegen.jpeg(3), "lesion.jpg")])
    stack.start_worker()
    first = receiver.wait_for(1, 90)[0]
    admin = stack.login()

    # Between the attempts the admins' page shows it, with its attempts and what went wrong.
    def listed():
        page = admin.get("/admin/notifications").get_data(as_text=True)
        return 'data-attempts="1"' in page and "HTTP 500" in page and page
    page = wait_until(listed, 5, 0.1, "the failed notification on the admins' page")
    assert f'href="/review/{first.json["analysis_id"]}"' in page

    got = receiver.wait_for(3, 30)
    assert len({r.json["notification_id"] for r in got}) == 1 and [r.json["attempt"] for r in got] == [1, 2, 3]
    assert all(r.headers["X-DermaTriage-Signature"] == expected_signature(r.content) for r in got)
    pauses = [b.at - a.at for a, b in zip(got, got[1:])]
    assert notifications.FIRST_RETRY_S * 0.9 <= pauses[0] < pauses[1], pauses  # backoff doubles
    wait_until(lambda: notification_rows(stack)[0].delivered_at, 10, message="delivery recorded")
    [row] = notification_rows(stack)
    assert row.attempts == 3 and row.last_error is None and row.due_at is None
    audited = attempts_audited(stack)
    assert [(e["attempt"], e["delivered"], e["status"], e["error"]) for e in audited] == [
        (1, False, 500, "HTTP 500"), (2, False, 500, "HTTP 500"), (3, True, 200, None)]
    assert [e["next_attempt_in_s"] for e in audited] == [2.0, 4.0, None]
    assert "Every notification has been delivered." in admin.get("/admin/notifications").get_data(as_text=True)
    assert len(receiver.received) == 3  # nothing more once acknowledged


def test_a_receiver_that_never_answers_is_tried_again_and_shown_undelivered(make_stack, sqlite_url, receivers):
    receiver = receivers(hang=True)
    stack = urgent_stack(make_stack, sqlite_url, receiver, webhook_timeout_s=1.0)
    stack.upload([(imagegen.jpeg(4), "lesion.jpg")])
    stack.start_worker()
    got = receiver.wait_for(2, 90)  # the first attempt timed out after 1 s; the second came 2 s later
    assert [r.json["attempt"] for r in got[:2]] == [1, 2]
    failed = wait_until(lambda: [e for e in attempts_audited(stack) if not e["delivered"]], 10,
                        message="a timed-out attempt in the audit log")
    assert failed[0]["error"] == "no answer within 1 s" and failed[0]["status"] is None
    assert 900 <= failed[0]["elapsed_ms"] < 5000
    [row] = notification_rows(stack)
    assert row.delivered_at is None and row.attempts >= 2
    page = stack.login().get("/admin/notifications").get_data(as_text=True)
    assert f'data-notification="{row.id}"' in page and "no answer within 1 s" in page


def test_a_lost_job_is_sent_again_by_the_reconciler(make_stack, sqlite_url, receivers):
    """The notification was committed but its job never reached the broker (as when Redis restarts
    empty): the reconciler, which a worker runs as it starts, sends it."""
    receiver = receivers()
    stack = urgent_stack(make_stack, sqlite_url, receiver)
    analysis = seed_analysis(stack.db, seed_batch(stack.db), priority="urgent", audit_share=None)
    with stack.db.session() as s:
        [notification] = notifications.announce_urgent(s, open_cases(s, [analysis], 0.0), stack.settings)
        lost = utcnow() - timedelta(seconds=notifications.LOST_AFTER_S + 5)
        s.execute(update(Notification).values(due_at=lost))
    stack.start_worker()
    [request] = receiver.wait_for(1, 90)
    assert request.json["notification_id"] == notification and request.json["analysis_id"] == analysis
    wait_until(lambda: notification_rows(stack)[0].delivered_at, 10, message="delivery recorded")


def test_an_attempt_is_taken_once_and_a_failure_waits_its_turn(make_stack, database_url):
    """Two jobs for one notification (a retry and the reconciler's): one attempt. The SQL alone."""
    stack = make_stack(database_url, webhook_url="http://127.0.0.1:9/hook", webhook_secret=SECRET)
    analysis = seed_analysis(stack.db, seed_batch(stack.db), priority="urgent", audit_share=None)
    with stack.db.session() as s:
        [notification] = notifications.announce_urgent(s, open_cases(s, [analysis], 0.0), stack.settings)
    attempt = notifications.take(stack.db, notification, timeout_s=5)
    assert attempt.number == 1 and attempt.payload["analysis_id"] == analysis
    assert notifications.take(stack.db, notification, timeout_s=5) is None  # held by the attempt under way
    assert notifications.settle(stack.db, attempt, status=503, error="HTTP 503", elapsed_ms=3.0) == 2.0
    assert notifications.take(stack.db, notification, timeout_s=5) is None  # not due for 2 s
    assert notifications.requeue_lost(stack.db) == []
    with stack.db.session() as s:
        s.execute(update(Notification).values(due_at=utcnow() - timedelta(hours=1)))
    assert notifications.requeue_lost(stack.db) == [notification]
    assert notifications.requeue_lost(stack.db) == []  # its job was just sent: not lost again yet
    second = notifications.take(stack.db, notification, timeout_s=5)
    assert notifications.settle(stack.db, second, status=204, error=None, elapsed_ms=2.0) is None
    assert notifications.take(stack.db, notification, timeout_s=5) is None  # delivered: never again
    [row] = notification_rows(stack)
    assert (row.attempts, row.last_error, row.due_at is None, row.delivered_at is not None) == (2, None, True, True)


def test_no_webhook_means_no_notifications():
    settings = Settings(review_audit_share=0.0)
    assert notifications.announce_urgent(None, [{"id": 1, "analysis_id": 1, "priority": "urgent"}], settings) == []


def test_the_retry_delays_double_up_to_a_cap():
    delays = [notifications.retry_delay(n) for n in range(1, 12)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0] and max(delays) == notifications.MAX_RETRY_S == delays[-1]


def test_the_body_is_signed_as_sent():
    attempt = notifications.Attempt(7, 2, {"case_id": 3, "priority": "urgent", "reasons": ["Top class é."]})
    content = notifications.body(attempt, 1_700_000_000)
    assert json.loads(content) == {"case_id": 3, "priority": "urgent", "reasons": ["Top class é."],
                                   "notification_id": 7, "attempt": 2, "sent_at": 1_700_000_000}
    assert notifications.signature(SECRET, content) == expected_signature(content)


def test_webhook_settings_are_checked_and_kept_out_of_the_audit_log():
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        Settings(webhook_url="https://hooks.example.org/x")
    with pytest.raises(ValueError, match="http"):
        Settings(webhook_url="ftp://hooks.example.org/x", webhook_secret=SECRET)
    settings = Settings(webhook_url="https://hooks.example.org/T0/B0/credential", webhook_secret=SECRET,
                        web_host="10.0.0.5", web_port=8080)
    assert settings.public_url == "http://10.0.0.5:8080"
    snapshot = str(settings_snapshot(settings))
    assert "credential" not in snapshot and SECRET not in snapshot


def test_the_notifications_page_is_for_admins(sqlite_stack):
    stack = sqlite_stack
    admin = stack.login()
    page = admin.get("/admin/notifications")
    assert page.status_code == 200 and "No webhook is configured" in page.get_data(as_text=True)
    assert 'href="/admin/notifications"' in admin.get("/").get_data(as_text=True)  # in the admin menu
    assert admin.get("/admin/notifications?before=x&limit=-1").status_code == 200
    stack.add_user("rita", Role.REVIEWER)
    assert stack.login(username="rita").get("/admin/notifications").status_code == 403
