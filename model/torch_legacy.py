"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without PyTorch.

Why: EfficientNet-Lite0's ImageNet weights reach us only as such a file, and PyTorch is a
gigabyte we will not install to read 19 MB of floats. Why a restricted unpickler: a pickle can
call any importable function while it loads, so `pickle.load` on a downloaded file is remote code
execution. This one resolves only the handful of names a state dict needs, to inert stand-ins
defined here; any other name stops the load before anything is called.

The legacy layout, one stream after another:
  pickle: magic number   pickle: protocol version   pickle: sys info (endianness, type sizes)
  pickle: the object (here an OrderedDict name -> tensor); each tensor is rebuilt by
          torch._utils._rebuild_tensor_v2 over a storage named by a persistent id
          ('storage', <Float|Half|...>Storage, key, location, numel, view_metadata)
  pickle: the list of storage keys, in the order their data follows
  for each key: 8-byte little-endian element count, then the raw little-endian elements
"""
from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
ZIP_SIGNATURE = b"PK\x03\x04"

# Element types of torch's typed storages, little-endian as the legacy writer stores them.
# (LongStorage is 8 bytes even when the file's sys info says C long is 4, as on Windows.)
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # NumPy has no bfloat16: read the bits, widened to float32 below
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class RefusedGlobal(ValueError):
    """The file asks for a Python global outside the allowlist; nothing of it was called."""


class UnsupportedCheckpoint(ValueError):
    """Not a legacy PyTorch state dict this reader can take apart."""


class _Inert:
    """Stand-ins refuse pickle's BUILD, so a crafted file cannot rewrite them after they are made."""

    def __setstate__(self, _state):
        raise UnsupportedCheckpoint("the file tries to modify an internal object; not a plain state dict")


@dataclass(frozen=True)
class _StorageType(_Inert):
    """Stands in for torch.FloatStorage and friends: only the name matters."""
    name: str


@dataclass
class _Storage(_Inert):
    key: str
    type_name: str
    numel: int
    data: np.ndarray | None = None  # filled once the pickle is done and the raw bytes are read


@dataclass(frozen=True)
class _StorageView(_Inert):
    """A storage that is a slice of another (view_metadata in the persistent id)."""
    base: _Storage
    offset: int


@dataclass(frozen=True)
class _TensorRef(_Inert):
    """What torch._utils._rebuild_tensor_v2 would have built, kept until the storages hold data.
    offset and strides count elements, as in PyTorch."""
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if isinstance(storage, _StorageView):
        storage, storage_offset = storage.base, storage.offset + int(storage_offset)
    if not isinstance(storage, _Storage):
        raise UnsupportedCheckpoint("a tensor in the file is not built over a storage")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only an OrderedDict, the tensor rebuild function and storage type names."""

    def __init__(self, stream: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(stream)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise RefusedGlobal(f"refused to load the global {module}.{name}: a PyTorch state dict needs only "
                            f"collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch storage types, "
                            f"so this file is not a plain state dict, or it is trying to run code")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsupportedCheckpoint(f"unexpected persistent id {pid!r:.100}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise UnsupportedCheckpoint(f"storage {key!r:.40} has no known storage type")
        storage = self._storages.setdefault(str(key), _Storage(str(key), storage_type.name, int(numel)))
        if (storage.type_name, storage.numel) != (storage_type.name, int(numel)):
            raise UnsupportedCheckpoint(f"storage {key!r:.40} is referenced with two types or sizes")
        if view is None:
            return storage
        _view_key, view_offset, _view_size = view
        return _StorageView(storage, int(view_offset))


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array (own memory, C order, native byte order, PyTorch's shape).

    Raises RefusedGlobal when the file asks for any other Python global (before calling it) and
    UnsupportedCheckpoint for zip-format, truncated or otherwise malformed files."""
    with open(path, "rb") as fh:
        return read_legacy_state_dict(fh)


