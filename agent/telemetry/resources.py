"""Resource gauges for telemetry: the agent's CPU and memory, the device's memory, heat and disk.

Two layers, as in ``agent.facts``. The parsers (``parse_proc_stat``, ``parse_status_rss``,
``parse_uptime``, ``parse_thermal_celsius``; ``MemAvailable`` via ``agent.facts.parse_meminfo``)
take text and return numbers, raising ``ValueError`` on text they cannot read.
``sample_resources`` is the thin reader around them; every source it touches is a
keyword argument defaulting to the real one, so tests pass fixture text.

Invariants:
- Sampling never raises for what the OS does not give: a gauge that cannot be read is
  0, except temperature, which is NaN (the wire contract's "not exposed").
- ``cpu_percent`` is the process's CPU time over wall time, in percent of one CPU (the
  ``top`` convention: two busy threads read 200). Between two samples sharing a
  ``ResourceSampler`` it covers the interval on the monotonic clock; otherwise (first
  sample, another pid, a counter that went backwards) it is the average since the
  process started. It is never negative.
- Temperature is the hottest thermal zone in degrees Celsius; zones that fail to read
  (many drivers answer EIO or ENODATA) are skipped.
- Disk free is the space the agent's user may still write in ``data_dir`` (``f_bavail``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from agent.facts import parse_meminfo
from protos.edgefleet.v1 import telemetry_pb2

__all__ = [
    "ResourceSampler", "parse_proc_stat", "parse_status_rss", "parse_thermal_celsius", "parse_uptime",
    "sample_resources",
]  # fmt: skip

PROC = Path("/proc")
THERMAL = Path("/sys/class/thermal")


def parse_proc_stat(text: str) -> tuple[int, int]:
    """Return ``(utime + stime, starttime)`` in clock ticks from /proc/<pid>/stat text.

    The command name (field 2) may hold spaces and parentheses, so fields are counted
    after its last ``)``. Raises ``ValueError`` if the text is not a stat line.
    """
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 20:
        raise ValueError("not a /proc/<pid>/stat line")
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    try:
        utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    except ValueError as exc:
        raise ValueError(f"unreadable CPU times in /proc/<pid>/stat: {exc}") from None
    if min(utime, stime, start) < 0:
        raise ValueError("negative CPU times in /proc/<pid>/stat")
    return utime + stime, start


def parse_status_rss(text: str) -> int:
    """Return the resident set size in bytes from /proc/<pid>/status (``VmRSS``); raises ``ValueError`` if absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key == "VmRSS" and parts and parts[0].isdigit():
            return int(parts[0]) * 1024
    raise ValueError("status has no readable VmRSS line (a kernel thread, or not /proc/<pid>/status)")


def parse_uptime(text: str) -> float:
    """Return seconds since boot from /proc/uptime; raises ``ValueError`` on anything else."""
    parts = text.split()
    seconds = float(parts[0]) if parts else math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"unreadable /proc/uptime: {text[:40]!r}")
    return seconds


def parse_thermal_celsius(text: str) -> float:
    """Return degrees Celsius from a thermal zone's ``temp`` (millidegrees); raises ``ValueError`` if unreadable."""
    celsius = int(text.strip()) / 1000
    if celsius < -273.15:
        raise ValueError(f"impossible temperature {celsius} °C")
    return celsius


class ResourceSampler:
    """The process CPU time seen at the last sample: what turns two samples into a rate. Not thread-safe."""

    __slots__ = ("_at_monotonic", "_cpu_seconds", "_pid")

    def __init__(self) -> None:
        self._pid: int | str | None = None
        self._cpu_seconds = 0.0
        self._at_monotonic = 0.0

    def cpu_percent(self, pid: int | str, cpu_seconds: float, at_monotonic: float, since_start_seconds: float) -> float:
        """Return CPU percent since the last call for this pid, else the average over ``since_start_seconds``."""
        interval = at_monotonic - self._at_monotonic
        used = cpu_seconds - self._cpu_seconds
        if self._pid != pid or interval <= 0 or used < 0:
            interval, used = since_start_seconds, cpu_seconds
        self._pid, self._cpu_seconds, self._at_monotonic = pid, cpu_seconds, at_monotonic
        return 100.0 * used / interval if interval > 0 else 0.0


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _thermal_zone_temps() -> list[Path]:
    return sorted(THERMAL.glob("thermal_zone*/temp"))


def _cpu_percent(
    pid: int | str,
    sampler: ResourceSampler,
    read_file: Callable[[Path], str],
    monotonic: Callable[[], float],
    clock_ticks: int,
) -> float:
    try:
        ticks, start_ticks = parse_proc_stat(read_file(PROC / str(pid) / "stat"))
        at = monotonic()
        since_start = parse_uptime(read_file(PROC / "uptime")) - start_ticks / clock_ticks
    except (OSError, ValueError):
        return 0.0
    return sampler.cpu_percent(pid, ticks / clock_ticks, at, since_start)


def _hottest(zones: Iterable[Path], read_file: Callable[[Path], str]) -> float:
    readings = []
    for zone in zones:
        try:
            readings.append(parse_thermal_celsius(read_file(zone)))
        except (OSError, ValueError):
            continue
    return max(readings, default=math.nan)


def sample_resources(
    now: dt.datetime,
    *,
    pid: int | str,
    data_dir: Path,
    sampler: ResourceSampler | None = None,
    read_file: Callable[[Path], str] = _read_text,
    thermal_zones: Callable[[], Iterable[Path]] = _thermal_zone_temps,
    statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    monotonic: Callable[[], float] = time.monotonic,
    clock_ticks: int | None = None,
) -> telemetry_pb2.ResourceSample:
    """Read the gauges now; pass the same ``sampler`` each time to get CPU percent per interval.

    ``pid`` is the agent's process (``os.getpid()`` or ``"self"``). Sources that cannot be
    read give 0 (temperature NaN); raises only ``ValueError`` for a naive ``now``.
    """
    if now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    at = Timestamp()
    at.FromDatetime(now.astimezone(dt.UTC))
    ticks_per_second = clock_ticks or os.sysconf("SC_CLK_TCK")
    sample = telemetry_pb2.ResourceSample(
        at=at,
        cpu_percent=_cpu_percent(pid, sampler or ResourceSampler(), read_file, monotonic, ticks_per_second),
        temperature_celsius=math.nan,
    )
    unreadable = (OSError, ValueError)
    with contextlib.suppress(*unreadable):
        sample.rss_bytes = parse_status_rss(read_file(PROC / str(pid) / "status"))
    with contextlib.suppress(*unreadable):
        sample.memory_available_bytes = parse_meminfo(read_file(PROC / "meminfo"))[1]
    with contextlib.suppress(*unreadable):
        sample.temperature_celsius = _hottest(thermal_zones(), read_file)
    with contextlib.suppress(*unreadable):
        fs = statvfs(data_dir)
        sample.disk_free_bytes = fs.f_bavail * fs.f_frsize
    return sample
