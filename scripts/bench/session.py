"""Session-scale benchmark: N real agents join one real control plane and heartbeat.

What it measures. A control plane runs as its own process (``edgefleet server``,
SQLite in a temp dir). N agents (default 200), built from the real agent code
(``agent.enroll.enroll``, ``agent.session.Session``, facts from
``agent.facts.collect_facts``), run in a few worker processes. Each agent
enrolls with its own single-use join token (at most ``--enroll-concurrency``
enrollments in flight per worker), then opens its session and heartbeats every
``--heartbeat-seconds``. Once every session is open the steady window of
``--duration`` seconds starts. Printed, as a table on stdout and then one JSON
line (also written to ``--json-out``):

- join: seconds from "go" until all N enrollments finished, and until all N
  sessions got a Welcome (``session.state.welcomed >= 1``); per-enrollment
  latency p50/p95/max; control-plane CPU seconds spent in that phase.
- heartbeats/s in the steady window: heartbeats the agents wrote into open
  session streams (sum of ``session.state.heartbeats_sent``), divided by the
  window. The server keeps no counter it exposes, so this is counted on the
  agent side; the online check at the end confirms the server saw them.
  The ideal is N / heartbeat interval; the agent sleeps a full interval after
  each heartbeat, so a little under that is normal.
- control-plane CPU seconds per 1,000 heartbeats: utime+stime of the server
  process (all threads, /proc/<pid>/stat) over the window, divided by the
  heartbeats in it. This is everything the server did in the window
  (heartbeats, presence flushes, keepalives, TLS), charged to heartbeats.
- control-plane RSS (VmRSS) when idle before agents joined, and at the end.
- the online check: ``Admin.ListDevices`` for fleet "bench" must list all N
  devices online at the end of the window.
- the agent worker processes' own CPU (over the window) and RSS.
- trouble: session reconnects, agent warnings, server log warnings/errors.

The machine is small and shared: the server and the agent workers compete for
the same cores, so the numbers are an upper bound on per-heartbeat cost, not a
capacity claim. The machine's core count and CPU model are printed with them.

Rerun (from the repository root):

    .venv/bin/python scripts/bench/session.py                  # 200 agents, 60 s
    .venv/bin/python scripts/bench/session.py --quick          # 20 agents, 10 s smoke run
    .venv/bin/python scripts/bench/session.py --agents 500 --workers 4 --json-out out.json

Exit status is 0 when every agent joined, every session opened and all N
devices were listed online at the end; 1 otherwise; 2 if the set-up failed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchkit import (
    STOP_TIMEOUT_SECONDS,
    BenchError,
    ServerProcess,
    WarningCounter,
    WorkerPool,
    answer_snapshots,
    cpu_model,
    cpu_seconds,
    log_lines,
    mib,
    percentile,
    print_result_line,
    print_rows,
    rss_bytes,
    say,
    split,
    start_server,
    stop_server,
    wait_or_cancel,
)

FLEET = "bench"
WORKER_READY_TIMEOUT_SECONDS = 60.0
RPC_TIMEOUT_SECONDS = 15.0
WORKER_REPLY_TIMEOUT_SECONDS = 30.0


# --- worker process: N/workers agents on one asyncio loop ----------------------------


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    join_strings: tuple[str, ...]
    first_agent: int
    data_root: str
    heartbeat_seconds: float
    enroll_concurrency: int
    open_deadline_seconds: float


async def _worker(
    spec: WorkerSpec, conn: multiprocessing.connection.Connection, inbox: asyncio.Queue, counter: WarningCounter
) -> None:
    """A worker process's agents (run by benchkit.worker_entry): ready, then on "go" enroll and open
    their sessions (enrolled, open), then answer "snapshot" until "stop" (stopped)."""
    from agent.enroll import enroll
    from agent.facts import collect_facts
    from agent.session import Session, SessionEnded
    from protos.join import parse_join_string

    data_root = Path(spec.data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    # Real facts, collected once and shared: collecting them per agent would measure /proc reads.
    facts = await asyncio.to_thread(collect_facts, data_dir=data_root, labels={"bench": "session"})
    conn.send(("ready", spec.index))
    command = await inbox.get()
    if command[0] != "go":
        return

    sessions: list[Session] = []
    runs: list[asyncio.Task] = []
    enroll_seconds: list[float] = []
    errors: list[str] = []
    fatal: list[str] = []
    semaphore = asyncio.Semaphore(spec.enroll_concurrency)

    async def run_session(session: Session) -> None:
        try:
            await session.run()
        except SessionEnded as exc:
            fatal.append(f"{session.identity.device_id}: {exc}")

    async def join(offset: int, join_string: str) -> None:
        device_id = f"bench-{spec.first_agent + offset:04d}"
        async with semaphore:
            started = time.monotonic()
            try:
                identity = await enroll(
                    parse_join_string(join_string),
                    data_dir=data_root / device_id,
                    device_id=device_id,
                    facts=facts,
                    timeout_seconds=RPC_TIMEOUT_SECONDS,
                )
            except Exception as exc:
                errors.append(f"{device_id}: {type(exc).__name__}: {exc}")
                return
            enroll_seconds.append(time.monotonic() - started)
        session = Session(identity, facts=lambda: facts, heartbeat_interval_seconds=spec.heartbeat_seconds)
        sessions.append(session)
        runs.append(asyncio.create_task(run_session(session)))

    await asyncio.gather(*(join(i, js) for i, js in enumerate(spec.join_strings)))
    conn.send(("enrolled", spec.index, time.monotonic(), len(sessions), errors[:5], len(errors), enroll_seconds))

    deadline = time.monotonic() + spec.open_deadline_seconds
    while time.monotonic() < deadline and any(s.state.welcomed < 1 for s in sessions):
        await asyncio.sleep(0.02)
    opened = sum(1 for s in sessions if s.state.welcomed >= 1)
    conn.send(("open", spec.index, time.monotonic(), opened))

    def snapshot() -> dict:
        return {
            "t": time.monotonic(),
            "heartbeats": sum(s.state.heartbeats_sent for s in sessions),
            "connected": sum(1 for s in sessions if s.state.connected),
            "reconnects": sum(max(0, s.state.welcomed - 1) for s in sessions),
            "fatal": len(fatal),
            "fatal_samples": fatal[:3],
            "last_errors": sorted({s.state.last_error for s in sessions if s.state.last_error})[:5],
            "warnings": counter.count,
            "warning_samples": list(counter.samples),
            "cpu_seconds": cpu_seconds(),
            "rss_bytes": rss_bytes(),
        }

    await answer_snapshots(conn, inbox, spec.index, snapshot)
    for session in sessions:
        session.stop()
    stuck = await wait_or_cancel(runs)
    final = snapshot()
    final["stuck_on_stop"] = len(stuck)
    conn.send(("stopped", spec.index, final))


# --- the operator API ---------------------------------------------------------------


def admin_connection(server: ServerProcess):
    from controlplane.cli.connection import Connection

    return Connection(
        server=f"127.0.0.1:{server.api_port}",
        token=(server.data_dir / "admin.token").read_text().strip(),
        ca_pem=(server.data_dir / "ca.crt").read_bytes(),
    )


def create_join_tokens(server: ServerProcess, count: int) -> list[str]:
    """One single-use join token per agent. Raises BenchError."""
    import grpc

    from controlplane.cli.connection import admin
    from protos.edgefleet.v1 import admin_pb2

    try:
        with admin(admin_connection(server)) as (stub, metadata):
            return [
                stub.CreateJoinToken(
                    admin_pb2.CreateJoinTokenRequest(fleet=FLEET), metadata=metadata, timeout=RPC_TIMEOUT_SECONDS
                ).join_string
                for _ in range(count)
            ]
    except grpc.RpcError as exc:
        raise BenchError(f"CreateJoinToken failed: {exc.code().name}: {exc.details()}") from exc


def list_devices(server: ServerProcess):
    """The ListDevicesResponse for the bench fleet. Raises BenchError."""
    import grpc

    from controlplane.cli.connection import admin
    from protos.edgefleet.v1 import admin_pb2

    try:
        with admin(admin_connection(server)) as (stub, metadata):
            return stub.ListDevices(
                admin_pb2.ListDevicesRequest(fleet=FLEET), metadata=metadata, timeout=RPC_TIMEOUT_SECONDS
            )
    except grpc.RpcError as exc:
        raise BenchError(f"ListDevices failed: {exc.code().name}: {exc.details()}") from exc


# --- the parent: orchestrate, measure, report ------------------------------------------


class Workers(WorkerPool):
    """The worker processes and their pipes; every wait has a deadline."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        super().__init__(_worker, specs)

    def snapshot(self) -> list[dict]:
        self.send_all(("snapshot",))
        return [reply[2] for reply in self.collect("snapshot", WORKER_REPLY_TIMEOUT_SECONDS)]

    def stop(self) -> list[dict]:
        self.send_all(("stop",))
        return [reply[2] for reply in self.collect("stopped", STOP_TIMEOUT_SECONDS + WORKER_REPLY_TIMEOUT_SECONDS)]


