"""The photographs the benchmark uploads: generated once (0.5 to 4 megapixels), cached on disk, each unique."""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SCENES = 24  # distinct generated scenes; every photo is one of them, flipped and marked to be unique
MIN_MEGAPIXELS, MAX_MEGAPIXELS = 0.5, 4.0
JPEG_QUALITY = 90


@dataclass(frozen=True)
class PhotoSet:
    """Generated photographs on disk, made once and reused by later runs.

    Each is one of SCENES skin scenes at a size between 0.5 and 4 megapixels, flipped one of four
    ways and marked in one corner so that no two files have the same bytes (uploads of identical
    files would be answered as duplicates, not analysed).
    """
    folder: Path

    def paths(self, start: int, count: int) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        indices = range(start, start + count)
        missing = [i for i in indices if not self.file(i).exists()]
        if missing:
            for scene in sorted({i % SCENES for i in missing}):  # each scene once, before the threads
                scene_pixels(scene)
            with ThreadPoolExecutor(os.cpu_count()) as pool:  # JPEG encoding releases the GIL
                list(pool.map(self.path, missing))
            scene_pixels.cache_clear()
        return [self.file(i) for i in indices]

    def file(self, index: int) -> Path:
        return self.folder / f"{index:05d}.jpg"

    def path(self, index: int) -> Path:
        out = self.file(index)
        if not out.exists():
            tmp = out.with_suffix(".part")
            tmp.write_bytes(photo_bytes(index))
            tmp.replace(out)
        return out


def scene_size(scene: int) -> tuple[int, int]:
    """Sizes spread evenly on a log scale from MIN to MAX megapixels; every fourth one portrait."""
    pixels = MIN_MEGAPIXELS * (MAX_MEGAPIXELS / MIN_MEGAPIXELS) ** (scene / (SCENES - 1)) * 1e6
    long_side, short_side = round(math.sqrt(pixels * 4 / 3)), round(math.sqrt(pixels * 3 / 4))
    return (short_side, long_side) if scene % 4 == 3 else (long_side, short_side)


@lru_cache(maxsize=SCENES)
def scene_pixels(scene: int) -> np.ndarray:
    from harness.imagegen import skin_photo

    width, height = scene_size(scene)
    return skin_photo(scene, width, height)


def photo_bytes(index: int) -> bytes:
    from harness.imagegen import encode

    scene, variant = index % SCENES, index // SCENES
    rgb = scene_pixels(scene)
    rgb = rgb[::-1] if variant & 1 else rgb
    rgb = rgb[:, ::-1] if variant & 2 else rgb
    rgb = np.ascontiguousarray(rgb)
    bits = np.array([(variant >> b) & 1 for b in range(16)], np.uint8) * 255
    rgb[:4, :64] = np.repeat(bits, 4)[None, :, None]  # 16 black or white cells: the variant number
    return encode(rgb, "JPEG", quality=JPEG_QUALITY)
