"""What tests share: users and sign-in, seeded rows, a flaky proxy, waiting for results; the real
processes (Redis, workers, web servers) come from `harness.processes`, which the scripts share too."""
from __future__ import annotations

import re
import threading
import uuid
from pathlib import Path

from sqlalchemy import create_engine, select, text

from harness.processes import (ROOT, VENV_BIN, CeleryProcess, Flower, PostgresServer, RedisServer,  # noqa: F401
                               Scheduler, WebServer, Worker, child_env, free_port, settings_env, wait_until)
from triage.store import WORKING_SUFFIX

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
    from harness import imagegen

    names = []
    for i in range(photos):
        rel = f"{folders[i % len(folders)]}/lesion-{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(imagegen.jpeg(first_seed + i, 64, 48))
        names.append(f"{root.name}/{rel}")
    return sorted(names)


def clinical_fields(db) -> dict[str, tuple]:
    """Each image's display name -> (patient, lesion, body site, age, sex, skin type, note) as stored."""
    from triage.schema import Image, Lesion, Patient

    with db.session() as s:
        rows = s.execute(select(Image.display_name, Patient.external_id, Lesion.external_id, Lesion.body_site,
                                Image.age, Image.sex, Image.fitzpatrick, Image.clinical_note)
                         .outerjoin(Lesion, Lesion.id == Image.lesion_id)
                         .outerjoin(Patient, Patient.id == Lesion.patient_id)).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def stored_files(stack) -> list[Path]:
    """The photographs (and heatmaps) in a stack's image store. A working copy (triage.working_copy) is
    not one, but it may only lie beside a stored photograph: never a file for a refused upload."""
    root = stack.settings.image_store
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
    photos = [p for p in files if p.suffix != WORKING_SUFFIX]
    names = {p.name for p in photos}
    assert all(p.stem in names for p in files if p.suffix == WORKING_SUFFIX), "a working copy without its photograph"
    return photos
