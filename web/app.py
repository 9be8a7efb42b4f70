"""The Flask app factory."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from triage.audit import record_settings_change
from triage.broker import redis_client
from triage.catalogue import DISCLAIMER
from triage.db import Database
from triage.jobs import make_celery
from triage.secret_key import session_secret
from triage.settings import Settings, get_settings
from triage.store import open_store

from . import account, admin, auth, exports, metrics, review, upload_api
from .converters import IdConverter
from .routes import bp
from .services import Services
from .templating import register_filters

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.url_map.converters["id"] = IdConverter  # before any route names one
    app.config.update(
        SECRET_KEY=session_secret(settings),
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_PARTS=settings.max_files_per_request + 50,
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
    )
    services = Services(settings=settings, db=Database(settings.database_url),
                        store=open_store(settings), celery=make_celery(settings, "dermatriage-web"),
                        redis=redis_client(settings.redis_url))
    app.extensions["dermatriage"] = services
    auth.init_auth(app, settings)
    for blueprint in (bp, upload_api.bp, account.bp, admin.bp, review.bp, exports.bp, metrics.bp):
        app.register_blueprint(blueprint)
    app.context_processor(lambda: {"disclaimer": DISCLAIMER, "flower_url": settings.flower_url})
    register_filters(app)
    record_settings_change(services.db, settings)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _security_headers(response):
    if current_user.is_authenticated:
        # Nothing a signed-in user was shown (results, names, a new API token) is kept in a cache, where
        # the next person at a shared computer, or the back button after signing out, would find it.
        # Photographs set their own caching: content-addressed, shown many times on one page.
        response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json"


def _http_error(exc: HTTPException):
    message = {413: "The upload is larger than the server accepts in one request; send fewer or smaller files.",
               429: "Too many failed sign-in attempts from this address. Wait a minute, then try again."}
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
