"""Pages and the JSON API."""
from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from triage.catalogue import CLASSES, DISCLAIMER
from triage.ids import parse_id
from triage.imaging import thumbnail_jpeg
from triage.schema import Analysis, Batch, Image
from triage.sites import SiteError, batch_in, image_in, site_choices, site_of_batch, upload_site

from .auth import audit, my_sites
from .health import health_report
from .ingest import ingest, summarise
from .metrics import count_files
from .presenters import batch_dict, recent_batches
from .services import services
from .upload_api import request_manifest, upload_limits

bp = Blueprint("portal", __name__)
MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


def _new_batch(name: str | None, site_id: int) -> int:
    name = (name or "").strip()[:200] or datetime.utcnow().strftime("Batch %Y-%m-%d %H:%M:%S")
    with services().db.session() as s:
        batch = Batch(name=name, created_by_id=current_user.id, site_id=site_id)
        s.add(batch)
        s.flush()
        audit(s, "batch.create", ("batch", batch.id), site=site_id, name=name)
        return batch.id


def _chosen_site(value) -> int:
    """The site a new batch goes to (`site` field or query parameter; else the user's only site).
    Raises SiteError, answered 400."""
    with services().db.session() as s:
        return upload_site(s, current_user, value)


@bp.app_errorhandler(SiteError)
def site_error(exc: SiteError):
    """An upload that names no site (or one not the user's) when it has to: a clear 400."""
    if request.path.startswith("/api/") or request.is_json:
        return jsonify(error=str(exc)), 400
    return render_template("error.html", code=400, message=str(exc)), 400


def _batch_urls(batch_id: int) -> dict:
    return {"batch_id": batch_id, "batch_url": f"/batches/{batch_id}", "api_url": f"/api/batches/{batch_id}"}


def _existing_batch(value, strict: bool = False) -> int | None:
    """The id of an existing batch of the user's sites named by a form field, or None (then a new batch
    is made). `strict`: a batch named but not found (or of another site) is a 404, not a new batch."""
    batch_id = parse_id(value)
    if batch_id is None:
        return None
    with services().db.session() as s:
        if batch_in(s, batch_id, my_sites(s)) is not None:
            return batch_id
    if strict:
        abort(404)
    return None


def _files_or_error():
    files = [f for f in request.files.getlist("files") if f.filename or f.content_length]
    limit = services().settings.max_files_per_request
    if not files:
        return None, ("No files were sent: choose one or more images (field name `files`).", 400)
    if len(files) > limit:
        return None, (f"Too many files in one request ({len(files)}); the limit is {limit}. "
                      "Send them in several requests.", 400)
    return files, None


def _upload(batch_id: int | None):
    files, error = _files_or_error()
    if error:
        return None, error
    if batch_id is None:
        site_id = _chosen_site(request.values.get("site"))
    else:
        with services().db.session() as s:
            site_id = site_of_batch(s, batch_id)
    # Before a new batch is made: a manifest wrong as a whole (ManifestRejected, a 422) stores nothing.
    manifest = request_manifest(services(), request.form.get("manifest"), files, site_id)
    if batch_id is None:
        batch_id = _new_batch(request.form.get("name"), site_id)
    outcome = ingest(services(), batch_id, files, uploader_id=current_user.id, manifest=manifest,
                     record=lambda s, summary: audit(s, "batch.upload", ("batch", batch_id), site=site_id,
                                                     **summary))
    results = [r.as_dict() for r in outcome]
    count_files(results)
    return {**_batch_urls(batch_id), "files": results, **summarise(outcome)}, None


@bp.get("/")
def index():
    """The upload page. `?batch=<id>` preselects a batch to add to (the batch page links here)."""
    selected = _existing_batch(request.args.get("batch"))
    with services().db.session() as s:
        batches = recent_batches(s, sites=my_sites(s))
        choices = [(b["id"], b["name"]) for b in batches]
        if selected and selected not in {b["id"] for b in batches}:
            choices.insert(0, (selected, s.get(Batch, selected).name))
        sites = site_choices(s, current_user)
    return render_template("index.html", batches=batches, choices=choices, selected=selected,
                           limits=upload_limits(services().settings), sites=sites)


@bp.post("/upload")
def upload_form():
    """The upload form without JavaScript: one request with every chosen file."""
    body, error = _upload(_existing_batch(request.form.get("batch"), strict=True))
    if error:
        return render_template("index.html", batches=[], choices=[], limits=upload_limits(services().settings),
                               error=error[0]), error[1]
    with services().db.session() as s:
        batch = batch_dict(s, body["batch_id"])
    return render_template("batch.html", batch=batch, upload=body)


