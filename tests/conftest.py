"""Fixtures: real Redis, real SQLite and PostgreSQL databases, real worker processes, tiny models."""
from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from tests.browsing import CHROMIUM_FLAGS, chromium_executable
from tests.support import (PASSWORD, ROOT, CeleryProcess, RedisServer, Scheduler, WebServer, Worker, create_pg_database, csrf_token,
                           drop_pg_database, password_hash, wait_until)
from triage.auth import create_user, issue_token
from triage.db import Database
from triage.migrate import upgrade
from triage.schema import Analysis, Image, ImageStatus, Role, User
from triage.settings import Settings

ARTIFACTS = ROOT / "test-artifacts"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_executable(), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server_url():
    url = os.environ.get("DERMATRIAGE_TEST_POSTGRES_URL", DEFAULT_PG)
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:  # the suite needs PostgreSQL; scripts/test.sh starts one
        pytest.fail(f"PostgreSQL at {url} is not reachable ({exc}); run the suite with scripts/test.sh")
    return url


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    from model.demo import build_demo_model

    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    build_demo_model(path, backbone="tiny")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dermatriage.db'}"
        return
    server = request.getfixturevalue("pg_server_url")
    url = create_pg_database(server)
    yield url
    drop_pg_database(server, url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'dermatriage.db'}"


@pytest.fixture
def db(database_url):
    """A migrated database of each kind, without the web app or workers of a Stack."""
    upgrade(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


@dataclass
class Stack:
    """One system under test: settings, a migrated database, the web app, workers started on demand.

    It starts with one user, `admin` (password `PASSWORD`), and an API token of theirs. `client` sends
    that token with every request, as a script would; `login()` gives a client signed in with a
    browser session instead (which must send CSRF tokens with its form posts).
    """
    settings: Settings
    tmp: Path
    workers: list[CeleryProcess] = field(default_factory=list)  # workers, schedulers: stopped at the end
    web_servers: list[WebServer] = field(default_factory=list)

    def __post_init__(self):
        upgrade(self.settings.database_url)
        self.db = Database(self.settings.database_url)
        from web.app import create_app

        with self.db.session() as s:  # a second Stack on the same database finds the admin there
            self.admin_id = s.scalar(select(User.id).where(User.username == "admin"))
        self.admin_id = self.admin_id or self.add_user("admin", Role.ADMIN)
        self.token = self.issue_token("admin")
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self.token}"

    def add_user(self, username: str, role: str, password: str = PASSWORD) -> int:
        with self.db.session() as s:
            return create_user(s, username, None, role, password_hash=password_hash(password)).id

    def issue_token(self, username: str, name: str = "tests") -> str:
        with self.db.session() as s:
            user = s.query(User).filter_by(username=username).one()
            return issue_token(s, user, name)[1]

    def login(self, client=None, username: str = "admin", password: str = PASSWORD):
        """A test client signed in through the sign-in form (CSRF token and all); returns it."""
        client = client or self.app.test_client()
        token = csrf_token(client, "/login")
        response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
        assert response.status_code == 302, f"sign-in as {username} failed: {response.status_code}"
        return client

    def start_worker(self, name: str | None = None, env: dict | None = None, **start) -> Worker:
        worker = Worker(self.settings, self.tmp, name, env=env)
        self.workers.append(worker)
        return worker.start(**start)

    def start_scheduler(self) -> Scheduler:
        scheduler = Scheduler(self.settings, self.tmp, "beat")
        self.workers.append(scheduler)
        return scheduler.start()

    def start_web(self) -> WebServer:
        server = WebServer(self.settings, self.tmp)
        self.web_servers.append(server)
        return server.start()

    def upload(self, files: list[tuple[bytes, str]], batch_id: int | None = None, client=None,
               token: str | None = None):
        """Upload through the JSON API with the admin's API token (or `token`)."""
        client = client or self.client
        data = {"files": [(io.BytesIO(content), name) for content, name in files]}
        url = f"/api/batches/{batch_id}/images" if batch_id else "/api/batches"
        return client.post(url, data=data, content_type="multipart/form-data",
                           headers={"Authorization": f"Bearer {token or self.token}"})

    def statuses(self, batch_id: int | None = None) -> dict[int, str]:
        with self.db.session() as s:
            query = select(Image.id, Image.status)
            if batch_id is not None:
                query = query.where(Image.batch_id == batch_id)
            return dict(s.execute(query).all())

    def wait_final(self, batch_id: int | None = None, timeout: float = 90) -> dict[int, str]:
        def done():
            statuses = self.statuses(batch_id)
            return statuses if statuses and all(v in ImageStatus.FINAL for v in statuses.values()) else None
        return wait_until(done, timeout, 0.25, "all images to reach a final status")

    def analysis_counts(self) -> dict[int, int]:
        with self.db.session() as s:
            return dict(s.execute(select(Analysis.image_id, func.count()).group_by(Analysis.image_id)).all())

    def close(self):
        for server in self.web_servers:
            server.stop()
        for worker in self.workers:
            worker.stop()
        self.db.dispose()


@pytest.fixture
def make_stack(tmp_path, redis_server, tiny_model_path):
    stacks = []

    def make(database_url: str, **overrides) -> Stack:
        data = tmp_path / f"var{len(stacks)}"
        values = dict(data_dir=data, database_url=database_url, redis_url=redis_server.url,
                      model_path=tiny_model_path, queue_name=f"analysis-{uuid.uuid4().hex[:8]}")
        values.update(overrides)
        stack = Stack(Settings(**values), tmp_path)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def stack(make_stack, database_url):
    return make_stack(database_url)


@pytest.fixture
def sqlite_stack(make_stack, sqlite_url):
    return make_stack(sqlite_url)
