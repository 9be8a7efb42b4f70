"""Administration: users, the audit log and undelivered notifications. Admins only, and only from a
signed-in browser session."""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from triage.auth import AuthError, active_admins, create_user, hash_password, revoke_tokens
from triage.ids import parse_id
from triage.notifications import undelivered
from triage.schema import AuditEvent, Role, User
from triage.sessions import end_sessions, live_sessions

from .auth import audit, requires, requires_session
from .services import services

bp = Blueprint("admin", __name__, url_prefix="/admin")
AUDIT_PAGE = 100
NOTIFICATIONS_PAGE = 200  # the oldest; more than that undelivered means the receiver is down, which one page shows


@bp.before_request
@requires(Role.ADMIN)
@requires_session("User administration")
def _admins_in_person():
    pass


def _users_page(status: int = 200, **extra):
    svc = services()
    with svc.db.session() as s:
        users = s.scalars(select(User).order_by(User.username)).all()
        sessions = live_sessions(s, idle=timedelta(hours=svc.settings.session_hours))
    return render_template("admin_users.html", users=users, sessions=sessions, roles=Role.ALL, **extra), status


@bp.get("/users")
def users():
    return _users_page()


@bp.post("/users")
def create():
    form = request.form
    try:
        with services().db.session() as s:
            user = create_user(s, form.get("username") or "", form.get("password") or "", form.get("role") or "")
            audit(s, "user.create", ("user", user.id), username=user.username, role=user.role)
    except AuthError as exc:
        return _users_page(400, error=str(exc))
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>")
def update(user_id: int):
    """Change a user's role, switch them off or on, or set a new password."""
    form = request.form
    try:
        with services().db.session() as s:
            user = s.get(User, user_id)
            if user is None:
                abort(404)
            changes = _apply(s, user, form)
            s.flush()
            if active_admins(s) == 0:  # rolled back: someone must be able to manage users
                raise AuthError("That would leave no active admin.")
            if changes:
                audit(s, "user.update", ("user", user.id), username=user.username, **changes)
    except AuthError as exc:
        return _users_page(400, error=str(exc))
    return redirect(url_for("admin.users"))


def _apply(s, user: User, form) -> dict:
    changes = {}
    role = form.get("role")
    if role and role != user.role:
        if role not in Role.ALL:
            raise AuthError(f"Unknown role {role!r}.")
        changes["role"] = {"from": user.role, "to": role}
        user.role = role
    if form.get("password"):
        user.password_hash = hash_password(form["password"])
        changes["password_reset"] = True  # never the password itself
        # Whoever is signed in with the old password is signed out (the admin's own session stays).
        changes["sessions_ended"] = end_sessions(s, user.id, keep=current_user.key)
    active = form.get("active", "1" if user.active else "0") == "1"
    if active != user.active:
        changes["active"] = {"from": user.active, "to": active}
        user.active = active
        if not active:  # for good: switched on again, the user signs in anew and makes new tokens
            changes["sessions_ended"] = changes.get("sessions_ended", 0) + end_sessions(s, user.id)
            changes["tokens_revoked"] = revoke_tokens(s, user.id)
    return changes


@bp.post("/users/<id:user_id>/sign-out")
def sign_out_everywhere(user_id: int):
    """End every session of a user at once (a lost laptop, a shared computer); API tokens are kept."""
    with services().db.session() as s:
        user = s.get(User, user_id)
        if user is None:
            abort(404)
        ended = end_sessions(s, user.id)
        audit(s, "user.signed_out", ("user", user.id), username=user.username, sessions_ended=ended)
    return redirect(url_for("admin.users"))


@bp.get("/audit")
def audit_log():
    """Newest first, a page at a time by id (no counting); filter by action and by user."""
    action = (request.args.get("action") or "").strip() or None
    actor, before = parse_id(request.args.get("actor")), parse_id(request.args.get("before"))
    query = select(AuditEvent, User.username).outerjoin(User, User.id == AuditEvent.actor_id)
    if action:  # a prefix: `review` finds every review.* action, `batch.upload` that one
        query = query.where(AuditEvent.action.startswith(action, autoescape=True))
    if actor is not None:
        query = query.where(AuditEvent.actor_id == actor)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    with services().db.session() as s:
        rows = s.execute(query.order_by(AuditEvent.id.desc()).limit(AUDIT_PAGE + 1)).all()
        users = s.execute(select(User.id, User.username).order_by(User.username)).all()
    more = len(rows) > AUDIT_PAGE
    rows = rows[:AUDIT_PAGE]
    older = rows[-1][0].id if more else None
    return render_template("admin_audit.html", rows=rows, users=users, action=action,
                           actor=actor, older=older)


@bp.get("/notifications")
def notifications():
    """Urgent-case notifications the webhook has not acknowledged yet, with their attempts and last error."""
    svc = services()
    with svc.db.session() as s:
        rows = undelivered(s, NOTIFICATIONS_PAGE)
    return render_template("admin_notifications.html", rows=rows, webhook=bool(svc.settings.webhook_url),
                           more=len(rows) == NOTIFICATIONS_PAGE)
