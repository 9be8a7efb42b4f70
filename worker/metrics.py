"""Prometheus metrics of the process that holds the model, served on DERMATRIAGE_WORKER_METRICS_PORT.

They answer without credentials (Prometheus' own exposition server has none) and name the model
version and the worker's counts and timings, so they listen on this machine only unless
DERMATRIAGE_WORKER_METRICS_HOST says otherwise (README, Operations: how Prometheus scrapes them).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

IMAGES = Counter("dermatriage_worker_images_total", "Images finished by this worker, by outcome", ["outcome"])
BATCH_SIZE = Histogram("dermatriage_worker_batch_size", "Images per forward pass",
                       buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE = Histogram("dermatriage_worker_inference_seconds", "Forward pass (with Grad-CAM when on) per batch",
                      buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16))
WRITE = Histogram("dermatriage_worker_write_seconds", "Writing one batch's results, cases and notifications "
                  "(one transaction)", buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
END_TO_END = Histogram("dermatriage_worker_end_to_end_seconds", "From upload to stored result, per image",
                       buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
MODEL = Gauge("dermatriage_worker_model_info", "The loaded model", ["version", "trained"])


def serve(settings, model_version: str, trained: bool) -> None:
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    MODEL.labels(model_version, str(trained).lower()).set(1)


def observe(outcomes, ages_s: list[float], write_s: float) -> None:
    WRITE.observe(write_s)
    for out in outcomes:
        IMAGES.labels(out.status).inc()
    timed = next((o.timings for o in outcomes if "batch_size" in o.timings), None)
    if timed is not None:
        BATCH_SIZE.observe(timed["batch_size"])
        INFERENCE.observe(timed["forward_ms"] * timed["batch_size"] / 1000)
    for age in ages_s:
        END_TO_END.observe(age)
