"""Load a weights file and its card into a classifier held in memory for the life of a worker."""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .card import ModelCard, file_sha256

log = logging.getLogger(__name__)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Keras dtype policies per setting. "bfloat16" is Keras's mixed_bfloat16: weights stay float32 and
# layers compute in bfloat16, which CPUs with AVX512-BF16 or AMX (and recent GPUs) run natively.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "mixed_float16": "mixed_float16"}


def configure_tensorflow(threads_per_pass: int = 0):
    """Import TensorFlow once with the settings a long-lived worker needs (never before a fork).

    `threads_per_pass` caps the threads one operation may use on a CPU (0: TensorFlow's default, every
    core). It must be set before TensorFlow runs anything, and only once in a process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads_per_pass and tf.config.threading.get_intra_op_parallelism_threads() != threads_per_pass:
        tf.config.threading.set_intra_op_parallelism_threads(threads_per_pass)

    for gpu in tf.config.list_physical_devices("GPU"):
        # Grow GPU memory on demand so several workers (or the web) can share a card.
        tf.config.experimental.set_memory_growth(gpu, True)
    return tf


class Classifier:
    """A loaded model: call `predict` with preprocessed batches; returns calibrated probabilities."""

    def __init__(self, model, card: ModelCard, tf, precision: str = "float32"):
        self.model = model
        self.precision = precision
        self.card = card
        self.labels = list(card.labels)
        self.version = card.model_version
        self.trained = card.trained
        self.input_size = card.input_size
        self.input_spec = card.input_spec
        self._tf = tf
        # On a GPU, batches are padded to a few fixed sizes so kernels are tuned once per shape;
        # on a CPU padding would only add work, and the single traced graph already fits any size.
        self.on_gpu = bool(tf.config.list_logical_devices("GPU"))
        size = card.input_size
        # One traced graph for every batch size; calling the model as a function, not model.predict,
        # which builds a new dataset per call and leaks in a long-lived process.
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                    input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        if model.output_shape[-1] != len(self.labels):
            raise ValueError(f"the model has {model.output_shape[-1]} outputs but its card lists "
                             f"{len(self.labels)} labels")
        if tuple(model.input_shape[1:3]) not in ((size, size), (None, None)):
            raise ValueError(f"the model takes {model.input_shape[1:3]} images but its card says "
                             f"{size} x {size}")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        probs = self._forward(self._tf.constant(batch, dtype=self._tf.float32)).numpy().astype(np.float64)
        return self.calibrate(probs)

    def batch_shape(self, count: int) -> int:
        """How many rows a batch of `count` images runs as: the next fixed size on a GPU (see __init__)."""
        if not self.on_gpu:
            return count
        return next((b for b in BATCH_BUCKETS if b >= count), count)

    def padded(self, batch: np.ndarray) -> np.ndarray:
        """The batch padded with blank images up to the next fixed size (GPU only; see __init__)."""
        size = self.batch_shape(len(batch))
        if size == len(batch):
            return batch
        blank = np.zeros((size - len(batch),) + batch.shape[1:], batch.dtype)
        return np.concatenate([batch, blank])

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """The card's temperature applied to the network's own softmax output."""
        return apply_temperature(probs, self.card.temperature)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,), at_once: int = 1) -> float:
        """Run each batch size, on `at_once` threads together as a worker's lanes will, so that no job
        pays for tracing, for the kernels a new shape picks or for the buffers of passes side by side.

        Returns the seconds it took."""
        start = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            for size in sorted({self.batch_shape(n) for n in batch_sizes}):
                zeros = np.zeros((size, self.input_size, self.input_size, 3), np.float32)
                list(pool.map(self.predict, [zeros] * at_once))
        return time.perf_counter() - start


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling on softmax outputs: softmax(log p / T) equals softmax(logits / T)."""
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def load_classifier(weights: Path, precision: str = "float32", threads_per_pass: int = 0) -> Classifier:
    """Load a `.keras` or Keras-2 `.h5` file; refuse it when its card is missing or does not match.

    `precision` other than float32 rebuilds the network to compute in reduced precision (see PRECISIONS);
    `threads_per_pass` as in `configure_tensorflow`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"model file {weights} does not exist (build the demo model with "
                                f"`python -m model.demo`, or set DERMATRIAGE_MODEL_PATH)")
    card = ModelCard.load(weights)
    check_card_fits_backbone(card, weights)
    actual = file_sha256(weights)
    if actual != card.weights_sha256:
        raise ValueError(f"{weights} does not match its card (SHA-256 {actual[:12]} vs "
                         f"{card.weights_sha256[:12]}): the label order cannot be trusted")
    tf = configure_tensorflow(threads_per_pass)
    import keras

    start = time.perf_counter()
    model = _single_tensor_io(keras, keras.models.load_model(weights, compile=False))
    log.info("loaded %s (%s) in %.1fs", weights, card.model_version, time.perf_counter() - start)
    if precision != "float32":
        model = with_precision(model, precision)
    return Classifier(model, card, tf, precision)


def check_card_fits_backbone(card: ModelCard, weights: Path) -> None:
    """A card that names a scaling its backbone was not trained with would feed the network pixels
    on the wrong scale: every output plausible-looking and wrong. Refused before anything loads."""
    from .network import BACKBONES

    backbone = BACKBONES.get(card.architecture)
    if backbone is None:
        raise ValueError(f"the card of {weights} names the backbone {card.architecture!r}, which this "
                         f"version does not know (known: {', '.join(BACKBONES)})")
    if card.preprocessing != backbone.scaling:
        raise ValueError(f"the card of {weights} says its input is scaled {card.preprocessing!r}, but a "
                         f"{card.architecture} network takes {backbone.scaling!r}: the card does not fit "
                         f"the network")


def with_precision(model, precision: str):
    """The same network and weights, computing under another dtype policy.

    Every layer is rebuilt from its config with the new policy, except the input and the final layer:
    the softmax stays float32, since in 16 bits small probabilities round to 0 and the risk policy
    sums them. Weights are copied, so the float32 original can be freed.
    """
    import keras

    policy = PRECISIONS[precision]
    _warn_if_slow(precision)
    last = model.layers[-1]

    def rebuild(layer):
        if isinstance(layer, keras.Model):  # a backbone nested as one layer is rebuilt layer by layer
            return keras.models.clone_model(layer, clone_function=rebuild)
        config = layer.get_config()
        if layer is not last and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    reduced = keras.models.clone_model(model, clone_function=rebuild)
    reduced.set_weights(model.get_weights())
    return reduced


def _warn_if_slow(precision: str) -> None:
    # Without native support the reduced types are emulated and far slower than float32.
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return
    if precision == "mixed_float16" or not native_bfloat16():
        log.warning("precision %s has no native support on this CPU; expect it to be slower than float32",
                    precision)


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX)."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _single_tensor_io(keras, model):
    """A Keras-2 `.h5` loads with its input and output wrapped in one-element lists. Calling it with a
    bare tensor then warns on every trace, and `model.output` is a list, which silently breaks code
    that builds a sub-model from it (Grad-CAM got all-zero maps). Rewire the same layers with bare
    tensors; no weights are copied."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return model
    if not isinstance(model.output, list) and not isinstance(model.input, list):
        return model
    return keras.Model(model.inputs[0], model.outputs[0], name=model.name)
