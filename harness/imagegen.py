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
PORES = (1.2, 3.3)  # (blur in scene pixels, depth in grey levels): fine skin texture
MOTTLE = (4.0, 6.0)  # (blur in scene pixels, depth in red levels): uneven redness, broader than pores
LIGHT_SKIN = (205, 160, 135)
DARK_SKIN = (92, 62, 48)  # deeply pigmented skin: the gate must not call it underexposed


def skin_photo(seed: int = 0, width: int = 640, height: int = 480, *, hairs: bool = True,
               tone: tuple[int, int, int] = LIGHT_SKIN) -> np.ndarray:
    """A sharp, well-lit RGB 'photograph': skin tone, lighting gradient, pores, a pigmented lesion, hairs.

    Lengths are proportional to the image size, so one seed at 640 px and at 4000 px shows the same
    scene, as a phone and a webcam would. Per-pixel sensor noise comes last: real photographs never
    have large areas of one exact colour, and the quality gate's screenshot detector relies on that.
    Without hairs it is about as plain as a photo of smooth skin gets (hairs are its sharpest detail);
    `tone` sets the skin colour, and the lesion darkens in proportion.
    """
    rng = np.random.RandomState(seed)
    unit = max(width, height) / SCENE_SIDE
    scale = np.array(tone, np.float32) / np.array(LIGHT_SKIN, np.float32)
    base = np.array(tone, np.float32) + rng.uniform(-25, 25, 3).astype(np.float32) * scale
    yy, xx = (axis.astype(np.float32) for axis in np.ogrid[0:height, 0:width])
    light = 0.85 + 0.25 * (xx / width) * (0.6 + 0.4 * yy / height)
    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    ry, rx = height * rng.uniform(0.10, 0.22), width * rng.uniform(0.10, 0.22)
    dist = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    edge = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.randint(3, 8))
    lesion = np.clip(1.5 - dist / edge, 0, 1)
    colour = (np.array([95, 55, 40], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)) * scale
    dots = _at_scene_scale(lambda h, w: (rng.rand(h, w) < 0.02).astype(np.float32), width, height, unit)
    noise = np.random.default_rng(seed)
    pores = _at_scene_scale(lambda h, w: _texture(noise, h, w, *PORES), width, height, unit)
    mottle = _at_scene_scale(lambda h, w: _texture(noise, h, w, *MOTTLE), width, height, unit)
    shade = 1 - _hairs(rng, width, height, unit) * (0.6 if hairs else 0.0)
    channels = []
    for c in range(3):  # one plane at a time: numpy is several times slower on a trailing axis of 3
        plane = base[c] * light * (1 - lesion) + (colour[c] - 40 * dots) * lesion
        plane = (plane + pores + mottle * (1.0, 0.5, 0.4)[c]) * shade
        plane += noise.standard_normal((height, width), np.float32) * SENSOR_NOISE
        channels.append(np.clip(plane, 0, 255).astype(np.uint8))
    return np.dstack(channels)


def _at_scene_scale(make, width: int, height: int, unit: float) -> np.ndarray:
    """make(h, w) at the scene's resolution, enlarged to (height, width): detail keeps its size in the scene."""
    if unit <= 1:
        return make(height, width)
    small = make(max(1, round(height / unit)), max(1, round(width / unit)))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _texture(noise: np.random.Generator, height: int, width: int, blur: float, depth: float) -> np.ndarray:
    field = cv2.GaussianBlur(noise.standard_normal((height, width), np.float32), (0, 0), blur)
    return field * (depth / max(float(field.std()), 1e-6))


def _hairs(rng: np.random.RandomState, width: int, height: int, unit: float) -> np.ndarray:
    """Dark lines drawn on the scene's grid, so their width and softness follow the image size too."""
    lines = rng.uniform(0, 1, (rng.randint(2, 6), 4))  # x1, y1, x2, y2 as fractions of the frame

    def draw(h: int, w: int) -> np.ndarray:
        canvas = np.zeros((h, w), np.uint8)
        for x1, y1, x2, y2 in lines:
            cv2.line(canvas, (int(x1 * w), int(y1 * h)), (int(x2 * w), int(y2 * h)), 255, 1, cv2.LINE_AA)
        return canvas.astype(np.float32) / 255.0

    return _at_scene_scale(draw, width, height, unit)


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


