"""Small labelled image sets made on the fly, for the training, split and evaluation tests.

Each class has its own colour (easy for a tiny network to learn in two epochs) while each image has
its own random structure, so perceptual hashes (which see grey structure, not colour) differ between
images as they do between different lesions. Near-duplicates are re-encodings and slight edits of one
picture, as ISIC's several photographs of one lesion are.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from harness.imagegen import encode

# Verbatim Kaggle folder names, numbers and counts included, with a colour per class.
KAGGLE_CLASSES = {
    "1. Eczema 1677": (200, 60, 60),
    "2. Melanoma 15.75k": (60, 60, 200),
    "4. Basal Cell Carcinoma (BCC) 3323": (60, 190, 70),
    "5. Melanocytic Nevi (NV) - 7970": (210, 200, 60),
}
# Melanoma and nevus drawn from one distribution: a pair no model can separate, as melanoma and nevus
# are the hard pair in life. A model trained on it makes mistakes to calibrate against.
LOOKALIKE_CLASSES = {**KAGGLE_CLASSES, "5. Melanocytic Nevi (NV) - 7970": KAGGLE_CLASSES["2. Melanoma 15.75k"]}
SLUG_OF = {"1. Eczema 1677": "eczema", "2. Melanoma 15.75k": "melanoma",
           "4. Basal Cell Carcinoma (BCC) 3323": "bcc", "5. Melanocytic Nevi (NV) - 7970": "melanocytic_nevi"}


def picture(seed: int, tint: tuple[int, int, int], side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    structure = cv2.GaussianBlur(rng.standard_normal((side, side)).astype(np.float32), (0, 0), side / 12)
    structure = (structure - structure.min()) / max(float(np.ptp(structure)), 1e-6)
    shade = 0.55 + 0.45 * structure[:, :, None]
    rgb = np.array(tint, np.float32) * shade + rng.normal(0, 4, (side, side, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def near_copies(rgb: np.ndarray) -> list[np.ndarray]:
    """What a second photograph of the same lesion, or a re-saved copy, looks like to a hash."""
    h, w = rgb.shape[:2]
    brighter = np.clip(rgb.astype(np.int16) + 6, 0, 255).astype(np.uint8)
    resized = cv2.resize(cv2.resize(rgb, (w * 3 // 2, h * 3 // 2)), (w, h))
    recompressed = np.asarray(Image.open(io.BytesIO(encode(rgb, "JPEG", quality=60))).convert("RGB"))
    return [brighter, resized, recompressed]


def write_labelled_folder(root: Path, per_class: int = 20, classes: dict | None = None, side: int = 64,
                          duplicate_sets: int = 0, seed: int = 0) -> Path:
    """root/<Kaggle folder>/img_NNN.png; with duplicate_sets, that many pictures per class also get
    three near-copies each (dup_NNN_a.jpg ...)."""
    classes = classes or KAGGLE_CLASSES
    for c, (folder, tint) in enumerate(classes.items()):
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = picture(seed * 100_000 + c * 1000 + i, tint, side)
            (target / f"img_{i:03d}.png").write_bytes(encode(rgb, "PNG"))
        for d in range(duplicate_sets):
            rgb = picture(seed * 100_000 + c * 1000 + 500 + d, tint, side)
            (target / f"dup_{d:03d}.png").write_bytes(encode(rgb, "PNG"))
            for copy, suffix in zip(near_copies(rgb), "abc"):
                (target / f"dup_{d:03d}_{suffix}.jpg").write_bytes(encode(copy, "JPEG", quality=92))
    return root


# One tiny training run per test process, shared by the training and evaluation tests: training is
# the slow part, and both only read what it left behind.
_TRAINED: dict[str, object] = {}
TINY_EPOCHS = 3
TINY_PER_CLASS = 130  # enough for a validation split of 50+ images, the least a temperature is fitted on
TINY_INPUT = 64


def trained_tiny_run(tmp_path_factory):
    """(data folder, TrainResult) of `python -m model.train DATA --backbone tiny --epochs 3`."""
    if "run" not in _TRAINED:
        from model.train import TrainOptions, train

        base = tmp_path_factory.mktemp("trained")
        data = write_labelled_folder(base / "data" / "IMG_CLASSES", per_class=TINY_PER_CLASS,
                                     classes=LOOKALIKE_CLASSES, duplicate_sets=3)
        options = TrainOptions(data=base / "data", run_dir=base / "run", backbone="tiny", epochs=TINY_EPOCHS,
                               batch_size=32, input_size=TINY_INPUT, verbose=0)
        _TRAINED["run"] = (data, train(options))
    return _TRAINED["run"]
