"""The review queue, the case page and decisions (reviewers and admins)."""
from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from triage.catalogue import class_name, classes_of
from triage.reviews import (PRIORITY_RANK, Cursor, DecisionError, QueueFilter, case_for, classes_in_queue, decide,
                            neighbour, queue_page, settled_by)
from triage.results import decision_history, lesion_photos, lesion_view, patient_view
from triage.schema import Analysis, Batch, CaseState, Decision, Image, Review, ReviewCase, Role, SiteMembership, User
from triage.sites import analysis_in, in_sites, visible_batch_ids

from .auth import audit, my_sites, requires
from .presenters import case_view
from .services import services

bp = Blueprint("review", __name__)
# Keys of the case page; review.js reads them from the buttons' data-key, this is the one list.
DECISION_KEYS = {Decision.CONFIRM: "c", Decision.CHANGE: "d", Decision.RESHOOT: "r",
                 Decision.BIOPSY: "b", Decision.SPECIALIST: "s"}
DECISION_LABELS = {Decision.CONFIRM: "Confirm", Decision.CHANGE: "Change diagnosis",
                   Decision.RESHOOT: "Request reshoot", Decision.BIOPSY: "Refer for biopsy",
                   Decision.SPECIALIST: "Refer to specialist"}


@bp.before_request
@requires(Role.REVIEWER)
def _reviewers_only():
    pass


def _scoped(s, flt: QueueFilter) -> QueueFilter:
    """The filter narrowed to the sites where the current user reviews: the queue's one scoping."""
    return replace(flt, sites=my_sites(s, Role.REVIEWER))


def _filter_choices(s, flt: QueueFilter) -> dict:
    sites = flt.sites
    reviewers = select(User.id, User.username).where(User.role.in_([Role.REVIEWER, Role.ADMIN]))
    if sites is not None:  # the reviewers of the reader's sites, not everyone's
        reviewers = select(User.id, User.username).join(SiteMembership, SiteMembership.user_id == User.id).where(
            in_sites(SiteMembership.site_id, sites), SiteMembership.role.in_([Role.REVIEWER, Role.ADMIN])).distinct()
    reviewers = s.execute(reviewers.order_by(User.username)).all()
    batches = s.execute(select(Batch.id, Batch.name).where(in_sites(Batch.site_id, sites))
                        .order_by(Batch.id.desc()).limit(100)).all()
    # The classes the models in use predicted, whatever their label sets (and the one filtered on, so
    # that it stays selected); for a reader of some sites, those of their sites' cases only.
    found = classes_in_queue(s) if sites is None else list(s.scalars(
        select(ReviewCase.top_class).where(ReviewCase.batch_id.in_(visible_batch_ids(sites)),
                                           ReviewCase.top_class.is_not(None)).distinct()))
    occurring = found + ([flt.top_class] if flt.top_class else [])
    return {"reviewers": reviewers, "batches": batches, "classes": classes_of(occurring),
            "priorities": list(PRIORITY_RANK), "states": CaseState.ALL}


@bp.get("/review")
def queue():
    flt = QueueFilter.from_args(request.args)
    after, before = Cursor.decode(request.args.get("after")), Cursor.decode(request.args.get("before"))
    svc = services()
    with svc.db.session() as s:
        flt = _scoped(s, flt)
        page = queue_page(s, flt, after=after, before=before)
        choices = _filter_choices(s, flt)
        # The named patients on this page, each with their lesions assessed: at most a page's worth.
        patients = patient_view(s, [r["patient_key"] for r in page.rows if r["patient_key"]])
    return render_template("queue.html", page=page, flt=flt, args=flt.as_args(), done=bool(request.args.get("done")),
                           patients=patients, **choices)


@bp.get("/api/queue")
def api_queue():
    flt = QueueFilter.from_args(request.args)
    svc = services()
    with svc.db.session() as s:
        flt = _scoped(s, flt)
        page = queue_page(s, flt, after=Cursor.decode(request.args.get("after")),
                          before=Cursor.decode(request.args.get("before")))
    rows = [{**r, "received_at": r["received_at"].isoformat() + "Z",
             "decided_at": r["decided_at"].isoformat() + "Z" if r["decided_at"] else None,
             "case_url": url_for("review.case", analysis_id=r["analysis_id"])} for r in page.rows]
    return jsonify(cases=rows, next=page.next_cursor, previous=page.prev_cursor, filter=flt.as_args())


