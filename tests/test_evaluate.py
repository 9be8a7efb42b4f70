"""Evaluation: the metrics are right on hand-checked examples, calibration helps when it should, the
triage operating point is reported, and a run's report links figures that exist."""
from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest

from model.card import ModelCard, card_path
from model.loader import apply_temperature
from model.metrics import (classification_report, confusion_matrix, expected_calibration_error, fit_temperature,
                           negative_log_likelihood, per_class_scores, reliability_bins, top_k_accuracy,
                           wilson_interval)
from tests.labelled import LOOKALIKE_CLASSES, trained_tiny_run, write_labelled_folder
from triage.risk import RiskThresholds


# --- metrics on hand-checked examples -----------------------------------------------------------

def test_confusion_matrix_and_per_class_scores():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 1])
    matrix = confusion_matrix(y_true, y_pred, 3)
    assert matrix.tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    scores = per_class_scores(matrix)
    np.testing.assert_allclose(scores["precision"], [2 / 3, 1 / 3, 0.0])  # class 2 never predicted: 0, not NaN
    np.testing.assert_allclose(scores["recall"], [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(scores["f1"], [2 / 3, 0.4, 0.0])
    # Specificity of class 0: of the 3 images that are not class 0, 2 were not called class 0.
    np.testing.assert_allclose(scores["specificity"], [2 / 3, 2 / 4, 1.0])
    assert scores["support"].tolist() == [3, 2, 1]


def test_classification_report_headline_numbers():
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3],
                      [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.6, 0.3]])
    y = np.array([0, 0, 0, 1, 1, 2])
    report = classification_report(probs, y, ["eczema", "melanoma", "bcc"])
    assert report["accuracy"] == pytest.approx(3 / 6)
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert report["top3_accuracy"] == 1.0
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)
    assert report["per_class"]["melanoma"]["predicted"] == 3
    lo, hi = report["per_class"]["eczema"]["recall_ci95"]
    assert lo < 2 / 3 < hi


def test_top_k_accuracy():
    probs = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    y = np.array([2, 0, 3])
    assert top_k_accuracy(probs, y, 1) == 0.0
    assert top_k_accuracy(probs, y, 3) == pytest.approx(1 / 3)  # the all-tied row's top 3 are 0, 1, 2
    assert top_k_accuracy(probs, y, 4) == 1.0


def test_wilson_interval_known_values():
    # Known values for 95%: 0 of 10 -> [0, 0.2775]; 8 of 10 -> [0.4902, 0.9433].
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_expected_calibration_error_by_hand():
    # Two images at confidence 0.9 (one right), two at 0.6 (both right):
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)
    bins = [b for b in reliability_bins(probs, y) if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]


def test_fit_temperature_recovers_an_over_confident_models_temperature():
    rng = np.random.RandomState(0)
    logits = rng.normal(0, 2, (4000, 5))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in truth])
    over_confident = apply_temperature(truth, 1 / 2.5)  # as if the logits were 2.5 times too large
    temperature = fit_temperature(over_confident, y)
    assert temperature == pytest.approx(2.5, rel=0.1)
    calibrated = apply_temperature(over_confident, temperature)
    assert negative_log_likelihood(calibrated, y) < negative_log_likelihood(over_confident, y)
    assert expected_calibration_error(calibrated, y) < 0.5 * expected_calibration_error(over_confident, y)
    assert (calibrated.argmax(axis=1) == over_confident.argmax(axis=1)).all()


# --- the triage operating point -----------------------------------------------------------------

def test_triage_outcomes_count_malignant_lesions_sent_to_routine():
    from model.evaluate import triage_outcomes

    labels = ["melanoma", "melanocytic_nevi", "bcc"]
    probs = np.array([
        [0.90, 0.05, 0.05],  # melanoma, called melanoma: urgent
        [0.05, 0.90, 0.05],  # melanoma, called a mole with confidence: routine (the miss)
        [0.20, 0.55, 0.25],  # bcc: malignant classes sum to 45% -> urgent although a mole ranks first
        [0.02, 0.96, 0.02],  # nevus: routine
        [0.40, 0.45, 0.15],  # nevus: 55% malignant -> urgent (a false alarm)
    ])
    y = np.array([0, 0, 2, 1, 1])
    outcome = triage_outcomes(probs, y, labels, RiskThresholds())
    assert outcome["malignant_images"] == 3
    assert outcome["urgent_sensitivity"] == pytest.approx(2 / 3)
    assert outcome["urgent_specificity"] == pytest.approx(1 / 2)
    assert outcome["malignant_sent_to_routine"] == 1
    assert outcome["share"]["urgent"] == pytest.approx(3 / 5)


