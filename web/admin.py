"""Administration: users, sites, the audit log and undelivered notifications. Admins only, and only
from a signed-in browser session.

The deployment's admin (`users.role` admin) manages every user and the sites; a site's admin (role
admin at a site) manages the users of the sites they administer, and their role there, and reads those
sites' audit events. A user or site out of the reader's reach is answered 404, as if absent.
"""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from triage.auth import AuthError, active_admins, create_user, hash_password, revoke_tokens
from triage.ids import parse_id
from triage.notifications import undelivered
from triage.schema import AuditEvent, Role, Site, User
from triage.sessions import end_sessions, live_sessions
from triage.sites import (SiteError, audit_in, create_site, in_sites, members_by_user, remove_membership,
                          set_membership, users_at)

from .auth import audit, my_sites, requires, requires_global_admin, requires_session
from .services import services

bp = Blueprint("admin", __name__, url_prefix="/admin")
AUDIT_PAGE = 100
NOTIFICATIONS_PAGE = 200  # the oldest; more than that undelivered means the receiver is down, which one page shows


@bp.before_request
@requires(Role.ADMIN)
@requires_session("User administration")
def _admins_in_person():
    pass


def _admin_sites(s):
    """The sites whose users the current admin manages; None: every site (the deployment's admin)."""
    return my_sites(s, Role.ADMIN)


def _sites(s, sites) -> list[Site]:
    return list(s.scalars(select(Site).where(in_sites(Site.id, sites)).order_by(Site.name)))


def _users_page(status: int = 200, **extra):
    svc = services()
    with svc.db.session() as s:
        sites = _admin_sites(s)
        users = users_at(s, sites)
        members = members_by_user(s, [u.id for u in users])
        sessions = live_sessions(s, idle=timedelta(hours=svc.settings.session_hours))
        site_list = _sites(s, sites)
    names = {site.id: site.name for site in site_list}
    # Each user's roles at the sites the reader manages only: their other sites are not the reader's business.
    roles_at = {u.id: {names[k]: r for k, r in members.get(u.id, {}).items() if k in names} for u in users}
    return render_template("admin_users.html", users=users, sessions={u.id: sessions.get(u.id, 0) for u in users},
                           roles=Role.ALL, sites=site_list, roles_at=roles_at, everywhere=sites is None,
                           **extra), status


def _site_field(s, sites, value, user_id: int | None = None) -> int | None:
    """The site a form names, which must be one the admin manages. Without one: None for the
    deployment's admin (the user's own role), else the admin's only site, else the one site the user
    has among the admin's."""
    site_id = parse_id(value)
    if value and (site_id is None or (sites is not None and site_id not in sites) or s.get(Site, site_id) is None):
        abort(404)
    if site_id is not None or sites is None:
        return site_id
    if len(sites) == 1:
        return next(iter(sites))
    theirs = [k for k in members_by_user(s, [user_id]).get(user_id, {}) if k in sites] if user_id else []
    if len(theirs) == 1:
        return theirs[0]
    raise AuthError("Choose the site.")


def _managed_user(s, user_id: int, sites) -> User:
    """A user the admin manages, or 404."""
    user = s.get(User, user_id)
    if user is None or (sites is not None and user.id not in {u.id for u in users_at(s, sites)}):
        abort(404)
    return user


def _wholly_managed(s, user: User, sites) -> bool:
    """Whether every site of `user` is one the admin manages: only then may a site's admin switch them
    off or set their password, since that reaches their other sites too."""
    if sites is None:
        return True
    return user.role != Role.ADMIN and set(members_by_user(s, [user.id]).get(user.id, {})) <= set(sites)


@bp.get("/users")
def users():
    return _users_page()


@bp.post("/users")
def create():
    form = request.form
    try:
        with services().db.session() as s:
            sites = _admin_sites(s)
            site_id = _site_field(s, sites, form.get("site"))
            role = form.get("role") or ""
            user = create_user(s, form.get("username") or "", form.get("password") or "", role, site_id=site_id)
            audit(s, "user.create", ("user", user.id), site=site_id, username=user.username,
                  role=role if site_id is not None else user.role)
    except AuthError as exc:
        return _users_page(400, error=str(exc))
    return redirect(url_for("admin.users"))


@bp.post("/users/<id:user_id>")
def update(user_id: int):
    """Change a user's role, switch them off or on, or set a new password."""
    form = request.form
    try:
        with services().db.session() as s:
            sites = _admin_sites(s)
            user = _managed_user(s, user_id, sites)
            site_id = _site_field(s, sites, form.get("site"), user.id) if (form.get("site") or sites is not None) else None
            changes = _apply_at_site(s, user, form, site_id) if site_id is not None else {}
            if site_id is None or form.get("password") or form.get("active") not in (None, "1" if user.active else "0"):
                if not _wholly_managed(s, user, sites):
                    abort(403, "This user belongs to other sites too: ask the deployment's admin.")
            if site_id is None:
                changes.update(_apply(s, user, form))
            else:
                changes.update(_apply(s, user, {k: v for k, v in form.items() if k != "role"}))
            s.flush()
            if active_admins(s) == 0:  # rolled back: someone must be able to manage users
                raise AuthError("That would leave no active admin.")
            if changes:
                audit(s, "user.update", ("user", user.id), site=site_id, username=user.username, **changes)
    except (AuthError, SiteError) as exc:
        return _users_page(400, error=str(exc))
    return redirect(url_for("admin.users"))


