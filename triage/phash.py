"""Perceptual hash (DCT pHash, 64 bits as 16 hex digits) and near-duplicate search.

Used at ingest (hash of what is stored), by the worker to flag near-duplicates, and by training to
keep near-duplicates of one lesion inside one split.
"""
from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

HASH_SIDE = 32  # the image is reduced to 32x32 grey; the 8x8 lowest frequencies make the hash
LOW = 8


def perceptual_hash(image: Image.Image | np.ndarray) -> str:
    if isinstance(image, Image.Image):
        grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), np.float32)
    else:
        rgb = cv2.resize(image, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    low = cv2.dct(grey)[:LOW, :LOW].flatten()
    # The DC term says only how bright the image is; compare the rest with their median.
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def nearest(ids: np.ndarray, hashes: np.ndarray, at: int, max_distance: int) -> int | None:
    """Id of the hash closest to `hashes[at]` among the others (ids and 64-bit hashes side by side),
    within max_distance, ties to the lowest id; None if none is that close. One vectorised pass, so a
    batch can be checked against every stored hash."""
    distance = np.bitwise_count(hashes ^ hashes[at]).astype(np.int64)
    distance[at] = max_distance + 1  # never itself
    close = np.flatnonzero(distance <= max_distance)
    if close.size == 0:
        return None
    best = close[np.lexsort((ids[close], distance[close]))[0]]
    return int(ids[best])