def enlarged(rgb: np.ndarray, side: int = 4000) -> np.ndarray:
    """Blown up (bicubic) to a longer side of `side` px: more pixels, no more detail."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)


def low_contrast(rgb: np.ndarray, factor: float = 0.12) -> np.ndarray:
    """Washed out, as through fog or a dirty lens: every pixel pulled towards the mean."""
    img = rgb.astype(np.float32)
    return np.clip(img.mean() + (img - img.mean()) * factor, 0, 255).astype(np.uint8)


def shadowed(rgb: np.ndarray, share: float = 0.6) -> np.ndarray:
    """The left `share` of the frame in black shadow (a hand over the lamp, a finger over the lens)."""
    out = rgb.copy()
    out[:, :round(rgb.shape[1] * share)] = 0
    return out


def glare(rgb: np.ndarray, share: float = 0.2) -> np.ndarray:
    """A blown-out white reflection covering about `share` of the frame, soft at its rim."""
    h, w = rgb.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    radius = np.sqrt(share * h * w / np.pi)
    dist = np.sqrt((yy - h * 0.4) ** 2 + (xx - w * 0.6) ** 2)
    # Full white inside the radius, fading to the skin over a few percent of the frame outside it.
    alpha = np.clip(1 - (dist - radius) / (0.03 * max(h, w)), 0, 1)[:, :, None]
    return (rgb * (1 - alpha) + 255 * alpha).astype(np.uint8)


def vignette(rgb: np.ndarray, diameter: float = 1.0, soft: float = 0.004) -> np.ndarray:
    """The black surround of a dermatoscope: a circle of `diameter` x the shorter side stays, the
    rest is black; its rim blurs over `soft` x the longer side (0 gives a hard, aliased rim)."""
    h, w = rgb.shape[:2]
    yy, xx = np.ogrid[0:h, 0:w]
    inside = (np.sqrt((yy - h / 2) ** 2 + (xx - w / 2) ** 2) <= diameter * min(h, w) / 2).astype(np.float32)
    if soft > 0:
        inside = cv2.GaussianBlur(inside, (0, 0), soft * max(h, w))
    return (rgb * inside[:, :, None]).astype(np.uint8)


def photographed(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """A picture of `rgb` taken with a phone: warm indoor light, slight softness, sensor noise."""
    img = rgb.astype(np.float32) * np.array([1.0, 0.93, 0.82], np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    img += np.random.default_rng(seed).standard_normal(img.shape, np.float32) * 3
    return np.clip(img, 0, 255).astype(np.uint8)


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


# The degradations the quality gate is held to (issue 15), in proportion to the picture's size.
def blurred_by_size(rgb: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """Gaussian blur of sigma `fraction` x the longer side: the same softness at every size."""
    return cv2.GaussianBlur(rgb, (0, 0), fraction * max(rgb.shape[:2]))


def blown_out(rgb: np.ndarray, gain: float = 2.5, offset: float = 90.0) -> np.ndarray:
    """Overexposed the way a flash too close does it: everything but the darkest parts clipped."""
    return np.clip(rgb.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def shrunk_to_shorter(rgb: np.ndarray, side: int = 224) -> np.ndarray:
    """Area-averaged to a shorter side of `side` px (a smaller picture is returned as it is)."""
    h, w = rgb.shape[:2]
    scale = side / min(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def smooth_nevus(seed: int = 0, width: int = 640, height: int = 480) -> np.ndarray:
    """A dermoscopic view of a smooth nevus, sharp but with little detail: a large brown lesion with a
    soft rim and a faint pigment network on even skin, no hairs, sensor noise, in a dermatoscope's
    black circle. Blur is not what makes it plain: its subject is."""
    rng = np.random.RandomState(seed)
    unit = max(width, height) / SCENE_SIDE
    yy, xx = (axis.astype(np.float32) for axis in np.ogrid[0:height, 0:width])
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    r = min(height, width) * rng.uniform(0.25, 0.32)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
    lesion = np.clip((1.15 - dist) / 0.3, 0, 1)  # a rim over about a third of the radius: soft by nature
    noise = np.random.default_rng(seed)
    # A faint network of pigment: a fine grid of dots, a few grey levels deep, only inside the lesion.
    network = _at_scene_scale(lambda h, w: _texture(noise, h, w, 1.0, 3.0), width, height, unit)
    skin = np.array([210, 170, 150], np.float32)
    brown = np.array([150, 100, 75], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    channels = []
    for c in range(3):
        plane = skin[c] * (1 - lesion) + (brown[c] + network) * lesion
        plane += noise.standard_normal((height, width), np.float32) * SENSOR_NOISE
        channels.append(np.clip(plane, 0, 255).astype(np.uint8))
    return vignette(np.dstack(channels))


def veiled_nevus(seed: int = 0, width: int = 640, height: int = 480, surround=(58, 58, 60),
                 veil=(112, 122, 138), field: float = 0.4) -> np.ndarray:
    """`smooth_nevus` with a blue-grey veil over its middle, seen through a small dermatoscope field:
    a dark grey (not black) surround covers about half the frame. Little saturation, much darkness,
    and still a colour photograph of skin."""
    rgb = smooth_nevus(seed, width, height).astype(np.float32)
    yy, xx = np.ogrid[0:height, 0:width]
    inside = np.sqrt((yy - height / 2) ** 2 + (xx - width / 2) ** 2) <= field * min(height, width)
    blob = ((yy - height * 0.5) / (0.2 * height)) ** 2 + ((xx - width * 0.48) / (0.18 * width)) ** 2 <= 1
    noise = np.random.default_rng(seed).standard_normal((height, width, 1)).astype(np.float32) * SENSOR_NOISE
    rgb[blob] = np.array(veil, np.float32) + noise[blob]
    rgb[~inside] = np.array(surround, np.float32) + noise[~inside]
    return np.clip(rgb, 0, 255).astype(np.uint8)
