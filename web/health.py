"""Readiness of what the portal depends on: the database, the broker (with queue depth), the workers and
the background duties (triage/duties.py): one overdue duty makes the whole report unhealthy."""
from __future__ import annotations

from sqlalchemy import text

from triage import duties, heartbeat

from .services import Services


def health_report(svc: Services) -> dict:
    report = {"ok": True, "database": {"ok": True}, "redis": {"ok": True}}
    try:
        with svc.db.session() as s:
            s.execute(text("SELECT 1"))
    except Exception as exc:
        report["ok"] = False
        report["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        client = svc.redis
        client.ping()
        report["redis"]["queue_depth"] = client.llen(svc.settings.queue_name)
        report["workers"] = heartbeat.workers(client)
        report["duties"] = duties.report(client, svc.settings)
    except Exception as exc:
        report["ok"] = False
        report["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return report
    overdue = sorted(name for name, duty in report["duties"].items() if duty["overdue"])
    if overdue:
        report["ok"] = False
        report["overdue"] = overdue
    # A worker's model process says at once when it starts again; while no worker has its model loaded,
    # nothing is analysed. (No worker at all shows as overdue heartbeats, after a start-up grace.)
    report["model_ready"] = any(w.get("model_loaded") for w in report["workers"])
    if report["workers"] and not report["model_ready"]:
        report["ok"] = False
    return report
