"""Sign-in, sessions, API tokens, roles, CSRF and the sign-in rate limit, through the real app."""
from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, text

from harness import imagegen
from tests.support import PASSWORD, ROOT, child_env, csrf_token, free_port
from triage.schema import ApiToken, AuditEvent, Batch, Role, User

PUBLIC = {"/login", "/health", "/favicon.ico", "/static/<path:filename>"}


def anonymous(stack):
    return stack.app.test_client()


def _sample_url(rule) -> str:
    values = {name: ("csv" if name == "fmt" else 1) for name in rule.arguments}
    return re.sub(r"<(?:[a-z]+:)?(\w+)>", lambda m: str(values[m.group(1)]), rule.rule)


def test_every_page_and_api_call_but_sign_in_and_health_needs_a_user(sqlite_stack):
    client = anonymous(sqlite_stack)
    rules = [r for r in sqlite_stack.app.url_map.iter_rules() if r.rule not in PUBLIC]
    assert len(rules) > 20  # the whole app, not a sample
    for rule in rules:
        url = _sample_url(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method)
            if url.startswith("/api/"):
                assert response.status_code == 401, (method, url, response.status_code)
                assert response.headers["WWW-Authenticate"] == "Bearer"
            else:
                assert response.status_code == 302, (method, url, response.status_code)
                assert response.headers["Location"].startswith("/login?next=")
    assert client.get("/login").status_code == 200
    assert client.get("/health").status_code in (200, 503)
    assert client.get("/static/app.css").status_code == 200


def test_sign_in_page_sends_back_where_you_were_going_but_never_off_site(sqlite_stack):
    client = anonymous(sqlite_stack)
    assert client.get("/review?batch=3").headers["Location"] == "/login?next=/review?batch%3D3"
    for target, landing in (("/review?batch=3", "/review?batch=3"), ("https://evil.example/x", "/"),
                            ("//evil.example", "/"), ("/\\evil.example", "/")):
        browser = anonymous(sqlite_stack)
        token = csrf_token(browser, "/login")
        response = browser.post("/login", data={"username": "admin", "password": PASSWORD, "next": target,
                                                "csrf_token": token})
        assert response.status_code == 302 and response.headers["Location"] == landing


def test_wrong_password_and_unknown_user_get_the_same_answer(sqlite_stack):
    client = anonymous(sqlite_stack)
    token = csrf_token(client, "/login")
    answers = [client.post("/login", data={"username": name, "password": "not-the-password", "csrf_token": token})
               for name in ("admin", "nobody")]
    assert [a.status_code for a in answers] == [401, 401]
    assert all("Wrong username or password." in a.get_data(as_text=True) for a in answers)
    assert client.get("/").status_code == 302  # still signed out


def test_form_posts_without_a_csrf_token_are_refused(sqlite_stack):
    stack = sqlite_stack
    browser = stack.login()
    photo = imagegen.jpeg(1)
    for data in ({}, {"csrf_token": "forged"}):
        response = browser.post("/upload", data={"name": "x", "files": [(io.BytesIO(photo), "a.jpg")], **data},
                                content_type="multipart/form-data")
        assert response.status_code == 400 and "CSRF" in response.get_data(as_text=True)
    # The JSON API is no exception when the caller authenticates with a browser session.
    api = browser.post("/api/batches", data={"files": [(io.BytesIO(imagegen.jpeg(2)), "b.jpg")]},
                       content_type="multipart/form-data")
    assert api.status_code == 400 and "CSRF" in api.get_json()["error"]
    assert browser.post("/logout").status_code == 400
    assert browser.post("/account/tokens", data={"name": "t"}).status_code == 400
    with stack.db.session() as s:
        assert s.scalar(select(Batch.id)) is None  # nothing was created
    accepted = browser.post("/upload", data={"name": "x", "files": [(io.BytesIO(imagegen.jpeg(3)), "c.jpg")],
                                             "csrf_token": csrf_token(browser, "/")},
                            content_type="multipart/form-data")
    assert accepted.status_code == 200 and "1 accepted" in accepted.get_data(as_text=True)
    with stack.db.session() as s:
        assert s.scalar(select(Batch.created_by_id)) == stack.admin_id  # who uploaded is recorded