def run(args: argparse.Namespace, say: Callable[[str], None]) -> dict:
    result: dict = {
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version()},
        "params": {
            "agents": args.agents, "workers": args.workers, "duration_seconds": args.duration,
            "heartbeat_seconds": args.heartbeat_seconds, "enroll_concurrency": args.enroll_concurrency,
        },
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_server(tmp, heartbeat_seconds=args.heartbeat_seconds)
        workers: Workers | None = None
        try:
            say(f"control plane pid {server.pid}: api {server.api_port}, devices {server.device_port}")
            join_strings = create_join_tokens(server, args.agents)
            time.sleep(1.0)  # let the server settle before its idle footprint is read
            result["server_idle_rss_bytes"] = rss_bytes(server.pid)

            specs = [
                WorkerSpec(
                    index=i, join_strings=chunk, first_agent=first, data_root=str(tmp / f"agents-{i}"),
                    heartbeat_seconds=float(args.heartbeat_seconds),
                    enroll_concurrency=args.enroll_concurrency, open_deadline_seconds=args.join_timeout,
                )
                for i, (first, chunk) in enumerate(split(join_strings, args.workers))
            ]  # fmt: skip
            workers = Workers(specs)
            workers.collect("ready", WORKER_READY_TIMEOUT_SECONDS)
            say(f"{args.workers} workers ready; {args.agents} agents joining")

            cpu_go = cpu_seconds(server.pid)
            t_go = time.monotonic()
            workers.send_all(("go",))
            enrolled = workers.collect("enrolled", args.join_timeout + WORKER_REPLY_TIMEOUT_SECONDS)
            latencies = [s for reply in enrolled for s in reply[6]]
            result["join"] = {
                "enrolled": sum(r[3] for r in enrolled),
                "enroll_errors": sum(r[5] for r in enrolled),
                "enroll_error_samples": [e for r in enrolled for e in r[4]][:5],
                "all_enrolled_seconds": max(r[2] for r in enrolled) - t_go,
                "enroll_p50_seconds": percentile(latencies, 0.5),
                "enroll_p95_seconds": percentile(latencies, 0.95),
                "enroll_max_seconds": max(latencies, default=0.0),
            }
            say(
                f"enrolled {result['join']['enrolled']}/{args.agents} in {result['join']['all_enrolled_seconds']:.1f} s"
            )
            opened = workers.collect("open", args.join_timeout + WORKER_REPLY_TIMEOUT_SECONDS)
            result["join"]["sessions_open"] = sum(r[3] for r in opened)
            result["join"]["all_open_seconds"] = max(r[2] for r in opened) - t_go
            result["join"]["server_cpu_seconds"] = cpu_seconds(server.pid) - cpu_go
            say(f"{result['join']['sessions_open']} sessions open at {result['join']['all_open_seconds']:.1f} s; "
                f"steady window of {args.duration:.0f} s")  # fmt: skip

            cpu_a = cpu_seconds(server.pid)
            before = workers.snapshot()
            time.sleep(args.duration)
            after = workers.snapshot()
            cpu_b = cpu_seconds(server.pid)
            result["server_end_rss_bytes"] = rss_bytes(server.pid)

            def delta(key: str) -> float:
                return sum(b[key] - a[key] for a, b in zip(before, after, strict=True))

            window = delta("t") / len(after)
            heartbeats = int(delta("heartbeats"))
            server_cpu = cpu_b - cpu_a
            result["steady"] = {
                "window_seconds": window,
                "heartbeats": heartbeats,
                "heartbeats_per_second": heartbeats / window,
                "ideal_heartbeats_per_second": result["join"]["sessions_open"] / args.heartbeat_seconds,
                "server_cpu_seconds": server_cpu,
                "server_cpu_percent": 100.0 * server_cpu / window,
                "server_cpu_seconds_per_1000_heartbeats": 1000.0 * server_cpu / heartbeats if heartbeats else None,
                "sessions_connected_at_end": sum(b["connected"] for b in after),
                "reconnects_in_window": int(delta("reconnects")),
                "agent_cpu_seconds": delta("cpu_seconds"),
                "agent_rss_bytes": [b["rss_bytes"] for b in after],
            }  # fmt: skip

            response = list_devices(server)
            devices = list(response.devices)
            online = [d.device_id for d in devices if d.online]
            result["online_check"] = {
                "listed": len(devices),
                "online": len(online),
                "offline_samples": sorted(d.device_id for d in devices if not d.online)[:10],
                "ok": len(online) == args.agents,
                "list_response_bytes": response.ByteSize(),
            }

            final = workers.stop()
            result["agents"] = {
                "reconnects_total": sum(f["reconnects"] for f in final),
                "fatal": sum(f["fatal"] for f in final),
                "fatal_samples": [s for f in final for s in f["fatal_samples"]][:5],
                "warnings": sum(f["warnings"] for f in final),
                "warning_samples": [s for f in final for s in f["warning_samples"]][:5],
                "last_errors": sorted({e for f in final for e in f["last_errors"]})[:5],
                "stuck_on_stop": sum(f["stuck_on_stop"] for f in final),
            }
        finally:
            if workers is not None:
                workers.close()
            result["server_exit_code"] = stop_server(server)
            problems = log_lines(server.log_path)  # run at --log-level warning: each names a problem
            result["server_log"] = {"lines": len(problems), "samples": problems[:10]}
    return result


