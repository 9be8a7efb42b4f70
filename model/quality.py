"""The quality gate: measured values against thresholds, each with a sentence a person understands.

An image that fails any check is not classified (status needs_reshoot). A pass that lies close to a
threshold is "marginal": the image is classified but the risk policy sends it for review.

Measurements are taken on a copy whose longer side is WORKING_SIDE pixels, so a 4000-px phone photo
and a 600-px dermatoscope image are judged alike. Larger images are shrunk by area averaging, which
keeps what detail the scene has and averages sensor noise away; smaller ones are enlarged, which can
only lose sharpness, so blowing up a small picture never makes it look sharper than it is. Texture
measures leave out a dermatoscope's black surround (see picture_mask).

Defaults are calibrated on real dermoscopic photographs (scripts/quality_report.py prints the margins).
No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import cv2
import numpy as np

# 512 is a little over twice the network's 224-px input: blur the network would notice shows clearly,
# and the standard 600x450 dermoscopic image is barely resampled. At 1024 those images would have to
# be enlarged and would all look soft; at 256-320 a blur a person sees at once would pass.
WORKING_SIDE = 512
CALIBRATION_SIDE = 600  # longer side of the dermoscopic photographs the defaults were calibrated on

BLACK_LEVEL = 5  # grey at or below this is clipped dark
WHITE_LEVEL = 250  # grey at or above this is clipped bright
FLAT_COLOURS = 8  # how many of the commonest exact colours count as "flat"
NEAR_BLACK = 16  # brightest channel below this: JPEG noise in black, not a colour worth counting
COLOUR_MIN_VALUE = 48  # brightest channel below this: too dark for its hue to mean anything
GREY_SATURATION = 20  # HSV saturation (0-255) below this is grey; skin stays well above it
TEXT_STEP = 64  # a jump of this many grey levels between neighbours is a printed or drawn edge
# The black ring of a dermatoscope or a dark drape is not part of the picture: its border with the
# skin is the sharpest edge in the frame and would hide a blurred lesion. Dark areas touching the frame
# edge, and a band around them, are left out of the texture measurements.
OUTSIDE_LEVEL = 32
OUTSIDE_BAND_PX = 8
FRAME_BAND_PX = 4  # the outermost pixels have no real neighbours for the Laplacian


@dataclass(frozen=True)
class QualityThresholds:
    min_side_px: int = 224
    min_sharpness: float = 6.0
    min_brightness: float = 40.0
    max_brightness: float = 230.0
    min_contrast: float = 4.0
    max_clipped_dark: float = 0.50
    max_clipped_bright: float = 0.10
    max_flat_colour_share: float = 0.50
    max_colourless_share: float = 0.60
    max_text_edge_share: float = 0.04
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
    bound: str = "min"  # "min": the value must reach the threshold; "max": it must stay at or under it


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
        """Passes close to a threshold, as phrases without a closing full stop: the risk policy
        embeds them in its own sentence ("Image quality is marginal: ...")."""
        return [c.message.rstrip(".") for c in self.checks if c.passed and c.marginal]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "working_side": WORKING_SIDE,
                "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class Measurements:
    """Every value the gate judges, before any threshold is applied."""
    width: int
    height: int
    sharpness: float
    brightness: float
    contrast: float
    clipped_dark: float
    clipped_bright: float
    flat_colour: float
    colourless: float
    text_edges: float


# ---------------------------------------------------------------- measuring

def working_copy(rgb: np.ndarray) -> np.ndarray:
    """The image with its longer side at WORKING_SIDE: area averaging down, bicubic up.

    A larger photo goes down in two steps, through CALIBRATION_SIDE: one big step keeps more
    pixel-level contrast than the 600-px images the thresholds were set on went through, and would
    measure a photo 1.5-2x sharper than a 600-px export of itself.
    """
    if max(rgb.shape[:2]) > CALIBRATION_SIDE:
        rgb = _resize(rgb, CALIBRATION_SIDE)
    return _resize(rgb, WORKING_SIDE)


def _resize(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale == 1:
        return rgb
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)


def working_grey(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, grey) at the working size."""
    small = working_copy(rgb)
    return small, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)


def picture_mask(grey: np.ndarray) -> np.ndarray:
    """True where the picture is: not dark areas connected to the frame edge, nor a band around them."""
    dark = (grey < OUTSIDE_LEVEL).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark, connectivity=8)
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.isin(labels, rim[rim > 0]).astype(np.uint8)
    band = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * OUTSIDE_BAND_PX + 1,) * 2)
    mask = cv2.dilate(outside, band) == 0
    b = FRAME_BAND_PX
    if min(grey.shape) > 4 * b:
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = False, False, False, False
    # A frame that is dark all over has no picture to single out: judge all of it (and fail it).
    return mask if mask.any() else np.ones_like(mask)