@bp.get("/batches/<id:batch_id>")
def batch_page(batch_id: int):
    with services().db.session() as s:
        batch = batch_dict(s, batch_id) if batch_in(s, batch_id, my_sites(s)) else None
    if batch is None:
        abort(404)
    return render_template("batch.html", batch=batch, upload=None)


@bp.post("/api/batches")
def api_create_batch():
    """Multipart with files: a batch holding them. JSON `{"name": ...}`: an empty batch, which a bulk
    uploader creates first so that it can resume into it after an interruption."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error='Send JSON such as {"name": "Clinic A, 24 Nov"}.'), 400
        site = body.get("site", request.args.get("site"))
        batch_id = _new_batch(body.get("name") if isinstance(body.get("name"), str) else None,
                              _chosen_site(site))
        return jsonify({**_batch_urls(batch_id), "files": [], "accepted": 0, "duplicate": 0, "rejected": 0}), 201
    body, error = _upload(None)
    if error:
        return jsonify(error=error[0]), error[1]
    return jsonify(body), 201


@bp.post("/api/batches/<id:batch_id>/images")
def api_add_images(batch_id: int):
    with services().db.session() as s:
        if batch_in(s, batch_id, my_sites(s)) is None:
            return jsonify(error=f"Batch {batch_id} does not exist."), 404
    body, error = _upload(batch_id)
    if error:
        return jsonify(error=error[0]), error[1]
    return jsonify(body), 200


@bp.get("/api/batches/<id:batch_id>")
def api_batch(batch_id: int):
    with services().db.session() as s:
        visible = batch_in(s, batch_id, my_sites(s)) is not None
        batch = batch_dict(s, batch_id, with_images=request.args.get("images") != "0") if visible else None
    if batch is None:
        return jsonify(error=f"Batch {batch_id} does not exist."), 404
    return jsonify(batch)


@bp.get("/api/classes")
def api_classes():
    """The whole catalogue; a model serves the subset its card names (an analysis lists its own)."""
    return jsonify(disclaimer=DISCLAIMER, classes=[
        {"slug": c.slug, "folder": c.folder, "codes": list(c.codes), "name": c.display_name,
         "description": c.description, "severity": c.severity, "recommendation": c.recommendation}
        for c in CLASSES])


def _stored_file(key: str | None, mimetype: str, made_from=None) -> Response:
    """A stored file (or what `made_from` makes of its bytes), cached by the browser for an hour."""
    svc = services()
    if not key or not svc.store.exists(key):
        abort(404)
    data = svc.store.get(key)
    if made_from is not None:
        try:
            data = made_from(data)
        except Exception:  # a stored file that no longer decodes: no picture, never an error page
            abort(404)
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get("/images/<id:image_id>/file")
def image_file(image_id: int):
    key, stored_format = _visible_image(image_id)
    return _stored_file(key, MIMETYPES[stored_format])


@bp.get("/images/<id:image_id>/thumb")
def image_thumb(image_id: int):
    """A small JPEG of the photograph for the pages' lists (the link beside it opens the file itself)."""
    key, _ = _visible_image(image_id)
    return _stored_file(key, "image/jpeg", thumbnail_jpeg)


def _visible_image(image_id: int) -> tuple[str, str]:
    """(store key, stored format) of an image of one of the user's sites; 404 for any other."""
    with services().db.session() as s:
        image = image_in(s, image_id, my_sites(s))
        if image is None:
            abort(404)
        return image.store_key, image.stored_format


@bp.get("/images/<id:image_id>/heatmap")
def image_heatmap(image_id: int):
    with services().db.session() as s:
        if image_in(s, image_id, my_sites(s)) is None:
            abort(404)
        key = s.query(Analysis.heatmap_key).filter(Analysis.image_id == image_id) \
            .order_by(Analysis.id.desc()).limit(1).scalar()
    return _stored_file(key, "image/png")


@bp.get("/health")
def health():
    report = health_report(services())
    return jsonify(report), (200 if report["ok"] else 503)


@bp.get("/favicon.ico")
def favicon():
    """Pages name their icon; a browser showing a photograph or JSON asks here instead, signed in or not."""
    return redirect(url_for("static", filename="favicon.svg"), 301)


@bp.get("/batches")
def batches_redirect():
    return redirect(url_for("portal.index"))
