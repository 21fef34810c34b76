"""Real, tiny model bundles for tests: an ONNX graph y = x * scale + bias and a bundle directory around it.

``make_bundle_dir`` writes what an operator pushes (manifest.json plus files); the model
runs in onnxruntime and the manifest's golden case holds its exact expected output, so
deploy and acceptance tests can use the same bundles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf import json_format
from onnx import TensorProto, helper

from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import from_numpy

OPSET = 13
IR_VERSION = 8  # old enough for every onnxruntime the agent supports
INPUT_SHAPE = (1, 4)
GOLDEN_INPUT = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


def make_tiny_model(path: Path, scale: float = 2.0, bias: float = 1.0, *, work: int = 0) -> Path:
    """Write an ONNX model computing y = x * scale + bias on float32 x of shape [1, 4]; returns path.

    ``work`` > 0 adds that many 512x512 MatMuls on zeros derived from x (about 270 MFLOP each, which
    onnxruntime cannot fold away because they depend on the input): the output is unchanged, the
    model is measurably slow. Tests use it to make one variant slower than another for real.
    """
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"])]
    initializers = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("bias", TensorProto.FLOAT, [], [bias]),
    ]
    if work:
        initializers += [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("reps", TensorProto.INT64, [2], [512, 128]),
        ]
        nodes += [
            helper.make_node("Mul", ["x", "zero"], ["zeros"]),
            helper.make_node("Tile", ["zeros", "reps"], ["t0"]),
        ]
        for i in range(work):
            nodes.append(helper.make_node("MatMul", [f"t{i}", "t0"], [f"t{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"t{work}"], ["nothing"], keepdims=0),
            helper.make_node("Add", ["scaled", "nothing"], ["scaled_work"]),
            helper.make_node("Add", ["scaled_work", "bias"], ["y"]),
        ]
    else:
        nodes.append(helper.make_node("Add", ["scaled", "bias"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(INPUT_SHAPE))],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def golden_case(scale: float, bias: float) -> bundle_pb2.GoldenCase:
    """The golden case of a tiny model: GOLDEN_INPUT and its exact output."""
    expected = (GOLDEN_INPUT * np.float32(scale) + np.float32(bias)).astype(np.float32)
    return bundle_pb2.GoldenCase(
        name="ramp",
        inputs=[from_numpy("x", GOLDEN_INPUT)],
        expected_outputs=[from_numpy("y", expected)],
        abs_tolerance=1e-5,
    )


def make_bundle_dir(
    tmp: Path,
    name: str = "tiny",
    version: int = 1,
    variant: str = "fp32",
    *,
    scale: float = 2.0,
    bias: float = 1.0,
    task: str = "generic",
    extra_files: Mapping[str, bytes] | None = None,
    list_files: bool = False,
    manifest: Mapping[str, Any] | None = None,
    work: int = 0,
) -> Path:
    """Write a bundle directory ``tmp/<name>-<version>-<variant>`` and return it.

    It holds model.onnx (``make_tiny_model``), any ``extra_files`` (path in bundle → bytes)
    and manifest.json with a golden case and build metrics. ``list_files`` lists the files
    (paths and roles only; the CLI fills in sizes and hashes); otherwise the directory's
    files are the bundle. ``manifest`` entries override or add top-level manifest fields. ``work``
    makes the model slow (see ``make_tiny_model``).
    """
    bundle = tmp / f"{name}-{version}-{variant}"
    make_tiny_model(bundle / "model.onnx", scale, bias, work=work)
    for rel, data in (extra_files or {}).items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_bytes(data)
    message = bundle_pb2.BundleManifest(
        format_version=1,
        name=name,
        version=version,
        variant=variant,
        model_file="model.onnx",
        description=f"y = x * {scale:g} + {bias:g}",
        source_model="tests/bundles.py",
        requirements=bundle_pb2.RuntimeRequirements(opset=OPSET),
        metrics=bundle_pb2.BuildMetrics(overall={"accuracy": 1.0}, latency_p50_ms=0.01, latency_p95_ms=0.02),
        golden=[golden_case(scale, bias)],
    )
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    data["task"] = task
    if list_files:
        paths = ["model.onnx", *sorted(extra_files or {})]
        data["files"] = [{"path": p, "role": "model" if p == "model.onnx" else "other"} for p in paths]
    data.update(manifest or {})
    (bundle / "manifest.json").write_text(json.dumps(data, indent=2))
    return bundle
