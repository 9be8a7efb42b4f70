"""URL converters. `<id:name>` takes a row id: a number outside what a row id can be is a 404, not
a database error (triage.ids says why)."""
from __future__ import annotations

from werkzeug.routing import BaseConverter, ValidationError

from triage.ids import parse_id


class IdConverter(BaseConverter):
    regex = r"\d+"
    part_isolating = True

    def to_python(self, value: str) -> int:
        found = parse_id(value)
        if found is None:
            raise ValidationError()
        return found

    def to_url(self, value) -> str:
        return str(int(value))
