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


def nearest(target: str, candidates: list[tuple[int, str]], max_distance: int) -> int | None:
    """Id of the closest candidate within max_distance (ties: the lowest id), or None."""
    best: tuple[int, int] | None = None
    value = int(target, 16)
    for cid, phash in candidates:
        d = (value ^ int(phash, 16)).bit_count()
        if d <= max_distance and (best is None or (d, cid) < best):
            best = (d, cid)
    return None if best is None else best[1]
