"""One ONNX file per variant with onnxruntime's own tools (generalised from scripts/models/speech_variants.py).

Each maker writes ``out`` from the fp32 source and returns a short note on how it was
made. A variant that does not apply to the graph raises ``NotApplicable`` with the
reason; anything else a tool raises is a failed conversion, which the build reports.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

from controlplane.modelbuild.inputs import Samples

STATIC = frozenset({"int8-static-qdq", "int8-static-qop"})
# Golden-case tolerances (abs, rel): on another CPU, quantized kernels differ more than fp32 ones.
TOLERANCE = {
    "fp32": (1e-4, 1e-4),
    "fp16": (2e-2, 1e-2),
    "int8-dynamic": (0.15, 0.03),
    "int8-static-qdq": (0.15, 0.03),
    "int8-static-qop": (0.15, 0.03),
    "int4-weight": (0.15, 0.03),
}
# MatMulNBits (int4-weight) arrived in onnxruntime 1.17.
MIN_ONNXRUNTIME = {"int4-weight": "1.17"}
DEFAULT_MIN_ONNXRUNTIME = "1.16"
INT4_BLOCK_SIZE = 32


class NotApplicable(Exception):
    """The variant does not apply to this graph; the message says why."""


class _Calibration:
    """onnxruntime's CalibrationDataReader over the calibration samples, one batch of one per call."""

    def __init__(self, samples: Samples) -> None:
        self._samples = samples
        self._feeds = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        return (self._samples.feed(i) for i in range(self._samples.count))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = self._iterate()


def make_fp32(source: Path, out: Path, calibration: Samples | None) -> str:
    shutil.copyfile(source, out)
    return "the source model as given"


def make_fp16(source: Path, out: Path, calibration: Samples | None) -> str:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(out))
    return "onnxruntime convert_float_to_float16, inputs and outputs kept in their types"


def make_int8_dynamic(source: Path, out: Path, calibration: Samples | None) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8)
    return "onnxruntime quantize_dynamic, int8 weights (QInt8), activations quantized at run time"


def _static(source: Path, out: Path, calibration: Samples | None, fmt: str) -> str:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None:  # the build checks this up front; a guard for direct callers
        raise ValueError("static quantization needs calibration samples")
    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        # U8S8 for QOperator (S8S8 QOperator is slow on x86); S8S8 for QDQ, as onnxruntime recommends.
        # reduce_range: 7-bit weights. x86 CPUs without VNNI multiply u8 x s8 pairs with VPMADDUBSW,
        # whose int16 pair sums saturate with 8-bit weights, so the same build computed other logits
        # there than on the (VNNI) build machine and failed its golden cases (measured: up to 0.52 off
        # on an AVX2-only AMD EPYC). With 7-bit weights no sum saturates: every x86 CPU computes the
        # same integers, and the golden cases hold on all of them.
        quantize_static(
            str(prepared),
            str(out),
            _Calibration(calibration),
            quant_format=QuantFormat.QOperator if fmt == "qop" else QuantFormat.QDQ,
            activation_type=QuantType.QUInt8 if fmt == "qop" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=True,
        )
    finally:
        prepared.unlink(missing_ok=True)
    kind = "QOperator, uint8 activations" if fmt == "qop" else "QDQ, int8 activations"
    return (
        f"onnxruntime quantize_static ({kind}, int8 per-channel weights in 7-bit range), "
        f"MinMax calibration over {calibration.count} samples"
    )


def make_int8_static_qdq(source: Path, out: Path, calibration: Samples | None) -> str:
    return _static(source, out, calibration, "qdq")


def make_int8_static_qop(source: Path, out: Path, calibration: Samples | None) -> str:
    return _static(source, out, calibration, "qop")


def make_int4_weight(source: Path, out: Path, calibration: Samples | None) -> str:
    graph = onnx.load(str(source)).graph
    weights = {i.name for i in graph.initializer}
    if not any(n.op_type == "MatMul" and any(i in weights for i in n.input) for n in graph.node):
        raise NotApplicable("no MatMul with constant weights (MatMulNBits quantizes MatMul weights only)")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=INT4_BLOCK_SIZE, is_symmetric=True)
    quantizer.process()
    if not any(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node):
        raise NotApplicable("MatMulNBitsQuantizer quantized no MatMul of this graph")
    quantizer.model.save_model_to_file(str(out))
    return f"onnxruntime MatMulNBitsQuantizer, symmetric 4-bit MatMul weights, block {INT4_BLOCK_SIZE}"


MAKERS: dict[str, Callable[[Path, Path, Samples | None], str]] = {
    "fp32": make_fp32,
    "fp16": make_fp16,
    "int8-dynamic": make_int8_dynamic,
    "int8-static-qdq": make_int8_static_qdq,
    "int8-static-qop": make_int8_static_qop,
    "int4-weight": make_int4_weight,
}


def make(variant: str, source: Path, out: Path, calibration: Samples | None) -> str:
    """Write ``variant`` of ``source`` to ``out``, with onnxruntime's chatter kept to errors."""
    quantization_logger = logging.getLogger("onnxruntime.quantization")
    root = logging.getLogger()
    levels = (quantization_logger.level, root.level)
    quantization_logger.setLevel(logging.ERROR)
    root.setLevel(max(root.level, logging.ERROR))
    try:
        return MAKERS[variant](source, out, calibration)
    finally:
        quantization_logger.setLevel(levels[0])
        root.setLevel(levels[1])


def opset(path: Path) -> int:
    """The default-domain opset the ONNX file at ``path`` imports (0 if none)."""
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
