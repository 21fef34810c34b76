"""Variant selection vs fixed policies, on real evidence from three simulated device classes, in one run.

What it measures. A real control plane (``controlplane.server.start`` in a thread, SQLite in a temp
dir, ``benchmark_runs`` timed inferences per benchmark job) and three real agents (``edgefleet agent``
subprocesses), one per simulated device class:

- ``gateway``: 2 onnxruntime threads; objective most-accurate, with latency budgets;
- ``vehicle``: 1 thread pinned to CPU 0 (``--cpu-affinity 0``); objective fastest, with a memory budget;
- ``sensor``: 1 thread, an older CPU simulated (no AVX flags); objective smallest, with tight latency
  budgets.

Every committed build of ``fsdd-digits`` (speech-command: fp32, fp16, int8-dynamic, int8-static-qdq,
int8-static-qop) and ``snips-nlu-student`` (text-nlu: fp32, int8-dynamic) is published with a fresh
publisher key. The control plane gives each class's device a benchmark job per variant; once the
evidence matrix is complete (Admin.GetEvidence) the selector's choice for each (model, class) is asked
(Admin.ExplainSelection) and compared with two fixed policies: always fp32 and always int8-dynamic.

For each of chosen / fp32 / int8-dynamic the table shows the metric the class optimises and whether
the variant meets the class's hard constraints (the selector's own verdict: a variant in ``rejected``
does not, and its reason says why):

- most-accurate: mean of the quality metrics in the build manifests (``metrics.overall``) that every
  variant of the version reports (the selector's rule), higher is better; means closer than 0.001
  are equal (the selector's ``QUALITY_RESOLUTION``);
- fastest: p95 latency measured by the class's benchmark jobs, lower is better;
- smallest: bundle bytes, lower is better.

Goal (issue "choose the variant per device class from measured evidence"): the chosen variant is never
worse than either fixed policy on the class's objective while meeting its constraints. Verdict per row:
the chosen variant meets the constraints, and its metric is at least as good as that of each fixed
policy that meets them too (a fixed policy that violates a constraint is worse by definition). The
evidence matrix (p50/p95/load time/peak RSS per class and variant) is printed too: those are the
measured numbers the choices come from. The class budgets are set from measurements on this 2-core
machine so that they reject some variants; on other hardware other variants may be rejected.

Rerun (from the repository root; a few minutes)::

    .venv/bin/python scripts/bench/selection.py [--runs 100] [--json-out out.json] [--keep]

Exit status: 0 when the verdict holds on every row; 1 when it fails anywhere; 2 if the set-up failed
(e.g. evidence incomplete before --timeout). Processes and temp dirs are cleaned up, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchkit import BenchError, stop_process, tail  # noqa: E402

from controlplane.selection import QUALITY_RESOLUTION  # noqa: E402

FLEET = "bench"
RPC_TIMEOUT_SECONDS = 30.0
MODELS = {
    "fsdd-digits": sorted((ROOT / "models" / "speech-command").glob("fsdd-digits-*")),
    "snips-nlu-student": sorted((ROOT / "models" / "text-nlu").glob("snips-student-*")),
}
FIXED = ("fp32", "int8-dynamic")
OLD_CPU_FLAGS = ["sse4_1", "sse4_2"]  # an x86 CPU from before AVX

# The budgets (command-line defaults in main) come from measurements on the 2-core development machine,
# 1000 runs per job: fsdd-digits int8-dynamic has p50 1.8-5 ms, p95 6-22 ms, every other speech variant
# p95 < 1.1 ms, so 1.5 ms rejects int8-dynamic on gateway and sensor; snips-nlu-student fp32 adds
# 15.6-15.8 MiB of RSS, int8-dynamic 13.9-14.1 MiB, so vehicle's 15 MiB rejects fp32. The 5 ms text-nlu
# budgets leave room for the int8-dynamic p95 tail (0.2-2.3 ms) on a shared machine.
CLASSES = """\
classes:
  - name: gateway
    match: [{fact: "label:class", op: eq, value: gateway}]
    policy:
      latency_p95_ms: {text-nlu: GATEWAY_NLU_MS, speech-command: GATEWAY_SPEECH_MS}
      objective: most-accurate
      benchmark_sample_size: 1
  - name: vehicle
    match: [{fact: "label:class", op: eq, value: vehicle}]
    policy:
      model_memory_budget: VEHICLE_MEMORY
      objective: fastest
      benchmark_sample_size: 1
  - name: sensor
    match:
      - {fact: "label:class", op: eq, value: sensor}
      - {fact: cpu_flags, op: not_in, values: [avx, avx2, avx512f]}
    policy:
      latency_p95_ms: {text-nlu: SENSOR_NLU_MS, speech-command: SENSOR_SPEECH_MS}
      objective: smallest
      benchmark_sample_size: 1
