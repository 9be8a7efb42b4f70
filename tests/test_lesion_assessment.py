"""The combination rule of triage/lesions.py as tables: each row would fail if the rule changed."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from triage.lesions import (COMPLETE, FAILED, NEEDS_RESHOOT, PARTIAL, PENDING, LesionAssessment, Photo, acted_on,
                            assess_lesion, patient_priority)

T0 = datetime(2026, 12, 1, 9, 0)


def probs(**given: float) -> dict[str, float]:
    """The given classes' probabilities, the rest of 1.0 on eczema (a class needing treatment)."""
    return {**given, "eczema": round(1.0 - sum(given.values()), 6)} if "eczema" not in given else given


def photo(image_id: int, priority: str | None = None, p: dict | None = None, *, status: str = "analysed",
          batch: int = 2, day: int = 10, marginal: int = 0, sharpness: float = 10.0,
          threshold: float = 0.30) -> Photo:
    top = max(p, key=p.get) if p else None
    checks = [{"name": "sharpness", "value": sharpness, "marginal": False}] + \
             [{"name": f"check{i}", "value": 1.0, "marginal": True} for i in range(marginal)]
    return Photo(image_id=image_id, batch_id=batch, received_at=T0 + timedelta(days=day), status=status,
                 priority=priority if status == "analysed" else None, probabilities=p if status == "analysed" else None,
                 top_class=top if status == "analysed" else None, malignant_threshold=threshold,
                 quality={"passed": status == "analysed", "checks": checks})


# --- the class a photograph's own risk policy acted on ------------------------------------------------

@pytest.mark.parametrize("why, probabilities, threshold, expected", [
    ("a malignant top class is the class", probs(melanoma=0.6), 0.30, "melanoma"),
    ("malignant classes reaching the threshold under a benign top class: the likeliest malignant one",
     probs(melanocytic_nevi=0.6, melanoma=0.15, bcc=0.2), 0.30, "bcc"),
    ("malignant classes below the threshold: the top class", probs(melanocytic_nevi=0.6, melanoma=0.2, bcc=0.05),
     0.30, "melanocytic_nevi"),
    ("the threshold is the one stored with the analysis", probs(melanocytic_nevi=0.6, melanoma=0.2, bcc=0.05),
     0.20, "melanoma"),
    ("reaching it allows for rounding, as the risk policy does", probs(melanocytic_nevi=0.6, melanoma=0.12, bcc=0.05),
     0.17, "melanoma"),
    ("a pre-malignant top class", probs(actinic_keratosis=0.5, melanoma=0.1), 0.30, "actinic_keratosis"),
    ("a pre-malignant top class with malignant classes at the threshold: the malignant one",
     probs(actinic_keratosis=0.5, scc=0.35), 0.30, "scc"),
    ("pre-malignant and malignant together reaching it under a benign top class: the pre-malignant one",
     probs(melanocytic_nevi=0.6, actinic_keratosis=0.2, melanoma=0.1), 0.30, "actinic_keratosis"),
    ("a benign top class with nothing serious: the top class", probs(bkl=0.9), 0.30, "bkl"),
])
def test_the_class_a_photographs_risk_policy_acted_on(why, probabilities, threshold, expected):
    top = max(probabilities, key=probabilities.get)
    assert acted_on(probabilities, top, threshold) == expected, why


# --- one lesion ---------------------------------------------------------------------------------------

URGENT_MEL = probs(melanoma=0.8)
URGENT_MEL_WEAK = probs(melanoma=0.5)
URGENT_UNDER_NEVUS = probs(melanocytic_nevi=0.5, melanoma=0.2, bcc=0.15)
NEVUS_UNSURE = probs(melanocytic_nevi=0.45, bkl=0.3)
ECZEMA_SURE = probs(eczema=0.9, bkl=0.1)
NEVUS_SURE = probs(melanocytic_nevi=0.95)

