"""Preprocessing exactly as a model was trained, shared by training and inference.

224 x 224 RGB, resized without keeping the aspect ratio, then the input scaling of the model's
backbone, which its card names:
- "resnet_caffe" (ResNet152, the reference): ResNet `preprocess_input` in "caffe" mode, RGB -> BGR
  and the ImageNet channel means subtracted, no scaling;
- "efficientnet_lite" (EfficientNet-Lite0): (x - 127) / 128, RGB kept, as the Lite models were trained.
Written in NumPy and OpenCV so the quality gate and the web never need TensorFlow; tests check the
ResNet scaling against Keras.

The reference model was trained on `tf.image.resize` output: bilinear, half-pixel centres, no
antialiasing, float (not rounded back to uint8). `resize_rgb` computes the same thing (so does
OpenCV's INTER_LINEAR on float input); Pillow's BILINEAR does not (it widens its filter when
shrinking, which blurs a large photo and moves pixels by tens of grey levels), so Pillow is not used.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from triage.imaging import REDUCED_SIDE, decode_reduced

INPUT_SIZE = 224
PREPROCESSING = "resnet_caffe"  # the reference's, and the default of a card that names none
LITE_SCALING = "efficientnet_lite"
SCALINGS = (PREPROCESSING, LITE_SCALING)
LITE_CENTRE, LITE_SCALE = 127.0, 128.0
# ImageNet means in BGR order, as in keras.applications.imagenet_utils (caffe mode).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
# Up to this many pixels a float copy is cheap (12 MB), and OpenCV resizes it fastest.
FLOAT_COPY_MAX_PIXELS = 1 << 20


def resize_rgb(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Squash to (size, size, 3) float32 (no aspect ratio kept), as the reference's training did.

    A reduced decode (about 500 x 375) is converted to float and resized by OpenCV, whose INTER_LINEAR
    on float input is tf.image.resize's rule: a tenth of a millisecond. For a photograph decoded at
    full size that float copy would be large (48 MB for 4 megapixels), and bilinear without
    antialiasing reads only the two nearest rows and columns of each output pixel, so only those are
    gathered from the uint8 image and interpolated in float. Both give the same numbers.
    """
    pixels = np.asarray(rgb)
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels.astype(np.float32)
    if pixels.shape[0] * pixels.shape[1] <= FLOAT_COPY_MAX_PIXELS:
        return cv2.resize(pixels.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return gathered_bilinear(pixels, size)


def gathered_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """`resize_rgb` of a large uint8 image without a float copy of all of it."""
    y0, y1, fy = _bilinear_taps(pixels.shape[0], size)
    x0, x1, fx = _bilinear_taps(pixels.shape[1], size)
    rows = np.take(pixels, np.concatenate([y0, y1]), axis=0)
    taps = np.take(rows, np.concatenate([x0, x1]), axis=1).astype(np.float32)
    n = size
    left, right = taps[:, :n], taps[:, n:]
    across = left + (right - left) * fx[None, :, None]
    top, bottom = across[:n], across[n:]
    return top + (bottom - top) * fy[:, None, None]


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: the two input positions it lies between and the weight of the second,
    with half-pixel centres and edges clamped (tf.image.resize's and OpenCV's INTER_LINEAR rule)."""
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    centre = np.clip(centre, 0, n_in - 1)
    lower = np.floor(centre).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, (centre - lower).astype(np.float32)


def caffe_normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8/float RGB (..., 3) -> float32 BGR minus the ImageNet means."""
    return rgb[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


def scale_input(rgb: np.ndarray, scaling: str = PREPROCESSING) -> np.ndarray:
    """uint8/float RGB (..., 3) -> float32 network input under the named scaling."""
    if scaling == PREPROCESSING:
        return caffe_normalise(rgb)
    if scaling == LITE_SCALING:
        return (np.asarray(rgb, np.float32) - LITE_CENTRE) / LITE_SCALE
    raise ValueError(f"unknown input scaling {scaling!r}; known: {', '.join(SCALINGS)}")


def unscale_input(network_input: np.ndarray, scaling: str = PREPROCESSING) -> np.ndarray:
    """The inverse of `scale_input`: float RGB 0..255 (the picture the network was shown)."""
    if scaling == PREPROCESSING:
        return (network_input + CAFFE_MEAN_BGR)[..., ::-1]
    if scaling == LITE_SCALING:
        return network_input * LITE_SCALE + LITE_CENTRE
    raise ValueError(f"unknown input scaling {scaling!r}; known: {', '.join(SCALINGS)}")


# How stored bytes become pixels: "full" decodes every pixel (how the reference was trained, so the
# default of a card that names none); "reduced" lets libjpeg decode a JPEG at the smallest DCT scale
# that keeps the shorter side at DECODE_MIN_SIDE or the network's input size, whichever is larger
# (the quality gate judges at 224 px), as models trained here are. A model is served what it was trained on.
DECODINGS = ("full", "reduced")
DECODE_MIN_SIDE = REDUCED_SIDE


@dataclass(frozen=True)
class InputSpec:
    """What a model is fed: its square input size, its backbone's scaling and how its photographs are
    decoded (all from its card)."""
    size: int = INPUT_SIZE
    scaling: str = PREPROCESSING
    decoding: str = "full"

    def read(self, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """Stored bytes -> (upright RGB as this model is fed it, the photograph's own size)."""
        return decode_reduced(data, max(self.size, DECODE_MIN_SIDE) if self.decoding == "reduced" else 0)

    @property
    def reads_working_copy(self) -> bool:
        """Whether `read` gives exactly the portal's working copy (triage.working_copy), so the worker
        may take that instead of decoding: a reduced decoding at no more than its side."""
        return self.decoding == "reduced" and self.size <= DECODE_MIN_SIDE

    def tensor(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess_rgb(rgb, self.size, self.scaling)

    def picture(self, network_input: np.ndarray) -> np.ndarray:
        """The uint8 RGB picture a network input shows (for a heatmap overlay)."""
        return np.clip(unscale_input(network_input, self.scaling), 0, 255).astype(np.uint8)


def preprocess_rgb(rgb: np.ndarray, size: int = INPUT_SIZE, scaling: str = PREPROCESSING) -> np.ndarray:
    """One image: (H, W, 3) uint8 RGB -> (size, size, 3) float32 network input."""
    return scale_input(resize_rgb(rgb, size), scaling)
