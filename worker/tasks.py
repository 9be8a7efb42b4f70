"""Celery tasks. They take ids, never objects, and are safe to run twice."""
from __future__ import annotations

import logging
import os
import time

from celery import signals
from celery.worker import state as worker_state
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from triage import heartbeat
from triage.jobs import ANALYSE_TASK, RECONCILE_TASK, enqueue_analysis
from triage.settings import get_settings

from . import claims, metrics
from .app import celery
from .orphans import sweep_orphans
from .pipeline import analyse_batch, write_outcomes
from .runtime import runtime
from .watchdog import ConsumeWatchdog

log = logging.getLogger(__name__)


@signals.worker_process_init.connect
def _load_model_in_child(**_):
    # Runs in the prefork child: TensorFlow starts here, after the fork, and the model is loaded
    # before the first job so no job pays for it.
    rt = runtime()
    rt.classifier
    if rt.explainer is not None:
        rt.explainer.warm_up(rt.classifier.input_size)  # tracing the gradient graph takes seconds
    metrics.serve(rt.settings.worker_metrics_port, rt.classifier.version, rt.classifier.trained)
    heartbeat.start(rt.settings.redis_url, rt.node, {
        "model_loaded": True, "model_version": rt.classifier.version, "model_trained": rt.classifier.trained,
        "gradcam": rt.explainer is not None, "pid": os.getpid(), "started_at": time.time()})
    orphaned = claims.expire_claims_of(rt.db, rt.node)
    if orphaned:
        log.warning("re-enqueueing %d images held by this node's previous process", len(orphaned))
        enqueue_analysis(celery, orphaned)


_watchdog: ConsumeWatchdog | None = None


@signals.worker_ready.connect
def _reconcile_and_watch(**_):
    # Runs in the worker's parent, which consumes from the broker; the model lives in the child.
    global _watchdog
    reconcile.delay()
    s = get_settings()  # not runtime(): that belongs to the child, which names its node by its parent
    if s.consume_stall_s > 0:
        _watchdog = ConsumeWatchdog(s.redis_url, s.queue_name, s.consume_stall_s,
                                    busy=lambda: bool(worker_state.active_requests or worker_state.reserved_requests))
        _watchdog.start()


@signals.task_received.connect
def _job_arrived(**_):
    if _watchdog is not None:
        _watchdog.received()


@celery.task(name=ANALYSE_TASK, bind=True, autoretry_for=(OperationalError,), retry_backoff=1,
             retry_backoff_max=30, max_retries=20)
def analyse_image(self, image_id: int) -> dict:
    """Analyse this image and, to fill the batch, others waiting. A no-op if it is already taken."""
    rt = runtime()
    s = rt.settings
    got, given_up = claims.claim_batch(rt.db, image_id, limit=s.batch_max_size, lease_s=s.task_time_limit_s,
                                       max_attempts=s.max_attempts, node=rt.node)
    if not got:
        return {"image": image_id, "claimed": 0, "failed": given_up}
    room = s.batch_max_size - len(got)
    if room > 0 and got[0].attempts == 1 and s.batch_max_wait_ms > 0:
        # A short wait lets a batch fill while an upload is still arriving; a lone image waits
        # only this long, and a flood never waits because its batches are full at once.
        time.sleep(s.batch_max_wait_ms / 1000)
        got += claims.claim_more(rt.db, room, lease_s=s.task_time_limit_s, node=rt.node)
    ids = [c.id for c in got]
    try:
        classifier = rt.classifier
        outcomes = analyse_batch(got, classifier, rt.store, rt.quality_thresholds, rt.risk_thresholds,
                                 rt.explainer)
        ages = write_outcomes(rt.db, rt.store, outcomes, node=rt.node, model_version=classifier.version,
                                 model_trained=classifier.trained, thresholds=rt.risk_thresholds.as_dict(),
                                 near_duplicate_distance=s.near_duplicate_distance)
    except (Exception, SoftTimeLimitExceeded) as exc:
        log.exception("batch %s failed", ids)
        back = claims.release(rt.db, ids, node=rt.node, error=f"{type(exc).__name__}: {exc}",
                              max_attempts=s.max_attempts)
        enqueue_analysis(celery, back)
        raise
    metrics.observe(outcomes, ages)
    return {"image": image_id, "claimed": len(ids), "written": len(ages), "failed": given_up}


@celery.task(name=RECONCILE_TASK)
def reconcile() -> dict:
    """Re-enqueue images whose job was lost (broker restart, killed worker). Safe to run anywhere."""
    rt = runtime()
    ids = claims.stale_images(rt.db, rt.settings.stale_after_s)
    if ids:
        claims.touch(rt.db, ids)
        enqueue_analysis(celery, ids)
        log.info("reconciler re-enqueued %d images", len(ids))
    removed = sweep_orphans(rt.db, rt.store, rt.settings.orphan_grace_s)
    return {"requeued": len(ids), "orphans_removed": removed}
