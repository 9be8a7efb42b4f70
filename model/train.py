"""Train a classifier the way the reference was trained, reproducibly, and export what the worker loads.

    python -m model.train DATA [--run-dir var/runs/NAME] [--epochs 9] [--augment] ...

DATA is the Kaggle "Skin Diseases Image Dataset" as downloaded (class folders with numbers and
counts in their names, possibly inside one wrapper folder) or any folder-per-class tree whose folder
names are catalogue classes. The run folder receives the split CSVs, the per-epoch log, the
checkpoints a resumed run continues from, and the exported best epoch with its model card:

    RUN/config.json              what this run is (a resumed run must match it)
    RUN/dataset.json             classes, counts, split sizes, near-duplicate groups, unreadable files
    RUN/splits/{train,val,test}.csv
    RUN/training_log.csv         loss, accuracy, validation loss and accuracy, learning rate per epoch
    RUN/checkpoint/              state.json, the last epoch (with optimizer) and the best weights
    RUN/h5/best_resnet152.h5     + best_resnet152.card.json
    RUN/keras/best_resnet152.keras + best_resnet152.card.json

The recipe is the reference's: ResNet152 from ImageNet weights, all but the last 50 layers frozen, the
DERMOSAN head, Adam 1e-3, sparse categorical cross-entropy, balanced class weights, batch 32, 9 epochs,
ReduceLROnPlateau(val_loss, 0.2, 2, 1e-6). Two departures, both fixes: the epoch exported is the one
with the lowest validation loss (the reference exported the last epoch under the name "best"), and the
split keeps near-duplicate images together.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbone_weights import WeightsError, resolve_backbone_weights
from .card import ModelCard, file_sha256
from .dataset import DatasetError, LabelledFolder, scan_labelled_folder
from .export import FORMATS, export_model, exported_path
from .preprocess import INPUT_SIZE
from .splits import NEAR_DUPLICATE_BITS, SEED, Split, csv_digests, make_split, split_csvs, write_split_csvs

EPOCHS = 9
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
MIN_CALIBRATION_IMAGES = 50
PLATEAU = {"monitor": "val_loss", "factor": 0.2, "patience": 2, "min_lr": 1e-6}
# Settings that define a run: resuming with any of them changed would splice two different runs.
IDENTITY = ("backbone", "backbone_weights_sha256", "seed", "batch_size", "learning_rate", "input_size",
            "augment", "mixed_precision", "near_duplicate_bits", "labels", "split_sha256")


class RunMismatch(ValueError):
    pass


@dataclass
class TrainOptions:
    data: Path
    run_dir: Path | None = None  # default var/runs/<backbone>-seed<seed>
    backbone: str = "resnet152"
    weights: str | None = None  # None/'imagenet': the Keras cache file; 'none'; or a path
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    seed: int = SEED
    input_size: int = INPUT_SIZE
    augment: bool = False
    mixed_precision: bool = False
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS
    version: str | None = None
    restart: bool = False
    verbose: int = 1  # 1: a progress bar per epoch; 2: one line per epoch; 0: silent

    def __post_init__(self):
        self.data = Path(self.data)
        if self.run_dir is None:
            data_dir = Path(os.environ.get("DERMATRIAGE_DATA_DIR") or "var")  # where the system keeps its files
            self.run_dir = data_dir / "runs" / f"{self.backbone}-seed{self.seed}"
        self.run_dir = Path(self.run_dir)


@dataclass
class TrainResult:
    run_dir: Path
    exported: list[Path]
    card: ModelCard
    epochs_run: list[int] = field(default_factory=list)  # epochs trained by this call (1-based)


def train(options: TrainOptions, callbacks=()) -> TrainResult:
    say = _printer(options.verbose)
    # First, before reading a single image: a missing ImageNet file must stop the run at once.
    backbone_weights = resolve_backbone_weights(options.backbone, options.weights)
    run = options.run_dir
    run.mkdir(parents=True, exist_ok=True)
    if options.restart:
        shutil.rmtree(run / "checkpoint", ignore_errors=True)
        (run / "training_log.csv").unlink(missing_ok=True)

    folder = scan_labelled_folder(options.data.resolve())  # absolute: the run records where its images are
    say(f"{len(folder.images)} images in {len(folder.labels)} classes under {folder.root}")
    split = make_split(folder, options.seed, options.near_duplicate_bits, run / "phash.csv", progress=say)
    config = _run_config(options, folder, backbone_weights, csv_digests(split_csvs(split)))
    state_dir = run / "checkpoint"
    state_dir.mkdir(exist_ok=True)
    # Checked before anything of the earlier run is overwritten.
    _check_same_run(run / "config.json", config, resuming=(state_dir / "state.json").exists())
    write_split_csvs(split, run / "splits")
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    dataset_summary = {"root": str(folder.root), "folders": folder.folders, "ignored_files": folder.ignored_files,
                       **split.summary()}
    (run / "dataset.json").write_text(json.dumps(dataset_summary, indent=2) + "\n")
    _require_every_class_in(split, ("train", "val"))
    say(f"split: {dataset_summary['per_split']}; near-duplicate groups: {dataset_summary['near_duplicates']}")

    from .checkpoints import EpochCheckpoint, RunState, read_log

    state = RunState.load(state_dir) or RunState()
    model, keras = _model_for(options, folder.labels, backbone_weights, state, state_dir)
    index = {label: i for i, label in enumerate(folder.labels)}
    train_rows, val_rows = split.rows_in("train"), split.rows_in("val")
    train_y = [index[r.label] for r in train_rows]
    class_weight = balanced_class_weights(train_y, len(folder.labels))

    from .inputs import image_dataset

    train_ds = image_dataset([folder.root / r.path for r in train_rows], train_y, options.input_size,
                             options.batch_size, shuffle_seed=options.seed,
                             augment_seed=options.seed if options.augment else None)
    val_ds = image_dataset([folder.root / r.path for r in val_rows], [index[r.label] for r in val_rows],
                           options.input_size, options.batch_size)
    plateau = keras.callbacks.ReduceLROnPlateau(**PLATEAU, verbose=1 if options.verbose else 0)
    checkpoint = EpochCheckpoint(state_dir, run / "training_log.csv", state, plateau)
    first = state.epochs_done
    if first < options.epochs:
        if first:
            say(f"resuming after epoch {first} (best so far: epoch {state.best_epoch})")
        model.fit(train_ds, validation_data=val_ds, epochs=options.epochs, initial_epoch=first,
                  class_weight={i: w for i, w in enumerate(class_weight)},
                  callbacks=[plateau, checkpoint, *callbacks], verbose=options.verbose,
                  shuffle=False)  # the dataset shuffles itself, with the run's seed
    state = checkpoint.state
    if not state.best_weights:
        raise RuntimeError("no epoch finished with a finite validation loss; nothing to export")
    if first == state.epochs_done and _already_exported(run, options.backbone, state):
        # Run again after it finished: the exports (and any test metrics in their cards) stay as they are.
        say(f"{run} finished earlier (epoch {state.best_epoch} exported); nothing to do")
        exported = [exported_path(run, options.backbone, fmt) for fmt in FORMATS]
        return TrainResult(run, exported, ModelCard.load(exported[0]), [])

    log = read_log(run / "training_log.csv")
    card, model = _best_model_and_card(options, folder, split, val_rows, index, state, state_dir, config,
                                       dataset_summary, class_weight, log, keras)
    exported = export_model(model, run, card)
    for path in exported:
        say(f"exported {path} (best epoch {state.best_epoch}, temperature {card.temperature})")
    return TrainResult(run, exported, ModelCard.load(exported[0]), list(range(first + 1, state.epochs_done + 1)))


def _already_exported(run: Path, backbone: str, state) -> bool:
    for fmt in FORMATS:
        path = exported_path(run, backbone, fmt)
        try:
            card = ModelCard.load(path)
        except (FileNotFoundError, ValueError):
            return False
        if card.weights_sha256 != file_sha256(path) or \
                card.extra.get("training", {}).get("best_epoch") != state.best_epoch or \
                card.extra.get("training", {}).get("epochs") != state.epochs_done:
            return False
    return True


def balanced_class_weights(labels: list[int], num_classes: int) -> list[float]:
    """n / (classes x count): each class carries the same total weight, as scikit-learn's 'balanced'."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    return [float(len(labels) / (num_classes * c)) if c else 0.0 for c in counts]


