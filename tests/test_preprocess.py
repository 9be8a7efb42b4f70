"""Preprocessing must reproduce what the reference model saw in training, without TensorFlow.

The reference training script fed `tf.image.resize(img, (224, 224))` (bilinear, float) into
`keras.applications.resnet.preprocess_input`; these tests hold our NumPy/OpenCV version to both.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.preprocess import (CAFFE_MEAN_BGR, FLOAT_COPY_MAX_PIXELS, INPUT_SIZE, caffe_normalise, gathered_bilinear,
                              preprocess_rgb, resize_rgb)
from harness.imagegen import skin_photo

ROOT = Path(__file__).resolve().parents[1]

SHAPES = [(480, 640), (2000, 3000), (150, 100), (224, 224), (300, 225)]


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


def _keras_caffe(resized: np.ndarray) -> np.ndarray:
    import keras

    # preprocess_input may work in place on float arrays: give it its own copy.
    return keras.applications.resnet.preprocess_input(np.array(resized, dtype=np.float32))


@pytest.mark.parametrize("height, width", SHAPES)
def test_preprocess_equals_keras_caffe_mode_on_the_resized_image(height, width):
    rgb = skin_photo(seed=height, width=width, height=height)
    out = preprocess_rgb(rgb)
    assert out.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _keras_caffe(resize_rgb(rgb)), rtol=0, atol=1e-4)


@pytest.mark.parametrize("height, width", SHAPES)
def test_resize_matches_the_reference_training_resize(tf, height, width):
    # A Pillow resize would differ here by tens of grey levels on large photos (it antialiases).
    rgb = skin_photo(seed=width, width=width, height=height)
    expected = tf.image.resize(tf.constant(rgb), (INPUT_SIZE, INPUT_SIZE)).numpy()
    np.testing.assert_allclose(resize_rgb(rgb), expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("height, width", [(367, 489), (612, 816), (1000, 1048)])
def test_both_ways_of_resizing_give_the_same_numbers(height, width):
    # Small images (a reduced decode) go through OpenCV on a float copy; large ones are gathered.
    assert height * width <= FLOAT_COPY_MAX_PIXELS
    rgb = skin_photo(seed=height, width=width, height=height)
    np.testing.assert_allclose(resize_rgb(rgb), gathered_bilinear(rgb, INPUT_SIZE), rtol=0, atol=1e-3)


def test_whole_pipeline_matches_tensorflow_end_to_end(tf):
    import keras

    rgb = skin_photo(seed=7)
    reference = keras.applications.resnet.preprocess_input(tf.image.resize(rgb, (INPUT_SIZE, INPUT_SIZE)))
    np.testing.assert_allclose(preprocess_rgb(rgb), np.asarray(reference), rtol=0, atol=0.05)


def test_caffe_normalise_swaps_to_bgr_and_subtracts_the_imagenet_means():
    pixel = np.array([[[10, 20, 30]]], np.uint8)
    expected = np.array([30, 20, 10], np.float32) - CAFFE_MEAN_BGR
    np.testing.assert_allclose(caffe_normalise(pixel)[0, 0], expected)
    assert caffe_normalise(pixel).dtype == np.float32


def test_non_square_images_are_squashed_not_cropped_or_padded():
    # Left half red, right half blue, on a wide image: after squashing the boundary stays in the
    # middle and both colours fill their whole half (no crop loses one, no padding adds black bars).
    rgb = np.zeros((200, 800, 3), np.uint8)
    rgb[:, :400] = (255, 0, 0)
    rgb[:, 400:] = (0, 0, 255)
    out = resize_rgb(rgb)
    assert out.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    half = INPUT_SIZE // 2
    np.testing.assert_allclose(out[:, : half - 2], np.broadcast_to([255, 0, 0], (INPUT_SIZE, half - 2, 3)))
    np.testing.assert_allclose(out[:, half + 2:], np.broadcast_to([0, 0, 255], (INPUT_SIZE, half - 2, 3)))


def test_tall_image_squash_keeps_its_top_and_bottom_rows():
    rgb = np.full((900, 300, 3), 128, np.uint8)
    rgb[:90] = 255  # the top tenth is white
    out = resize_rgb(rgb)
    white_rows = int((out[:, :, 0] > 250).all(axis=1).sum())
    assert abs(white_rows - INPUT_SIZE // 10) <= 1


def test_a_square_input_at_the_right_size_is_only_normalised():
    rgb = skin_photo(seed=3, width=INPUT_SIZE, height=INPUT_SIZE)
    np.testing.assert_array_equal(preprocess_rgb(rgb), caffe_normalise(rgb))


def test_input_is_not_modified():
    rgb = skin_photo(seed=4)
    before = rgb.copy()
    preprocess_rgb(rgb)
    np.testing.assert_array_equal(rgb, before)


def test_other_sizes_are_honoured():
    assert preprocess_rgb(skin_photo(seed=5), size=96).shape == (96, 96, 3)


def test_preprocess_and_quality_never_import_tensorflow():
    # The web and the quality gate import these; TensorFlow would cost seconds and a GiB there.
    code = "import model.preprocess, model.quality, sys; assert 'tensorflow' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- decoding as the card says: full, or a JPEG at a reduced DCT scale ------------------------------

def _jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(skin_photo(seed=3, width=width, height=height)).save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def test_a_reduced_decode_keeps_the_shorter_side_at_224_and_reports_the_own_size():
    from triage.imaging import decode_reduced

    data = _jpeg_with_orientation(4000, 3000, 1)
    rgb, own = decode_reduced(data, 224)
    assert rgb.shape == (375, 500, 3) and own == (4000, 3000)  # 1/8 is the smallest scale above 224
    full, own_full = decode_reduced(data)
    assert full.shape == (3000, 4000, 3) and own_full == own
    # The reduced picture is the full one, smaller: compared at one size, they agree closely.
    import cv2

    assert np.abs(cv2.resize(full, (500, 375), interpolation=cv2.INTER_AREA).astype(int) - rgb).mean() < 3
    turned, own_turned = decode_reduced(_jpeg_with_orientation(4000, 3000, 6), 224)
    assert turned.shape == (500, 375, 3) and own_turned == (3000, 4000)  # upright, both of them
    small, own_small = decode_reduced(_jpeg_with_orientation(300, 240, 1), 224)
    assert small.shape == (240, 300, 3) and own_small == (300, 240)  # no scale keeps 224: whole


def test_the_worker_and_training_read_a_photograph_identically(tmp_path):
    from model.card import ModelCard
    from model.inputs import read_network_input
    from model.preprocess import InputSpec
    from model.quality import QualityThresholds
    from triage.store import ImageStore
    from worker.claims import Claimed
    from worker.pipeline import prepare

    data = _jpeg_with_orientation(2400, 1800, 1)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    store = ImageStore(tmp_path / "store")
    claimed = Claimed(1, store.put(data)[0], 1)
    for decoding in ("full", "reduced"):
        spec = InputSpec(224, "efficientnet_lite", decoding)
        served = prepare(claimed, store, QualityThresholds(), spec).tensor
        np.testing.assert_array_equal(served, read_network_input(path, spec))
    assert ModelCard(labels=["melanoma"], version="v", weights_sha256="0", trained=False).decoding == "full"
    with pytest.raises(ValueError, match="decoding"):
        ModelCard(labels=["melanoma"], version="v", weights_sha256="0", trained=False, decoding="half")
