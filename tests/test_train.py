"""Training: it learns, it exports the best epoch as files the worker loads, it resumes, and it never
downloads anything. A tiny backbone on generated images keeps this fast; one slow test runs the real
ResNet152 architecture (random weights) through the same path."""
from __future__ import annotations

import hashlib
import io
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.backbone_weights import IMAGENET_FILE, MissingWeights, WeightsError, resolve_backbone_weights
from model.card import ModelCard, file_sha256
from model.preprocess import InputSpec, preprocess_rgb
from model.splits import read_split_csv
from model.train import RunMismatch, TrainOptions, balanced_class_weights, train
from harness.imagegen import encode
from tests.labelled import KAGGLE_CLASSES, TINY_EPOCHS, TINY_INPUT, picture, trained_tiny_run, write_labelled_folder
from tests.support import ROOT
from triage.imaging import decode_rgb



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_tiny_run(tmp_path_factory)


def worker_batch(paths: list[Path], size: int) -> np.ndarray:
    """What the worker feeds the network: decode_rgb, then preprocess_rgb."""
    return np.stack([preprocess_rgb(decode_rgb(p.read_bytes()), size) for p in paths])


def test_loss_falls_and_accuracy_beats_chance(trained):
    from model.checkpoints import read_log
    from model.loader import load_classifier

    data, result = trained
    log = read_log(result.run_dir / "training_log.csv")
    assert [row["epoch"] for row in log] == list(range(1, TINY_EPOCHS + 1))
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert all(row["learning_rate"] == pytest.approx(1e-3) and row["seconds"] > 0 for row in log)
    classifier = load_classifier(result.exported[0])
    rows = read_split_csv(result.run_dir / "splits" / "test.csv")
    probs = classifier.predict(worker_batch([data / r.path for r in rows], classifier.input_size))
    predicted = [classifier.labels[i] for i in probs.argmax(axis=1)]
    accuracy = np.mean([p == r.label for p, r in zip(predicted, rows)])
    # Four classes, two of them indistinguishable: chance is 25%, the best possible about 75%.
    assert accuracy > 0.55


def test_both_exported_files_load_in_the_worker_and_classify(trained):
    from model.gradcam import GradCam
    from model.loader import load_classifier

    data, result = trained
    h5, keras_file = result.exported
    assert (h5.name, keras_file.name) == ("best_tiny.h5", "best_tiny.keras")
    assert h5.parent != keras_file.parent, "each file needs its own card under the same stem"
    cards = [ModelCard.load(h5), ModelCard.load(keras_file)]
    assert [c.weights_sha256 for c in cards] == [file_sha256(h5), file_sha256(keras_file)]
    classifiers = [load_classifier(h5), load_classifier(keras_file)]
    batch = worker_batch(sorted(data.glob("*/img_00[0-3].png")), TINY_INPUT)
    outputs = [c.predict(batch) for c in classifiers]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[0].sum(axis=1), 1.0, atol=1e-5)
    for classifier in classifiers:
        assert classifier.labels == ["eczema", "melanoma", "bcc", "melanocytic_nevi"]
        assert classifier.trained is True
        assert classifier.input_size == TINY_INPUT
        assert classifier.version.startswith("run@")
    probs, heatmaps = GradCam(classifiers[0]).explain(batch)
    assert len(heatmaps) == len(batch) and all(png.startswith(b"\x89PNG") for png in heatmaps)


