"""Restricted unpickling: a pickle may build tensors, numpy arrays, plain containers and config stand-ins, nothing else.

Pickles are programs: a plain `pickle.load` / `torch.load` runs whatever callable the file names
(`os.system`, `builtins.eval`, ...). Here every global the file asks for goes through an allow-list
(`RestrictedUnpickler.find_class`): torch storages and the tensor rebuild function (replaced by our
own, which checks bounds), `collections.OrderedDict`, numpy's array/dtype/scalar reconstruction,
`_codecs.encode` (how protocol 2 writes bytes), and, by name only, the official code's config
classes (`config.Config_Generative_Model`, `config.Config_MBM_EEG`, written by its `torch.save`),
rebuilt as `PlainConfig` stand-ins that keep plain attribute values only. Anything else is refused
with its module and name. The `BUILD` opcode (set an object's state) is allowed on those types only.

    load_torch_file(path)   a torch.save zip file (tensors memory-mapped from the file, never copied)
    load_npy(path)          an .npy file; object arrays (np.save of a dict, e.g. THINGS-EEG2) unpickled here
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import io
import math
import mmap
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamdiffusion.core.fileio import DataError

PLAIN = (type(None), bool, int, float, str)
CONFIG_CLASSES = ("Config_Generative_Model", "Config_MBM_EEG")  # official code/config.py, saved in its checkpoints
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class RefusedPickle(DataError):
    """The file asks for something the restricted unpickler does not allow; the message names it."""


class PlainConfig:
    """Stand-in for an official `config.Config_*` object: plain attribute values only (no code, no objects)."""

    qualname = "config.?"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise RefusedPickle(f"{self.qualname}: state of type {type(state).__name__}, expected a dict")
        for key, value in state.items():
            if not isinstance(key, str) or not is_plain(value):
                raise RefusedPickle(f"{self.qualname}.{key}: value of type {type(value).__name__} is not a plain "
                                    "value (int, float, str, bool, None, or a list/tuple of those)")
        self.__dict__.update(state)

    def as_dict(self) -> dict:
        """The attributes, lists for tuples (json-ready)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}


def is_plain(value: Any) -> bool:
    """An int, float, str, bool or None, or a list/tuple of those."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, PLAIN) for v in value)
    return isinstance(value, PLAIN)


def config_stand_in(name: str) -> type:
    """A `PlainConfig` subclass standing for the official `config.<name>`."""
    return type(name, (PlainConfig,), {"qualname": f"config.{name}", "__module__": __name__})


_STAND_INS = {name: config_stand_in(name) for name in CONFIG_CLASSES}


class _Marker:
    """A name the pickle may pass as an argument but never call (a storage type, numpy.ndarray)."""

    def __init__(self, name: str, value: Any = None):
        self.name, self.value = name, value

    def __repr__(self) -> str:
        return f"<{self.name}>"


_NDARRAY = _Marker("numpy.ndarray", np.ndarray)


class _Record:
    """One storage of a torch zip file: a flat tensor over its bytes (memory-mapped)."""

    def __init__(self, flat: torch.Tensor, key: str):
        self.flat, self.key = flat, key  # (numel,)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2, checked: our storage, int shapes, every element inside the storage."""
    if not isinstance(storage, _Record):
        raise RefusedPickle(f"tensor rebuilt from a {type(storage).__name__}, expected a storage of the file")
    ints = [offset, *size, *stride]
    if not all(type(v) is int and v >= 0 for v in ints) or len(size) != len(stride) or requires_grad is not False:
        raise RefusedPickle(f"tensor over storage {storage.key}: malformed offset/size/stride {offset}/{size}/{stride}")
    if hooks or metadata:
        raise RefusedPickle(f"tensor over storage {storage.key}: backward hooks or metadata are not allowed")
    numel = storage.flat.numel()
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if last >= numel:
        raise RefusedPickle(f"tensor over storage {storage.key}: element {last} is outside its {numel} elements")
    return storage.flat.as_strided(tuple(size), tuple(stride), storage.flat.storage_offset() + offset)


