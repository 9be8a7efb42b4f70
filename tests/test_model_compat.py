"""Inference is compatible with the published reference model, and the loader guards its label order.

The published `best_resnet152.h5` cannot be downloaded here, so the slow tests write a file built the
same way (Keras 2 API through tf_keras, the DERMOSAN head, compiled, `model.save` to HDF5) and check
that our Keras-3 loader gives the same probabilities as Keras 2 itself, under the reference label
order. The quick tests use tiny networks for everything that does not need the real architecture.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from model.card import ModelCard, card_path, file_sha256, main as card_main
from model.demo import build_demo_model
from model.loader import apply_temperature, load_classifier
from model.preprocess import INPUT_SIZE, preprocess_rgb
from harness.imagegen import document, skin_photo
from triage.catalogue import REFERENCE_LABEL_ORDER

# Probabilities from two loaders of the same file may differ only by float32 rounding.
ATOL = 1e-5


def photo_batch(count: int = 4) -> np.ndarray:
    """Preprocessed inputs, varied enough that a scrambled weight would show in the outputs."""
    images = [skin_photo(seed, width=520 + 60 * seed, height=400 + 30 * seed) for seed in range(count - 1)]
    images.append(document(400, 500))
    return np.stack([preprocess_rgb(rgb) for rgb in images])


# --- building files the way the reference was built (Keras 2 API) -------------------------------

def dermosan_head_tf_keras(tf_keras, base):
    """The published head on a Keras-2 backbone, compiled as the reference training script did."""
    layers = tf_keras.layers
    x = layers.GlobalAveragePooling2D()(base.output)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dropout(0.35)(x)
    x = layers.Dense(256, activation="relu")(x)
    out = layers.Dense(10, activation="softmax")(x)
    model = tf_keras.Model(base.input, out)
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def randomise_batchnorm(tf_keras, model, rng):
    # Freshly initialised BatchNormalization is the identity (gamma 1, beta 0, mean 0, var 1): a
    # loader that dropped or swapped those four arrays would go unnoticed. Make each one distinct.
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.8, 1.2, gamma.shape), rng.normal(0, 0.05, beta.shape),
                               rng.normal(0, 0.05, mean.shape), rng.uniform(0.8, 1.2, var.shape)])


def spread_softmax(tf_keras, model, inputs, rng):
    # Random deep nets give saturated one-hot softmax outputs, which would compare equal even if
    # most of the network were wrong. Scale the last kernel so the logits are of order one.
    features = tf_keras.Model(model.input, model.layers[-2].output)(inputs, training=False).numpy()
    scale = 1.5 / max(float(np.sqrt((features ** 2).sum(axis=1).mean())), 1e-6)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([rng.normal(0, scale, kernel.shape), rng.normal(0, 0.1, bias.shape)])


def save_like_reference(model, path: Path) -> Path:
    """`model.save(path.h5)` in the Keras 2 HDF5 layout, stamped with the reference's Keras version."""
    import h5py

    with warnings.catch_warnings():
        # The legacy format is the point here: it is what the reference was published in.
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy", category=UserWarning)
        model.save(path)
    with h5py.File(path, "r+") as f:
        # The published file was written by TF 2.15; tf_keras here is newer but writes the same layout.
        assert f.attrs["keras_version"].startswith("2.")
        assert "model_config" in f.attrs
        f.attrs["keras_version"] = "2.15.0"
    return path


def write_reference_card(path: Path, *extra: str) -> ModelCard:
    card_main(["--reference", str(path), *extra])
    return ModelCard.load(path)


SAMPLED_LAYERS = ("conv1_conv", "conv3_block8_2_bn", "conv5_block3_3_conv")


@dataclass
class ReferenceFile:
    path: Path
    inputs: np.ndarray
    expected: np.ndarray  # Keras 2's own probabilities for `inputs`
    backbone: set[str]  # names of the ResNet152 layers
    trainable: set[str]  # those left trainable
    params: int
    notop_weights: Path  # the backbone alone, as an ImageNet "notop" weights file is laid out
    samples: dict[str, list[np.ndarray]]  # the weights of a few backbone layers, to compare against


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory) -> ReferenceFile:
    import tf_keras

    folder = tmp_path_factory.mktemp("reference")
    tf_keras.utils.set_random_seed(42)
    rng = np.random.RandomState(42)
    base = tf_keras.applications.ResNet152(weights=None, include_top=False, input_shape=(224, 224, 3))
    for layer in base.layers[:-50]:
        layer.trainable = False
    model = dermosan_head_tf_keras(tf_keras, base)
    randomise_batchnorm(tf_keras, model, rng)
    inputs = photo_batch()
    spread_softmax(tf_keras, model, inputs, rng)
    expected = model(inputs, training=False).numpy()
    assert np.isfinite(expected).all() and expected.max() < 0.99, "the fixture must not saturate"
    path = save_like_reference(model, folder / "best_resnet152.h5")
    notop = folder / "resnet152_notop.h5"
    base.save_weights(notop)
    trainable = {layer.name for layer in base.layers if layer.trainable}
    assert len(trainable) == 50
    samples = {name: base.get_layer(name).get_weights() for name in SAMPLED_LAYERS}
    return ReferenceFile(path, inputs, expected, {layer.name for layer in base.layers}, trainable,
                         model.count_params(), notop, samples)