def test_a_bearer_token_needs_no_csrf_token_and_gets_no_cookie(sqlite_stack):
    stack = sqlite_stack
    response = stack.upload([(imagegen.jpeg(1), "a.jpg")], client=anonymous(stack))
    assert response.status_code == 201 and "Set-Cookie" not in response.headers
    for bad in ("dt_not-a-token", stack.token + "x"):
        refused = stack.upload([(imagegen.jpeg(2), "b.jpg")], client=anonymous(stack), token=bad)
        assert refused.status_code == 401
    # A browser session's cookie does not rescue a bad token: the token alone decides.
    browser = stack.login()
    refused = stack.upload([(imagegen.jpeg(3), "c.jpg")], client=browser, token="dt_wrong")
    assert refused.status_code == 401


def test_session_cookie_is_httponly_lax_and_secure_in_production(make_stack, sqlite_url, tmp_path):
    plain = make_stack(sqlite_url)
    cookie = _login_cookie(plain)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    production = make_stack(f"sqlite:///{tmp_path / 'prod.db'}", production=True, secret_key="s" * 48)
    assert "Secure" in _login_cookie(production)
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        make_stack(f"sqlite:///{tmp_path / 'default-key.db'}", production=True)


def _login_cookie(stack) -> str:
    client = anonymous(stack)
    response = client.post("/login", data={"username": "admin", "password": PASSWORD,
                                           "csrf_token": csrf_token(client, "/login")})
    assert response.status_code == 302
    return response.headers["Set-Cookie"]


def test_sign_in_limits_refuse_an_address_never_a_username(make_stack, sqlite_url):
    """Issue 19: ten wrong passwords for a username from any addresses locked its owner out. Now an
    address is refused (per address, and per username at that address), a username only slowed down."""
    from web.login_limits import delay_after

    stack = make_stack(sqlite_url, login_rate_limit="4 per minute", login_username_rate_limit="2 per minute",
                       login_max_delay_s=0.6)
    stack.add_user("alice", Role.REVIEWER)

    def attempt(username, password, address) -> tuple[int, float]:
        client = stack.app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        token = csrf_token(client, "/login")
        started = time.monotonic()
        status = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
        return status.status_code, time.monotonic() - started

    # Successful sign-ins do not count.
    assert [attempt("admin", PASSWORD, "10.0.0.1")[0] for _ in range(4)] == [302] * 4
    # One address guessing one user's password is refused there after two failures, even the right one...
    assert [attempt("admin", "wrong-password", "10.0.0.2")[0] for _ in range(2)] == [401] * 2
    assert attempt("admin", PASSWORD, "10.0.0.2")[0] == 429
    # ...and after four failures, whatever the usernames, for everyone from there.
    assert [attempt(f"guess{i}", "wrong-password", "10.0.0.2")[0] for i in range(2)] == [401] * 2
    assert attempt("nobody", "wrong-password", "10.0.0.2")[0] == 429
    # Ten wrong passwords for alice from ten addresses: never a 429, but each failure after the third is
    # answered later than the one before (up to the longest delay)...
    failures = [attempt("alice", "wrong-password", f"10.0.1.{i}") for i in range(10)]
    assert [status for status, _ in failures] == [401] * 10
    for count, (_, seconds) in enumerate(failures, start=1):
        assert seconds >= delay_after(count, 0.6), (count, seconds)
    assert [delay_after(n, 0.6) for n in range(1, 8)] == [0, 0, 0, 0.25, 0.5, 0.6, 0.6]
    # ...and alice, with her password, signs in from a fresh address; so do others from theirs.
    assert attempt("alice", PASSWORD, "10.0.2.1")[0] == 302
    assert attempt("admin", PASSWORD, "10.0.2.2")[0] == 302
    # Every attempt is in the audit log with its address: the failed ones with the name tried, the refused
    # ones (429, password never checked) with the limit that refused them; never a password.
    with stack.db.session() as s:
        events = s.execute(select(AuditEvent.action, AuditEvent.details, AuditEvent.ip)
                           .where(AuditEvent.action.like("auth.login%")).order_by(AuditEvent.id)).all()
    failed = [(details["username"], ip) for action, details, ip in events if action == "auth.login_failed"]
    assert failed == ([("admin", "10.0.0.2")] * 2 + [(f"guess{i}", "10.0.0.2") for i in range(2)]
                      + [("alice", f"10.0.1.{i}") for i in range(10)])
    refused = [(details, ip) for action, details, ip in events if action == "auth.login_refused"]
    assert refused == [({"username": "admin", "limit": "username at address"}, "10.0.0.2"),
                       ({"username": "nobody", "limit": "address"}, "10.0.0.2")]
    assert [ip for action, _, ip in events if action == "auth.login"] == ["10.0.0.1"] * 4 + ["10.0.2.1", "10.0.2.2"]
    assert not any(PASSWORD in str(details) or "wrong-password" in str(details) for _, details, _ in events)


