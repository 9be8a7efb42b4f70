"""The reference network (ResNet152 + the DERMOSAN head) and a tiny stand-in for fast tests."""
from __future__ import annotations

from .preprocess import INPUT_SIZE

FROZEN_ALL_BUT_LAST = 50
NUM_CLASSES = 10


def _head(keras, features, num_classes: int):
    # GAP -> Dense 512 ReLU -> Dropout 0.35 -> Dense 256 ReLU -> Dense softmax, as published.
    x = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    x = keras.layers.Dense(512, activation="relu", name="dense_512")(x)
    x = keras.layers.Dropout(0.35, name="dropout")(x)
    x = keras.layers.Dense(256, activation="relu", name="dense_256")(x)
    # float32 even under a mixed-precision policy: a float16 softmax rounds small probabilities to 0.
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def build_model(backbone: str = "resnet152", num_classes: int = NUM_CLASSES, weights: str | None = None,
                input_size: int = INPUT_SIZE):
    """backbone 'resnet152' (weights: None or a local ImageNet .h5 path) or 'tiny' (random, for tests)."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    if backbone == "resnet152":
        base = keras.applications.ResNet152(include_top=False, weights=weights, input_tensor=inputs)
        for layer in base.layers[:-FROZEN_ALL_BUT_LAST]:
            layer.trainable = False
        features = base.output
    elif backbone == "tiny":
        x = inputs
        for i, filters in enumerate((8, 16, 32)):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
        features = x
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    return keras.Model(inputs, _head(keras, features, num_classes), name=f"dermatriage_{backbone}")
