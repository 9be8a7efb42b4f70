"""The risk policy as a table: probabilities (+ quality) -> risk level, priority, reasons, advice."""
from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from triage.catalogue import BY_SLUG, MALIGNANT_SLUGS, PRE_MALIGNANT_SLUGS, REFERENCE_LABEL_ORDER
from triage.risk import (HIGH, HIGH_ENTROPY, LOW, LOW_CONFIDENCE, MARGINAL_QUALITY, MEDIUM, PRE_MALIGNANT_ADVICE,
                         PRE_MALIGNANT_LESION, PRIORITY_ADVICE, RESHOOT, REVIEW, REVIEW_ADVICE, ROUTINE, URGENT,
                         Assessment, RiskThresholds, assess, normalised_entropy, reshoot_assessment)

DEFAULT = RiskThresholds()  # 0.30 malignant, 0.50 confidence, 0.75 entropy
KAGGLE = REFERENCE_LABEL_ORDER  # the demo and reference models' ten classes
# A model trained on PAD-UFES-20 (its card's labels, in catalogue order).
PAD_UFES_20 = ("melanoma", "bcc", "melanocytic_nevi", "seborrheic_keratoses", "actinic_keratosis", "scc")


def dist(labels=KAGGLE, **given: float) -> dict[str, float]:
    """Probabilities over a model's labels: the named ones, the remainder shared evenly by the rest."""
    unknown = set(given) - set(labels)
    assert not unknown, unknown
    rest = [s for s in labels if s not in given]
    share = (1.0 - sum(given.values())) / len(rest) if rest else 0.0
    assert share >= 0
    return {s: given.get(s, share) for s in labels}


def pad(**given: float) -> dict[str, float]:
    return dist(PAD_UFES_20, **given)


# The advice that leads the recommendations: the priority's (urgent, routine), then one line for each
# reason for review that holds (a review has no advice of its own, only its reasons').
DO_URGENT, DO_ROUTINE = PRIORITY_ADVICE[URGENT], PRIORITY_ADVICE[ROUTINE]
UNSURE, SPREAD, MARGINAL, PRECURSOR = (REVIEW_ADVICE[k] for k in (LOW_CONFIDENCE, HIGH_ENTROPY, MARGINAL_QUALITY,
                                                                  PRE_MALIGNANT_LESION))


def row(id_, probabilities, risk, priority, reason, advice, thresholds=DEFAULT, quality=()):
    return pytest.param(probabilities, thresholds, quality, risk, priority, reason, advice, id=id_)