def test_sign_in_keeps_working_when_redis_is_down(make_stack, sqlite_url, caplog):
    stack = make_stack(sqlite_url, redis_url=f"redis://127.0.0.1:{free_port()}/0", login_rate_limit="1 per minute")
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            client = anonymous(stack)
            token = csrf_token(client, "/login")
            assert client.post("/login", data={"username": "admin", "password": "wrong-password",
                                               "csrf_token": token}).status_code == 401
        stack.login()
    assert any("rate limit" in r.getMessage().lower() for r in caplog.records)  # the outage is logged


def test_roles_decide_what_a_user_may_open(sqlite_stack):
    stack = sqlite_stack
    batch = stack.upload([(imagegen.jpeg(1), "a.jpg")]).get_json()["batch_id"]
    stack.add_user("ulla", Role.UPLOADER)
    stack.add_user("rita", Role.REVIEWER)
    pages = {"/": Role.UPLOADER, f"/batches/{batch}": Role.UPLOADER, "/account": Role.UPLOADER,
             "/review": Role.REVIEWER, f"/api/batches/{batch}/export.csv": Role.REVIEWER,
             "/api/queue": Role.REVIEWER, "/admin/users": Role.ADMIN, "/admin/audit": Role.ADMIN}
    for username, role in (("ulla", Role.UPLOADER), ("rita", Role.REVIEWER), ("admin", Role.ADMIN)):
        browser = stack.login(username=username)
        for path, needed in pages.items():
            expected = 200 if Role.includes(role, needed) else 403
            assert browser.get(path).status_code == expected, (username, path)
    uploader_token = stack.issue_token("ulla")
    assert stack.upload([(imagegen.jpeg(2), "b.jpg")], token=uploader_token).status_code == 201


def test_passwords_and_tokens_are_stored_only_as_hashes(sqlite_stack):
    stack = sqlite_stack
    with stack.db.session() as s:
        admin = s.scalar(select(User).where(User.username == "admin"))
        token_row = s.scalar(select(ApiToken).where(ApiToken.user_id == admin.id))
        dump = "\n".join(str(row) for table in ("users", "api_tokens")
                         for row in s.execute(text(f"SELECT * FROM {table}")).all())
    assert admin.password_hash.startswith("scrypt:") and PASSWORD not in dump
    assert token_row.token_hash == hashlib.sha256(stack.token.encode()).hexdigest()
    assert stack.token not in dump and stack.token.startswith(token_row.prefix)


def test_tokens_are_created_shown_once_and_revoked_on_the_account_page(sqlite_stack):
    stack = sqlite_stack
    browser = stack.login()
    created = browser.post("/account/tokens", data={"name": "clinic script", "csrf_token": csrf_token(browser, "/account")})
    assert created.status_code == 201
    token = re.search(r'id="new-token">([^<]+)<', created.get_data(as_text=True)).group(1)
    assert stack.upload([(imagegen.jpeg(1), "a.jpg")], client=anonymous(stack), token=token).status_code == 201
    page = browser.get("/account").get_data(as_text=True)
    assert "clinic script" in page and token not in page  # shown once only
    # A token cannot mint more tokens: a leaked one would otherwise outlive its revocation.
    assert anonymous(stack).post("/account/tokens", data={"name": "more"},
                                 headers={"Authorization": f"Bearer {token}"}).status_code == 403
    with stack.db.session() as s:
        token_id = s.scalar(select(ApiToken.id).where(ApiToken.name == "clinic script"))
    revoked = browser.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf_token(browser, "/account")})
    assert revoked.status_code == 302
    assert stack.upload([(imagegen.jpeg(2), "b.jpg")], client=anonymous(stack), token=token).status_code == 401
    with stack.db.session() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert "token.create" in actions and "token.revoke" in actions


