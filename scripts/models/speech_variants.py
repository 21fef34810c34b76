"""Variants of the fp32 speech model with onnxruntime's tools, and their measurement on this CPU.

Each ``make_*`` writes one ONNX file and returns a short note on how it was made.
``measure`` loads a file in a child process (honest load time and memory), times it
at one thread and scores it on features given. A variant that cannot be built for
this graph raises ``NotApplicable`` with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx


class NotApplicable(Exception):
    """The variant does not apply to this graph; the message says why."""


class _Calibration:
    """CalibrationDataReader over a fixed set of feature tensors, one per call."""

    def __init__(self, inputs: np.ndarray) -> None:
        self._rows = iter([{"features": row[None]} for row in inputs])

    def get_next(self):
        return next(self._rows, None)

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it only for some calibrators
        pass


def make_int8_dynamic(fp32: Path, out: Path, calibration: np.ndarray) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return "onnxruntime quantize_dynamic, int8 weights (QInt8), activations quantized at run time"


def _static(fp32: Path, out: Path, calibration: np.ndarray, fmt: str) -> str:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        # U8S8 for QOperator (S8S8 QOperator is slow on x86); S8S8 for QDQ, as onnxruntime recommends.
        activation = QuantType.QUInt8 if fmt == "qop" else QuantType.QInt8
        quantize_static(
            str(prepared),
            str(out),
            _Calibration(calibration),
            quant_format=QuantFormat.QOperator if fmt == "qop" else QuantFormat.QDQ,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    kind = "QOperator, uint8 activations" if fmt == "qop" else "QDQ, int8 activations"
    clips = len(calibration)
    return f"onnxruntime quantize_static ({kind}, int8 per-channel weights), MinMax over {clips} training clips"


def make_int8_static_qdq(fp32: Path, out: Path, calibration: np.ndarray) -> str:
    return _static(fp32, out, calibration, "qdq")


def make_int8_static_qop(fp32: Path, out: Path, calibration: np.ndarray) -> str:
    return _static(fp32, out, calibration, "qop")


def make_fp16(fp32: Path, out: Path, calibration: np.ndarray) -> str:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))
    return "onnxruntime convert_float_to_float16, float32 input and output kept"


def make_int4_weight(fp32: Path, out: Path, calibration: np.ndarray) -> str:
    graph = onnx.load(str(fp32)).graph
    weights = {i.name for i in graph.initializer}
    if not any(n.op_type == "MatMul" and any(i in weights for i in n.input) for n in graph.node):
        raise NotApplicable("not applicable: no MatMul weights (MatMulNBits quantizes MatMul only)")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # pragma: no cover

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=32, is_symmetric=True)  # pragma: no cover
    quantizer.process()  # pragma: no cover
    quantizer.model.save_model_to_file(str(out))  # pragma: no cover
    return "onnxruntime MatMulNBitsQuantizer, 4-bit weights, block 32"  # pragma: no cover


MAKERS: dict[str, Callable[[Path, Path, np.ndarray], str]] = {
    "int8-dynamic": make_int8_dynamic,
    "int8-static-qdq": make_int8_static_qdq,
    "int8-static-qop": make_int8_static_qop,
    "fp16": make_fp16,
    "int4-weight": make_int4_weight,
}

_CHILD = r"""
import json, sys, time
import numpy as np

def rss(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0

import onnxruntime as ort
request = json.loads(sys.stdin.read())
baseline = rss("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
started = time.perf_counter()
session = ort.InferenceSession(request["model"], options, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - started) * 1000
inputs = np.load(request["inputs"])
logits = np.concatenate([session.run(["logits"], {"features": row[None]})[0] for row in inputs])
one = inputs[:1]
for _ in range(5):
    session.run(["logits"], {"features": one})
timings = []
for _ in range(request["runs"]):
    started = time.perf_counter()
    session.run(["logits"], {"features": one})
    timings.append((time.perf_counter() - started) * 1000)
np.save(request["logits"], logits)
print(json.dumps({
    "load_time_ms": load_ms,
    "peak_rss_bytes": max(0, rss("VmHWM") - baseline),
    "latency_p50_ms": float(np.percentile(timings, 50)),
    "latency_p95_ms": float(np.percentile(timings, 95)),
}))
"""


def measure(model: Path, inputs: np.ndarray, work: Path, runs: int = 200) -> tuple[dict, np.ndarray]:
    """Run ``model`` in a child process at one thread on every row of ``inputs``.

    Returns ({load_time_ms, peak_rss_bytes (high-water mark above the process before the
    load), latency_p50_ms, latency_p95_ms over ``runs`` runs of the first row}, logits).
    Raises RuntimeError when the child fails.
    """
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "inputs.npy", inputs)
    request = {"model": str(model), "inputs": str(work / "inputs.npy"), "logits": str(work / "logits.npy")}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps({**request, "runs": runs}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if child.returncode != 0:
        raise RuntimeError(f"measuring {model.name} failed: {child.stderr.strip()[-500:]}")
    return json.loads(child.stdout), np.load(work / "logits.npy")