def print_table(result: dict) -> None:
    m, p, j, s, o, a = (result[k] for k in ("machine", "params", "join", "steady", "online_check", "agents"))
    per_1000 = s["server_cpu_seconds_per_1000_heartbeats"]
    rows = [
        ("machine", f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}"),
        ("agents / workers", f"{p['agents']} / {p['workers']} (heartbeat {p['heartbeat_seconds']} s, "
                             f"{p['enroll_concurrency']} enrollments in flight per worker)"),
        ("all enrolled", f"{j['all_enrolled_seconds']:.2f} s ({j['enrolled']} ok, {j['enroll_errors']} failed)"),
        ("enroll latency", f"p50 {j['enroll_p50_seconds']:.3f} s, p95 {j['enroll_p95_seconds']:.3f} s, "
                           f"max {j['enroll_max_seconds']:.3f} s"),
        ("all sessions open", f"{j['all_open_seconds']:.2f} s ({j['sessions_open']} open)"),
        ("server CPU, join phase", f"{j['server_cpu_seconds']:.2f} s"),
        ("steady window", f"{s['window_seconds']:.1f} s"),
        ("heartbeats/s", f"{s['heartbeats_per_second']:.1f} (ideal {s['ideal_heartbeats_per_second']:.0f}; "
                         f"{s['heartbeats']} in the window)"),
        ("server CPU", f"{s['server_cpu_seconds']:.2f} s ({s['server_cpu_percent']:.1f} % of one core)"),
        ("server CPU / 1000 hb", f"{per_1000:.3f} s" if per_1000 is not None else "n/a"),
        ("server RSS idle -> end", f"{mib(result['server_idle_rss_bytes'])} -> "
                                   f"{mib(result['server_end_rss_bytes'])}"),
        ("online at end", f"{o['online']}/{p['agents']} (listed {o['listed']}; ListDevices answer "
                          f"{o['list_response_bytes'] / 1024:.0f} KiB)" + ("" if o["ok"] else "  FAIL")),
        ("agent workers CPU", f"{s['agent_cpu_seconds']:.2f} s in the window "
                              f"({100 * s['agent_cpu_seconds'] / s['window_seconds']:.1f} % of one core)"),
        ("agent workers RSS", ", ".join(mib(r) for r in s["agent_rss_bytes"])),
        ("reconnects", f"{s['reconnects_in_window']} in the window, {a['reconnects_total']} in all; "
                       f"{s['sessions_connected_at_end']} connected at end"),
        ("agent warnings", f"{a['warnings']}; fatal {a['fatal']}; stuck on stop {a['stuck_on_stop']}"),
        ("server log lines", f"{result['server_log']['lines']} (at --log-level warning); "
                             f"exit code on SIGTERM {result['server_exit_code']}"),
    ]  # fmt: skip
    samples = [
        ("enroll error", j["enroll_error_samples"]),
        ("agent warning", a["warning_samples"]),
        ("agent last error", a["last_errors"]),
        ("agent fatal", a["fatal_samples"]),
        ("offline", o["offline_samples"]),
        ("server log", result["server_log"]["samples"]),
    ]
    print_rows(rows, samples)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=200, help="number of agents (default 200)")
    parser.add_argument("--duration", type=float, default=60.0, help="steady window, seconds (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="agent worker processes (default 2)")
    parser.add_argument("--heartbeat-seconds", type=int, default=1, help="heartbeat interval (default 1)")
    parser.add_argument("--enroll-concurrency", type=int, default=20, help="enrollments in flight per worker")
    parser.add_argument("--join-timeout", type=float, default=300.0, help="deadline for all to join and connect")
    parser.add_argument("--json-out", type=Path, help="also write the result JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 agents, 10 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.duration = 20, 10.0
    if args.agents < 1 or args.workers < 1 or args.duration <= 0 or args.heartbeat_seconds < 1:
        parser.error("--agents, --workers, --heartbeat-seconds must be >= 1 and --duration > 0")
    args.workers = min(args.workers, args.agents)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args, say)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 2
    print_table(result)
    print_result_line(result, args.json_out)
    ok = (
        result["join"]["enrolled"] == args.agents
        and result["join"]["sessions_open"] == args.agents
        and result["online_check"]["ok"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
