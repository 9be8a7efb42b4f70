"""Prometheus metrics of the portal at /metrics (an API token, like the rest of the API).

Counts of images by status, reviews by outcome and the queue depth are read from the database and
Redis at each scrape, so every gunicorn process reports the same truth; files received are counted
by the process that received them (sum them across processes).
"""
from __future__ import annotations

import redis
from flask import Blueprint, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, true

from triage import duties, heartbeat
from triage.schema import Analysis, Image, ImageStatus

from triage.sites import visible_batch_ids

from .auth import my_sites
from .services import Services, services

bp = Blueprint("metrics", __name__)
_PROCESS = CollectorRegistry()
FILES = Counter("dermatriage_web_files_total", "Files received in uploads by this web process, by result",
                ["result"], registry=_PROCESS)


def count_files(results: list[dict]) -> None:
    for result in results:
        FILES.labels(result["status"]).inc()


class _State:
    """Gauges computed from the database and the broker when scraped. Counts of images and analyses are
    of the scraper's sites (`sites`, triage.sites; None: every site); the broker's queue depth, workers
    and duties are the deployment's machinery, the same for everyone."""

    def __init__(self, svc: Services, sites=None):
        self.svc = svc
        self.sites = sites

    def collect(self):
        images = GaugeMetricFamily("dermatriage_images", "Images by status", labels=["status"])
        priorities = GaugeMetricFamily("dermatriage_analyses", "Analyses by triage priority", labels=["priority"])
        with self.svc.db.session() as s:
            batches = Image.batch_id.in_(visible_batch_ids(self.sites)) if self.sites is not None else true()
            by_status = dict(s.execute(select(Image.status, func.count()).where(batches)
                                       .group_by(Image.status)).all())
            by_priority = dict(s.execute(select(Analysis.priority, func.count())
                                         .join(Image, Image.id == Analysis.image_id).where(batches)
                                         .group_by(Analysis.priority)).all())
        for status in ImageStatus.ALL:
            images.add_metric([status], by_status.get(status, 0))
        for priority, n in sorted(by_priority.items()):
            priorities.add_metric([priority], n)
        yield images
        yield priorities
        queue = GaugeMetricFamily("dermatriage_queue_depth", "Jobs waiting in the broker queue")
        workers = GaugeMetricFamily("dermatriage_workers_alive", "Workers with a fresh heartbeat")
        try:
            client = self.svc.redis
            queue.add_metric([], client.llen(self.svc.settings.queue_name))
            workers.add_metric([], len(heartbeat.workers(client)))
            duty_report = duties.report(client, self.svc.settings)
            yield queue
            yield workers
            yield from _duty_metrics(duty_report)
        except redis.RedisError:
            pass  # the broker being down shows as missing series, and in /health


def _duty_metrics(report: dict[str, dict]):
    last = GaugeMetricFamily("dermatriage_duty_last_success_timestamp_seconds",
                             "When each background duty last did its work (Unix time)", labels=["duty"])
    overdue = GaugeMetricFamily("dermatriage_duty_overdue",
                                "1 when a background duty has not succeeded for twice its interval", labels=["duty"])
    for name, duty in report.items():
        if duty.get("last_success_at"):
            last.add_metric([name], duty["last_success_at"])
        overdue.add_metric([name], int(duty["overdue"]))
    yield last
    yield overdue


@bp.get("/metrics")
def metrics():
    state = CollectorRegistry()
    with services().db.session() as s:
        sites = my_sites(s)
    state.register(_State(services(), sites))
    return Response(generate_latest(_PROCESS) + generate_latest(state), mimetype=CONTENT_TYPE_LATEST)
