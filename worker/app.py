"""The worker's Celery app, configured from the same settings as the web.

Run one worker per accelerator with one process, which loads the model once:
    celery -A worker.app worker --pool prefork --concurrency 1 -Q analysis -n worker1@%h
"""
from __future__ import annotations

from triage.jobs import make_celery
from triage.settings import get_settings

settings = get_settings()
celery = make_celery(settings, "dermatriage-worker")
celery.conf.include = ["worker.tasks"]
celery.conf.beat_schedule = {
    "reconcile": {"task": "worker.tasks.reconcile", "schedule": settings.reconcile_every_s},
}
