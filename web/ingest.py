"""Taking files into a batch: validate, strip metadata, store, one row each, enqueue after commit."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import FileStorage

from triage.imaging import RejectedImage, sanitize
from triage.jobs import enqueue_analysis
from triage.schema import Analysis, Image, ImageStatus
from triage.store import sha256_hex

from .services import Services

log = logging.getLogger(__name__)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 1024


@dataclass
class FileResult:
    name: str
    status: str  # accepted | duplicate | rejected
    image_id: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def display_name(raw: str | None) -> str:
    """A client's filename is only ever shown, never used as a path: clean it for display."""
    name = _CONTROL.sub("", raw or "").replace("\\", "/").strip()
    return (name or "unnamed")[-MAX_NAME:]


def ingest(svc: Services, batch_id: int, files: list[FileStorage]) -> list[FileResult]:
    results: list[FileResult] = []
    created_keys: list[str] = []
    accepted: list[int] = []
    try:
        with svc.db.session() as s:
            for upload in files:
                result = _ingest_one(svc, s, batch_id, upload, created_keys)
                results.append(result)
                if result.status == "accepted":
                    accepted.append(result.image_id)
    except BaseException:
        _forget_files(svc, created_keys)  # nothing was committed: leave no file behind
        raise
    _enqueue(svc, accepted)
    return results


def _ingest_one(svc: Services, s, batch_id: int, upload: FileStorage, created_keys: list[str]) -> FileResult:
    name = display_name(upload.filename)
    limit = svc.settings.max_file_bytes
    raw = upload.stream.read(limit + 1)
    if len(raw) > limit:
        return FileResult(name, "rejected", reason=f"The file is larger than the limit of {limit // (1024 * 1024)} MB.")
    digest = sha256_hex(raw)
    existing = s.scalar(select(Image.id).where(Image.batch_id == batch_id, Image.sha256 == digest))
    if existing is not None:
        return FileResult(name, "duplicate", existing, "The same file is already in this batch.")
    try:
        clean = sanitize(raw, svc.settings.max_image_pixels)
    except RejectedImage as exc:
        return FileResult(name, "rejected", reason=str(exc))
    key, created = svc.store.put(clean.data)
    if created:
        created_keys.append(key)
    image = Image(batch_id=batch_id, display_name=name, sha256=digest, store_key=key, size_bytes=len(raw),
                  width=clean.width, height=clean.height, format=clean.source_format, phash=clean.phash,
                  status=ImageStatus.RECEIVED)
    try:
        with s.begin_nested():  # a concurrent upload of the same file loses only this file
            s.add(image)
            s.flush()
    except IntegrityError:
        other = s.scalar(select(Image.id).where(Image.batch_id == batch_id, Image.sha256 == digest))
        return FileResult(name, "duplicate", other, "The same file is already in this batch.")
    return FileResult(name, "accepted", image.id)


def _forget_files(svc: Services, keys: list[str]) -> None:
    if not keys:
        return
    with svc.db.session() as s:
        used = set(s.scalars(select(Image.store_key).where(Image.store_key.in_(keys))))
        used |= set(s.scalars(select(Analysis.heatmap_key).where(Analysis.heatmap_key.in_(keys))))
    for key in set(keys) - used:
        svc.store.delete(key)


def _enqueue(svc: Services, ids: list[int]) -> None:
    """After the commit: one job per image, then received -> queued. A broker outage is not fatal:
    the rows stay `received` and the reconciler enqueues them when the broker is back."""
    if not ids:
        return
    try:
        enqueue_analysis(svc.celery, ids)
    except Exception:
        log.exception("could not enqueue %d images; the reconciler will retry", len(ids))
        return
    with svc.db.session() as s:
        s.execute(update(Image).where(Image.id.in_(ids), Image.status == ImageStatus.RECEIVED)
                  .values(status=ImageStatus.QUEUED))