def test_a_password_change_ends_the_users_other_sessions(sqlite_stack):
    stack = sqlite_stack
    stack.add_user("rita", Role.REVIEWER)
    laptop, phone = stack.login(username="rita"), stack.login(username="rita")
    changed = laptop.post("/account/password", data={"current_password": PASSWORD,
                                                     "new_password": "a-brand-new-passphrase",
                                                     "csrf_token": csrf_token(laptop, "/account")})
    assert changed.status_code == 200 and "Password changed" in changed.get_data(as_text=True)
    assert laptop.get("/review").status_code == 200  # the session that changed it stays signed in
    assert phone.get("/review").status_code == 302  # the other one is signed out
    stack.login(username="rita", password="a-brand-new-passphrase")


def test_admins_manage_users_and_cannot_remove_the_last_admin(sqlite_stack):
    stack = sqlite_stack
    admin = stack.login()

    def post(path, **data):
        return admin.post(path, data={**data, "csrf_token": csrf_token(admin, "/admin/users")})

    assert post("/admin/users", username="nora", role="reviewer", password="short").status_code == 400
    assert post("/admin/users", username="nora", role="reviewer", password="long-enough-passphrase").status_code == 302
    nora = stack.login(username="nora", password="long-enough-passphrase")
    assert nora.get("/review").status_code == 200
    with stack.db.session() as s:
        nora_id = s.scalar(select(User.id).where(User.username == "nora"))
    assert post(f"/admin/users/{nora_id}", role="uploader", active="0").status_code == 302
    assert nora.get("/review").status_code == 302  # switched off: the session ends at once
    refused = post(f"/admin/users/{stack.admin_id}", role="reviewer", active="1")
    assert refused.status_code == 400 and "no active admin" in refused.get_data(as_text=True)
    with stack.db.session() as s:
        assert s.get(User, stack.admin_id).role == Role.ADMIN
        updates = s.scalars(select(AuditEvent.details).where(AuditEvent.action == "user.update")).all()
    assert updates == [{"username": "nora", "role": {"from": "reviewer", "to": "uploader"},
                        "active": {"from": True, "to": False}, "sessions_ended": 1, "tokens_revoked": 0}]


def test_create_admin_and_token_commands(make_stack, sqlite_url):
    stack = make_stack(sqlite_url)
    env = child_env(stack.settings)

    def cli(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, env=env, input=stdin,
                              capture_output=True, text=True, timeout=60)

    made = cli("create-admin", "--username", "boss", "--password-stdin", stdin="boss-passphrase-123\n")
    assert made.returncode == 0, made.stderr
    assert cli("create-admin", "--username", "boss", "--password-stdin", stdin="boss-passphrase-123\n").returncode == 1
    short = cli("create-admin", "--username", "tiny", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "12 characters" in short.stderr
    browser = stack.login(username="boss", password="boss-passphrase-123")
    assert browser.get("/admin/users").status_code == 200
    token = cli("create-token", "--username", "boss", "--name", "ci").stdout.strip()
    assert stack.upload([(imagegen.jpeg(1), "a.jpg")], client=anonymous(stack), token=token).status_code == 201
    with stack.db.session() as s:
        token_id = s.scalar(select(ApiToken.id).where(ApiToken.name == "ci"))
        created = s.scalar(select(AuditEvent).where(AuditEvent.action == "user.create"))
    assert created.actor_id is None and created.details["via"] == "cli"
    assert cli("revoke-token", str(token_id)).returncode == 0
    assert stack.upload([(imagegen.jpeg(2), "b.jpg")], client=anonymous(stack), token=token).status_code == 401


def test_an_api_token_cannot_change_a_password_or_manage_users(sqlite_stack):
    # Even an admin's token: a leaked token must not outlive its revocation by changing the password
    # or making users. The same admin signed in through the browser gets through.
    stack = sqlite_stack
    bearer = {"Authorization": f"Bearer {stack.token}"}
    for method, path, message in [("post", "/account/password", "Account changes"),
                                  ("get", "/account", "Account changes"),
                                  ("get", "/admin/users", "User administration"),
                                  ("post", "/admin/users", "User administration"),
                                  ("get", "/admin/audit", "User administration")]:
        response = getattr(anonymous(stack), method)(path, headers=bearer, data={"username": "x"})
        assert response.status_code == 403, path
        assert f"{message} needs a signed-in browser session" in response.get_data(as_text=True), path
    browser = stack.login()
    assert browser.get("/admin/users").status_code == 200 and browser.get("/account").status_code == 200
