"""What a bulk uploader (the portal's page or `dermatriage upload`) asks before it sends anything.

`GET /api/uploads/limits` tells it how to cut a folder into requests the server will take, and
`POST /api/batches/<id>/missing` which files a batch still lacks, so an interrupted upload resumes
by sending only those, and `POST /api/uploads/manifest` whether the folder's manifest (or its
<patient>/<lesion>/ folders) holds, and what each photograph's fields are, before anything is sent. Files are named by the SHA-256 of their bytes where the client can compute
it, else by the folder-relative path they were uploaded under. `POST /api/batches/<id>/skipped` is
what it tells: the files of the folder it did not send, recorded with the batch like rejected ones.
"""
from __future__ import annotations

import json
import re

from flask import Blueprint, jsonify, request
from flask_login import current_user
from sqlalchemy import select

from triage.ids import parse_id
from triage.imaging import ACCEPTED_FORMATS
from triage.manifest import LAYOUT, Manifest, Problem, from_layout, parse_csv
from triage.names import display_name
from triage.rejections import SKIPPED, Refusal, record_refusals
from triage.schema import Batch, Image
from triage.sites import SiteError, batch_in, upload_site

from .auth import audit, my_sites
from .ingest import ManifestRejected, checked_manifest, known_hashes, stored_problems
from .services import services

bp = Blueprint("uploads", __name__)
# What the uploaders send; anything else in a folder is listed as skipped and never sent. The
# server decides by content, not by name: a text file called lesion.jpg is sent and rejected.
EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp")
MAX_LOOKUP = 10_000  # hashes or names in one question: a clinic day is a few thousand photographs
NOT_SENT = "Not sent: not a JPEG, PNG or WEBP file."
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def upload_limits(settings) -> dict:
    """What an uploader must respect; the page gets the same as data attributes."""
    return {"max_file_bytes": settings.max_file_bytes, "max_files_per_request": settings.max_files_per_request,
            "max_request_bytes": settings.max_request_bytes, "max_lookup": MAX_LOOKUP,
            "formats": list(ACCEPTED_FORMATS), "extensions": list(EXTENSIONS)}


@bp.app_errorhandler(ManifestRejected)
def manifest_rejected(exc: ManifestRejected):
    """Whatever route the upload came by: every problem, and nothing stored."""
    return jsonify(exc.as_dict()), 422


def request_manifest(svc, part: str | None, files, site_id: int) -> Manifest | None:
    """The `manifest` form part of an upload (JSON rows, keyed by each file's name as sent), checked
    against the lesions recorded at `site_id`; None when there is none. Raises ManifestRejected."""
    if part is None:
        return None
    try:
        entries = json.loads(part)
    except ValueError:
        raise ManifestRejected([Problem("The `manifest` part is not JSON.")]) from None
    return checked_manifest(svc, entries, [f.filename or "" for f in files], site_id)


@bp.post("/api/uploads/manifest")
def check_manifest():
    """JSON `{"files": [paths in the folder], "manifest": "<manifest.csv's text>"}` or `{"files": [...],
    "layout": "patient/lesion"}`, with `batch` (adding to it) or `site` (a new batch's) -> 200 with each named
    photograph's fields, or 422 with every problem.
    What both uploaders ask before they create a batch or send a photograph; nothing is stored."""
    body = request.get_json(silent=True)
    files, text, layout = _manifest_request(body)
    if files is None:
        return jsonify(error='Send JSON: {"files": ["room 1/a.jpg", ...], "manifest": "path,patient,..."} '
                             f'or {{"files": [...], "layout": "{LAYOUT}"}}.'), 400
    if text is not None and layout:
        manifest = Manifest(problems=[Problem(f"The folder has a manifest and the {LAYOUT} folder convention was "
                                              "chosen too: use one or the other.")])
    else:
        manifest = parse_csv(text, files) if text is not None else from_layout(files)
    problems = list(manifest.problems)
    with services().db.session() as s:
        # Checked against the site the upload will go to: the site of `batch` when it adds to one, else
        # `site` as for a new batch (or the user's only site).
        if body.get("batch") not in (None, ""):
            batch = batch_in(s, parse_id(str(body["batch"])) or 0, my_sites(s))
            if batch is None:
                return jsonify(error=f"Batch {body['batch']} does not exist."), 404
            site_id = batch.site_id
        else:
            try:
                site_id = upload_site(s, current_user, body.get("site", request.args.get("site")))
            except SiteError as exc:
                return jsonify(error=str(exc)), 400
        problems += stored_problems(s, manifest, site_id)
    if problems:
        return jsonify(ManifestRejected(problems).as_dict()), 422
    return jsonify(files={path: fields.as_dict() for path, fields in manifest.files.items()},
                   named=len(manifest.files))


