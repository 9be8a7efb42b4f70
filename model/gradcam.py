"""Grad-CAM heatmaps for the predicted class, stored as PNG overlays on the network's input view."""
from __future__ import annotations

import cv2
import numpy as np

from .preprocess import InputSpec

OVERLAY_ALPHA = 0.45


def last_conv_layer(model):
    """The last layer with a spatial (4-D) output: Grad-CAM's usual choice (conv5_block3_out for ResNet)."""
    for layer in reversed(model.layers):
        try:
            output = layer.output
        except (AttributeError, ValueError):  # a layer never called in this graph has no output
            continue
        if not isinstance(output, (list, tuple)) and len(output.shape) == 4:
            return layer
    raise ValueError("the model has no spatial layer to explain")


def _softmax_head(model):
    """The final Dense-with-softmax layer, if the model ends in one, so its logits can be explained."""
    import keras

    head = model.layers[-1]
    if isinstance(head, keras.layers.Dense) and head.activation is keras.activations.softmax:
        return head
    return None


def _only(tensors):
    # Keras-2 files load with one-element lists for inputs and outputs.
    return tensors[0] if isinstance(tensors, (list, tuple)) else tensors


class GradCam:
    """Heatmaps for the top class of each image.

    The score explained is the top class's logit, not its probability (as in the Grad-CAM paper): a
    confident softmax output is flat in float32, so its gradient, and with it the map, vanishes.
    """

    def __init__(self, classifier):
        import keras
        import tensorflow as tf

        model = classifier.model
        layer = last_conv_layer(model)
        head = _softmax_head(model)
        # With a softmax head, stop at its input and apply its kernel by hand to get the logits.
        scored = _only(head.input) if head is not None else _only(model.outputs)
        # Two halves: the pass up to the explained layer runs outside the gradient tape, so the tape
        # holds only the few activations after it instead of every activation of the backbone (at
        # batch 8 with two lanes that was over 100 MB of a Lite0 worker's memory).
        to_layer = keras.Model(_only(model.inputs), layer.output)
        from_layer = keras.Model(layer.output, scored)
        self.spec = classifier.input_spec
        size = self.spec.size
        self.layer_name = layer.name

        def logits(features):
            # float32 whatever the network computes in: the head's own weights are float32, and a
            # 16-bit logit would flatten the gradients the map is made of.
            features = tf.cast(features, tf.float32)
            if head is None:
                return features
            return tf.matmul(features, head.kernel) + (head.bias if head.use_bias else 0.0)

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)
        def cams(x):
            conv = to_layer(x, training=False)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(conv)
                scores = logits(from_layer(conv, training=False))
                top = tf.argmax(scores, axis=1)
                score = tf.gather(scores, top, batch_dims=1)
            grads = tf.cast(tape.gradient(score, conv), tf.float32)
            conv = tf.cast(conv, tf.float32)
            weights = tf.reduce_mean(grads, axis=(1, 2))
            cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", conv, weights))
            probs = tf.nn.softmax(scores) if head is not None else scores
            return cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-8), probs

        self._cams = cams
        self._tf = tf

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cams, probs = self._cams(self._tf.constant(batch, dtype=self._tf.float32))
        return cams.numpy(), probs.numpy().astype(np.float64)

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w) heat in [0, 1] at the explained layer's resolution."""
        return self._run(batch)[0]

    def explain(self, batch: np.ndarray, count: int | None = None) -> tuple[np.ndarray, list[bytes]]:
        """The model's (uncalibrated) probabilities and a heatmap PNG per image, from one pass:
        the forward pass Grad-CAM needs already yields the prediction, so it is not run twice.
        Only the first `count` images are returned (the rest is padding)."""
        probs, heat = self.scores_and_maps(batch, count)
        return probs, self.overlays(batch, heat)

    def scores_and_maps(self, batch: np.ndarray, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first half of `explain`, the network's part: (uncalibrated) probabilities and maps."""
        heat, probs = self._run(batch)
        count = len(batch) if count is None else count
        return probs[:count], heat[:count]

    def overlays(self, batch: np.ndarray, heat: np.ndarray) -> list[bytes]:
        """The second half of `explain`, the CPU's part: one PNG per map, over the image it explains."""
        return [overlay_png(x, h, self.spec) for x, h in zip(batch, heat)]

    def __call__(self, batch: np.ndarray, _probs=None) -> list[bytes]:
        return self.explain(batch)[1]

    def warm_up(self, size: int, batch_sizes: tuple[int, ...] = (1,)) -> None:
        for count in sorted(set(batch_sizes)):
            self._run(np.zeros((count, size, size, 3), np.float32))


def overlay_png(network_input: np.ndarray, heat: np.ndarray, spec: InputSpec = InputSpec()) -> bytes:
    """Blend a heatmap over the image the network saw (undoing the input scaling)."""
    bgr = np.ascontiguousarray(spec.picture(network_input)[..., ::-1])
    h, w = bgr.shape[:2]
    heat = cv2.resize(np.nan_to_num(heat).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(colour, OVERLAY_ALPHA, bgr, 1 - OVERLAY_ALPHA, 0)
    ok, png = cv2.imencode(".png", blended)
    if not ok:
        raise RuntimeError("could not encode the heatmap")
    return png.tobytes()