# --- a run's report -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from model.evaluate import main

    data, result = trained_tiny_run(tmp_path_factory)
    main([str(result.run_dir)])
    return data, result, result.run_dir / "report-test"


def test_run_report_has_every_number_and_links_figures_that_exist(evaluated):
    _, result, out = evaluated
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(links) == ["confusion_matrix.png", "reliability.png", "training_curves.png"]
    for name in links:
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
    for phrase in ("Accuracy", "Balanced accuracy", "Top-3 accuracy", "Sensitivity for Melanoma",
                   "Sensitivity for Basal cell carcinoma", "Expected calibration error", "specificity",
                   "Malignant sent to routine", "92.3%", "Decision support only"):
        assert phrase in report, phrase
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"]["split_matches_card"] is True
    assert set(metrics["malignant_sensitivity"]) == {"melanoma", "bcc"}
    assert metrics["calibration"]["temperature"] == result.card.temperature
    assert len(metrics["training_log"]) == 3


def test_run_report_numbers_match_the_predictions_file(evaluated):
    from model.splits import read_split_csv

    _, result, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    lines = (out / "predictions.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    test_rows = read_split_csv(result.run_dir / "splits" / "test.csv")
    assert [r[0] for r in rows] == [r.path for r in test_rows]
    assert [r[1] for r in rows] == [r.label for r in test_rows]
    accuracy = np.mean([r[1] == r[2] for r in rows])
    assert metrics["metrics"]["accuracy"] == pytest.approx(accuracy)
    matrix = np.array(metrics["metrics"]["confusion_matrix"])
    assert matrix.sum() == len(rows) == metrics["metrics"]["images"]
    labels = header[4:]
    assert labels == result.card.labels
    melanoma = labels.index("melanoma")
    assert metrics["malignant_sensitivity"]["melanoma"]["recall"] == pytest.approx(
        matrix[melanoma, melanoma] / matrix[melanoma].sum())


def test_evaluating_the_test_split_records_it_in_both_cards(evaluated):
    from model.loader import load_classifier

    _, result, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    for path in result.exported:
        card = ModelCard.load(path)
        assert card.extra["test"]["accuracy"] == metrics["metrics"]["accuracy"]
        assert card.extra["test"]["sensitivity"]["melanoma"] == metrics["malignant_sensitivity"]["melanoma"]["recall"]
        load_classifier(path)  # the card still matches its file


def test_any_labelled_folder_with_a_calibration_folder(evaluated, tmp_path):
    from model.evaluate import main
    from model.loader import load_classifier

    data, result, _ = evaluated
    # A copy of the model and its card: --save-temperature below must not touch the shared run.
    model = tmp_path / result.exported[1].name
    for source in (result.exported[1], card_path(result.exported[1])):
        shutil.copy(source, tmp_path / source.name)
    before = ModelCard.load(model).temperature
    # Calibrated on other pictures of the same classes than those evaluated.
    other = write_labelled_folder(tmp_path / "calibration" / "IMG_CLASSES", per_class=12,
                                  classes=LOOKALIKE_CLASSES, seed=5)
    out = tmp_path / "report"
    main(["--model", str(model), "--folder", str(data), "--calibrate-on", str(other), "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"]["images"] == len(list(data.glob("*/*")))
    assert f"fitted here on folder {other} ({len(list(other.glob('*/*')))} images)" == metrics["calibration"]["source"]
    fitted = metrics["calibration"]["temperature"]
    assert fitted > 0 and fitted != before
    assert "training_curves" not in metrics["figures"]
    assert ModelCard.load(model).temperature == before, "the card changes only with --save-temperature"

    main(["--model", str(model), "--folder", str(data), "--calibrate-on", str(other), "--save-temperature",
          "--out", str(tmp_path / "saved")])
    assert ModelCard.load(model).temperature == pytest.approx(fitted)
    load_classifier(model)  # the card still matches its file


def test_a_folder_with_classes_the_model_does_not_know_is_refused(evaluated, tmp_path):
    from model.evaluate import main
    from tests.labelled import write_labelled_folder

    _, result, _ = evaluated
    write_labelled_folder(tmp_path / "other", per_class=2, classes={"9. Tinea Ringworm Candidiasis and other "
                                                                    "Fungal Infections - 1.7k": (90, 90, 90)})
    with pytest.raises(SystemExit, match="tinea_fungal"):
        main(["--model", str(result.exported[0]), "--folder", str(tmp_path / "other"), "--out", str(tmp_path / "r")])
