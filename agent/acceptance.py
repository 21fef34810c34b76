"""The on-device acceptance test of a staged model build, run in a child process.

A child process keeps a model that crashes or exhausts onnxruntime away from
the agent (which keeps serving the previous build), gives an honest peak-RSS
figure (the child's own high-water mark), and can be killed at a deadline.

The child loads the model with the device's thread cap, runs every golden
case of the manifest and compares outputs within the stated tolerances, then
times ``runs`` inferences of the first golden case. The parent applies the
policies: memory budget, latency ceiling.

Run as ``python -m agent.acceptance`` with a JSON request on stdin; it prints
one JSON object on stdout.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from protos.edgefleet.v1 import bundle_pb2

DEFAULT_RUNS = 20
WARMUP_RUNS = 2


@dataclass(frozen=True)
class AcceptanceReport:
    passed: bool
    reason: str = ""
    load_time_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    peak_rss_bytes: int = 0  # resident memory the model added: loaded and after the benchmark runs
    runs: int = 0
    threads: int = 0


def run_acceptance(
    model_dir: Path,
    manifest: bundle_pb2.BundleManifest,
    *,
    threads: int = 0,
    memory_budget_bytes: int = 0,
    max_latency_p95_ms: float = 0.0,
    timeout_seconds: float = 120.0,
    runs: int = 0,
    warmup_runs: int = 0,
) -> AcceptanceReport:
    """Test the build in model_dir against its manifest; never raises for a bad model.

    ``runs`` timed inferences (0: the manifest's ``benchmark_runs``, else ``DEFAULT_RUNS``)
    follow ``warmup_runs`` untimed ones (0: ``WARMUP_RUNS``).
    """
    request = {
        "model_path": str(model_dir / manifest.model_file),
        "manifest": base64.b64encode(manifest.SerializeToString()).decode(),
        "threads": threads,
        "runs": runs or manifest.acceptance.benchmark_runs or DEFAULT_RUNS,
        "warmup_runs": warmup_runs or WARMUP_RUNS,
    }
    try:
        child = subprocess.run(
            [sys.executable, "-m", "agent.acceptance"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
        )
    except subprocess.TimeoutExpired:
        return AcceptanceReport(False, f"acceptance test timed out after {timeout_seconds:.0f} s")
    if child.returncode != 0:
        how = f"signal {-child.returncode}" if child.returncode < 0 else f"exit code {child.returncode}"
        tail = child.stderr.strip().splitlines()[-1:] or [""]
        return AcceptanceReport(False, f"acceptance test process failed ({how}): {tail[0][:300]}")
    try:
        report = AcceptanceReport(**json.loads(child.stdout))
    except (ValueError, TypeError) as exc:
        return AcceptanceReport(False, f"acceptance test gave an unreadable answer: {exc}")
    if not report.passed:
        return report
    budget = memory_budget_bytes or manifest.acceptance.max_peak_rss_bytes
    if budget and report.peak_rss_bytes > budget:
        mib = report.peak_rss_bytes / 2**20
        return _fail(report, f"peak memory {mib:.1f} MiB is over the budget of {budget / 2**20:.1f} MiB")
    ceiling = max_latency_p95_ms or manifest.acceptance.max_latency_p95_ms
    if ceiling and report.latency_p95_ms > ceiling:
        return _fail(report, f"latency p95 {report.latency_p95_ms:.2f} ms is over the limit of {ceiling:.2f} ms")
    return report


def _fail(report: AcceptanceReport, reason: str) -> AcceptanceReport:
    return AcceptanceReport(**{**asdict(report), "passed": False, "reason": reason})


def _percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[index]


def _rss_bytes() -> int:
    """Resident set size of this process (VmRSS), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(request: dict) -> AcceptanceReport:
    """Runs in the child process."""
    import time

    import numpy as np
    import onnxruntime as ort

    from protos.tensors import TensorError, to_numpy

    manifest = bundle_pb2.BundleManifest.FromString(base64.b64decode(request["manifest"]))
    threads = int(request["threads"])
    baseline = _rss_bytes()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    started = time.perf_counter()
    try:
        session = ort.InferenceSession(request["model_path"], options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types for a bad model
        return AcceptanceReport(False, f"model does not load in onnxruntime: {str(exc)[:300]}", threads=threads)
    load_ms = (time.perf_counter() - started) * 1000
    if not manifest.golden:
        return AcceptanceReport(False, "manifest has no golden cases to test against", load_time_ms=load_ms)
    output_names = [o.name for o in session.get_outputs()]
    feeds = []
    for case in manifest.golden:
        try:
            feed = {t.name: to_numpy(t) for t in case.inputs}
            expected = [(t.name or output_names[i], to_numpy(t)) for i, t in enumerate(case.expected_outputs)]
        except (TensorError, IndexError) as exc:
            return AcceptanceReport(False, f"golden case {case.name!r} is malformed: {exc}", load_time_ms=load_ms)
        try:
            outputs = dict(zip(output_names, session.run(None, feed), strict=True))
        except Exception as exc:  # noqa: BLE001
            return AcceptanceReport(False, f"golden case {case.name!r} fails to run: {str(exc)[:300]}")
        for name, want in expected:
            got = outputs.get(name)
            if got is None or got.shape != want.shape:
                shape = None if got is None else list(got.shape)
                return AcceptanceReport(
                    False, f"golden case {case.name!r}: output {name!r} has shape {shape}, expected {list(want.shape)}"
                )
            atol, rtol = case.abs_tolerance or 1e-5, case.rel_tolerance or 1e-4
            if not np.allclose(got.astype(np.float64), want.astype(np.float64), atol=atol, rtol=rtol):
                worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
                return AcceptanceReport(
                    False,
                    f"golden case {case.name!r}: output {name!r} differs by up to {worst:.4g} "
                    f"(tolerance abs {atol:g}, rel {rtol:g})",
                    load_time_ms=load_ms,
                )
        feeds.append(feed)
    runs = int(request["runs"])
    for _ in range(int(request.get("warmup_runs", WARMUP_RUNS))):
        session.run(None, feeds[0])
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds[0])
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    added = _rss_bytes() - baseline
    return AcceptanceReport(
        passed=True,
        load_time_ms=load_ms,
        latency_p50_ms=_percentile(timings, 0.50),
        latency_p95_ms=_percentile(timings, 0.95),
        peak_rss_bytes=max(0, added),
        runs=runs,
        threads=threads,
    )


if __name__ == "__main__":
    print(json.dumps(asdict(_child(json.loads(sys.stdin.read())))))
