"""Grad-CAM heatmaps for the predicted class, stored as PNG overlays on the network's input view."""
from __future__ import annotations

import cv2
import numpy as np

from .preprocess import CAFFE_MEAN_BGR

OVERLAY_ALPHA = 0.45


def last_conv_layer(model):
    """The last layer with a spatial (4-D) output: Grad-CAM's usual choice (conv5_block3_out for ResNet)."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4:
            return layer
    raise ValueError("the model has no spatial layer to explain")


class GradCam:
    def __init__(self, classifier):
        import keras
        import tensorflow as tf

        model = classifier.model
        layer = last_conv_layer(model)
        grad_model = keras.Model(model.inputs, [layer.output, model.output])
        size = classifier.input_size
        self.layer_name = layer.name

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)
        def cams(x):
            with tf.GradientTape() as tape:
                conv, preds = grad_model(x, training=False)
                top = tf.argmax(preds, axis=1)
                score = tf.gather(preds, top, batch_dims=1)
            grads = tape.gradient(score, conv)
            weights = tf.reduce_mean(grads, axis=(1, 2))
            cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", conv, weights))
            return cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-8)

        self._cams = cams
        self._tf = tf

    def maps(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w) heat in [0, 1] at the explained layer's resolution."""
        return self._cams(self._tf.constant(batch, dtype=self._tf.float32)).numpy()

    def __call__(self, batch: np.ndarray, _probs=None) -> list[bytes]:
        return [overlay_png(x, heat) for x, heat in zip(batch, self.maps(batch))]


def overlay_png(network_input: np.ndarray, heat: np.ndarray) -> bytes:
    """Blend a heatmap over the image the network saw (undoing the caffe normalisation)."""
    bgr = np.clip(network_input + CAFFE_MEAN_BGR, 0, 255).astype(np.uint8)
    h, w = bgr.shape[:2]
    heat = cv2.resize(np.nan_to_num(heat).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(colour, OVERLAY_ALPHA, bgr, 1 - OVERLAY_ALPHA, 0)
    ok, png = cv2.imencode(".png", blended)
    if not ok:
        raise RuntimeError("could not encode the heatmap")
    return png.tobytes()
