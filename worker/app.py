"""The worker's Celery app, configured from the same settings as the web.

Run one worker per accelerator with one process, which loads the model once:
    celery -A worker.app worker --pool prefork --concurrency 1 -Q analysis -n worker1@%h
"""
from __future__ import annotations

from celery import signals

from triage.jobs import make_celery, notification_queue
from triage.settings import get_settings

settings = get_settings()
celery = make_celery(settings, "dermatriage-worker")
celery.conf.include = ["worker.tasks", "worker.notify"]
celery.conf.beat_schedule = {
    "reconcile": {"task": "worker.tasks.reconcile", "schedule": settings.reconcile_every_s},
}


@signals.celeryd_after_setup.connect
def _consume_notifications(sender, instance, **_):
    # Every worker also takes notification jobs, whatever queues its command line names (-Q).
    instance.app.amqp.queues.select_add(notification_queue(settings))
