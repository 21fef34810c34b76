"""Rollout-scale benchmark: a wave rollout and a regression's rollback across N simulated agents.

What runs. A control plane runs as its own process (``edgefleet server``, SQLite in a temp dir,
``--rollout-tick-seconds`` and ``--rollout-remeasure-seconds`` from the flags below). N agents
(default 500) run in a few worker processes, each built from the real agent code, wired as
``agent.daemon`` wires them, minus the local API and benchmark jobs:

- ``agent.enroll.enroll`` (one single-use join token each, pinning the publisher key) and
  ``agent.session.Session`` (heartbeats, desired state, status reports);
- ``agent.reconcile_shell.ReconcileShell`` with the real ``GatewaySource`` over the device's own
  mutual-TLS channel: every install really downloads the signed manifest and blobs, verifies
  the signature and hashes, stages the build, persists its state, and activates it in a real
  ``agent.serving.Serving`` (one onnxruntime session per agent, 1 thread; the tiny model of
  ``tests/bundles.py`` costs about 0.1 MiB and 0.3 ms of CPU to load);
- ``agent.telemetry.pipeline.TelemetryPipeline`` (minute aggregation, the SQLite outbox, send
  over the session, delete on ack), with ``partial_minutes`` on as the rollout tests run it.

What is simulated, and why (a 2-core machine cannot run 500 devices' worth of model work):

- On-device acceptance: the shell gets an ``acceptance=`` callable that returns a passing
  ``agent.acceptance.AcceptanceReport`` at once instead of starting an acceptance child process
  per install. This benchmark measures the control plane's orchestration, not acceptance.
- App traffic: every ``--traffic-interval`` seconds each agent records
  ``--requests-per-second`` x interval inferences into its real telemetry pipeline, for the build
  its ``Serving`` really has active. The latencies are synthetic: log-normal, median 2 ms
  (p95 about 3 ms), and ``--slow-factor`` (default 20) times that for the regression's version
  (v3). The v3 bundle is the same tiny model as v2 (its output differs in nothing that acceptance
  checks): 500 devices cannot run a truly slow model on 2 cores, so "v3 is slow" exists only in
  the numbers its devices report. The control plane's side -- ingesting the minutes, storing
  them, reading the canary and control cohorts (``Store.cohort``) and judging them
  (``controlplane.gates``) -- is all real.
- The agents' data directories live under ``/dev/shm`` when it exists (``--agent-dir``): 500
  devices' fsyncs (outbox, reconcile state, active pointer) on one shared disk would measure that
  disk, not the control plane. The server's data directory is on the normal temp dir.

The run:

1. Set-up: the server starts; a publisher key is registered; v1 (y = 2x + 1), v2 (3x + 1) and v3
   (3x + 1, reported slow) of model "tiny" are published; N agents join and open their sessions;
   v1 is deployed to the whole fleet (``Admin.Deploy`` with ``fleet``) and the benchmark waits
   until ``ListDevices`` shows every device online with tiny v1 active.
2. Rollout of v2 (good): waves ``--waves`` (default 1,10,50,100), bake 0, gates with
   ``min_requests`` = ``--min-requests`` and ``max_latency_p95_ratio`` 3. ``GetRollout`` is polled
   every ``--poll-seconds``. Per wave: when it started (the previous wave's "advance" decision, or
   the StartRollout call), when all its devices were installed (first poll that saw it), when
   its gate advanced (the decision's ``at``), and the number of "wait" verdicts before that.
   Total: StartRollout to the rollout's ``updated_at`` when completed. Control-plane CPU
   (utime+stime from /proc, all threads) over the rollout and its RSS (sampled every poll).
3. Regression: rollout of v3 with the same waves and gates. Times, all epoch seconds on this one
   machine: the first v3 activation on a device (agent side), the first bad minute recorded, the
   first telemetry batch with bad v3 minutes sent by a device, and the first such batch acked
   by the server (an ack is sent once the batch is stored, so "reached the server" lies between
   sent and acked); the rollback decision (the GateDecision with verdict rollback, its ``at``);
   the rollout's ``rolled_back`` (every touched device reported its previous build active), and
   the agent-side moment the last touched device left v3. The fleet was on v2 when v3 started,
   so "previous build" is v2, not v1.

Telemetry load: each agent flushes a batch every ``--telemetry-flush-seconds`` (default 5; the
real agent's default is 10). Before the rollout controller wrote its state once per tick (it wrote
the whole state once per device report, so a wave of N devices cost N writes of N records), a run
at 2 s (250 batches/s) took 374 s for the v2 rollout in one run and did not finish within 600 s in
another; with one write per tick the same run completes v2 in about 46 s (docs/PERFORMANCE.md).

Printed: a table on stdout, then one JSON line (also written to ``--json-out``). Progress goes to
stderr. The machine is small and shared (the server, the agent workers and whatever else runs
compete for the same cores), so the times are what this machine did, not a capacity claim.

Rerun (from the repository root):

    .venv/bin/python scripts/bench/rollout.py               # 500 agents
    .venv/bin/python scripts/bench/rollout.py --quick       # 50 agents, smoke run
    .venv/bin/python scripts/bench/rollout.py --agents 1000 --workers 6 --json-out out.json

Exit status: 0 when the v2 rollout completed, the v3 rollout rolled back and every agent ended on
v2; 1 when a rollout ended otherwise (or not in time); 2 if the set-up failed; 130 on Ctrl-C.
Processes and temp dirs are cleaned up on every exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import (
    REPO_ROOT,
    STOP_TIMEOUT_SECONDS,
    BenchError,
    ServerProcess,
    WarningCounter,
    WorkerPool,
    answer_snapshots,
    cpu_model,
    cpu_seconds,
    interrupt_on_sigterm,
    log_lines,
    mib,
    print_result_line,
    print_rows,
    rss_bytes,
    say,
    split,
    start_server,
    stop_server,
    wait_or_cancel,
)

sys.path.insert(0, str(REPO_ROOT))  # tests.bundles: the tiny ONNX bundles

FLEET = "bench"
MODEL = "tiny"
GOOD, BAD, BASE = 2, 3, 1  # versions: v2 rolls out cleanly, v3 reports slow minutes, v1 is the starting point
TERMINAL = ("completed", "aborted", "rolled_back", "failed")
WORKER_READY_TIMEOUT_SECONDS = 60.0
RPC_TIMEOUT_SECONDS = 30.0
WORKER_REPLY_TIMEOUT_SECONDS = 30.0
LATENCY_MEDIAN_MS = 2.0
LATENCY_SIGMA = 0.25  # log-normal: p95 = median * e^(1.645 sigma), about 1.5x the median
STEPS = ("desired", "download_started", "downloaded", "staged", "activated")
"""Install steps timed on each agent: the desired state arrives, then the shell's lifecycle events."""


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


