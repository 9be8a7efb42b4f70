"""Synthetic photographs for tests: skin-like texture with a lesion, and the files that go wrong.

Tests make their own images; no dataset or real photograph is needed for the suite.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


SENSOR_NOISE = 2.0  # grey levels per channel: what a camera leaves after its own denoising
SCENE_SIDE = 640  # the scene is laid out on this longer side; other sizes scale every length with it


def skin_photo(seed: int = 0, width: int = 640, height: int = 480) -> np.ndarray:
    """A sharp, well-lit RGB 'photograph': skin tone, lighting gradient, pores, a pigmented lesion, hairs.

    Lengths are proportional to the image size, so one seed at 640 px and at 4000 px shows the same
    scene, as a phone and a webcam would. Per-pixel sensor noise comes last: real photographs never
    have large areas of one exact colour, and the quality gate's screenshot detector relies on that.
    """
    rng = np.random.RandomState(seed)
    unit = max(width, height) / SCENE_SIDE
    base = np.array([205, 160, 135], np.float32) + rng.uniform(-25, 25, 3).astype(np.float32)
    yy, xx = (axis.astype(np.float32) for axis in np.ogrid[0:height, 0:width])
    light = 0.85 + 0.25 * (xx / width) * (0.6 + 0.4 * yy / height)
    img = base * light[:, :, None]
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    ry, rx = height * rng.uniform(0.10, 0.22), width * rng.uniform(0.10, 0.22)
    dist = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    edge = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.randint(3, 8))
    lesion = np.clip(1.5 - dist / edge, 0, 1)[:, :, None]
    colour = np.array([95, 55, 40], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    dots = _at_scene_scale(lambda h, w: (rng.rand(h, w) < 0.02).astype(np.float32), width, height, unit)
    img = img * (1 - lesion) + (colour - 40 * dots[:, :, None]) * lesion
    noise = np.random.default_rng(seed)
    pores = _at_scene_scale(
        lambda h, w: cv2.GaussianBlur(noise.standard_normal((h, w), np.float32), (0, 0), 1.2), width, height, unit)
    img += pores[:, :, None] * 14
    img *= 1 - _hairs(rng, width, height, unit)[:, :, None] * 0.6
    img += noise.standard_normal((height, width, 3), np.float32) * SENSOR_NOISE
    return np.clip(img, 0, 255).astype(np.uint8)


def _at_scene_scale(make, width: int, height: int, unit: float) -> np.ndarray:
    """make(h, w) at the scene's resolution, enlarged to (height, width): detail keeps its size in the scene."""
    if unit <= 1:
        return make(height, width)
    small = make(max(1, round(height / unit)), max(1, round(width / unit)))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _hairs(rng: np.random.RandomState, width: int, height: int, unit: float) -> np.ndarray:
    hairs = np.zeros((height, width), np.uint8)
    for _ in range(rng.randint(2, 6)):
        p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        p2 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        cv2.line(hairs, p1, p2, 255, max(1, round(unit)), cv2.LINE_AA)
    return hairs.astype(np.float32) / 255.0


def encode(rgb: np.ndarray, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" and not params else params))
    return buf.getvalue()


def jpeg(seed: int = 0, width: int = 640, height: int = 480, **params) -> bytes:
    return encode(skin_photo(seed, width, height), "JPEG", **params)


# Degraded copies: each must make the quality gate fail for the stated reason.
def blurred(rgb: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def darkened(rgb: np.ndarray, factor: float = 0.15) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def overexposed(rgb: np.ndarray, gain: float = 2.6) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * gain + 40, 0, 255).astype(np.uint8)


def shrunk(rgb: np.ndarray, side: int = 150) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(rgb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


def document(width: int = 800, height: int = 1000, seed: int = 0) -> np.ndarray:
    """A page of black text on white: not a skin photograph."""
    rng = np.random.RandomState(seed)
    page = np.full((height, width, 3), 250, np.uint8)
    y = 60
    while y < height - 40:
        words = " ".join("".join(chr(rng.randint(97, 123)) for _ in range(rng.randint(2, 9)))
                         for _ in range(8))
        cv2.putText(page, words, (40, y), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (20, 20, 20), 2, cv2.LINE_AA)
        y += 36
    return page


def screenshot(width: int = 1280, height: int = 800) -> np.ndarray:
    """Flat UI panels, a title bar and some text."""
    img = np.full((height, width, 3), (240, 242, 245), np.uint8)
    img[:48] = (40, 60, 90)
    img[48:, :260] = (225, 228, 232)
    for i in range(8):
        cv2.rectangle(img, (300, 90 + i * 80), (1200, 150 + i * 80), (255, 255, 255), -1)
        cv2.putText(img, f"Item {i} settings value", (320, 128 + i * 80), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (30, 30, 30), 1, cv2.LINE_AA)
    return img


def blank(width: int = 640, height: int = 480, colour=(128, 128, 128)) -> np.ndarray:
    return np.full((height, width, 3), colour, np.uint8)
