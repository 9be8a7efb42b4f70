"""Chaos: during one run of several hundred photographs, every process of the system is killed in turn.

Web (one gunicorn worker), the Celery worker's main process, its model process, the scheduler, Flower,
Redis and PostgreSQL are each SIGKILLed while photographs are being uploaded and analysed. The test plays
the supervisor (compose's `restart:`, scripts/run.sh): it starts again what was killed. Then every
photograph must have ended analysed, needing a reshoot or failed exactly once, every background duty must
have run again within twice its interval, and /health must have reported each outage while it lasted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import requests
from sqlalchemy import func, select

from tests.faults import ARTIFACTS, record, small_photos
from tests.support import Flower, PostgresServer, RedisServer, wait_until
from triage import duties
from triage.schema import Analysis, Image, ImageStatus

pytestmark = pytest.mark.slow

PHOTOS = 360
PER_REQUEST = 6
# Recovery in seconds; the watchdog checks every 2 s and so is overdue 4 s after its process dies.
QUICK = dict(task_time_limit_s=20, visibility_timeout_s=60, stale_after_s=5, reconcile_every_s=2,
             consume_stall_s=8, gradcam=False)


class Uploader(threading.Thread):
    """Sends the photographs into one batch over HTTP, a few per request, paced until told to hurry.

    A request that fails (web worker killed, database down) is sent again: the batch takes the same bytes
    only once, so a retry of a request that did commit adds nothing."""

    def __init__(self, url: str, token: str, batch_id: int, files: list[tuple[bytes, str]]):
        super().__init__(daemon=True)
        self.url, self.batch_id, self.files = url, batch_id, files
        self.headers = {"Authorization": f"Bearer {token}"}
        self.hurry = threading.Event()
        self.retries = 0
        self.error: str | None = None

    def run(self):
        try:
            for i in range(0, len(self.files), PER_REQUEST):
                self._send(self.files[i:i + PER_REQUEST])
                if not self.hurry.is_set():
                    time.sleep(1.2)  # the upload lasts through all the kills
        except Exception as exc:  # reported by the test, never lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def _send(self, chunk):
        deadline = time.monotonic() + 120
        while True:
            try:
                response = requests.post(f"{self.url}/api/batches/{self.batch_id}/images", headers=self.headers,
                                         files=[("files", (n, d, "image/jpeg")) for d, n in chunk], timeout=30)
                if response.status_code < 300:
                    body = response.json()
                    assert all(f["status"] in ("accepted", "duplicate") for f in body["files"]), body
                    return
            except requests.RequestException:
                pass
            self.retries += 1
            assert time.monotonic() < deadline, "an upload request kept failing for 2 minutes"
            time.sleep(0.5)


def test_killing_every_process_in_turn_loses_nothing(make_stack, tmp_path, tiny_model_path):
    postgres = PostgresServer().start()
    broker = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        _run(make_stack, postgres, broker, tmp_path)
    finally:
        broker.stop()
        postgres.stop()


def _run(make_stack, postgres, broker, tmp_path):
    stack = make_stack(postgres.url, redis_url=broker.url, **QUICK)
    web = stack.start_web()
    worker = stack.start_worker(name="chaos")
    scheduler = stack.start_scheduler()
    flower = Flower(stack.settings, stack.tmp, "flower")
    stack.workers.append(flower)
    flower.start()
    health = HealthLog(web.url)
    health.start()
    wait_until(lambda: health.latest_ok(), 60, 0.5, "a healthy system before the first kill")

    batch_id = requests.post(web.url + "/api/batches", headers={"Authorization": f"Bearer {stack.token}"},
                             files=[("files", ("first.jpg", small_photos(1, start=9000)[0][0], "image/jpeg"))],
                             timeout=30).json()["batch_id"]
    uploader = Uploader(web.url, stack.token, batch_id, small_photos(PHOTOS))
    uploader.start()
    outages = []

    def outage(name, kill, restart, reported, down_for=0.0):
        """Kill, wait while /health shows the outage, start again, wait for health; note the figures."""
        wait_until(lambda: _analysed(stack) > 0 or uploader.hurry.is_set(), 60, 0.2, "work in progress")
        mark = health.mark()
        killed_at = time.monotonic()
        kill()
        seen = wait_until(lambda: health.seen_since(mark, reported), 30, 0.2, f"/health to report {name}") \
            if reported else None
        time.sleep(max(0.0, down_for - (time.monotonic() - killed_at)))
        restart()
        wait_until(health.latest_ok, 90, 0.5, f"a healthy system after {name}")
        outages.append({"process": name, "reported_as": seen, "healthy_again_s": round(time.monotonic() - killed_at, 1)})

    gunicorn_worker = lambda: _children(web.proc.pid)[0]  # noqa: E731
    outage("a web worker", lambda: os.kill(gunicorn_worker(), signal.SIGKILL), lambda: None, None)
    outage("the Celery main process", lambda: os.kill(worker.proc.pid, signal.SIGKILL),
           lambda: _restart(worker), {"consume_watchdog"})
    old_model_pid = worker.child_pids()[0]
    outage("the model process", lambda: os.kill(old_model_pid, signal.SIGKILL), lambda: None, {"model"})
    assert wait_until(lambda: _model_pid(health) not in (None, old_model_pid), 60, 0.5, "a new model process")
    outage("the scheduler", scheduler.kill, scheduler.start, {"scheduler", "reconciler"})
    outage("Flower", flower.kill, flower.start, None)
    assert requests.get(f"http://127.0.0.1:{flower.port}/healthcheck", timeout=5).text == "OK"
    outage("Redis", broker.kill, broker.start, {"redis"})
    outage("PostgreSQL", postgres.kill, postgres.start, {"database"})
    uploader.hurry.set()
    uploader.join(300)
    assert uploader.error is None, uploader.error

    statuses, counts = _settle(stack, batch_id)
    names = _names(stack, batch_id)
    assert sorted(names) == sorted(["first.jpg"] + [n for _, n in small_photos(PHOTOS)])  # each once
    assert set(statuses.values()) <= set(ImageStatus.FINAL)
    assert all(counts.get(i, 0) == (0 if s == ImageStatus.FAILED else 1) for i, s in statuses.items())
    # Every duty has run again within twice its interval: /health is ok, which says exactly that.
    report = wait_until(health.latest_ok, 60, 0.5, "every duty to run again")
    assert all(not d["overdue"] and (d["last_success_at"] or not d["on"]) for d in report["duties"].values())
    health.stop()
    record("every process killed in turn (web worker, Celery main, model process, scheduler, Flower, "
           "Redis, PostgreSQL)", len(outages), list(statuses), statuses, counts)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "chaos.json").write_text(json.dumps({"photographs": len(statuses), "upload_retries": uploader.retries,
                                                      "outages": outages}, indent=1))


class HealthLog(threading.Thread):
    """Polls /health every 0.2 s and keeps what it said (a report, or None when nothing answered)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.reports: list[dict | None] = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.reports.append(requests.get(self.url + "/health", timeout=5).json())
            except (requests.RequestException, ValueError):
                self.reports.append(None)
            time.sleep(0.2)

    def stop(self):
        self.stopped.set()

    def mark(self) -> int:
        return len(self.reports)

    def latest_ok(self) -> dict | None:
        latest = self.reports[-1] if self.reports else None
        return latest if latest and latest["ok"] else None

    def seen_since(self, mark: int, parts: set[str]) -> list[str] | None:
        """The first report since `mark` that names every one of `parts` as down or overdue."""
        for report in self.reports[mark:]:
            if report and not report["ok"]:
                down = {p for p in ("database", "redis") if not report[p]["ok"]} | set(report.get("overdue", []))
                if report.get("workers") and not report.get("model_ready"):
                    down.add("model")
                if parts <= down:
                    return sorted(down)
        return None


def _restart(worker):
    """As compose would once a container's main process is gone: what is left of the group is ended (the
    orphaned model process may still be inside a job), then a fresh worker starts."""
    worker.proc.wait(10)
    try:
        os.killpg(worker.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    worker.start()


def _children(pid: int) -> list[int]:
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _model_pid(health: HealthLog) -> int | None:
    latest = health.reports[-1] if health.reports else None
    workers = (latest or {}).get("workers") or []
    return workers[0].get("pid") if workers else None


def _analysed(stack) -> int:
    with stack.db.session() as s:
        return s.scalar(select(func.count()).select_from(Analysis))


def _settle(stack, batch_id: int):
    statuses = stack.wait_final(batch_id, timeout=300)
    with stack.db.session() as s:
        counts = dict(s.execute(select(Analysis.image_id, func.count()).join(Image)
                                .where(Image.batch_id == batch_id).group_by(Analysis.image_id)).all())
    return statuses, counts


def _names(stack, batch_id: int) -> list[str]:
    with stack.db.session() as s:
        return list(s.scalars(select(Image.display_name).where(Image.batch_id == batch_id)))