POLICY = [
    row("confident-melanoma", dist(melanoma=0.90), HIGH, URGENT, "Melanoma is malignant", [DO_URGENT]),
    row("confident-bcc", dist(bcc=0.85), HIGH, URGENT, "Basal cell carcinoma is malignant", [DO_URGENT]),
    # The safety net: a mole ranks first, yet melanoma + BCC together reach the threshold.
    row("nevus-first-malignant-sum-reaches", dist(melanocytic_nevi=0.60, melanoma=0.20, bcc=0.12),
        HIGH, URGENT, "Malignant classes together reach 32%", [DO_URGENT]),
    row("nevus-first-malignant-sum-just-below", dist(melanocytic_nevi=0.62, melanoma=0.20, bcc=0.09),
        LOW, ROUTINE, "malignant classes together 29%", [DO_ROUTINE]),
    row("confident-eczema", dist(eczema=0.88), MEDIUM, ROUTINE, "a condition needing treatment", [DO_ROUTINE]),
    row("confident-nevus", dist(melanocytic_nevi=0.92), LOW, ROUTINE, "is benign", [DO_ROUTINE]),
    row("low-top-probability-abstains",
        dist(eczema=0.40, psoriasis_lichen_planus=0.30, tinea_fungal=0.30),
        MEDIUM, REVIEW, "Top probability 40% is below 50%", [UNSURE]),
    # Top class at 50% is confident enough, but the rest is spread so thin the entropy is too high.
    row("high-entropy-abstains", dist(eczema=0.50), MEDIUM, REVIEW, "Prediction entropy 0.78 is above 0.75", [SPREAD]),
    row("near-uniform-abstains", dist(eczema=0.12), MEDIUM, REVIEW, "Prediction entropy 1.00", [UNSURE, SPREAD]),
    row("marginal-quality-abstains", dist(melanocytic_nevi=0.92), LOW, REVIEW,
        "Image quality is marginal: brightness", [MARGINAL], quality=["brightness"]),
    # Urgent outranks review: a possible cancer is seen first even when the model is unsure.
    row("high-risk-and-low-confidence-is-urgent", dist(melanoma=0.35, melanocytic_nevi=0.30),
        HIGH, URGENT, "Top probability 35% is below 50%", [DO_URGENT, UNSURE, SPREAD]),
    row("high-risk-and-marginal-quality-is-urgent", dist(bcc=0.80), HIGH, URGENT,
        "Image quality is marginal: blur", [DO_URGENT, MARGINAL], quality=("blur",)),
    row("safety-net-and-abstain-is-urgent", dist(melanocytic_nevi=0.45, melanoma=0.25, bcc=0.10),
        HIGH, URGENT, "Top probability 45% is below 50%", [DO_URGENT, UNSURE]),
    # Boundaries: reaching a threshold counts.
    row("malignant-sum-exactly-at-threshold", dist(melanocytic_nevi=0.55, melanoma=0.15, bcc=0.15),
        HIGH, URGENT, "reach 30% (threshold 30%)", [DO_URGENT]),
    # 0.05 + 0.12 is one rounding step below 0.17 in floating point; it still reaches 17%.
    row("malignant-sum-at-threshold-despite-rounding", dist(melanocytic_nevi=0.75, melanoma=0.05, bcc=0.12),
        HIGH, URGENT, "threshold 17%", [DO_URGENT], thresholds=RiskThresholds(malignant_threshold=0.17)),
    row("confidence-exactly-at-minimum-is-confident", dist(eczema=0.50, tinea_fungal=0.50),
        MEDIUM, ROUTINE, "Eczema (50%)", [DO_ROUTINE]),
    # Thresholds are policy: changing them changes the outcome of the same probabilities.
    row("lower-malignant-threshold-escalates", dist(melanocytic_nevi=0.62, melanoma=0.20, bcc=0.09),
        HIGH, URGENT, "threshold 25%", [DO_URGENT], thresholds=RiskThresholds(malignant_threshold=0.25)),
    row("stricter-confidence-abstains", dist(eczema=0.88), MEDIUM, REVIEW, "Top probability 88% is below 95%",
        [UNSURE], thresholds=RiskThresholds(min_confidence=0.95)),
    row("stricter-entropy-abstains", dist(melanocytic_nevi=0.92), LOW, REVIEW, "is above 0.10", [SPREAD],
        thresholds=RiskThresholds(max_entropy=0.10)),
    row("looser-thresholds-stop-abstaining", dist(eczema=0.40, psoriasis_lichen_planus=0.30, tinea_fungal=0.30),
        MEDIUM, ROUTINE, "Eczema (40%)", [DO_ROUTINE], thresholds=RiskThresholds(min_confidence=0.40)),
    # An exact tie goes to the more severe class, whatever the slugs' alphabetical order.
    row("tie-melanoma-nevus-goes-to-melanoma", dist(melanoma=0.45, melanocytic_nevi=0.45),
        HIGH, URGENT, "Melanoma is malignant (45%)", [DO_URGENT, UNSURE],
        thresholds=RiskThresholds(malignant_threshold=0.50)),
]


