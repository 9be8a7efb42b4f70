"""Preprocessing exactly as the reference model was trained, shared by training and inference.

224 x 224 RGB, resized without keeping the aspect ratio, then ResNet `preprocess_input` in
"caffe" mode: RGB -> BGR and the ImageNet channel means subtracted, no scaling. Written in NumPy
and OpenCV so the quality gate and the web never need TensorFlow; tests check it against Keras.

The reference model was trained on `tf.image.resize` output: bilinear, half-pixel centres, no
antialiasing, float (not rounded back to uint8). OpenCV's INTER_LINEAR on float32 input computes
the same thing; Pillow's BILINEAR does not (it widens its filter when shrinking, which blurs a
large photo and moves pixels by tens of grey levels), so Pillow is not used here.
"""
from __future__ import annotations

import cv2
import numpy as np

INPUT_SIZE = 224
PREPROCESSING = "resnet_caffe"
# ImageNet means in BGR order, as in keras.applications.imagenet_utils (caffe mode).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def resize_rgb(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Squash to (size, size, 3) float32 (no aspect ratio kept), as the reference's training did."""
    pixels = np.asarray(rgb, dtype=np.float32)
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)


def caffe_normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8/float RGB (..., 3) -> float32 BGR minus the ImageNet means."""
    return rgb[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


def preprocess_rgb(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """One image: (H, W, 3) uint8 RGB -> (size, size, 3) float32 network input."""
    return caffe_normalise(resize_rgb(rgb, size))
