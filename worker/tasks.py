"""Celery tasks. They take ids, never objects, and are safe to run twice."""
from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future, wait
from contextlib import contextmanager

from celery import signals
from celery.worker import state as worker_state
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from triage import duties, heartbeat, notifications
from triage.broker import redis_client
from triage.jobs import ANALYSE_TASK, RECONCILE_TASK, enqueue_analysis, enqueue_notifications
from triage.settings import get_settings

from . import claims, metrics
from .app import celery
from .orphans import sweep_orphans
from .pipeline import Prepared, classify, elapsed_ms, prepare_all, write_outcomes
from .runtime import release_memory, runtime
from .watchdog import ConsumeWatchdog

log = logging.getLogger(__name__)


@signals.worker_process_init.connect
def _load_model_in_child(**_):
    # Runs in the prefork child: TensorFlow starts here, after the fork, and the model is loaded
    # before the first job so no job pays for it. Until then /health shows this worker as loading.
    rt = runtime()
    heartbeat.announce(rt.settings.redis_url, rt.node, {"model_loaded": False, "pid": os.getpid(),
                                                         "started_at": time.time()})
    classifier = rt.classifier
    if rt.explainer is not None:  # tracing the gradient graph takes seconds
        shapes = {classifier.batch_shape(n) for n in rt.batch_sizes}
        rt.explainer.warm_up(classifier.input_size, tuple(sorted(shapes)))
    metrics.serve(rt.settings, rt.classifier.version, rt.classifier.trained)
    heartbeat.start(rt.settings.redis_url, rt.node, {
        "model_loaded": True, "model_version": rt.classifier.version, "model_trained": rt.classifier.trained,
        "gradcam": rt.explainer is not None, "pid": os.getpid(), "started_at": time.time()},
        after=lambda client: duties.record(client, rt.settings.queue_name, "heartbeats", rt.node))
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
        node = os.environ.get("DERMATRIAGE_WORKER_NAME")
        _watchdog = ConsumeWatchdog(s.redis_url, s.queue_name, s.consume_stall_s,
                                    busy=lambda: bool(worker_state.active_requests or worker_state.reserved_requests),
                                    checked=lambda client: duties.record(client, s.queue_name, "consume_watchdog", node))
        _watchdog.start(duties.watchdog_every_s(s))


@signals.task_received.connect
def _job_arrived(**_):
    if _watchdog is not None:
        _watchdog.received()


@celery.task(name=ANALYSE_TASK, bind=True, autoretry_for=(OperationalError,), retry_backoff=1,
             retry_backoff_max=30, max_retries=20)
def analyse_image(self, image_id: int, *more_ids: int) -> dict:
    """Analyse these images (the portal names up to a batch of them in one job) and, to fill batches,
    others waiting. A no-op for those already taken.

    With prefetching on, the job then keeps going with further waiting images for a while (see
    `_run_batches`): other batches are claimed and prepared while one is in the network.
    """
    named = [image_id, *more_ids]
    result = None
    with _stop_after_this_batch():
        try:
            result = _analyse_named(named)
            return result
        finally:
            if result is None or result["claimed"]:  # failed, or did work
                # The heaps keep freed buffers while batches follow each other (see runtime.settle_memory);
                # a job lasts at most a tenth of its time limit, so they are handed back at least that
                # often. A job that found its images taken has nothing to hand back (malloc_trim walks
                # every heap: too dear for a no-op).
                release_memory()


def _analyse_named(named: list[int]) -> dict:
    """Claim rounds until none of the job's images is left waiting: the first round takes them all unless
    one is being retried (then it goes alone, and the others follow in later rounds)."""
    total = {"image": named[0], "claimed": 0, "written": 0, "failed": []}
    while not _stop.is_set():
        try:
            done = _analyse(named)
        except Exception as exc:
            if not isinstance(exc, OperationalError):  # that one is retried whole, by Celery
                enqueue_analysis(celery, named, per_job=len(named))  # the job's images not yet claimed
            raise
        if not done["claimed"] and not done["failed"]:
            return total
        total["claimed"] += done["claimed"]
        total["written"] += done.get("written", 0)
        total["failed"] += done["failed"]
    # Stopped between rounds: the job's images not yet claimed go back on the queue for the next worker.
    enqueue_analysis(celery, named, per_job=len(named))
    return total


