"""Real processes for tests: Redis servers, Celery workers, web servers; and waiting for results."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import redis
from sqlalchemy import create_engine, select, text

from triage.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PASSWORD = "correct-horse-battery-staple"  # every test user's password unless a test says otherwise
_HASHES: dict[str, str] = {}
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def password_hash(password: str) -> str:
    """A password hash computed once per test session: scrypt is slow on purpose, tests need not be."""
    from triage.auth import hash_password

    if password not in _HASHES:
        _HASHES[password] = hash_password(password)
    return _HASHES[password]


def csrf_token(client, path: str = "/") -> str:
    """The CSRF token a page's forms carry, for a test client's own session."""
    page = client.get(path)
    found = CSRF_FIELD.search(page.get_data(as_text=True))
    assert found, f"no CSRF token on {path} ({page.status_code})"
    return found.group(1)


def sign_in_over_http(base_url: str, username: str = "admin", password: str = PASSWORD):
    """A `requests` session signed in through a running portal's sign-in form, as a browser is."""
    import requests

    browser = requests.Session()
    answer = browser.post(base_url + "/login", allow_redirects=False, timeout=30, data={
        "username": username, "password": password, "csrf_token": form_token(browser, base_url + "/login")})
    assert answer.status_code == 302, f"sign-in as {username} failed: {answer.status_code}"
    return browser


def form_token(browser, url: str) -> str:
    """The CSRF token a page's forms carry, for a `requests` session's own session."""
    found = CSRF_FIELD.search(browser.get(url, timeout=30).text)
    assert found, f"no CSRF token on {url}"
    return found.group(1)


def session_cookie_values(key: str, cookie: str) -> dict:
    """The values in a portal session cookie when `key` signed it, else {}."""
    from itsdangerous import BadSignature

    try:
        return cookie_serializer(key).loads(cookie)
    except BadSignature:
        return {}


def cookie_serializer(key: str):
    """What Flask signs and checks session cookies with, under `key`."""
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask(__name__)
    app.secret_key = key
    return SecureCookieSessionInterface().get_signing_serializer(app)


def listening_addresses(port: int) -> set[str]:
    """The local addresses TCP sockets listen on at `port` on this machine (any process), from the
    kernel's tables: `0.0.0.0` or `::` means every interface."""
    import ipaddress

    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # in 32-bit words, each in the machine's (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class RedisServer:
    """A private redis-server on a spare port, so tests never touch a shared instance."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/test.sh installs it)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), 10, message="redis-server to start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` in a child process."""
    env = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is not None:
            env[field.validation_alias.choices[0]] = str(value)
    return env


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DERMATRIAGE_")}
    env.update(settings_env(settings))
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}, **extra)
    return env


