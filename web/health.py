"""Readiness of what the portal depends on: the database and the broker (with queue depth)."""
from __future__ import annotations

from sqlalchemy import text

from triage import heartbeat

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
    except Exception as exc:
        report["ok"] = False
        report["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return report
