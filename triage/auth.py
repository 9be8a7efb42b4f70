"""Users, passwords and API tokens: the parts of signing in that need no web framework.

Shared by the web app and the `dermatriage` command (create-admin, create-token, revoke-token).
Passwords are stored as salted scrypt hashes (werkzeug.security); API tokens as the SHA-256 of a
random 32-byte secret, which is shown once and never stored.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import func, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from .schema import ApiToken, Role, User, utcnow
from .sites import only_site, set_membership

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing cost grows with length: refuse absurd inputs early
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{1,79}")
TOKEN_PREFIX = "dt_"  # makes a leaked token recognisable in logs and secret scanners
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)  # last_used_at is a hint, not worth a write per request


class AuthError(ValueError):
    """A request to create or change a user or token that cannot be honoured; the message says why."""


def hash_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AuthError(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")
    return generate_password_hash(password)


@lru_cache(maxsize=1)
def _decoy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


def _check_username(username: str) -> str:
    username = username.strip()
    if not USERNAME.fullmatch(username):
        raise AuthError("A username is 2 to 80 letters, digits or . _ @ -, starting with a letter or digit.")
    return username


def create_user(session, username: str, password: str | None, role: str, *,
                password_hash: str | None = None, site_id: int | None = None) -> User:
    """A new active user. `password_hash` lets a caller that already hashed (tests) skip the cost.

    With `site_id`, the user joins that site with `role`; an admin made so is that site's admin, never
    the deployment's. Without it, `role` is the user's own (admin: every site) and, when the deployment
    has exactly one site, the user joins it with that role too: an operator with one site never has to
    think about sites.
    """
    username = _check_username(username)
    if role not in Role.ALL:
        raise AuthError(f"Unknown role {role!r}; choose one of {', '.join(Role.ALL)}.")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AuthError(f"The username {username!r} is taken.")
    own_role = role if site_id is None or role != Role.ADMIN else Role.REVIEWER
    user = User(username=username, role=own_role, active=True,
                password_hash=password_hash or hash_password(password or ""))
    session.add(user)
    session.flush()
    site_id = site_id if site_id is not None else only_site(session)
    if site_id is not None:
        set_membership(session, user.id, site_id, role)
    return user


def authenticate(session, username: str, password: str) -> User | None:
    """The active user with this username and password, or None.

    An unknown or inactive user costs the same hash check as a wrong password, so response times
    do not tell which usernames exist.
    """
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None or not user.active or len(password) > MAX_PASSWORD_LENGTH:
        check_password_hash(_decoy_hash(), password[:MAX_PASSWORD_LENGTH])
        return None
    return user if password_matches(user, password) else None


def password_matches(user: User, password: str) -> bool:
    return len(password) <= MAX_PASSWORD_LENGTH and check_password_hash(user.password_hash, password)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new API token for `user`; returns the row and the token itself, which is never stored."""
    name = name.strip()[:100] or "API token"
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=token_digest(token), prefix=token[:10])
    session.add(row)
    session.flush()
    return row, token


def user_for_token(session, token: str) -> User | None:
    """The active user a live token belongs to, or None. Lookup is by digest, so no timing leak."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token),
                                                ApiToken.revoked_at.is_(None)))
    if row is None:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > TOKEN_TOUCH_INTERVAL:
        row.last_used_at = now
    return user


def revoke_token(session, token_id: int, owner_id: int | None = None) -> ApiToken | None:
    """Revoke a token (only one of `owner_id`'s when given); None if there is no such live token."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None or (owner_id is not None and row.user_id != owner_id):
        return None
    row.revoked_at = utcnow()
    return row


def revoke_tokens(session, user_id: int) -> int:
    """Revoke every live token of a user (switched off: revoked for good); returns how many."""
    result = session.execute(update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
                             .values(revoked_at=utcnow()))
    return result.rowcount


def active_admins(session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(User.role == Role.ADMIN, User.active.is_(True)))
