"""One assessment per lesion, one priority per patient: how a lesion's photographs combine.

Pure functions of the photographs' rows (no I/O), so the rule is tested as a table
(tests/test_lesion_assessment.py). The rule, and why:

- **Which photographs.** A lesion is assessed as it was last photographed: its photographs in the most
  recent batch that holds any of them (one visit). Earlier batches are the lesion's history, shown
  beside it for change over time; they do not keep the lesion urgent after a clinician has dealt with
  it, nor hide a change. Each photograph counts with its latest analysis only.
- **Priority: the most urgent** of the visit's analysed photographs. One photograph showing a possible
  cancer is enough to see the lesion first; a better photograph of it that looks benign does not undo
  that (the model can miss a feature in one view, and the clinician compares them side by side).
- **Class: the most severe plausible class.** "Plausible" is the class the photograph's own risk policy
  acted on (`acted_on`), with the thresholds stored with that analysis: the top class, or the malignant
  (pre-malignant) class that made it urgent (kept it from routine) although another class ranked first.
  Across photographs the most severe of these wins (catalogue severity), then the more urgent
  photograph, then the higher probability. That photograph *drove* the assessment and is shown first.
  Because only a malignant class makes a photograph urgent and only a pre-malignant one (or doubt) keeps
  it from routine, the driving photograph is the most urgent one whenever the class matters.
- **Best-quality photograph** (fewest marginal quality checks, then sharpest) is shown next to it.
- **Reshoot.** A visit whose photographs were all sent back by the quality gate (none analysed, none
  still waiting) needs a reshoot. A photograph that failed outright (an unreadable file) counts as
  sent back; a visit of failures only is `failed`.
- **Partial.** While photographs of the visit are still waiting for the worker, the assessment is
  partial: it may still become more urgent.

A photograph without a lesion is its own lesion: the same rule over one photograph gives that
photograph's own result. A patient's priority is the most urgent of their lesions' priorities.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .catalogue import BY_SLUG, MALIGNANT_SLUGS, PRE_MALIGNANT_SLUGS, SEVERITY_RANK
from .risk import PRIORITY_ORDER, RESHOOT, RiskThresholds

# What the rule says about a lesion as a whole.
COMPLETE, PARTIAL, PENDING, NEEDS_RESHOOT, FAILED = "complete", "partial", "pending", "needs_reshoot", "failed"
ANALYSED_STATUS, RESHOOT_STATUS, FAILED_STATUS = "analysed", "needs_reshoot", "failed"
# Allow for the rounding the risk policy allows for (triage/risk.py): the same comparison, the same answer.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Photo:
    """One photograph of a lesion as the rule needs it: its image row and its latest analysis."""
    image_id: int
    batch_id: int
    received_at: datetime
    status: str  # the image's status (triage.schema.ImageStatus)
    priority: str | None = None  # of the latest analysis, when analysed
    probabilities: dict[str, float] | None = None
    top_class: str | None = None
    malignant_threshold: float = RiskThresholds.malignant_threshold  # the policy stored with the analysis
    quality: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LesionAssessment:
    state: str  # complete | partial | pending | needs_reshoot | failed
    priority: str | None  # urgent | review | routine | reshoot; None while nothing is known
    top_class: str | None  # the most severe plausible class
    driver_id: int | None  # the photograph the class and priority came from
    best_quality_id: int | None
    shown_first: tuple[int, ...]  # the visit's photographs in the order a clinician sees them
    visit_batch_id: int | None  # the batch assessed; earlier batches are history
    earlier_ids: tuple[int, ...]  # earlier batches' photographs, oldest first


def rank(priority: str | None) -> int:
    """0 for urgent ... len(PRIORITY_ORDER) for nothing known: smaller is more urgent."""
    return PRIORITY_ORDER.index(priority) if priority in PRIORITY_ORDER else len(PRIORITY_ORDER)


def severity(slug: str | None) -> int:
    known = BY_SLUG.get(slug) if slug else None
    return SEVERITY_RANK[known.severity] if known else -1


def acted_on(probabilities: dict[str, float] | None, top_class: str | None,
             malignant_threshold: float = RiskThresholds.malignant_threshold) -> str | None:
    """The class the risk policy (triage/risk.py `assess`) acted on for one photograph, in its order of
    tests: a malignant top class; else the likeliest malignant class when the malignant classes together
    reach the threshold; else a pre-malignant top class; else the likeliest pre-malignant class when
    pre-malignant and malignant together reach it; else the top class."""
    p = probabilities or {}
    malignant = {s: p[s] for s in MALIGNANT_SLUGS if s in p}
    pre_malignant = {s: p[s] for s in PRE_MALIGNANT_SLUGS if s in p}
    reach = malignant_threshold - _ROUNDING
    if top_class in MALIGNANT_SLUGS or (top_class in PRE_MALIGNANT_SLUGS and sum(malignant.values()) < reach):
        return top_class
    if malignant and sum(malignant.values()) >= reach:
        return _likeliest(malignant)
    if pre_malignant and sum(pre_malignant.values()) + sum(malignant.values()) >= reach:
        return _likeliest(pre_malignant)
    return top_class


def _likeliest(probabilities: dict[str, float]) -> str:
    return min(probabilities, key=lambda s: (-probabilities[s], -severity(s), s))


def quality_order(photo: Photo) -> tuple:
    """Smaller is better: fewer marginal checks, then sharper, then the earlier photograph."""
    checks = photo.quality.get("checks", []) if photo.quality else []
    marginal = sum(1 for c in checks if c.get("marginal"))
    sharpness = next((c.get("value") or 0.0 for c in checks if c.get("name") == "sharpness"), 0.0)
    return (marginal, -sharpness, photo.image_id)


def assess_lesion(photos: list[Photo]) -> LesionAssessment:
    """The rule above, over every photograph of one lesion (any batches, any status)."""
    if not photos:
        return LesionAssessment(FAILED, None, None, None, None, (), None, ())
    # The visit: the latest batch by upload time (batch id breaks a tie; ids only grow).
    visit = max(photos, key=lambda ph: (ph.received_at, ph.batch_id)).batch_id
    now = [ph for ph in photos if ph.batch_id == visit]
    earlier = tuple(ph.image_id for ph in sorted((ph for ph in photos if ph.batch_id != visit),
                                                 key=lambda ph: (ph.received_at, ph.image_id)))
    analysed = [ph for ph in now if ph.status == ANALYSED_STATUS]
    waiting = any(ph.status not in (ANALYSED_STATUS, RESHOOT_STATUS, FAILED_STATUS) for ph in now)
    if not analysed:
        if waiting:
            state, priority = PENDING, None
        elif any(ph.status == RESHOOT_STATUS for ph in now):
            state, priority = NEEDS_RESHOOT, RESHOOT
        else:
            state, priority = FAILED, None
        order = tuple(ph.image_id for ph in sorted(now, key=lambda ph: ph.image_id))
        return LesionAssessment(state, priority, None, None, None, order, visit, earlier)

    def drives(ph: Photo) -> tuple:
        cls = acted_on(ph.probabilities, ph.top_class, ph.malignant_threshold)
        return (-severity(cls), rank(ph.priority), -(ph.probabilities or {}).get(cls, 0.0), ph.image_id)

    driver = min(analysed, key=drives)
    best = min(analysed, key=quality_order)
    rest = sorted((ph for ph in now if ph.image_id not in (driver.image_id, best.image_id)),
                  key=lambda ph: (ph.status != ANALYSED_STATUS, quality_order(ph)))
    order = tuple(dict.fromkeys([driver.image_id, best.image_id] + [ph.image_id for ph in rest]))
    return LesionAssessment(
        state=PARTIAL if waiting else COMPLETE,
        priority=min((ph.priority for ph in analysed), key=rank),
        top_class=acted_on(driver.probabilities, driver.top_class, driver.malignant_threshold),
        driver_id=driver.image_id, best_quality_id=best.image_id, shown_first=order,
        visit_batch_id=visit, earlier_ids=earlier)


def patient_priority(lesions: list[LesionAssessment]) -> str | None:
    """The most urgent of the patient's lesions; a patient whose every lesion needs a reshoot needs one."""
    known = [a.priority for a in lesions if a.priority is not None]
    return min(known, key=rank) if known else None
