"""The quality gate: measured values against thresholds, each with a sentence a person understands.

An image that fails any check is not classified (status needs_reshoot). A pass that lies close to a
threshold is "marginal": the image is classified but the risk policy sends it for review.
Measurements are taken at a fixed working size so a 4000-px and a 600-px photo are judged alike.
No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

WORKING_SIDE = 512  # longer side of the image the measurements are taken on
FLAT_COLOURS = 8  # how many of the commonest exact colours count as "flat"


@dataclass(frozen=True)
class QualityThresholds:
    min_side_px: int = 224
    min_sharpness: float = 40.0
    min_brightness: float = 40.0
    max_brightness: float = 220.0
    min_contrast: float = 12.0
    max_clipped_dark: float = 0.25
    max_clipped_bright: float = 0.10
    max_flat_colour_share: float = 0.30
    marginal_margin: float = 0.15

    @classmethod
    def from_settings(cls, settings) -> "QualityThresholds":
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    threshold: float | list[float]
    passed: bool
    marginal: bool
    message: str


@dataclass
class QualityReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.message for c in self.checks if not c.passed]

    @property
    def marginal(self) -> list[str]:
        return [c.message for c in self.checks if c.passed and c.marginal]

    def as_dict(self) -> dict:
        return {"passed": self.passed, "working_side": WORKING_SIDE,
                "checks": [asdict(c) for c in self.checks]}


def _at_least(name: str, value: float, limit: float, margin: float, ok: str, bad: str) -> Check:
    passed = bool(value >= limit)
    marginal = bool(passed and value < limit * (1 + margin))
    return Check(name, round(float(value), 4), limit, passed, marginal, (ok if passed else bad))


def _at_most(name: str, value: float, limit: float, margin: float, ok: str, bad: str) -> Check:
    passed = bool(value <= limit)
    marginal = bool(passed and value > limit * (1 - margin))
    return Check(name, round(float(value), 4), limit, passed, marginal, (ok if passed else bad))


def working_grey(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, grey) at the working size; area interpolation so shrinking does not invent sharpness."""
    h, w = rgb.shape[:2]
    scale = WORKING_SIDE / max(h, w)
    if scale != 1:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    return rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def flat_colour_share(rgb: np.ndarray) -> float:
    """Share of pixels in the few commonest exact colours: high for documents, screenshots, blank frames."""
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    _, counts = np.unique(packed, return_counts=True)
    top = np.sort(counts)[-FLAT_COLOURS:]
    return float(top.sum() / packed.size)


def assess_quality(rgb: np.ndarray, t: QualityThresholds) -> QualityReport:
    h, w = rgb.shape[:2]
    small, grey = working_grey(rgb)
    m = t.marginal_margin
    sharpness = cv2.Laplacian(grey, cv2.CV_64F).var()
    brightness = float(grey.mean())
    contrast = float(grey.std())
    dark = float((grey <= 5).mean())
    bright = float((grey >= 250).mean())
    flat = flat_colour_share(small)

    checks = [
        _at_least("resolution", min(h, w), t.min_side_px, m,
                  f"Resolution {w} x {h} px is enough.",
                  f"The image is too small ({w} x {h} px); the shorter side must be at least {t.min_side_px} px."),
        _at_least("sharpness", sharpness, t.min_sharpness, m,
                  "The image is sharp enough.",
                  f"The image is blurred (sharpness {sharpness:.0f}, needs {t.min_sharpness:.0f}); "
                  "hold the camera still and focus on the lesion."),
        _at_least("brightness_min", brightness, t.min_brightness, m,
                  "The image is bright enough.",
                  f"The image is too dark (mean brightness {brightness:.0f}, needs {t.min_brightness:.0f}); "
                  "add light or move to a brighter place."),
        _at_most("brightness_max", brightness, t.max_brightness, m,
                 "The image is not overexposed.",
                 f"The image is overexposed (mean brightness {brightness:.0f}, at most {t.max_brightness:.0f}); "
                 "reduce the light or avoid the flash."),
        _at_least("contrast", contrast, t.min_contrast, m,
                  "The image has enough contrast.",
                  f"The image has too little contrast ({contrast:.1f}, needs {t.min_contrast:.0f}); "
                  "it may be washed out or not show the skin."),
        _at_most("clipped_dark", dark, t.max_clipped_dark, m,
                 "Few pixels are lost in shadow.",
                 f"{dark:.0%} of the image is black (at most {t.max_clipped_dark:.0%}); light the lesion evenly."),
        _at_most("clipped_bright", bright, t.max_clipped_bright, m,
                 "Few pixels are blown out.",
                 f"{bright:.0%} of the image is pure white (at most {t.max_clipped_bright:.0%}); "
                 "avoid glare and direct flash."),
        _at_most("flat_colour", flat, t.max_flat_colour_share, m,
                 "The image looks like a photograph.",
                 f"The image does not look like a skin photograph ({flat:.0%} of it is a few flat colours): "
                 "it may be a document, a screenshot or a blank frame."),
    ]
    return QualityReport(checks)
