"""The child process of ``evaluate.measure``: one model, loaded and run at one thread, measured.

Run as ``python -m controlplane.modelbuild.probe`` with a JSON request on stdin
({model, inputs: an .npz of input arrays, output, outputs_file, runs}); it writes the
scored output of every sample, stacked, to ``outputs_file`` and prints one JSON object:
load_time_ms, peak_rss_bytes (the high-water mark from the load through every run, above
the resident size before the load), latency_p50_ms and latency_p95_ms (``runs`` runs of
the first sample after WARMUP_RUNS). It imports numpy and onnxruntime only, so that the
memory it measures is the model's.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

WARMUP_RUNS = 5


def _rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def probe(request: dict) -> dict:
    import onnxruntime as ort

    baseline = _rss("VmRSS")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    started = time.perf_counter()
    session = ort.InferenceSession(request["model"], options, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - started) * 1000
    with np.load(request["inputs"]) as npz:
        arrays = {name: npz[name] for name in npz.files}
    count = len(next(iter(arrays.values())))
    output = [request["output"]]
    outputs = [session.run(output, {k: v[i : i + 1] for k, v in arrays.items()})[0] for i in range(count)]
    shapes = {o.shape for o in outputs}
    if len(shapes) > 1:
        raise SystemExit(f"output {output[0]!r} has different shapes for different samples: {sorted(shapes)[:3]}")
    first = {k: v[:1] for k, v in arrays.items()}
    for _ in range(WARMUP_RUNS):
        session.run(output, first)
    timings = []
    for _ in range(int(request["runs"])):
        started = time.perf_counter()
        session.run(output, first)
        timings.append((time.perf_counter() - started) * 1000)
    np.save(request["outputs_file"], np.stack(outputs))
    return {
        "load_time_ms": load_ms,
        "peak_rss_bytes": max(0, _rss("VmHWM") - baseline),
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p95_ms": float(np.percentile(timings, 95)),
    }


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.stdin.read()))))