def _analyse(named: list[int]) -> dict:
    rt = runtime()
    s = rt.settings
    rt.classifier  # loaded here, never first on a helper thread, nor while images are held (solo pool)
    start = time.perf_counter()
    got, given_up = claims.claim_batch(rt.db, named, limit=s.batch_max_size, lease_s=s.task_time_limit_s,
                                       max_attempts=s.max_attempts, node=rt.node)
    if not got:
        return {"claimed": 0, "failed": given_up}
    held = [c.id for c in got]  # every image this round claimed: released together if anything fails
    try:
        prepared = _fill_and_prepare(rt, got, held, claim_ms=elapsed_ms(start))
        written = _run_batches(rt, prepared, held, chain=s.prefetch and got[0].attempts == 1)
    except (Exception, SoftTimeLimitExceeded) as exc:
        log.exception("batch %s failed", held)
        # A database outage is not the images' fault: their attempts are given back.
        back = claims.release(rt.db, held, node=rt.node, error=f"{type(exc).__name__}: {exc}",
                              max_attempts=s.max_attempts, refund=isinstance(exc, OperationalError))
        enqueue_analysis(celery, back)
        raise
    return {"claimed": len(held), "written": written, "failed": given_up}


_stop = threading.Event()


@contextmanager
def _stop_after_this_batch():
    """During a job, a stop signal ends the chain of batches instead of the process.

    A deployment's stop (systemd, `kill -- -<group>`) reaches this child as well as the worker's parent.
    The parent's warm shutdown waits for the running job, but billiard's own handler would end the child
    mid-batch, leaving claimed images behind. Outside a job the usual handler is back in place.
    """
    if threading.current_thread() is not threading.main_thread():  # signals need the main thread
        yield
        return
    _stop.clear()
    previous = signal.signal(signal.SIGTERM, lambda *_: _stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _fill_and_prepare(rt, got: list[claims.Claimed], held: list[int], claim_ms: float) -> list[Prepared]:
    """Wait briefly for a part-filled batch to fill, preparing what is already claimed meanwhile.

    A lone image waits only batch_max_wait_ms, and a flood never waits because its batches are full at
    once. A retried image is never topped up: it is analysed alone.
    """
    s = rt.settings
    room = s.batch_max_size - len(got)
    if room <= 0 or got[0].attempts != 1 or s.batch_max_wait_ms <= 0:
        return _prepare(rt, got, claim_ms)
    first = rt.background.submit(_prepare, rt, got, claim_ms)
    try:
        time.sleep(s.batch_max_wait_ms / 1000)
        start = time.perf_counter()
        extra = claims.claim_more(rt.db, room, lease_s=s.task_time_limit_s, node=rt.node)
        held.extend(c.id for c in extra)
        more = _prepare(rt, extra, elapsed_ms(start))
    finally:
        wait([first])  # never leave it running into a release
    return first.result() + more


def _prepare(rt, got: list[claims.Claimed], claim_ms: float) -> list[Prepared]:
    prepared = prepare_all(got, rt.store, rt.quality_thresholds, rt.classifier.input_spec, rt.pool)
    for p in prepared:
        p.outcome.timings["claim_ms"] = round(claim_ms / max(1, len(got)), 2)
    return prepared


def _run_batches(rt, prepared: list[Prepared], held: list[int], chain: bool) -> int:
    """Classify `prepared` and write it. With `chain`, keep going while fresh images wait, for at most a
    tenth of the job's time limit (so the job ends well inside it and the node takes new messages).

    Chained, the job runs `forward_lanes` lanes side by side, each claiming, preparing and classifying
    one batch after another. While one lane's batch is in the network another's is being decoded, so
    the network never waits for the CPU or the database; on a CPU two passes at once also fill the
    moments when one pass's threads wait for each other at the end of a layer. One thread writes the
    results in the order they come out, so a result is stored as soon as its own batch is through.
    Returns the number of results written.
    """
    deadline = time.monotonic() + rt.settings.task_time_limit_s / 10
    writes: list[Future] = []
    failed = threading.Event()
    holding = _Count()  # lanes with a batch in hand, from its claim to the end of its forward pass
    pause = max(rt.settings.batch_max_wait_ms, 10) / 1000

    def go_on() -> bool:
        return chain and not _stop.is_set() and not failed.is_set() and time.monotonic() < deadline

    def take() -> list[Prepared]:
        batch = next_batch(lambda: _claim_and_prepare(rt, held), go_on, holding.value, pause)
        if batch:
            holding.add(1)
        return batch

    def lane(batch: list[Prepared] | None) -> None:
        try:
            if batch is None:
                batch = take()
            while batch:
                try:
                    outcomes = classify(batch, rt.classifier, rt.risk_thresholds, rt.explainer)
                finally:
                    holding.add(-1)
                writes.append(rt.writer.submit(_write, rt, outcomes))
                batch = take()
        except BaseException:
            failed.set()  # the other lanes stop after their batch; the job's images are released together
            raise

    if prepared:
        holding.add(1)  # before the other lanes start, so that none takes an empty queue for the end
    others = [rt.background.submit(lane, None) for _ in range(rt.settings.forward_lanes - 1 if chain else 0)]
    try:
        lane(prepared)
    finally:
        wait(others)  # their claims must be in `held` before any release
        wait(writes)  # a release must never race a write of the same images
    for other in others:
        other.result()
    return sum(w.result() for w in writes)


def next_batch(claim, go_on, others_holding, pause: float) -> list:
    """A lane's next batch: `claim()` while `go_on()`. When nothing waits but another lane still has a
    batch in the network, the job is under way and photographs may be arriving (an upload in flight):
    look again after `pause` rather than leave the rest of the job to one lane. (A lane used to stop at
    its first empty claim, and a job that began with a few images ran on one lane to its end: measured,
    a 760-photograph job at 49 photographs a second against 64 with both lanes.) When no lane is busy,
    the queue is drained and the lane ends."""
    while go_on():
        batch = claim()
        if batch or not others_holding():
            return batch
        time.sleep(pause)
    return []


class _Count:
    """A count that threads change (the lanes of one job)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    def value(self) -> int:
        return self._count


def _claim_and_prepare(rt, held: list[int]) -> list[Prepared]:
    s = rt.settings
    start = time.perf_counter()
    got = claims.claim_more(rt.db, s.batch_max_size, lease_s=s.task_time_limit_s, node=rt.node)
    held.extend(c.id for c in got)
    return _prepare(rt, got, elapsed_ms(start)) if got else []


def _write(rt, outcomes) -> int:
    classifier = rt.classifier
    start = time.perf_counter()
    written = write_outcomes(rt.db, rt.store, outcomes, node=rt.node, model_version=classifier.version,
                             model_trained=classifier.trained, thresholds=rt.risk_thresholds.as_dict(),
                             near_duplicate_distance=rt.settings.near_duplicate_distance, settings=rt.settings)
    # A batch's database time is not in its own rows (written last): it goes to the worker's metrics.
    write_ms = elapsed_ms(start)
    log.debug("wrote batch of %d in %.1f ms", len(outcomes), write_ms)
    _send_notifications(written.notifications)
    metrics.observe(outcomes, written.ages, write_ms / 1000)
    return len(written.ages)


def _send_notifications(ids: list[int]) -> None:
    """After the commit. A broker outage must not fail the batch: the rows are written, and the
    reconciler sends what is still due."""
    try:
        enqueue_notifications(celery, ids)
    except Exception:
        log.exception("could not send %d notification jobs; the reconciler will", len(ids))


@celery.task(name=RECONCILE_TASK)
def reconcile() -> dict:
    """Re-enqueue images and notifications whose job was lost (broker restart, killed worker) and remove
    orphaned files. Safe to run anywhere. Each part runs even when another fails, and records its own
    success (triage/duties.py), so /health names the part that stopped working."""
    rt = runtime()
    done, failed = {}, []
    for duty, part in (("reconciler", _requeue_lost_images), ("notifications", _resend_lost_notifications),
                       ("orphan_sweep", _sweep_orphans)):
        try:
            done[duty] = part(rt)
        except Exception:
            log.exception("background duty %s failed", duty)
            failed.append(duty)
            continue
        duties.record(_duty_client(rt.settings.redis_url), rt.settings.queue_name, duty, rt.node)
    if failed:
        raise RuntimeError(f"background duties failed: {', '.join(failed)} (see the log above)")
    return done


def _requeue_lost_images(rt) -> int:
    ids = claims.stale_images(rt.db, rt.settings.stale_after_s)
    if ids:
        claims.touch(rt.db, ids)
        enqueue_analysis(celery, ids, per_job=rt.settings.batch_max_size)
        log.info("reconciler re-enqueued %d images", len(ids))
    return len(ids)


def _resend_lost_notifications(rt) -> int:
    lost = notifications.requeue_lost(rt.db)
    if lost:
        enqueue_notifications(celery, lost)
        log.info("reconciler re-sent %d notification jobs", len(lost))
    return len(lost)


def _sweep_orphans(rt) -> int:
    return sweep_orphans(rt.db, rt.store, rt.settings.orphan_grace_s)


@functools.lru_cache(maxsize=None)
def _duty_client(redis_url: str):
    return redis_client(redis_url)