def test_card_records_dataset_split_hashes_training_and_calibration(trained):
    from model.checkpoints import read_log

    data, result = trained
    card, run = result.card, result.run_dir
    extra = card.extra
    assert extra["split_sha256"] == {name: hashlib.sha256((run / "splits" / name).read_bytes()).hexdigest()
                                     for name in ("train.csv", "val.csv", "test.csv")}
    dataset = extra["dataset"]
    assert dataset["root"] == str(data)
    assert dataset["folders"]["melanoma"] == "2. Melanoma 15.75k"
    assert sum(dataset["per_split"].values()) == dataset["images"] == len(list(data.glob("*/*")))
    assert dataset["near_duplicates"]["images_in_shared_groups"] == 4 * 4 * 3
    log = read_log(run / "training_log.csv")
    training = extra["training"]
    assert training["best_epoch"] == 1 + int(np.argmin([row["val_loss"] for row in log]))
    assert training["epochs"] == TINY_EPOCHS and training["seed"] == 42 and training["backbone_weights"] == "none"
    assert extra["metrics"]["best_epoch"] == log[training["best_epoch"] - 1]
    # Balanced weights: every class carries the same total weight in the loss.
    train_rows = read_split_csv(run / "splits" / "train.csv")
    for label, weight in training["class_weights"].items():
        count = sum(r.label == label for r in train_rows)
        assert weight * count == pytest.approx(len(train_rows) / 4)
    calibration = extra["calibration"]
    assert calibration["fit_on"] == "validation" and calibration["images"] >= 50
    # The look-alike pair makes the network over-confident: a temperature above 1 must help.
    assert card.temperature == calibration["temperature"] > 1.0
    assert calibration["nll_after"] < calibration["nll_before"]
    assert calibration["ece_after"] < calibration["ece_before"]


def test_the_exported_weights_are_those_of_the_best_epoch(trained):
    import keras

    from model.checkpoints import RunState
    from model.loader import load_classifier
    from model.network import build_model

    _, result = trained
    state = RunState.load(result.run_dir / "checkpoint")
    assert result.card.extra["training"]["best_epoch"] == state.best_epoch
    best = build_model("tiny", 4, None, TINY_INPUT)
    best.load_weights(result.run_dir / "checkpoint" / state.best_weights)
    exported = load_classifier(result.exported[1]).model
    for got, want in zip(exported.get_weights(), best.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    last = keras.models.load_model(result.run_dir / "checkpoint" / state.checkpoint)
    same_as_last = all(np.array_equal(a, b) for a, b in zip(exported.get_weights(), last.get_weights()))
    assert same_as_last == (state.best_epoch == state.epochs_done)


def test_epoch_checkpoint_keeps_the_lowest_validation_loss_not_the_last(tmp_path):
    import keras

    from model.checkpoints import EpochCheckpoint, RunState, read_log
    from model.network import build_model

    model = build_model("tiny", 3, None, 32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=2, min_lr=1e-6)
    checkpoint = EpochCheckpoint(tmp_path, tmp_path / "log.csv", RunState(), plateau)
    for callback in (plateau, checkpoint):
        callback.set_model(model)
        callback.on_train_begin()
    snapshots = []
    for epoch, val_loss in enumerate([0.5, 0.3, 0.4, 0.45]):
        model.set_weights([w + epoch for w in model.get_weights()])  # each epoch's weights differ
        snapshots.append(model.get_weights())
        logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": val_loss, "val_accuracy": 0.5}
        checkpoint.on_epoch_begin(epoch)
        plateau.on_epoch_end(epoch, logs)
        checkpoint.on_epoch_end(epoch, logs)
    state = RunState.load(tmp_path)
    assert (state.epochs_done, state.best_epoch, state.best_val_loss) == (4, 2, 0.3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-epoch-002.weights.h5", "epoch-004.keras",
                                                          "log.csv", "state.json"]
    # Two epochs without improvement: the scheduler cut the rate, and the state remembers it.
    assert state.learning_rate == pytest.approx(2e-4)
    assert state.plateau == {"wait": 0, "best": 0.3, "cooldown_counter": 0}
    assert [row["epoch"] for row in read_log(tmp_path / "log.csv")] == [1, 2, 3, 4]
    model.load_weights(tmp_path / "best-epoch-002.weights.h5")
    for got, want in zip(model.get_weights(), snapshots[1]):
        np.testing.assert_array_equal(got, want)


def test_an_interrupted_run_resumes_from_its_last_complete_epoch(tmp_path):
    import keras

    from model.checkpoints import RunState, read_log

    class InterruptInSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                raise KeyboardInterrupt

    data = write_labelled_folder(tmp_path / "data", per_class=12)
    options = TrainOptions(data=data, run_dir=tmp_path / "run", backbone="tiny", epochs=3, batch_size=8,
                           input_size=32, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train(options, callbacks=[InterruptInSecondEpoch()])
    state_dir = tmp_path / "run" / "checkpoint"
    assert RunState.load(state_dir).epochs_done == 1
    first_epoch = read_log(tmp_path / "run" / "training_log.csv")
    assert [row["epoch"] for row in first_epoch] == [1]

    result = train(options)
    assert result.epochs_run == [2, 3]
    log = read_log(tmp_path / "run" / "training_log.csv")
    assert [row["epoch"] for row in log] == [1, 2, 3]
    assert log[0] == first_epoch[0]
    state = RunState.load(state_dir)
    # The optimizer continued where it stopped: its step count covers three epochs, not two or four.
    steps = math.ceil(len(read_split_csv(tmp_path / "run" / "splits" / "train.csv")) / 8)
    resumed = keras.models.load_model(state_dir / state.checkpoint)
    assert int(resumed.optimizer.iterations.numpy()) == 3 * steps

    # Run again once finished: nothing trains and the exported files stay as they are.
    digests = [file_sha256(path) for path in result.exported]
    again = train(options)
    assert again.epochs_run == [] and [file_sha256(path) for path in again.exported] == digests

    # Resuming with other settings would splice two runs together: refused, unless started over.
    with pytest.raises(RunMismatch, match="learning_rate"):
        train(replace(options, learning_rate=0.01))
    split_files = {p.name: p.read_bytes() for p in (tmp_path / "run" / "splits").iterdir()}
    (data / "2. Melanoma 15.75k" / "new.png").write_bytes(encode(picture(777, (60, 60, 200), 64), "PNG"))
    with pytest.raises(RunMismatch, match="split_sha256"):
        train(options)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "splits").iterdir()} == split_files
    assert train(replace(options, learning_rate=0.01, epochs=1, restart=True)).epochs_run == [1]


