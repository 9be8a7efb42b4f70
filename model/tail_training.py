"""Training only the tail of a network, on cached activations of its frozen body.

On a CPU, almost all of the cost of an epoch is the frozen part of the backbone, which computes the
same numbers every epoch. So the body runs once per image and view (a few augmented views of each
training photograph, the plain view of each validation photograph), its output is kept on disk, and
the epochs train the tail (the last backbone blocks and the head) on those activations. That is
exactly what end-to-end training with a frozen body computes, except that an image's augmentation is
drawn from its few cached views instead of anew each epoch. The activations are stored as float16;
the network still runs in float32.

    RUN/cache/<split>.npy     (images, views, h, w, c) float16, the body's output
    RUN/cache/<split>.json    what the file holds: images, views, seed, body fingerprint; a file is
                              reused only when that matches, so a resumed run does not recompute it
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .inputs import image_dataset
from .preprocess import InputSpec

CACHE_DTYPE = np.float16


def split_at(model, cut: str):
    """(body, tail) sharing `model`'s layers: body = input -> `cut`'s output, tail = the rest."""
    import keras

    boundary = model.get_layer(cut).output
    return keras.Model(model.input, boundary, name="body"), keras.Model(boundary, model.output, name="tail")


def cached_activations(body, paths: list[Path], spec: InputSpec, views: int, seed: int, path: Path,
                       fingerprint: str, batch_size: int, say=print) -> np.ndarray:
    """The body's output for each image and view, read from `path` when it already holds exactly
    that, else computed (view 0 plain, views 1.. augmented with seeds seed+1..) and written there."""
    identity = {"images": hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest(),
                "count": len(paths), "views": views, "seed": seed, "body": fingerprint,
                "input": [spec.size, spec.scaling]}
    manifest = path.with_suffix(".json")
    if path.exists() and manifest.exists() and json.loads(manifest.read_text()) == identity:
        return np.load(path, mmap_mode="r")
    manifest.unlink(missing_ok=True)  # the manifest is written last: it marks the file complete
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(paths), views, *body.output_shape[1:])
    tmp = path.with_name(".building-" + path.name)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=CACHE_DTYPE, shape=shape)
    forward = _compiled(body, spec)
    progress = Progress(f"caching {path.stem}", len(paths) * views, say)
    for view in range(views):
        augment_seed = None if view == 0 else seed + view
        ds = image_dataset(paths, [0] * len(paths), spec, batch_size, augment_seed=augment_seed)
        row = 0
        for x, _ in ds:
            activations = forward(x).numpy()
            out[row:row + len(activations), view] = activations
            row += len(activations)
            progress.advance(len(activations))
    out.flush()
    del out
    tmp.replace(path)
    manifest.write_text(json.dumps(identity) + "\n")
    progress.done()
    return np.load(path, mmap_mode="r")


def _compiled(body, spec: InputSpec):
    import tensorflow as tf

    # One traced graph called batch by batch (model.predict in a loop builds a dataset per call).
    return tf.function(lambda x: body(x, training=False), reduce_retracing=True,
                       input_signature=[tf.TensorSpec([None, spec.size, spec.size, 3], tf.float32)])


def view_batches(cache: np.ndarray, labels: np.ndarray, weights: np.ndarray, batch_size: int, seed: int,
                 first_epoch: int = 0):
    """A Keras dataset over cached views: each epoch, every image once, in a shuffled order, each
    seen through one of its views; order and views depend only on the seed and the epoch number, so
    a resumed run sees what it would have seen."""
    import keras

    class CachedViews(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = first_epoch
            self._draw()

        def _draw(self):
            rng = np.random.default_rng([seed, self.epoch])
            self.order = rng.permutation(len(labels))
            self.views = rng.integers(0, cache.shape[1], len(labels))

        def __len__(self):
            return math.ceil(len(labels) / batch_size)

        def __getitem__(self, index):
            rows = np.sort(self.order[index * batch_size:(index + 1) * batch_size])  # sorted: reads in file order
            return cache[rows, self.views[rows]].astype(np.float32), labels[rows], weights[rows]

        def on_epoch_end(self):
            self.epoch += 1
            self._draw()

    return CachedViews()


class Progress:
    """One line that rewrites itself: done of total, rate, and the time left at that rate."""

    def __init__(self, what: str, total: int, say=print):
        self.what, self.total, self.say = what, total, say
        self.count = 0
        self.start = time.perf_counter()
        self._shown = 0.0
        self.tty = sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self._shown < (0.5 if self.tty else 30) and self.count < self.total:
            return
        self._shown = now
        rate = self.count / max(now - self.start, 1e-9)
        left = (self.total - self.count) / rate if rate else 0.0
        line = f"{self.what}: {self.count}/{self.total} ({rate:.0f}/s, {_clock(left)} left)"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            self.say(line)

    def done(self) -> float:
        seconds = time.perf_counter() - self.start
        if self.tty:
            print(file=sys.stderr)
        self.say(f"{self.what}: {self.total} in {_clock(seconds)}")
        return seconds


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
