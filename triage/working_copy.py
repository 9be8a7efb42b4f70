"""The working copy: a photograph's reduced decode, kept by the portal for the worker.

The portal must decode every upload to check it (a damaged file is refused before it is stored). It
decodes at the scale the worker needs, `imaging.REDUCED_SIDE`, and keeps those pixels next to the
stored file, so the worker's quality gate and network read them instead of decoding the photograph a
second time (the decode was the largest CPU cost beside the network). The copy is exactly what
`decode_reduced(stored bytes, REDUCED_SIDE)` gives, made by the same function, and it names the
decoder that made it: a worker whose Pillow or libjpeg differs decodes the photograph itself, so a
model is always served the pixels its card's decoding gives.

It is a cache, never the record: the worker removes it once read, the store's sweeper removes the
copies of images no longer waiting, and a missing, damaged or foreign copy only costs a decode. It is
not forced to disk, so after a power cut it may hold zeros where pixels were; its checksum (CRC-32,
a tenth of a millisecond) makes sure such a copy is never read as a photograph.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import PIL
from PIL import features

_MAGIC = b"DTWC"
# height, width, the photograph's own upright width and height, and the pixels' CRC-32
_FIELDS = struct.Struct(">IIIII")


def _decoder() -> bytes:
    jpeg = features.version("libjpeg_turbo") or features.version("jpg") or "unknown"
    return f"Pillow {PIL.__version__}; libjpeg {jpeg}".encode()


DECODER = _decoder()


def pack(rgb: np.ndarray, own_size: tuple[int, int]) -> bytes:
    """Uncompressed: compressing half a megabyte costs milliseconds, which is what the copy saves."""
    height, width = rgb.shape[:2]
    pixels = np.ascontiguousarray(rgb, np.uint8).tobytes()
    fields = _FIELDS.pack(height, width, *own_size, zlib.crc32(pixels))
    return _MAGIC + bytes([len(DECODER)]) + DECODER + fields + pixels


def unpack(blob: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    """(upright RGB, the photograph's own (width, height)), as `decode_reduced` returned them; raises
    ValueError for anything else, including a copy made by another decoder."""
    if blob[:4] != _MAGIC or len(blob) < 5:
        raise ValueError("not a working copy")
    end = 5 + blob[4]
    if blob[5:end] != DECODER:
        raise ValueError(f"made by another decoder ({blob[5:end].decode(errors='replace')})")
    if len(blob) < end + _FIELDS.size:
        raise ValueError("working copy truncated")
    height, width, own_w, own_h, crc = _FIELDS.unpack_from(blob, end)
    pixels = memoryview(blob)[end + _FIELDS.size:]
    if len(pixels) != height * width * 3:
        raise ValueError("working copy truncated")
    if zlib.crc32(pixels) != crc:
        raise ValueError("working copy damaged (checksum)")
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 3), (own_w, own_h)
