"""Synthetic photographs for tests: skin-like texture with a lesion, and the files that go wrong.

Tests make their own images; no dataset or real photograph is needed for the suite.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


def skin_photo(seed: int = 0, width: int = 640, height: int = 480) -> np.ndarray:
    """A sharp, well-lit RGB 'photograph': skin tone, lighting gradient, pores, a pigmented lesion."""
    rng = np.random.RandomState(seed)
    base = np.array([205, 160, 135], np.float32) + rng.uniform(-25, 25, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.85 + 0.25 * (xx / width) * (0.6 + 0.4 * yy / height)
    img = base[None, None, :] * light[:, :, None]
    texture = cv2.GaussianBlur(rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), 1.2)
    img += texture[:, :, None] * 14
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    ry, rx = height * rng.uniform(0.10, 0.22), width * rng.uniform(0.10, 0.22)
    dist = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    edge = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.randint(3, 8))
    lesion = np.clip(1.5 - dist / edge, 0, 1)[:, :, None]
    colour = np.array([95, 55, 40], np.float32) + rng.uniform(-20, 20, 3)
    dots = (rng.rand(height, width) < 0.02).astype(np.float32)[:, :, None] * 40
    img = img * (1 - lesion) + (colour - dots) * lesion
    hairs = np.zeros((height, width), np.uint8)
    for _ in range(rng.randint(2, 6)):
        p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        p2 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        cv2.line(hairs, p1, p2, 255, 1, cv2.LINE_AA)
    img = img * (1 - hairs[:, :, None] / 255.0 * 0.6)
    return np.clip(img, 0, 255).astype(np.uint8)


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