# A model of another label set (PAD-UFES-20's six): actinic keratosis is pre-malignant, never routine
# and never urgent on that alone; SCC is malignant. The first advice says why the image is not routine.
PAD_POLICY = [
    row("confident-actinic-keratosis", pad(actinic_keratosis=0.90), MEDIUM, REVIEW,
        "Actinic keratosis / intraepithelial carcinoma is pre-malignant (90%): never routine", [PRECURSOR]),
    row("confident-scc", pad(scc=0.85), HIGH, URGENT, "Squamous cell carcinoma is malignant (85%)", [DO_URGENT]),
    row("confident-sek", pad(seborrheic_keratoses=0.90), LOW, ROUTINE, "is benign", [DO_ROUTINE]),
    # The pre-malignant safety net: a mole ranks first, yet pre-malignant + malignant reach the threshold.
    row("nevus-first-pre-malignant-and-malignant-reach", pad(melanocytic_nevi=0.62, actinic_keratosis=0.20,
                                                            melanoma=0.10),
        MEDIUM, REVIEW, "Pre-malignant and malignant classes together reach 35% (threshold 30%)", [PRECURSOR]),
    row("nevus-first-pre-malignant-and-malignant-below", pad(melanocytic_nevi=0.80, actinic_keratosis=0.10),
        LOW, ROUTINE, "malignant classes together 7%, with the pre-malignant 18%", [DO_ROUTINE]),
    row("pre-malignant-sum-exactly-at-threshold", pad(melanocytic_nevi=0.70, actinic_keratosis=0.26, bcc=0.04),
        MEDIUM, REVIEW, "reach 30% (threshold 30%)", [PRECURSOR]),
    row("lower-threshold-catches-a-smaller-pre-malignant-share", pad(melanocytic_nevi=0.80, actinic_keratosis=0.10),
        MEDIUM, REVIEW, "reach 18% (threshold 15%)", [PRECURSOR], thresholds=RiskThresholds(malignant_threshold=0.15)),
    # Urgent outranks: with enough malignant probability a pre-malignant top class is urgent.
    row("pre-malignant-first-malignant-sum-reaches", pad(actinic_keratosis=0.50, scc=0.25, melanoma=0.10),
        HIGH, URGENT, "Malignant classes together reach 40%", [DO_URGENT, SPREAD]),
    row("pre-malignant-and-unsure-is-review", pad(actinic_keratosis=0.40, seborrheic_keratoses=0.35),
        MEDIUM, REVIEW, "Top probability 40% is below 50%", [PRECURSOR, UNSURE, SPREAD]),
    row("pre-malignant-and-marginal-quality-is-review", pad(actinic_keratosis=0.90), MEDIUM, REVIEW,
        "Image quality is marginal: blur", [PRECURSOR, MARGINAL], quality=["blur"]),
    # An exact tie goes to the more severe class: pre-malignant before benign.
    row("tie-actinic-keratosis-sek-goes-to-actinic-keratosis", pad(actinic_keratosis=0.45, seborrheic_keratoses=0.45),
        MEDIUM, REVIEW, "Actinic keratosis / intraepithelial carcinoma is pre-malignant (45%)", [PRECURSOR, UNSURE]),
]


@pytest.mark.parametrize("probabilities, thresholds, quality, risk, priority, reason, advice", POLICY + PAD_POLICY)
def test_policy_table(probabilities, thresholds, quality, risk, priority, reason, advice):
    result = assess(probabilities, thresholds, quality)
    assert (result.risk_level, result.priority) == (risk, priority), result.reasons
    assert any(reason in r for r in result.reasons), result.reasons
    # The Kaggle ten and a PAD-UFES-20 model's six alike: every outcome leads with the advice for its
    # priority and its reasons, then names what to do about the top class.
    assert result.recommendations[:len(advice)] == advice
    top = BY_SLUG[result.top_class]
    assert f"{top.display_name}: {top.recommendation}" in result.recommendations[len(advice):]


def test_pre_malignant_advice_comes_with_the_unsure_models_advice():
    result = assess(pad(actinic_keratosis=0.40, seborrheic_keratoses=0.35), DEFAULT)
    assert result.recommendations[:2] == [PRE_MALIGNANT_ADVICE, UNSURE]
    assert "not routine" in PRE_MALIGNANT_ADVICE.lower()


