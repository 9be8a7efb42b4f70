"""The audit log: an append-only record of who did what and when.

Rows are only ever inserted (the database refuses updates and deletes, see migration 0002). An event
is written in the same transaction as the change it records, so neither exists without the other.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select

from .schema import AuditEvent

log = logging.getLogger(__name__)

# Settings whose values never go into the log, by name, so that a secret added later is left out too.
# A webhook's URL is often its credential (Slack's and Teams' are), so it stays out as a whole.
SECRET_WORDS = ("secret", "password", "token", "credential", "access_key", "webhook_url")
SETTINGS_CHANGED = "settings.changed"


def record(session, action: str, *, actor_id: int | None = None, target: tuple[str, int] | None = None,
           details: dict | None = None, ip: str | None = None) -> AuditEvent:
    """Add one event to the session's transaction. `actor_id` None means the system itself."""
    event = AuditEvent(action=action, actor_id=actor_id, details=details or {}, ip=ip,
                       target_type=target[0] if target else None, target_id=target[1] if target else None)
    session.add(event)
    return event


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def settings_snapshot(settings) -> dict[str, str]:
    """The settings in force, as strings, without secrets."""
    snapshot = {}
    for name in type(settings).model_fields:
        if any(word in name for word in SECRET_WORDS):
            continue
        value = str(getattr(settings, name))
        # A URL may carry a password (database, Redis, object store): kept with the password masked.
        snapshot[name] = _mask_password(value) if name.endswith("_url") else value
    return snapshot


def record_settings_change(db, settings) -> dict | None:
    """Log the settings when they differ from those last logged; returns what changed, or None.

    Settings come from the environment, not from the app, so a change is noticed when a process
    starts with new values. A database that is not migrated yet is not an error here.
    """
    current = settings_snapshot(settings)
    try:
        with db.session() as s:
            last = s.scalar(select(AuditEvent.details).where(AuditEvent.action == SETTINGS_CHANGED)
                            .order_by(AuditEvent.id.desc()).limit(1))
            if last is None:  # the first start: the values are the whole story
                record(s, SETTINGS_CHANGED, details={"first": True, "values": current})
                return current
            previous = last.get("values", {})
            changed = {k: {"from": previous.get(k), "to": v} for k, v in current.items() if previous.get(k) != v}
            if not changed:
                return None
            record(s, SETTINGS_CHANGED, details={"changed": changed, "values": current})
            return changed
    except Exception:
        log.warning("could not compare the settings with the audit log", exc_info=True)
        return None
