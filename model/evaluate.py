"""Evaluate a model file with its card on a labelled set, and write a report a clinician can read.

    python -m model.evaluate RUN                       # the run's test split, its exported .h5
    python -m model.evaluate RUN --split val --format keras
    python -m model.evaluate --model FILE --folder DIR --out DIR [--calibrate-on DIR [--save-temperature]]

The model is loaded by the worker's own loader (card, label order and SHA-256 checked), and images go
through the worker's decoding and preprocessing. Reported: accuracy, balanced accuracy, top-3
accuracy, per-class precision, recall (sensitivity), specificity and F1 with 95% intervals, the
melanoma and BCC sensitivities, what the deployed risk policy does with malignant lesions, the
confusion matrix, and calibration (ECE, NLL) before and after temperature scaling. Evaluating a run's
test split also records the headline numbers in the run's model cards.

Output folder: report.md (links everything), metrics.json, predictions.csv, confusion_matrix.png,
reliability.png and, for a run, training_curves.png.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.catalogue import MALIGNANT_SLUGS
from triage.risk import REVIEW, ROUTINE, URGENT, RiskThresholds, assess

from .card import ModelCard, card_path, file_sha256
from .dataset import DatasetError, scan_labelled_folder
from .export import FORMATS, exported_path
from .loader import apply_temperature
from .metrics import classification_report, fit_temperature, reliability_bins, wilson_interval

# What the reference paper reported (DERMOSAN): accuracy only, on an image-level split.
REFERENCE_PAPER = {"train_accuracy": 0.95, "val_accuracy": 0.83, "test_accuracy": 0.923, "test_images": 2723}


@dataclass
class LabelledSet:
    name: str  # "test split of RUN", "folder DIR"
    paths: list[Path]
    names: list[str]  # as shown in predictions.csv (relative paths)
    labels: list[str]


def evaluate(model_path: Path, images: LabelledSet, out: Path, *, calibration: LabelledSet | None = None,
             training_log: Path | None = None, split_sha256: dict[str, str] | None = None,
             batch_size: int = 32, verbose: int = 0) -> dict:
    """Everything in the report, as a dict (also written to out/metrics.json)."""
    from .loader import load_classifier

    classifier = load_classifier(model_path)
    card = classifier.card
    labels = list(card.labels)
    y = _indices(images, labels)
    raw = _probabilities(classifier, images, batch_size, verbose)
    if calibration is not None:
        temperature = fit_temperature(_probabilities(classifier, calibration, batch_size, verbose),
                                      _indices(calibration, labels))
        temperature_source = f"fitted here on {calibration.name} ({len(calibration.paths)} images)"
    else:
        temperature = card.temperature
        fit_on = card.extra.get("calibration", {}).get("fit_on", "source not recorded")
        temperature_source = f"from the model card ({fit_on})"
    calibrated = apply_temperature(raw, temperature)
    report = classification_report(calibrated, y, labels)
    uncalibrated = classification_report(raw, y, labels)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "model": {"file": str(model_path), "version": classifier.version, "architecture": card.architecture,
                  "trained": card.trained, "labels": labels, "input_size": card.input_size,
                  "weights_sha256": card.weights_sha256, "split_recorded": bool(card.extra.get("split_sha256"))},
        "evaluated_on": {"name": images.name, "images": len(images.paths),
                         "per_class": {label: int((y == i).sum()) for i, label in enumerate(labels)},
                         "split_sha256": split_sha256 or {},
                         "split_matches_card": _split_matches_card(card, split_sha256)},
        "metrics": report,
        "malignant_sensitivity": {slug: {"recall": report["per_class"][slug]["recall"],
                                         "ci95": report["per_class"][slug]["recall_ci95"],
                                         "support": report["per_class"][slug]["support"]}
                                  for slug in MALIGNANT_SLUGS if slug in labels},
        "triage": triage_outcomes(calibrated, y, labels, RiskThresholds()),
        "calibration": {"temperature": temperature, "source": temperature_source,
                        "ece_before": uncalibrated["ece"], "ece_after": report["ece"],
                        "nll_before": uncalibrated["nll"], "nll_after": report["nll"],
                        "bins_before": reliability_bins(raw, y), "bins_after": reliability_bins(calibrated, y)},
        "training": card.extra.get("training", {}),
        "reference_paper": REFERENCE_PAPER,
    }
    from .figures import confusion_matrix_png, reliability_png, training_curves_png

    curves = {"Before temperature scaling (T = 1)": results["calibration"]["bins_before"],
              f"After temperature scaling (T = {temperature:g})": results["calibration"]["bins_after"]}
    figures = {"confusion_matrix": confusion_matrix_png(np.array(report["confusion_matrix"]), labels,
                                                        out / "confusion_matrix.png").name,
               "reliability": reliability_png(curves, out / "reliability.png").name}
    if training_log is not None and training_log.exists():
        from .checkpoints import read_log

        log = read_log(training_log)
        results["training_log"] = log
        figures["training_curves"] = training_curves_png(log, card.extra.get("training", {}).get("best_epoch"),
                                                         out / "training_curves.png").name
    results["figures"] = figures
    _write_predictions(out / "predictions.csv", images, labels, y, calibrated)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    from .report import write_report

    write_report(out / "report.md", results)
    return results


def triage_outcomes(probs: np.ndarray, y: np.ndarray, labels: list[str], thresholds: RiskThresholds) -> dict:
    """What the worker's risk policy does with each image: the clinical operating point.

    A malignant lesion must come out `urgent`; one that comes out `routine` is the miss that matters.
    """
    priorities = [assess(dict(zip(labels, map(float, row))), thresholds).priority for row in probs]
    priorities = np.array(priorities)
    malignant = np.isin(np.array(labels)[y], MALIGNANT_SLUGS)
    urgent = priorities == URGENT
    caught, positives = int((urgent & malignant).sum()), int(malignant.sum())
    cleared, negatives = int((~urgent & ~malignant).sum()), int((~malignant).sum())
    return {
        "thresholds": thresholds.as_dict(),
        "malignant_images": positives,
        "urgent_sensitivity": caught / positives if positives else None,
        "urgent_sensitivity_ci95": list(wilson_interval(caught, positives)),
        "urgent_specificity": cleared / negatives if negatives else None,
        "urgent_specificity_ci95": list(wilson_interval(cleared, negatives)),
        "malignant_sent_to_routine": int((malignant & (priorities == ROUTINE)).sum()),
        "malignant_sent_to_review": int((malignant & (priorities == REVIEW)).sum()),
        "share": {p: float((priorities == p).mean()) if len(priorities) else 0.0 for p in (URGENT, REVIEW, ROUTINE)},
    }


def _indices(images: LabelledSet, labels: list[str]) -> np.ndarray:
    unknown = sorted(set(images.labels) - set(labels))
    if unknown:
        raise DatasetError(f"{images.name} holds classes the model does not know: {', '.join(unknown)} "
                           f"(its card lists {', '.join(labels)}).")
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[label] for label in images.labels], dtype=np.int64)


def _probabilities(classifier, images: LabelledSet, batch_size: int, verbose: int) -> np.ndarray:
    from .inputs import predict_probabilities

    # The network's own output; the temperature is applied here, once, so both sides can be reported.
    return predict_probabilities(classifier.model, images.paths, classifier.input_spec, batch_size, verbose)


def _split_matches_card(card: ModelCard, split_sha256: dict[str, str] | None) -> bool | None:
    recorded = card.extra.get("split_sha256")
    if not split_sha256 or not recorded:
        return None
    return all(recorded.get(name) == digest for name, digest in split_sha256.items())


def _write_predictions(path: Path, images: LabelledSet, labels: list[str], y: np.ndarray, probs: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "predicted", "confidence", *labels])
        for name, truth, row in zip(images.names, y, probs):
            writer.writerow([name, labels[truth], labels[int(row.argmax())], f"{row.max():.6f}",
                             *(f"{p:.6f}" for p in row)])


# --- where the images come from -----------------------------------------------------------------

def run_split(run_dir: Path, split: str = "test", data: Path | None = None) -> tuple[LabelledSet, dict[str, str]]:
    from .splits import read_split_csv

    config = json.loads((run_dir / "config.json").read_text())
    root = Path(data) if data else Path(config["data"])
    csv_path = run_dir / "splits" / f"{split}.csv"
    rows = read_split_csv(csv_path)
    missing = [r.path for r in rows if not (root / r.path).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} images of {csv_path} are not under {root} (first: {missing[0]}); "
                           f"pass --data with the dataset's current location.")
    digests = {f"{name}.csv": hashlib.sha256((run_dir / "splits" / f"{name}.csv").read_bytes()).hexdigest()
               for name in ("train", "val", "test")}
    return LabelledSet(f"the {split} split of {run_dir}", [root / r.path for r in rows], [r.path for r in rows],
                       [r.label for r in rows]), digests


def folder_set(folder: Path) -> LabelledSet:
    found = scan_labelled_folder(folder)
    return LabelledSet(f"folder {found.root}", [found.absolute(i) for i in found.images],
                       [i.path for i in found.images], [i.label for i in found.images])


def record_in_cards(files: list[Path], key: str, value: dict) -> list[Path]:
    """Add `value` under card.extra[key] for each file whose card still matches it."""
    written = []
    for path in files:
        if not path.exists() or not card_path(path).exists():
            continue
        card = ModelCard.load(path)
        if card.weights_sha256 != file_sha256(path):
            continue
        card.extra[key] = value
        written.append(card.save(path))
    return written


def headline(results: dict) -> dict:
    m = results["metrics"]
    return {"images": m["images"], "accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"],
            "balanced_accuracy": m["balanced_accuracy"], "top3_accuracy": m["top3_accuracy"],
            "macro_f1": m["macro_f1"],
            "sensitivity": {slug: v["recall"] for slug, v in results["malignant_sensitivity"].items()},
            "urgent_sensitivity": results["triage"]["urgent_sensitivity"],
            "ece_before": results["calibration"]["ece_before"], "ece_after": results["calibration"]["ece_after"],
            "evaluated_on": results["evaluated_on"]["name"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate",
                                     description="Evaluate a model (with its card) and write a report.")
    parser.add_argument("run", type=Path, nargs="?", help="a training run folder (model.train --run-dir)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--format", choices=FORMATS, default="h5", help="which of the run's exported files")
    parser.add_argument("--data", type=Path, help="the dataset's location, if it moved since training")
    parser.add_argument("--model", type=Path, help="a weights file with its card (instead of a run's export)")
    parser.add_argument("--folder", type=Path, help="a labelled folder to evaluate on (instead of a run's split)")
    parser.add_argument("--calibrate-on", type=Path, help="a labelled folder to fit the temperature on "
                                                           "(default: use the card's temperature)")
    parser.add_argument("--save-temperature", action="store_true",
                        help="write the temperature fitted with --calibrate-on into the model's card")
    parser.add_argument("--out", type=Path, help="report folder (default RUN/report-<split>)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.run is None and (args.model is None or args.folder is None):
        parser.error("give a run folder, or --model and --folder")
    if args.save_temperature and not args.calibrate_on:
        parser.error("--save-temperature needs --calibrate-on")
    try:
        results, out = _run_cli(args)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    summary = headline(results)
    print(json.dumps(summary, indent=2))
    print(f"report: {out / 'report.md'}")


def _run_cli(args) -> tuple[dict, Path]:
    split_sha256, training_log, run_files = None, None, []
    if args.run is not None:
        config = json.loads((args.run / "config.json").read_text())
        run_files = [exported_path(args.run, config["backbone"], fmt) for fmt in FORMATS]
        model = args.model or exported_path(args.run, config["backbone"], args.format)
        images, split_sha256 = (folder_set(args.folder), None) if args.folder else \
            run_split(args.run, args.split, args.data)
        training_log = args.run / "training_log.csv"
        out = args.out or args.run / f"report-{args.split if not args.folder else args.folder.name}"
    else:
        model, images = args.model, folder_set(args.folder)
        out = args.out or model.parent / f"report-{args.folder.name}"
    calibration = folder_set(args.calibrate_on) if args.calibrate_on else None
    results = evaluate(model, images, out, calibration=calibration, training_log=training_log,
                       split_sha256=split_sha256, batch_size=args.batch_size, verbose=1)
    if args.run is not None and not args.folder and args.split == "test" \
            and Path(model).resolve() in [p.resolve() for p in run_files]:
        for path in record_in_cards(run_files, "test", headline(results)):
            print(f"recorded the test metrics in {path}", file=sys.stderr)
    if args.save_temperature:
        card = ModelCard.load(model)
        card.temperature = results["calibration"]["temperature"]
        card.extra["calibration"] = {k: results["calibration"][k] for k in
                                     ("temperature", "source", "ece_before", "ece_after", "nll_before", "nll_after")}
        print(f"wrote temperature {card.temperature} into {card.save(model)}", file=sys.stderr)
    return results, out


if __name__ == "__main__":
    main()