def test_balanced_class_weights():
    assert balanced_class_weights([0, 0, 0, 1], 2) == pytest.approx([4 / 6, 2.0])
    assert balanced_class_weights([0, 1, 2, 2], 3) == pytest.approx([4 / 3, 4 / 3, 2 / 3])


# --- the input pipeline ------------------------------------------------------------------------

def test_the_input_pipeline_decodes_and_preprocesses_as_the_worker_does(tmp_path):
    from model.inputs import image_dataset

    rgb = np.concatenate([picture(1, (200, 60, 60), 40), picture(2, (60, 60, 200), 40)], axis=1)  # 40 x 80
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the camera says "rotate 90 degrees clockwise"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif)
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(buf.getvalue())
    plain = tmp_path / "plain.png"
    plain.write_bytes(encode(rgb, "PNG"))
    (x, y), = image_dataset([rotated, plain], [3, 1], InputSpec(32), batch_size=2).as_numpy_iterator()
    assert y.tolist() == [3, 1]
    np.testing.assert_allclose(x[0], preprocess_rgb(decode_rgb(rotated.read_bytes()), 32), atol=1e-4)
    np.testing.assert_allclose(x[1], preprocess_rgb(rgb, 32), atol=1e-4)
    ignoring_orientation = preprocess_rgb(np.asarray(Image.open(rotated).convert("RGB")), 32)
    assert np.abs(x[0] - ignoring_orientation).mean() > 10


