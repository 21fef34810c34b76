"""What the fleet benchmarks share: the control plane process, stopping processes, /proc readers, a
percentile, the worker processes (their entry point, the pool and its pipes), progress and result output.

Imported by the benchmarks in this directory (run as scripts, so this directory is on ``sys.path``,
also in their spawned worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protos.cpuinfo import local_cpu_model

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0


class BenchError(Exception):
    """The benchmark could not be set up or a process stopped answering."""


# --- the control plane process and stopping processes ----------------------------------


@dataclass(frozen=True)
class ServerProcess:
    process: subprocess.Popen
    pid: int
    api_port: int
    device_port: int
    data_dir: Path
    log_path: Path
    artifact_port: int = 0  # the HTTPS artifact listener (0 = off)


def start_server(
    tmp: Path, *extra_args: str, heartbeat_seconds: int | None = None, new_session: bool = False
) -> ServerProcess:
    """Start `edgefleet server` (data in ``tmp/server``, output in ``tmp/server.log``, any free ports,
    log level warning, `extra_args` added) and wait for its ready file. Raises BenchError.

    ``heartbeat_seconds`` None leaves the server's default. ``new_session``: the server gets its own
    session, so that a terminal's ^C reaches the benchmark only, which then stops the server gracefully.
    """
    data_dir, ready, log_path = tmp / "server", tmp / "ready", tmp / "server.log"
    executable = Path(sys.executable).with_name("edgefleet")
    command = [
        str(executable), "server",
        "--data-dir", str(data_dir), "--api-port", "0", "--device-port", "0", "--artifact-port", "0",
        "--listen", "127.0.0.1", "--advertise", "127.0.0.1",
        *(["--heartbeat-seconds", str(heartbeat_seconds)] if heartbeat_seconds is not None else []),
        *extra_args,
        "--ready-file", str(ready), "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=new_session
        )
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the control plane exited with {process.returncode}: {tail(log_path)}")
        with contextlib.suppress(OSError, ValueError):
            api_port, device_port, pid, artifact_port = (int(x) for x in ready.read_text().split())
            return ServerProcess(process, pid, api_port, device_port, data_dir, log_path, artifact_port)
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=STOP_TIMEOUT_SECONDS)
    raise BenchError(f"the control plane was not ready within {SERVER_READY_TIMEOUT_SECONDS:.0f} s")


def stop_process(
    process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS, *, group: bool = False
) -> int | None:
    """SIGTERM (graceful stop), then SIGKILL after `timeout` seconds. Returns the exit code (0 = graceful).

    ``group``: signal the process group of a process started with ``start_new_session=True``, and
    SIGKILL what is left of the group (e.g. its children) even when the process itself has exited.
    """

    def send(signum: int) -> None:
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
        elif process.poll() is None:
            process.send_signal(signum)

    send(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    if group or process.poll() is None:
        send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
    return process.returncode


def stop_server(server: ServerProcess) -> int | None:
    """Stop the control plane: SIGTERM, then SIGKILL after a deadline. Returns the exit code (0 = graceful)."""
    return stop_process(server.process)


def tail(path: Path, lines: int = 10) -> str:
    """The last `lines` lines of a log file ("" if it cannot be read)."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def log_lines(path: Path) -> list[str]:
    """The non-blank lines of a log file (none if it cannot be read)."""
    with contextlib.suppress(OSError):
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return []


# --- /proc readers -----------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # Fields after "(comm)" start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_model() -> str:
    return local_cpu_model()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def split(items: list[str], parts: int) -> list[tuple[int, tuple[str, ...]]]:
    """(first index, slice) for each of `parts` near-equal slices."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        out.append((start, tuple(items[start:end])))
        start = end
    return out


# --- telemetry batches shared by mqtt_ingest.py and telemetry_store.py -------------------------------------

BENCH_REQUESTS_PER_POINT = 10
BENCH_SAMPLES_MS = (0.8, 1.1, 1.3, 1.6, 1.9, 2.2, 2.6, 3.1, 4.0, 7.5)  # one point's 10 latencies


def bench_model_names(models: int) -> list[str]:
    return [f"bench-model-{i}" for i in range(models)]


def telemetry_batch(device_id: str, boot_id: str, sequence: int, minutes: list, models: int):
    """A ``TelemetryBatch`` with a point for each of ``minutes`` (aware datetimes, starts of minutes) x
    ``models`` bench models: ``BENCH_REQUESTS_PER_POINT`` requests each, whose latencies are
    ``BENCH_SAMPLES_MS``."""
    from protos.edgefleet.v1 import common_pb2, telemetry_pb2
    from protos.histogram import Histogram

    histogram = Histogram()
    for ms in BENCH_SAMPLES_MS:
        histogram.observe(ms)
    latency = histogram.to_proto()
    batch = telemetry_pb2.TelemetryBatch(device_id=device_id, boot_id=boot_id, sequence=sequence)
    for minute in minutes:
        for name in bench_model_names(models):
            point = batch.minutes.add(
                model=common_pb2.ModelRef(name=name, version=1, variant="fp32"),
                task="bench",
                requests=BENCH_REQUESTS_PER_POINT,
                confidence_sum=0.9 * BENCH_REQUESTS_PER_POINT,
            )
            point.latency.CopyFrom(latency)
            point.minute.FromDatetime(minute)
    return batch


class WarningCounter(logging.Handler):
    """Counts log records at WARNING and above; keeps the first few messages (cut to ``max_chars``)."""

    def __init__(self, max_chars: int | None = None) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []
        self.max_chars = max_chars

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(f"{record.name}: {record.getMessage()}"[: self.max_chars])


# --- worker processes --------------------------------------------------------------

WorkerCoroutine = Callable[..., Coroutine[object, object, None]]
"""What a worker process runs: ``work(spec, conn, inbox, counter)``, the benchmark's side of the pipe."""