@pytest.fixture(scope="module")
def reference_classifier(reference_file):
    write_reference_card(reference_file.path)
    return load_classifier(reference_file.path)


@pytest.mark.slow
def test_reference_h5_gives_keras2_probabilities(reference_file, reference_classifier):
    probs = reference_classifier.predict(reference_file.inputs)
    np.testing.assert_allclose(probs, reference_file.expected, rtol=1e-4, atol=ATOL)
    assert (probs.argmax(axis=1) == reference_file.expected.argmax(axis=1)).all()


@pytest.mark.slow
def test_reference_h5_gives_the_same_answer_one_image_at_a_time(reference_file, reference_classifier):
    # The worker batches whatever it has gathered: batch size must not change an image's result.
    single = np.concatenate([reference_classifier.predict(x[None]) for x in reference_file.inputs])
    np.testing.assert_allclose(single, reference_file.expected, rtol=1e-4, atol=ATOL)


@pytest.mark.slow
def test_reference_card_names_the_alphabetical_folder_order(reference_classifier):
    assert reference_classifier.labels == list(REFERENCE_LABEL_ORDER)
    assert REFERENCE_LABEL_ORDER[0] == "eczema"
    assert REFERENCE_LABEL_ORDER[1] == "warts_viral"
    assert reference_classifier.trained is True
    assert reference_classifier.input_size == INPUT_SIZE
    assert reference_classifier.version.startswith("dermosan-resnet152@")


@pytest.mark.slow
def test_grad_cam_explains_the_reference_h5(reference_file, reference_classifier):
    from model.gradcam import GradCam

    cam = GradCam(reference_classifier)
    assert cam.layer_name == "conv5_block3_out"
    maps = cam.maps(reference_file.inputs)
    assert maps.shape == (len(reference_file.inputs), 7, 7)
    # Each map is normalised to peak at 1; an all-zero map means the gradient never reached the layer.
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, atol=1e-5)


@pytest.mark.slow
def test_build_model_is_the_reference_architecture(reference_file):
    from model.network import build_model

    ours = build_model("resnet152")
    assert ours.count_params() == reference_file.params
    # Same layers frozen: fine-tuning from the published file must touch what its training touched.
    trainable = {layer.name for layer in ours.layers if layer.trainable} & reference_file.backbone
    assert trainable == reference_file.trainable
    # The published file's weights fit our network layer for layer, so training can start from it.
    ours.load_weights(reference_file.path)
    probs = ours(reference_file.inputs, training=False).numpy()
    np.testing.assert_allclose(probs, reference_file.expected, rtol=1e-4, atol=ATOL)


@pytest.mark.slow
def test_build_model_loads_local_imagenet_style_backbone_weights(reference_file):
    from model.network import build_model

    ours = build_model("resnet152", weights=str(reference_file.notop_weights))
    for name, arrays in reference_file.samples.items():
        for got, want in zip(ours.get_layer(name).get_weights(), arrays, strict=True):
            np.testing.assert_array_equal(got, want)


# --- quick checks on tiny networks -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny network with the DERMOSAN head, trained one step and saved by Keras 2 as `.h5`."""
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    inputs = tf_keras.Input((224, 224, 3))
    x = inputs
    for filters in (8, 16):
        x = tf_keras.layers.Conv2D(filters, 3, strides=4, padding="same", activation="relu")(x)
        x = tf_keras.layers.BatchNormalization()(x)
    model = dermosan_head_tf_keras(tf_keras, tf_keras.Model(inputs, x))
    batch = photo_batch()
    # One step of training, so the file also carries optimizer state, as a checkpoint can.
    model.fit(batch, np.arange(len(batch)), epochs=1, verbose=0)
    randomise_batchnorm(tf_keras, model, np.random.RandomState(1))
    spread_softmax(tf_keras, model, batch, np.random.RandomState(2))
    path = save_like_reference(model, tmp_path_factory.mktemp("tiny_h5") / "tiny.h5")
    return path, batch, model(batch, training=False).numpy()


def test_keras2_h5_loads_with_reference_labels_and_same_outputs(tiny_h5):
    import h5py

    path, batch, expected = tiny_h5
    with h5py.File(path) as f:
        assert "optimizer_weights" in f, "the fixture should carry optimizer state"
    write_reference_card(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = load_classifier(path)
        probs = classifier.predict(batch)
    assert classifier.labels == list(REFERENCE_LABEL_ORDER)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=ATOL)
    # Keras 3 wraps a Keras-2 file's input and output in lists; unwrapped, nothing downstream
    # (Grad-CAM, sub-models) has to know, and calling the model does not warn on every trace.
    assert not isinstance(classifier.model.output, list)
    assert not [w for w in caught if "structure of `inputs`" in str(w.message)]


