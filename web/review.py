"""The review queue, the case page and decisions (reviewers and admins)."""
from __future__ import annotations

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from triage.catalogue import class_name, classes_of
from triage.reviews import (PRIORITY_RANK, Cursor, DecisionError, QueueFilter, case_for, classes_in_queue, decide,
                            neighbour, queue_page)
from triage.results import decision_history
from triage.schema import Analysis, Batch, CaseState, Decision, Image, Review, Role, User

from .auth import audit, requires
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


def _filter_choices(s, flt: QueueFilter) -> dict:
    reviewers = s.execute(select(User.id, User.username).where(User.role.in_([Role.REVIEWER, Role.ADMIN]))
                          .order_by(User.username)).all()
    batches = s.execute(select(Batch.id, Batch.name).order_by(Batch.id.desc()).limit(100)).all()
    # The classes the models in use predicted, whatever their label sets (and the one filtered on, so
    # that it stays selected).
    occurring = classes_in_queue(s) + ([flt.top_class] if flt.top_class else [])
    return {"reviewers": reviewers, "batches": batches, "classes": classes_of(occurring),
            "priorities": list(PRIORITY_RANK), "states": CaseState.ALL}


@bp.get("/review")
def queue():
    flt = QueueFilter.from_args(request.args)
    after, before = Cursor.decode(request.args.get("after")), Cursor.decode(request.args.get("before"))
    svc = services()
    with svc.db.session() as s:
        page = queue_page(s, flt, after=after, before=before)
        choices = _filter_choices(s, flt)
    return render_template("queue.html", page=page, flt=flt, args=flt.as_args(), done=bool(request.args.get("done")),
                           **choices)


@bp.get("/api/queue")
def api_queue():
    flt = QueueFilter.from_args(request.args)
    svc = services()
    with svc.db.session() as s:
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
        found = case_for(s, analysis_id)
        if found is None:
            abort(404, "No analysed image with this number awaits review.")
        analysis = s.get(Analysis, analysis_id)
        image = s.get(Image, analysis.image_id)
        batch = s.get(Batch, image.batch_id)
        later, earlier = neighbour(s, flt, found, True), neighbour(s, flt, found, False)
        view = case_view(analysis, image, batch, found, decision_history(s, [analysis_id]).get(analysis_id, []))
    return render_template("case.html", case=view, args=flt.as_args(),
                           next_id=later.analysis_id if later else None,
                           prev_id=earlier.analysis_id if earlier else None,
                           decisions=[(d, DECISION_LABELS[d], DECISION_KEYS[d]) for d in Decision.ALL])


def _text(values, key: str) -> str | None:
    value = values.get(key)
    return value if isinstance(value, str) else None  # JSON may send anything


def _record(analysis_id: int, values) -> tuple[Review, int, int | None]:
    """Record a decision and find the case after it; returns (the review, its image's id, the next
    analysis id or None)."""
    flt = QueueFilter.from_args(request.args)
    svc = services()
    with svc.db.session() as s:
        review = decide(s, svc.settings, analysis_id, current_user.id, _text(values, "decision") or "",
                        _text(values, "diagnosis") or None, _text(values, "note"))
        audit(s, "review.decide", ("analysis", analysis_id), review_id=review.id, decision=review.decision,
              diagnosis=review.diagnosis)
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
