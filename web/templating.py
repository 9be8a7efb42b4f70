"""Small Jinja filters the templates share."""
from __future__ import annotations

from datetime import datetime

from triage.manifest import ROMAN
from triage.schema import utcnow

_SKIN_TYPES = {number: roman.upper() for roman, number in ROMAN.items()}


def ago(moment: datetime | None) -> str:
    """How long ago, in the largest whole unit: what a reviewer scanning the queue needs."""
    if moment is None:
        return ""
    seconds = max(0, int((utcnow() - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


def utc(moment: datetime | str | None) -> str:
    """A stored time, or one as the JSON API gives it (ISO 8601, `Z`), to the minute."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.removesuffix("Z"))
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def percent(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"


def filesize(size: int | None) -> str:
    """Bytes as a person reads them (decimal units, as the upload page shows them)."""
    if size is None:
        return ""
    if size < 1000:
        return f"{size} B"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def skin_type(number: int | None) -> str:
    """A Fitzpatrick skin type as clinicians write it (II, not 2); the exports keep the number."""
    return _SKIN_TYPES.get(number, "") if number else ""


def register_filters(app) -> None:
    app.jinja_env.filters.update(ago=ago, utc=utc, percent=percent, filesize=filesize, skin_type=skin_type)