def _model_for(options: TrainOptions, labels, backbone_weights, state, state_dir: Path):
    from .loader import configure_tensorflow

    tf = configure_tensorflow()
    import keras

    keras.utils.set_random_seed(options.seed)
    policy = "float32"
    if options.mixed_precision:
        if tf.config.list_physical_devices("GPU"):
            policy = "mixed_float16"
        else:
            print("warning: --mixed-precision needs a GPU; training in float32", file=sys.stderr)
    keras.mixed_precision.set_global_policy(policy)
    if state.epochs_done:
        # The whole model with its optimizer state (Adam's moments, the step count) and compile settings.
        model = keras.models.load_model(state_dir / state.checkpoint)
        model.optimizer.learning_rate = state.learning_rate
        return model, keras
    from .network import build_model

    model = build_model(options.backbone, len(labels), str(backbone_weights) if backbone_weights else None,
                        options.input_size)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, keras


def _best_model_and_card(options, folder: LabelledFolder, split: Split, val_rows, index, state, state_dir,
                         config, dataset_summary, class_weight, log, keras):
    """The best epoch's weights in a fresh float32 network (whatever precision training used), its
    temperature fitted on the validation split, and the card that will travel with it."""
    from .inputs import predict_probabilities
    from .loader import apply_temperature
    from .metrics import classification_report, fit_temperature
    from .network import build_model

    keras.mixed_precision.set_global_policy("float32")
    model = build_model(options.backbone, len(folder.labels), None, options.input_size)
    model.load_weights(state_dir / state.best_weights)
    val_y = np.array([index[r.label] for r in val_rows])
    raw = predict_probabilities(model, [folder.root / r.path for r in val_rows], options.input_size,
                                options.batch_size)
    # On a handful of images, or with no mistake to learn from (the NLL then falls forever as T -> 0),
    # a fitted temperature is noise; the card keeps T = 1 and says why.
    fit = len(val_y) >= MIN_CALIBRATION_IMAGES and (raw.argmax(axis=1) != val_y).any()
    temperature = fit_temperature(raw, val_y) if fit else 1.0
    before, after = classification_report(raw, val_y, list(folder.labels)), \
        classification_report(apply_temperature(raw, temperature), val_y, list(folder.labels))
    best_row = next((row for row in log if row["epoch"] == state.best_epoch), {})
    import tensorflow as tf

    extra = {
        "dataset": dataset_summary,
        "split_sha256": config["split_sha256"],
        "training": {
            **{k: config[k] for k in ("backbone", "backbone_weights", "backbone_weights_sha256", "seed",
                                      "batch_size", "learning_rate", "input_size", "augment", "mixed_precision")},
            "epochs": state.epochs_done,
            "best_epoch": state.best_epoch,
            "selected_by": "lowest validation loss",
            "frozen": "all but the last 50 backbone layers" if options.backbone == "resnet152" else "none",
            "optimizer": "Adam", "loss": "sparse_categorical_crossentropy",
            "lr_schedule": "ReduceLROnPlateau(val_loss, factor 0.2, patience 2, min_lr 1e-6)",
            "class_weights": dict(zip(folder.labels, class_weight)),
            "tensorflow": tf.__version__, "keras": keras.__version__,
        },
        "metrics": {
            "best_epoch": best_row,
            "validation": _headline(after),
        },
        "calibration": {"temperature": temperature, "images": int(len(val_y)),
                        "fit_on": "validation" if fit else "not fitted: too few validation images or no errors",
                        "ece_before": before["ece"], "ece_after": after["ece"],
                        "nll_before": before["nll"], "nll_after": after["nll"]},
    }
    weights_note = ("ImageNet backbone" if config["backbone_weights"] != "none"
                    else "random initialisation (no ImageNet weights)")
    card = ModelCard(labels=list(folder.labels), version=options.version or options.run_dir.name,
                     weights_sha256="", trained=True, architecture=options.backbone,
                     input_size=options.input_size, temperature=temperature,
                     notes=(f"Trained by model.train from {weights_note} on {dataset_summary['per_split']['train']} "
                            f"images; epoch {state.best_epoch} of {state.epochs_done} (lowest validation loss). "
                            f"Temperature: {extra['calibration']['fit_on']}."),
                     extra=extra)
    return card, model