@pytest.fixture
def tiny_keras(tmp_path) -> Path:
    """A tiny Keras-3 network with a reference card, in its own folder."""
    from model.network import build_model

    path = tmp_path / "tiny.keras"
    build_model("tiny").save(path)
    write_reference_card(path)
    return path


def rewrite_card(path: Path, **changes) -> None:
    fields = json.loads(card_path(path).read_text())
    fields.update(changes)
    card_path(path).write_text(json.dumps(fields))


def test_predict_returns_probability_rows_for_any_batch_size(tiny_keras):
    classifier = load_classifier(tiny_keras)
    assert classifier.warm_up() > 0
    batch = photo_batch(3)
    probs = classifier.predict(batch)
    assert probs.shape == (3, len(REFERENCE_LABEL_ORDER))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    direct = classifier.model(batch, training=False).numpy()
    np.testing.assert_allclose(probs, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(classifier.predict(batch[:1]), direct[:1], rtol=1e-5, atol=1e-6)


def test_missing_card_is_refused_with_the_command_that_writes_one(tmp_path):
    from model.network import build_model

    path = tmp_path / "orphan.keras"
    build_model("tiny").save(path)
    with pytest.raises(FileNotFoundError) as err:
        load_classifier(path)
    assert f"python -m model.card --reference {path}" in str(err.value)


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "nothing.keras")


def test_weights_that_changed_after_their_card_are_refused(tiny_keras):
    with open(tiny_keras, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="does not match its card"):
        load_classifier(tiny_keras)


def test_card_for_another_file_is_refused(tiny_keras):
    rewrite_card(tiny_keras, weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        load_classifier(tiny_keras)


def test_card_with_unknown_labels_is_refused(tiny_keras):
    rewrite_card(tiny_keras, labels=["eczema", "wart"] + list(REFERENCE_LABEL_ORDER[2:]))
    with pytest.raises(ValueError, match="unknown classes"):
        load_classifier(tiny_keras)


@pytest.mark.parametrize("count", [9, 0])
def test_card_with_the_wrong_label_count_is_refused(tiny_keras, count):
    rewrite_card(tiny_keras, labels=list(REFERENCE_LABEL_ORDER[:count]))
    with pytest.raises(ValueError, match=f"10 outputs but its card lists {count} labels"):
        load_classifier(tiny_keras)


def test_card_with_another_input_size_is_refused(tiny_keras):
    rewrite_card(tiny_keras, input_size=192)
    with pytest.raises(ValueError, match="192"):
        load_classifier(tiny_keras)


def test_card_temperature_is_applied_to_the_outputs(tmp_path):
    from model.network import build_model

    batch = photo_batch(3)
    model = build_model("tiny")
    plain, warm = tmp_path / "plain" / "m.keras", tmp_path / "warm" / "m.keras"
    for path in (plain, warm):
        path.parent.mkdir()
        model.save(path)
    write_reference_card(plain)
    write_reference_card(warm, "--temperature", "2.0")
    p1 = load_classifier(plain).predict(batch)
    p2 = load_classifier(warm).predict(batch)
    np.testing.assert_allclose(p2, apply_temperature(p1, 2.0), rtol=1e-6, atol=1e-9)
    assert (p2.max(axis=1) < p1.max(axis=1)).all(), "T > 1 must flatten the distribution"
    assert (p2.argmax(axis=1) == p1.argmax(axis=1)).all(), "temperature must not change the ranking"


def test_apply_temperature_equals_softmax_of_scaled_logits():
    logits = np.random.RandomState(0).normal(0, 3, (5, 10))

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    probs = softmax(logits)
    np.testing.assert_array_equal(apply_temperature(probs, 1.0), probs)
    for temperature in (0.5, 2.0, 3.7):
        np.testing.assert_allclose(apply_temperature(probs, temperature), softmax(logits / temperature),
                                   rtol=1e-9, atol=1e-12)


def test_demo_builder_writes_an_untrained_card_that_loads(tmp_path):
    out = tmp_path / "models" / "demo.keras"
    card = build_demo_model(out, "tiny", seed=3)
    assert card == ModelCard.load(out)
    assert card.trained is False
    assert card.architecture == "tiny"
    assert card.labels == list(REFERENCE_LABEL_ORDER)
    assert card.weights_sha256 == file_sha256(out)
    assert "Random weights" in card.notes
    assert not list(out.parent.glob(".building-*")), "the temporary file must be renamed into place"
    classifier = load_classifier(out)
    assert classifier.trained is False
    assert classifier.version.startswith("demo-tiny-untrained@")
    assert classifier.predict(photo_batch(2)).shape == (2, 10)


def test_demo_builder_is_reproducible_from_its_seed(tmp_path):
    batch = photo_batch(2)
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        build_demo_model(tmp_path / name / "demo.keras", "tiny", seed=seed)
        runs.append(load_classifier(tmp_path / name / "demo.keras").predict(batch))
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)
    assert not np.allclose(runs[0], runs[2])
