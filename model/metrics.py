"""Classification and calibration metrics in plain NumPy: what a clinician asks of a classifier.

Accuracy alone (all the reference paper reported) hides a model that never finds the rare cancer;
per-class sensitivity, precision and specificity with confidence intervals, and calibration, do not.
"""
from __future__ import annotations

import math

import numpy as np

from .loader import apply_temperature

ECE_BINS = 15
Z_95 = 1.959964


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _ratio(num, den):
    # A class never predicted has no precision; reported as 0 (as scikit-learn does), not NaN.
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    negatives = matrix.sum() - support
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    return {
        "support": support,
        "precision": precision,
        "recall": recall,  # = sensitivity
        "specificity": _ratio(negatives - (predicted - tp), negatives),
        "f1": _ratio(2 * precision * recall, precision + recall),
    }


def top_k_accuracy(probs: np.ndarray, y_true: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    # A stable sort on the negated scores: ties go to the lower index, the same rule as argmax.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(axis=1).mean())


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """95% interval for a proportion that stays inside [0, 1] and is honest for small counts
    (a test set holds only a few hundred melanomas)."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def negative_log_likelihood(probs: np.ndarray, y_true: np.ndarray) -> float:
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of top-class confidence: how often the model is right when it says p."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds (edge_i, edge_i+1]; a confidence of exactly 0 can only come from an empty row.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        inside = index == i
        n = int(inside.sum())
        out.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": n,
                    "confidence": float(confidence[inside].mean()) if n else None,
                    "accuracy": float(correct[inside].mean()) if n else None})
    return out


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    total = len(y_true)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, y_true, bins) if b["count"]))


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature that minimises the negative log-likelihood (Guo et al., 2017).

    The NLL is convex in 1/T, so it has one minimum along log T, and a golden-section search finds
    it without an optimiser library.
    """
    if len(y_true) == 0:
        return 1.0
    y_true = np.asarray(y_true)

    def loss(log_t: float) -> float:
        return negative_log_likelihood(apply_temperature(probs, math.exp(log_t)), y_true)

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > 1e-5:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return round(math.exp((a + b) / 2), 4)


def classification_report(probs: np.ndarray, y_true: np.ndarray, labels: list[str]) -> dict:
    """Every headline and per-class number, JSON-ready."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    scores = per_class_scores(matrix)
    correct = int(np.trace(matrix))
    present = scores["support"] > 0
    per_class = {}
    for i, label in enumerate(labels):
        support = int(scores["support"][i])
        per_class[label] = {
            "support": support,
            "predicted": int(matrix[:, i].sum()),
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "recall_ci95": list(wilson_interval(int(matrix[i, i]), support)),
            "specificity": float(scores["specificity"][i]),
            "f1": float(scores["f1"][i]),
        }
    weights = scores["support"] / max(scores["support"].sum(), 1)
    return {
        "images": int(len(y_true)),
        "accuracy": correct / len(y_true) if len(y_true) else 0.0,
        "accuracy_ci95": list(wilson_interval(correct, len(y_true))),
        # Mean recall over the classes present: chance level is 1 / classes whatever the class sizes.
        "balanced_accuracy": float(scores["recall"][present].mean()) if present.any() else 0.0,
        "top3_accuracy": top_k_accuracy(probs, y_true, 3),
        "macro_precision": float(scores["precision"][present].mean()) if present.any() else 0.0,
        "macro_recall": float(scores["recall"][present].mean()) if present.any() else 0.0,
        "macro_f1": float(scores["f1"][present].mean()) if present.any() else 0.0,
        "weighted_f1": float((scores["f1"] * weights).sum()),
        "nll": negative_log_likelihood(probs, y_true),
        "ece": expected_calibration_error(probs, y_true),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }
