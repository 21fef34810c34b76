"""What every model build measures the same way: a session at a fixed thread count, load time,
latency percentiles, and the CPU it was measured on."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from protos.cpuinfo import local_cpu_model


def session(model: Path, threads: int = 1, *, quiet: bool = False) -> ort.InferenceSession:
    """An onnxruntime CPU session with ``threads`` intra-op threads (quiet: errors only)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if quiet:
        options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def load_and_latency(
    model: Path, feed: dict[str, np.ndarray], *, load_runs: int, runs: int, warmup: int, quiet: bool = False
) -> tuple[float, float, float]:
    """(median load ms over load_runs, p50 ms, p95 ms over runs after warmup), at one thread."""
    loads = []
    for _ in range(load_runs):
        started = time.perf_counter()
        sess = session(model, quiet=quiet)
        loads.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(run_ms(sess, feed, runs=runs, warmup=warmup), n=100, method="inclusive")
    return statistics.median(loads), cuts[49], cuts[94]


def run_ms(sess: ort.InferenceSession, feed: dict[str, np.ndarray], *, runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``sess`` on ``feed``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        sess.run(None, feed)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        sess.run(None, feed)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def cpu_model() -> str:
    """The CPU's model name, as the agent reports it in its facts."""
    return local_cpu_model()