def _manifest_request(body) -> tuple[list[str] | None, str | None, bool]:
    if not isinstance(body, dict):
        return None, None, False
    files, text, layout = body.get("files"), body.get("manifest"), body.get("layout")
    if not (isinstance(files, list) and len(files) <= MAX_LOOKUP and all(isinstance(f, str) for f in files)):
        return None, None, False
    if not (text is None or isinstance(text, str)) or layout not in (None, "", LAYOUT) or (text is None and not layout):
        return None, None, False
    return files, text, bool(layout)


@bp.get("/api/uploads/limits")
def limits():
    return jsonify(upload_limits(services().settings))


@bp.post("/api/batches/<id:batch_id>/missing")
def missing(batch_id: int):
    """JSON `{"sha256": [...], "names": [...]}` (either or both) -> which of them the batch lacks,
    and for those it has, the image id (and, for hashes, the name it holds them under)."""
    body = request.get_json(silent=True)
    hashes, names, error = _lookup_lists(body)
    if error:
        return jsonify(error=error), 400
    svc = services()
    with svc.db.session() as s:
        if batch_in(s, batch_id, my_sites(s)) is None:
            return jsonify(error=f"Batch {batch_id} does not exist."), 404
    by_hash = known_hashes(svc, batch_id, sorted(set(hashes))) if hashes else {}
    by_name = _known_names(batch_id, names) if names else {}
    return jsonify(
        batch_id=batch_id,
        missing={"sha256": [h for h in hashes if h not in by_hash],
                 "names": [n for n in names if display_name(n) not in by_name]},
        present={"sha256": {h: {"image_id": i, "name": n} for h, (i, n) in by_hash.items()},
                 "names": {n: by_name[display_name(n)] for n in names if display_name(n) in by_name}})


def _lookup_lists(body) -> tuple[list[str], list[str], str | None]:
    if not isinstance(body, dict):
        return [], [], 'Send JSON: {"sha256": ["<64 hex digits>", ...]} and/or {"names": ["folder/file.jpg", ...]}.'
    hashes, names = body.get("sha256", []), body.get("names", [])
    if not isinstance(hashes, list) or not isinstance(names, list):
        return [], [], "`sha256` and `names` must be lists."
    if len(hashes) > MAX_LOOKUP or len(names) > MAX_LOOKUP:
        return [], [], f"Ask about at most {MAX_LOOKUP} hashes and {MAX_LOOKUP} names at a time."
    hashes = [h.lower() if isinstance(h, str) else h for h in hashes]
    if not all(isinstance(h, str) and _SHA256.match(h) for h in hashes):
        return [], [], "Every entry of `sha256` must be a SHA-256 in 64 hex digits."
    if not all(isinstance(n, str) for n in names):
        return [], [], "Every entry of `names` must be a string."
    return hashes, names, None


def _known_names(batch_id: int, names: list[str]) -> dict[str, int]:
    """{display name: image id} for those of `names` the batch holds (cleaned as at upload)."""
    wanted = sorted({display_name(n) for n in names})
    found: dict[str, int] = {}
    with services().db.session() as s:
        for start in range(0, len(wanted), 500):
            rows = s.execute(select(Image.display_name, Image.id).where(
                Image.batch_id == batch_id, Image.display_name.in_(wanted[start:start + 500])))
            found.update(rows.all())
    return found


@bp.post("/api/batches/<id:batch_id>/skipped")
def skipped(batch_id: int):
    """JSON `{"files": [{"name": "folder/notes.txt", "size": 120, "reason": "..."}, ...]}`: files of the
    folder the uploader left out (by name not a photograph, or over the size limit). They are recorded
    with the batch, with the audit event, so that the batch says what it lacks to whoever opens it."""
    refusals, error = _skipped_files(request.get_json(silent=True))
    if error:
        return jsonify(error=error), 400
    with services().db.session() as s:
        batch = batch_in(s, batch_id, my_sites(s))
        if batch is None:
            return jsonify(error=f"Batch {batch_id} does not exist."), 404
        recorded = record_refusals(s, batch_id, current_user.id, refusals)
        audit(s, "batch.skip", ("batch", batch_id), site=batch.site_id, reported=len(refusals), recorded=recorded)
    return jsonify(batch_id=batch_id, recorded=recorded)


def _skipped_files(body) -> tuple[list[Refusal], str | None]:
    example = 'Send JSON: {"files": [{"name": "folder/notes.txt", "size": 120, "reason": "not a photograph"}]}.'
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list):
        return [], example
    if len(files) > MAX_LOOKUP:
        return [], f"Report at most {MAX_LOOKUP} files at a time."
    refusals = []
    for f in files:
        size = f.get("size") if isinstance(f, dict) else None
        if not (isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(size, int)
                and not isinstance(size, bool) and 0 <= size < 2 ** 62
                and isinstance(f.get("reason", NOT_SENT), str)):
            return [], "Every file needs a `name` (text), a `size` (bytes, a whole number) and may have a `reason` (text)."
        refusals.append(Refusal(display_name(f["name"]), size, None, f.get("reason") or NOT_SENT, SKIPPED))
    return refusals, None
