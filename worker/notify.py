"""Delivering notifications of urgent cases to the deployment's webhook (see triage/notifications.py)."""
from __future__ import annotations

import logging
import time

import requests

from triage import notifications
from triage.jobs import NOTIFY_TASK

from .app import celery
from .runtime import runtime

log = logging.getLogger(__name__)


@celery.task(name=NOTIFY_TASK, bind=True, max_retries=None)
def deliver(self, notification_id: int) -> dict:
    """One attempt; a refusal, an error or no answer schedules the next one through the queue, with a
    delay that doubles up to a cap, for as long as it takes (every attempt is in the audit log)."""
    rt = runtime()
    s = rt.settings
    attempt = notifications.take(rt.db, notification_id, s.webhook_timeout_s)
    if attempt is None:  # delivered, not due yet, or another job has it
        return {"notification": notification_id, "attempted": False}
    start = time.perf_counter()
    status, error = post(s.webhook_url, s.webhook_secret, attempt, s.webhook_timeout_s)
    elapsed = round((time.perf_counter() - start) * 1000, 1)
    delay = notifications.settle(rt.db, attempt, status=status, error=error, elapsed_ms=elapsed)
    if delay is not None:
        log.warning("notification %s attempt %d failed (%s); next in %.0f s",
                    notification_id, attempt.number, error, delay)
        raise self.retry(countdown=delay)
    return {"notification": notification_id, "attempted": True, "delivered": True, "attempt": attempt.number}


def post(url: str, secret: str, attempt: notifications.Attempt, timeout_s: float) -> tuple[int | None, str | None]:
    """POST one signed attempt; returns (HTTP status or None, error or None when acknowledged with 2xx).

    Errors name what went wrong but never the URL, whose path is often the webhook's credential.
    Redirects are not followed: a signed body goes only where the settings say.
    """
    if not url:
        return None, "DERMATRIAGE_WEBHOOK_URL is not set"
    sent_at = int(time.time())
    content = notifications.body(attempt, sent_at)
    headers = {"Content-Type": "application/json", "User-Agent": "DermaTriage-notifier",
               notifications.SIGNATURE_HEADER: notifications.signature(secret, content),
               notifications.TIMESTAMP_HEADER: str(sent_at)}
    try:
        answer = requests.post(url, data=content, headers=headers, timeout=timeout_s, allow_redirects=False)
    except requests.ConnectTimeout:
        return None, f"no connection within {timeout_s:g} s"
    except requests.Timeout:
        return None, f"no answer within {timeout_s:g} s"
    except requests.exceptions.SSLError:
        return None, "TLS handshake failed"
    except requests.ConnectionError:
        return None, "could not connect"
    except requests.RequestException as exc:
        return None, type(exc).__name__
    if 200 <= answer.status_code < 300:
        return answer.status_code, None
    return answer.status_code, f"HTTP {answer.status_code}"