def worker_entry(
    work: WorkerCoroutine, spec, conn: multiprocessing.connection.Connection, warning_chars: int | None
) -> None:
    """Entry point of a worker process (spawned, so grpc state is never forked): runs ``work(spec, conn,
    inbox, counter)`` on its own event loop. ``inbox`` is an asyncio.Queue of the parent's messages, filled
    as they arrive on `conn`; warnings and above are counted by ``counter`` (a WarningCounter that cuts its
    samples to `warning_chars`) instead of printed.

    A failure is sent to the parent as ``("error", spec.index, "Type: message")`` before it is raised
    again, so the parent fails with a reason instead of a timeout.
    """
    counter = WarningCounter(warning_chars)
    logging.basicConfig(level=logging.WARNING, handlers=[counter])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops us
    try:
        asyncio.run(_with_inbox(work, spec, conn, counter))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", spec.index, f"{type(exc).__name__}: {exc}"))
        raise


async def _with_inbox(
    work: WorkerCoroutine, spec, conn: multiprocessing.connection.Connection, counter: WarningCounter
) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    try:
        await work(spec, conn, inbox, counter)
    finally:
        loop.remove_reader(conn.fileno())


async def answer_snapshots(
    conn: multiprocessing.connection.Connection, inbox: asyncio.Queue, index: int, snapshot: Callable[[], dict]
) -> None:
    """In a worker: answer each ``("snapshot",)`` with ``("snapshot", index, snapshot())`` until ``("stop",)``."""
    while True:
        command = await inbox.get()
        if command[0] == "snapshot":
            conn.send(("snapshot", index, snapshot()))
        elif command[0] == "stop":
            return


async def wait_or_cancel(
    tasks: Collection[asyncio.Task], timeout_seconds: float = STOP_TIMEOUT_SECONDS
) -> set[asyncio.Task]:
    """Wait up to `timeout_seconds` for `tasks` to end, then cancel the ones still running and return
    them (the ones stuck on stop)."""
    if not tasks:
        return set()
    _, pending = await asyncio.wait(tasks, timeout=timeout_seconds)
    for task in pending:
        task.cancel()
    return pending


class WorkerPool:
    """Worker processes (spawned, one pipe each) that answer ``(kind, index, ...)`` tuples; every wait
    has a deadline. Each runs ``work`` through worker_entry. The messages are each benchmark's own, but
    every worker takes ``("stop",)`` as its last (close sends it)."""

    def __init__(
        self, work: WorkerCoroutine, specs: Sequence, *, daemon: bool = False, warning_chars: int | None = None
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.processes = []
        for spec in specs:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=worker_entry,
                args=(work, spec, child_end, warning_chars),
                name=f"bench-worker-{spec.index}",
                daemon=daemon,
            )
            process.start()
            child_end.close()
            self.conns.append(parent_end)
            self.processes.append(process)

    def send_all(self, message: tuple) -> None:
        for conn in self.conns:
            conn.send(message)

    def collect(self, kind: str, timeout_seconds: float) -> list[tuple]:
        """One message of `kind` from every worker, in worker order. Raises BenchError."""
        replies: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout_seconds
        while len(replies) < len(self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"workers {sorted(set(range(len(self.conns))) - set(replies))} sent no {kind!r}")
            # Only wait on workers that have not answered: each sends its messages in order,
            # so a worker's next message (e.g. "open" after "enrolled") stays in its pipe.
            waiting = [c for i, c in enumerate(self.conns) if i not in replies]
            for conn in multiprocessing.connection.wait(waiting, timeout=left):
                try:
                    message = conn.recv()
                except EOFError as exc:
                    raise BenchError(f"a worker exited while the benchmark waited for {kind!r}") from exc
                if message[0] == "error":
                    raise BenchError(f"worker {message[1]} failed: {message[2]}")
                if message[0] != kind:
                    raise BenchError(f"expected {kind!r} from a worker, got {message[0]!r}")
                replies[message[1]] = message
        return [replies[i] for i in range(len(self.conns))]

    def close(self) -> None:
        """Ask every worker to stop (one that is gone already is passed over), wait for each up to
        STOP_TIMEOUT_SECONDS, kill the ones still running, close the pipes."""
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        for process in self.processes:
            process.join(timeout=STOP_TIMEOUT_SECONDS)
            if process.is_alive():
                process.kill()
                process.join(timeout=STOP_TIMEOUT_SECONDS)
        for conn in self.conns:
            conn.close()


# --- output ------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def print_rows(rows: list[tuple[str, str]], samples: Iterable[tuple[str, list[str]]] = ()) -> None:
    """The result table on stdout: one ``name  value`` line a row, values aligned; then each sample
    (errors, warnings, log lines) on a line of its own, indented, after its label."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for label, texts in samples:
        for text in texts:
            print(f"  {label}: {text}")


def say(text: str) -> None:
    """Progress, on stderr: stdout holds only the table and the result line."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def print_result_line(result: dict, json_out: Path | None) -> None:
    """The result as one JSON line on stdout, and into `json_out` when given."""
    line = json.dumps(result, sort_keys=True)
    print(line)
    if json_out is not None:
        json_out.write_text(line + "\n")


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt in the main thread, so that the benchmark cleans up as on ^C."""

    def on_term(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
