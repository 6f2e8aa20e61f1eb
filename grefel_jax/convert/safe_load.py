"""Reads PyTorch checkpoint files without running any code from them, and without torch.

`torch.load` unpickles arbitrary Python objects: a checkpoint can make it call any function
(`os.system`, ...). The official POSTER++ checkpoints even *need* code to load, because they
pickle training-recorder objects from the training script's `__main__`. This module reads
both of torch's on-disk formats itself:

* the zip format (torch >= 1.6): `<name>/data.pkl` + one raw file per storage
  `<name>/data/<key>`;
* the legacy format (torch < 1.6, `_use_new_zipfile_serialization=False`): five pickles
  in a row (magic number, protocol, system info, the object, the storage keys), then the
  raw storages.

The pickles are read by `pickle.Unpickler` with `find_class` restricted to an allow-list:
tensor rebuilding (re-implemented here with numpy, bounds-checked), `OrderedDict`, numpy
arrays and scalars, and inert stand-ins for the POSTER++ `RecorderMeter` objects. Anything
else (a function, a class of another module) raises `UnsafeCheckpointError` before it is
called. Tensors come back as numpy arrays on the host, whatever device they were saved from
(CUDA tensors included); bfloat16 uses `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

# Legacy-format header values of torch/serialization.py.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# POSTER++ main.py pickles these recorders (from `__main__`) into every checkpoint.
DEFAULT_STUBS: tuple[tuple[str, str], ...] = (
    ("__main__", "RecorderMeter"),
    ("__main__", "RecorderMeter1"),
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file references a Python object outside the allow-list; nothing was executed."""


class CheckpointFormatError(ValueError):
    """The file is not a readable PyTorch checkpoint (or is damaged)."""


