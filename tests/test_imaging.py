"""The upload validator and metadata stripper against hostile and awkward files.

Every image is generated here (small, so the whole file runs in a few seconds). Each rejection
checks the message a person reads; each acceptance checks the stored bytes and the pixels.
"""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from harness import imagegen
from triage.imaging import (ACCEPTED_FORMATS, RejectedImage, SanitizedImage, decode_rgb, sanitize,
                            strip_jpeg_metadata, to_rgb)

LIMIT = 50_000_000  # the shipped default of DERMATRIAGE_MAX_IMAGE_PIXELS
W, H = 64, 48  # landscape on purpose, so a missed rotation shows in the size

SERIAL = "SN-4711-CAMERA"
TAKEN = "2023:05:06 07:08:09"
SCRIPT = b"<script>alert(1)</script>"
XMP_NS = b"http://ns.adobe.com/xap/1.0/"
TRAILER = b"TRAILING-PAYLOAD" + SCRIPT


# ---------------------------------------------------------------- builders

def photo(seed: int = 0, width: int = W, height: int = H) -> np.ndarray:
    return imagegen.skin_photo(seed, width, height)


def encode(image: Image.Image | np.ndarray, fmt: str, **params) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    """What Pillow decodes, in RGB: the reference the sanitized copy is compared with."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def private_exif(orientation: int | None = None) -> Image.Exif:
    """EXIF a phone would write: where (GPS IFD), when (DateTime), which device (serial)."""
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 12.5)
    gps[0x1B] = b"ASCII\x00\x00\x00GPS"  # GPSProcessingMethod: puts the literal b"GPS" in the file
    exif[0x0132] = TAKEN
    exif.get_ifd(0x8769)[0xA431] = SERIAL  # BodySerialNumber lives in the Exif sub-IFD
    if orientation is not None:
        exif[0x0112] = orientation
    return exif


def with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert an APPn/COM segment straight after SOI, as cameras and editors do."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunk_before_idat(png: bytes, chunk: bytes) -> bytes:
    at = png.index(b"IDAT") - 4  # the length field precedes the chunk type
    return png[:at] + chunk + png[at:]


def jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny valid JPEG whose SOF header is rewritten to claim the given size."""
    data = bytearray(encode(Image.new("L", (8, 8), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_frames(count: int) -> bytes:
    """A 1x1 GIF with `count` frames, written by hand so it stays ~15 bytes per frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    # image descriptor + LZW min code size 2 + one sub-block holding codes clear, 0, end-of-info
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame * count + b"\x3b"


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def marked(width: int = W, height: int = H) -> np.ndarray:
    """A photo with a saturated red block in the stored top-left corner, to follow rotations."""
    rgb = photo(3, width, height).copy()
    rgb[:16, :16] = (255, 0, 0)
    return rgb


def is_red(rgb: np.ndarray) -> bool:
    r, g, b = rgb.astype(int)
    return r > 200 and g < 60 and b < 60


def rejection(raw: bytes) -> str:
    with pytest.raises(RejectedImage) as info:
        sanitize(raw, LIMIT)
    return str(info.value)


def assert_no_jpeg_metadata(data: bytes) -> None:
    for needle in (b"Exif", b"GPS", SERIAL.encode(), TAKEN.encode(), XMP_NS, b"<script", TRAILER):
        assert needle not in data, needle
    assert data.endswith(b"\xff\xd9")  # nothing after end-of-image
    assert len(Image.open(io.BytesIO(data)).getexif()) == 0


# ---------------------------------------------------------------- rejected

def test_empty_file_is_rejected():
    assert rejection(b"") == "The file is empty."


def test_random_bytes_are_rejected():
    noise = np.random.RandomState(7).bytes(4096)
    assert "not a readable image" in rejection(noise)


def test_html_renamed_to_jpg_is_rejected():
    # The client's filename never reaches sanitize; only the bytes count.
    page = b"<!DOCTYPE html><html><body>" + SCRIPT + b"</body></html>"
    message = rejection(page)
    assert "not a readable image" in message and "JPEG, PNG and WEBP" in message


def test_truncated_jpeg_passes_verify_but_is_rejected():
    whole = imagegen.jpeg(0, W, H)
    truncated = whole[:len(whole) * 2 // 3]
    # verify() alone would let this through: that is why sanitize decodes fully.
    Image.open(io.BytesIO(truncated)).verify()
    assert "truncated" in rejection(truncated)


@pytest.mark.parametrize("side", [10_000, 64_000], ids=["over-our-cap", "over-pillow-bomb-limit"])
def test_huge_declared_jpeg_is_rejected_from_the_header(side):
    raw = jpeg_declaring(side, side)
    started = time.perf_counter()
    message = rejection(raw)
    # Decoding 64,000 x 64,000 would need ~12 GB; a header-only refusal takes microseconds.
    assert time.perf_counter() - started < 0.5
    assert "pixels" in message
    assert "not a readable image" not in message


def test_gif_is_rejected_even_when_valid():
    message = rejection(encode(photo(), "GIF"))
    assert message == "The file is a GIF image; only JPEG, PNG and WEBP are accepted."


def test_gif_with_thousands_of_frames_is_rejected_quickly():
    raw = gif_with_frames(5000)
    assert len(raw) < 100_000
    assert Image.open(io.BytesIO(raw)).n_frames == 5000  # the file really is what it claims
    started = time.perf_counter()
    assert "GIF" in rejection(raw)
    assert time.perf_counter() - started < 0.5


def _ztxt_bomb() -> bytes:
    return png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (8 << 20), 9))


def _itxt_bomb() -> bytes:
    # keyword, compression flag 1, method 0, empty language tag and translated keyword, then text
    return png_chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + zlib.compress(b"A" * (8 << 20), 9))


@pytest.mark.parametrize("bomb", [_ztxt_bomb, _itxt_bomb], ids=["zTXt", "iTXt"])
def test_png_text_chunk_decompression_bomb_is_rejected(bomb):
    raw = png_with_chunk_before_idat(encode(photo(), "PNG"), bomb())
    assert len(raw) < 64_000
    with pytest.raises(ValueError, match="(?i)decompressed data too large"):
        Image.open(io.BytesIO(raw))
    assert "too large to decode safely" in rejection(raw)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_unsupported_formats_are_rejected_by_name(fmt):
    assert fmt not in ACCEPTED_FORMATS
    assert rejection(encode(photo(), fmt)) == f"The file is a {fmt} image; only JPEG, PNG and WEBP are accepted."


# ---------------------------------------------------------------- JPEG metadata

def _jpeg_full_of_metadata(**params) -> bytes:
    raw = encode(photo(1), "JPEG", quality=90, exif=private_exif(), comment=SCRIPT,
                 xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>', **params)
    return raw + TRAILER


def test_jpeg_metadata_is_removed_and_pixels_are_untouched():
    raw = _jpeg_full_of_metadata()
    # The fixture must really carry what we claim to strip, or the test proves nothing.
    for needle in (b"Exif", b"GPS", SERIAL.encode(), TAKEN.encode(), XMP_NS, b"<script", TRAILER):
        assert needle in raw, needle
    clean = sanitize(raw, LIMIT)
    assert (clean.format, clean.source_format, clean.width, clean.height) == ("JPEG", "JPEG", W, H)
    assert_no_jpeg_metadata(clean.data)
    # Orientation 1 takes the lossless path: identical decoded pixels, no re-encoding.
    assert np.array_equal(pixels(clean.data), pixels(raw))


@pytest.mark.parametrize("orientation, size, red_corner", [
    (6, (H, W), (0, -1)),   # rotate 90 clockwise: stored top-left shows at the top right
    (3, (W, H), (-1, -1)),  # rotate 180: stored top-left shows at the bottom right
], ids=["orientation-6", "orientation-3"])
def test_exif_rotated_jpeg_is_stored_upright_without_exif(orientation, size, red_corner):
    raw = encode(marked(), "JPEG", quality=95, exif=private_exif(orientation), comment=SCRIPT)
    clean = sanitize(raw, LIMIT)
    assert (clean.width, clean.height) == size
    assert_no_jpeg_metadata(clean.data)  # includes the COM comment, which the encoder would copy
    upright = decode_rgb(clean.data)
    assert upright.shape == (size[1], size[0], 3)
    row, col = (4 if red_corner[0] == 0 else -5), (4 if red_corner[1] == 0 else -5)
    assert is_red(upright[row, col])
    assert not is_red(upright[4, 4])  # and it left the stored corner
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB"))
    assert np.abs(upright.astype(int) - expected.astype(int)).mean() < 3  # only re-encoding noise


def test_cmyk_jpeg_with_adobe_marker_converts_to_close_rgb():
    source = Image.new("RGB", (32, 32), (200, 90, 60))
    raw = encode(source.convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in raw  # Pillow marks CMYK JPEGs with APP14
    clean = sanitize(raw, LIMIT)
    # APP14 says the channels are inverted; dropping it would turn the colours negative.
    assert b"Adobe" in clean.data
    rgb = decode_rgb(clean.data)
    assert rgb.shape == (32, 32, 3)
    assert np.abs(rgb[16, 16].astype(int) - (200, 90, 60)).max() <= 6


def test_foreign_payloads_in_kept_marker_numbers_are_dropped():
    # APP0 and APP14 are kept only for JFIF and Adobe; anything else under those numbers may hide data.
    raw = encode(photo(), "JPEG")
    raw = with_segment(raw, 0xE0, b"JFXX\x00\x13" + b"THUMBNAIL-OF-FACE")
    raw = with_segment(raw, 0xEE, b"NotAdobe PRIVATE-NOTE")
    stripped = strip_jpeg_metadata(raw)
    assert b"THUMBNAIL-OF-FACE" not in stripped and b"PRIVATE-NOTE" not in stripped
    assert b"JFIF\x00" in stripped
    assert np.array_equal(pixels(stripped), pixels(raw))


def test_multi_picture_jpeg_from_a_phone_keeps_only_the_first_picture():
    first, second = photo(1), photo(2)
    raw = encode(Image.fromarray(first), "MPO", save_all=True, append_images=[Image.fromarray(second)],
                 exif=private_exif())
    assert Image.open(io.BytesIO(raw)).format == "MPO"
    clean = sanitize(raw, LIMIT)
    assert (clean.format, clean.source_format) == ("JPEG", "MPO")
    assert clean.data.count(b"\xff\xd8") == 1  # the second picture is gone
    assert b"MPF" not in clean.data
    assert_no_jpeg_metadata(clean.data)
    assert np.array_equal(pixels(clean.data), pixels(raw))


@pytest.mark.parametrize("params, marker", [
    ({"progressive": True}, b"\xff\xc2"),        # SOF2: several scans with tables in between
    ({"restart_marker_blocks": 1}, b"\xff\xdd"),  # DRI: RSTn markers inside the entropy data
], ids=["progressive", "restart-markers"])
def test_jpeg_variants_are_stripped_losslessly(params, marker):
    raw = _jpeg_full_of_metadata(**params)
    assert marker in raw
    stripped = strip_jpeg_metadata(raw)
    assert marker in stripped
    if "restart_marker_blocks" in params:
        restarts = [bytes([0xFF, m]) for m in range(0xD0, 0xD8)]
        assert sum(stripped.count(r) for r in restarts) == sum(raw.count(r) for r in restarts) > 0
    else:
        assert stripped.count(b"\xff\xda") == raw.count(b"\xff\xda") > 1
    assert_no_jpeg_metadata(stripped)
    assert np.array_equal(pixels(stripped), pixels(raw))


def test_strip_refuses_a_file_that_is_not_a_jpeg():
    with pytest.raises(RejectedImage, match="does not start like one"):
        strip_jpeg_metadata(encode(photo(), "PNG"))


# ---------------------------------------------------------------- colour modes

def test_greyscale_jpeg_and_png_give_three_equal_channels():
    grey = np.asarray(Image.fromarray(photo()).convert("L"))
    for fmt in ("JPEG", "PNG"):
        rgb = decode_rgb(sanitize(encode(grey, fmt), LIMIT).data)
        assert rgb.shape == (H, W, 3)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.array_equal(rgb[..., 0], grey)  # the PNG one is lossless


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], np.uint16).repeat(4, axis=0)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    clean = sanitize(encode(image, "PNG"), LIMIT)
    rgb = decode_rgb(clean.data)
    # Clipping would turn everything above 255 white; scaling keeps the grey levels.
    assert rgb[0, :, 0].tolist() == [0, 4, 128, 255]
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)


def test_to_rgb_scales_a_16_bit_image_directly():
    image = Image.fromarray(np.full((2, 2), 32768, np.uint16))
    assert to_rgb(image)[0, 0].tolist() == [128, 128, 128]


def _palette_image() -> Image.Image:
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2, 1])
    return image


def test_palette_png_without_transparency():
    rgb = decode_rgb(sanitize(encode(_palette_image(), "PNG"), LIMIT).data)
    assert rgb[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]]


def test_palette_png_transparent_index_becomes_white():
    raw = encode(_palette_image(), "PNG", transparency=1)
    clean = sanitize(raw, LIMIT)
    # Transparency must survive the re-encode (it lives in the image info the sanitizer trims).
    assert "transparency" in Image.open(io.BytesIO(clean.data)).info
    rgb = decode_rgb(clean.data)
    assert rgb[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255], [255, 255, 255]]


def test_rgba_png_alpha_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0] = [(0, 0, 0, 0), (10, 20, 30, 255), (0, 0, 0, 128)]
    rgb = decode_rgb(sanitize(encode(rgba, "PNG"), LIMIT).data)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # fully transparent: paper white, not black
    assert rgb[0, 1].tolist() == [10, 20, 30]
    assert np.abs(rgb[0, 2].astype(int) - 127).max() <= 1  # half black over white


# ---------------------------------------------------------------- WEBP, animation, PNG metadata

def test_lossless_webp_becomes_png_with_identical_pixels():
    rgb = photo(4)
    clean = sanitize(encode(rgb, "WEBP", lossless=True), LIMIT)
    assert (clean.format, clean.source_format) == ("PNG", "WEBP")
    assert clean.data.startswith(b"\x89PNG")
    assert np.array_equal(decode_rgb(clean.data), rgb)


def test_lossy_webp_becomes_png_of_the_decoded_pixels():
    raw = encode(photo(4), "WEBP", quality=80)
    clean = sanitize(raw, LIMIT)
    assert clean.format == "PNG"
    assert np.array_equal(decode_rgb(clean.data), pixels(raw))


@pytest.mark.parametrize("fmt, params", [
    ("WEBP", {"lossless": True}),
    ("PNG", {}),
], ids=["animated-webp", "animated-png"])
def test_animated_image_keeps_the_first_frame(fmt, params):
    frames = [photo(5), 255 - photo(5), photo(6)]
    raw = encode(Image.fromarray(frames[0]), fmt, save_all=True,
                 append_images=[Image.fromarray(f) for f in frames[1:]], duration=100, **params)
    assert Image.open(io.BytesIO(raw)).n_frames == 3
    clean = sanitize(raw, LIMIT)
    stored = Image.open(io.BytesIO(clean.data))
    assert getattr(stored, "n_frames", 1) == 1 and b"acTL" not in clean.data
    assert np.array_equal(decode_rgb(clean.data), frames[0])


def test_png_text_and_exif_chunks_are_removed():
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "clinic physician")
    info.add_text("Place", "Ward 7", zip=True)
    info.add_itxt("Patient", "record 0042-XY")
    raw = encode(photo(), "PNG", pnginfo=info, exif=private_exif())
    for kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
        assert kind in raw, kind
    clean = sanitize(raw, LIMIT)
    for needle in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"clinic physician", b"record 0042-XY", SERIAL.encode()):
        assert needle not in clean.data, needle
    assert np.array_equal(decode_rgb(clean.data), photo())


def test_png_exif_orientation_is_applied_then_dropped():
    raw = encode(marked(), "PNG", exif=private_exif(6))
    clean = sanitize(raw, LIMIT)
    assert (clean.width, clean.height) == (H, W)
    assert b"eXIf" not in clean.data and SERIAL.encode() not in clean.data
    assert is_red(decode_rgb(clean.data)[4, -5])


@pytest.mark.parametrize("fmt, params", [
    ("JPEG", {}),
    ("JPEG", {"exif": private_exif(6)}),  # the re-encoding path
    ("PNG", {}),
    ("WEBP", {"lossless": True}),
], ids=["jpeg", "rotated-jpeg", "png", "webp"])
def test_icc_profile_is_preserved(fmt, params):
    icc = srgb_icc()
    clean = sanitize(encode(photo(), fmt, icc_profile=icc, **params), LIMIT)
    assert Image.open(io.BytesIO(clean.data)).info.get("icc_profile") == icc


def test_no_icc_profile_is_invented():
    clean = sanitize(encode(photo(), "PNG"), LIMIT)
    assert b"iCCP" not in clean.data


# ---------------------------------------------------------------- every stored output is readable

ACCEPTED = {
    "jpeg-metadata": lambda: _jpeg_full_of_metadata(),
    "jpeg-rotated": lambda: encode(marked(), "JPEG", exif=private_exif(6)),
    "jpeg-progressive": lambda: encode(photo(), "JPEG", progressive=True),
    "jpeg-cmyk": lambda: encode(Image.fromarray(photo()).convert("CMYK"), "JPEG"),
    "jpeg-grey": lambda: encode(Image.fromarray(photo()).convert("L"), "JPEG"),
    "png-rgb": lambda: encode(photo(), "PNG"),
    "png-grey": lambda: encode(Image.fromarray(photo()).convert("L"), "PNG"),
    "png-16bit": lambda: encode(Image.fromarray(np.full((H, W), 40000, np.uint16)), "PNG"),
    "png-palette": lambda: encode(_palette_image(), "PNG"),
    "png-palette-transparent": lambda: encode(_palette_image(), "PNG", transparency=0),
    "png-rgba": lambda: encode(Image.fromarray(photo()).convert("RGBA"), "PNG"),
    "png-la": lambda: encode(Image.fromarray(photo()).convert("LA"), "PNG"),
    "png-bilevel": lambda: encode(Image.fromarray(photo()).convert("1"), "PNG"),
    "webp-lossy": lambda: encode(photo(), "WEBP"),
    "webp-lossless-rgba": lambda: encode(Image.fromarray(photo()).convert("RGBA"), "WEBP", lossless=True),
}


@pytest.mark.parametrize("build", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_every_stored_output_decodes_to_8_bit_rgb(build):
    clean = sanitize(build(), LIMIT)
    assert isinstance(clean, SanitizedImage)
    assert clean.format in ("JPEG", "PNG")
    stored = Image.open(io.BytesIO(clean.data))
    assert (stored.format, stored.size) == (clean.format, (clean.width, clean.height))
    rgb = decode_rgb(clean.data)
    assert rgb.shape == (clean.height, clean.width, 3) and rgb.dtype == np.uint8
    # Stored output is itself clean input: sanitizing it again changes nothing.
    again = sanitize(clean.data, LIMIT)
    assert np.array_equal(decode_rgb(again.data), rgb)