"""


@dataclass(frozen=True)
class AgentSpec:
    device_id: str
    device_class: str
    args: tuple[str, ...]


def agent_specs() -> list[AgentSpec]:
    return [
        AgentSpec("gateway-1", "gateway", ("--labels", "class=gateway", "--onnx-threads", "2")),
        AgentSpec("vehicle-1", "vehicle", ("--labels", "class=vehicle", "--onnx-threads", "1", "--cpu-affinity", "0")),
        AgentSpec(
            "sensor-1",
            "sensor",
            (
                "--labels",
                "class=sensor",
                "--onnx-threads",
                "1",
                "--simulate-facts",
                json.dumps({"cpu_flags": OLD_CPU_FLAGS}),
            ),
        ),
    ]


@dataclass
class Cell:
    """One variant under one class's policy: its objective metric and whether it meets the constraints."""

    variant: str
    metric: float
    ok: bool
    why: str  # the selector's reason for rejecting it; '' when it complies


@dataclass
class Row:
    model: str
    device_class: str
    objective: str
    chosen: Cell | None
    fixed: dict[str, Cell]
    verdict: bool
    note: str


# --- processes --------------------------------------------------------------------------------------------


class Agent:
    """`edgefleet agent` in its own process group, so that its model processes stop with it."""

    def __init__(self, spec: AgentSpec, data_dir: Path, join: str, trust: Path) -> None:
        command = [sys.executable, "-m", "edgefleet", "agent", "--data-dir", str(data_dir), "--log-level", "info"]
        command += ["--join", join, "--device-id", spec.device_id, "--trust", str(trust), *spec.args]
        self.spec = spec
        self.log_path = data_dir.parent / f"{spec.device_id}.log"
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the group, wait up to grace seconds, then SIGKILL what is left."""
        stop_process(self.process, grace, group=True)
        self.log.close()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- control plane calls ----------------------------------------------------------------------------------


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.5, progress=None):
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if progress is not None and time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            print(f"  ... {progress()}", file=sys.stderr, flush=True)
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def admin_call(cp, method: str, request):
    stub, meta, channel = cp.admin()
    with channel:
        return getattr(stub, method)(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)


def evidence_cells(cp, name: str) -> list:
    from protos.edgefleet.v1 import admin_pb2

    cells = admin_call(cp, "GetEvidence", admin_pb2.GetEvidenceRequest(name=name, version=1)).cells
    return [c for c in cells if c.source == "benchmark"]


def missing_evidence(cp, variants: dict[str, list[str]], classes: list[str]) -> list[str]:
    missing = []
    for name, names in variants.items():
        have = {(c.device_class, c.variant) for c in evidence_cells(cp, name) if c.devices >= 1}
        missing += [f"{name}:{v}@{cls}" for cls in classes for v in names if (cls, v) not in have]
    return missing


# --- the comparison ---------------------------------------------------------------------------------------


def quality_means(builds) -> dict[str, float]:
    """Mean of the overall quality metrics every variant reports (what the selector ranks by)."""
    from protos.edgefleet.v1 import bundle_pb2

    overall = {b.ref.variant: dict(bundle_pb2.BundleManifest.FromString(b.manifest).metrics.overall) for b in builds}
    shared = set.intersection(*(set(m) for m in overall.values()))
    return {v: (math.fsum(m[k] for k in shared) / len(shared) if shared else math.nan) for v, m in overall.items()}


def objective_metric(objective: str, variant: str, quality: dict, p95: dict, size: dict) -> float:
    if objective == "most-accurate":
        return quality[variant]
    if objective == "fastest":
        return p95.get(variant, math.nan)
    return float(size[variant])


def better_or_equal(objective: str, a: float, b: float) -> bool:
    """Whether metric a is at least as good as b under objective (nan is never good)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    if objective == "most-accurate":  # the selector's rule: closer than QUALITY_RESOLUTION is equal
        return round(a / QUALITY_RESOLUTION) >= round(b / QUALITY_RESOLUTION)
    return a <= b


def compare(cp, name: str, device_class: str, objective: str, builds) -> Row:
    from protos.edgefleet.v1 import admin_pb2

    selection = admin_call(
        cp, "ExplainSelection", admin_pb2.ExplainSelectionRequest(name=name, version=1, device_class=device_class)
    )
    rejected = {c.variant: c.reason.split(": ", 1)[-1] for c in selection.rejected}
    quality = quality_means(builds)
    size = {b.ref.variant: b.total_bytes for b in builds}
    p95 = {c.variant: c.latency_p95_ms for c in evidence_cells(cp, name) if c.device_class == device_class}

    def cell(variant: str) -> Cell:
        metric = objective_metric(objective, variant, quality, p95, size)
        return Cell(variant, metric, variant not in rejected, rejected.get(variant, ""))

    fixed = {v: cell(v) for v in FIXED}
    if not selection.chosen_variant:
        return Row(name, device_class, objective, None, fixed, False, f"nothing chosen: {selection.summary}")
    chosen = cell(selection.chosen_variant)
    failures = []
    if not chosen.ok:
        failures.append(f"chosen {chosen.variant} violates: {chosen.why}")
    if selection.fallback_no_evidence:
        failures.append("chosen without evidence")
    for f in fixed.values():
        if f.ok and not better_or_equal(objective, chosen.metric, f.metric):
            failures.append(f"{f.variant} is better ({fmt_metric(objective, f.metric)})")
    return Row(name, device_class, objective, chosen, fixed, not failures, "; ".join(failures))