def sharpness(grey: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian inside the picture: fine detail, which blur removes first."""
    lap = cv2.Laplacian(grey, cv2.CV_64F)
    return float(lap[mask].var())


def flat_colour_share(rgb: np.ndarray) -> float:
    """Share of the frame in the few commonest exact colours: high for documents, screenshots and
    blank frames, tiny for photographs, whose sensor noise makes neighbouring pixels differ. Black is
    left out, since a dermatoscope's vignette is legitimately one flat colour."""
    lit = _brightest_channel(rgb) >= NEAR_BLACK
    # Each pixel as one 32-bit number (its RGB bytes plus a constant alpha), so colours compare as
    # integers; OpenCV builds it in one pass, NumPy's shifts and ors would take ten times as long.
    packed = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)).view(np.uint32)[..., 0]
    return float(_largest_counts_sum(packed[lit], FLAT_COLOURS) / packed.size)


_HASH_BITS = 18  # buckets for counting colours: about as many as a working copy has pixels


def _largest_counts_sum(values: np.ndarray, k: int) -> int:
    """How many of `values` are one of the k commonest, exactly, without sorting them all.

    Sorting every pixel's colour was the quality gate's largest cost after the working copy. Colours
    are hashed into buckets and counted in one pass instead. A colour's count is at most its bucket's,
    so once the colours of the k fullest buckets are counted exactly, the k-th largest of those counts
    is a floor: only buckets holding at least that many can hold one of the k commonest colours, and
    only their colours are sorted (in a photograph, a few per cent of them).
    """
    if values.size == 0:
        return 0
    buckets = (values * np.uint32(0x9E3779B1)) >> np.uint32(32 - _HASH_BITS)  # Fibonacci hashing
    sizes = np.bincount(buckets, minlength=1 << _HASH_BITS)
    bucket_size = sizes[buckets]
    floor = _kth_largest(_counts(values[bucket_size >= _kth_largest(sizes, k)]), k)
    return int(np.sort(_counts(values[bucket_size >= floor]))[-k:].sum())


def _counts(values: np.ndarray) -> np.ndarray:
    return np.unique(values, return_counts=True)[1]


def _kth_largest(counts: np.ndarray, k: int) -> int:
    """The k-th largest of some counts, 0 if there are fewer than k. Counted, not sorted: partial
    sorts slow to a crawl on the many equal sizes of mostly empty buckets."""
    if counts.size < k:
        return 0
    at_least = np.cumsum(np.bincount(counts)[::-1])[::-1]  # at_least[v]: how many counts are v or more
    return int(np.flatnonzero(at_least >= k)[-1])


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
    """max(R, G, B) per pixel (NumPy's max over the last axis is slow on interleaved channels)."""
    r, g, b = cv2.split(rgb)
    return cv2.max(cv2.max(r, g), b)


