"""Tensors round-trip between numpy and the wire; malformed ones are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import TensorError, from_numpy, to_numpy


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "int8", "uint8", "bool"])
def test_arrays_round_trip(dtype):
    array = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    back = to_numpy(from_numpy("x", array))
    assert back.dtype == array.dtype and np.array_equal(back, array)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (bundle_pb2.Tensor(name="a", dtype="complex64", shape=[1], data=b"\0" * 8), "dtype"),
        (bundle_pb2.Tensor(name="a", dtype="float32", shape=[-1], data=b""), "shape"),
        (bundle_pb2.Tensor(name="a", dtype="float32", shape=[2], data=b"\0" * 4), "needs 8"),
        (bundle_pb2.Tensor(name="a", dtype="float32", shape=[1 << 30], data=b""), "cap"),
        (bundle_pb2.Tensor(name="a", dtype="float32", shape=[1] * 9, data=b"\0" * 4), "shape"),
    ],
)
def test_malformed_tensors_are_refused(tensor, message):
    with pytest.raises(TensorError, match=message):
        to_numpy(tensor)
