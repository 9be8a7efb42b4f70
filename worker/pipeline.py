"""One batch through the analysis: decode, quality gate, one forward pass, risk policy, one write."""
from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import JSON, bindparam, case, update

from model.preprocess import InputSpec
from model.quality import QualityThresholds, assess_quality
from triage import working_copy
from triage.db import Database, insert_ignoring_conflicts
from triage.notifications import announce_urgent
from triage.reviews import open_cases
from triage.risk import RiskThresholds, assess, reshoot_assessment
from triage.schema import Analysis, Image, ImageStatus, utcnow
from triage.settings import Settings
from triage.store import ImageStore

from .claims import Claimed
from .near_duplicates import find_near_duplicates, preload as preload_near_duplicates

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    image_id: int
    status: str
    error: str | None = None
    analysis: dict | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """One claimed image after the CPU's part: its outcome so far and, if it goes on, the network input."""
    outcome: Outcome
    tensor: np.ndarray | None = None
    marginal: list[str] = field(default_factory=list)
    quality: dict | None = None


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def prepare_all(claimed: list[Claimed], store: ImageStore, quality_t: QualityThresholds, spec: InputSpec,
                pool: Executor | None = None) -> list[Prepared]:
    """`prepare` for every image, on `pool`'s threads when given (Pillow, OpenCV and NumPy release the
    GIL while they work, so images are decoded side by side). The order of `claimed` is kept."""
    def one(item: Claimed) -> Prepared:
        return prepare(item, store, quality_t, spec)

    if pool is None or len(claimed) < 2:
        return [one(item) for item in claimed]
    return list(pool.map(one, claimed))


def prepare(item: Claimed, store: ImageStore, quality_t: QualityThresholds, spec: InputSpec) -> Prepared:
    """Decode, quality gate and preprocessing of one image: everything before the network, all CPU."""
    out = Outcome(item.id, ImageStatus.FAILED)
    start = time.perf_counter()
    cpu_start = time.thread_time()
    try:
        # One working copy for the gate and the network, decoded as the model was trained (its card).
        (rgb, own_size), out.timings["working_copy"] = pixels(item.store_key, store, spec)
    except Exception as exc:  # a stored file that no longer decodes is this image's failure only
        out.error = f"The stored image could not be decoded ({type(exc).__name__}: {exc})."
        return Prepared(out)
    out.timings["decode_ms"] = elapsed_ms(start)
    start = time.perf_counter()
    report = assess_quality(rgb, quality_t, original_size=own_size)
    out.timings["quality_ms"] = elapsed_ms(start)
    quality = report.as_dict()
    if not report.passed:
        priority, reasons, advice = reshoot_assessment(report.failures)
        out.status = ImageStatus.NEEDS_RESHOOT
        out.error = " ".join(report.failures)
        out.analysis = dict(outcome=ImageStatus.NEEDS_RESHOOT, priority=priority, reasons=reasons,
                            recommendations=advice, quality=quality)
        return Prepared(out, quality=quality)
    start = time.perf_counter()
    tensor = spec.tensor(rgb)
    out.timings["preprocess_ms"] = elapsed_ms(start)
    out.timings["prepare_cpu_ms"] = round((time.thread_time() - cpu_start) * 1000, 2)
    return Prepared(out, tensor, report.marginal, quality)


def pixels(key: str, store: ImageStore, spec: InputSpec) -> tuple[tuple[np.ndarray, tuple[int, int]], bool]:
    """(`spec.read` of the stored photograph, whether it came from the portal's working copy).

    The copy is what `spec.read` would give (triage.working_copy), so it is taken when the model's
    decoding is the copy's; it is removed once read, or unread when the model is fed other pixels, as
    nothing else needs it. A missing, damaged or foreign copy costs only the decode."""
    copy = store.get_working(key) if spec.reads_working_copy else None
    store.drop_working(key)
    if copy is not None:
        try:
            return working_copy.unpack(copy), True
        except ValueError as exc:
            log.info("working copy of %s not used: %s", key[:12], exc)
    return spec.read(store.get(key)), False


def classify(prepared: list[Prepared], classifier, risk_t: RiskThresholds, explainer=None) -> list[Outcome]:
    """One forward pass for every prepared image that passed the gate; the risk policy on each result."""
    ready = [p for p in prepared if p.tensor is not None]
    if ready:
        batch = classifier.padded(np.stack([p.tensor for p in ready]))
        start = time.perf_counter()
        explain_ms = None
        if explainer is None:
            probs, heatmaps = classifier.predict(batch)[:len(ready)], [None] * len(ready)
            forward_ms = elapsed_ms(start)
        else:  # one pass yields both the prediction and the gradients Grad-CAM needs
            raw, maps = explainer.scores_and_maps(batch, len(ready))
            probs = classifier.calibrate(raw)
            forward_ms = elapsed_ms(start)
            start = time.perf_counter()
            heatmaps = explainer.overlays(batch, maps)
            explain_ms = elapsed_ms(start)
        for p, row, heatmap in zip(ready, probs, heatmaps):
            _assessed(p, row, heatmap, classifier, risk_t)
            p.outcome.timings.update(forward_ms=round(forward_ms / len(ready), 2), batch_size=len(ready),
                                     explained=explainer is not None,
                                     precision=getattr(classifier, "precision", "float32"))
            if explain_ms is not None:
                p.outcome.timings["explain_ms"] = round(explain_ms / len(ready), 2)
    return [p.outcome for p in prepared]


