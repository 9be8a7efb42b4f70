"""Sessions end on the server (issue 19): a copy of a session cookie is worth nothing once its session has
ended, by signing out, a password change, an admin's "sign out everywhere" or switching the user off;
switching a user off revokes their API tokens for good. Over real HTTP, against the portal under gunicorn."""
from __future__ import annotations

from datetime import timedelta

import requests
from sqlalchemy import select, update

from harness import imagegen
from tests.support import PASSWORD, csrf_token, form_token, sign_in_over_http
from triage.schema import AuditEvent, Role, User, UserSession, utcnow

COOKIE = "dermatriage_session"


def replay(url: str, cookie: str, path: str) -> int:
    """What a request carrying nothing but a copied session cookie gets."""
    return requests.get(url + path, cookies={COOKIE: cookie}, allow_redirects=False, timeout=30).status_code


def post_form(browser, url: str, path: str, page: str, **data) -> requests.Response:
    data["csrf_token"] = form_token(browser, url + page)
    return browser.post(url + path, data=data, allow_redirects=False, timeout=30)


def api(url: str, token: str, path: str) -> int:
    return requests.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code


def user_id(stack, username: str) -> int:
    with stack.db.session() as s:
        return s.scalar(select(User.id).where(User.username == username))


def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(sqlite_stack):
    stack = sqlite_stack
    batch = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    url = stack.start_web().url
    browser = sign_in_over_http(url)
    copied = browser.cookies[COOKIE]
    assert replay(url, copied, "/account") == 200 and replay(url, copied, f"/api/batches/{batch}") == 200
    signed_out = post_form(browser, url, "/logout", "/account")
    assert signed_out.status_code == 302 and signed_out.headers["Location"] == "/login"
    assert COOKIE not in browser.cookies  # the browser forgot it...
    # ...and the server ended it: the copy, valid signature and all, opens nothing.
    assert replay(url, copied, "/account") == 302
    assert replay(url, copied, f"/api/batches/{batch}") == 401
    assert replay(url, copied, "/") == 302
    with stack.db.session() as s:
        assert s.scalar(select(UserSession.ended_at).where(UserSession.user_id == stack.admin_id)) is not None


def test_a_password_change_ends_the_other_sessions_and_keeps_the_tokens(sqlite_stack):
    stack = sqlite_stack
    stack.add_user("rita", Role.REVIEWER)
    token = stack.issue_token("rita", "clinic script")
    url = stack.start_web().url
    laptop, phone = sign_in_over_http(url, "rita"), sign_in_over_http(url, "rita")
    phone_cookie = phone.cookies[COOKIE]
    changed = post_form(laptop, url, "/account/password", "/account", current_password=PASSWORD,
                        new_password="a-brand-new-passphrase")
    assert changed.status_code == 200 and "API tokens above still work" in changed.text
    assert laptop.get(url + "/review", allow_redirects=False, timeout=30).status_code == 200  # goes on
    assert replay(url, phone_cookie, "/review") == 302  # signed out at once
    # API tokens are credentials of their own: kept (README: Security), revoked one by one on the page.
    assert api(url, token, "/api/queue") == 200
    sign_in_over_http(url, "rita", "a-brand-new-passphrase")
    with stack.db.session() as s:
        details = s.scalar(select(AuditEvent.details).where(AuditEvent.action == "user.password_changed"))
    assert details == {"sessions_ended": 1}


def test_an_admin_signs_a_user_out_everywhere(sqlite_stack):
    stack = sqlite_stack
    rita = stack.add_user("rita", Role.REVIEWER)
    token = stack.issue_token("rita")
    url = stack.start_web().url
    cookies = [sign_in_over_http(url, "rita").cookies[COOKIE] for _ in range(2)]
    admin = sign_in_over_http(url)
    page = admin.get(url + "/admin/users", timeout=30).text
    assert f'action="/admin/users/{rita}/sign-out"' in page
    answer = post_form(admin, url, f"/admin/users/{rita}/sign-out", "/admin/users")
    assert answer.status_code == 302
    assert [replay(url, c, "/review") for c in cookies] == [302, 302]
    assert api(url, token, "/api/queue") == 200  # sessions only; switching off also revokes tokens
    assert admin.get(url + "/admin/users", allow_redirects=False, timeout=30).status_code == 200
    with stack.db.session() as s:
        details = s.scalar(select(AuditEvent.details).where(AuditEvent.action == "user.signed_out"))
    assert details == {"username": "rita", "sessions_ended": 2}


def test_switching_a_user_off_and_on_revives_neither_sessions_nor_tokens(sqlite_stack):
    stack = sqlite_stack
    rita = stack.add_user("rita", Role.REVIEWER)
    token = stack.issue_token("rita")
    url = stack.start_web().url
    cookie = sign_in_over_http(url, "rita").cookies[COOKIE]
    assert replay(url, cookie, "/review") == 200 and api(url, token, "/api/queue") == 200
    admin = sign_in_over_http(url)

    def switch(active: str) -> None:
        answer = post_form(admin, url, f"/admin/users/{rita}", "/admin/users", role="reviewer", active=active)
        assert answer.status_code == 302

    switch("0")
    assert replay(url, cookie, "/review") == 302 and api(url, token, "/api/queue") == 401
    switch("1")
    # Switched on again: the old cookie and the old token stay dead; a new sign-in and a new token work.
    assert replay(url, cookie, "/review") == 302 and api(url, token, "/api/queue") == 401
    assert sign_in_over_http(url, "rita").get(url + "/review", timeout=30).status_code == 200
    assert api(url, stack.issue_token("rita", "new"), "/api/queue") == 200
    with stack.db.session() as s:
        updates = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "user.update")
                            .order_by(AuditEvent.id)).all()
    assert updates[0]["active"] == {"from": True, "to": False}
    assert updates[0]["sessions_ended"] == 1 and updates[0]["tokens_revoked"] == 1
    assert updates[1] == {"username": "rita", "active": {"from": False, "to": True}}


def test_an_idle_session_ends_on_the_server_whatever_its_cookie_says(sqlite_stack):
    # The cookie's own expiry is set by the server that signs it; the server's record decides.
    stack = sqlite_stack
    browser = stack.login()
    assert browser.get("/account").status_code == 200
    idle = timedelta(hours=stack.settings.session_hours, minutes=1)
    with stack.db.session() as s:
        s.execute(update(UserSession).values(last_seen_at=utcnow() - idle))
    assert browser.get("/account").status_code == 302


def test_signing_in_again_replaces_the_browsers_session(sqlite_stack):
    stack = sqlite_stack
    browser = stack.login()
    first = browser.get_cookie(COOKIE).value
    again = browser.post("/login", data={"username": "admin", "password": PASSWORD,
                                         "csrf_token": csrf_token(browser, "/account")})
    assert again.status_code == 302 and browser.get("/account").status_code == 200
    copy = stack.app.test_client()
    copy.set_cookie(COOKIE, first)
    assert copy.get("/account").status_code == 302