class InertObject:
    """Stand-in for an allow-listed foreign class: it only stores the pickled state.

    `state` holds the object's `__dict__` (or whatever state the pickle carried). It has no
    behaviour, so unpickling it runs no code of the original class.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self.init_args = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        keys = sorted(self.state) if isinstance(getattr(self, "state", None), dict) else []
        return f"<inert {type(self).__qualname__} {keys}>"


def _ml_bfloat16():
    import ml_dtypes  # Installed with jax.

    return np.dtype(ml_dtypes.bfloat16)


# torch storage class name -> numpy dtype factory.
_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "FloatStorage": lambda: np.dtype("float32"),
    "DoubleStorage": lambda: np.dtype("float64"),
    "HalfStorage": lambda: np.dtype("float16"),
    "BFloat16Storage": _ml_bfloat16,
    "LongStorage": lambda: np.dtype("int64"),
    "IntStorage": lambda: np.dtype("int32"),
    "ShortStorage": lambda: np.dtype("int16"),
    "CharStorage": lambda: np.dtype("int8"),
    "ByteStorage": lambda: np.dtype("uint8"),
    "BoolStorage": lambda: np.dtype("bool"),
    "ComplexFloatStorage": lambda: np.dtype("complex64"),
    "ComplexDoubleStorage": lambda: np.dtype("complex128"),
    "UntypedStorage": lambda: np.dtype("uint8"),
}

# torch dtype attribute name -> numpy dtype factory (used by _rebuild_tensor_v3).
_TORCH_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "float32": _STORAGE_DTYPES["FloatStorage"],
    "float": _STORAGE_DTYPES["FloatStorage"],
    "float64": _STORAGE_DTYPES["DoubleStorage"],
    "double": _STORAGE_DTYPES["DoubleStorage"],
    "float16": _STORAGE_DTYPES["HalfStorage"],
    "half": _STORAGE_DTYPES["HalfStorage"],
    "bfloat16": _ml_bfloat16,
    "int64": _STORAGE_DTYPES["LongStorage"],
    "long": _STORAGE_DTYPES["LongStorage"],
    "int32": _STORAGE_DTYPES["IntStorage"],
    "int": _STORAGE_DTYPES["IntStorage"],
    "int16": _STORAGE_DTYPES["ShortStorage"],
    "int8": _STORAGE_DTYPES["CharStorage"],
    "uint8": _STORAGE_DTYPES["ByteStorage"],
    "bool": _STORAGE_DTYPES["BoolStorage"],
}


class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to here: just the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]()


class _Storage:
    """A flat numpy array of one storage; `data` is None during the legacy dry pass."""

    def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None):
        self.dtype = dtype
        self.numel = numel
        self.data = data


class _Dtype:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def _rebuild_array(
    storage: Any, offset: int, size: Iterable[int], stride: Iterable[int], dtype=None
):
    """A copy of the strided view `storage[offset + sum(i_k * stride_k)]`, bounds-checked."""
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("tensor record without a storage: damaged or forged file")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointFormatError(
            f"bad tensor record: size {size}, stride {stride}, offset {offset}"
        )
    if storage.data is None:
        return None  # Legacy dry pass: storages not read yet.
    data = storage.data
    if dtype is not None and np.dtype(dtype) != data.dtype:
        data = data.view(dtype)
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise CheckpointFormatError(
            f"tensor record reads element {last} of a storage with {data.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=tuple(s * data.itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_array(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None
):
    del requires_grad, hooks, metadata  # Autograd flags and conj/neg bits of real weights.
    return _rebuild_array(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, hooks, dtype, metadata=None
):
    del requires_grad, hooks, metadata
    if not isinstance(dtype, _Dtype):
        raise UnsafeCheckpointError("tensor record with an unknown dtype object")
    return _rebuild_array(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    del requires_grad, hooks, state
    return data


def _codecs_encode(text, encoding="utf-8"):
    # Protocol-2 pickles store bytes as codecs.encode(str, 'latin1'); nothing else is allowed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(
            f"_codecs.encode called with {type(text).__name__}, {encoding!r}"
        )
    return text.encode("latin1")


def _numpy_global(name: str) -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return getattr(multiarray, name)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("_codecs", "encode"): _codecs_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _numpy_global("_reconstruct")
        allowed[(module, "scalar")] = _numpy_global("scalar")
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
        allowed[("torch.cuda", name)] = _StorageType(name)
    for name, factory in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _Dtype(factory())
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """`find_class` answers only from the allow-list; `persistent_load` serves storages."""

    def __init__(self, file, *, source: str, stubs: Iterable[tuple[str, str]], storages):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._allowed = _allowed_globals()
        for module, name in stubs:
            self._allowed[(module, name)] = type(name, (InertObject,), {"__module__": module})
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load the Python object `{module}.{name}`. Only "
                "tensors, containers, numpy arrays and the POSTER++ recorder objects are "
                "allowed; anything else could run code from the file. If you trust this file, "
                "re-save its state_dict with torch (torch.save(ckpt['state_dict'], path))."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        return self._storages(pid)


def load_torch_checkpoint(
    path: str | Path, *, stubs: Iterable[tuple[str, str]] = DEFAULT_STUBS
) -> Any:
    """Loads a `torch.save` file safely; tensors become numpy arrays.

    Args:
      path: a file written by `torch.save` (zip or legacy format).
      stubs: `(module, class)` pairs replaced by inert `InertObject` subclasses (default:
        POSTER++'s `__main__.RecorderMeter` and `RecorderMeter1`).

    Returns:
      The saved object: dicts/lists/tuples of numpy arrays, numbers, strings, and inert
      stubs.

    Raises:
      UnsafeCheckpointError: the file references a global outside the allow-list.
      CheckpointFormatError: not a torch checkpoint, or a damaged one.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such file.")
    stubs = tuple(stubs)
    if zipfile.is_zipfile(path):
        return _load_zip(path, stubs)
    if _is_tar(path):
        raise CheckpointFormatError(
            f"{path}: a tar archive (the pre-2018 torch format); load it once with an old torch "
            "and re-save it with torch.save."
        )
    return _load_legacy(path, stubs)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _storage_key(pid: Any, source: str) -> tuple[_StorageType, str, int]:
    if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
        raise CheckpointFormatError(f"{source}: unknown persistent record {str(pid)[:80]}")
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
        raise UnsafeCheckpointError(f"{source}: storage record with a non-storage type")
    return storage_type, key, int(pid[4])


def _load_zip(path: Path, stubs) -> Any:
    source = str(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{source}: a zip file but not a torch.save archive (expected one "
                f"'<name>/data.pkl', found {pickles or 'none'}); TorchScript archives "
                "(torch.jit.save) are not supported."
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
        cache: dict[str, _Storage] = {}

        def storages(pid):
            storage_type, key, numel = _storage_key(pid, source)
            if key not in cache:
                name = f"{prefix}data/{key}"
                if name not in names:
                    raise CheckpointFormatError(
                        f"{source}: storage {name} missing from the archive"
                    )
                raw = archive.read(name)
                dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
                if len(raw) < numel * dtype.itemsize:
                    raise CheckpointFormatError(f"{source}: storage {name} is truncated")
                data = np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype)
                cache[key] = _Storage(storage_type.dtype, numel, data)
            return cache[key]

        with archive.open(pickles[0]) as f:
            return _RestrictedUnpickler(
                io.BytesIO(f.read()), source=source, stubs=stubs, storages=storages
            ).load()


def _load_legacy(path: Path, stubs) -> Any:
    """Two passes: the object pickle precedes the storage bytes it points into."""
    source = str(path)
    no_storage = lambda pid: (_ for _ in ()).throw(  # noqa: E731
        CheckpointFormatError(f"{source}: storage record in a header pickle")
    )
    with open(path, "rb") as f:

        def header():
            try:
                return _RestrictedUnpickler(f, source=source, stubs=(), storages=no_storage).load()
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                if isinstance(e, UnsafeCheckpointError):
                    raise
                raise CheckpointFormatError(
                    f"{source}: not a PyTorch checkpoint (neither a torch zip archive nor the "
                    f"legacy torch format: {e})."
                ) from None

        if header() != _LEGACY_MAGIC:
            raise CheckpointFormatError(f"{source}: not a PyTorch checkpoint (bad magic number).")
        if header() != _LEGACY_PROTOCOL:
            raise CheckpointFormatError(f"{source}: unsupported legacy torch protocol version.")
        sys_info = header()
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        body_start = f.tell()

        # Pass 1: learn every storage (type, size) without data.
        meta: dict[str, _Storage] = {}

        def dry(pid):
            storage_type, key, numel = _storage_key(pid, source)
            meta.setdefault(key, _Storage(storage_type.dtype, numel, None))
            return meta[key]

        _RestrictedUnpickler(f, source=source, stubs=stubs, storages=dry).load()
        keys = _RestrictedUnpickler(f, source=source, stubs=(), storages=no_storage).load()
        order = "<" if little else ">"
        for key in keys:
            key = str(key)
            if key not in meta:
                raise CheckpointFormatError(f"{source}: storage {key} has no record")
            storage = meta[key]
            (numel,) = struct.unpack(order + "q", f.read(8))
            dtype = storage.dtype.newbyteorder(order)
            raw = f.read(numel * dtype.itemsize)
            if numel != storage.numel or len(raw) != numel * dtype.itemsize:
                raise CheckpointFormatError(f"{source}: storage {key} is truncated or mismatched")
            storage.data = np.frombuffer(raw, dtype=dtype).astype(storage.dtype)

        # Pass 2: rebuild the object with the storages filled in.
        def full(pid):
            _, key, _ = _storage_key(pid, source)
            if len(pid) > 5 and pid[5] is not None:
                view_key, offset, view_size = pid[5]
                root = meta[key]
                return _Storage(
                    root.dtype,
                    int(view_size),
                    root.data[int(offset) : int(offset) + int(view_size)],
                )
            return meta[key]

        f.seek(body_start)
        return _RestrictedUnpickler(f, source=source, stubs=stubs, storages=full).load()
