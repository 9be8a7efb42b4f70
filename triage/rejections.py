"""Files an upload did not take into its batch, kept on the server with the batch.

Metadata only (name, size, SHA-256, reason, time, uploader), never the bytes: a refused file is not
stored. Recorded in the session's transaction, so an upload's refusals are committed with its images
and its audit event or not at all; listed wherever the batch is shown, to anyone who may see it.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from .schema import RejectedFile, User

REJECTED = "rejected"  # the server refused it
SKIPPED = "skipped"  # the uploader did not send it, and said so
MAX_REASON = 500
CHUNK = 500  # names per IN (...): well under every database's bound-parameter cap


@dataclass(frozen=True)
class Refusal:
    name: str
    size_bytes: int
    sha256: str | None
    reason: str
    kind: str = REJECTED


def record_refusals(session, batch_id: int, uploaded_by_id: int | None, refusals: list[Refusal]) -> int:
    """Add to the session the refusals this batch has not recorded yet (a file refused again under the
    same name, with the same bytes, is the same refusal); returns how many are new."""
    if not refusals:
        return 0
    names = sorted({r.name for r in refusals})
    seen = set()
    for start in range(0, len(names), CHUNK):
        seen.update(session.execute(select(RejectedFile.name, RejectedFile.sha256, RejectedFile.kind).where(
            RejectedFile.batch_id == batch_id, RejectedFile.name.in_(names[start:start + CHUNK]))).all())
    new = []
    for r in refusals:
        if (r.name, r.sha256, r.kind) in seen:
            continue
        seen.add((r.name, r.sha256, r.kind))
        new.append(RejectedFile(batch_id=batch_id, name=r.name, size_bytes=r.size_bytes, sha256=r.sha256,
                                kind=r.kind, reason=r.reason[:MAX_REASON], uploaded_by_id=uploaded_by_id))
    session.add_all(new)
    return len(new)


def refusals_in(session, batch_id: int) -> list[tuple[RejectedFile, str | None]]:
    """Every file the batch's uploads refused or skipped, in the order they came, with the uploader's name."""
    return session.execute(select(RejectedFile, User.username).outerjoin(User, User.id == RejectedFile.uploaded_by_id)
                           .where(RejectedFile.batch_id == batch_id).order_by(RejectedFile.id)).all()
