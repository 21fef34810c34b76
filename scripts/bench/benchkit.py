"""What the fleet benchmarks share: /proc readers, a percentile, the worker-process pool and its pipes.

Imported by ``session.py``, ``rollout.py`` and ``mqtt_ingest.py`` (run as scripts, so this directory
is on ``sys.path``, also in their spawned worker processes).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from protos.cpuinfo import local_cpu_model

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark could not be set up or a process stopped answering."""


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


class WorkerPool:
    """Worker processes (spawned, one pipe each) that answer ``(kind, index, ...)`` tuples; every wait
    has a deadline. Each benchmark subclasses it with its own snapshot and stop handling."""

    def __init__(self, target: Callable, specs: Sequence, *, daemon: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.processes = []
        for spec in specs:
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=target, args=(spec, child_end), name=f"bench-worker-{spec.index}", daemon=daemon
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
