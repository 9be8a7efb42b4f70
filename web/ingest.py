"""Taking files into a batch: validate, strip metadata, store, one row each, enqueue after commit.

The costly work (hashing, decoding, stripping metadata, writing the file) runs outside any database
transaction. On SQLite every transaction takes the single write lock at BEGIN, so decoding inside
one would make every other upload, on every web worker, wait for this one. A request therefore
touches the database twice, briefly: once to learn which of its files the batch already holds, and
once to add the new rows.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from triage import working_copy
from triage.db import insert_ignoring_conflicts
from triage.imaging import RejectedImage, sanitize
from triage.jobs import enqueue_analysis
from triage.manifest import Fields, Manifest, Problem, parse_rows
from triage.names import display_name
from triage.rejections import Refusal, record_refusals
from triage.schema import Analysis, Batch, Image, ImageStatus, Lesion, Patient, utcnow
from triage.store import sha256_hex

from .services import Services

log = logging.getLogger(__name__)
ALREADY_IN_BATCH = "The same file is already in this batch."
NO_FIELDS = dict(lesion_id=None, age=None, sex=None, fitzpatrick=None, clinical_note=None)


class ManifestRejected(Exception):
    """The request's manifest cannot be applied as a whole (two rows disagree, a lesion is recorded for
    another patient): nothing of the request is stored. The problems name rows, never identifiers."""

    def __init__(self, problems: list[Problem]):
        super().__init__(f"{len(problems)} problems with the manifest")
        self.problems = problems

    def as_dict(self) -> dict:
        count = len(self.problems)
        return {"error": f"The manifest has {count} {'problem' if count == 1 else 'problems'}; nothing was uploaded.",
                "problems": [p.as_dict() for p in self.problems]}


@dataclass
class FileResult:
    name: str
    status: str  # accepted | duplicate | rejected
    image_id: int | None = None
    reason: str | None = None
    size: int = 0  # of the bytes sent, and their SHA-256: what a rejection is recorded with
    sha256: str | None = None

    def as_dict(self) -> dict:
        answer = {"name": self.name, "status": self.status, "image_id": self.image_id, "reason": self.reason}
        return {k: v for k, v in answer.items() if v is not None}


@dataclass
class _Pending:
    """A file that passed the size check and is not yet known to be a duplicate."""
    result: FileResult
    upload: FileStorage
    digest: str
    size: int
    row: dict = field(default_factory=dict)  # the image row, once the file is stored
    copies: list[FileResult] = field(default_factory=list)  # the same bytes again in this request


RESULT_STATUSES = ("accepted", "duplicate", "rejected")


def ingest(svc: Services, batch_id: int, files: list[FileStorage],
           record: Callable[[Session, dict[str, int]], None] | None = None,
           uploader_id: int | None = None, manifest: Manifest | None = None) -> list[FileResult]:
    """One result per file, in the order sent. `record(session, summary)` is called in the transaction
    that adds the rows and the record of the rejected files (by `uploader_id`), with the count of files
    per result, so an upload's audit event, its images and its refusals are committed together or not
    at all. `manifest` (checked by `checked_manifest`) says what the clinic said about each file: a file
    whose row has a bad field is rejected with the row's problems and never decoded or stored."""
    manifest = manifest or Manifest()
    results, firsts = _hash_files(svc, files, manifest)
    pending = _drop_known(svc, batch_id, firsts)
    created_keys: list[str] = []
    try:
        stored = _store_files(svc, pending, created_keys)
        accepted = _add_rows(svc, batch_id, stored, firsts, results, record, uploader_id, manifest)
    except BaseException:
        _forget_files(svc, created_keys)  # nothing was committed: leave no file behind
        raise
    _enqueue(svc, accepted)
    return results


def summarise(results: list[FileResult]) -> dict[str, int]:
    """How many files were accepted, were duplicates and were rejected."""
    return {status: sum(1 for r in results if r.status == status) for status in RESULT_STATUSES}


def _hash_files(svc: Services, files: list[FileStorage],
                manifest: Manifest) -> tuple[list[FileResult], list[_Pending]]:
    """Size limit, manifest row and SHA-256 of each file; a second copy within the request waits for its first."""
    limit = svc.settings.max_file_bytes
    results: list[FileResult] = []
    pending: list[_Pending] = []
    first_with: dict[str, _Pending] = {}
    for upload in files:
        result = FileResult(display_name(upload.filename), "rejected")
        results.append(result)
        refused = manifest.row_problems(result.name)
        if refused:  # recorded like any refusal, by size and hash, with the row's problems as the reason
            result.size, result.sha256 = _hash_rest(b"", upload.stream)
            result.reason = "Not taken: " + "; ".join(str(p) for p in refused)
            continue
        raw = upload.stream.read(limit + 1)
        if len(raw) > limit:
            result.size, result.sha256 = _hash_rest(raw, upload.stream)
            result.reason = f"The file is larger than the limit of {limit // (1024 * 1024)} MB."
            continue
        digest = sha256_hex(raw)
        result.size, result.sha256 = len(raw), digest
        if digest in first_with:
            first_with[digest].copies.append(result)
            continue
        first_with[digest] = _Pending(result, upload, digest, len(raw))
        pending.append(first_with[digest])
    return results, pending


