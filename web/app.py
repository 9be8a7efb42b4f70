"""The Flask app factory."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from triage.catalogue import DISCLAIMER
from triage.db import Database
from triage.jobs import make_celery
from triage.settings import Settings, get_settings
from triage.store import ImageStore

from .routes import bp
from .services import Services

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    settings.check_production()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_PARTS=settings.max_files_per_request + 50,
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
    )
    app.extensions["dermatriage"] = Services(
        settings=settings, db=Database(settings.database_url), store=ImageStore(settings.image_store),
        celery=make_celery(settings, "dermatriage-web"))
    app.register_blueprint(bp)
    app.context_processor(lambda: {"disclaimer": DISCLAIMER})
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _http_error(exc: HTTPException):
    message = {413: "The upload is larger than the server accepts in one request; send fewer or smaller files."}
    text = message.get(exc.code, exc.description)
    if _wants_json():
        return jsonify(error=text), exc.code
    return render_template("error.html", code=exc.code, message=text), exc.code


def _unexpected_error(exc: Exception):
    logging.getLogger(__name__).exception("unhandled error on %s", request.path)
    text = "The server could not complete this request; nothing was half-saved. Please try again."
    if _wants_json():
        return jsonify(error=text), 503
    return render_template("error.html", code=503, message=text), 503
