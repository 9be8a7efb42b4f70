"""The evaluation report as one Markdown file that links its figures: readable on GitHub, in an
editor, or converted to PDF, with nothing fetched from the network."""
from __future__ import annotations

from pathlib import Path

from triage.catalogue import BY_SLUG, DISCLAIMER, MALIGNANT_SLUGS, UNTRAINED_WARNING


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(bounds) -> str:
    return f"{100 * bounds[0]:.1f}–{100 * bounds[1]:.1f}%"


def _name(slug: str) -> str:
    return BY_SLUG[slug].display_name if slug in BY_SLUG else slug


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def write_report(path: Path, results: dict) -> Path:
    model, data, m = results["model"], results["evaluated_on"], results["metrics"]
    cal, triage, figures = results["calibration"], results["triage"], results["figures"]
    labels = model["labels"]
    lines = [f"# Evaluation of {model['version']}", "", f"> {DISCLAIMER}", ""]
    if not model["trained"]:
        lines += [f"> **{UNTRAINED_WARNING}**", ""]
    if not model["split_recorded"]:
        lines += ["> **Note:** this model's card does not record the split it was trained on (the published "
                  "reference model's does not), so some of these images may have been in its training set; "
                  "its figures here may be optimistic.", ""]
    if data["split_matches_card"] is False:
        lines += ["> **Warning:** the split files differ from those recorded in the model card: these images "
                  "may include images the model was trained on.", ""]
    lines += [f"Model file `{model['file']}` ({model['architecture']}, input {model['input_size']} px, "
              f"SHA-256 `{model['weights_sha256'][:16]}…`), evaluated on {data['name']}: "
              f"**{data['images']} images**.", ""]

    lines += ["## Headline", ""]
    rows = [["Accuracy", f"{_pct(m['accuracy'])} (95% CI {_ci(m['accuracy_ci95'])})"],
            ["Balanced accuracy (mean sensitivity over classes)", _pct(m["balanced_accuracy"])],
            ["Top-3 accuracy", _pct(m["top3_accuracy"])],
            ["Macro F1 / weighted F1", f"{m['macro_f1']:.3f} / {m['weighted_f1']:.3f}"]]
    for slug, s in results["malignant_sensitivity"].items():
        rows.append([f"Sensitivity for {_name(slug)}", f"{_pct(s['recall'])} (95% CI {_ci(s['ci95'])}, "
                                                       f"{s['support']} images)"])
    rows += [["Expected calibration error, before / after temperature scaling",
              f"{cal['ece_before']:.3f} / {cal['ece_after']:.3f} (T = {cal['temperature']:g})"],
             ["Negative log-likelihood, before / after", f"{cal['nll_before']:.3f} / {cal['nll_after']:.3f}"]]
    lines += _table(["measure", "value"], rows)

    ref = results["reference_paper"]
    lines += ["### Compared with the reference paper", "",
              f"The DERMOSAN paper reported {_pct(ref['train_accuracy'])} training, {_pct(ref['val_accuracy'])} "
              f"validation and {_pct(ref['test_accuracy'])} test accuracy ({ref['test_images']} test images), and no "
              "precision, recall, F1 or calibration. Its split was image-level, so several photographs of one "
              "lesion could sit on both sides of it; this evaluation's split keeps near-duplicate images "
              "together, so its accuracy is expected to be lower and is the more honest figure.", ""]

    lines += ["## Per class", ""]
    rows = []
    for slug in labels:
        c = m["per_class"][slug]
        precision = _pct(c["precision"]) if c["predicted"] else "n/a (never predicted)"
        rows.append([_name(slug), c["support"], c["predicted"], precision,
                     f"{_pct(c['recall'])} ({_ci(c['recall_ci95'])})", _pct(c["specificity"]), f"{c['f1']:.3f}"])
    lines += _table(["class", "images", "predicted", "precision", "sensitivity (95% CI)", "specificity", "F1"], rows)

    lines += ["## What the triage policy does with these images", "",
              "The worker's risk policy (thresholds: " + ", ".join(f"{k} {v}" for k, v in triage["thresholds"].items())
              + ") applied to the calibrated probabilities. A malignant lesion ("
              + ", ".join(_name(slug) for slug in MALIGNANT_SLUGS if slug in m["per_class"]) + ") should come out "
              "**urgent**; one that comes out routine is the miss that matters.", ""]
    lines += _table(["measure", "value"], [
        ["Malignant images", triage["malignant_images"]],
        ["Malignant → urgent (sensitivity)", f"{_pct(triage['urgent_sensitivity'])} "
                                             f"(95% CI {_ci(triage['urgent_sensitivity_ci95'])})"],
        ["Non-malignant → not urgent (specificity)", f"{_pct(triage['urgent_specificity'])} "
                                                     f"(95% CI {_ci(triage['urgent_specificity_ci95'])})"],
        ["Malignant sent to review (model unsure)", triage["malignant_sent_to_review"]],
        ["**Malignant sent to routine**", f"**{triage['malignant_sent_to_routine']}**"],
        ["Share urgent / review / routine", " / ".join(_pct(v) for v in triage["share"].values())],
    ])

    lines += ["## Confusion matrix", "", f"![Confusion matrix]({figures['confusion_matrix']})", "",
              "Rows are the true class, columns the prediction; colour is the share of the true class.", ""]
    lines += ["Most frequent confusions:", ""]
    matrix = m["confusion_matrix"]
    confusions = sorted(((matrix[i][j], labels[i], labels[j]) for i in range(len(labels))
                         for j in range(len(labels)) if i != j and matrix[i][j]), reverse=True)[:5]
    lines += [f"- {n} × {_name(t)} taken for {_name(p)}" for n, t, p in confusions] or ["- none"]
    lines += [""]

    lines += ["## Calibration", "", f"![Reliability diagram]({figures['reliability']})", "",
              f"Temperature {cal['temperature']:g}, {cal['source']}. A well-calibrated model is right 80% of the "
              "time when it says 80%; the expected calibration error is the average gap (15 equal-width bins). "
              "Temperature scaling changes the confidence, never the ranking of the classes.", ""]

    if "training_curves" in figures:
        training = results.get("training", {})
        lines += ["## Training", "", f"![Loss, accuracy and learning rate per epoch]({figures['training_curves']})",
                  "", f"Exported: epoch {training.get('best_epoch')} of {training.get('epochs')}, the one with the "
                      "lowest validation loss.", ""]
        lines += _table(["epoch", "loss", "accuracy", "val loss", "val accuracy", "learning rate"],
                        [[r["epoch"], f"{r['loss']:.4f}", _pct(r["accuracy"]), f"{r['val_loss']:.4f}",
                          _pct(r["val_accuracy"]), f"{r['learning_rate']:.2g}"] for r in results["training_log"]])

    lines += ["## Caveats", "",
              "- In the Kaggle dataset, melanoma, nevus, BKL and BCC images are dermoscopic and the other classes "
              "clinical photographs: acquisition type alone separates those groups, and performance on photographs "
              "from another clinic, camera or population will differ.",
              "- Intervals are 95% Wilson intervals for proportions; small classes have wide ones.",
              "- Files: `metrics.json` (every number above), `predictions.csv` (one row per image).", ""]
    path.write_text("\n".join(lines))
    return path