def _hash_rest(start: bytes, stream) -> tuple[int, str]:
    """Size and SHA-256 of a file too large to take, read in pieces: it is recorded, never held."""
    digest, size = hashlib.sha256(start), len(start)
    while chunk := stream.read(1024 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _drop_known(svc: Services, batch_id: int, pending: list[_Pending]) -> list[_Pending]:
    """Files whose bytes the batch already holds are duplicates: no need to decode them."""
    if not pending:
        return pending
    known = known_hashes(svc, batch_id, [p.digest for p in pending])
    for p in pending:
        if p.digest in known:
            _mark_duplicate(p.result, known[p.digest][0])
    return [p for p in pending if p.digest not in known]


def known_hashes(svc: Services, batch_id: int, digests: list[str]) -> dict[str, tuple[int, str]]:
    """{sha256: (image id, display name)} for those of `digests` the batch already holds."""
    found: dict[str, tuple[int, str]] = {}
    with svc.db.session() as s:
        for start in range(0, len(digests), 500):  # stay well under every database's bound-parameter cap
            chunk = digests[start:start + 500]
            rows = s.execute(select(Image.sha256, Image.id, Image.display_name)
                             .where(Image.batch_id == batch_id, Image.sha256.in_(chunk)))
            found.update((digest, (image_id, display_name(name))) for digest, image_id, name in rows)
    return found


def _store_files(svc: Services, pending: list[_Pending], created_keys: list[str]) -> list[_Pending]:
    """Decode each file fully, strip its metadata and store it; the rejected drop out here."""
    stored = []
    for p in pending:
        p.upload.stream.seek(0)  # read again rather than hold every file of a large request in memory
        raw = p.upload.stream.read(p.size)
        try:
            clean = sanitize(raw, svc.settings.max_image_pixels, working=svc.settings.working_copy)
        except RejectedImage as exc:
            p.result.reason = str(exc)
            continue
        # Each upload is hashed once: a file with nothing to strip is stored as sent, under its own SHA-256.
        working = working_copy.pack(*clean.working) if clean.working else None
        key, created = svc.store.put(clean.data, p.digest if clean.data == raw else None, working=working)
        if created:
            created_keys.append(key)
        p.row = dict(display_name=p.result.name, sha256=p.digest, store_key=key, size_bytes=p.size,
                     width=clean.width, height=clean.height, format=clean.source_format,
                     stored_format=clean.format, phash=clean.phash,
                     status=ImageStatus.RECEIVED, **NO_FIELDS)
        stored.append(p)
    return stored


def _add_rows(svc: Services, batch_id: int, stored: list[_Pending], firsts: list[_Pending],
              results: list[FileResult], record, uploader_id: int | None, manifest: Manifest) -> list[int]:
    """One short transaction. A file that another request added to the batch meanwhile (the same
    folder uploaded twice at once) loses the race on the unique (batch, sha256) key and becomes a
    duplicate; nothing else in the request is affected. Returns the ids of the rows added."""
    with svc.db.session() as s:
        _apply_fields(s, stored, manifest, batch_id)
        inserted, winners = _insert_rows(s, batch_id, stored) if stored else ({}, {})
        for p in stored:
            if p.digest in inserted:
                p.result.status, p.result.image_id = "accepted", inserted[p.digest]
            else:
                _mark_duplicate(p.result, winners[p.digest])
        _settle_copies(firsts)
        record_refusals(s, batch_id, uploader_id, [Refusal(r.name, r.size, r.sha256, r.reason)
                                                   for r in results if r.status == "rejected"])
        if record is not None:
            record(s, summarise(results))
    return [p.result.image_id for p in stored if p.result.status == "accepted"]


def _insert_rows(s: Session, batch_id: int, stored: list[_Pending]) -> tuple[dict[str, int], dict[str, int]]:
    """(sha256 -> id of each row inserted, sha256 -> id of the row that won for each one that raced)."""
    # A row at a time with one statement: compiled once and cached, where a many-row INSERT would be
    # compiled afresh for every request's number of rows.
    statement = insert_ignoring_conflicts(s.get_bind(), Image.__table__, "batch_id", "sha256")
    statement = statement.returning(Image.id)
    inserted = {}
    for p in stored:
        image_id = s.execute(statement, {"batch_id": batch_id, **p.row}).scalar()
        if image_id is not None:
            inserted[p.digest] = image_id
    raced = [p.digest for p in stored if p.digest not in inserted]
    winners = dict(s.execute(select(Image.sha256, Image.id)
                             .where(Image.batch_id == batch_id, Image.sha256.in_(raced))).all()) if raced else {}
    return inserted, winners


def _settle_copies(firsts: list[_Pending]) -> None:
    for first in firsts:
        for copy in first.copies:  # a copy shares its first's fate: duplicate of it, or rejected alike
            if first.result.status == "rejected":
                copy.reason = first.result.reason
            else:
                _mark_duplicate(copy, first.result.image_id)


def _mark_duplicate(result: FileResult, image_id: int) -> None:
    result.status, result.image_id, result.reason = "duplicate", image_id, ALREADY_IN_BATCH


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
        enqueue_analysis(svc.celery, ids, per_job=svc.settings.batch_max_size)
    except Exception:
        log.exception("could not enqueue %d images; the reconciler will retry", len(ids))
        return
    with svc.db.session() as s:
        s.execute(update(Image).where(Image.id.in_(ids), Image.status == ImageStatus.RECEIVED)
                  .values(status=ImageStatus.QUEUED))


# --------------------------------------------------------------------------- patients and lesions

def checked_manifest(svc: Services, entries, names: list[str], site_id: int) -> Manifest:
    """The request's manifest rows (`triage.manifest.parse_rows`), checked against its files and against
    the lesions already recorded. Problems of the manifest as a whole raise ManifestRejected, before
    anything is stored; a row's own problems refuse only its file (in `ingest`)."""
    manifest = parse_rows(entries, names)
    with svc.db.session() as s:
        stored = stored_problems(s, manifest, site_id)
    if stored or manifest.whole_problems():
        raise ManifestRejected(manifest.problems + stored)  # every problem, the rows' own among them
    return manifest


def stored_problems(s: Session, manifest: Manifest, site_id: int) -> list[Problem]:
    """Rows that contradict what is recorded at the site: a lesion of another patient, or at another
    body site. Another site's lesions are another clinic's ids: never compared, never revealed."""
    lesions = sorted({f.lesion for f in manifest.files.values()})
    stored: dict[str, tuple[str, str | None]] = {}
    for start in range(0, len(lesions), 500):
        stored.update((lesion, (patient, site)) for lesion, patient, site in s.execute(
            select(Lesion.external_id, Patient.external_id, Lesion.body_site).join(Patient, Patient.id == Lesion.patient_id)
            .where(Lesion.site_id == site_id, Lesion.external_id.in_(lesions[start:start + 500]))))
    problems = []
    for path, fields in manifest.files.items():
        patient, site = stored.get(fields.lesion, (fields.patient, None))
        row = manifest.rows.get(path)
        if patient != fields.patient:
            problems.append(Problem("its lesion is already recorded for another patient: a lesion belongs to one "
                                    "patient.", row, "patient", path))
        if site and fields.body_site and site != fields.body_site:
            problems.append(Problem(f"its lesion is already recorded at another body site ({site}).", row,
                                    "body_site", path))
    return problems


def _apply_fields(s: Session, stored: list[_Pending], manifest: Manifest, batch_id: int) -> None:
    """Each stored file's row gets its lesion (recorded now if new) and the visit's context. Runs in the
    transaction that adds the images; a request that raced ours to record a lesion differently is caught
    here, and then nothing of ours is committed."""
    named = [(p, manifest.files[p.result.name]) for p in stored if p.result.name in manifest.files]
    if not named:
        return
    site_id = s.scalar(select(Batch.site_id).where(Batch.id == batch_id))  # the batch's clinic owns its ids
    lesion_ids = _record_lesions(s, [fields for _, fields in named], site_id)
    problems = stored_problems(s, manifest, site_id)
    if problems:
        raise ManifestRejected(problems)
    for p, fields in named:
        p.row.update(lesion_id=lesion_ids[fields.lesion], age=fields.age, sex=fields.sex,
                     fitzpatrick=fields.fitzpatrick, clinical_note=fields.note)


def _record_lesions(s: Session, named: list[Fields], site_id: int) -> dict[str, int]:
    """{lesion id: row id}, recording the patients and lesions not seen before; a lesion recorded without
    a body site gets the one given now."""
    bind = s.get_bind()
    patients = sorted({f.patient for f in named})
    s.execute(insert_ignoring_conflicts(bind, Patient.__table__, "site_id", "external_id"),
              [{"site_id": site_id, "external_id": p, "created_at": utcnow()} for p in patients])
    patient_ids = dict(s.execute(select(Patient.external_id, Patient.id)
                                 .where(Patient.site_id == site_id, Patient.external_id.in_(patients))).all())
    sites = {f.lesion: f.body_site for f in named if f.body_site}
    first = {f.lesion: f for f in reversed(named)}  # the manifest agrees with itself: any row of a lesion will do
    s.execute(insert_ignoring_conflicts(bind, Lesion.__table__, "site_id", "external_id"),
              [{"site_id": site_id, "external_id": lesion, "patient_id": patient_ids[f.patient],
                "body_site": sites.get(lesion), "created_at": utcnow()} for lesion, f in sorted(first.items())])
    for lesion, site in sites.items():
        s.execute(update(Lesion).where(Lesion.site_id == site_id, Lesion.external_id == lesion,
                                       Lesion.body_site.is_(None)).values(body_site=site))
    return dict(s.execute(select(Lesion.external_id, Lesion.id)
                          .where(Lesion.site_id == site_id, Lesion.external_id.in_(sorted(first)))).all())
