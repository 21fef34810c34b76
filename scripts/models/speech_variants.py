"""Variants of the fp32 speech model, and their measurement on this CPU.

The variants are made by the project's variant tool (``controlplane.modelbuild.variants``, as
``edgefleet models build``): each entry of ``MAKERS`` writes one ONNX file and returns a short
note on how it was made.
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

from controlplane.modelbuild import variants as variant_tool
from controlplane.modelbuild.inputs import Samples

NotApplicable = variant_tool.NotApplicable


def _maker(variant: str) -> Callable[[Path, Path, np.ndarray], str]:
    def make(fp32: Path, out: Path, calibration: np.ndarray) -> str:
        return variant_tool.make(variant, fp32, out, Samples({"features": calibration}, len(calibration)))

    return make


# The project's variant tool (``edgefleet models build``), fed the calibration features one clip per run.
VARIANTS = ("int8-dynamic", "int8-static-qdq", "int8-static-qop", "fp16", "int4-weight")
MAKERS: dict[str, Callable[[Path, Path, np.ndarray], str]] = {variant: _maker(variant) for variant in VARIANTS}

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
