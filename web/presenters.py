"""What the pages show: a batch's progress around its results (`triage.results`, the one shape the
JSON API and the exports share), the recent batches and the case page."""
from __future__ import annotations

from sqlalchemy import func, select

from triage.catalogue import CLASSES, DISCLAIMER, UNTRAINED_WARNING, class_name, classes_of, named_probabilities
from triage.names import display_name
from triage.results import batch_results, clinical_view, iso, untrained_in_batch
from triage.schema import Batch, CaseState, Image, ImageStatus, RejectedFile, ReviewCase, User
from triage.sites import in_sites


def batch_dict(session, batch_id: int, with_images: bool = True) -> dict | None:
    """A batch with its counts and progress, and its results; `with_images=False` leaves out the
    per-image rows and the refused files (the batch page's poller asks for that every few seconds)."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    counts = {status: 0 for status in ImageStatus.ALL}
    counts.update(session.execute(select(Image.status, func.count()).where(Image.batch_id == batch_id)
                                  .group_by(Image.status)).all())
    total = sum(counts.values())
    done = sum(counts[s] for s in ImageStatus.FINAL)
    reviewed = session.scalar(select(func.count()).select_from(ReviewCase)
                              .where(ReviewCase.batch_id == batch_id, ReviewCase.state == CaseState.DECIDED))
    out = {
        "id": batch.id,
        "name": batch.name,
        "created_at": iso(batch.created_at),
        "counts": counts,
        "total": total,
        "done": done,
        "finished": done == total,
        # The funnel each image goes through: stored, handed to the queue, analysed (or stopped by the
        # quality gate, or failed), and decided by a clinician.
        "progress": {"received": total, "queued": total - counts[ImageStatus.RECEIVED], "analysed": done,
                     "reviewed": reviewed},
        "disclaimer": DISCLAIMER,
        "warning": UNTRAINED_WARNING if untrained_in_batch(session, batch_id) else None,
        "url": f"/batches/{batch.id}",
    }
    if with_images:
        results = batch_results(session, batch_id)
        out.update(classes=results["classes"], images=results["images"], rejected_files=results["rejected_files"])
    return out


def recent_batches(session, limit: int = 20, sites=None) -> list[dict]:
    """The newest batches of `sites` (triage.sites; None: every site) with their image counts and how
    many files their uploads refused: a batch whose every file was rejected shows why it is empty."""
    refused = select(func.count()).where(RejectedFile.batch_id == Batch.id).scalar_subquery()
    rows = session.execute(
        select(Batch.id, Batch.name, Batch.created_at, func.count(Image.id), User.username, refused)
        .outerjoin(Image, Image.batch_id == Batch.id).outerjoin(User, User.id == Batch.created_by_id)
        .where(in_sites(Batch.site_id, sites))
        .group_by(Batch.id, User.username).order_by(Batch.id.desc()).limit(limit)).all()
    return [{"id": r[0], "name": r[1], "created_at": r[2], "images": r[3], "uploader": r[4], "not_taken": r[5]}
            for r in rows]


def case_view(analysis, image, batch, case, history: list[dict]) -> dict:
    """What the case page shows: the image and the model's output, every number with its context.
    The bars and the classes offered first are the analysis's own (its model's card), whatever they are."""
    top3 = {slug for slug, _ in analysis.top3 or []}
    bars = [{"slug": c["slug"], "name": c["name"], "p": c["probability"], "width": round(100 * c["probability"], 2),
             "top3": c["slug"] in top3, "top": c["slug"] == analysis.top_class}
            for c in named_probabilities(analysis.probabilities)]
    model_classes = classes_of(analysis.probabilities or {})
    return {
        "analysis_id": analysis.id, "image_id": image.id, "image_name": display_name(image.display_name),
        "width": image.width, "height": image.height,
        "batch_id": batch.id, "batch_name": batch.name, "received_at": image.created_at,
        "file_url": f"/images/{image.id}/file",
        "heatmap_url": f"/images/{image.id}/heatmap" if analysis.heatmap_key else None,
        "near_duplicate_of": image.near_duplicate_of_id,
        **clinical_view(image),
        "model_version": analysis.model_version, "model_trained": analysis.model_trained,
        "top_class": analysis.top_class,
        "top_class_name": class_name(analysis.top_class),
        "confidence": analysis.confidence,
        "top3": [(class_name(s) or s, p) for s, p in analysis.top3 or []],
        "bars": bars,
        # A clinician may name any catalogue class; the model's own come first, with the number keys.
        "model_classes": model_classes,
        "other_classes": tuple(c for c in CLASSES if c not in model_classes),
        "risk_level": analysis.risk_level, "priority": analysis.priority,
        "reasons": analysis.reasons, "recommendations": analysis.recommendations,
        "quality_checks": (analysis.quality or {}).get("checks", []),
        "quality_passed": (analysis.quality or {}).get("passed"),
        "thresholds": analysis.thresholds or {},
        "state": case.state, "audit_sample": case.audit_sample, "history": history,
        "warning": None if analysis.model_trained else UNTRAINED_WARNING,
    }