def colourless_share(rgb: np.ndarray) -> float:
    """Share of the frame that is grey, white or black-on-white: skin, of any tone, always has hue.
    Dark pixels are not counted (shadows and black drapes carry no reliable colour)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    grey = (hsv[..., 1] < GREY_SATURATION) & (hsv[..., 2] >= COLOUR_MIN_VALUE)
    return float(grey.mean())


def text_edge_share(grey: np.ndarray, mask: np.ndarray) -> float:
    """Share of the picture on a hard step between neighbouring pixels, as at the strokes of print.
    Skin, hairs included, has few such steps at this scale (real photographs: 0.2% at most)."""
    g = grey.astype(np.int16)
    step = np.zeros(g.shape, bool)
    step[:, :-1] |= np.abs(np.diff(g, axis=1)) > TEXT_STEP
    step[:-1] |= np.abs(np.diff(g, axis=0)) > TEXT_STEP
    return float((step & mask).sum() / max(1, mask.sum()))


def measure(rgb: np.ndarray) -> Measurements:
    h, w = rgb.shape[:2]
    small, grey = working_grey(rgb)
    mask = picture_mask(grey)
    return Measurements(
        width=w, height=h,
        sharpness=sharpness(grey, mask),
        brightness=float(grey.mean()),
        contrast=float(grey[mask].std()),
        clipped_dark=float((grey <= BLACK_LEVEL).mean()),
        clipped_bright=float((grey >= WHITE_LEVEL).mean()),
        flat_colour=flat_colour_share(small),
        colourless=colourless_share(small),
        text_edges=text_edge_share(grey, mask),
    )


# ---------------------------------------------------------------- judging

def _number(v: float) -> str:
    return f"{v:.1f}" if abs(v) < 10 else f"{v:.0f}"


def _share(v: float) -> str:
    return f"{v:.0%}" if v >= 0.01 or v == 0 else f"{v:.1%}"


def _pixels(v: float) -> str:
    return f"{v:.0f} px"


def _judge(name: str, value: float, limit: float, at_least: bool, margin: float, fmt: Callable[[float], str],
           label: str, bad: str) -> Check:
    """One threshold comparison. A marginal pass gets its own sentence: it is what a reviewer reads."""
    passed = bool(value >= limit) if at_least else bool(value <= limit)
    edge = limit * (1 + margin) if at_least else limit * (1 - margin)
    marginal = bool(passed and (value < edge if at_least else value > edge))
    bound = "minimum" if at_least else "maximum"
    if not passed:
        message = bad
    elif marginal:
        message = (f"{label[0].upper()}{label[1:]} is {fmt(value)}, only just "
                   f"{'above' if at_least else 'below'} the {bound} of {fmt(limit)}.")
    else:
        message = f"{label[0].upper()}{label[1:]} is {fmt(value)} ({bound} {fmt(limit)})."
    return Check(name, round(float(value), 4), limit, passed, marginal, message, "min" if at_least else "max")


def _sharpness_advice(m: Measurements, t: QualityThresholds) -> str:
    found = f"sharpness {_number(m.sharpness)}, needs {_number(t.min_sharpness)}"
    if max(m.width, m.height) < WORKING_SIDE:
        return (f"The image shows too little fine detail ({found}): at {m.width} x {m.height} px it is "
                f"smaller than the {WORKING_SIDE}-px working size; send the original full-size photograph.")
    return f"The image is blurred ({found}); hold the camera still and focus on the lesion."


def judge(m: Measurements, t: QualityThresholds) -> list[Check]:
    """Every check, in the order a person should read the failures: size, whether it is a photograph of
    skin at all, then how it was taken."""
    k = t.marginal_margin
    return [
        _judge("resolution", min(m.width, m.height), t.min_side_px, True, k, _pixels, "the shorter side",
               f"The image is too small ({m.width} x {m.height} px); the shorter side must be at least "
               f"{t.min_side_px} px."),
        _judge("flat_colour", m.flat_colour, t.max_flat_colour_share, False, k, _share,
               "the share of flat colour",
               f"{_share(m.flat_colour)} of the image is a few flat colours (at most "
               f"{_share(t.max_flat_colour_share)}), which a photograph of skin never is: it looks like a "
               "document, a screenshot, a blank frame or a badly exposed picture."),
        _judge("colourless", m.colourless, t.max_colourless_share, False, k, _share,
               "the share without colour",
               f"{_share(m.colourless)} of the image has no colour (at most {_share(t.max_colourless_share)}): "
               "it looks like a document, a screenshot, a black-and-white or a blown-out picture; "
               "send a colour photograph of the skin."),
        _judge("text_edges", m.text_edges, t.max_text_edge_share, False, k, _share,
               "the share of hard, print-like edges",
               f"{_share(m.text_edges)} of the image lies on hard, print-like edges (at most "
               f"{_share(t.max_text_edge_share)}): it looks like text, a document or a screenshot, "
               "not a photograph of skin."),
        _judge("brightness_min", m.brightness, t.min_brightness, True, k, _number, "the mean brightness",
               f"The image is too dark (mean brightness {_number(m.brightness)}, needs "
               f"{_number(t.min_brightness)}); add light or move to a brighter place."),
        _judge("brightness_max", m.brightness, t.max_brightness, False, k, _number, "the mean brightness",
               f"The image is overexposed (mean brightness {_number(m.brightness)}, at most "
               f"{_number(t.max_brightness)}); reduce the light or avoid the flash."),
        _judge("clipped_dark", m.clipped_dark, t.max_clipped_dark, False, k, _share, "the share of black",
               f"{_share(m.clipped_dark)} of the image is black (at most {_share(t.max_clipped_dark)}); "
               "light the lesion evenly and fill the frame with skin."),
        _judge("clipped_bright", m.clipped_bright, t.max_clipped_bright, False, k, _share,
               "the share of blown-out white",
               f"{_share(m.clipped_bright)} of the image is blown out to white (at most "
               f"{_share(t.max_clipped_bright)}); avoid glare and direct flash."),
        _judge("contrast", m.contrast, t.min_contrast, True, k, _number, "the contrast",
               f"The image is almost uniform (contrast {_number(m.contrast)}, needs {_number(t.min_contrast)}): "
               "it is washed out, blank, or does not show the skin."),
        _judge("sharpness", m.sharpness, t.min_sharpness, True, k, _number,
               f"the sharpness at {WORKING_SIDE} px", _sharpness_advice(m, t)),
    ]


def assess_quality(rgb: np.ndarray, thresholds: QualityThresholds) -> QualityReport:
    return QualityReport(judge(measure(rgb), thresholds))
