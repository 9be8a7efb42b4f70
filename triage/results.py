"""One shape for a result: the batch page, the JSON API and the three exports read a batch here.

An image's result is its latest analysis (an image analysed again, by another model version, shows the
newest) and the latest clinician's decision on that analysis, each with its time. Whether an untrained
model produced any result shown is worked out once, here, from those same latest analyses. A field
added to these views appears on the page, in the API and in the exports alike.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from .catalogue import DISCLAIMER, UNTRAINED_WARNING, class_name, classes_of, named_probabilities
from .names import display_name
from .rejections import refusals_in
from .reviews import decisions_on
from .schema import Analysis, Batch, Image, ImageStatus, RejectedFile, Review


def iso(moment: datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 with its zone, to the second: one format everywhere."""
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


def analysis_view(analysis: Analysis) -> dict:
    """The model's output for one image, with everything needed to explain it later."""
    return {
        "id": analysis.id,
        "model_version": analysis.model_version,
        "model_trained": analysis.model_trained,
        "warning": None if analysis.model_trained else UNTRAINED_WARNING,
        "outcome": analysis.outcome,
        "probabilities": analysis.probabilities,
        "classes": named_probabilities(analysis.probabilities),  # the model's own classes, named
        "top_class": analysis.top_class,
        "top_class_name": class_name(analysis.top_class),
        "confidence": analysis.confidence,
        "top3": analysis.top3,
        "risk_level": analysis.risk_level,
        "priority": analysis.priority,
        "reasons": analysis.reasons,
        "recommendations": analysis.recommendations,
        "quality": analysis.quality,
        "thresholds": analysis.thresholds,
        "timings": analysis.timings,
        "heatmap_url": f"/images/{analysis.image_id}/heatmap" if analysis.heatmap_key else None,
        "case_url": f"/review/{analysis.id}" if analysis.outcome == ImageStatus.ANALYSED else None,
        "analysed_at": iso(analysis.created_at),
    }


def review_view(review: Review, reviewer: str) -> dict:
    """A clinician's decision, kept beside the model's output (which it never changes)."""
    return {"id": review.id, "decision": review.decision, "diagnosis": review.diagnosis,
            "diagnosis_name": class_name(review.diagnosis), "note": review.note, "reviewer": reviewer,
            "decided_at": iso(review.created_at)}


def image_view(image: Image, analysis: Analysis | None, latest_review: dict | None) -> dict:
    return {
        "id": image.id,
        "name": display_name(image.display_name),
        "status": image.status,
        "error": image.error,
        "attempts": image.attempts,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "stored_format": image.stored_format,
        "sha256": image.sha256,
        "size_bytes": image.size_bytes,
        "received_at": iso(image.created_at),
        "file_url": f"/images/{image.id}/file",
        "phash": image.phash,
        "near_duplicate_of": image.near_duplicate_of_id,
        "analysis": analysis_view(analysis) if analysis is not None else None,
        "review": latest_review,  # the latest decision; earlier ones stay in the history
    }


def refusal_view(refused: RejectedFile, uploader: str | None) -> dict:
    """A file an upload did not take into the batch: what it was, why, when and whose (never its bytes)."""
    return {"name": display_name(refused.name), "kind": refused.kind, "reason": refused.reason,
            "size_bytes": refused.size_bytes, "sha256": refused.sha256, "uploader": uploader,
            "at": iso(refused.created_at)}


def decision_history(session, analysis_ids: list[int]) -> dict[int, list[dict]]:
    """Every decision on these analyses, oldest first, by analysis."""
    found: dict[int, list[dict]] = {}
    for review, username in decisions_on(session, analysis_ids):
        found.setdefault(review.analysis_id, []).append(review_view(review, username))
    return found


def _latest_analysis_ids(batch_id: int):
    return (select(func.max(Analysis.id)).join(Image, Image.id == Analysis.image_id)
            .where(Image.batch_id == batch_id).group_by(Analysis.image_id))


def untrained_in_batch(session, batch_id: int) -> bool:
    """Whether an untrained model produced any of the batch's results (the latest analysis of an image)."""
    latest = aliased(Analysis)
    return session.scalar(select(latest.id).where(latest.id.in_(_latest_analysis_ids(batch_id)),
                                                  latest.model_trained.is_(False)).limit(1)) is not None


def batch_results(session, batch_id: int) -> dict | None:
    """The batch, every image with its result, the classes those results have, the files its uploads
    refused, the disclaimer, and the untrained-model warning when it applies."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    images = session.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.id)).all()
    latest = {a.image_id: a for a in session.scalars(
        select(Analysis).where(Analysis.id.in_(_latest_analysis_ids(batch_id))))}
    history = decision_history(session, [a.id for a in latest.values()])
    views = []
    for image in images:
        analysis = latest.get(image.id)
        decisions = history.get(analysis.id, []) if analysis else []
        views.append(image_view(image, analysis, decisions[-1] if decisions else None))
    untrained = untrained_in_batch(session, batch_id)
    # The classes the batch's results have, in catalogue order: one model's labels, or the union of
    # several when models changed while the batch was analysed.
    classes = classes_of(slug for a in latest.values() for slug in a.probabilities or {})
    return {
        "batch": {"id": batch.id, "name": batch.name, "created_at": iso(batch.created_at)},
        "disclaimer": DISCLAIMER,
        "model_untrained": untrained,
        "warning": UNTRAINED_WARNING if untrained else None,
        "classes": [{"slug": c.slug, "name": c.display_name, "severity": c.severity} for c in classes],
        "images": views,
        "rejected_files": [refusal_view(f, uploader) for f, uploader in refusals_in(session, batch_id)],
    }
