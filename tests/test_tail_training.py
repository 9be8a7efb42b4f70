"""The CPU recipe: the frozen body's output cached once, the head then the tail trained on it.

The tiny network runs the recipe in seconds (its body is one convolution); EfficientNet-Lite0 with
its real ImageNet weights runs it on generated photographs and is then served by a real worker, as
`DERMATRIAGE_MODEL_PATH` would name it; the real smartphone photographs, when present, check that it
learns to tell real lesions apart on patients it has never seen.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from model.card import ModelCard, card_path
from model.splits import read_split_csv
from harness import imagegen
from tests.labelled import KAGGLE_CLASSES, write_labelled_folder
from triage.imaging import decode_rgb
from triage.schema import Analysis, ImageStatus

SMARTPHONE = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "smartphone"


def tail_options(data, run_dir, **overrides):
    from model.train import TrainOptions

    fields = dict(data=data, run_dir=run_dir, backbone="tiny", recipe="tail", epochs=4, head_epochs=2,
                  views=2, batch_size=16, input_size=32, verbose=0)
    return TrainOptions(**{**fields, **overrides})


def test_head_first_then_the_tail_and_the_cache_is_reused_on_resume(tmp_path):
    import keras

    from model.checkpoints import RunState, read_log
    from model.train import train

    class InterruptInFourthEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                raise KeyboardInterrupt

    data = write_labelled_folder(tmp_path / "data", per_class=16)
    options = tail_options(data, tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(options, callbacks=[InterruptInFourthEpoch()])
    state_dir = tmp_path / "run" / "checkpoint"
    assert RunState.load(state_dir).epochs_done == 3
    cache = tmp_path / "run" / "cache" / "train.npy"
    train_rows = read_split_csv(tmp_path / "run" / "splits" / "train.csv")
    assert np.load(cache, mmap_mode="r").shape == (len(train_rows), 2, 8, 8, 16)  # conv1's output, two views
    written = cache.stat().st_mtime_ns
    head_only = keras.models.load_model(state_dir / "epoch-003.keras")
    assert {layer.name for layer in head_only.layers if layer.trainable_weights} == \
        {"conv2", "dense_512", "dense_256", "predictions"}  # stage two: the tail's conv joined the head

    result = train(options)
    assert result.epochs_run == [4]
    assert cache.stat().st_mtime_ns == written, "a resumed run recomputed the cache"
    log = read_log(tmp_path / "run" / "training_log.csv")
    assert [row["epoch"] for row in log] == [1, 2, 3, 4]
    assert [row["learning_rate"] for row in log[:2]] == pytest.approx([1e-3, 1e-3])
    assert log[2]["learning_rate"] == pytest.approx(1e-4)  # the tail joins at the lower rate
    card = result.card
    assert card.extra["training"]["recipe"] == "tail"
    assert "conv1" in card.extra["training"]["frozen"]


def test_views_are_plain_then_augmented_and_a_changed_body_recomputes(tmp_path):
    from model.preprocess import InputSpec
    from model.network import build_model
    from model.tail_training import cached_activations, split_at, view_batches

    data = write_labelled_folder(tmp_path / "data", per_class=3, classes=dict(list(KAGGLE_CLASSES.items())[:2]))
    paths = sorted(data.glob("*/*.png"))
    body, _ = split_at(build_model("tiny", 2, None, 32), "conv1")
    spec = InputSpec(32)
    cache = tmp_path / "cache" / "train.npy"
    views = cached_activations(body, paths, spec, 3, 7, cache, "tiny:a", 4, say=lambda _: None)
    plain = body(np.stack([spec.tensor(decode_rgb(p.read_bytes())) for p in paths])).numpy()
    np.testing.assert_allclose(views[:, 0], plain, rtol=1e-2, atol=1e-2)  # float16 on disk
    assert np.abs(views[:, 1].astype(np.float32) - plain).mean() > 1e-3
    assert np.abs(views[:, 2].astype(np.float32) - views[:, 1].astype(np.float32)).mean() > 1e-3
    assert json.loads(cache.with_suffix(".json").read_text())["body"] == "tiny:a"
    written = cache.stat().st_mtime_ns
    cached_activations(body, paths, spec, 3, 7, cache, "tiny:b", 4, say=lambda _: None)
    assert cache.stat().st_mtime_ns != written and json.loads(cache.with_suffix(".json").read_text())["body"] == "tiny:b"

    labels = np.arange(len(paths)) % 2
    batches = view_batches(views, labels, np.ones(len(paths), np.float32), 4, seed=1)
    seen = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(seen.tolist()) == sorted(labels.tolist())  # every image once per epoch
    again = view_batches(views, labels, np.ones(len(paths), np.float32), 4, seed=1, first_epoch=0)
    np.testing.assert_array_equal(batches[0][0], again[0][0])  # a resumed run sees the same epoch


def test_a_card_whose_scaling_does_not_fit_its_backbone_is_refused(tmp_path):
    from model.demo import build_demo_model
    from model.loader import load_classifier

    path = tmp_path / "tiny.keras"
    build_demo_model(path, backbone="tiny")
    fields = json.loads(card_path(path).read_text())
    card_path(path).write_text(json.dumps({**fields, "preprocessing": "efficientnet_lite"}))
    with pytest.raises(ValueError, match="does not fit"):
        load_classifier(path)
    card_path(path).write_text(json.dumps({**fields, "architecture": "efficientnet-b7"}))
    with pytest.raises(ValueError, match="does not know"):
        load_classifier(path)


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """Lite0 from its ImageNet weights, trained by the default recipe on a small generated set."""
    from model.train import TrainOptions, train

    base = tmp_path_factory.mktemp("lite0")
    data = write_labelled_folder(base / "data", per_class=14, side=96,
                                 classes=dict(list(KAGGLE_CLASSES.items())[:3]))
    options = TrainOptions(data=data, run_dir=base / "run", backbone="efficientnet-lite0", epochs=3,
                           head_epochs=1, views=2, verbose=0)
    return data, train(options)


@pytest.mark.slow
def test_lite0_trains_with_its_body_frozen_and_its_card_names_its_scaling(lite0_run):
    from model.backbone_weights import resolve_backbone_weights
    from model.gradcam import GradCam
    from model.loader import load_classifier
    from model.network import build_model

    data, result = lite0_run
    card = result.card
    assert (card.architecture, card.preprocessing, card.input_size) == ("efficientnet-lite0", "efficientnet_lite", 224)
    assert card.extra["training"]["recipe"] == "tail" and "block5c_add" in card.extra["training"]["frozen"]
    classifier = load_classifier(result.exported[0])
    imagenet = build_model("efficientnet-lite0", 3, str(resolve_backbone_weights("efficientnet-lite0", None)))
    for name, changed in (("block5c_project_conv", False), ("block6a_expand_conv", True), ("head_conv", True)):
        same = all(np.array_equal(a, b) for a, b in zip(classifier.model.get_layer(name).get_weights(),
                                                         imagenet.get_layer(name).get_weights()))
        assert same != changed, f"{name} should {'' if changed else 'not '}have been trained"
    for name in ("block6a_bn", "head_bn"):  # batch normalisation keeps ImageNet's statistics
        for a, b in zip(classifier.model.get_layer(name).get_weights(), imagenet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    batch = np.stack([classifier.input_spec.tensor(decode_rgb(p.read_bytes()))
                      for p in sorted(data.glob("*/img_000.png"))])
    assert batch.min() >= -1.0 and batch.max() <= 1.0  # (x - 127) / 128, not caffe's means
    probs, heatmaps = GradCam(classifier).explain(batch)
    assert GradCam(classifier).layer_name == "head_activation"
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert len(heatmaps) == 3 and all(png.startswith(b"\x89PNG") for png in heatmaps)


@pytest.mark.slow
def test_a_trained_lite0_model_is_served_by_the_worker_with_nothing_else_changed(make_stack, sqlite_url, lite0_run):
    _, result = lite0_run
    stack = make_stack(sqlite_url, model_path=result.exported[0])
    batch_id = stack.upload([(imagegen.jpeg(seed), f"lite0/{seed}.jpg") for seed in (1, 2)]).get_json()["batch_id"]
    stack.start_worker()
    assert sorted(stack.wait_final(batch_id).values()) == [ImageStatus.ANALYSED] * 2
    with stack.db.session() as s:
        analyses = s.scalars(select(Analysis)).all()
    assert {a.model_version for a in analyses} == {result.card.model_version}
    assert all(set(a.probabilities) == set(result.card.labels) for a in analyses)
    assert all(a.heatmap_key for a in analyses)


@pytest.mark.slow
@pytest.mark.skipif(not (SMARTPHONE / "labels.csv").exists(),
                    reason=f"the real smartphone photographs are not at {SMARTPHONE} (shared/calibration, never "
                           f"copied into the repository)")
def test_lite0_learns_real_lesions_on_patients_it_has_never_seen(tmp_path):
    """PAD-UFES-20's 158 smartphone photographs, split by patient: well above chance (1/6).

    The test split holds only 16 photographs, so one photograph moves balanced accuracy by up to a third of a
    class; runs of the same seed have measured 0.31 to 0.76 (threads sum floats in varying order). So the
    bars: accuracy twice chance, balanced accuracy one and a half times chance (a network that answers one
    class whatever it is shown scores 1/5 or 1/6 there), and top-3 above its chance of 1/2.
    """
    from model.evaluate import main as evaluate
    from model.train import TrainOptions, train

    result = train(TrainOptions(data=SMARTPHONE, run_dir=tmp_path / "run", backbone="efficientnet-lite0",
                                verbose=0))
    train_patients = {r.path.split("_")[1] for r in read_split_csv(tmp_path / "run" / "splits" / "train.csv")}
    test_rows = read_split_csv(tmp_path / "run" / "splits" / "test.csv")
    assert not train_patients & {r.path.split("_")[1] for r in test_rows}
    evaluate([str(tmp_path / "run"), "--split", "test"])
    metrics = ModelCard.load(result.exported[0]).extra["test"]
    chance = 1 / len(result.card.labels)
    assert metrics["accuracy"] >= 2 * chance, metrics
    assert metrics["balanced_accuracy"] >= 1.5 * chance, metrics
    assert metrics["top3_accuracy"] > 0.5, metrics  # chance is 3/6