def _encode(text, encoding="utf-8") -> bytes:
    """_codecs.encode, as protocol 2 writes bytes objects: a str and a text encoding only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8"):
        raise RefusedPickle(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused")
    return codecs.encode(text, encoding)


def _np_reconstruct(cls, shape, dtype_code):
    """numpy's ndarray reconstruction (an empty array, filled by BUILD): numpy.ndarray itself only."""
    if cls is not _NDARRAY or not isinstance(shape, tuple) or not isinstance(dtype_code, bytes):
        raise RefusedPickle(f"numpy _reconstruct({cls!r}, ...) refused: numpy.ndarray only")
    return np.ndarray.__new__(np.ndarray, (0,), dtype=np.uint8)


def _np_dtype(spec, align=False, copy=False) -> np.dtype:
    """numpy.dtype(str, bool, bool), as numpy pickles a dtype."""
    if not isinstance(spec, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        raise RefusedPickle(f"numpy.dtype({spec!r}, ...) refused: a dtype string only")
    return np.dtype(spec, align=align, copy=copy)


def _np_scalar(dtype, data=None):
    """numpy.core.multiarray.scalar(dtype, bytes): a numeric numpy scalar."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise RefusedPickle(f"numpy scalar of dtype {dtype!r} refused: numeric dtypes from bytes only")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def allowed_global(module: str, name: str):
    """What the pickle gets for `module.name`, or RefusedPickle naming it."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
        return _rebuild_tensor
    if module == "torch" and name in STORAGE_DTYPES:
        return _Marker(f"torch.{name}", STORAGE_DTYPES[name])
    if module == "_codecs" and name == "encode":
        return _encode
    if module == "config" and name in _STAND_INS:
        return _STAND_INS[name]
    if module in NUMPY_MODULES and name in ("_reconstruct", "scalar"):
        return _np_reconstruct if name == "_reconstruct" else _np_scalar
    if module == "numpy" and name in ("ndarray", "dtype"):
        return _NDARRAY if name == "ndarray" else _np_dtype
    raise RefusedPickle(f"global {module}.{name} is not allowed (only tensors, numpy arrays, plain containers and "
                        f"the official config classes {', '.join('config.' + n for n in CONFIG_CLASSES)})")


class BoundedReader:
    """A read-only view of a file that never reads (or makes Python allocate for) more than is left in it."""

    def __init__(self, handle, left: int):
        self.handle, self.left = handle, left

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(self.left if n is None or n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.handle.readline(self.left)
        self.left -= len(data)
        return data


def array_state_fits(state: Any) -> bool:
    """Whether an ndarray's pickled state (version, shape, dtype, fortran, data) declares no more than it holds."""
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)):
        return False
    shape, dtype, data = state[1], state[2], state[4]
    if not (all(type(n) is int and n >= 0 for n in shape) and isinstance(dtype, np.dtype)):
        return False
    size = math.prod(shape)
    if isinstance(data, list):
        return dtype.hasobject and size == len(data)
    return isinstance(data, bytes) and not dtype.hasobject and size * dtype.itemsize == len(data)


class RestrictedUnpickler(pickle._Unpickler):
    """Python's pickle machine with an allow-list of globals and of BUILD targets; storages come from `records`."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, stream, records=None):
        super().__init__(stream)
        self.records = records

    def find_class(self, module: str, name: str):
        return allowed_global(module, name)

    def persistent_load(self, pid):
        if self.records is None:
            raise RefusedPickle(f"persistent id {pid!r} in a plain pickle")
        return self.records(pid)

    def load_build(self):
        state, inst = self.stack.pop(), self.stack[-1]
        if isinstance(inst, np.ndarray) and not array_state_fits(state):  # before numpy allocates the shape
            shown = state[1:3] if isinstance(state, tuple) and len(state) == 5 else type(state).__name__
            raise RefusedPickle(f"numpy array state {shown!r} declares more (or other) data than it holds")
        if isinstance(inst, (PlainConfig, np.ndarray, np.dtype)):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) and set(state) <= {"_metadata"}:
            inst.__dict__.update(state)  # a state dict's `_metadata` (module versions)
        else:
            raise RefusedPickle(f"setting the state of a {type(inst).__module__}.{type(inst).__name__} is not allowed")

    dispatch[pickle.BUILD[0]] = load_build


def unpickle(data: bytes | io.BufferedIOBase, records=None) -> Any:
    """The object in `data` (bytes or a binary stream), through `RestrictedUnpickler`."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return RestrictedUnpickler(stream, records).load()


