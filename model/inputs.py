"""The tf.data input pipeline for training and evaluation.

Pixels reach the network through exactly the functions the worker uses: `InputSpec.read` (the card's
decoding: EXIF orientation, CMYK, 16-bit, and for "reduced" a JPEG decoded at a reduced DCT scale) and
`InputSpec.tensor` (squash to the input size, then the backbone's input scaling). They run inside `tf.numpy_function`, in parallel, with prefetching, so a model
is never trained on pixels prepared differently from those it will see in the clinic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .preprocess import InputSpec

# Lesions have no up or down, so flips in both axes are free; rotation and zoom stay moderate so a
# small lesion is not cropped away.
ROTATION = 0.1  # fraction of a full turn, either way
ZOOM = 0.15


def read_network_input(path: str | Path, spec: InputSpec) -> np.ndarray:
    with open(path, "rb") as fh:
        return spec.tensor(spec.read(fh.read())[0])


def image_dataset(paths: list[Path], labels: list[int], spec: InputSpec, batch_size: int, *,
                  shuffle_seed: int | None = None, augment_seed: int | None = None):
    """Batches of (network input, label index). Shuffled (and augmented) only when given a seed;
    otherwise in the given order, so predictions line up with `paths`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.asarray(labels, np.int32)))
    if shuffle_seed is not None:
        # The file list is small (strings), so the whole epoch is shuffled, not a window of it.
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(path, label):
        x = tf.numpy_function(lambda p: read_network_input(p.decode(), spec), [path], tf.float32,
                              stateful=False)
        x.set_shape((spec.size, spec.size, 3))
        return x, label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    if augment_seed is not None:
        augment = augmentation(augment_seed)
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augmentation(seed: int):
    """Applied in the input pipeline, not inside the model, so the exported file is the plain
    reference architecture that the loader and Grad-CAM expect."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(ROTATION, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(ZOOM, fill_mode="reflect", seed=seed + 2),
    ], name="augmentation")


def predict_probabilities(model, paths: list[Path], spec: InputSpec, batch_size: int = 32,
                          verbose: int = 0) -> np.ndarray:
    """The network's own softmax output for each path, in order (no temperature applied)."""
    ds = image_dataset(paths, [0] * len(paths), spec, batch_size).map(lambda x, y: x)
    # One call over the whole dataset (not model.predict in a loop, which leaks).
    probs = model.predict(ds, verbose=verbose)
    return np.asarray(probs, np.float64)
