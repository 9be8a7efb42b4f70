"""One shape for a result: the batch page, the JSON API and the three exports read a batch here.

An image's result is its latest analysis (an image analysed again, by another model version, shows the
newest) and the latest clinician's decision on that analysis, each with its time. Whether an untrained
model produced any result shown is worked out once, here, from those same latest analyses. A field
added to these views appears on the page, in the API and in the exports alike.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import aliased, selectinload

from .body_sites import body_site_name
from .catalogue import DISCLAIMER, UNTRAINED_WARNING, class_name, classes_of, named_probabilities
from .lesions import Photo, assess_lesion, patient_priority
from .risk import RiskThresholds
from .names import display_name
from .rejections import refusals_in
from .reviews import decisions_on
from .schema import Analysis, Batch, Image, ImageStatus, Lesion, RejectedFile, Review, Site


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
            "decided_at": iso(review.created_at),
            # One decision per lesion: the review this one follows, when it was made on another photograph.
            "settled_by": review.settled_by_id}


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
        "thumb_url": f"/images/{image.id}/thumb",
        "phash": image.phash,
        "near_duplicate_of": image.near_duplicate_of_id,
        **clinical_view(image),
        "analysis": analysis_view(analysis) if analysis is not None else None,
        "review": latest_review,  # the latest decision; earlier ones stay in the history
    }


def clinical_view(image: Image) -> dict:
    """What the clinic said about the photograph at upload: the pseudonymous patient and lesion, where
    the lesion is, and the patient's age, sex and skin type at that visit, with a note. All None for a
    photograph uploaded without them (its own lesion of an unnamed patient)."""
    lesion = image.lesion
    return {"patient": lesion.patient.external_id if lesion else None,
            "lesion": lesion.external_id if lesion else None,
            "body_site": lesion.body_site if lesion else None,
            "body_site_name": body_site_name(lesion.body_site) if lesion else None,
            "age": image.age, "sex": image.sex, "fitzpatrick": image.fitzpatrick, "clinical_note": image.clinical_note}


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
    images = session.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.id)
                             .options(selectinload(Image.lesion).selectinload(Lesion.patient))).all()
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
        "batch": {"id": batch.id, "name": batch.name, "created_at": iso(batch.created_at),
                  "site": {"id": batch.site_id, "name": session.get(Site, batch.site_id).name}},
        "disclaimer": DISCLAIMER,
        "model_untrained": untrained,
        "warning": UNTRAINED_WARNING if untrained else None,
        "classes": [{"slug": c.slug, "name": c.display_name, "severity": c.severity} for c in classes],
        "images": views,
        "rejected_files": [refusal_view(f, uploader) for f, uploader in refusals_in(session, batch_id)],
    }


# --- a lesion: its photographs and their combined assessment (triage/lesions.py) --------

DEFAULT_THRESHOLD = RiskThresholds.malignant_threshold


def lesion_photos(session, lesion_ids) -> dict[int, list[dict]]:
    """Every photograph of these lesions (any batch, any status) with its latest analysis, by lesion,
    oldest first: `photo` is what the combination rule reads, the rest what a page shows. Read through
    the index on images.lesion_id and one primary-key lookup of the latest analysis per photograph."""
    lesion_ids = sorted(set(lesion_ids))
    if not lesion_ids:
        return {}
    latest = (select(func.max(Analysis.id)).where(Analysis.image_id == Image.id)
              .correlate(Image).scalar_subquery())
    found = session.execute(select(Image, Batch.name, Analysis).join(Batch, Batch.id == Image.batch_id)
                            .outerjoin(Analysis, Analysis.id == latest)
                            .where(Image.lesion_id.in_(lesion_ids)).order_by(Image.created_at, Image.id)).all()
    photos: dict[int, list[dict]] = {}
    for image, batch_name, analysis in found:
        photos.setdefault(image.lesion_id, []).append(_photo_view(image, batch_name, analysis))
    return photos


def _photo_view(image: Image, batch_name: str, analysis: Analysis | None) -> dict:
    analysed = analysis is not None and analysis.outcome == ImageStatus.ANALYSED
    photo = Photo(image_id=image.id, batch_id=image.batch_id, received_at=image.created_at, status=image.status,
                  priority=analysis.priority if analysed else None,
                  probabilities=analysis.probabilities if analysed else None,
                  top_class=analysis.top_class if analysed else None,
                  # The policy stored with the analysis: the rule asks what *that* policy acted on.
                  malignant_threshold=(analysis.thresholds or {}).get("malignant_threshold", DEFAULT_THRESHOLD)
                  if analysed else DEFAULT_THRESHOLD,
                  quality=(analysis.quality or {}) if analysis is not None else {})
    return {"photo": photo, "image_id": image.id, "name": display_name(image.display_name),
            "batch_id": image.batch_id, "batch_name": batch_name, "received_at": image.created_at,
            "status": image.status, "file_url": f"/images/{image.id}/file",
            "thumb_url": f"/images/{image.id}/thumb",
            "priority": analysis.priority if analysis is not None else None,
            "top_class_name": class_name(analysis.top_class) if analysed else None,
            "confidence": analysis.confidence if analysed else None,
            "analysis_id": analysis.id if analysed else None}


def lesion_view(photos: list[dict]) -> dict:
    """A lesion's combined assessment with its photographs in the order the rule shows them: this
    visit's (the driving photograph first, then the best-quality one), then earlier batches' by date."""
    assessment = assess_lesion([p["photo"] for p in photos])
    by_id = {p["image_id"]: p for p in photos}
    marks = {assessment.driver_id: "drove the assessment", assessment.best_quality_id: "best quality"}
    if assessment.driver_id == assessment.best_quality_id and assessment.driver_id is not None:
        marks[assessment.driver_id] = "drove the assessment; best quality"
    return {"state": assessment.state, "priority": assessment.priority, "top_class": assessment.top_class,
            "top_class_name": class_name(assessment.top_class), "driver_id": assessment.driver_id,
            "best_quality_id": assessment.best_quality_id,
            "visit": [{**by_id[i], "mark": marks.get(i)} for i in assessment.shown_first],
            "earlier": [by_id[i] for i in assessment.earlier_ids], "assessment": assessment}


def patient_lesions(session, patient_ids) -> dict[int, list[Lesion]]:
    """Every lesion of these patients, by patient, in the order they were recorded."""
    patient_ids = sorted(set(patient_ids))
    found: dict[int, list[Lesion]] = {}
    if patient_ids:
        for lesion in session.scalars(select(Lesion).where(Lesion.patient_id.in_(patient_ids)).order_by(Lesion.id)):
            found.setdefault(lesion.patient_id, []).append(lesion)
    return found


def patient_view(session, patient_ids) -> dict[int, dict]:
    """Each patient's lesions assessed, and the patient's priority: the most urgent of them."""
    lesions = patient_lesions(session, patient_ids)
    photos = lesion_photos(session, [lesion.id for found in lesions.values() for lesion in found])
    views = {}
    for patient_id, found in lesions.items():
        assessed = {lesion.id: lesion_view(photos.get(lesion.id, [])) for lesion in found}
        views[patient_id] = {
            "priority": patient_priority([v["assessment"] for v in assessed.values()]),
            "lesions": [{"id": lesion.id, "external_id": lesion.external_id, "body_site": lesion.body_site,
                         "body_site_name": body_site_name(lesion.body_site), **assessed[lesion.id]}
                        for lesion in found]}
    return views
