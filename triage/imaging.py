"""Reading untrusted image bytes: validate fully, remove metadata, convert to RGB.

The web uses `sanitize` before anything is stored; the worker uses `decode_reduced` on the stored file
(at the scale its model's card says), or the portal's reduced decode of it (`triage.working_copy`).
Both live here so that what the portal accepts is exactly what the worker can read.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .phash import perceptual_hash

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
UNREADABLE = "The file is not a readable image; JPEG, PNG and WEBP are accepted."
# Pillow names a JPEG that carries extra pictures (phone cameras' multi-picture format) "MPO". Its
# first picture is an ordinary JPEG; the extra ones sit after its end-of-image marker and are dropped.
_JPEG_VARIANTS = ("JPEG", "MPO")
_EXIF_ORIENTATION = 0x0112
# Pillow's own bomb guard stays on as a second line; our explicit cap below gives the clear message.
Image.MAX_IMAGE_PIXELS = 200_000_000
# The shorter side a reduced decode keeps: the quality gate judges at 224 px and the networks take 224.
REDUCED_SIDE = 224


class RejectedImage(Exception):
    """The bytes are not an image we accept; the message is written for a person."""


@dataclass(frozen=True)
class SanitizedImage:
    data: bytes  # what is stored: metadata removed, orientation applied
    format: str  # JPEG or PNG
    width: int
    height: int
    source_format: str
    phash: str  # perceptual hash of the stored pixels, for near-duplicate flags
    # decode_reduced(data, REDUCED_SIDE), when checking the file made it anyway (a JPEG stored as sent)
    working: tuple[np.ndarray, tuple[int, int]] | None = None


def sanitize(raw: bytes, max_pixels: int, working: bool = True) -> SanitizedImage:
    """Decode the whole image and return a metadata-free copy, or raise RejectedImage. `working`: keep
    the reduced decode's pixels (`SanitizedImage.working`) where there are some."""
    if not raw:
        raise RejectedImage("The file is empty.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _sanitize(raw, max_pixels, working)
        except RejectedImage:
            raise
        except Image.DecompressionBombError as exc:
            raise RejectedImage(f"The image is too large to decode safely ({exc}).") from None
        except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error, ...
            raise RejectedImage(f"The file could not be decoded as an image ({type(exc).__name__}: {exc}).") from None


def _sanitize(raw: bytes, max_pixels: int, working: bool) -> SanitizedImage:
    try:
        probe = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses absurd declared sizes while reading the header, before our own cap is reached.
        raise RejectedImage("The image declares far more pixels than can be decoded safely.") from None
    except ValueError as exc:
        if "too large" in str(exc).lower():  # e.g. a PNG text chunk that inflates without bound
            raise RejectedImage("The file holds an embedded block too large to decode safely.") from None
        raise RejectedImage(UNREADABLE) from None
    except Exception:
        raise RejectedImage(UNREADABLE) from None
    fmt = probe.format
    kind = "JPEG" if fmt in _JPEG_VARIANTS else fmt
    if kind not in ACCEPTED_FORMATS:
        raise RejectedImage(f"The file is a {fmt} image; only JPEG, PNG and WEBP are accepted.")
    width, height = probe.size
    if width * height > max_pixels:
        raise RejectedImage(f"The image declares {width} x {height} pixels, more than the limit of "
                            f"{max_pixels:,} pixels.")
    orientation = _orientation(probe)
    if kind == "JPEG" and orientation == 1:
        # Common case: drop metadata segments without re-encoding, so pixels stay exactly as taken.
        data = strip_jpeg_metadata(raw)
        # Every block of every scan is Huffman-decoded whatever the scale (libjpeg scales in the
        # inverse DCT), so a truncated or corrupt file fails here exactly as at full size
        # (tests/test_web.py holds the two to the same verdicts). The scale is the worker's, so these
        # pixels are kept for it (triage.working_copy) instead of decoding the file again there.
        image, own_size = open_reduced(data, REDUCED_SIDE)
        kept = (to_rgb(image), own_size) if working else None  # out of Pillow only when kept (0.4 ms)
        return SanitizedImage(data, "JPEG", width, height, fmt, _phash(image), kept)
    probe.load()
    upright = ImageOps.exif_transpose(probe)  # first frame only for animated files
    return _reencode(upright, probe, kind, fmt)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # damaged EXIF is dropped anyway; it must not cost the picture
        return 1


def _phash(image: Image.Image) -> str:
    # 16-bit and float modes would clip in Pillow's own grey conversion; scale them first.
    return perceptual_hash(to_rgb(image) if image.mode.startswith(("I", "F")) else image)


def _reencode(image: Image.Image, source: Image.Image, kind: str, fmt: str) -> SanitizedImage:
    buf = io.BytesIO()
    icc = source.info.get("icc_profile")
    extra = {"icc_profile": icc} if icc else {}
    # Encoders fall back on image.info for some fields (the JPEG encoder rewrites the source's COM
    # comment), so only what the pixels need survives: palette transparency.
    image = image.copy()
    image.info = {k: v for k, v in image.info.items() if k == "transparency"}
    if kind == "JPEG":
        # Only a rotated JPEG gets here; quality 95 keeps the re-encoding loss negligible.
        image.save(buf, "JPEG", quality=95, subsampling=0, **extra)
        out_fmt = "JPEG"
    else:
        # PNG and WEBP become lossless PNG: only the pixels (and colour profile) survive.
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        image.save(buf, "PNG", **extra)
        out_fmt = "PNG"
    return SanitizedImage(buf.getvalue(), out_fmt, image.width, image.height, fmt, _phash(image))


# JPEG application segments we keep before the image data, recognised by marker AND identifier so
# that a private payload cannot hide in a kept marker number: JFIF (APP0), colour profile (APP2
# ICC_PROFILE) and Adobe (APP14, which says how CMYK/YCCK is stored). Every other APPn (EXIF, XMP,
# IPTC, maker notes, JFXX thumbnails) and every comment is dropped, as is anything after the
# end-of-image marker.
_KEEP_APP = {0xE0: b"JFIF\x00", 0xE2: b"ICC_PROFILE\x00", 0xEE: b"Adobe"}


def strip_jpeg_metadata(raw: bytes) -> bytes:
    if raw[:2] != b"\xff\xd8":
        raise RejectedImage("The file says it is a JPEG but does not start like one.")
    out = bytearray(b"\xff\xd8")
    pos = 2
    n = len(raw)
    while pos < n:
        if raw[pos] != 0xFF:
            raise RejectedImage("The JPEG structure is damaged.")
        marker = raw[pos + 1] if pos + 1 < n else 0
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image: everything after it is dropped
            out += b"\xff\xd9"
            return bytes(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            out += raw[pos:pos + 2]
            pos += 2
            continue
        if pos + 4 > n:
            raise RejectedImage("The JPEG file is truncated.")
        (length,) = struct.unpack(">H", raw[pos + 2:pos + 4])
        end = pos + 2 + length
        if length < 2 or end > n:
            raise RejectedImage("The JPEG file is truncated.")
        segment = raw[pos:end]
        if marker == 0xDA:  # start of scan: copy header and entropy-coded data up to the next marker
            scan_end = _end_of_entropy_data(raw, end)
            out += raw[pos:scan_end]
            pos = scan_end
            continue
        if _keep_segment(marker, segment):
            out += segment
        pos = end
    raise RejectedImage("The JPEG file is truncated (no end-of-image marker).")


def _keep_segment(marker: int, segment: bytes) -> bool:
    if 0xE0 <= marker <= 0xEF:
        return marker in _KEEP_APP and segment[4:].startswith(_KEEP_APP[marker])
    return marker != 0xFE  # COM: free text


def _end_of_entropy_data(raw: bytes, pos: int) -> int:
    """Index of the first marker after entropy-coded data (stuffed 0xFF00 and restarts are data)."""
    n = len(raw)
    while True:
        pos = raw.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            raise RejectedImage("The JPEG file is truncated (image data ends early).")
        nxt = raw[pos + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1 if nxt == 0xFF else 2
            continue
        return pos


def decode_rgb(data: bytes) -> np.ndarray:
    """Stored bytes -> upright 8-bit RGB array (H, W, 3), every pixel decoded."""
    return decode_reduced(data)[0]


_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that turn the picture a quarter


def decode_reduced(data: bytes, at_least: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """(upright RGB, the photograph's own upright (width, height)).

    With `at_least`, a JPEG is decoded at the smallest of libjpeg's scales (1/2, 1/4, 1/8, applied in
    the inverse DCT, so the skipped pixels are never computed) whose shorter side stays at least that
    many pixels: a 4,000 x 3,000 photograph for a 224-px network and gate comes out 500 x 375, at a
    fraction of the cost. Other formats, and smaller JPEGs, are decoded whole."""
    image, own_size = open_reduced(data, at_least)
    return to_rgb(image), own_size


def open_reduced(data: bytes, at_least: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """`decode_reduced` as an upright Pillow image in its own mode."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if at_least and image.format == "JPEG" and min(width, height) > at_least:
        scale = at_least / min(width, height)
        image.draft("RGB", (max(at_least, math.ceil(width * scale)), max(at_least, math.ceil(height * scale))))
    image.load()
    if _orientation(image) in _SWAPS_AXES:
        width, height = height, width
    # In place: a copy of every photograph (almost none needs turning) cost as much as the decode.
    ImageOps.exif_transpose(image, in_place=True)
    return image, (width, height)


THUMB_SIDE = 160  # the pages show thumbnails at 72 px; twice that for sharp screens, and a little more


def thumbnail_jpeg(data: bytes, side: int = THUMB_SIDE) -> bytes:
    """A small upright JPEG of stored bytes for the pages, its shorter side `side` pixels (a smaller
    photograph keeps its size). A JPEG is decoded at the reduced DCT scale that still covers `side`,
    so a 12-megapixel photograph costs a few milliseconds, and a page of thumbnails downloads a few
    kilobytes each instead of every photograph whole."""
    rgb, _ = decode_reduced(data, side)
    image = Image.fromarray(rgb)
    width, height = image.size
    if min(width, height) > side:
        scale = side / min(width, height)
        image = image.resize((max(side, round(width * scale)), max(side, round(height * scale))),
                             Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> 8-bit RGB: 16-bit scaled (not clipped), alpha laid on white, CMYK converted."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