# (why, photographs, expected (state, priority, class, driver, best quality, shown first, earlier))
LESIONS = [
    ("one photograph is its own assessment (a photograph without a lesion, as before)",
     [photo(1, "review", NEVUS_UNSURE)],
     (COMPLETE, "review", "melanocytic_nevi", 1, 1, (1,), ())),
    ("the most urgent photograph sets the priority and drives; the sharper one is shown next",
     [photo(1, "routine", NEVUS_SURE, sharpness=30), photo(2, "urgent", URGENT_MEL, sharpness=5)],
     (COMPLETE, "urgent", "melanoma", 2, 1, (2, 1), ())),
    ("the class is the one the policy acted on, not the top class",
     [photo(1, "urgent", URGENT_UNDER_NEVUS)],
     (COMPLETE, "urgent", "melanoma", 1, 1, (1,), ())),
    ("the most severe class may come from a less urgent photograph: it drives, the priority stays the most urgent",
     [photo(1, "review", NEVUS_UNSURE), photo(2, "routine", ECZEMA_SURE)],
     (COMPLETE, "review", "eczema", 2, 1, (2, 1), ())),
    ("equally severe and urgent: the higher probability of that class drives",
     [photo(1, "urgent", URGENT_MEL_WEAK), photo(2, "urgent", URGENT_MEL)],
     (COMPLETE, "urgent", "melanoma", 2, 1, (2, 1), ())),
    ("fewer marginal checks beat sharpness for the best-quality photograph",
     [photo(1, "urgent", URGENT_MEL), photo(2, "routine", NEVUS_SURE, marginal=1, sharpness=50),
      photo(3, "routine", NEVUS_SURE, sharpness=20)],
     (COMPLETE, "urgent", "melanoma", 1, 3, (1, 3, 2), ())),
    ("a photograph sent back does not count when another was analysed; it is shown last",
     [photo(1, status="needs_reshoot"), photo(2, "routine", NEVUS_SURE)],
     (COMPLETE, "routine", "melanocytic_nevi", 2, 2, (2, 1), ())),
    ("every photograph sent back: the lesion needs a reshoot",
     [photo(1, status="needs_reshoot"), photo(2, status="needs_reshoot")],
     (NEEDS_RESHOOT, "reshoot", None, None, None, (1, 2), ())),
    ("sent back and failed, none analysed: still a reshoot",
     [photo(1, status="failed"), photo(2, status="needs_reshoot")],
     (NEEDS_RESHOOT, "reshoot", None, None, None, (1, 2), ())),
    ("failures only", [photo(1, status="failed")], (FAILED, None, None, None, None, (1,), ())),
    ("a photograph still waiting: the assessment is partial (it may still become more urgent)",
     [photo(1, "routine", NEVUS_SURE), photo(2, status="queued")],
     (PARTIAL, "routine", "melanocytic_nevi", 1, 1, (1, 2), ())),
    ("sent back while another still waits: nothing known yet, not a reshoot",
     [photo(1, status="needs_reshoot"), photo(2, status="processing")],
     (PENDING, None, None, None, None, (1, 2), ())),
    ("the latest visit is assessed; an earlier batch's urgent photograph is history, oldest first",
     [photo(5, "urgent", URGENT_MEL, batch=1, day=1), photo(4, "review", NEVUS_UNSURE, batch=1, day=0),
      photo(9, "routine", NEVUS_SURE, batch=3, day=40)],
     (COMPLETE, "routine", "melanocytic_nevi", 9, 9, (9,), (4, 5))),
    ("a new visit still waiting is pending, whatever the last visit said",
     [photo(5, "urgent", URGENT_MEL, batch=1, day=1), photo(9, status="received", batch=3, day=40)],
     (PENDING, None, None, None, None, (9,), (5,))),
]


@pytest.mark.parametrize("why, photos, expected", LESIONS, ids=[row[0][:60] for row in LESIONS])
def test_a_lesions_photographs_combine_into_one_assessment(why, photos, expected):
    a = assess_lesion(photos)
    assert (a.state, a.priority, a.top_class, a.driver_id, a.best_quality_id, a.shown_first, a.earlier_ids) == expected


def test_the_order_photographs_arrive_in_does_not_matter():
    for _, photos, expected in LESIONS:
        a = assess_lesion(list(reversed(photos)))
        assert (a.state, a.priority, a.top_class, a.driver_id, a.best_quality_id, a.shown_first,
                a.earlier_ids) == expected


# --- one patient --------------------------------------------------------------------------------------

def lesion(priority: str | None) -> LesionAssessment:
    return LesionAssessment(COMPLETE, priority, None, None, None, (), None, ())


@pytest.mark.parametrize("why, priorities, expected", [
    ("the most urgent lesion", ["routine", "urgent", "review"], "urgent"),
    ("review over routine", ["routine", "review"], "review"),
    ("a lesion needing a reshoot does not hide an analysed one", ["reshoot", "routine"], "routine"),
    ("every lesion needs a reshoot", ["reshoot", "reshoot"], "reshoot"),
    ("lesions still waiting are not known yet", [None, "review"], "review"),
    ("nothing known yet", [None], None),
])
def test_a_patient_is_as_urgent_as_their_most_urgent_lesion(why, priorities, expected):
    assert patient_priority([lesion(p) for p in priorities]) == expected, why