@bp.get("/review/<id:analysis_id>")
def case(analysis_id: int):
    flt = QueueFilter.from_args(request.args)
    svc = services()
    with svc.db.session() as s:
        flt = _scoped(s, flt)
        found = case_for(s, analysis_id) if analysis_in(s, analysis_id, flt.sites) else None
        if found is None:
            abort(404, "No analysed image with this number awaits review.")
        analysis = s.get(Analysis, analysis_id)
        image = s.get(Image, analysis.image_id)
        batch = s.get(Batch, image.batch_id)
        later, earlier = neighbour(s, flt, found, True), neighbour(s, flt, found, False)
        view = case_view(analysis, image, batch, found, decision_history(s, [analysis_id]).get(analysis_id, []))
        lesion, patient = _lesion_of(s, found)
    return render_template("case.html", case=view, args=flt.as_args(), lesion=lesion, patient=patient,
                           next_id=later.analysis_id if later else None,
                           prev_id=earlier.analysis_id if earlier else None,
                           decisions=[(d, DECISION_LABELS[d], DECISION_KEYS[d]) for d in Decision.ALL])


def _lesion_of(s, found: ReviewCase) -> tuple[dict | None, dict | None]:
    """The case's lesion assessed with its photographs (this visit's and earlier ones), the lesion's
    other cases a decision here would settle, and the patient's priority; (None, None) for a photograph
    without a lesion, which is its own lesion. A lesion and its patient belong to the case's site."""
    if not found.lesion_key:
        return None, None
    lesion = lesion_view(lesion_photos(s, [found.lesion_key]).get(found.lesion_key, []))
    lesion["settles"] = list(s.scalars(select(ReviewCase.analysis_id).where(
        ReviewCase.patient_key == found.patient_key, ReviewCase.lesion_key == found.lesion_key,
        ReviewCase.state == CaseState.PENDING, ReviewCase.id != found.id).order_by(ReviewCase.id)))
    patient = patient_view(s, [found.patient_key]).get(found.patient_key)
    return lesion, patient


def _text(values, key: str) -> str | None:
    value = values.get(key)
    return value if isinstance(value, str) else None  # JSON may send anything


def _record(analysis_id: int, values) -> tuple[Review, int, int | None]:
    """Record a decision and find the case after it; returns (the review, its image's id, the next
    analysis id or None)."""
    flt = QueueFilter.from_args(request.args)
    svc = services()
    with svc.db.session() as s:
        flt = _scoped(s, flt)
        if analysis_in(s, analysis_id, flt.sites) is None:  # another site's is answered as if absent
            abort(404)
        review = decide(s, svc.settings, analysis_id, current_user.id, _text(values, "decision") or "",
                        _text(values, "diagnosis") or None, _text(values, "note"))
        site = s.scalar(select(Batch.site_id).join(Image, Image.batch_id == Batch.id)
                        .join(Analysis, Analysis.image_id == Image.id).where(Analysis.id == analysis_id))
        # One decision per lesion: the cases it settled are named in its audit event (ids only, never
        # the clinic's pseudonyms), and each has a review of its own pointing at this one.
        settled = settled_by(s, review.id)
        audit(s, "review.decide", ("analysis", analysis_id), site=site, review_id=review.id,
              decision=review.decision, diagnosis=review.diagnosis,
              **({"settled": [{"analysis_id": a, "review_id": r} for a, r in settled]} if settled else {}))
        case = case_for(s, analysis_id)
        later = neighbour(s, flt, case, True)
        return review, case.image_id, later.analysis_id if later else None


def _saved(review: Review, image_id: int) -> str:
    """What the clinician reads on the page the decision leads to: that it was kept, and as what."""
    named = class_name(review.diagnosis)
    done = {Decision.CONFIRM: f"confirmed as {named}", Decision.CHANGE: f"diagnosis changed to {named}",
            Decision.RESHOOT: "reshoot requested", Decision.BIOPSY: "referred for biopsy",
            Decision.SPECIALIST: "referred to a specialist"}[review.decision]
    if review.decision in (Decision.BIOPSY, Decision.SPECIALIST) and named:
        done += f", suspected {named}"
    return f"Saved: #{image_id} {done}."


@bp.post("/review/<id:analysis_id>/decision")
def decision(analysis_id: int):
    try:
        review, image_id, next_id = _record(analysis_id, request.form)
    except DecisionError as exc:
        abort(400, str(exc))
    flash(_saved(review, image_id))
    args = QueueFilter.from_args(request.args).as_args()
    if next_id is None:
        return redirect(url_for("review.queue", done=1, **args))
    return redirect(url_for("review.case", analysis_id=next_id, **args))


@bp.post("/api/analyses/<id:analysis_id>/reviews")
def api_decision(analysis_id: int):
    try:
        review, _, next_id = _record(analysis_id, request.get_json(silent=True) or {})
    except DecisionError as exc:
        return jsonify(error=str(exc)), 400
    return jsonify(review_id=review.id, next_analysis_id=next_id), 201
