"""A writer of PyTorch's legacy torch.save format, for tests only.

Emits the opcode structure PyTorch < 1.6 wrote (protocol-2 pickles, tensors
as `_rebuild_tensor_v2` calls on persistent storages), opcode by opcode,
because `torch` is not importable here; `pretrained/torch_legacy.py` reads
what it writes.
"""

import os
import pickle
import struct

import numpy as np

from efficientlab_tf.pretrained import torch_legacy


def _op_string(text):
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _op_int(value):
    return b"J" + struct.pack("<i", value)


def _op_tuple(items):
    return b"(" + b"".join(items) + b"t"


def _op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _dense(array):
    """(array, storage in memory order, element strides): a transposed view
    keeps its strides, as PyTorch saves permuted tensors."""
    flat = np.ravel(array, order="K")
    if array.ndim and all(st > 0 for st in array.strides):
        stride = tuple(st // array.itemsize for st in array.strides)
        view = np.lib.stride_tricks.as_strided(flat, array.shape, array.strides)
        if np.array_equal(view, array):
            return array, flat, stride
    array = np.array(array, order="C")
    return array, np.ravel(array), tuple(st // array.itemsize for st in array.strides)


def save_state_dict(state_dict, path):
    """Writes numpy arrays in the legacy torch.save format (tests use it).

    Emits the same opcode structure PyTorch < 1.6 wrote (protocol-2 pickles,
    tensors as `_rebuild_tensor_v2` calls on persistent storages), written
    opcode by opcode because `torch` is not importable here.
    """
    names_by_dtype = {np.dtype(v): k for k, v in torch_legacy._STORAGE_DTYPES.items()}
    arrays = [(name, _dense(np.asarray(a))) for name, a in state_dict.items()]
    keys = [str(1000 + i) for i in range(len(arrays))]
    body = [b"\x80\x02", _op_global("collections", "OrderedDict"), b")R("]
    for key, (name, (array, flat, stride)) in zip(keys, arrays):
        storage = _op_tuple([
            _op_string("storage"),
            _op_global("torch", names_by_dtype[array.dtype]),
            _op_string(key), _op_string("cpu"), _op_int(flat.size), b"N",
        ]) + b"Q"
        body.append(_op_string(name))
        body.append(_op_global("torch._utils", "_rebuild_tensor_v2"))
        body.append(_op_tuple([
            storage, _op_int(0),
            _op_tuple([_op_int(n) for n in array.shape]),
            _op_tuple([_op_int(n) for n in stride]),
            b"\x89", _op_global("collections", "OrderedDict") + b")R",
        ]) + b"R")
    body.append(b"u.")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        for header in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION,
                       {"protocol_version": torch_legacy.PROTOCOL_VERSION, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        f.write(b"".join(body))
        pickle.dump(keys, f, protocol=2)
        for _, (_, flat, _) in arrays:
            f.write(struct.pack("<q", flat.size))
            f.write(flat.astype(flat.dtype.newbyteorder("<")).tobytes())
    os.replace(tmp, path)