def test_augmentation_changes_pixels_but_not_shapes_or_labels(tmp_path):
    from model.inputs import image_dataset

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode(picture(i, (200, 60, 60), 48), "PNG"))
    (plain, y1), = image_dataset(paths, [0, 1, 2, 3], InputSpec(48), 4).as_numpy_iterator()
    (augmented, y2), = image_dataset(paths, [0, 1, 2, 3], InputSpec(48), 4, augment_seed=1).as_numpy_iterator()
    assert augmented.shape == plain.shape and np.isfinite(augmented).all()
    assert y1.tolist() == y2.tolist() == [0, 1, 2, 3]
    assert np.abs(augmented - plain).mean() > 1


# --- ImageNet weights: a local file or nothing -------------------------------------------------

def test_missing_imagenet_weights_stop_at_once_naming_the_file_and_where_it_goes(tmp_path):
    code = ("import sys\nfrom model.train import main\n"
            "try:\n    main([sys.argv[1], '--run-dir', sys.argv[2]])\n"
            "except SystemExit as exc:\n    print(exc.code)\n"
            "print('tensorflow imported:', 'tensorflow' in sys.modules)\n")
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras-home")}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-such-dataset"), str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    expected = tmp_path / "keras-home" / "models" / IMAGENET_FILE
    assert f"Place the file {IMAGENET_FILE} at\n  {expected}" in done.stdout
    assert "never downloads" in done.stdout and "--weights none" in done.stdout
    # It stopped before reading the dataset (which does not exist) and before TensorFlow was loaded.
    assert "tensorflow imported: False" in done.stdout
    assert not (tmp_path / "run").exists()


def test_a_damaged_imagenet_file_in_the_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / IMAGENET_FILE).write_bytes(b"half a download")
    with pytest.raises(MissingWeights, match="MD5"):
        resolve_backbone_weights("resnet152", None)


def test_backbone_weight_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert resolve_backbone_weights("resnet152", "none") is None
    assert resolve_backbone_weights("tiny", None) is None
    own = tmp_path / "my_backbone.h5"
    own.write_bytes(b"x")
    assert resolve_backbone_weights("resnet152", str(own)) == own  # a path is taken as given
    with pytest.raises(MissingWeights, match="does not exist"):
        resolve_backbone_weights("resnet152", str(tmp_path / "nothing.h5"))
    with pytest.raises(WeightsError, match="tiny backbone"):
        resolve_backbone_weights("tiny", "imagenet")
    with pytest.raises(MissingWeights, match=IMAGENET_FILE):
        resolve_backbone_weights("resnet152", "imagenet")


# --- the real architecture ---------------------------------------------------------------------

@pytest.mark.slow
def test_resnet152_trains_exports_and_loads_in_the_worker(tmp_path, monkeypatch):
    import keras.src.utils.file_utils as file_utils

    from model.loader import load_classifier

    def no_download(*args, **kwargs):
        raise AssertionError("training tried to download something")

    monkeypatch.setattr(file_utils, "get_file", no_download)
    classes = dict(list(KAGGLE_CLASSES.items())[:2])
    data = write_labelled_folder(tmp_path / "data", per_class=10, classes=classes)
    # 128 px rather than 224 keeps this under a minute on two cores; the architecture is the same
    # (the worker's slow tests run ResNet152 at 224).
    result = train(TrainOptions(data=data, run_dir=tmp_path / "run", backbone="resnet152", weights="none",
                                epochs=1, batch_size=16, input_size=128, verbose=0))
    card = result.card
    assert card.architecture == "resnet152" and card.input_size == 128
    assert card.labels == ["eczema", "melanoma"]
    assert card.extra["training"]["frozen"] == "all but the last 50 backbone layers"
    assert "random initialisation" in card.notes
    classifier = load_classifier(result.exported[0])  # the .h5, as DERMATRIAGE_MODEL_PATH would name it
    # The reference froze all but the last 50 layers; the exported file keeps that, for fine-tuning.
    assert not classifier.model.get_layer("conv1_conv").trainable
    assert classifier.model.get_layer("conv5_block3_3_conv").trainable
    probs = classifier.predict(worker_batch(sorted(data.glob("*/img_00[01].png")), classifier.input_size))
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