def read_legacy_state_dict(fh: BinaryIO) -> dict[str, np.ndarray]:
    if fh.read(4) == ZIP_SIGNATURE:
        raise UnsupportedCheckpoint(
            "this is a zip-format PyTorch checkpoint (what torch >= 1.6 saves by default); this reader takes "
            "only the legacy format: re-save it with torch.save(obj, f, _use_new_zipfile_serialization=False)")
    size = fh.seek(0, io.SEEK_END)
    fh.seek(0)
    storages: dict[str, _Storage] = {}
    _check_header(fh, storages)
    state = _load(fh, storages)
    if not isinstance(state, dict) or not all(isinstance(v, _TensorRef) for v in state.values()):
        raise UnsupportedCheckpoint("the file holds something other than a flat state dict (name -> tensor)")
    _read_storages(fh, storages, _load(fh, storages), size)
    return {str(name): _materialise(ref) for name, ref in state.items()}


def _load(fh: BinaryIO, storages: dict[str, _Storage]):
    try:
        return _RestrictedUnpickler(fh, storages).load()
    except (RefusedGlobal, UnsupportedCheckpoint):
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
        raise UnsupportedCheckpoint(f"not a PyTorch legacy checkpoint this reader understands ({exc!r:.200})") from None


def _check_header(fh: BinaryIO, storages: dict[str, _Storage]) -> None:
    if _load(fh, storages) != LEGACY_MAGIC:
        raise UnsupportedCheckpoint("not a legacy PyTorch checkpoint (wrong magic number)")
    protocol = _load(fh, storages)
    if protocol != LEGACY_PROTOCOL:
        raise UnsupportedCheckpoint(f"unsupported legacy protocol version {protocol!r:.40}")
    sys_info = _load(fh, storages)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise UnsupportedCheckpoint("the file was written on a big-endian machine; not supported")


def _read_storages(fh: BinaryIO, storages: dict[str, _Storage], keys, size: int) -> None:
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise UnsupportedCheckpoint("the list of storage keys does not match the storages the tensors use")
    for key in map(str, keys):
        storage = storages[key]
        count = int.from_bytes(_read_exactly(fh, 8, size), "little")
        if count != storage.numel:
            raise UnsupportedCheckpoint(f"storage {key}: {count} elements on disk, {storage.numel} announced")
        dtype = STORAGE_DTYPES[storage.type_name]
        storage.data = np.frombuffer(_read_exactly(fh, count * dtype.itemsize, size), dtype=dtype)
    if fh.read(1):
        raise UnsupportedCheckpoint("bytes follow the last storage: not a file this reader understands")


def _read_exactly(fh: BinaryIO, n: int, size: int) -> bytes:
    # Checked against the file's size first: a crafted count must not make us allocate terabytes.
    if fh.tell() + n > size or len(data := fh.read(n)) != n:
        raise UnsupportedCheckpoint("the file ends inside a storage: truncated?")
    return data


def _materialise(ref: _TensorRef) -> np.ndarray:
    flat, shape, strides = ref.storage.data, ref.shape, ref.strides
    if len(shape) != len(strides) or min(shape + strides + (ref.offset,), default=0) < 0:
        raise UnsupportedCheckpoint(f"a tensor over storage {ref.storage.key} has an invalid shape or stride")
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        array = np.zeros(shape, flat.dtype)
    else:
        # as_strided reads whatever memory the strides point at, so prove every index is inside first.
        if ref.offset + sum((n - 1) * s for n, s in zip(shape, strides)) >= flat.size:
            raise UnsupportedCheckpoint(f"a tensor over storage {ref.storage.key} reaches past its storage")
        if strides == _contiguous_strides(shape):
            array = flat[ref.offset:ref.offset + count].reshape(shape)
        else:  # e.g. weights converted from TensorFlow by a transpose that was never made contiguous
            array = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape, [s * flat.itemsize for s in strides],
                                                    writeable=False)
    array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)  # own, native-order memory
    if ref.storage.type_name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))
