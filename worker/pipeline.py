"""One batch through the analysis: decode, quality gate, one forward pass, risk policy, one write."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from model.preprocess import preprocess_rgb
from model.quality import QualityThresholds, assess_quality
from triage.db import Database
from triage.imaging import decode_rgb
from triage.phash import nearest
from triage.risk import RiskThresholds, assess, reshoot_assessment
from triage.schema import Analysis, Image, ImageStatus, utcnow
from triage.store import ImageStore

from .claims import Claimed

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    image_id: int
    status: str
    error: str | None = None
    analysis: dict | None = None
    timings: dict = field(default_factory=dict)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def analyse_batch(claimed: list[Claimed], classifier, store: ImageStore, quality_t: QualityThresholds,
                  risk_t: RiskThresholds, explainer=None) -> list[Outcome]:
    outcomes: list[Outcome] = []
    ready: list[tuple[Outcome, np.ndarray, list[str], dict]] = []
    for item in claimed:
        out = Outcome(item.id, ImageStatus.FAILED)
        outcomes.append(out)
        start = time.perf_counter()
        try:
            rgb = decode_rgb(store.get(item.store_key))
        except Exception as exc:  # a stored file that no longer decodes is this image's failure only
            out.error = f"The stored image could not be decoded ({type(exc).__name__}: {exc})."
            continue
        out.timings["decode_ms"] = _ms(start)
        start = time.perf_counter()
        report = assess_quality(rgb, quality_t)
        out.timings["quality_ms"] = _ms(start)
        quality = report.as_dict()
        if not report.passed:
            priority, reasons, advice = reshoot_assessment(report.failures)
            out.status = ImageStatus.NEEDS_RESHOOT
            out.error = " ".join(report.failures)
            out.analysis = dict(outcome=ImageStatus.NEEDS_RESHOOT, priority=priority, reasons=reasons,
                                recommendations=advice, quality=quality)
            continue
        start = time.perf_counter()
        tensor = preprocess_rgb(rgb, classifier.input_size)
        out.timings["preprocess_ms"] = _ms(start)
        ready.append((out, tensor, report.marginal, quality))

    if ready:
        batch = classifier.padded(np.stack([tensor for _, tensor, _, _ in ready]))
        start = time.perf_counter()
        if explainer is None:
            probs, heatmaps = classifier.predict(batch)[:len(ready)], [None] * len(ready)
        else:  # one pass yields both the prediction and the gradients Grad-CAM needs
            raw, heatmaps = explainer.explain(batch, len(ready))
            probs = classifier.calibrate(raw)
        forward_ms = _ms(start)
        for (out, _, marginal, quality), row, heatmap in zip(ready, probs, heatmaps):
            probabilities = {label: float(p) for label, p in zip(classifier.labels, row)}
            a = assess(probabilities, risk_t, marginal)
            out.status = ImageStatus.ANALYSED
            out.timings.update(forward_ms=round(forward_ms / len(ready), 2), batch_size=len(ready),
                               explained=explainer is not None)
            out.analysis = dict(outcome=ImageStatus.ANALYSED, probabilities=probabilities,
                                top_class=a.top_class, confidence=a.confidence,
                                top3=[[s, p] for s, p in a.top3], risk_level=a.risk_level,
                                priority=a.priority, reasons=a.reasons, recommendations=a.recommendations,
                                quality=quality, heatmap=heatmap)
    return outcomes


def write_outcomes(db: Database, store: ImageStore, outcomes: list[Outcome], *, node: str, model_version: str,
                   model_trained: bool, thresholds: dict, near_duplicate_distance: int) -> list[float]:
    """Write every result of a forward pass in one transaction.

    Idempotent: an analysis is inserted only if none exists for (image, model version), and a status
    changes only while this node still holds the image's claim. Returns, for each image written, the
    seconds since it was uploaded.
    """
    insert = postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert
    ages: list[float] = []
    with db.session() as s:
        for out in outcomes:
            uploaded = s.execute(update(Image).where(
                Image.id == out.image_id, Image.status == ImageStatus.PROCESSING, Image.claimed_by == node,
            ).values(status=out.status, error=out.error, lease_expires_at=None, claimed_by=None)
                .returning(Image.created_at)).scalar()
            if uploaded is None:
                log.warning("image %s is no longer held by %s; result dropped", out.image_id, node)
                continue
            ages.append((utcnow() - uploaded).total_seconds())
            if out.analysis is None:
                continue
            values = dict(out.analysis)
            heatmap = values.pop("heatmap", None)
            values["heatmap_key"] = store.put(heatmap)[0] if heatmap else None
            s.execute(insert(Analysis).values(
                image_id=out.image_id, model_version=model_version, model_trained=model_trained,
                thresholds=thresholds, timings=out.timings, **values,
            ).on_conflict_do_nothing(index_elements=["image_id", "model_version"]))
        flag_near_duplicates(s, [o.image_id for o in outcomes], near_duplicate_distance)
    return ages


def flag_near_duplicates(session, image_ids: list[int], max_distance: int) -> None:
    """Point each image at the earliest-closest other image whose perceptual hash is within reach.

    A linear scan of the hashes: cheap next to a forward pass up to a few hundred thousand images.
    """
    known = session.execute(select(Image.id, Image.phash).where(Image.phash.is_not(None))).all()
    wanted = set(image_ids)
    mine = {i: h for i, h in known if i in wanted}
    for image_id, phash in mine.items():
        match = nearest(phash, [(i, h) for i, h in known if i != image_id], max_distance)
        if match is not None:
            session.execute(update(Image).where(Image.id == image_id).values(near_duplicate_of_id=match))