# One reason for review at a time (and none): the advice is that reason's own, never another's.
ONE_REASON = [
    pytest.param(dist(melanocytic_nevi=0.999), (), DEFAULT, [DO_ROUTINE], id="none"),
    pytest.param(dist(melanocytic_nevi=0.999), ("min_side",), DEFAULT, [MARGINAL], id="marginal-quality-only"),
    pytest.param(dist(eczema=0.88), (), RiskThresholds(min_confidence=0.95), [UNSURE], id="low-confidence-only"),
    pytest.param(dist(melanocytic_nevi=0.92), (), RiskThresholds(max_entropy=0.10), [SPREAD], id="high-entropy-only"),
    pytest.param(pad(actinic_keratosis=0.90), (), DEFAULT, [PRECURSOR], id="pre-malignant-only"),
]


@pytest.mark.parametrize("probabilities, quality, thresholds, advice", ONE_REASON)
def test_each_reason_for_review_has_its_own_advice(probabilities, quality, thresholds, advice):
    result = assess(probabilities, thresholds, quality)
    review_advice = [r for r in result.recommendations if r in REVIEW_ADVICE.values() or r == DO_ROUTINE]
    assert review_advice == advice, result.recommendations


def test_a_confident_result_sent_to_review_for_its_photograph_is_not_called_unsure():
    """The issue's case: 99.9% sure, sent to review only because the resolution is marginal."""
    result = assess(dist(melanocytic_nevi=0.999), DEFAULT, ["min_side"])
    assert result.priority == REVIEW and result.confidence == pytest.approx(0.999)
    assert result.recommendations[0] == MARGINAL
    assert not any("not confident" in r for r in result.recommendations)


def test_the_advice_lines_differ_and_a_review_never_goes_without_one():
    assert len(set(REVIEW_ADVICE.values())) == len(REVIEW_ADVICE) == 4
    assert REVIEW not in PRIORITY_ADVICE  # a review's advice is its reasons'
    rng = random.Random(3)
    for _ in range(2000):
        labels = PAD_UFES_20 if rng.random() < 0.5 else KAGGLE
        weights = [rng.random() ** 4 for _ in labels]
        probabilities = {s: w / sum(weights) for s, w in zip(labels, weights)}
        result = assess(probabilities, DEFAULT, ["sharpness"] if rng.random() < 0.2 else ())
        if result.priority == REVIEW:
            assert result.recommendations[0] in REVIEW_ADVICE.values(), result.recommendations


@pytest.mark.parametrize("seed", range(3))
def test_a_pre_malignant_lesion_is_never_routine(seed):
    """Over many random outputs of the six-class model: whenever actinic keratosis ranks first, or it and
    the malignant classes together reach the threshold, the image is seen (review, or urgent)."""
    rng = random.Random(seed)
    for _ in range(2000):
        weights = [rng.random() ** 3 for _ in PAD_UFES_20]
        probabilities = {s: w / sum(weights) for s, w in zip(PAD_UFES_20, weights)}
        result = assess(probabilities, DEFAULT)
        neoplastic = sum(probabilities[s] for s in MALIGNANT_SLUGS + PRE_MALIGNANT_SLUGS if s in probabilities)
        if result.top_class in PRE_MALIGNANT_SLUGS or neoplastic >= DEFAULT.malignant_threshold:
            assert result.priority in (URGENT, REVIEW) and result.risk_level in (HIGH, MEDIUM), probabilities
        else:
            assert result.risk_level == LOW and result.priority in (ROUTINE, REVIEW)


def test_abstain_reasons_are_absent_when_confident():
    result = assess(dist(eczema=0.88), DEFAULT)
    assert not any("below" in r or "entropy" in r or "marginal" in r for r in result.reasons)


