"""The networks: a backbone (ResNet152, the reference; EfficientNet-Lite0, for CPU sites; or a tiny
stand-in for fast tests) under the DERMOSAN head."""
from __future__ import annotations

from dataclasses import dataclass

from .lite0 import LAST_CONV_LAYER as LITE0_LAST_CONV_LAYER
from .preprocess import INPUT_SIZE, LITE_SCALING, PREPROCESSING

FROZEN_ALL_BUT_LAST = 50
NUM_CLASSES = 10


@dataclass(frozen=True)
class Backbone:
    """What the rest of the system must know about a backbone: how its input is scaled
    (`preprocess.scale_input`), the square size it is built for by default, the last spatial
    layer (Grad-CAM's), where its frozen body ends for the tail recipe (model.tail_training), and the
    recipe `dermatriage train` uses for it by default."""
    scaling: str
    input_size: int
    last_conv_layer: str
    cut: str | None  # the layer whose output the tail recipe caches
    recipe: str  # 'full' or 'tail'


BACKBONES: dict[str, Backbone] = {
    "resnet152": Backbone(PREPROCESSING, INPUT_SIZE, "conv5_block3_out", None, "full"),
    # The tail is stages 6 and 7 (five blocks at 7 x 7) and the 1,280-channel head convolution: 2.7 M
    # of the backbone's 3.4 M weights, at the smallest resolution. See README, "Training Lite0 on a CPU".
    "efficientnet-lite0": Backbone(LITE_SCALING, INPUT_SIZE, LITE0_LAST_CONV_LAYER, "block5c_add", "tail"),
    "tiny": Backbone(PREPROCESSING, INPUT_SIZE, "conv2", "conv1", "full"),
}
HEAD_LAYERS = ("gap", "dense_512", "dropout", "dense_256", "predictions")


def backbone_info(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


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
    """backbone (a key of BACKBONES) under the DERMOSAN head.

    weights: None (random) or a local file: for 'resnet152' the Keras ImageNet 'notop' .h5, for
    'efficientnet-lite0' a converted backbone file (`lite0.convert_lite0_weights`), loaded by layer
    name; 'tiny' has none. ResNet152 keeps the reference's policy (all but the last 50 layers frozen);
    which Lite0 layers train is the tail recipe's business (model.train)."""
    import keras

    backbone_info(backbone)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if backbone == "resnet152":
        base = keras.applications.ResNet152(include_top=False, weights=weights, input_tensor=inputs)
        for layer in base.layers[:-FROZEN_ALL_BUT_LAST]:
            layer.trainable = False
        features = base.output
    elif backbone == "efficientnet-lite0":
        from .lite0 import lite0_features

        features = lite0_features(keras, inputs)
    else:
        if weights is not None:
            raise ValueError("the tiny backbone has no pretrained weights")
        x = inputs
        for i, filters in enumerate((8, 16, 32)):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"conv{i}")(x)
        features = x
    model = keras.Model(inputs, _head(keras, features, num_classes), name=f"dermatriage_{backbone.replace('-', '_')}")
    if backbone == "efficientnet-lite0" and weights is not None:
        from .lite0 import load_backbone_weights

        load_backbone_weights(model, weights)
    return model
