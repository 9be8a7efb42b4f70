"""Browser sessions held on the server, so that they can be ended there.

A signed cookie alone stays valid until it expires, whatever happens on the server: a copy of it
outlives signing out. So the cookie names a random key, and the server keeps a row per session (only
the key's SHA-256, as for API tokens) that ends at sign-out, for the user's other sessions when they
change their password, for all of them when an admin resets the password, switches the user off or
signs them out everywhere, and after `DERMATRIAGE_SESSION_HOURS` without a request. An ended session
never comes back, not even when its user is switched on again.
"""
from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import func, select, update

from .auth import token_digest
from .schema import User, UserSession, utcnow

TOUCH_INTERVAL = timedelta(minutes=1)  # last_seen_at is kept to the minute, not written on every request


def start_session(session, user: User) -> str:
    """A new session of `user`; returns the key its cookie carries (never stored)."""
    key = secrets.token_urlsafe(32)
    session.add(UserSession(user_id=user.id, key_hash=token_digest(key)))
    session.flush()
    return key


def user_for_session(session, key: str, idle: timedelta) -> User | None:
    """The active user of a live session, or None (no such session, ended, idle too long, user off)."""
    row = session.scalar(select(UserSession).where(UserSession.key_hash == token_digest(key),
                                                   UserSession.ended_at.is_(None)))
    now = utcnow()
    if row is None or now - row.last_seen_at > idle:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        return None
    if now - row.last_seen_at > TOUCH_INTERVAL:
        row.last_seen_at = now
    return user


def end_session(session, key: str) -> None:
    session.execute(update(UserSession).where(UserSession.key_hash == token_digest(key),
                                              UserSession.ended_at.is_(None)).values(ended_at=utcnow()))


def end_sessions(session, user_id: int, keep: str | None = None) -> int:
    """End every live session of a user, except the one whose key is `keep`; returns how many ended."""
    query = update(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
    if keep:
        query = query.where(UserSession.key_hash != token_digest(keep))
    return session.execute(query.values(ended_at=utcnow())).rowcount


def live_sessions(session, idle: timedelta) -> dict[int, int]:
    """{user id: sessions neither ended nor idle too long}, for the users page."""
    rows = session.execute(select(UserSession.user_id, func.count())
                           .where(UserSession.ended_at.is_(None), UserSession.last_seen_at >= utcnow() - idle)
                           .group_by(UserSession.user_id))
    return dict(rows.all())
