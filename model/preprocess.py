"""Preprocessing exactly as the reference model was trained, shared by training and inference.

224 x 224 RGB, resized without keeping the aspect ratio, then ResNet `preprocess_input` in
"caffe" mode: RGB -> BGR and the ImageNet channel means subtracted, no scaling. Written in NumPy
so the quality gate and the web never need TensorFlow; a test checks it against Keras.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

INPUT_SIZE = 224
PREPROCESSING = "resnet_caffe"
# ImageNet means in BGR order, as in keras.applications.imagenet_utils (caffe mode).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def resize_rgb(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Squash to size x size (no aspect ratio kept, as the reference did)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def caffe_normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8/float RGB (..., 3) -> float32 BGR minus the ImageNet means."""
    return rgb[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


def preprocess_rgb(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """One image: (H, W, 3) uint8 RGB -> (size, size, 3) float32 network input."""
    return caffe_normalise(resize_rgb(rgb, size))