def _assessed(p: Prepared, row: np.ndarray, heatmap: bytes | None, classifier, risk_t: RiskThresholds) -> None:
    probabilities = {label: float(v) for label, v in zip(classifier.labels, row)}
    a = assess(probabilities, risk_t, p.marginal)
    p.outcome.status = ImageStatus.ANALYSED
    p.outcome.analysis = dict(outcome=ImageStatus.ANALYSED, probabilities=probabilities,
                              top_class=a.top_class, confidence=a.confidence,
                              top3=[[s, v] for s, v in a.top3], risk_level=a.risk_level,
                              priority=a.priority, reasons=a.reasons, recommendations=a.recommendations,
                              quality=p.quality, heatmap=heatmap)


@dataclass
class Written:
    ages: list[float]  # for each image written, the seconds since it was uploaded
    notifications: list[int]  # urgent cases to announce, once the transaction is committed


def write_outcomes(db: Database, store: ImageStore, outcomes: list[Outcome], *, node: str, model_version: str,
                   model_trained: bool, thresholds: dict, near_duplicate_distance: int, settings: Settings) -> Written:
    """Write every result of a forward pass in one transaction, with the cases it opens in the review
    queue (audit draw, older analyses superseded, the patient's place in the queue by patient recomputed
    under the patient's lock: triage.reviews `regroup`) and the notifications of urgent ones (`settings`).

    Idempotent: an analysis is inserted only if none exists for (image, model version), and a status
    changes only while this node still holds the image's claim; a case and its notification come only
    with a new analysis. One statement sets every status (with its near-duplicate flag) and one inserts
    every analysis, whatever the batch's size.
    """
    preload_near_duplicates(db, near_duplicate_distance)  # a worker's first batch only
    with db.session() as s:
        duplicates = find_near_duplicates(s, [o.image_id for o in outcomes], near_duplicate_distance)
        uploaded = release_claims(s, outcomes, node, duplicates)
        ages, rows = [], []
        for out in outcomes:
            if out.image_id not in uploaded:
                log.warning("image %s is no longer held by %s; result dropped", out.image_id, node)
                continue
            ages.append((utcnow() - uploaded[out.image_id]).total_seconds())
            if out.analysis is None:
                continue
            values = dict(out.analysis)
            heatmap = values.pop("heatmap", None)
            values["heatmap_key"] = store.put(heatmap)[0] if heatmap else None
            rows.append(dict(image_id=out.image_id, model_version=model_version, model_trained=model_trained,
                             thresholds=thresholds, timings=out.timings, **values))
        inserted = insert_analyses(s, rows)
        opened = open_cases(s, inserted, settings.review_audit_share)
        notifications = announce_urgent(s, opened, settings)
    return Written(ages, notifications)


def release_claims(session, outcomes: list[Outcome], node: str, duplicates: dict[int, int]) -> dict:
    """Each image's final status and error (and near-duplicate flag, where one was found) in one
    UPDATE, on the images this node still holds; returns {image id: uploaded at} for those."""
    by_id = {o.image_id: o for o in outcomes}
    if not by_id:
        return {}
    images = Image.__table__  # Core, as in claims._take: no Image objects here to synchronise
    values = dict(status=case({i: o.status for i, o in by_id.items()}, value=images.c.id),
                  error=case({i: o.error for i, o in by_id.items()}, value=images.c.id),
                  lease_expires_at=None, claimed_by=None)
    if duplicates:  # the others keep the flag they have
        values["near_duplicate_of_id"] = case(duplicates, value=images.c.id, else_=images.c.near_duplicate_of_id)
    return dict(session.connection().execute(update(images).where(
        images.c.id.in_(by_id), images.c.status == ImageStatus.PROCESSING, images.c.claimed_by == node,
    ).values(**values).returning(images.c.id, images.c.created_at)).all())


def insert_analyses(session, rows: list[dict]) -> list[int]:
    """INSERT ... ON CONFLICT DO NOTHING of every row in one statement (SQLAlchemy sends an executemany
    with RETURNING as one multi-row VALUES); returns the ids of the analyses that are new."""
    if not rows:
        return []
    keys = sorted({key for row in rows for key in row})
    # A result without some field (a reshoot has no probabilities) stores SQL NULL there, as before.
    json_nulls = {c.name: bindparam(c.name, type_=JSON(none_as_null=True))
                  for c in Analysis.__table__.columns if c.name in keys and isinstance(c.type, JSON)}
    insert = insert_ignoring_conflicts(session.get_bind(), Analysis.__table__, "image_id", "model_version")
    return list(session.scalars(insert.values(**json_nulls).returning(Analysis.id),
                                [{key: row.get(key) for key in keys} for row in rows]))
