"""Who is asking: sign-in, browser sessions, API tokens, roles, CSRF and the sign-in rate limit.

Every endpoint needs a signed-in user except the few in PUBLIC_ENDPOINTS, so a new page is protected
without anyone remembering to protect it. A browser signs in with a password and gets a session
cookie; a script sends `Authorization: Bearer <token>`. Form posts from a session must carry a CSRF
token; requests authenticated by a bearer token cannot be forged by another site, so they need none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import wraps
from urllib.parse import urlsplit

from flask import (Blueprint, Flask, abort, current_app, jsonify, redirect, render_template, request, session,
                   url_for)
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, UserMixin, current_user, login_user
from flask_wtf.csrf import CSRFProtect

from triage.audit import record
from triage.auth import authenticate, user_for_token
from triage.schema import Role, User, utcnow
from triage.sessions import end_session, start_session, user_for_session
from triage.sites import memberships, visible_site_ids

from .login_limits import after_failure, after_success, init_login_limits
from .services import services

bp = Blueprint("auth", __name__)  # the sign-in page alone: its rate limit applies to the whole blueprint
PUBLIC_ENDPOINTS = {"auth.login", "portal.health", "portal.favicon", "static"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass
class CurrentUser(UserMixin):
    """The signed-in user for one request: plain values, so no database session has to stay open."""
    id: int
    username: str
    role: str
    key: str  # the key of the server-side session the cookie names (triage.sessions); "" for a token
    via_token: bool = False
    # {site id: role}, read at each request: a member removed from a site loses it at once, token or not.
    sites: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, user: User, key: str = "", via_token: bool = False, sites: dict[int, str] | None = None) -> "CurrentUser":
        return cls(user.id, user.username, user.role, key, via_token, dict(sites or {}))

    def get_id(self) -> str:
        return self.key

    @property
    def global_admin(self) -> bool:
        return self.role == Role.ADMIN

    def can(self, role: str) -> bool:
        """Whether the user has `role` anywhere: the deployment's admin everywhere, others at one of
        their sites. What they may do with a given row is then decided by the row's site (triage.sites)."""
        return self.global_admin or any(Role.includes(r, role) for r in self.sites.values())


def bearer_token(req) -> str | None:
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class TokenAwareSessionInterface(SecureCookieSessionInterface):
    """A request that authenticates with a bearer token has no cookie session: its cookie (if any) is
    not read and no cookie is set, so token and session authentication never mix."""

    def open_session(self, app, request):
        if bearer_token(request):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        if bearer_token(request):
            return
        super().save_session(app, session, response)


def init_auth(app: Flask, settings) -> None:
    app.session_interface = TokenAwareSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="dermatriage_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,  # production runs behind HTTPS
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in _gate, which knows how the request authenticated
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session: a case page may stay open for hours
    )
    manager = LoginManager(app)
    manager.user_loader(_user_from_session)
    manager.request_loader(_user_from_token)
    CSRFProtect(app)
    init_login_limits(app, settings, bp, refused=_refused)
    app.before_request(_gate)
    app.register_blueprint(bp)


def _user_from_session(key: str) -> CurrentUser | None:
    svc = services()
    with svc.db.session() as s:
        user = user_for_session(s, key, idle=timedelta(hours=svc.settings.session_hours))
        return CurrentUser.of(user, key, sites=memberships(s, user.id)) if user else None


def _user_from_token(req) -> CurrentUser | None:
    token = bearer_token(req)
    if not token:
        return None
    with services().db.session() as s:
        user = user_for_token(s, token)
        return CurrentUser.of(user, via_token=True, sites=memberships(s, user.id)) if user else None


def _wants_json() -> bool:
    return (request.path.startswith("/api/") or bearer_token(request) is not None
            or request.accept_mimetypes.best == "application/json")


def _gate():
    """Runs before every view: authentication first, then CSRF for state-changing browser requests."""
    if request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        if _wants_json():
            response = jsonify(error="Sign in, or send an API token as `Authorization: Bearer <token>`.")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    if request.method not in SAFE_METHODS and not getattr(current_user, "via_token", False):
        current_app.extensions["csrf"].protect()


def requires(role: str):
    """Only users whose role includes `role` get past; others get 403."""
    def decorate(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            if not current_user.can(role):
                abort(403, f"This needs the {role} role.")
            return view(*args, **kwargs)
        return guarded
    return decorate


def requires_session(what: str):
    """Only a signed-in browser session gets past, never an API token: a leaked token must not mint
    more tokens, change a password or manage users, or it would outlive its own revocation."""
    def decorate(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            if getattr(current_user, "via_token", False):
                abort(403, f"{what} needs a signed-in browser session, not an API token.")
            return view(*args, **kwargs)
        return guarded
    return decorate


def my_sites(session, at_least: str = Role.UPLOADER):
    """The sites the current user may see with at least `at_least` (None: every site), from their
    memberships as they are now (triage.sites.visible_site_ids: the one way pages are scoped)."""
    return visible_site_ids(session, current_user, at_least)


def requires_global_admin(view):
    """The deployment's admin only (sites, notifications of every site); a site's admin gets 404."""
    @wraps(view)
    def guarded(*args, **kwargs):
        if not current_user.global_admin:
            abort(404)
        return view(*args, **kwargs)
    return guarded


def client_ip() -> str | None:
    return (request.remote_addr or "")[:45] or None


def audit(session, action: str, target: tuple[str, int] | None = None, *, site: int | None = None,
          **details) -> None:
    """An audit event by the current user, in `session`'s transaction; `site`: the site whose data it
    concerns, whose admins read it (None: the deployment's admins only)."""
    actor = current_user.id if current_user.is_authenticated else None
    if getattr(current_user, "via_token", False):
        details.setdefault("via", "token")
    event = record(session, action, actor_id=actor, target=target, details=details, ip=client_ip())
    event.site_id = site  # set before the flush: the row is inserted with it, never updated


def _refused(limit: str) -> None:
    """A sign-in refused by a rate limit (429) is audited like a failed one; the password was not checked."""
    username = (request.form.get("username") or "").strip()[:80]
    with services().db.session() as s:
        record(s, "auth.login_refused", details={"username": username, "limit": limit}, ip=client_ip())


def _safe_next(target: str | None) -> str:
    """Only a path on this site: an open redirect would let a phishing link borrow our sign-in page."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url)
        return render_template("login.html", next=next_url)
    username = (request.form.get("username") or "").strip()[:80]
    password = request.form.get("password") or ""
    replaced = current_user.key if current_user.is_authenticated else ""  # this browser's session, if any
    svc = services()
    with svc.db.session() as s:
        user = authenticate(s, username, password)
        if user is None:
            record(s, "auth.login_failed", details={"username": username}, ip=client_ip())
        else:
            user.last_login_at = utcnow()
            record(s, "auth.login", actor_id=user.id, target=("user", user.id), ip=client_ip())
            if replaced:
                end_session(s, replaced)
            signed_in = CurrentUser.of(user, start_session(s, user))
    if user is None:
        after_failure(svc, username)
        return render_template("login.html", next=next_url, username=username,
                               error="Wrong username or password."), 401
    after_success(svc, username)
    session.clear()  # a fresh session at sign-in: nothing planted before it survives
    login_user(signed_in)
    session.permanent = True
    return redirect(next_url)