class Worker:
    """A real Celery worker process (prefork, one child holding the model)."""

    def __init__(self, settings: Settings, logdir: Path, name: str | None = None, beat: bool = False,
                 env: dict[str, str] | None = None):
        self.settings = settings
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.log = logdir / f"worker-{self.name}.log"
        self.beat = beat
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, wait_model: bool = True, timeout: float = 120) -> "Worker":
        cmd = [str(VENV_BIN / "celery"), "-A", "worker.app", "worker", "--pool", "prefork", "--concurrency", "1",
               "-Q", self.settings.queue_name, "-n", f"{self.name}@%h", "--without-mingle", "--without-gossip",
               "--loglevel", "INFO"]
        if self.beat:
            cmd += ["--beat", "--schedule", str(self.log.with_suffix(".beat"))]
        env = child_env(self.settings, DERMATRIAGE_WORKER_NAME=self.name, **self.extra_env)
        since = len(self.output())  # a restarted worker appends to the same log
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        marker = "ready (warm-up" if wait_model else " ready."
        wait_until(lambda: self._alive_and(marker, since), timeout, 0.3, f"worker {self.name} ({self.log})")
        return self

    def _alive_and(self, marker: str, since: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
        return marker in self.output()[since:]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def child_pids(self) -> list[int]:
        """The prefork children (the processes that hold the model and run jobs)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker, parent and child, as a machine crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class WebServer:
    """The portal under gunicorn, as the run script starts it, on a spare port."""

    def __init__(self, settings: Settings, logdir: Path):
        self.settings = settings
        self.port = free_port()
        self.log = logdir / f"web-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "WebServer":
        import requests

        cmd = [str(VENV_BIN / "gunicorn"), "--workers", "2", "--threads", "4", "--bind",
               f"127.0.0.1:{self.port}", "web.wsgi:app"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(self.settings), stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"web exited:\n{self.log.read_text()[-3000:]}")
            try:
                return requests.get(self.url + "/health", timeout=1).status_code in (200, 503)
            except requests.RequestException:
                return False

        wait_until(up, 30, message="the web server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)


def create_pg_database(server_url: str) -> str:
    """A fresh, empty database on the test PostgreSQL server; returns its URL."""
    name = f"dt_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(server_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def fake_probabilities(top_class: str, confidence: float = 0.6, labels=None) -> dict[str, float]:
    """Probabilities over `labels` (the demo model's ten by default) with `top_class` first at
    `confidence`, the rest shared out unevenly."""
    from triage.catalogue import REFERENCE_LABEL_ORDER

    others = [s for s in labels or REFERENCE_LABEL_ORDER if s != top_class]
    weights = list(range(len(others), 0, -1))
    rest = 1.0 - confidence
    probabilities = {s: rest * w / sum(weights) for s, w in zip(others, weights)}
    probabilities[top_class] = confidence
    return probabilities


def seed_analysis(db, batch_id: int, *, priority: str = "urgent", top_class: str = "melanoma",
                  received_at=None, trained: bool = False, model_version: str = "demo-tiny-untrained@test",
                  name: str | None = None, image_id: int | None = None, heatmap_key: str | None = None,
                  store_key: str = "0" * 64, labels=None, audit_share: float | None = 0.0) -> int:
    """An image and the worker's analysis of it written straight to SQL (no worker needed), with its
    case opened as the worker opens it (routine ones drawn for audit at `audit_share`; None: no case, as
    before migration 0003); returns the analysis id. With `image_id`, a further analysis of that image
    (another model version); with `labels`, the analysis of a model of that label set (the demo model's
    ten by default)."""
    from triage.reviews import open_cases
    from triage.schema import Analysis, Image, ImageStatus, utcnow

    received_at = received_at or utcnow()
    probabilities = fake_probabilities(top_class, labels=labels)
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    with db.session() as s:
        if image_id is None:
            image = Image(batch_id=batch_id, display_name=name or f"lesion-{uuid.uuid4().hex[:6]}.jpg",
                          sha256=uuid.uuid4().hex * 2, store_key=store_key, size_bytes=1000, width=640,
                          height=480, format="JPEG", stored_format="JPEG", status=ImageStatus.ANALYSED, attempts=1,
                          created_at=received_at, updated_at=utcnow())
            s.add(image)
            s.flush()
            image_id = image.id
        analysis = Analysis(
            image_id=image_id, model_version=model_version, model_trained=trained, outcome=ImageStatus.ANALYSED,
            probabilities=probabilities, top_class=top_class, confidence=probabilities[top_class],
            top3=[list(kv) for kv in ranked[:3]], risk_level={"urgent": "high"}.get(priority, "low"),
            priority=priority, reasons=[f"Seeded as {priority}."], recommendations=["Seeded advice."],
            quality={"passed": True, "checks": [
                {"name": "sharpness", "value": 18.25, "threshold": 6.0, "passed": True, "marginal": False,
                 "message": "Sharpness is 18 (minimum 6.0).", "bound": "min"},
                {"name": "max_brightness", "value": 221.0, "threshold": 230.0, "passed": True, "marginal": True,
                 "message": "Brightness is 221, only just below the maximum of 230.", "bound": "max"}]},
            thresholds={"malignant_threshold": 0.3, "min_confidence": 0.5, "max_entropy": 0.75},
            timings={}, heatmap_key=heatmap_key)
        s.add(analysis)
        s.flush()
        if audit_share is not None:
            open_cases(s, [analysis.id], audit_share)
        return analysis.id


def seed_batch(db, name: str = "Seeded") -> int:
    from triage.schema import Batch

    with db.session() as s:
        batch = Batch(name=name)
        s.add(batch)
        s.flush()
        return batch.id


class FlakyProxy:
    """An HTTP proxy in front of a web server that spoils chosen upload requests, to test retries.

    Requests to `/api/batches/<id>/images` are counted from 1; those numbered in `busy` get a 503
    without reaching the server, and those in `lost` reach the server, which stores their files, but
    the answer never comes back (the connection is dropped), as when a network fails at the worst moment.
    Everything else passes through unchanged, cookies included.
    """

    def __init__(self, target: str, busy: set[int] = frozenset(), lost: set[int] = frozenset()):
        self.target, self.busy, self.lost = target, set(busy), set(lost)
        self.port = free_port()
        self.uploads = 0
        self.spoiled: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FlakyProxy":
        from http.server import ThreadingHTTPServer

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _fault(self, method: str, path: str) -> str | None:
        if method != "POST" or not re.fullmatch(r"/api/batches/\d+/images", path):
            return None
        with self._lock:
            self.uploads += 1
            number = self.uploads
        fault = "busy" if number in self.busy else "lost" if number in self.lost else None
        if fault:
            self.spoiled.append((number, fault))
        return fault

    def _handler(self):
        from http.server import BaseHTTPRequestHandler

        import requests

        proxy = self
        hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault(self.command, self.path.split("?")[0])
                if fault == "busy":
                    self._answer(503, b'{"error": "busy (test proxy)"}', {"Content-Type": "application/json"})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
                answer = requests.request(self.command, proxy.target + self.path, data=body, headers=headers,
                                          allow_redirects=False, timeout=120)
                if fault == "lost":
                    self.close_connection = True  # the server has done the work; the client never hears
                    return
                self._answer(answer.status_code, answer.content,
                             {k: v for k, v in answer.headers.items() if k.lower() not in hop_by_hop})

            def _answer(self, status: int, content: bytes, headers: dict) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _relay

        return Handler


def batch_image_names(db, batch_id: int) -> list[str]:
    """The display names of a batch's images, sorted."""
    from triage.schema import Image

    with db.session() as s:
        return sorted(s.scalars(select(Image.display_name).where(Image.batch_id == batch_id)))


def files_received(db, batch_id: int) -> dict[str, int]:
    """What the portal was sent for a batch, summed over every upload request (from the audit log): a
    file sent twice shows as a duplicate here even when the sender never heard the answer."""
    from triage.schema import AuditEvent

    totals = {"accepted": 0, "duplicate": 0, "rejected": 0}
    with db.session() as s:
        for details in s.scalars(select(AuditEvent.details).where(
                AuditEvent.action == "batch.upload", AuditEvent.target_id == batch_id)):
            for key in totals:
                totals[key] += details[key]
    return totals


def photo_folder(root: Path, photos: int, folders: list[str], first_seed: int = 0) -> list[str]:
    """`photos` distinct small JPEGs spread in turn over nested `folders` under `root`; returns their
    names as an uploader gives them (the folder's own name first), sorted."""
    from tests import imagegen

    names = []
    for i in range(photos):
        rel = f"{folders[i % len(folders)]}/lesion-{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(imagegen.jpeg(first_seed + i, 64, 48))
        names.append(f"{root.name}/{rel}")
    return sorted(names)