# --- output -----------------------------------------------------------------------------------------------


def fmt_metric(objective: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if objective == "most-accurate":
        return f"q {value:.6f}"
    if objective == "fastest":
        return f"p95 {value:.3f} ms"
    return f"{value / 1024:.1f} KiB"


def fmt_cell(objective: str, c: Cell | None, notes: list[str]) -> str:
    """'metric, ok', or 'metric, NO [n]' with the selector's reason added to notes as [n]."""
    if c is None:
        return "-"
    if c.ok:
        return f"{fmt_metric(objective, c.metric)}, ok"
    notes.append(f"{c.variant}: {c.why}")
    return f"{fmt_metric(objective, c.metric)}, NO [{len(notes)}]"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def evidence_table(cp, classes: list[str]) -> str:
    rows = []
    for name in MODELS:
        cells = sorted(evidence_cells(cp, name), key=lambda c: (classes.index(c.device_class), c.variant))
        for c in cells:
            rows.append(
                [
                    name,
                    c.device_class,
                    c.variant,
                    f"{c.latency_p50_ms:.3f}",
                    f"{c.latency_p95_ms:.3f}",
                    f"{c.load_time_ms:.1f}",
                    f"{c.peak_rss_bytes / 2**20:.1f}",
                    str(c.acceptance_failures),
                ]
            )
    headers = ["MODEL", "CLASS", "VARIANT", "P50 MS", "P95 MS", "LOAD MS", "RSS MIB", "ACC FAIL"]
    return table(headers, rows)


def comparison_table(rows: list[Row]) -> str:
    """The table, then [n] the selector's reason for each variant that does not meet its class's constraints."""
    notes: list[str] = []
    body = []
    for r in rows:
        first = len(notes)
        cells = [fmt_cell(r.objective, c, notes) for c in (r.chosen, r.fixed["fp32"], r.fixed["int8-dynamic"])]
        for i in range(first, len(notes)):
            notes[i] = f"[{i + 1}] {r.model} on {r.device_class}: {notes[i]}"
        verdict = "yes" if r.verdict else f"NO ({r.note})"
        body.append([r.model, r.device_class, r.objective, r.chosen.variant if r.chosen else "-", *cells, verdict])
    headers = ["MODEL", "CLASS", "OBJECTIVE", "CHOSEN", "CHOSEN METRIC", "ALWAYS FP32", "ALWAYS INT8-DYNAMIC"]
    return "\n".join([table([*headers, "CHOSEN NEVER WORSE"], body), *notes])


# --- main -------------------------------------------------------------------------------------------------


def run(opts: argparse.Namespace, tmp: Path) -> int:
    from controlplane.config import ServerConfig
    from protos.bundle_io import load_public_key, write_key_pair
    from protos.edgefleet.v1 import admin_pb2
    from tests.integration.harness import ServerThread

    started = time.monotonic()
    config = ServerConfig(
        data_dir=tmp / "server",
        listen_host="127.0.0.1",
        api_port=0,
        device_port=0,
        artifact_port=0,
        advertise_host="127.0.0.1",
        heartbeat_interval_seconds=2,
        last_seen_flush_seconds=0.5,
        shutdown_grace_seconds=1.0,
        benchmark_runs=opts.runs,
    )
    cp = ServerThread(config)
    agents: list[Agent] = []
    try:
        yaml_text = (
            CLASSES.replace("GATEWAY_NLU_MS", f"{opts.gateway_nlu_ms:g}")
            .replace("GATEWAY_SPEECH_MS", f"{opts.gateway_speech_ms:g}")
            .replace("VEHICLE_MEMORY", opts.vehicle_memory)
            .replace("SENSOR_NLU_MS", f"{opts.sensor_nlu_ms:g}")
            .replace("SENSOR_SPEECH_MS", f"{opts.sensor_speech_ms:g}")
        )
        applied = admin_call(cp, "ApplyClasses", admin_pb2.ApplyClassesRequest(yaml=yaml_text))
        policies = {c.name: c.policy for c in applied.classes}
        classes = [s.device_class for s in agent_specs()]

        key = tmp / "keys" / "bench.key"
        key.parent.mkdir()
        write_key_pair(key)
        admin_call(
            cp,
            "AddPublisherKey",
            admin_pb2.AddPublisherKeyRequest(public_key=load_public_key(Path(f"{key}.pub")), name="bench"),
        )

        for spec in agent_specs():  # a join string is single-use
            agents.append(Agent(spec, tmp / spec.device_id, cp.join_string(fleet=FLEET), Path(f"{key}.pub")))
        want = {s.device_id: s.device_class for s in agent_specs()}

        def placed() -> bool:
            for a in agents:
                if a.process.poll() is not None:
                    raise BenchError(f"agent {a.spec.device_id} exited {a.process.returncode}:\n{tail(a.log_path, 15)}")
            return {d.device_id: d.device_class for d in cp.devices() if d.online} == want

        wait_for(placed, timeout=90, what="three agents online in their classes")
        joined = time.monotonic()
        print(f"agents online in their classes after {joined - started:.1f} s", file=sys.stderr, flush=True)

        from controlplane.cli.models import push_bundle

        variants: dict[str, list[str]] = {}
        stub, meta, channel = cp.admin()
        with channel:
            for name, dirs in MODELS.items():
                if not dirs:
                    raise BenchError(f"no committed bundles for {name}")
                for bundle in dirs:
                    build = push_bundle(stub, meta, bundle, key).build
                    if build.ref.name != name:
                        raise BenchError(f"{bundle} publishes {build.ref.name}, expected {name}")
                    variants.setdefault(name, []).append(build.ref.variant)
        print(f"published {sum(map(len, variants.values()))} builds: {variants}", file=sys.stderr, flush=True)

        published = time.monotonic()
        wait_for(
            lambda: not missing_evidence(cp, variants, classes),
            timeout=opts.timeout,
            what="the complete evidence matrix",
            progress=lambda: (
                f"{time.monotonic() - published:.0f} s, waiting for "
                + ", ".join(missing_evidence(cp, variants, classes))
            ),
        )
        measured = time.monotonic()

        rows = []
        for name in MODELS:
            builds = list(admin_call(cp, "GetModel", admin_pb2.GetModelRequest(name=name, version=1)).builds)
            rows += [compare(cp, name, cls, policies[cls].objective, builds) for cls in classes]

        print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; {opts.runs} timed runs")
        print(f"per benchmark job; evidence complete {measured - published:.0f} s after publishing\n")
        print("class policies:")
        for cls in classes:
            p = policies[cls]
            budgets = ", ".join(f"{b.task} p95 <= {b.latency_p95_ms:g} ms" for b in p.latency_budgets) or "none"
            memory = f"{p.model_memory_budget_bytes / 2**20:g} MiB" if p.model_memory_budget_bytes else "none"
            print(f"  {cls:<8} objective {p.objective:<13} latency budgets: {budgets}; memory budget: {memory}")
        print("\nevidence matrix (benchmark jobs on each class's device):")
        print(evidence_table(cp, classes))
        print("\nchosen variant vs fixed policies (metric on the class's objective, and whether it meets the")
        print("class's hard constraints; q = mean of the quality metrics every variant reports):")
        print(comparison_table(rows))
        ok = all(r.verdict for r in rows)
        print(f"\nverdict: {'chosen never worse on every row' if ok else 'FAILED on some row'}")
        print(f"total {time.monotonic() - started:.0f} s")
        if opts.json_out:
            opts.json_out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
        return 0 if ok else 1
    finally:
        stopping = time.monotonic()
        for a in agents:  # all at once, so that their graceful shutdowns overlap
            a.terminate()
        for a in agents:
            a.stop(grace=max(0.0, 10 - (time.monotonic() - stopping)))
        cp.stop()
        print(f"stopped agents and control plane in {time.monotonic() - stopping:.1f} s", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="timed inferences per benchmark job (5-1000)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the evidence matrix")
    parser.add_argument("--gateway-nlu-ms", type=float, default=5.0, help="gateway's text-nlu p95 budget")
    parser.add_argument("--gateway-speech-ms", type=float, default=1.5, help="gateway's speech-command p95 budget")
    parser.add_argument("--vehicle-memory", default="15MiB", help="vehicle's model memory budget")
    parser.add_argument("--sensor-nlu-ms", type=float, default=5.0, help="sensor's text-nlu p95 budget")
    parser.add_argument("--sensor-speech-ms", type=float, default=1.5, help="sensor's speech-command p95 budget")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, databases) and print it")
    opts = parser.parse_args()

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # also when started with SIGINT ignored (a background job)
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-bench-selection-"))
    try:
        return run(opts, tmp)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for log in sorted(tmp.glob("*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            print(tail(log), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if opts.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
