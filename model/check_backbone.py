"""`dermatriage check-backbone NAME`: does a backbone's ImageNet network still see a cat as a cat?

A converted or copied weights file can be subtly wrong (a transposed kernel, padding on the wrong
side, a batch-norm epsilon off) and still train, only worse. So the full ImageNet classifier is run
on scikit-image's sample photographs, prepared exactly as the worker prepares an upload
(`preprocess.preprocess_rgb` with the backbone's scaling), and its top five classes are printed.
The check passes when the cat (chelsea) lands in a cat class (281-285) and the coffee on espresso
(967); the other photographs are printed for a human eye.

Nothing is downloaded: the photographs are the files shipped inside the scikit-image wheel (read
directly, so its download fallback is never reached), and the class names are a committed file.
Exit status: 0 pass, 1 wrong classes, 2 weights or sample photographs not available.
"""
from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

import numpy as np

from .backbone_weights import MissingWeights, file_md5, keras_cache_file
from .preprocess import INPUT_SIZE, LITE_SCALING, PREPROCESSING, preprocess_rgb

# The 1000 ImageNet class names in index order, taken once from torchvision's
# torchvision/models/_meta.py (_IMAGENET_CATEGORIES, torchvision 0.29.1 wheel).
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
# (file in skimage/data, what it shows, the class indices that pass; None: shown, not checked)
SAMPLES = (
    ("chelsea.png", "cat", range(281, 286)),
    ("coffee.png", "coffee", range(967, 968)),
    ("astronaut.png", "astronaut", None),
    ("rocket.jpg", "rocket", None),
)
# ResNet152's ImageNet check needs the file *with* the classifier; the 'notop' file training uses
# ends at the features. Keras caches both side by side (MD5 from keras.applications.resnet).
RESNET_TOP_FILE = "resnet152_weights_tf_dim_ordering_tf_kernels.h5"
RESNET_TOP_MD5 = "100835be76be38e30d865e96f2aaae62"
CHECKED = ("efficientnet-lite0", "resnet152")


def imagenet_classes() -> list[str]:
    names = CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise ValueError(f"{CLASSES_FILE} has {len(names)} names, not 1000")
    return names


def sample_photographs() -> list[tuple[str, str, np.ndarray]]:
    """(file, subject, RGB uint8) for each sample, read from the installed scikit-image package."""
    from PIL import Image

    try:
        folder = importlib.resources.files("skimage.data")
    except ModuleNotFoundError:
        raise MissingWeights('the sample photographs come with scikit-image, which is not installed: '
                             'pip install "scikit-image==0.26.0" (or pip install -e ".[lite0]")') from None
    photos = []
    for name, subject, _expected in SAMPLES:
        with Image.open(folder / name) as image:
            photos.append((name, subject, np.asarray(image.convert("RGB"))))
    return photos


def imagenet_network(backbone: str, data_dir: str | None = None):
    """(ImageNet classifier, input scaling) for a backbone, from local files only."""
    if backbone == "efficientnet-lite0":
        from .lite0 import load_imagenet_classifier

        return load_imagenet_classifier(data_dir=data_dir), LITE_SCALING
    if backbone == "resnet152":
        path = keras_cache_file().with_name(RESNET_TOP_FILE)
        if not path.is_file() or file_md5(path) != RESNET_TOP_MD5:
            raise MissingWeights(
                f"the ImageNet check of ResNet152 needs the Keras weights file with its classifier, {RESNET_TOP_FILE}\n"
                f"(MD5 {RESNET_TOP_MD5}), at {path}; the 'notop' file training uses cannot name ImageNet classes.")
        import keras

        return keras.applications.ResNet152(weights=str(path)), PREPROCESSING
    raise ValueError(f"no ImageNet check for {backbone!r}; known: {', '.join(CHECKED)}")


def check(backbone: str, data_dir: str | None = None, out=sys.stdout) -> int:
    try:
        photos = sample_photographs()
        network, scaling = imagenet_network(backbone, data_dir)
    except MissingWeights as exc:
        print(f"check-backbone {backbone}: {exc}", file=out)
        return 2
    names = imagenet_classes()
    batch = np.stack([preprocess_rgb(rgb, INPUT_SIZE, scaling) for _, _, rgb in photos])
    probabilities = np.asarray(network(batch, training=False))
    failures = 0
    for (file, subject, rgb), (_, _, expected), probs in zip(photos, SAMPLES, probabilities):
        top = np.argsort(-probs)[:5]
        verdict = ""
        if expected is not None:
            ok = int(top[0]) in expected
            failures += not ok
            verdict = f"  {'OK' if ok else 'WRONG'} (expected {_describe(expected, names)})"
        print(f"{file} ({subject}, {rgb.shape[1]}x{rgb.shape[0]}): {names[top[0]]}{verdict}", file=out)
        for rank, index in enumerate(top, start=1):
            print(f"  {rank}. {names[index]:<28} #{index:<4} {probs[index]:7.2%}", file=out)
    print(f"check-backbone {backbone}: {'PASS' if not failures else f'FAIL ({failures} wrong)'}", file=out)
    return 0 if not failures else 1


def _describe(expected: range, names: list[str]) -> str:
    return " / ".join(f"{names[i]} #{i}" for i in expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dermatriage check-backbone", description=__doc__.split("\n\n")[0])
    parser.add_argument("backbone", choices=CHECKED)
    parser.add_argument("--data-dir", help="where converted backbone weights are kept "
                                           "(default $DERMATRIAGE_DATA_DIR/backbones, DERMATRIAGE_DATA_DIR defaulting to var)")
    args = parser.parse_args(argv)
    return check(args.backbone, args.data_dir)


if __name__ == "__main__":
    sys.exit(main())
