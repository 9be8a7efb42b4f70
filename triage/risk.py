"""The one risk policy: probabilities (+ quality) -> risk level, triage priority, reasons, advice.

Deterministic and free of I/O so it can be tested as a table. The thresholds in force are
returned with every assessment and stored with the analysis, so a result can be explained later.
It works on whatever classes the model has (its card's labels): the sums below cover the malignant and
pre-malignant classes that are present.

A pre-malignant lesion (actinic keratosis / intraepithelial carcinoma) is never routine, nor urgent
on that alone: when it ranks first, or when the pre-malignant and malignant classes together reach the
malignant threshold (one knob: what makes a possible cancer urgent makes a possible precursor worth a
clinician's look), the risk is at least medium and the priority review, with its own reason and advice.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .catalogue import (BY_SLUG, MALIGNANT, MALIGNANT_SLUGS, NEEDS_TREATMENT, PRE_MALIGNANT, PRE_MALIGNANT_SLUGS,
                        SEVERITY_RANK)

HIGH, MEDIUM, LOW = "high", "medium", "low"
URGENT, REVIEW, ROUTINE, RESHOOT = "urgent", "review", "routine", "reshoot"
PRIORITY_ORDER = (URGENT, REVIEW, ROUTINE, RESHOOT)
RISK_FOR_SEVERITY = {MALIGNANT: HIGH, PRE_MALIGNANT: MEDIUM, NEEDS_TREATMENT: MEDIUM}

# Probabilities that sum to a threshold in exact arithmetic can land one rounding step below it
# (0.05 + 0.12 < 0.17 in floating point); "reaching" a threshold allows for that.
_ROUNDING = 1e-9

PRIORITY_ADVICE = {
    URGENT: "Review today: a possible skin cancer must be seen by a clinician first.",
    ROUTINE: "Routine review.",
    RESHOOT: "Retake the photograph; the image was not analysed.",
}
# Why an image goes to review, each with its own advice: a 99.9% sure result sent to review because
# its photograph is marginal must not be told that the model is unsure. A review always has at least
# one of these; an urgent image lists those that also hold for it after the urgent advice.
PRE_MALIGNANT_LESION, LOW_CONFIDENCE, HIGH_ENTROPY, MARGINAL_QUALITY = (
    "pre_malignant", "low_confidence", "high_entropy", "marginal_quality")
REVIEW_ADVICE = {
    PRE_MALIGNANT_LESION: "Not routine: a possible pre-malignant lesion must be assessed by a clinician within weeks.",
    LOW_CONFIDENCE: "The model is not confident: a clinician must make the call.",
    HIGH_ENTROPY: "The model spreads its probability over several classes: a clinician must weigh the "
                  "alternatives it lists.",
    MARGINAL_QUALITY: "The photograph only just passed the quality checks: a clinician must judge whether it "
                      "shows the lesion well enough, and ask for a retake if not.",
}
PRE_MALIGNANT_ADVICE = REVIEW_ADVICE[PRE_MALIGNANT_LESION]


@dataclass(frozen=True)
class RiskThresholds:
    malignant_threshold: float = 0.30
    min_confidence: float = 0.50
    max_entropy: float = 0.75

    @classmethod
    def from_settings(cls, settings) -> "RiskThresholds":
        return cls(settings.malignant_threshold, settings.min_confidence, settings.max_entropy)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Assessment:
    risk_level: str
    priority: str
    reasons: list[str]
    recommendations: list[str]
    top_class: str
    confidence: float
    top3: list[tuple[str, float]]
    malignant_probability: float
    entropy: float


def normalised_entropy(probabilities: dict[str, float]) -> float:
    """Shannon entropy divided by its maximum: 0 = certain, 1 = uniform."""
    values = [p for p in probabilities.values() if p > 0]
    if len(probabilities) < 2:
        return 0.0
    # fsum is exactly rounded, so the value (stored, and compared with a threshold) does not depend
    # on the order the classes arrive in.
    return -math.fsum(p * math.log(p) for p in values) / math.log(len(probabilities))


def assess(probabilities: dict[str, float], thresholds: RiskThresholds,
           quality_marginal: list[str] | tuple[str, ...] = ()) -> Assessment:
    # Exact ties go to the more severe class (a melanoma/nevus tie must not read as a mole because
    # "melanocytic" sorts first), then to the slug, so the result never depends on dict order.
    ranked = sorted(probabilities.items(),
                    key=lambda kv: (-kv[1], -SEVERITY_RANK[BY_SLUG[kv[0]].severity], kv[0]))
    top_class, confidence = ranked[0]
    malignant_p = sum(probabilities.get(s, 0.0) for s in MALIGNANT_SLUGS)
    pre_malignant_p = sum(probabilities.get(s, 0.0) for s in PRE_MALIGNANT_SLUGS)
    entropy = normalised_entropy(probabilities)
    top_cls = BY_SLUG[top_class]
    reasons: list[str] = []
    pre_malignant = False  # a possible pre-malignant lesion keeps the image out of routine

    # Risk follows the most severe plausible class, not only the arg-max.
    risk = RISK_FOR_SEVERITY.get(top_cls.severity, LOW)
    if top_cls.severity == MALIGNANT:
        reasons.append(f"Top class {top_cls.display_name} is malignant ({confidence:.0%}).")
    elif malignant_p >= thresholds.malignant_threshold - _ROUNDING:
        risk = HIGH
        reasons.append(f"Malignant classes together reach {malignant_p:.0%} "
                       f"(threshold {thresholds.malignant_threshold:.0%}) although "
                       f"{top_cls.display_name} ranks first.")
    elif top_cls.severity == PRE_MALIGNANT:
        pre_malignant = True
        reasons.append(f"Top class {top_cls.display_name} is pre-malignant ({confidence:.0%}): never routine.")
    elif pre_malignant_p and malignant_p + pre_malignant_p >= thresholds.malignant_threshold - _ROUNDING:
        risk, pre_malignant = MEDIUM, True
        reasons.append(f"Pre-malignant and malignant classes together reach {malignant_p + pre_malignant_p:.0%} "
                       f"(threshold {thresholds.malignant_threshold:.0%}) although "
                       f"{top_cls.display_name} ranks first.")
    else:
        # A model with pre-malignant classes says how far their share was from keeping the image out of routine.
        with_pre_malignant = (f", with the pre-malignant {malignant_p + pre_malignant_p:.0%}"
                              if any(s in probabilities for s in PRE_MALIGNANT_SLUGS) else "")
        reasons.append(f"Top class {top_cls.display_name} ({confidence:.0%}) is "
                       f"{'a condition needing treatment' if risk == MEDIUM else 'benign'}; "
                       f"malignant classes together {malignant_p:.0%}{with_pre_malignant}.")

    review_for = [PRE_MALIGNANT_LESION] if pre_malignant else []  # REVIEW_ADVICE keys, in that order
    if confidence < thresholds.min_confidence:
        review_for.append(LOW_CONFIDENCE)
        reasons.append(f"Top probability {confidence:.0%} is below {thresholds.min_confidence:.0%}.")
    if entropy > thresholds.max_entropy:
        review_for.append(HIGH_ENTROPY)
        reasons.append(f"Prediction entropy {entropy:.2f} is above {thresholds.max_entropy:.2f}.")
    if quality_marginal:
        review_for.append(MARGINAL_QUALITY)
        reasons.extend(f"Image quality is marginal: {check}." for check in quality_marginal)

    # A possible cancer is always seen first, even when the model is unsure: urgent outranks review.
    if risk == HIGH:
        priority = URGENT
    elif review_for:
        priority = REVIEW
    else:
        priority = ROUTINE

    advice = [REVIEW_ADVICE[why] for why in review_for]
    recommendations = advice if priority == REVIEW else [PRIORITY_ADVICE[priority]] + advice
    plausible = [s for s, p in ranked[:3] if p >= 0.10 or s == top_class]
    for slug in sorted(plausible, key=lambda s: -SEVERITY_RANK[BY_SLUG[s].severity]):
        recommendations.append(f"{BY_SLUG[slug].display_name}: {BY_SLUG[slug].recommendation}")

    return Assessment(risk_level=risk, priority=priority, reasons=reasons, recommendations=recommendations,
                      top_class=top_class, confidence=confidence,
                      top3=[(s, p) for s, p in ranked[:3]],
                      malignant_probability=malignant_p, entropy=entropy)


def reshoot_assessment(failed_checks: list[str]) -> tuple[str, list[str], list[str]]:
    """Priority, reasons and advice for an image the quality gate stopped."""
    return RESHOOT, list(failed_checks), [PRIORITY_ADVICE[RESHOOT]]
