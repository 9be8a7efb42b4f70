"""Limits on guessing passwords at the sign-in form that hand an attacker no lockout.

Counted in the Redis every web worker shares, so they hold across gunicorn processes:

* failed sign-ins from one client address (`DERMATRIAGE_LOGIN_RATE_LIMIT`), whatever the usernames, and
  for one username from one address (`DERMATRIAGE_LOGIN_USERNAME_RATE_LIMIT`): beyond either, that
  address gets 429 until the window passes. An attacker is refused at their own addresses only.
* failed sign-ins for one username from any address: never refused, so nobody can lock a user out by
  failing in their name. After a few, each further failure for that username is answered only after a
  delay that doubles with each one, up to `DERMATRIAGE_LOGIN_MAX_DELAY_S`; the right password is
  answered at once. A sign-in clears its username's count.

A refused attempt is audited (by the caller's `refused`). If Redis is unreachable the limits are
skipped with a logged error: signing in must keep working.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time

import redis
from flask import Blueprint, Flask, request
from flask.logging import default_handler
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

log = logging.getLogger(__name__)
FREE_FAILURES = 3  # typing mistakes: answered at once
FIRST_DELAY_S = 0.25  # the failure after those; each further one waits twice as long as the one before
FAILURES_KEPT_S = 15 * 60  # a username's failures are forgotten this long after the last one
# A delayed answer holds a server thread. At most this many per process wait at once, so that a flood of
# wrong passwords cannot stall the portal; failures beyond that are answered at once (the limits per
# address above still count them).
MAX_WAITING = 2
_waiting = threading.BoundedSemaphore(MAX_WAITING)


def init_login_limits(app: Flask, settings, bp: Blueprint, refused) -> None:
    """Put the per-address limits on `bp` (the sign-in page). `refused(limit)` is called for each
    attempt they refuse, before the 429 goes out."""
    # Flask-Limiter logs a swallowed storage error on its own logger, which has only a NullHandler:
    # route it to the server's error stream so an outage is seen.
    limiter_log = logging.getLogger("flask-limiter")
    if default_handler not in limiter_log.handlers:
        limiter_log.addHandler(default_handler)
    limiter = Limiter(get_remote_address, app=app, storage_uri=settings.redis_url, key_prefix=_prefix(settings),
                      storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
                      swallow_errors=True, headers_enabled=False, default_limits=[])
    for limit, key, name in ((settings.login_rate_limit, get_remote_address, "address"),
                             (settings.login_username_rate_limit, _username_at_address, "username at address")):
        limiter.limit(limit, key_func=key, methods=["POST"], per_method=True, deduct_when=_failed,
                      on_breach=lambda _limit, name=name: refused(name))(bp)
    app.extensions["dermatriage_limiter"] = limiter


def after_failure(svc, username: str) -> None:
    """Count a failed sign-in for `username` and hold the answer for the delay its count has reached.
    Call it outside any database transaction: the wait must not hold a lock."""
    key = _failures_key(svc.settings, username)
    try:
        with svc.redis.pipeline() as pipe:
            failures = pipe.incr(key).expire(key, FAILURES_KEPT_S).execute()[0]
    except redis.RedisError:
        log.error("sign-in delay skipped: Redis is unreachable for the rate limit", exc_info=True)
        return
    wait = delay_after(failures, svc.settings.login_max_delay_s)
    if wait and _waiting.acquire(blocking=False):
        try:
            time.sleep(wait)
        finally:
            _waiting.release()


def after_success(svc, username: str) -> None:
    try:
        svc.redis.delete(_failures_key(svc.settings, username))
    except redis.RedisError:
        log.error("could not clear the failed sign-ins of a user: Redis is unreachable", exc_info=True)


def delay_after(failures: int, longest: float) -> float:
    """Seconds to hold the answer to a username's `failures`-th failure in a row."""
    if failures <= FREE_FAILURES:
        return 0.0
    return min(longest, FIRST_DELAY_S * 2 ** min(failures - FREE_FAILURES - 1, 32))


def _username_at_address() -> str:
    return f"user:{_counted(request.form.get('username') or '')}@{get_remote_address()}"


def _failed(response) -> bool:
    return response.status_code == 401


def _prefix(settings) -> str:
    # One Redis may serve several deployments (and the test suite's many databases): keep their counts apart.
    return "dermatriage-login:" + hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]


def _failures_key(settings, username: str) -> str:
    return f"{_prefix(settings)}:failures:{_counted(username)}"


def _counted(username: str) -> str:
    """A username as the limits count it, so that `Alice` and ` alice` are one."""
    return username.strip().lower()[:80]
