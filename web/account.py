"""A user's own account: sign out, change password, create and revoke API tokens."""
from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, session, url_for
from flask_login import current_user, logout_user
from sqlalchemy import select

from triage.auth import AuthError, hash_password, issue_token, password_matches, revoke_token
from triage.schema import ApiToken, User
from triage.sessions import end_session, end_sessions

from .auth import audit, requires_session
from .services import services

bp = Blueprint("account", __name__)


@bp.before_request
@requires_session("Account changes")
def _signed_in_in_person():
    pass


@bp.post("/logout")
def logout():
    with services().db.session() as s:
        end_session(s, current_user.key)  # on the server: a copy of the cookie is worth nothing from now on
        audit(s, "auth.logout", ("user", current_user.id))
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


def _tokens(s) -> list[ApiToken]:
    return s.scalars(select(ApiToken).where(ApiToken.user_id == current_user.id)
                     .order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())).all()


def _page(status: int = 200, **extra):
    with services().db.session() as s:
        tokens = _tokens(s)
    return render_template("account.html", tokens=tokens, **extra), status


@bp.get("/account")
def account():
    return _page()


@bp.post("/account/tokens")
def create_token():
    with services().db.session() as s:
        user = s.get(User, current_user.id)
        row, token = issue_token(s, user, request.form.get("name") or "")
        audit(s, "token.create", ("api_token", row.id), name=row.name)
    # Shown in this response only: never stored, never put in a URL or a flash message.
    return _page(201, new_token=token, new_token_name=row.name)


@bp.post("/account/tokens/<id:token_id>/revoke")
def revoke(token_id: int):
    with services().db.session() as s:
        row = revoke_token(s, token_id, owner_id=current_user.id)
        if row is None:
            abort(404, "No such live token of yours.")
        audit(s, "token.revoke", ("api_token", row.id), name=row.name)
    return redirect(url_for("account.account"))


@bp.post("/account/password")
def change_password():
    current, new = request.form.get("current_password") or "", request.form.get("new_password") or ""
    with services().db.session() as s:
        user = s.get(User, current_user.id)
        if not password_matches(user, current):
            return _page(400, password_error="The current password is wrong.")
        try:
            user.password_hash = hash_password(new)
        except AuthError as exc:
            return _page(400, password_error=str(exc))
        # Whoever else was signed in as this user, perhaps with the old password, is signed out; this
        # session goes on. API tokens are kept: each is its own credential, listed here to revoke.
        ended = end_sessions(s, user.id, keep=current_user.key)
        audit(s, "user.password_changed", ("user", user.id), sessions_ended=ended)
    return _page(password_changed=True)