def _data_offset(handle, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip member's bytes start in the file (after its local header)."""
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise DataError(f"zip member {info.filename}: bad local header")
    return info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


class _TorchZip:
    """The records of a torch.save zip file, memory-mapped copy-on-write (nothing is read until used)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"{path}: not a torch.save zip file ({err}); the pre-1.6 legacy format is not "
                            "supported") from None
        pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise DataError(f"{path}: expected one <archive>/data.pkl in the zip, found {len(pickles)}")
        self.prefix, self.pickle = pickles[0][: -len("data.pkl")], pickles[0]
        order = self.prefix + "byteorder"
        if order in self.zip.namelist() and self.zip.read(order).strip() != b"little":
            raise DataError(f"{path}: big-endian storages are not supported")
        with open(path, "rb") as handle:
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        self.handle, self.cache = open(path, "rb"), {}

    def record(self, pid) -> _Record:
        """The storage a persistent id ('storage', <torch.XStorage>, key, location, numel) names."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise RefusedPickle(f"{self.path}: persistent id {pid!r} is not a storage reference")
        _, kind, key, _location, numel = pid
        if not (isinstance(kind, _Marker) and isinstance(kind.value, torch.dtype)):
            raise RefusedPickle(f"{self.path}: storage {key!r} of type {kind!r}, expected a torch storage type")
        if not (isinstance(key, str) and key.isdigit() and type(numel) is int and numel >= 0):
            raise RefusedPickle(f"{self.path}: malformed storage reference {pid!r}")
        if key in self.cache:
            if self.cache[key].flat.dtype != kind.value:
                raise RefusedPickle(f"{self.path}: storage {key} used as two dtypes")
            return self.cache[key]
        self.cache[key] = _Record(self._flat(key, kind.value, numel), key)
        return self.cache[key]

    def _flat(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """(numel,) tensor of `dtype` over the bytes of record data/<key>."""
        try:
            info = self.zip.getinfo(f"{self.prefix}data/{key}")
        except KeyError:
            raise DataError(f"{self.path}: storage {key} is referenced but missing from the zip") from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED or numel * itemsize > info.file_size:
            raise DataError(f"{self.path}: storage {key}: {numel} x {itemsize} bytes do not fit its "
                            f"{info.file_size}-byte (stored, uncompressed) record")
        if numel == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=numel, offset=_data_offset(self.handle, info))


@contextlib.contextmanager
def refusals(path: Path, what: str):
    """Every failure while unpickling `path` as a DataError (a RefusedPickle) naming the file."""
    try:
        yield
    except RefusedPickle as err:
        raise RefusedPickle(err if str(err).startswith(str(path)) else f"{path}: {err}") from None
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError, KeyError, AttributeError) as err:
        raise DataError(f"{path}: not a loadable {what} ({type(err).__name__}: {err})") from None


def load_torch_file(path: str | Path) -> Any:
    """The object a torch.save zip file holds, without running code from it (tensors memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    archive = _TorchZip(path)
    try:
        with refusals(path, "checkpoint pickle"):
            return unpickle(archive.zip.read(archive.pickle), archive.record)
    finally:
        archive.handle.close()


def load_pickle(path: str | Path) -> Any:
    """The object in a plain pickle file (e.g. NICE-format THINGS-EEG2 files), restricted as above."""
    path = Path(path)
    try:
        with open(path, "rb") as handle, refusals(path, "pickle"):
            return unpickle(BoundedReader(handle, path.stat().st_size))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def load_npy(path: str | Path) -> np.ndarray:
    """What np.load returns for an .npy file; an object array's pickle (np.save of a dict, as the THINGS-EEG2
    files: take `.item()`) goes through the restricted unpickler, a numeric array is read without pickle."""
    from numpy.lib import format as npy

    path = Path(path)
    try:
        with open(path, "rb") as handle, refusals(path, ".npy file"):
            version = npy.read_magic(handle)
            read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if read is None:
                raise DataError(f"{path}: .npy format version {version} is not supported")
            shape, _fortran, dtype = read(handle)
            if not dtype.hasobject:
                return np.load(path, allow_pickle=False)
            array = unpickle(BoundedReader(handle, path.stat().st_size - handle.tell()))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise DataError(f"{path}: the pickle holds {type(array).__name__}, expected an array of shape {shape}")
    return array
