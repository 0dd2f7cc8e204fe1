"""Read pickled checkpoints without running them.

The published k-means (joblib) and HuBERT (torch) files are pickles, and a pickle can name any
callable to run while loading. This unpickler resolves only an allowlist of harmless globals
(containers, numpy arrays and dtypes, torch tensors); every other class or function becomes a
``Stub`` that keeps what the pickle held and runs nothing::

    km = load_joblib("km1000.bin")       # a Stub of sklearn's MiniBatchKMeans
    km.cluster_centers_                  # a numpy array, read from the file
    ckpt = torch_load("mhubert.pt")      # dicts and tensors; fairseq objects as Stubs
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import os
import pickle
import sys
from typing import Any, BinaryIO

import numpy as np
import torch

from sgpt.core.errors import CheckpointError, first_line


class Stub:
    """An object of a class that is not loaded: the pickle's data, kept as attributes.

    ``_args`` holds the constructor arguments, ``__dict__`` the state when it is a dict
    (else ``_state``), ``_items`` and ``_list`` what the pickle stored into it as a mapping
    or a list. ``type(stub).__module__`` and ``__qualname__`` name the class it stands for.
    """

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj._args = args + ((kwargs,) if kwargs else ())
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict state, slot state)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_list", []).append(item)

    def extend(self, items: Any) -> None:
        self.__dict__.setdefault("_list", []).extend(items)

    def __repr__(self) -> str:
        return f"<Stub of {type(self).__module__}.{type(self).__qualname__}>"


_stub_classes: dict[tuple[str, str], type] = {}


def stub_class(module: str, name: str) -> type:
    """The Stub subclass standing for ``module.name`` (one class per name)."""
    key = (module, name)
    if key not in _stub_classes:
        _stub_classes[key] = type(name.rpartition(".")[2], (Stub,),
                                  {"__module__": module, "__qualname__": name})
    return _stub_classes[key]


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor (protocol 0/1 objects), for Stub classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r} is not allowed")
    return cls.__new__(cls)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """_codecs.encode, as protocol-2 pickles use it for bytes: text codecs only."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode(encoding)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("_codecs", "encode"): _encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    }
    for name in ("set", "frozenset", "slice", "complex", "range", "bytes", "bytearray",
                 "list", "dict", "tuple", "int", "float", "str", "bool"):
        allowed["builtins", name] = getattr(builtins, name)
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 1
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = multiarray._reconstruct
        allowed[module, "scalar"] = multiarray.scalar
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed["torch", name] = value
    return allowed


ALLOWED = _allowed_globals()
# The only objects whose state a pickle may set (BUILD): never a function or a class.
_BUILDABLE = (Stub, np.ndarray, np.dtype, collections.OrderedDict)


class Unpickler(pickle._Unpickler):
    """A pickle reader that resolves allowlisted globals and stubs all others.

    The pure-Python unpickler, so that the file position is exact after each opcode (joblib
    stores array bytes inline) and so that BUILD can be checked.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        return stub_class(module, name)

    def load_build(self) -> None:
        if not isinstance(self.stack[-2], _BUILDABLE):
            kind = type(self.stack[-2]).__name__
            raise pickle.UnpicklingError(f"the pickle sets the state of a {kind}")
        super().load_build()

    dispatch = pickle._Unpickler.dispatch.copy()
    dispatch[pickle.BUILD[0]] = load_build


def load(file: BinaryIO, **kwargs: Any) -> Any:
    """pickle.load through the restricted Unpickler (torch.load calls it for old files)."""
    return Unpickler(file, **kwargs).load()


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")


def torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """torch.load without running code from the file: tensors, containers and Stubs."""
    _check_file(path)
    try:
        return torch.load(path, map_location=map_location, pickle_module=sys.modules[__name__],
                          weights_only=False)
    except Exception as e:  # torch raises many kinds for files that are not checkpoints
        with open(path, "rb") as f:
            head = f.read(2)
        if head != b"PK" and head[:1] != b"\x80":  # torch's reason would be a bare '123'
            reason = "neither the zip archive torch.save writes nor a pickle"
        else:
            reason = first_line(e)
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason})") from None


# First bytes of the compressed files joblib.dump(..., compress=...) writes.
_COMPRESSED = {b"\x78": "zlib", b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ": "xz",
               b"\x5d\x00\x00": "lzma", b"\x04\x22\x4d\x18": "lz4", b"ZF": "old-style zlib"}


class _JoblibUnpickler(Unpickler):
    """Reads joblib's inline arrays: a NumpyArrayWrapper's BUILD is followed by the bytes."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self._stream = file

    def load_build(self) -> None:
        super().load_build()
        wrapper = self.stack[-1]
        if type(wrapper) is stub_class("joblib.numpy_pickle", "NumpyArrayWrapper"):
            self.stack[-1] = self._read_array(wrapper)

    dispatch = Unpickler.dispatch.copy()
    dispatch[pickle.BUILD[0]] = load_build

    def _read_array(self, wrapper: Stub) -> np.ndarray:
        dtype, shape, order = wrapper.dtype, tuple(wrapper.shape), wrapper.order
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("an array wrapper without a dtype")
        if dtype.hasobject:  # joblib pickles object arrays inline as a nested pickle
            return _JoblibUnpickler(self._stream).load()
        if getattr(wrapper, "numpy_array_alignment_bytes", None) is not None:
            padding = self._stream.read(1)
            self._stream.read(int.from_bytes(padding, "little"))
        array = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
        if self._stream.readinto(array.view(np.uint8)) != array.nbytes:
            raise pickle.UnpicklingError("the file ends inside an array")
        array = array.reshape(shape[::-1]).T if order == "F" else array.reshape(shape)
        return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def load_joblib(path: str | os.PathLike) -> Any:
    """A ``joblib.dump``-ed object (uncompressed), with classes stubbed and arrays read."""
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(8)
        for magic, kind in _COMPRESSED.items():
            if head.startswith(magic):
                raise CheckpointError(f"{path}: a {kind}-compressed joblib file; only "
                                      "uncompressed files are read (joblib.dump compress=0)")
        if not head.startswith(b"\x80"):
            raise CheckpointError(f"{path}: not a joblib file (no pickle header)")
        f.seek(0)
        try:
            return _JoblibUnpickler(f).load()
        except Exception as e:  # pickle raises many kinds for damaged files
            raise CheckpointError(f"{path}: not a readable joblib file ({first_line(e)})") from None
