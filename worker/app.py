"""The worker's Celery app, configured from the same settings as the web.

Run one worker per accelerator with one process, which loads the model once:
    celery -A worker.app worker --pool prefork --concurrency 1 -Q analysis -n worker1@%h
and exactly one scheduler for the deployment, as its own supervised process (it sends the reconcile job):
    celery -A worker.app beat --schedule var/celerybeat-schedule
"""
from __future__ import annotations

from celery import signals

from triage import duties
from triage.broker import redis_client
from triage.jobs import RECONCILE_TASK, duties_queue, make_celery
from triage.settings import get_settings

settings = get_settings()
celery = make_celery(settings, "dermatriage-worker")
celery.conf.include = ["worker.tasks", "worker.notify"]
celery.conf.beat_schedule = {
    "reconcile": {"task": RECONCILE_TASK, "schedule": settings.reconcile_every_s},
}


@signals.celeryd_after_setup.connect
def _consume_notifications(sender, instance, **_):
    # Every worker also takes notification and reconcile jobs, whatever queues its command line names (-Q).
    instance.app.amqp.queues.select_add(duties_queue(settings))


_scheduler_client = None  # set in the beat process only


@signals.beat_init.connect
def _in_the_scheduler(sender, **_):
    global _scheduler_client
    _scheduler_client = redis_client(settings.redis_url)


@signals.after_task_publish.connect
def _scheduled(sender=None, **_):
    # The scheduler's duty is done when the reconcile job has reached the broker.
    if _scheduler_client is not None and sender == RECONCILE_TASK:
        duties.record(_scheduler_client, settings.queue_name, "scheduler")