def _apply_at_site(s, user: User, form, site_id: int) -> dict:
    """A role at one site (`role`), or leaving it (`remove` = 1)."""
    if form.get("remove") == "1":
        return {"removed_from_site": site_id} if remove_membership(s, user.id, site_id) else {}
    role = form.get("role")
    if not role:
        return {}
    before, after = set_membership(s, user.id, site_id, role)
    return {"site_role": {"site": site_id, "from": before, "to": after}} if before != after else {}


def _apply(s, user: User, form) -> dict:
    changes = {}
    role = form.get("role")
    if role and role != user.role:
        if role not in Role.ALL:
            raise AuthError(f"Unknown role {role!r}.")
        changes["role"] = {"from": user.role, "to": role}
        user.role = role
        # The deployment's admin setting a user's own role: with one site, their role there follows,
        # so an operator with one site never has to think about sites.
        only = members_by_user(s, [user.id]).get(user.id, {})
        if len(only) == 1:
            set_membership(s, user.id, next(iter(only)), role)
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
        sites = _admin_sites(s)
        user = _managed_user(s, user_id, sites)
        if not _wholly_managed(s, user, sites):
            abort(403, "This user belongs to other sites too: ask the deployment's admin.")
        ended = end_sessions(s, user.id)
        audit(s, "user.signed_out", ("user", user.id), username=user.username, sessions_ended=ended)
    return redirect(url_for("admin.users"))


@bp.get("/audit")
def audit_log():
    """Newest first, a page at a time by id (no counting); filter by action and by user."""
    action = (request.args.get("action") or "").strip() or None
    actor, before = parse_id(request.args.get("actor")), parse_id(request.args.get("before"))
    with services().db.session() as s:
        sites = _admin_sites(s)
    query = select(AuditEvent, User.username).outerjoin(User, User.id == AuditEvent.actor_id).where(audit_in(sites))
    if action:  # a prefix: `review` finds every review.* action, `batch.upload` that one
        query = query.where(AuditEvent.action.startswith(action, autoescape=True))
    if actor is not None:
        query = query.where(AuditEvent.actor_id == actor)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    with services().db.session() as s:
        rows = s.execute(query.order_by(AuditEvent.id.desc()).limit(AUDIT_PAGE + 1)).all()
        users = users_at(s, sites)
    more = len(rows) > AUDIT_PAGE
    rows = rows[:AUDIT_PAGE]
    older = rows[-1][0].id if more else None
    return render_template("admin_audit.html", rows=rows, users=users, action=action,
                           actor=actor, older=older)


@bp.get("/notifications")
@requires_global_admin
def notifications():
    """Urgent-case notifications the webhook has not acknowledged yet, with their attempts and last error."""
    svc = services()
    with svc.db.session() as s:
        rows = undelivered(s, NOTIFICATIONS_PAGE)
    return render_template("admin_notifications.html", rows=rows, webhook=bool(svc.settings.webhook_url),
                           more=len(rows) == NOTIFICATIONS_PAGE)


# --- sites (the deployment's admin) ---------------------------------------------------------------

@bp.get("/sites")
@requires_global_admin
def sites_page(status: int = 200, **extra):
    with services().db.session() as s:
        sites = _sites(s, None)
        members = members_by_user(s, [u.id for u in users_at(s, None)])
        users = {u.id: u.username for u in users_at(s, None)}
    by_site: dict[int, list[tuple[str, str]]] = {}
    for user_id, roles in members.items():
        for site_id, role in roles.items():
            by_site.setdefault(site_id, []).append((users[user_id], role))
    return render_template("admin_sites.html", sites=sites, members=by_site, roles=Role.ALL,
                           usernames=sorted(users.values()), **extra), status


@bp.post("/sites")
@requires_global_admin
def create_site_form():
    try:
        with services().db.session() as s:
            site = create_site(s, request.form.get("name") or "")
            audit(s, "site.create", ("site", site.id), site=site.id, name=site.name)
    except SiteError as exc:
        return sites_page(400, error=str(exc))
    return redirect(url_for("admin.sites_page"))


@bp.post("/sites/<id:site_id>/members")
@requires_global_admin
def site_member(site_id: int):
    """Add a user (by name) to a site with a role, change it, or take them off it (`remove` = 1)."""
    form = request.form
    try:
        with services().db.session() as s:
            if s.get(Site, site_id) is None:
                abort(404)
            user = s.scalar(select(User).where(User.username == (form.get("username") or "").strip()))
            if user is None:
                raise SiteError("No such user.")
            changes = _apply_at_site(s, user, form, site_id)
            if changes:
                audit(s, "user.update", ("user", user.id), site=site_id, username=user.username, **changes)
    except SiteError as exc:
        return sites_page(400, error=str(exc))
    return redirect(url_for("admin.sites_page"))