def _headline(report: dict) -> dict:
    keys = ("images", "accuracy", "balanced_accuracy", "top3_accuracy", "macro_f1", "nll", "ece")
    return {k: report[k] for k in keys} | {"recall": {k: v["recall"] for k, v in report["per_class"].items()}}


def _run_config(options: TrainOptions, folder: LabelledFolder, backbone_weights: Path | None,
                split_sha256: dict[str, str]) -> dict:
    return {
        "data": str(folder.root),
        "backbone": options.backbone,
        "backbone_weights": backbone_weights.name if backbone_weights else "none",
        "backbone_weights_sha256": file_sha256(backbone_weights) if backbone_weights else "",
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
        "input_size": options.input_size,
        "augment": options.augment,
        "mixed_precision": options.mixed_precision,
        "near_duplicate_bits": options.near_duplicate_bits,
        "labels": list(folder.labels),
        "split_sha256": split_sha256,
    }


def _check_same_run(path: Path, config: dict, resuming: bool) -> None:
    if not resuming or not path.exists():
        return
    old = json.loads(path.read_text())
    changed = [key for key in IDENTITY if old.get(key) != config[key]]
    if changed:
        raise RunMismatch(f"{path.parent} holds a run with other settings ({', '.join(changed)} changed; the data "
                          f"itself if split_sha256 changed). Resume with the same settings, choose another "
                          f"--run-dir, or start this one again with --restart.")


