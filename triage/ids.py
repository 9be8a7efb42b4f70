"""Row ids as they arrive from outside (URLs, query strings, forms, the command line).

Every table's key is an `Integer`, which PostgreSQL stores in 32 bits: a larger number in a query is
a database error there (and one of 2^63 or more on SQLite too), where it should simply find nothing.
So an id from outside is checked here, once, before it reaches SQL: anything that is not a plain
number between 1 and MAX_ID names no row.
"""
from __future__ import annotations

MAX_ID = 2 ** 31 - 1  # PostgreSQL's `integer`; SQLite's rowids are wider, but no row of ours gets there


def parse_id(text) -> int | None:
    """The id `text` names, or None when it cannot name a row (empty, not ASCII digits, 0, too large)."""
    text = (text or "").strip() if isinstance(text, str) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ID)):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None
