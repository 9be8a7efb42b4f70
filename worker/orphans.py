"""Sweeping the image store: files that no row refers to (an upload killed before its commit), and
working copies whose image is no longer waiting for the worker."""
from __future__ import annotations

import logging
import time

from sqlalchemy import select

from triage.db import Database
from triage.schema import Analysis, Image, ImageStatus
from triage.store import WORKING_SUFFIX, ImageStore, S3ImageStore

from .claims import WAITING

log = logging.getLogger(__name__)
_KEEPS_COPY = frozenset((*WAITING, ImageStatus.PROCESSING))  # an image whose copy may still be read


def sweep_orphans(db: Database, store: ImageStore | S3ImageStore, grace_s: float) -> int:
    """Delete unreferenced files older than grace_s (younger ones may belong to an upload in flight)."""
    cutoff = time.time() - grace_s
    old = [name for name, modified in store.entries() if modified <= cutoff]
    if not old:
        return 0
    with db.session() as s:
        images = s.execute(select(Image.store_key, Image.status)).all()
        used = {key for key, _ in images}
        used |= set(s.scalars(select(Analysis.heatmap_key).where(Analysis.heatmap_key.is_not(None))))
        # The worker removes a working copy once it has read it; one left by an image that was analysed
        # from its photograph instead (a copy that arrived late, or a retry) goes here.
        used |= {key + WORKING_SUFFIX for key, status in images if status in _KEEPS_COPY}
    removed = 0
    for name in old:
        if name not in used:
            store.remove(name)
            removed += 1
    if removed:
        log.info("removed %d orphaned files from the image store", removed)
    return removed
