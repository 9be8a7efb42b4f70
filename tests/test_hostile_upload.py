"""Hostile and awkward files in one upload, through the web app and a real worker.

Each hostile file is rejected alone with a reason (a 4xx, never a 500), nothing of it is stored,
and the valid-but-awkward files in the same request are accepted and analysed.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from harness import imagegen
from tests.support import stored_files
from tests.test_imaging import (SCRIPT, encode, gif_with_frames, jpeg_declaring, png_chunk,
                                png_with_chunk_before_idat, private_exif, with_segment)
from triage.schema import ImageStatus

SIZE = (400, 300)


def _photo(seed: int) -> np.ndarray:
    return imagegen.skin_photo(seed, *SIZE)


def hostile() -> dict[str, bytes]:
    good = imagegen.jpeg(1, *SIZE)
    bomb = png_chunk(b"zTXt", b"bomb\x00\x00" + __import__("zlib").compress(b"\x00" * (64 << 20)))
    return {
        "empty.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "huge-declared.jpg": jpeg_declaring(64_000, 64_000),
        "many-frames.gif": gif_with_frames(20_000),
        "text-bomb.png": png_with_chunk_before_idat(encode(_photo(2), "PNG"), bomb),
        "lying-extension.jpg": encode(_photo(3), "BMP"),
        "page.jpg": b"<!doctype html><html><body>" + SCRIPT + b"</body></html>",
        "script.jpg": b"#!/bin/sh\nrm -rf /\n",
    }


def awkward() -> dict[str, bytes]:
    rgb = _photo(10)
    image = Image.fromarray(rgb)
    grey16 = (np.asarray(image.convert("L"), np.uint16) * 257).astype(np.uint16)
    rotated = encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=private_exif(6).tobytes())
    frames = [Image.fromarray(_photo(11)), Image.fromarray(_photo(12))]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    return {
        "cmyk.jpg": encode(image.convert("CMYK"), "JPEG"),
        "grey.png": encode(image.convert("L"), "PNG"),
        "grey16.png": encode(Image.fromarray(grey16), "PNG"),
        "palette.png": encode(image.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "alpha.png": encode(image.convert("RGBA"), "PNG"),
        "rotated.jpg": rotated,
        "animated.webp": buf.getvalue(),
        "polyglot.jpg": with_segment(encode(_photo(13), "JPEG"), 0xFE, SCRIPT),
    }


def test_hostile_files_are_rejected_alone_and_awkward_ones_analysed(sqlite_stack):
    stack = sqlite_stack
    bad, odd = hostile(), awkward()
    response = stack.upload(list((data, name) for name, data in {**bad, **odd}.items()))
    assert response.status_code == 201
    files = {f["name"]: f for f in response.get_json()["files"]}
    for name in bad:
        assert files[name]["status"] == "rejected" and files[name]["reason"], name
    for name in odd:
        assert files[name]["status"] == "accepted", (name, files[name])
    assert len(stored_files(stack)) == len(odd)

    stack.start_worker()
    batch = response.get_json()["batch_id"]
    stack.wait_final(batch)
    by_name = {i["name"]: i for i in stack.client.get(f"/api/batches/{batch}").get_json()["images"]}
    for name in odd:
        if name.startswith("grey"):
            # Decoded correctly (16-bit scaled, tested in test_imaging), but the classifier judges
            # colour, so the gate asks for a colour photograph rather than guessing.
            assert by_name[name]["status"] == ImageStatus.NEEDS_RESHOOT
            assert "colour photograph" in by_name[name]["error"]
        else:
            assert by_name[name]["status"] == ImageStatus.ANALYSED, (name, by_name[name]["error"])
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == SIZE  # turned upright
    served = stack.client.get(by_name["polyglot.jpg"]["file_url"]).get_data()
    assert SCRIPT not in served
