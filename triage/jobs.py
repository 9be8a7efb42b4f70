"""The one Celery configuration, used by the web (to send jobs) and the worker (to run them).

The web sends jobs by task name so it never imports the worker, and with it TensorFlow.
"""
from __future__ import annotations

import logging
from typing import Iterable

from celery import Celery

from .settings import Settings

ANALYSE_TASK = "worker.tasks.analyse_image"
RECONCILE_TASK = "worker.tasks.reconcile"
NOTIFY_TASK = "worker.notify.deliver"
log = logging.getLogger(__name__)


def make_celery(settings: Settings, name: str = "dermatriage") -> Celery:
    app = Celery(name, broker=settings.redis_url)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_ignore_result=True,  # results live in SQL; Redis is transport only
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 30, settings.task_time_limit_s // 2),
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        worker_prefetch_multiplier=1,  # the worker gathers batches from SQL, not from prefetched messages
        # The child loads the model before it reports for work; Celery's default of 4 s would kill it
        # mid-load (ResNet152 takes longer, and any model does on a busy machine) again and again.
        worker_proc_alive_timeout=600,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        # No task-sent event: it doubled the portal's Redis writes per photograph, and Flower shows a job
        # from its task-received event on (the queue's length is in /metrics and Flower's broker page).
        task_send_sent_event=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5,
                                   "interval_max": 1},
        task_serializer="json",
        accept_content=["json"],
        # Notifications and the reconciler travel on a queue of their own, which every worker also consumes
        # (worker/app.py): the worker takes from its queues in turn, so neither an urgent notification nor
        # the reconcile that is due every minute waits until a backlog of thousands of analysis jobs drains.
        task_routes={NOTIFY_TASK: {"queue": duties_queue(settings)},
                     RECONCILE_TASK: {"queue": duties_queue(settings)}},
    )
    if settings.visibility_timeout_s <= settings.task_time_limit_s * 2:
        raise ValueError("The Redis visibility timeout must be well above the task time limit "
                         f"({settings.visibility_timeout_s}s vs {settings.task_time_limit_s}s), or running "
                         "jobs are delivered twice.")
    return app


def duties_queue(settings: Settings) -> str:
    """The queue of the light background jobs: notifications and the reconciler."""
    return f"{settings.queue_name}-duties"


def enqueue_analysis(app: Celery, image_ids: Iterable[int], per_job: int = 1) -> None:
    """Send jobs naming `per_job` images each (the portal and the reconciler: a batch's worth; a retried
    image: alone). Call only after the rows are committed.

    Every job costs the worker's two processes about 4.5 ms of CPU even when its images are already
    taken (measured on 1,000 such jobs), which one job per image made the largest cost beside the
    network; SQL, not the message, decides which images a worker takes."""
    _send(app, ANALYSE_TASK, image_ids, per_job)


def enqueue_notifications(app: Celery, notification_ids: Iterable[int]) -> None:
    """Send one delivery job per notification. Call only after the rows are committed."""
    _send(app, NOTIFY_TASK, notification_ids, 1)


def _send(app: Celery, task: str, row_ids: Iterable[int], per_job: int) -> None:
    """Jobs of `per_job` row ids each, all through one producer (one connection from the pool)."""
    ids = list(row_ids)
    if not ids:
        return
    per_job = max(1, per_job)
    with app.producer_or_acquire() as producer:
        for start in range(0, len(ids), per_job):
            app.send_task(task, args=ids[start:start + per_job], producer=producer)
