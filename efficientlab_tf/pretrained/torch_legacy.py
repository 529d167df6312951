"""Reads PyTorch's legacy (pre-1.6, non-zip) `torch.save` files without PyTorch.

The legacy format is a concatenation of five pickles followed by raw storage
bytes:

1. the magic number 0x1950a86a20f9469cfc6c,
2. the protocol version (1001),
3. a dict describing the writer (byte order and C type sizes),
4. the saved object; every tensor in it is a call to
   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
   whose `storage` is a persistent id
   `("storage", <torch.XStorage>, key, location, numel, view_metadata)`,
5. the list of storage keys in the order their bytes follow,

then, for each key in that order, the element count as a little-endian int64
followed by the elements.

Every one of the five pickles goes through an allow-list unpickler: the
header pickles and the key list may resolve no global at all, the state dict
only `OrderedDict`, `_rebuild_tensor_v2` and the storage types. Reading a
file therefore never runs code from it; anything else is a `TorchFileError`
that names the file and what was found.
"""

import collections
import os
import pickle
import struct

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


# What reading a file may materialise: this many times its size, plus this
# many bytes (see the end of `load_state_dict`).
MATERIALIZE_FACTOR = 2
MATERIALIZE_SLACK = 1 << 20


class TorchFileError(ValueError):
    """A file is not a legacy PyTorch state dict this reader understands."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """Placeholder for a storage whose bytes come after the pickles."""

    def __init__(self, key, dtype, numel):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.array = None


class _TensorRef:
    """A tensor waiting for its storage bytes."""

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def nbytes(self):
        """Bytes the materialised tensor takes (0 for a malformed size, which
        `materialize` refuses by name)."""
        count = 1
        for n in self.size:
            if not isinstance(n, int) or n < 0:
                return 0
            count *= n
        return count * self.storage.dtype.itemsize

    def materialize(self, path):
        """The tensor as a numpy array that owns its memory.

        Every view is checked against its storage with Python integers (no
        overflow) before memory is touched: sizes and the offset must be
        non-negative integers, strides non-negative (PyTorch has no negative
        strides; a negative one would read before the storage), every
        element the view can reach must lie inside the storage, and the view
        may not hold more elements than its storage (only an expanded,
        stride-0 tensor could, and `torch.save` writes those out whole), so
        a crafted header cannot read foreign memory or ask for 2^40 elements.
        """
        data = self.storage.array
        where = f"{path}: a tensor of shape {self.size} (strides {self.stride}, offset {self.offset})"
        ints = lambda xs: all(  # noqa: E731
            isinstance(x, int) and not isinstance(x, bool) for x in xs)
        if not (ints(self.size) and ints(self.stride) and ints([self.offset])
                and len(self.size) == len(self.stride)):
            raise TorchFileError(f"{where} has a malformed size, stride or offset.")
        if any(n < 0 for n in self.size) or self.offset < 0:
            raise TorchFileError(f"{where} has a negative size or offset.")
        if any(s < 0 for s in self.stride):
            raise TorchFileError(f"{where} has a negative stride; PyTorch "
                                 "tensors have none.")
        count = 1
        for n in self.size:
            count *= n
        if count == 0:
            return np.zeros(self.size, self.storage.dtype)
        if count > data.size:
            raise TorchFileError(
                f"{where} holds {count} elements, more than its storage "
                f"({data.size} elements).")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset >= data.size or last >= data.size:
            raise TorchFileError(
                f"{where} reads past the end of its storage ({data.size} "
                "elements).")
        if not self.size:
            return np.array(data[self.offset])
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)  # Owns its memory.


def _rebuild_tensor_v2(storage, offset, size, stride, *unused):
    return _TensorRef(storage, offset, size, stride)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global and no persistent id.

    The header pickles (magic number, protocol version, system info) and the
    storage-key list hold only ints, strings, tuples, lists and dicts, so
    nothing needs resolving; a pickle that asks for any callable (the
    `__reduce__` of an exploit asks for `os.system` or `builtins.eval`) is
    refused before anything runs.
    """

    def __init__(self, file, path, what):
        super().__init__(file)
        self.path = path
        self.what = what

    def find_class(self, module, name):
        raise TorchFileError(
            f"{self.path}: the {self.what} refers to {module}.{name}; a legacy "
            "torch.save file holds only plain values there, so it was refused "
            "without running anything."
        )

    def persistent_load(self, pid):
        raise TorchFileError(
            f"{self.path}: unexpected persistent id in the {self.what}."
        )


