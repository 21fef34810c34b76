"""Conversions between the contract's Tensor message and numpy arrays.

Tensor data is little-endian, C order. Every conversion from the wire is
bounded: the byte length must match dtype × shape exactly, shapes are
non-negative, and at most MAX_TENSOR_BYTES are accepted.
"""

from __future__ import annotations

import numpy as np

from protos.edgefleet.v1 import bundle_pb2

MAX_TENSOR_BYTES = 64 * 1024 * 1024
MAX_RANK = 8
DTYPES = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}


class TensorError(ValueError):
    """A tensor from the wire is malformed; the message says how."""


def to_numpy(tensor: bundle_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor. Raises TensorError on an unknown dtype, a bad shape or a size mismatch."""
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorError(f"tensor {tensor.name!r}: dtype {tensor.dtype!r} is not one of {sorted(DTYPES)}")
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise TensorError(f"tensor {tensor.name!r}: shape {list(shape)} is invalid")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected > MAX_TENSOR_BYTES:
        raise TensorError(f"tensor {tensor.name!r}: {expected} bytes is over the {MAX_TENSOR_BYTES} byte cap")
    if len(tensor.data) != expected:
        raise TensorError(
            f"tensor {tensor.name!r}: {len(tensor.data)} data bytes, but {tensor.dtype}{list(shape)} needs {expected}"
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).copy()


def from_numpy(name: str, array: np.ndarray) -> bundle_pb2.Tensor:
    """Encode an array (any of DTYPES) as a Tensor."""
    for dtype_name, dtype in DTYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            data = np.ascontiguousarray(array, dtype=dtype).tobytes()
            return bundle_pb2.Tensor(name=name, dtype=dtype_name, shape=list(array.shape), data=data)
    raise TensorError(f"tensor {name!r}: numpy dtype {array.dtype} is not supported")