def test_entropy_exactly_at_maximum_is_not_above_it():
    probabilities = dist(eczema=0.50)
    entropy = normalised_entropy(probabilities)
    at_limit = RiskThresholds(max_entropy=entropy)
    assert assess(probabilities, at_limit).priority == ROUTINE
    just_under = RiskThresholds(max_entropy=entropy - 1e-6)
    assert assess(probabilities, just_under).priority == REVIEW


def test_confidence_just_below_minimum_abstains():
    result = assess(dist(eczema=0.499, tinea_fungal=0.4), DEFAULT)
    assert result.priority == REVIEW


def test_same_input_gives_equal_assessment():
    probabilities = dist(melanocytic_nevi=0.60, melanoma=0.20, bcc=0.12)
    first = assess(probabilities, DEFAULT, ["brightness"])
    second = assess(dict(probabilities), DEFAULT, ["brightness"])
    assert isinstance(first, Assessment) and first == second


@pytest.mark.parametrize("seed", range(5))
def test_dict_order_does_not_change_the_result(seed):
    probabilities = dist(eczema=0.3, tinea_fungal=0.3, psoriasis_lichen_planus=0.3)  # a three-way tie
    items = list(probabilities.items())
    random.Random(seed).shuffle(items)
    assert assess(dict(items), DEFAULT) == assess(probabilities, DEFAULT)


def test_tie_between_equal_severities_goes_to_the_first_slug():
    result = assess(dist(tinea_fungal=0.3, eczema=0.3, psoriasis_lichen_planus=0.3), DEFAULT)
    assert result.top_class == "eczema"
    assert [s for s, _ in result.top3] == ["eczema", "psoriasis_lichen_planus", "tinea_fungal"]


def test_assessment_reports_the_numbers_it_used():
    probabilities = dist(melanocytic_nevi=0.60, melanoma=0.20, bcc=0.12)
    result = assess(probabilities, DEFAULT)
    assert result.top_class == "melanocytic_nevi" and result.confidence == 0.60
    assert result.top3 == [("melanocytic_nevi", 0.60), ("melanoma", 0.20), ("bcc", 0.12)]
    assert result.malignant_probability == pytest.approx(0.32)
    assert result.entropy == pytest.approx(normalised_entropy(probabilities))


def test_recommendations_put_the_most_severe_plausible_class_first():
    result = assess(dist(melanocytic_nevi=0.60, melanoma=0.20, bcc=0.12), DEFAULT)
    names = [r.split(":")[0] for r in result.recommendations[1:]]
    assert names == ["Melanoma", "Basal cell carcinoma", "Melanocytic nevus"]


def test_recommendations_skip_implausible_runners_up():
    # Second and third place under 10% are not worth advice; the top class always is.
    result = assess(dist(eczema=0.88), DEFAULT)
    assert result.recommendations == [PRIORITY_ADVICE[ROUTINE],
                                      f"Eczema: {BY_SLUG['eczema'].recommendation}"]


def test_reshoot_assessment():
    failed = ["blur: Laplacian variance 12 < 100", "too dark"]
    priority, reasons, advice = reshoot_assessment(failed)
    assert priority == RESHOOT
    assert reasons == failed and reasons is not failed  # a copy: the caller's list stays its own
    assert advice == [PRIORITY_ADVICE[RESHOOT]]


def test_normalised_entropy_extremes():
    uniform = {s: 0.1 for s in KAGGLE}
    one_hot = {s: (1.0 if s == "eczema" else 0.0) for s in KAGGLE}
    assert normalised_entropy(uniform) == pytest.approx(1.0)
    assert normalised_entropy(one_hot) == 0.0
    two_way = dist(eczema=0.5, bcc=0.5)
    assert normalised_entropy(two_way) == pytest.approx(math.log(2) / math.log(10))


def test_thresholds_come_from_settings():
    settings = SimpleNamespace(malignant_threshold=0.2, min_confidence=0.6, max_entropy=0.7)
    thresholds = RiskThresholds.from_settings(settings)
    assert thresholds.as_dict() == {"malignant_threshold": 0.2, "min_confidence": 0.6, "max_entropy": 0.7}