# --- worker process: N/workers simulated agents on one asyncio loop ------------------------


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    join_strings: tuple[str, ...]
    first_agent: int
    data_root: str
    heartbeat_seconds: float
    enroll_concurrency: int
    open_deadline_seconds: float
    telemetry_flush_seconds: float
    traffic_interval_seconds: float
    requests_per_second: float
    slow_versions: tuple[int, ...]
    slow_factor: float
    threads: int


def passing_acceptance(model_dir, manifest, **_: object):
    """Stands in for ``agent.acceptance.run_acceptance``: passes at once, starts no child process."""
    from agent.acceptance import AcceptanceReport

    return AcceptanceReport(passed=True, load_time_ms=0.3, latency_p50_ms=0.02, latency_p95_ms=0.03, runs=1, threads=1)


@dataclass
class SimAgent:
    """One simulated device: the real session, reconcile shell, serving and telemetry pipeline."""

    device_id: str
    session: object
    shell: object
    serving: object
    telemetry: object
    channel: object
    stop: asyncio.Event
    tasks: list = field(default_factory=list)
    active_version: int = 0
    first_active: dict[int, float] = field(default_factory=dict)  # version -> first activation (epoch)
    steps: dict[int, dict[str, float]] = field(default_factory=dict)  # version -> step -> first time (epoch)
    download_starts: Counter = field(default_factory=Counter)  # version -> DOWNLOAD_STARTED events
    was_slow: bool = False
    left_slow_at: float | None = None
    first_bad_recorded: float | None = None
    first_bad_sent: float | None = None
    bad_batch: tuple[str, int] | None = None
    first_bad_acked: float | None = None


