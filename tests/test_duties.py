"""Background duties: each records its last success; /health and /metrics turn unhealthy when one is overdue."""
from __future__ import annotations

import re
import time

import pytest

from tests.support import wait_until
from triage import duties
from triage.broker import redis_client
from triage.settings import Settings

QUICK = dict(reconcile_every_s=2, consume_stall_s=8, gradcam=False)  # duties every 2 s: overdue after 4 s


def _settings(redis_server, **values) -> Settings:
    return Settings(redis_url=redis_server.url, queue_name=f"duties-{time.monotonic_ns()}", **values)


def test_a_duty_is_overdue_after_twice_its_interval(redis_server):
    settings = _settings(redis_server, reconcile_every_s=60)
    client = redis_client(settings.redis_url)
    now = time.time()
    duties.record(client, settings.queue_name, "reconciler", "node-a")
    assert duties.report(client, settings, now=now + 119)["reconciler"]["overdue"] is False
    late = duties.report(client, settings, now=now + 121)["reconciler"]
    assert late["overdue"] is True and late["node"] == "node-a" and late["every_s"] == 60


def test_a_duty_never_seen_has_a_start_up_grace_then_is_overdue(redis_server):
    settings = _settings(redis_server, reconcile_every_s=5)
    client = redis_client(settings.redis_url)
    first_look = time.time()
    assert not any(d["overdue"] for d in duties.report(client, settings, now=first_look).values())
    later = duties.report(client, settings, now=first_look + duties.STARTUP_GRACE_S + 1)
    assert later["scheduler"]["overdue"] and later["scheduler"]["last_success_at"] is None


def test_a_switched_off_watchdog_is_never_overdue(redis_server):
    settings = _settings(redis_server, consume_stall_s=0)
    client = redis_client(settings.redis_url)
    report = duties.report(client, settings, now=time.time() + 10 * duties.STARTUP_GRACE_S)
    assert report["consume_watchdog"] == {"on": False, "what": duties.DUTIES[-1].what, "overdue": False}


@pytest.mark.slow
def test_health_names_the_duty_that_stopped_and_recovers_when_it_runs_again(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, **QUICK)
    stack.start_worker()
    scheduler = stack.start_scheduler()

    def healthy():
        response = stack.client.get("/health")
        report = response.get_json()
        ran = all(d["last_success_at"] for d in report["duties"].values())
        return response.status_code == 200 and ran and report

    report = wait_until(healthy, 60, 0.5, "every duty to run once")
    assert report["duties"]["reconciler"]["age_s"] < 4 + 1
    scheduler.kill()  # the reconciler's clock stops with it: nothing else sends the job
    down = wait_until(lambda: _unhealthy(stack), 30, 0.5, "/health to report the stopped scheduler")
    assert {"scheduler", "reconciler", "notifications", "orphan_sweep"} <= set(down["overdue"])
    assert "heartbeats" not in down["overdue"] and "consume_watchdog" not in down["overdue"]
    metrics = stack.client.get("/metrics").get_data(as_text=True)
    assert re.search(r'dermatriage_duty_overdue\{duty="scheduler"\} 1', metrics)
    assert re.search(r'dermatriage_duty_overdue\{duty="heartbeats"\} 0', metrics)
    scheduler.start()
    wait_until(healthy, 30, 0.5, "/health to recover once the scheduler runs again")


def _unhealthy(stack):
    response = stack.client.get("/health")
    return response.status_code == 503 and response.get_json()


@pytest.mark.slow
def test_a_dead_worker_shows_as_overdue_heartbeats_and_watchdog(make_stack, sqlite_url):
    stack = make_stack(sqlite_url, **QUICK)
    worker = stack.start_worker()
    stack.start_scheduler()
    wait_until(lambda: stack.client.get("/health").status_code == 200, 60, 0.5, "a healthy start")
    worker.kill()
    down = wait_until(lambda: _unhealthy(stack), 40, 0.5, "/health to report the dead worker")
    wait_until(lambda: {"heartbeats", "consume_watchdog"} <= set(_unhealthy(stack)["overdue"]), 40, 0.5,
               "both worker duties overdue")
    assert down["database"]["ok"] and down["redis"]["ok"]
