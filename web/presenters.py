"""Batch and image data as plain dicts: one shape for the page, the JSON API and exports."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from triage.catalogue import BY_SLUG, DISCLAIMER, UNTRAINED_WARNING
from triage.schema import Batch, Image, ImageStatus


def image_dict(image: Image) -> dict:
    analysis = image.analyses[-1] if image.analyses else None
    out = {
        "id": image.id,
        "name": image.display_name,
        "status": image.status,
        "error": image.error,
        "attempts": image.attempts,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "sha256": image.sha256,
        "size_bytes": image.size_bytes,
        "file_url": f"/images/{image.id}/file",
        "phash": image.phash,
        "near_duplicate_of": image.near_duplicate_of_id,
        "analysis": None,
    }
    if analysis is not None:
        out["analysis"] = {
            "model_version": analysis.model_version,
            "model_trained": analysis.model_trained,
            "outcome": analysis.outcome,
            "probabilities": analysis.probabilities,
            "top_class": analysis.top_class,
            "top_class_name": BY_SLUG[analysis.top_class].display_name if analysis.top_class else None,
            "confidence": analysis.confidence,
            "top3": analysis.top3,
            "risk_level": analysis.risk_level,
            "priority": analysis.priority,
            "reasons": analysis.reasons,
            "recommendations": analysis.recommendations,
            "quality": analysis.quality,
            "thresholds": analysis.thresholds,
            "timings": analysis.timings,
            "heatmap_url": f"/images/{image.id}/heatmap" if analysis.heatmap_key else None,
            "created_at": analysis.created_at.isoformat() + "Z",
        }
        if not analysis.model_trained:
            out["analysis"]["warning"] = UNTRAINED_WARNING
    return out


def batch_dict(session, batch_id: int) -> dict | None:
    batch = session.get(Batch, batch_id)
    if batch is None:
        return None
    images = session.scalars(select(Image).where(Image.batch_id == batch_id).order_by(Image.id)
                             .options(selectinload(Image.analyses))).all()
    counts = {status: 0 for status in ImageStatus.ALL}
    for image in images:
        counts[image.status] += 1
    rows = [image_dict(i) for i in images]
    untrained = any(r["analysis"] and not r["analysis"]["model_trained"] for r in rows)
    done = sum(counts[s] for s in ImageStatus.FINAL)
    return {
        "id": batch.id,
        "name": batch.name,
        "created_at": batch.created_at.isoformat() + "Z",
        "counts": counts,
        "total": len(images),
        "done": done,
        "finished": done == len(images),
        "disclaimer": DISCLAIMER,
        "warning": UNTRAINED_WARNING if untrained else None,
        "url": f"/batches/{batch.id}",
        "images": rows,
    }


def recent_batches(session, limit: int = 20) -> list[dict]:
    rows = session.execute(
        select(Batch.id, Batch.name, Batch.created_at, func.count(Image.id))
        .outerjoin(Image, Image.batch_id == Batch.id).group_by(Batch.id)
        .order_by(Batch.id.desc()).limit(limit)).all()
    return [{"id": r[0], "name": r[1], "created_at": r[2], "images": r[3]} for r in rows]