async def _worker(
    spec: WorkerSpec, conn: multiprocessing.connection.Connection, inbox: asyncio.Queue, counter: WarningCounter
) -> None:
    """A worker process's simulated agents (run by benchkit.worker_entry): ready, then on "go" enroll,
    open their sessions and serve traffic (enrolled, open), then answer "snapshot" until "stop" (stopped)."""
    from agent.channel import device_channel
    from agent.daemon import trusted_keys
    from agent.enroll import enroll
    from agent.facts import collect_facts
    from agent.reconcile_shell import GatewaySource, ReconcileShell
    from agent.reconcile_state import InvalidDesiredState, status_report
    from agent.serving import Serving
    from agent.session import Session, SessionEnded
    from agent.telemetry.pipeline import TelemetryPipeline
    from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc, common_pb2
    from protos.join import parse_join_string

    # asyncio.to_thread's default pool (cpu + 4 threads) is one device's worth; this process is many.
    asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=spec.threads))

    data_root = Path(spec.data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    # Real facts, collected once and shared: collecting them per agent would measure /proc reads.
    facts = await asyncio.to_thread(collect_facts, data_dir=data_root, labels={"bench": "rollout"}, onnx_threads=1)
    conn.send(("ready", spec.index))
    command = await inbox.get()
    if command[0] != "go":
        return

    agents: list[SimAgent] = []
    enroll_errors: list[str] = []
    fatal: list[str] = []
    semaphore = asyncio.Semaphore(spec.enroll_concurrency)
    slow = set(spec.slow_versions)

    def build(identity, data_dir: Path) -> SimAgent:
        holder: dict[str, SimAgent] = {}

        def on_desired(message: agent_pb2.DesiredState) -> None:
            now = time.time()
            for model in message.models:
                if model.model.name == MODEL:
                    holder["a"].steps.setdefault(model.model.version, {}).setdefault("desired", now)
            try:
                holder["a"].shell.submit_desired(message)
            except InvalidDesiredState as exc:
                logging.getLogger("bench").warning("desired state refused: %s", exc)

        def on_message(message: agent_pb2.ControlMessage) -> None:
            if message.WhichOneof("body") == "telemetry_ack":
                a = holder["a"]
                a.telemetry.on_ack(message.telemetry_ack)
                ack = message.telemetry_ack
                if a.first_bad_acked is None and a.bad_batch == (ack.boot_id, ack.sequence):
                    a.first_bad_acked = time.time()

        def on_connected() -> None:
            a = holder["a"]
            a.telemetry.on_connected()
            a.session.send(agent_pb2.AgentMessage(status=status_report(a.shell.state)))

        def report(message: agent_pb2.StatusReport) -> None:
            a = holder["a"]
            a.session.send(agent_pb2.AgentMessage(status=message))
            version = next((m.model.version for m in message.active if m.model.name == MODEL), 0)
            if version != a.active_version:
                now = time.time()
                a.first_active.setdefault(version, now)
                if a.active_version in slow:
                    a.left_slow_at = now
                a.was_slow = a.was_slow or version in slow
                a.active_version = version

        def emit(event: common_pb2.LifecycleEvent) -> None:
            a = holder["a"]
            a.telemetry.emit(event)
            kind = common_pb2.LifecycleEvent.Kind.Name(event.kind).lower()
            if event.model.name == MODEL and kind in STEPS:
                a.steps.setdefault(event.model.version, {}).setdefault(kind, time.time())
                if kind == "download_started":
                    a.download_starts[event.model.version] += 1

        def send_telemetry(message: agent_pb2.AgentMessage) -> bool:
            a = holder["a"]
            sent = a.session.send(message)
            batch = message.telemetry
            if sent and a.bad_batch is None and any(m.model.version in slow and m.requests for m in batch.minutes):
                a.first_bad_sent = time.time()
                a.bad_batch = (batch.boot_id, batch.sequence)
            return sent

        session = Session(
            identity, facts=lambda: facts, heartbeat_interval_seconds=spec.heartbeat_seconds,
            on_desired=on_desired, on_message=on_message, on_connected=on_connected,
        )  # fmt: skip
        telemetry = TelemetryPipeline(
            data_dir=data_dir, device_id=identity.device_id, boot_id=session.boot_id, send=send_telemetry,
            flush_seconds=spec.telemetry_flush_seconds, partial_minutes=True,
        )  # fmt: skip
        channel = device_channel(identity)
        serving = Serving(data_dir, threads=1)
        shell = ReconcileShell(
            data_dir=data_dir,
            facts=lambda: facts,
            trusted_keys=trusted_keys(_NoTrustConfig(), identity),
            source=GatewaySource(agent_pb2_grpc.AgentGatewayStub(channel), timeout_seconds=RPC_TIMEOUT_SECONDS),
            serving=serving,
            acceptance=passing_acceptance,
            report=report,
            emit=emit,
        )
        agent = SimAgent(identity.device_id, session, shell, serving, telemetry, channel, asyncio.Event())
        holder["a"] = agent
        return agent

    async def run_session(agent: SimAgent) -> None:
        try:
            await agent.session.run()
        except SessionEnded as exc:
            fatal.append(f"{agent.device_id}: {exc}")

    async def join(offset: int, join_string: str) -> None:
        device_id = f"bench-{spec.first_agent + offset:04d}"
        data_dir = data_root / device_id
        async with semaphore:
            try:
                identity = await enroll(
                    parse_join_string(join_string), data_dir=data_dir, device_id=device_id, facts=facts,
                    timeout_seconds=RPC_TIMEOUT_SECONDS,
                )  # fmt: skip
            except Exception as exc:
                enroll_errors.append(f"{device_id}: {type(exc).__name__}: {exc}")
                return
        agent = build(identity, data_dir)
        agents.append(agent)
        agent.tasks = [
            asyncio.create_task(run_session(agent)),
            asyncio.create_task(agent.shell.run(agent.stop)),
            asyncio.create_task(agent.telemetry.run(agent.stop)),
        ]

    await asyncio.gather(*(join(i, js) for i, js in enumerate(spec.join_strings)))
    conn.send(("enrolled", spec.index, time.monotonic(), len(agents), enroll_errors[:5], len(enroll_errors)))

    deadline = time.monotonic() + spec.open_deadline_seconds
    while time.monotonic() < deadline and any(a.session.state.welcomed < 1 for a in agents):
        await asyncio.sleep(0.05)
    conn.send(("open", spec.index, time.monotonic(), sum(1 for a in agents if a.session.state.welcomed >= 1)))

    async def traffic() -> None:
        """The apps: every interval, each agent's active build serves requests_per_second x interval requests."""
        rng = random.Random(spec.index)
        per_tick = max(1, round(spec.requests_per_second * spec.traffic_interval_seconds))
        mu = math.log(LATENCY_MEDIAN_MS)
        while True:
            await asyncio.sleep(spec.traffic_interval_seconds)
            now = time.time()
            for agent in agents:
                for loaded in agent.serving.active():
                    bad = loaded.ref.version in slow
                    factor = spec.slow_factor if bad else 1.0
                    for _ in range(per_tick):
                        latency = rng.lognormvariate(mu, LATENCY_SIGMA) * factor
                        agent.telemetry.record(loaded.ref, loaded.task, latency, True, None, 1.0)
                    if bad and agent.first_bad_recorded is None:
                        agent.first_bad_recorded = now

    traffic_task = asyncio.create_task(traffic())

    def earliest(values) -> float | None:
        values = [v for v in values if v is not None]
        return min(values) if values else None

    def latest(values) -> float | None:
        values = [v for v in values if v is not None]
        return max(values) if values else None

    def snapshot() -> dict:
        versions = sorted({v for a in agents for v in a.first_active})
        touched = [a for a in agents if a.was_slow]
        failures = sorted({a.shell.state.failure_reason for a in agents if a.shell.state.failure_reason})
        return {
            "t": time.time(),
            "agents": len(agents),
            "serving": dict(Counter(str(a.active_version) for a in agents)),
            "phases": dict(Counter(a.shell.state.phase.name for a in agents)),
            "failure_samples": failures[:3],
            "first_active": {str(v): earliest(a.first_active.get(v) for a in agents) for v in versions},
            "last_active": {str(v): latest(a.first_active.get(v) for a in agents) for v in versions},
            "slow_touched": len(touched),
            "slow_still": sum(1 for a in touched if a.active_version in slow),
            "left_slow_last": latest(a.left_slow_at for a in touched),
            "first_bad_recorded": earliest(a.first_bad_recorded for a in agents),
            "first_bad_sent": earliest(a.first_bad_sent for a in agents),
            "first_bad_acked": earliest(a.first_bad_acked for a in agents),
            "activations": {a.device_id: {str(v): t for v, t in a.first_active.items()} for a in agents},
            "steps": {a.device_id: {str(v): dict(t) for v, t in a.steps.items()} for a in agents},
            "download_starts": dict(
                sum((Counter({str(v): n for v, n in a.download_starts.items()}) for a in agents), Counter())
            ),
            "connected": sum(1 for a in agents if a.session.state.connected),
            "reconnects": sum(max(0, a.session.state.welcomed - 1) for a in agents),
            "fatal": len(fatal),
            "fatal_samples": fatal[:3],
            "warnings": counter.count,
            "warning_samples": list(counter.samples),
            "cpu_seconds": cpu_seconds(),
            "rss_bytes": rss_bytes(),
        }

    await answer_snapshots(conn, inbox, spec.index, snapshot)
    traffic_task.cancel()
    for agent in agents:
        agent.stop.set()
        agent.session.stop()
    stuck = await wait_or_cancel([t for a in agents for t in a.tasks])
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.channel.close()
        with contextlib.suppress(Exception):
            agent.telemetry.close()
    final = snapshot()
    final["stuck_on_stop"] = len(stuck)
    conn.send(("stopped", spec.index, final))


class _NoTrustConfig:
    """What ``agent.daemon.trusted_keys`` reads of an AgentConfig: no --trust files; the join pins the key."""

    trusted_publisher_key_files: tuple[Path, ...] = ()


# --- the operator API ---------------------------------------------------------------


class Operator:
    """The operator's side: one admin channel to the server for the whole run. Raises BenchError."""

    def __init__(self, server: ServerProcess, stack: contextlib.ExitStack) -> None:
        from controlplane.cli.connection import Connection, admin

        connection = Connection(
            server=f"127.0.0.1:{server.api_port}",
            token=(server.data_dir / "admin.token").read_text().strip(),
            ca_pem=(server.data_dir / "ca.crt").read_bytes(),
        )
        self.stub, self.metadata = stack.enter_context(admin(connection))

    def call(self, method: str, request, timeout: float = RPC_TIMEOUT_SECONDS):
        import grpc

        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise BenchError(f"{method} failed: {exc.code().name}: {exc.details()}") from exc

    def publish(self, tmp: Path) -> str:
        """Register a publisher key and publish v1, v2, v3 of the tiny model; returns the key id."""
        from controlplane.cli.models import push_bundle
        from protos.bundle_io import load_public_key, write_key_pair
        from protos.edgefleet.v1 import admin_pb2
        from tests.bundles import make_bundle_dir

        key = tmp / "keys" / "release.key"
        key.parent.mkdir(parents=True)
        key_id = write_key_pair(key)
        public = load_public_key(Path(f"{key}.pub"))
        self.call("AddPublisherKey", admin_pb2.AddPublisherKeyRequest(public_key=public, name="release"))
        for version, scale in ((BASE, 2.0), (GOOD, 3.0), (BAD, 3.0)):
            bundle = make_bundle_dir(tmp / "bundles", MODEL, version, "fp32", scale=scale)
            try:
                push_bundle(self.stub, self.metadata, bundle, key)
            except Exception as exc:
                raise BenchError(f"publishing {MODEL} v{version} failed: {exc}") from exc
        return key_id

    def join_tokens(self, count: int, key_id: str) -> list[str]:
        from protos.edgefleet.v1 import admin_pb2

        request = admin_pb2.CreateJoinTokenRequest(fleet=FLEET, ttl_seconds=3600, publisher_key_ids=[key_id])
        return [self.call("CreateJoinToken", request).join_string for _ in range(count)]

    def devices(self) -> list:
        from protos.edgefleet.v1 import admin_pb2

        return list(self.call("ListDevices", admin_pb2.ListDevicesRequest(fleet=FLEET, page_size=5000)).devices)

    def deploy(self, version: int):
        from protos.edgefleet.v1 import admin_pb2

        return self.call("Deploy", admin_pb2.DeployRequest(name=MODEL, version=version, variant="fp32", fleet=FLEET))

    def start_rollout(self, version: int, args: argparse.Namespace):
        from protos.edgefleet.v1 import admin_pb2

        gates = admin_pb2.GateThresholds(min_requests=args.min_requests, max_latency_p95_ratio=3.0)
        request = admin_pb2.StartRolloutRequest(
            name=MODEL, version=version, fleet=FLEET, waves_percent=args.waves, bake_seconds=0, gates=gates
        )
        return self.call("StartRollout", request)

    def rollout(self, rollout_id: str):
        from protos.edgefleet.v1 import admin_pb2

        return self.call("GetRollout", admin_pb2.GetRolloutRequest(rollout_id=rollout_id))


def active_version(device) -> int:
    return next((m.model.version for m in device.active if m.model.name == MODEL), 0)


def wait_fleet(
    operator: Operator, count: int, version: int, timeout: float, say: Callable[[str], None], what: str
) -> float:
    """Wait until ListDevices shows ``count`` devices online with ``version`` active; returns the epoch then."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        devices = operator.devices()
        on = sum(1 for d in devices if d.online and active_version(d) == version)
        if on == count and len(devices) == count:
            return time.time()
        seen = Counter(active_version(d) for d in devices)
        status = f"{what}: {on}/{count} online on v{version} (active versions {dict(sorted(seen.items()))})"
        if status != last:
            say(status)
            last = status
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not every device reported v{version} within {timeout:.0f} s: {status}")
        time.sleep(1.0)


# --- the parent: orchestrate, measure, report ------------------------------------------


class Workers(WorkerPool):
    """The worker processes and their pipes; every wait has a deadline."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        super().__init__(_worker, specs, daemon=True, warning_chars=300)

    def snapshot(self) -> dict:
        """The workers' snapshots merged into one."""
        self.send_all(("snapshot",))
        return merge([reply[2] for reply in self.collect("snapshot", WORKER_REPLY_TIMEOUT_SECONDS)])

    def stop(self) -> dict:
        self.send_all(("stop",))
        replies = self.collect("stopped", STOP_TIMEOUT_SECONDS + WORKER_REPLY_TIMEOUT_SECONDS)
        merged = merge([reply[2] for reply in replies])
        merged["stuck_on_stop"] = sum(reply[2]["stuck_on_stop"] for reply in replies)
        return merged


def merge(snapshots: list[dict]) -> dict:
    """Worker snapshots as one: counts summed, earliest/latest times kept, samples pooled."""

    def pick(key: str, choose) -> float | None:
        values = [s[key] for s in snapshots if s[key] is not None]
        return choose(values) if values else None

    def per_version(key: str, choose) -> dict[str, float]:
        versions = {v for s in snapshots for v in s[key]}
        return {v: choose(s[key][v] for s in snapshots if s[key].get(v) is not None) for v in sorted(versions)}

    counters = {key: sum((Counter(s[key]) for s in snapshots), Counter()) for key in ("serving", "phases")}
    return {
        "agents": sum(s["agents"] for s in snapshots),
        "serving": dict(sorted(counters["serving"].items())),
        "phases": dict(sorted(counters["phases"].items())),
        "failure_samples": sorted({f for s in snapshots for f in s["failure_samples"]})[:5],
        "first_active": per_version("first_active", min),
        "last_active": per_version("last_active", max),
        "slow_touched": sum(s["slow_touched"] for s in snapshots),
        "slow_still": sum(s["slow_still"] for s in snapshots),
        "left_slow_last": pick("left_slow_last", max),
        "first_bad_recorded": pick("first_bad_recorded", min),
        "first_bad_sent": pick("first_bad_sent", min),
        "first_bad_acked": pick("first_bad_acked", min),
        "activations": {k: v for s in snapshots for k, v in s["activations"].items()},
        "steps": {k: v for s in snapshots for k, v in s["steps"].items()},
        "download_starts": dict(sum((Counter(s["download_starts"]) for s in snapshots), Counter())),
        "connected": sum(s["connected"] for s in snapshots),
        "reconnects": sum(s["reconnects"] for s in snapshots),
        "fatal": sum(s["fatal"] for s in snapshots),
        "fatal_samples": [f for s in snapshots for f in s["fatal_samples"]][:5],
        "warnings": sum(s["warnings"] for s in snapshots),
        "warning_samples": [w for s in snapshots for w in s["warning_samples"]][:5],
        "cpu_seconds": sum(s["cpu_seconds"] for s in snapshots),
        "rss_bytes": [s["rss_bytes"] for s in snapshots],
    }


def _epoch(stamp) -> float | None:
    return stamp.ToNanoseconds() / 1e9 if stamp.seconds or stamp.nanos else None


def run_rollout(
    operator: Operator,
    server: ServerProcess,
    workers: Workers,
    version: int,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> dict:
    """Start a rollout of ``version``, poll it to its end; per-wave times, decisions, server CPU and RSS.

    A wave's devices are ``controlplane.rollout.plan_waves`` of the fleet (what the server plans); when
    they were installed is when the last of them activated the build, by the agents' clocks.
    """
    from controlplane.rollout import plan_waves

    classes = {d.device_id: d.device_class or "default" for d in operator.devices()}
    cpu_before = cpu_seconds(server.pid)
    rss_before = rss_bytes(server.pid)
    started_at = time.time()
    started = operator.start_rollout(version, args)
    rollout_id = started.rollout_id
    say(f"rollout {rollout_id} of v{version} started: {started.state}, waves {list(started.waves_percent)}")
    rss_peak = rss_before
    polls = 0
    deadline = time.monotonic() + args.rollout_timeout
    last_line = ""
    while True:
        rollout = operator.rollout(rollout_id)
        now = time.time()
        polls += 1
        rss_peak = max(rss_peak, rss_bytes(server.pid))
        line = f"  v{version}: {rollout.state}, wave {rollout.current_wave + 1}/{len(rollout.waves_percent)}"
        if line != last_line:
            say(f"{line} (+{now - started_at:.1f} s)")
            last_line = line
        if rollout.state in TERMINAL:
            break
        if time.monotonic() > deadline:
            say(f"rollout {rollout_id} did not end within {args.rollout_timeout:.0f} s")
            break
        time.sleep(args.poll_seconds)
    cpu_after = cpu_seconds(server.pid)
    elapsed = time.time() - started_at
    rss_end = rss_bytes(server.pid)
    snap = workers.snapshot()
    activations, steps = snap["activations"], snap["steps"]
    plan = plan_waves(classes, list(rollout.waves_percent))
    ended_at = _epoch(rollout.updated_at) if rollout.state in TERMINAL else None
    decisions = [
        {
            "wave": d.wave, "verdict": d.verdict, "at": _epoch(d.at),
            "after_start_seconds": (_epoch(d.at) or started_at) - started_at,
            "reasons": list(d.reasons)[:4],
        }
        for d in rollout.decisions
    ]  # fmt: skip
    waves = []
    wave_start = started_at
    for wave, percent in enumerate(rollout.waves_percent):
        targeted = sum(p.targeted for p in rollout.progress if p.wave == wave)
        updated = sum(p.updated for p in rollout.progress if p.wave == wave)
        mine = [d for d in decisions if d["wave"] == wave]
        final = next((d for d in mine if d["verdict"] != "wait"), None)
        times = [activations.get(device_id, {}).get(str(version)) for device_id in plan[wave]]
        installed = max(times) if times and None not in times else None
        first = min((t for t in times if t is not None), default=None)
        spread = {}
        for step in STEPS:
            at = sorted(
                t - wave_start
                for device_id in plan[wave]
                if (t := steps.get(device_id, {}).get(str(version), {}).get(step)) is not None
            )
            if at:
                spread[step] = {"p50": at[len(at) // 2], "max": at[-1], "devices": len(at)}
        entry = {
            "wave": wave + 1,
            "percent": percent,
            "devices": targeted,
            "updated": updated,
            "waits": sum(1 for d in mine if d["verdict"] == "wait"),
            "verdict": final["verdict"] if final else None,
            "start_seconds": wave_start - started_at,
            "first_active_seconds": first - wave_start if first is not None else None,
            "installed_seconds": installed - wave_start if installed is not None else None,
            "gate_seconds": final["at"] - installed if final and installed is not None else None,
            "steps_after_wave_start_seconds": spread,
            "wave_seconds": final["at"] - wave_start if final else None,
        }
        waves.append(entry)
        if final is None or final["verdict"] != "advance":
            break
        wave_start = final["at"]
    return {
        "rollout_id": rollout_id,
        "version": version,
        "state": rollout.state,
        "reason": rollout.reason,
        "started_at": started_at,
        "ended_at": ended_at,
        "total_seconds": ended_at - started_at if ended_at else None,
        "waves": waves,
        "decisions": decisions,
        "elapsed_seconds": elapsed,
        "server_cpu_seconds": cpu_after - cpu_before,
        "server_rss_before_bytes": rss_before,
        "server_rss_peak_bytes": rss_peak,
        "server_rss_end_bytes": rss_end,
        "polls": polls,
        "download_starts": snap["download_starts"].get(str(version), 0),
    }


def wait_agents(workers: Workers, version: int, count: int, timeout: float) -> tuple[dict, float | None]:
    """Poll the workers until all ``count`` agents serve ``version``; (last snapshot, epoch when seen or None)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = workers.snapshot()
        if snap["serving"].get(str(version), 0) == count:
            return snap, time.time()
        if time.monotonic() > deadline:
            return snap, None
        time.sleep(0.5)


def run(args: argparse.Namespace, say: Callable[[str], None]) -> dict:
    result: dict = {
        "machine": {
            "nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
            "load_average_at_start": load_average(),
        },
        "params": {
            "agents": args.agents, "workers": args.workers, "waves": args.waves, "bake_seconds": 0,
            "min_requests": args.min_requests, "max_latency_p95_ratio": 3.0,
            "heartbeat_seconds": args.heartbeat_seconds, "rollout_tick_seconds": args.rollout_tick_seconds,
            "rollout_remeasure_seconds": args.rollout_remeasure_seconds, "poll_seconds": args.poll_seconds,
            "telemetry_flush_seconds": args.telemetry_flush_seconds,
            "traffic_interval_seconds": args.traffic_interval, "requests_per_second": args.requests_per_second,
            "slow_factor": args.slow_factor, "agent_dir": str(args.agent_dir),
        },
    }  # fmt: skip
    t_begin = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-bench-rollout-")))
        agent_root = Path(tempfile.mkdtemp(prefix="edgefleet-bench-rollout-agents-", dir=args.agent_dir))
        stack.callback(shutil.rmtree, agent_root, ignore_errors=True)
        server = start_server(
            tmp,
            "--rollout-tick-seconds", str(args.rollout_tick_seconds),
            "--rollout-remeasure-seconds", str(args.rollout_remeasure_seconds),
            heartbeat_seconds=args.heartbeat_seconds,
            new_session=True,  # a terminal's ^C reaches this script only, which then stops the server gracefully
        )  # fmt: skip
        workers: Workers | None = None

        def shut_down() -> None:
            if workers is not None:
                workers.close()
            result["server_exit_code"] = stop_server(server)
            lines = log_lines(server.log_path)  # run at --log-level warning: each names a problem
            result["server_log"] = {"lines": len(lines), "samples": lines[:10]}

        stack.callback(shut_down)
        say(f"control plane pid {server.pid}: api {server.api_port}, devices {server.device_port}")
        operator = Operator(server, stack)
        key_id = operator.publish(tmp)
        join_strings = operator.join_tokens(args.agents, key_id)
        time.sleep(1.0)
        result["server_idle_rss_bytes"] = rss_bytes(server.pid)

        specs = [
            WorkerSpec(
                index=i, join_strings=chunk, first_agent=first, data_root=str(agent_root / f"w{i}"),
                heartbeat_seconds=float(args.heartbeat_seconds), enroll_concurrency=args.enroll_concurrency,
                open_deadline_seconds=args.join_timeout, telemetry_flush_seconds=args.telemetry_flush_seconds,
                traffic_interval_seconds=args.traffic_interval, requests_per_second=args.requests_per_second,
                slow_versions=(BAD,), slow_factor=args.slow_factor, threads=args.threads,
            )
            for i, (first, chunk) in enumerate(split(join_strings, args.workers))
        ]  # fmt: skip
        workers = Workers(specs)
        workers.collect("ready", WORKER_READY_TIMEOUT_SECONDS)
        say(f"{args.workers} workers ready; {args.agents} agents joining")

        # 1. set-up: join, open, v1 everywhere
        cpu_go, t_go = cpu_seconds(server.pid), time.monotonic()
        workers.send_all(("go",))
        enrolled = workers.collect("enrolled", args.join_timeout + WORKER_REPLY_TIMEOUT_SECONDS)
        opened = workers.collect("open", args.join_timeout + WORKER_REPLY_TIMEOUT_SECONDS)
        setup = {
            "enrolled": sum(r[3] for r in enrolled),
            "enroll_errors": sum(r[5] for r in enrolled),
            "enroll_error_samples": [e for r in enrolled for e in r[4]][:5],
            "sessions_open": sum(r[3] for r in opened),
            "all_open_seconds": max(r[2] for r in opened) - t_go,
        }
        result["setup"] = setup
        say(
            f"{setup['enrolled']} enrolled, {setup['sessions_open']} sessions open in {setup['all_open_seconds']:.1f} s"
        )
        if setup["enrolled"] != args.agents or setup["sessions_open"] != args.agents:
            raise BenchError(f"only {setup['enrolled']} enrolled and {setup['sessions_open']} open of {args.agents}")
        t_deploy = time.time()
        deployed = operator.deploy(BASE)
        setup["deploy_assignments"] = len(deployed.assignments)
        t_v1 = wait_fleet(operator, args.agents, BASE, args.rollout_timeout, say, "deploy v1")
        setup["deploy_v1_seconds"] = t_v1 - t_deploy
        setup["server_cpu_seconds"] = cpu_seconds(server.pid) - cpu_go
        setup["server_rss_bytes"] = rss_bytes(server.pid)
        say(f"every device on v1 {setup['deploy_v1_seconds']:.1f} s after Deploy; settling {args.settle:.0f} s")
        time.sleep(args.settle)  # traffic on v1 reaches the server: the first gate has a control cohort

        # 2. the good rollout
        good = run_rollout(operator, server, workers, GOOD, args, say)
        result["good"] = good
        snap, seen = wait_agents(workers, GOOD, args.agents, 60.0)
        good["agents_on_v2_seen_after_start_seconds"] = seen - good["started_at"] if seen else None
        good["agents_last_activation_after_start_seconds"] = (
            snap["last_active"][str(GOOD)] - good["started_at"] if str(GOOD) in snap["last_active"] else None
        )
        good["agents_serving"] = snap["serving"]
        if good["state"] == "completed":
            wait_fleet(operator, args.agents, GOOD, 60.0, say, "v2 everywhere")
            time.sleep(args.settle)

        # 3. the regression
        if good["state"] == "completed":
            bad = run_rollout(operator, server, workers, BAD, args, say)
            result["bad"] = bad
            snap, seen = wait_agents(workers, GOOD, args.agents, 120.0)
            rollback = next((d for d in bad["decisions"] if d["verdict"] == "rollback"), None)
            t0 = bad["started_at"]

            def since(value: float | None, origin: float | None = t0) -> float | None:
                return value - origin if value is not None and origin is not None else None

            first_sent, first_acked = snap["first_bad_sent"], snap["first_bad_acked"]
            decided = rollback["at"] if rollback else None
            bad["regression"] = {
                "first_v3_active_after_start_seconds": since(snap["first_active"].get(str(BAD))),
                "first_bad_recorded_after_start_seconds": since(snap["first_bad_recorded"]),
                "first_bad_batch_sent_after_start_seconds": since(first_sent),
                "first_bad_batch_acked_after_start_seconds": since(first_acked),
                "rollback_decision_after_start_seconds": since(decided),
                "rollback_decision_wave": rollback["wave"] + 1 if rollback else None,
                "rollback_reasons": rollback["reasons"] if rollback else [],
                "first_bad_sent_to_rollback_seconds": since(decided, first_sent),
                "first_bad_acked_to_rollback_seconds": since(decided, first_acked),
                "rollback_to_rolled_back_seconds": since(bad["ended_at"], decided),
                "rollback_to_agents_off_v3_seconds": since(snap["left_slow_last"], decided),
                "touched_devices": snap["slow_touched"],
                "still_on_v3": snap["slow_still"],
                "all_agents_on_v2_seen_after_start_seconds": since(seen),
                "agents_serving": snap["serving"],
            }

        final = workers.stop()
        final.pop("activations")
        final.pop("steps")
        result["agents"] = final
        result["server_end_rss_bytes"] = rss_bytes(server.pid)
    result["runtime_seconds"] = time.monotonic() - t_begin
    return result


# --- output ------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def rollout_rows(label: str, r: dict) -> list[tuple[str, str]]:
    rows = [
        (f"{label} outcome", f"{r['state']}" + (f" ({r['reason'][:150]})" if r["reason"] else "")),
        (f"{label} total", f"{_s(r['total_seconds'])} from StartRollout to {r['state']}"),
    ]
    for w in r["waves"]:
        rows.append(
            (
                f"{label} wave {w['wave']} ({w['percent']}%)",
                f"{w['devices']} devices: first active {_s(w['first_active_seconds'])}, "
                f"all {_s(w['installed_seconds'])}; gate {w['verdict'] or 'no verdict'} at {_s(w['wave_seconds'])} "
                f"({w['waits']} wait before)",
            )
        )
        steps = w["steps_after_wave_start_seconds"]
        rows.append(
            (
                f"{label} wave {w['wave']} steps p50/max",
                ", ".join(f"{k} {v['p50']:.1f}/{v['max']:.1f}" for k, v in steps.items()) or "n/a",
            )
        )
    window = r["elapsed_seconds"]
    rows += [
        (f"{label} downloads", f"{r['download_starts']} download starts (retries show as more than one per device)"),
        (f"{label} server CPU", f"{r['server_cpu_seconds']:.2f} s ({100 * r['server_cpu_seconds'] / window:.0f} % "
                                f"of one core over {window:.0f} s)"),
        (f"{label} server RSS", f"{mib(r['server_rss_before_bytes'])} before, {mib(r['server_rss_peak_bytes'])} "
                                f"peak, {mib(r['server_rss_end_bytes'])} after"),
    ]  # fmt: skip
    return rows


def print_table(result: dict) -> None:
    m, p, s = result["machine"], result["params"], result["setup"]
    rows = [
        ("machine", f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}, "
                    f"load {m['load_average_at_start']} at start"),
        ("agents / workers", f"{p['agents']} / {p['workers']}; heartbeat {p['heartbeat_seconds']} s, telemetry "
                             f"flush {p['telemetry_flush_seconds']} s, {p['requests_per_second']:g} req/s each"),
        ("rollout settings", f"waves {','.join(map(str, p['waves']))}, bake 0, min_requests {p['min_requests']}, "
                             f"p95 ratio max 3; tick {p['rollout_tick_seconds']} s, remeasure "
                             f"{p['rollout_remeasure_seconds']} s"),
        ("set-up", f"{s['sessions_open']} sessions open in {s['all_open_seconds']:.1f} s; Deploy v1 to all: "
                   f"{s['deploy_v1_seconds']:.1f} s; server CPU {s['server_cpu_seconds']:.1f} s"),
        ("server RSS", f"{mib(result['server_idle_rss_bytes'])} idle, {mib(s['server_rss_bytes'])} with the fleet "
                       f"on v1"),
    ]  # fmt: skip
    if "good" in result:
        rows += rollout_rows("v2", result["good"])
    if "bad" in result:
        rows += rollout_rows("v3", result["bad"])
        g = result["bad"]["regression"]
        rows += [
            ("v3 first bad minute", f"v3 active on a device {_s(g['first_v3_active_after_start_seconds'])}, "
                                    f"first bad minute recorded {_s(g['first_bad_recorded_after_start_seconds'])}, "
                                    f"its batch sent {_s(g['first_bad_batch_sent_after_start_seconds'])}, "
                                    f"acked {_s(g['first_bad_batch_acked_after_start_seconds'])}"),
            ("v3 bad minute -> rollback", f"{_s(g['first_bad_sent_to_rollback_seconds'])} from the first bad batch "
                                          f"sent ({_s(g['first_bad_acked_to_rollback_seconds'])} from its ack); "
                                          f"decided in wave {g['rollback_decision_wave']}"),
            ("v3 rollback -> reverted", f"{_s(g['rollback_to_rolled_back_seconds'])} until every touched device "
                                        f"({g['touched_devices']}) reported v2 (rolled_back); last agent left v3 "
                                        f"{_s(g['rollback_to_agents_off_v3_seconds'])} after the decision"),
        ]  # fmt: skip
        rows += [("v3 rollback reason", reason[:160]) for reason in g["rollback_reasons"][:2]]
    a = result["agents"]
    rows += [
        ("agents at end", f"serving {a['serving']}; phases {a['phases']}"),
        ("agent workers", f"CPU {a['cpu_seconds']:.1f} s in all; RSS " + ", ".join(mib(r) for r in a["rss_bytes"])),
        ("trouble", f"reconnects {a['reconnects']}, warnings {a['warnings']}, fatal {a['fatal']}, stuck on stop "
                    f"{a['stuck_on_stop']}; server log lines {result['server_log']['lines']} (at warning); "
                    f"server exit code {result['server_exit_code']}"),
        ("runtime", f"{result['runtime_seconds']:.1f} s"),
    ]  # fmt: skip
    samples = [
        ("enroll error", s["enroll_error_samples"]),
        ("agent failure", a["failure_samples"]),
        ("agent warning", a["warning_samples"]),
        ("agent fatal", a["fatal_samples"]),
        ("server log", result["server_log"]["samples"]),
    ]
    print_rows(rows, samples)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=500, help="number of agents (default 500)")
    parser.add_argument("--workers", type=int, default=4, help="agent worker processes (default 4)")
    parser.add_argument("--waves", type=lambda t: [int(x) for x in t.split(",")], default=[1, 10, 50, 100],
                        help="cumulative wave percentages (default 1,10,50,100)")  # fmt: skip
    parser.add_argument("--min-requests", type=int, default=20, help="gate min_requests (default 20)")
    parser.add_argument("--heartbeat-seconds", type=int, default=5, help="server heartbeat interval (default 5)")
    parser.add_argument("--rollout-tick-seconds", type=float, default=0.5, help="server flag (default 0.5)")
    parser.add_argument("--rollout-remeasure-seconds", type=float, default=1.0, help="server flag (default 1)")
    parser.add_argument("--telemetry-flush-seconds", type=float, default=5.0, help="agent flush (default 5)")
    parser.add_argument("--traffic-interval", type=float, default=1.0, help="app traffic tick, seconds (default 1)")
    parser.add_argument("--requests-per-second", type=float, default=5.0, help="per agent (default 5)")
    parser.add_argument("--slow-factor", type=float, default=20.0, help="v3's reported latency factor (default 20)")
    parser.add_argument("--poll-seconds", type=float, default=0.25, help="GetRollout poll interval (default 0.25)")
    parser.add_argument("--settle", type=float, default=5.0, help="pause before each rollout, seconds (default 5)")
    parser.add_argument("--enroll-concurrency", type=int, default=10, help="enrollments in flight per worker")
    parser.add_argument("--threads", type=int, default=16, help="blocking-work threads per worker (default 16)")
    parser.add_argument("--join-timeout", type=float, default=300.0, help="deadline for all to join and connect")
    parser.add_argument("--rollout-timeout", type=float, default=600.0, help="deadline for each rollout")
    parser.add_argument(
        "--agent-dir", type=Path, default=None, help="agents' data dirs (default /dev/shm if writable, else temp)"
    )
    parser.add_argument("--json-out", type=Path, help="also write the result JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 agents, 2 workers")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.workers = 50, 2
    if args.agents < 1 or args.workers < 1 or args.heartbeat_seconds < 1 or args.min_requests < 1:
        parser.error("--agents, --workers, --heartbeat-seconds and --min-requests must be >= 1")
    if not args.waves or args.waves[-1] != 100 or args.waves != sorted(set(args.waves)) or args.waves[0] < 1:
        parser.error("--waves must be strictly increasing percentages ending at 100")
    if args.agent_dir is None:
        shm = Path("/dev/shm")
        args.agent_dir = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    args.workers = min(args.workers, args.agents)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    try:
        result = run(args, say)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; processes stopped and temp dirs removed")
        return 130
    print_table(result)
    print_result_line(result, args.json_out)
    good = result.get("good", {})
    bad = result.get("bad", {})
    ok = (
        good.get("state") == "completed"
        and bad.get("state") == "rolled_back"
        and result["agents"]["serving"] == {str(GOOD): args.agents}
    )
    if not ok:
        say(f"unexpected outcome: v2 {good.get('state')}, v3 {bad.get('state')}; agents {result['agents']['serving']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