def _require_every_class_in(split: Split, names: tuple[str, ...]) -> None:
    for name in names:
        missing = sorted(set(split.labels) - {row.label for row in split.rows_in(name)})
        if missing:
            raise DatasetError(f"the {name} split has no images of {', '.join(missing)}: each class needs "
                               f"at least ten images (more if many are near-duplicates).")


def _printer(verbose: int):
    def say(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)
    return say


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="dataset folder: one folder per class (Kaggle names accepted)")
    parser.add_argument("--run-dir", type=Path, help="folder for this run (default "
                        "$DERMATRIAGE_DATA_DIR/runs/<backbone>-seed<seed>, DERMATRIAGE_DATA_DIR defaulting to var)")
    parser.add_argument("--backbone", choices=("resnet152", "tiny"), default="resnet152",
                        help="'tiny' is a small stand-in network for tests and quick trials")
    parser.add_argument("--weights", default=None,
                        help="backbone weights: 'imagenet' (default for resnet152: the local Keras cache file "
                             "~/.keras/models/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5), a path to "
                             "that file, or 'none' for random initialisation. Never downloaded.")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=SEED, help="split, shuffling and initialisation seed")
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE)
    parser.add_argument("--augment", action="store_true", help="random flips, rotation (±36°) and zoom (±15%%)")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute on a GPU")
    parser.add_argument("--near-duplicate-bits", type=int, default=NEAR_DUPLICATE_BITS,
                        help="images whose perceptual hashes differ in at most this many bits stay in one split")
    parser.add_argument("--version", help="model version written to the card (default: the run folder's name)")
    parser.add_argument("--restart", action="store_true", help="discard this run's checkpoints and start over")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    args = parser.parse_args(argv)
    options = TrainOptions(data=args.data, run_dir=args.run_dir, backbone=args.backbone, weights=args.weights,
                           epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                           seed=args.seed, input_size=args.input_size, augment=args.augment,
                           mixed_precision=args.mixed_precision, near_duplicate_bits=args.near_duplicate_bits,
                           version=args.version, restart=args.restart, verbose=2 if args.quiet else 1)
    try:
        result = train(options)
    except (WeightsError, DatasetError, RunMismatch) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"done: {', '.join(str(p) for p in result.exported)}")
    print(f"evaluate with: python -m model.evaluate {result.run_dir}")


if __name__ == "__main__":
    main()
