"""The review queue and clinicians' decisions.

Analyses are written by the worker; the queue is a table of its own (review_cases) so that each page
is one range scan of an index ordered like the queue: by patient (below), and for a photograph on
its own, priority (urgent, review, routine), then the image's upload time, then id. `open_cases` adds an analysis's case in the worker's transaction that
writes the analysis; routine cases are drawn into the queue at random (the audit share), the rest are
marked skipped. Reading the queue never writes.
Pages are found by seeking past the last key seen (keyset pagination), never by OFFSET or a count.

The queue works by patient. Its order is the patient's most urgent rank and oldest upload (over the
patient's cases in the same state), the patient, the lesion's most urgent rank, the lesion, then the
photograph's own priority rank, upload time and id: a patient's lesions sit together, most urgent
patient first, and a lesion's photographs together within them. Those patient and lesion parts are
copied onto every case of the patient (`regroup`) whenever one of them opens or changes state, in that
transaction, so a page stays one range scan. A photograph without a lesion is its own lesion of an
unnamed patient (keys 0, its own rank and time): it sorts exactly as before. One decision settles a
lesion: a decision on one of its cases records the same decision on the lesion's other pending cases,
each review pointing at the one it follows (`settled_by_id`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, case, func, select, tuple_, update

from .catalogue import BY_SLUG, class_name
from .db import insert_ignoring_conflicts
from .ids import parse_id
from .names import display_name
from .risk import REVIEW, ROUTINE, URGENT
from .sites import visible_batch_ids
from .schema import (QUEUE_KEY_COLUMNS, Analysis, Batch, CaseState, Decision, Image, ImageStatus, Lesion, Patient,
                     Review, ReviewCase, User, utcnow)

PRIORITY_RANK = {URGENT: 0, REVIEW: 1, ROUTINE: 2}
PAGE_SIZE = 50
MAX_NOTE = 4000


class DecisionError(ValueError):
    """A decision that cannot be recorded as sent; the message says why."""


# --- opening cases -------------------------------------------------------------------------------

# Built once (the worker runs them with every batch): what a new analysis's case is made from, and
# the older pending cases of images analysed again.
_NEW_ANALYSES = (
    select(Analysis.id, Analysis.image_id, Analysis.priority, Analysis.top_class, Image.batch_id, Image.created_at,
           Image.lesion_id, Lesion.patient_id)
    .join(Image, Image.id == Analysis.image_id).outerjoin(Lesion, Lesion.id == Image.lesion_id)
    .where(Analysis.id.in_(bindparam("ids", expanding=True)), Analysis.outcome == ImageStatus.ANALYSED))
_NEWEST = (select(ReviewCase.image_id, func.max(ReviewCase.analysis_id).label("newest"))
           .where(ReviewCase.image_id.in_(bindparam("image_ids", expanding=True)))
           .group_by(ReviewCase.image_id).subquery())
_SUPERSEDE = (update(ReviewCase.__table__)
              .where(ReviewCase.id.in_(select(ReviewCase.id).join(_NEWEST, and_(
                  _NEWEST.c.image_id == ReviewCase.image_id, ReviewCase.analysis_id < _NEWEST.c.newest))),
                     ReviewCase.state == CaseState.PENDING)
              .values(state=CaseState.SUPERSEDED))


def open_cases(session, analysis_ids: list[int], audit_share: float, draw=random.random) -> list[dict]:
    """Give each of these analyses its case in the review queue; returns the cases opened.

    The worker calls this in the transaction that writes the analyses, so an analysis never exists
    without its case and the queue needs no page view to fill. Routine cases are drawn into the queue
    at random (the audit share), the rest are marked skipped; an image analysed again has its older
    pending case superseded. An analysis that already has a case is left alone (unique analysis_id).
    """
    if not analysis_ids:
        return []
    rows = session.execute(_NEW_ANALYSES, {"ids": list(analysis_ids)}).all()
    if not rows:
        return []
    now = utcnow()
    values = [_case_values(row, audit_share, draw, now) for row in rows]
    insert = insert_ignoring_conflicts(session.get_bind(), ReviewCase.__table__, "analysis_id")
    opened = session.execute(insert.returning(ReviewCase.id, ReviewCase.analysis_id), values).all()
    _supersede_older(session, sorted({row[1] for row in rows}))
    regroup(session, [row[7] for row in rows if row[7] is not None])
    by_analysis = {v["analysis_id"]: v for v in values}
    return [{**by_analysis[analysis_id], "id": case_id} for case_id, analysis_id in opened]


def _case_values(row, audit_share: float, draw, now: datetime) -> dict:
    analysis_id, image_id, priority, top_class, batch_id, received_at, lesion_id, patient_id = row
    sampled = priority == ROUTINE and draw() < audit_share
    state = CaseState.SKIPPED if priority == ROUTINE and not sampled else CaseState.PENDING
    rank = PRIORITY_RANK.get(priority, len(PRIORITY_RANK))
    # Its own lesion of its own patient until `regroup` (for a named lesion) says otherwise.
    return dict(analysis_id=analysis_id, image_id=image_id, batch_id=batch_id, priority=priority,
                priority_rank=rank, top_class=top_class, received_at=received_at, state=state,
                audit_sample=sampled, created_at=now, patient_key=patient_id or 0, lesion_key=lesion_id or 0,
                patient_rank=rank, patient_since=received_at, lesion_rank=rank)


def _supersede_older(session, image_ids: list[int]) -> None:
    """An image analysed again (another model version) is reviewed once, on its newest analysis."""
    session.connection().execute(_SUPERSEDE, {"image_ids": image_ids})


def regroup(session, patient_ids) -> None:
    """Copy each patient's part of the queue's key onto every case of theirs: per state, the most urgent
    rank and the oldest upload among the patient's cases, and the most urgent rank of each lesion.

    Recomputed from the rows, inside the caller's transaction (a worker opening cases, a clinician
    deciding). On PostgreSQL the patient's row is locked first (FOR UPDATE, patients in id order so two
    transactions never wait on each other), so that two workers writing photographs of one patient at
    once take turns, and the second sees the first's cases; SQLite writers take turns anyway (BEGIN
    IMMEDIATE, triage/db.py)."""
    for patient_id in sorted(set(patient_ids)):
        session.execute(select(Patient.id).where(Patient.id == patient_id).with_for_update())
        found = session.execute(
            select(ReviewCase.state, ReviewCase.lesion_key, func.min(ReviewCase.priority_rank),
                   func.min(ReviewCase.received_at))
            .where(ReviewCase.patient_key == patient_id).group_by(ReviewCase.state, ReviewCase.lesion_key)).all()
        by_state: dict[str, dict[int, tuple[int, datetime]]] = {}
        for state, lesion_key, rank, since in found:
            by_state.setdefault(state, {})[lesion_key] = (rank, since)
        for state, lesions in by_state.items():
            session.execute(
                update(ReviewCase).where(ReviewCase.patient_key == patient_id, ReviewCase.state == state)
                .values(patient_rank=min(rank for rank, _ in lesions.values()),
                        patient_since=min(since for _, since in lesions.values()),
                        lesion_rank=case({key: rank for key, (rank, _) in lesions.items()},
                                         value=ReviewCase.lesion_key))
                .execution_options(synchronize_session="fetch"))


def case_for(session, analysis_id: int) -> ReviewCase | None:
    return session.scalar(select(ReviewCase).where(ReviewCase.analysis_id == analysis_id))


# --- reading the queue ---------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueFilter:
    state: str = CaseState.PENDING
    batch_id: int | None = None
    top_class: str | None = None
    priority: str | None = None
    reviewer_id: int | None = None
    # The sites whose cases the reader may see (triage.sites; None: every site). Never from the URL:
    # the web sets it from the user's memberships with dataclasses.replace.
    sites: frozenset[int] | None = None

    @classmethod
    def from_args(cls, args) -> "QueueFilter":
        """From a query string; unknown or malformed values are ignored rather than refused."""
        state = args.get("status") or CaseState.PENDING
        top_class = args.get("class") or None
        priority = args.get("priority") or None
        return cls(state=state if state in CaseState.ALL else CaseState.PENDING,
                   batch_id=parse_id(args.get("batch")),
                   top_class=top_class if top_class in BY_SLUG else None,
                   priority=priority if priority in PRIORITY_RANK else None,
                   reviewer_id=parse_id(args.get("reviewer")))

    def as_args(self) -> dict:
        """The query string that gives this filter back (defaults left out)."""
        args = {"status": self.state if self.state != CaseState.PENDING else None, "batch": self.batch_id,
                "class": self.top_class, "priority": self.priority, "reviewer": self.reviewer_id}
        return {k: v for k, v in args.items() if v is not None}

    def conditions(self) -> list:
        found = [ReviewCase.state == self.state]
        if self.batch_id is not None:
            found.append(ReviewCase.batch_id == self.batch_id)
        if self.top_class is not None:
            found.append(ReviewCase.top_class == self.top_class)
        if self.priority is not None:
            # A range, not "=": SQLite drops a column held equal from the ORDER BY it matches against the
            # index, and then sorts the page's rank and time in a temporary tree instead of reading in order.
            rank = PRIORITY_RANK[self.priority]
            found.append(ReviewCase.priority_rank.between(rank, rank))
        if self.reviewer_id is not None:
            found.append(ReviewCase.reviewer_id == self.reviewer_id)
        if self.sites is not None:
            found.append(ReviewCase.batch_id.in_(visible_batch_ids(self.sites)))
        return found


_AT = "%Y%m%d%H%M%S%f"
_RANKS = ("patient_rank", "lesion_rank", "priority_rank")
_KEYS = ("patient_key", "lesion_key")


@dataclass(frozen=True)
class Cursor:
    """A position in the queue's order: a case's values of QUEUE_KEY_COLUMNS (triage/schema.py), in order."""
    values: tuple

    def encode(self) -> str:
        return ".".join(v.strftime(_AT) if isinstance(v, datetime) else str(v) for v in self.values)

    @classmethod
    def decode(cls, text: str | None) -> "Cursor | None":
        parts = (text or "").split(".")
        if len(parts) != len(QUEUE_KEY_COLUMNS):
            return None
        values = []
        for name, part in zip(QUEUE_KEY_COLUMNS, parts):
            # Numbers from a URL: a rank or id no case can have would be a database error, not an empty page.
            if name in ("patient_since", "received_at"):
                try:
                    values.append(datetime.strptime(part, _AT))
                except ValueError:
                    return None
            elif name in _RANKS:
                if part not in {str(r) for r in range(len(PRIORITY_RANK) + 1)}:
                    return None
                values.append(int(part))
            else:  # a patient or lesion key (0: none) or the case id
                value = 0 if part == "0" and name in _KEYS else parse_id(part)
                if value is None:
                    return None
                values.append(value)
        return cls(tuple(values))

    @classmethod
    def of(cls, case: ReviewCase) -> "Cursor":
        return cls(tuple(getattr(case, name) for name in QUEUE_KEY_COLUMNS))

    def key(self):
        return tuple_(*self.values)


QUEUE_ORDER = tuple(getattr(ReviewCase, name) for name in QUEUE_KEY_COLUMNS)
QUEUE_KEY = tuple_(*QUEUE_ORDER)


@dataclass
class QueuePage:
    rows: list[dict]
    next_cursor: str | None = None  # where the following page starts (after)
    prev_cursor: str | None = None  # where the preceding page ends (before)


def _seek(flt: QueueFilter, *, after: Cursor | None = None, before: Cursor | None = None):
    query = select(ReviewCase.id).where(*flt.conditions())
    if after is not None:
        query = query.where(QUEUE_KEY > after.key())
    if before is not None:
        query = query.where(QUEUE_KEY < before.key())
    return query


def queue_page(session, flt: QueueFilter, *, after: Cursor | None = None, before: Cursor | None = None,
               size: int = PAGE_SIZE) -> QueuePage:
    """One page of the queue, in queue order. With `before`, the page that ends just before it."""
    backwards = before is not None and after is None
    order = [c.desc() for c in QUEUE_ORDER] if backwards else list(QUEUE_ORDER)
    ids = session.scalars(_seek(flt, after=after, before=before if backwards else None)
                          .order_by(*order).limit(size + 1)).all()
    more = len(ids) > size
    ids = ids[:size]
    if backwards:
        ids.reverse()
    cases = _case_rows(session, ids)
    page = QueuePage(rows=cases)
    # Coming back from a later page, there is a later page; going forward from a cursor, an earlier one.
    has_prev, has_next = (more, True) if backwards else (after is not None, more)
    if cases:
        page.prev_cursor = cases[0]["cursor"] if has_prev else None
        page.next_cursor = cases[-1]["cursor"] if has_next else None
    return page


def _case_rows(session, ids: list[int]) -> list[dict]:
    """The queue's rows for these case ids, in the given order: a page's worth of primary-key lookups."""
    if not ids:
        return []
    found = session.execute(
        select(ReviewCase, Image.display_name, Batch.name, Analysis.confidence, Analysis.model_trained,
               User.username, Lesion.external_id, Lesion.body_site, Patient.external_id)
        .join(Image, Image.id == ReviewCase.image_id).join(Batch, Batch.id == ReviewCase.batch_id)
        .join(Analysis, Analysis.id == ReviewCase.analysis_id)
        .outerjoin(User, User.id == ReviewCase.reviewer_id)
        .outerjoin(Lesion, Lesion.id == Image.lesion_id).outerjoin(Patient, Patient.id == Lesion.patient_id)
        .where(ReviewCase.id.in_(ids))).all()
    by_id = {row[0].id: row for row in found}
    rows = []
    for case_id in ids:
        case, image_name, batch_name, confidence, trained, reviewer, lesion, body_site, patient = by_id[case_id]
        rows.append({
            # Pseudonyms of the clinic (None: a photograph without a lesion, its own lesion); the keys
            # tell the page where a patient's and a lesion's rows begin.
            "patient": patient, "lesion": lesion, "body_site": body_site,
            "patient_key": case.patient_key, "lesion_key": case.lesion_key,
            "case_id": case.id, "analysis_id": case.analysis_id, "image_id": case.image_id,
            "batch_id": case.batch_id, "batch_name": batch_name, "image_name": display_name(image_name),
            "priority": case.priority, "top_class": case.top_class,
            "top_class_name": class_name(case.top_class),
            "confidence": confidence, "model_trained": trained, "received_at": case.received_at,
            "state": case.state, "audit_sample": case.audit_sample, "decision": case.decision,
            "reviewer": reviewer, "decided_at": case.decided_at, "cursor": Cursor.of(case).encode(),
        })
    return rows


def classes_in_queue(session) -> list[str]:
    """The predicted classes that occur in the queue, alphabetically: the filter offers those, whatever
    label sets the models had. Found by hopping along the class index (a loose index scan: one seek
    per class) instead of reading every case, so it costs the same for a hundred cases or a million."""
    found = select(func.min(ReviewCase.top_class).label("slug")).cte("found", recursive=True)
    following = select(func.min(ReviewCase.top_class)).where(ReviewCase.top_class > found.c.slug).scalar_subquery()
    found = found.union_all(select(following).where(found.c.slug.is_not(None)))
    return list(session.scalars(select(found.c.slug).where(found.c.slug.is_not(None))))


def neighbour(session, flt: QueueFilter, case: ReviewCase, forward: bool = True) -> ReviewCase | None:
    """The case after (or before) `case` in the filtered queue. Going forward wraps round to the start,
    so cases skipped earlier are offered again before the queue reports empty."""
    here = Cursor.of(case)
    if forward:
        query = _seek(flt, after=here).order_by(*QUEUE_ORDER)
        found = session.scalar(query.limit(1)) or session.scalar(
            _seek(flt).where(ReviewCase.id != case.id).order_by(*QUEUE_ORDER).limit(1))
    else:
        found = session.scalar(_seek(flt, before=here).order_by(*[c.desc() for c in QUEUE_ORDER]).limit(1))
    return session.get(ReviewCase, found) if found is not None else None


# --- decisions -----------------------------------------------------------------------------------

def decide(session, settings, analysis_id: int, reviewer_id: int, decision: str,
           diagnosis: str | None = None, note: str | None = None) -> Review:
    """Record a clinician's decision beside the model's output (which is never changed)."""
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.outcome != ImageStatus.ANALYSED:
        raise DecisionError("Only an analysed image can be reviewed.")
    diagnosis = _diagnosis_for(decision, diagnosis or None, analysis.top_class)
    note = (note or "").strip()
    if len(note) > MAX_NOTE:
        raise DecisionError(f"The note is longer than {MAX_NOTE} characters.")
    case = case_for(session, analysis_id)
    if case is None:  # every analysis gets its case with it (worker, migration 0003): a gap is a fault
        raise DecisionError("This analysis has no case in the review queue.")
    if case.patient_key:  # take the patient's turn first (`regroup`): a colleague may be deciding the lesion
        session.execute(select(Patient.id).where(Patient.id == case.patient_key).with_for_update())
        session.refresh(case)
    review = Review(analysis_id=analysis_id, reviewer_id=reviewer_id, decision=decision,
                    diagnosis=diagnosis, note=note or None)
    session.add(review)
    session.flush()
    _mark_decided(case, review)
    if case.lesion_key:
        _settle_lesion(session, case, review)
        regroup(session, [case.patient_key])
    return review


def _mark_decided(case: ReviewCase, review: Review) -> None:
    case.state, case.reviewer_id, case.decision, case.decided_at = (
        CaseState.DECIDED, review.reviewer_id, review.decision, review.created_at)


def _settle_lesion(session, decided: ReviewCase, review: Review) -> list[Review]:
    """One decision per lesion: the lesion's other pending cases (other photographs, of this batch or
    an earlier one, shown beside the case) get the same decision, each as a review of its own analysis
    that points at `review`. The clinician decided on the lesion, having seen its photographs together;
    a case already decided keeps its own decision (a later opinion on it is made on it)."""
    others = session.scalars(select(ReviewCase).where(
        ReviewCase.patient_key == decided.patient_key, ReviewCase.lesion_key == decided.lesion_key,
        ReviewCase.state == CaseState.PENDING, ReviewCase.id != decided.id).order_by(ReviewCase.id)).all()
    settled = [Review(analysis_id=other.analysis_id, reviewer_id=review.reviewer_id, decision=review.decision,
                      diagnosis=review.diagnosis, settled_by_id=review.id, created_at=review.created_at)
               for other in others]
    session.add_all(settled)
    session.flush()
    for other, its_review in zip(others, settled):
        _mark_decided(other, its_review)
    session.flush()
    return settled


def settled_by(session, review_id: int) -> list[tuple[int, int]]:
    """(analysis id, review id) of each case a decision settled with it, in case order."""
    return [tuple(row) for row in session.execute(
        select(Review.analysis_id, Review.id).where(Review.settled_by_id == review_id).order_by(Review.id))]


def _diagnosis_for(decision: str, diagnosis: str | None, model_class: str | None) -> str | None:
    if decision not in Decision.ALL:
        raise DecisionError(f"Unknown decision {decision!r}.")
    if diagnosis is not None and diagnosis not in BY_SLUG:
        raise DecisionError(f"Unknown class {diagnosis!r}.")
    if decision == Decision.CONFIRM:
        # Confirming is the one decision that adopts the model's class; a different class sent with it
        # is a contradiction, not something to drop silently.
        if diagnosis is not None and diagnosis != model_class:
            raise DecisionError("Confirming adopts the model's class; to record another class, change the diagnosis.")
        return model_class
    if decision == Decision.CHANGE:
        if diagnosis is None or diagnosis == model_class:
            raise DecisionError("To change the diagnosis, choose a class other than the model's.")
        return diagnosis
    if decision == Decision.RESHOOT:
        return None
    return diagnosis  # a referral names a suspected class only when the clinician chose one


def decisions_on(session, analysis_ids: list[int]) -> list[tuple[Review, str]]:
    """Every decision on these analyses with its reviewer's name, oldest first."""
    if not analysis_ids:
        return []
    return session.execute(select(Review, User.username).join(User, User.id == Review.reviewer_id)
                           .where(Review.analysis_id.in_(analysis_ids)).order_by(Review.id)).all()