class _Unpickler(_PlainUnpickler):
    """The state-dict pickle: only OrderedDict, tensors and storage types."""

    def __init__(self, file, path):
        super().__init__(file, path, "state dict")
        self.storages = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(
            f"{self.path}: unexpected object {module}.{name} in the pickle; "
            "only state dicts of tensors can be read without PyTorch."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError(f"{self.path}: unexpected persistent id {pid!r}.")
        storage_type, key, _, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise TorchFileError(
                f"{self.path}: storage views (view_metadata) are not supported."
            )
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self.path}: bad storage type in {pid!r}.")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _load_pickle(file, path, what):
    """One header pickle through `_PlainUnpickler` (never `pickle.load`)."""
    try:
        return _PlainUnpickler(file, path, what).load()
    except TorchFileError:
        raise
    except Exception as e:
        raise TorchFileError(
            f"{path}: could not read the {what} ({type(e).__name__}: {e}); "
            "is this a legacy (non-zip) torch.save file?"
        ) from None


def remaining(f):
    """Bytes left in the open file `f` after its position."""
    here = f.tell()
    end = f.seek(0, 2)
    f.seek(here)
    return end - here


def load_state_dict(path):
    """Reads a legacy-format PyTorch state dict into numpy arrays.

    Args:
        path: file written by `torch.save(state_dict, path,
            _use_new_zipfile_serialization=False)` (or by PyTorch < 1.6).

    Returns:
        collections.OrderedDict: parameter name -> numpy array (PyTorch
        layouts, e.g. conv weights [out, in, kh, kw]).

    Raises:
        TorchFileError: the file is not in this format, is truncated, or holds
            something other than a dict of tensors.
    """
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:2] == b"PK":
            raise TorchFileError(
                f"{path}: this is a zip-format torch.save file; only the legacy "
                "(non-zip) format is supported."
            )
        f.seek(0)
        magic = _load_pickle(f, path, "magic number")
        if magic != MAGIC_NUMBER:
            raise TorchFileError(
                f"{path}: wrong magic number {magic!r}; not a legacy torch.save file."
            )
        version = _load_pickle(f, path, "protocol version")
        if version != PROTOCOL_VERSION:
            raise TorchFileError(
                f"{path}: protocol version {version!r}, expected {PROTOCOL_VERSION}."
            )
        info = _load_pickle(f, path, "system info")
        if not (isinstance(info, dict) and info.get("little_endian", False)):
            raise TorchFileError(f"{path}: only little-endian files are supported.")
        unpickler = _Unpickler(f, path)
        try:
            obj = unpickler.load()
        except TorchFileError:
            raise
        except Exception as e:
            raise TorchFileError(
                f"{path}: could not read the state dict ({type(e).__name__}: {e})."
            ) from None
        keys = _load_pickle(f, path, "storage key list")
        for key in keys:
            storage = unpickler.storages.get(key)
            if storage is None:
                raise TorchFileError(f"{path}: storage {key!r} is not referenced.")
            raw = f.read(8)
            if len(raw) != 8:
                raise TorchFileError(f"{path}: truncated before storage {key!r}.")
            (count,) = struct.unpack("<q", raw)
            nbytes = count * storage.dtype.itemsize
            left = remaining(f)
            if count < 0 or nbytes > left:
                raise TorchFileError(
                    f"{path}: truncated in storage {key!r}, or a bad header: "
                    f"it declares {count} elements "
                    f"({nbytes} bytes) but the file has {left} bytes left.")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise TorchFileError(
                    f"{path}: truncated in storage {key!r} (expected {nbytes} "
                    f"bytes, got {len(data)})."
                )
            storage.array = np.frombuffer(data, dtype=storage.dtype.newbyteorder("<"))
    missing = [k for k, s in unpickler.storages.items() if s.array is None]
    if missing:
        raise TorchFileError(f"{path}: no data for storages {missing[:5]}.")
    if not isinstance(obj, dict):
        raise TorchFileError(
            f"{path}: holds a {type(obj).__name__}, expected a state dict."
        )
    # Each tensor is copied out of its storage, and many views of one
    # storage would each be copied: 3,000 transposed views of a 4 MiB
    # storage (a 4.5 MB file) asked for 12 GiB. A state dict holds each
    # parameter once, so what is materialised stays near the file's size.
    budget = MATERIALIZE_FACTOR * os.path.getsize(path) + MATERIALIZE_SLACK
    total = 0
    out = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise TorchFileError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor."
            )
        # (A view larger than its storage is refused by `materialize`.)
        total += min(value.nbytes(), value.storage.array.nbytes)
        if total > budget:
            raise TorchFileError(
                f"{path}: its tensors would take more than {budget} bytes once "
                f"read ({MATERIALIZE_FACTOR}x the file's size + "
                f"{MATERIALIZE_SLACK} bytes, reached at entry {name!r}): many "
                "views of the same storage; not a state dict as torch.save "
                "writes one.")
        out[name] = value.materialize(path)
    return out
