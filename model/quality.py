"""The quality gate: measured values against thresholds, each with a sentence a person understands.

An image that fails any check is not classified (status needs_reshoot). A pass that lies close to a
threshold is "marginal": the image is classified but the risk policy sends it for review.

Measurements are taken on a small working view whose shorter side is WORKING_SIDE (224) pixels, the size
the network reads, made by averaging (never by enlarging: a photograph smaller than that is judged as
it is, and its size check fails). A 4000-px phone photo, a 600-px dermatoscope image and a 224-px
export of either are judged at the same scale, and a decode already reduced by the JPEG decoder (a
power-of-two DCT scale, `triage.imaging.decode_reduced`) gives the same values as a full decode. Only the size check
uses the photograph's own size, which the caller passes when it hands over a reduced copy.

Sharpness is judged by how much fine detail the sharpest parts of the picture hold, relative to their
own contrast, not by how much detail there is: a smooth nevus under a dermatoscope is sharp, a
blurred hairy forearm is not. Texture measures leave out a dermatoscope's dark surround (see
picture_mask). Defaults are calibrated on real dermoscopic and smartphone photographs at their own size
and shrunk to 224 px (scripts/quality_report.py prints the margins). No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import cv2
import numpy as np

# The network reads 224 x 224. Detail finer than that is invisible to it, so blur is judged at that
# scale: a 300-px photograph is not held to the standard of a 4000-px one, and nothing is enlarged.
WORKING_SIDE = 224
GATE_MIN_SIDE = WORKING_SIDE  # a reduced decode handed to the gate keeps at least this shorter side
# The colour checks count shares of pixels, which need far fewer: 56-111 px on the shorter side, made
# by exact 2 x 2 averages (counting colours is the costliest measurement per pixel).
COLOUR_SIDE = 56

BLACK_LEVEL = 5  # grey at or below this is clipped dark
WHITE_LEVEL = 250  # grey at or above this is clipped bright
FLAT_COLOURS = 8  # how many of the commonest exact colours count as "flat"
# Colours are judged only where they can be told apart: not in shadows, a dermatoscope's dark (black
# or dark grey) surround or an underexposed frame, where hue is noise and few grey levels make equal
# colours by necessity, nor where a channel is blown out to its maximum (clipped_bright reports that).
COLOUR_MIN_VALUE = 80  # brightest channel below this: too dark for its colour to mean anything
CHANNEL_MAX = 255
GREY_SATURATION = 12  # HSV saturation (0-255) below this is grey; skin, even pale, stays above it
MIN_COLOUR_SHARE = 0.25  # less of the frame than this shows colour clearly: colour is not judged
MIN_EXPOSED_SHARE = 0.05  # less of the picture than this between black and white: no contrast to measure
TEXT_STEP = 64  # a jump of this many grey levels between neighbours is a printed or drawn edge
# The black or dark grey ring of a dermatoscope, or a dark drape, is not part of the picture: its
# border with the skin is the sharpest edge in the frame, and its noise the finest detail, either of
# which would hide a blurred lesion. Thick dark areas touching the frame edge, and a band around them,
# are left out of the texture measurements. "Dark" is relative: under half the grey of the picture's
# brighter quarter (between 32 and 80), so the skin of a dark-skinned photograph is never taken for
# surround; "thick" leaves hairs that reach the edge in the picture.
OUTSIDE_LEVEL = (32, 80)
OUTSIDE_SHARE_OF_BRIGHT = 0.5
OUTSIDE_THICK_PX = 4  # dark areas thinner than about twice this are hairs or shadows, not surround
OUTSIDE_BAND_PX = 4
FRAME_BAND_PX = 2  # the outermost pixels have no real neighbours for the gradient
# Sharpness: the picture is cut into tiles; in those with visible detail, how much of it a further
# 1-px blur removes; the sharpest tenth of them speaks for the photograph (where it was in focus).
TILE_PX = 16
REBLUR_SIGMA = 1.0
# A tile counts when its detail stands out from the picture's noise: its mean gradient after the
# re-blur at least NOISE_MARGIN times what noise alone would leave (0.18 x the noise's standard
# deviation, estimated over the picture), and at least DETAIL_FLOOR grey levels per pixel. Sensor and
# JPEG noise in a flat area or a dark surround would otherwise pass for the finest, sharpest detail.
NOISE_MARGIN = 2.0
NOISE_GRADIENT = 0.18
DETAIL_FLOOR = 0.25
SHARPEST_SHARE = 0.10


SHARE_FIELDS = ("min_sharpness_share", "min_relative_contrast", "max_clipped_dark", "max_clipped_bright",
                "max_flat_colour_share", "max_colourless_share", "max_text_edge_share", "marginal_margin")


@dataclass(frozen=True)
class QualityThresholds:
    min_side_px: int = 224
    min_sharpness_share: float = 0.25
    min_brightness: float = 40.0
    max_brightness: float = 230.0
    min_relative_contrast: float = 0.025
    max_clipped_dark: float = 0.50
    max_clipped_bright: float = 0.10
    max_flat_colour_share: float = 0.50
    max_colourless_share: float = 0.60
    max_text_edge_share: float = 0.08
    marginal_margin: float = 0.15

    def __post_init__(self) -> None:
        for name in SHARE_FIELDS:
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"quality threshold {name} is a share between 0 and 1, not {value} "
                                 f"(see DERMATRIAGE_{name.upper()} in the README's settings table)")

    @classmethod
    def from_settings(cls, settings) -> "QualityThresholds":
        # A threshold the settings do not carry keeps its default here (tests/test_quality.py holds
        # the settings to carrying every one).
        return cls(**{name: getattr(settings, name, f.default) for name, f in cls.__dataclass_fields__.items()})


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


# ---------------------------------------------------------------- the working view

@dataclass(frozen=True)
class View:
    grey: np.ndarray  # float32 grey, shorter side WORKING_SIDE (or less for a smaller photograph)
    colour: np.ndarray  # uint8 RGB, shorter side COLOUR_SIDE to twice that, for the colour shares


def _halved(rgb: np.ndarray) -> np.ndarray:
    """Exact 2 x 2 averages (an odd last row or column is dropped): OpenCV's fast path."""
    h, w = rgb.shape[:2]
    return cv2.resize(rgb[:h - h % 2, :w - w % 2], (w // 2, h // 2), interpolation=cv2.INTER_AREA)


def working_view(rgb: np.ndarray) -> View:
    """Grey with the shorter side at WORKING_SIDE, by area averaging, and a small colour copy.

    Halving by exact 2 x 2 averages costs little; the last step, by less than two, averages the grey
    only (an area resize of all three channels would cost more than every check together). A smaller
    photograph is never enlarged.
    """
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    rgb = np.ascontiguousarray(rgb[..., :3])
    while min(rgb.shape[:2]) >= 2 * WORKING_SIDE:
        rgb = _halved(rgb)
    h, w = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    if min(h, w) > WORKING_SIDE:
        scale = WORKING_SIDE / min(h, w)
        size = (max(WORKING_SIDE, round(w * scale)), max(WORKING_SIDE, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    colour = rgb
    while min(colour.shape[:2]) >= 2 * COLOUR_SIDE:
        colour = _halved(colour)
    return View(grey, colour)


def picture_mask(grey: np.ndarray) -> np.ndarray:
    """True where the picture is: not thick dark areas connected to the frame edge, nor a band around
    them."""
    sample = grey[::4, ::4].ravel()  # a sample is enough to set the level
    bright = float(np.partition(sample, 3 * sample.size // 4)[3 * sample.size // 4]) if sample.size else 0.0
    level = min(max(OUTSIDE_SHARE_OF_BRIGHT * bright, OUTSIDE_LEVEL[0]), OUTSIDE_LEVEL[1])
    dark = (grey < level).view(np.uint8)
    mask = np.ones(grey.shape, bool)
    if dark[0].any() or dark[-1].any() or dark[:, 0].any() or dark[:, -1].any():
        count, labels = cv2.connectedComponents(dark, connectivity=8)
        surround = np.zeros(count, bool)
        surround[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
        if min(grey.shape) > 4 * OUTSIDE_THICK_PX:
            # Of the dark areas at the edge, the surround is those with a part too thick for a hair.
            thick = np.zeros(count, bool)
            thick[labels[cv2.erode(dark, _square(OUTSIDE_THICK_PX)).view(bool)]] = True
            surround &= thick
        surround[0] = False  # label 0: everything that is not dark
        ids = np.flatnonzero(surround)
        if ids.size:
            outside = labels == ids[0] if ids.size == 1 else surround[labels]  # one ring, as a rule
            mask = cv2.dilate(outside.view(np.uint8), _square(OUTSIDE_BAND_PX)) == 0
    b = FRAME_BAND_PX
    if min(grey.shape) > 4 * b:
        mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = False, False, False, False
    # A frame that is dark all over has no picture to single out: judge all of it (and fail it).
    return mask if mask.any() else np.ones_like(mask)


def _square(radius: int) -> np.ndarray:
    return np.ones((2 * radius + 1,) * 2, np.uint8)  # separable: several times cheaper than a disc


# ---------------------------------------------------------------- measuring

def _gradient(grey: np.ndarray) -> np.ndarray:
    """|gradient| in grey levels per pixel (3 x 3 Sobel, normalised)."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return cv2.magnitude(gx, gy)


def _tile_means(a: np.ndarray, tile: int) -> np.ndarray:
    """Mean of each whole tile x tile block (area resize by an integer factor: OpenCV's fast path)."""
    h, w = a.shape
    rows, cols = h // tile, w // tile
    return cv2.resize(a[:rows * tile, :cols * tile], (cols, rows), interpolation=cv2.INTER_AREA)


def sharpness(grey: np.ndarray, mask: np.ndarray) -> float:
    """The share of fine detail that one more pixel of blur would remove, in the sharpest tenth of
    the picture's detailed tiles: about half in a sharp photograph, little in a blurred one, which
    has no fine detail left to lose. It is a ratio, so a smooth subject (little detail, but crisp) is
    not taken for a blurred one; tiles whose detail is too faint to tell from sensor and JPEG noise
    are left out, and a picture with none is judged to have no sharp detail (0)."""
    if min(grey.shape) < TILE_PX:
        return 0.0
    fine, soft = _gradient(grey), _gradient(cv2.GaussianBlur(grey, (0, 0), REBLUR_SIGMA))
    if mask.all():  # most photographs: no surround to leave out
        area = np.ones((grey.shape[0] // TILE_PX, grey.shape[1] // TILE_PX), np.float32)
    else:
        m = mask.astype(np.float32)
        np.multiply(fine, m, out=fine)  # in place: both are fresh arrays of their own
        np.multiply(soft, m, out=soft)
        area = _tile_means(m, TILE_PX)
    fine, soft = _tile_means(fine, TILE_PX), _tile_means(soft, TILE_PX)
    floor = max(DETAIL_FLOOR, NOISE_MARGIN * NOISE_GRADIENT * noise_level(grey, mask))
    detailed = (area >= 0.5) & (soft >= floor * area) & (fine > 0)
    if not detailed.any():
        return 0.0
    kept = np.sort(soft[detailed] / fine[detailed])
    sharpest = kept[:max(1, round(kept.size * SHARPEST_SHARE))]
    return min(max(float(1.0 - sharpest.mean()), 0.0), 1.0)  # np.clip costs more on one number


_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def noise_level(grey: np.ndarray, mask: np.ndarray) -> float:
    """Standard deviation of the picture's noise, by Immerkaer's estimate (a kernel blind to smooth
    shading; fine texture counts as noise too, which only raises the bar for a tile to count)."""
    response = cv2.filter2D(grey, -1, _NOISE_KERNEL)
    np.abs(response, out=response)  # in place: OpenCV's absdiff against a scalar costs twice as much
    inner = cv2.erode(mask.view(np.uint8), np.ones((3, 3), np.uint8))  # whole 3 x 3 neighbourhoods
    n = cv2.countNonZero(inner)
    if n == 0:
        return 0.0
    # The mean over `inner` as a plain sum of the response zeroed elsewhere: OpenCV's masked mean
    # goes pixel by pixel, its plain sum is vectorised (both add in double precision).
    np.multiply(response, inner, out=response)
    return float(np.sqrt(np.pi / 2) / 6 * cv2.sumElems(response)[0] / n)


def flat_colour_share(rgb: np.ndarray, seen: np.ndarray | None = None) -> float:
    """Share of the frame in the few commonest exact colours: high for documents, screenshots and
    blank frames, tiny for photographs, whose sensor noise makes neighbouring pixels differ. Dark and
    blown-out pixels are left out (a dermatoscope's vignette is legitimately one flat colour).
    `seen` is colour_seen(rgb), when the caller has it already."""
    lit = colour_seen(rgb) if seen is None else seen
    # Each pixel as one 32-bit number (its RGB bytes plus a constant alpha), so colours compare as
    # integers; OpenCV builds it in one pass, NumPy's shifts and ors would take ten times as long.
    packed = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)).view(np.uint32)[..., 0]
    return float(_commonest_count(packed[lit], FLAT_COLOURS) / packed.size)


def _commonest_count(values: np.ndarray, k: int) -> int:
    """How many of `values` are one of the k commonest: sorted, equal values form runs, the k longest
    runs are summed (the colour view is small enough that sorting it is the cheapest way)."""
    if values.size == 0:
        return 0
    ordered = np.sort(values, axis=None)
    ends = np.flatnonzero(ordered[1:] != ordered[:-1])
    runs = np.diff(np.concatenate(([-1], ends, [ordered.size - 1])))
    return int(np.sort(runs)[-k:].sum())


def colour_seen(rgb: np.ndarray) -> np.ndarray:
    """True where a colour can be told apart: neither too dark for it nor with a channel blown out."""
    brightest = _brightest_channel(rgb)
    return (brightest >= COLOUR_MIN_VALUE) & (brightest < CHANNEL_MAX)


def _brightest_channel(rgb: np.ndarray) -> np.ndarray:
    """max(R, G, B) per pixel (NumPy's max over the last axis is slow on interleaved channels)."""
    r, g, b = cv2.split(rgb)
    return cv2.max(cv2.max(r, g), b)


def colourless_share(rgb: np.ndarray, seen: np.ndarray | None = None) -> float:
    """Share of the pixels whose colour can be seen that have none (grey, white paper, black print):
    skin of any tone always has hue. Shadows, a dermatoscope's dark surround and blown-out white are
    not counted either way; if too little is left (a frame mostly dark or blown out), colour is not
    judged (0). `seen` is colour_seen(rgb), when the caller has it already."""
    seen = colour_seen(rgb) if seen is None else seen
    n = np.count_nonzero(seen)
    if n < MIN_COLOUR_SHARE * seen.size:
        return 0.0
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    return float(np.count_nonzero((saturation < GREY_SATURATION) & seen) / n)


def relative_contrast(grey: np.ndarray, mask: np.ndarray) -> float:
    """Standard deviation of the grey levels inside the picture over their mean: a washed-out, foggy or
    blank frame has little, a dark one as much as a bright one. Clipped black and white are left out
    (the clipping checks report them); a picture with almost nothing else has none (0)."""
    exposed = (mask & (grey > BLACK_LEVEL) & (grey < WHITE_LEVEL)).view(np.uint8)
    n = cv2.countNonZero(exposed)
    if n < max(2, MIN_EXPOSED_SHARE * np.count_nonzero(mask)):
        return 0.0
    mean, std = cv2.meanStdDev(grey, mask=exposed)
    return float(std[0, 0] / mean[0, 0])


def text_edge_share(grey: np.ndarray, mask: np.ndarray) -> float:
    """Share of the picture on a hard step between neighbouring pixels, as at the strokes of print.
    Skin, hairs included, has few such steps at this scale."""
    # |a - b| by OpenCV on shifted views: what NumPy's diff and abs give, in one pass instead of two
    # (but OpenCV returns nothing at all for a view one pixel wide or high, which has no neighbours).
    h, w = grey.shape
    step = np.zeros((h, w), bool)
    if w > 1:
        step[:, :-1] = cv2.absdiff(grey[:, 1:], grey[:, :-1]) > TEXT_STEP
    if h > 1:
        step[:-1] |= cv2.absdiff(grey[1:], grey[:-1]) > TEXT_STEP
    return float(np.count_nonzero(step & mask) / max(1, np.count_nonzero(mask)))


def measure(rgb: np.ndarray, original_size: tuple[int, int] | None = None) -> Measurements:
    """Every measured value. `original_size` is the photograph's own (width, height) when `rgb` is a
    reduced decode of it; only the size check uses it."""
    h, w = rgb.shape[:2]
    width, height = original_size if original_size is not None else (w, h)
    view = working_view(rgb)
    grey = view.grey
    mask = picture_mask(grey)
    seen = colour_seen(view.colour)  # both colour checks leave out the same pixels
    return Measurements(
        width=int(width), height=int(height),
        sharpness=sharpness(grey, mask),
        brightness=float(grey.mean()),
        contrast=relative_contrast(grey, mask),
        clipped_dark=float(np.count_nonzero(grey <= BLACK_LEVEL) / grey.size),
        clipped_bright=float(np.count_nonzero(grey >= WHITE_LEVEL) / grey.size),
        flat_colour=flat_colour_share(view.colour, seen),
        colourless=colourless_share(view.colour, seen),
        text_edges=text_edge_share(grey, mask),
    )


# ---------------------------------------------------------------- judging

def _number(v: float) -> str:
    return f"{v:.1f}" if abs(v) < 10 else f"{v:.0f}"


def _share(v: float) -> str:
    return f"{v:.0%}" if v >= 0.1 or v == 0 else f"{v:.1%}"


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
        where = "exactly at" if value == limit else "only just above" if at_least else "only just below"
        message = f"{label[0].upper()}{label[1:]} is {fmt(value)}, {where} the {bound} of {fmt(limit)}."
    else:
        message = f"{label[0].upper()}{label[1:]} is {fmt(value)} ({bound} {fmt(limit)})."
    return Check(name, round(float(value), 4), limit, passed, marginal, message, "min" if at_least else "max")


EXPOSURE_CHECKS = ("brightness_min", "brightness_max", "clipped_dark", "clipped_bright")
# Contrast and sharpness are measured on the picture's pixels; in a frame too dark or blown out they
# would fail for the exposure's sake and send the person after the wrong fault.
EXPOSURE_DEPENDENT = ("contrast", "sharpness")


def judge(m: Measurements, t: QualityThresholds) -> list[Check]:
    """Every check, in the order a person should read the failures: size, whether it is a photograph of
    skin at all, then how it was taken. While the exposure is wrong, contrast and sharpness are not
    held against the photograph (it fails all the same): the advice is to fix the light first."""
    k = t.marginal_margin
    checks = [
        # The network reads 224 px: a photograph that has them is not "only just" big enough.
        _judge("resolution", min(m.width, m.height), t.min_side_px, True, 0.0, _pixels, "the shorter side",
               f"The image is too small ({m.width} x {m.height} px); the shorter side must be at least "
               f"{t.min_side_px} px: send the original photograph, not a thumbnail or a cut-out."),
        _judge("flat_colour", m.flat_colour, t.max_flat_colour_share, False, k, _share,
               "the share of flat colour",
               f"{_share(m.flat_colour)} of the image is a few flat colours (at most "
               f"{_share(t.max_flat_colour_share)}), which a photograph of skin never is: it looks like a "
               "document, a screenshot or a blank frame; send a photograph of the skin."),
        _judge("colourless", m.colourless, t.max_colourless_share, False, k, _share,
               "the share without colour",
               f"{_share(m.colourless)} of the image has no colour (at most {_share(t.max_colourless_share)}): "
               "it looks like a document, a screenshot or a black-and-white picture; "
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
        _judge("contrast", m.contrast, t.min_relative_contrast, True, k, _share, "the contrast",
               f"The image is almost uniform (contrast {_share(m.contrast)}, needs "
               f"{_share(t.min_relative_contrast)}): it is washed out or foggy, or does not show the skin; "
               "clean the lens and take it again."),
        _judge("sharpness", m.sharpness, t.min_sharpness_share, True, k, _share, "the sharpness",
               f"The image is blurred: it shows too little fine detail at the size the network reads "
               f"(sharpness {_share(m.sharpness)}, needs {_share(t.min_sharpness_share)}); hold the camera "
               "still, focus on the lesion and take it again."),
    ]
    if any(not c.passed for c in checks if c.name in EXPOSURE_CHECKS):
        checks = [_not_judged(c) if c.name in EXPOSURE_DEPENDENT and not c.passed else c for c in checks]
    return checks


def _not_judged(c: Check) -> Check:
    return Check(c.name, c.value, c.threshold, True, False,
                 "Not judged while the exposure is wrong; fix the light first.", c.bound)


def assess_quality(rgb: np.ndarray, thresholds: QualityThresholds,
                   original_size: tuple[int, int] | None = None) -> QualityReport:
    """Judge one photograph. `rgb` may be a reduced decode (shorter side at least GATE_MIN_SIDE, see
    `triage.imaging.decode_reduced`); then `original_size` is the photograph's own (width, height), for the size check."""
    return QualityReport(judge(measure(rgb, original_size), thresholds))
