"""Resource gauges: pure parsers on recorded /proc and /sys text, and sample_resources with injected readers."""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry.resources import (
    ResourceSampler,
    parse_proc_stat,
    parse_status_rss,
    parse_thermal_celsius,
    parse_uptime,
    sample_resources,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 30, tzinfo=dt.UTC)
PID = 4242
HZ = 100

# /proc/<pid>/stat of a python agent whose command name holds a space and parentheses;
# utime 1500 and stime 500 ticks (20 s of CPU), started 100000 ticks (1000 s) after boot.
STAT = (
    "4242 (edgefleet (agent) x) S 1 4242 4242 0 -1 4194560 52311 0 12 0 1500 500 0 0 20 0 9 0 100000 "
    "1234567890 45678 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 2 0 0 0 0 0\n"
)
STATUS = (
    "Name:\tedgefleet\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  912344 kB\nVmRSS:\t  183124 kB\nThreads:\t9\n"
)
MEMINFO = "MemTotal:        3884096 kB\nMemFree:          210000 kB\nMemAvailable:    2871234 kB\nBuffers:   1 kB\n"
UPTIME = "1100.00 4123.45\n"
ZONES = [Path("/sys/class/thermal/thermal_zone0/temp"), Path("/sys/class/thermal/thermal_zone1/temp")]


class FakeStatvfs:
    f_bavail = 1_000
    f_frsize = 4096


def files(**overrides: str | None) -> dict[Path, str | None]:
    table: dict[Path, str | None] = {
        Path(f"/proc/{PID}/stat"): STAT,
        Path(f"/proc/{PID}/status"): STATUS,
        Path("/proc/meminfo"): MEMINFO,
        Path("/proc/uptime"): UPTIME,
        ZONES[0]: "48250\n",
        ZONES[1]: "61000\n",
    }
    names = {"stat": f"/proc/{PID}/stat", "status": f"/proc/{PID}/status", "meminfo": "/proc/meminfo"}
    names |= {"uptime": "/proc/uptime", "zone0": str(ZONES[0]), "zone1": str(ZONES[1])}
    for name, text in overrides.items():
        table[Path(names[name])] = text
    return table


def reader(table: dict[Path, str | None]):
    def read_file(path: Path) -> str:
        text = table.get(path)
        if text is None:
            raise OSError(5, "Input/output error", str(path))
        return text

    return read_file


def sample(table=None, *, sampler=None, monotonic=50.0, zones=ZONES, statvfs=None):
    return sample_resources(
        NOW,
        pid=PID,
        data_dir=Path("/var/lib/edgefleet"),
        sampler=sampler,
        read_file=reader(files() if table is None else table),
        thermal_zones=lambda: zones,
        statvfs=statvfs or (lambda path: FakeStatvfs()),
        monotonic=lambda: monotonic,
        clock_ticks=HZ,
    )


# --- parsers -------------------------------------------------------------------------------------


def test_proc_stat_cpu_ticks_are_read_past_a_command_name_with_spaces_and_parentheses():
    assert parse_proc_stat(STAT) == (2000, 100000)


@pytest.mark.parametrize(
    "text", ["", "4242 (x) S 1 2 3", "no parenthesis 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"]
)
def test_text_that_is_not_a_stat_line_is_refused(text):
    with pytest.raises(ValueError):
        parse_proc_stat(text)


def test_rss_is_vmrss_in_bytes():
    assert parse_status_rss(STATUS) == 183124 * 1024


def test_a_status_without_vmrss_is_refused():
    with pytest.raises(ValueError, match="VmRSS"):
        parse_status_rss("Name:\tkthreadd\nState:\tS (sleeping)\n")


@pytest.mark.parametrize(("text", "celsius"), [("48250\n", 48.25), ("-5000", -5.0), ("0", 0.0)])
def test_thermal_zone_millidegrees_become_celsius(text, celsius):
    assert parse_thermal_celsius(text) == celsius


@pytest.mark.parametrize("text", ["", "hot", "-300000"])
def test_unreadable_or_impossible_temperatures_are_refused(text):
    with pytest.raises(ValueError):
        parse_thermal_celsius(text)


def test_uptime_is_the_first_field_in_seconds():
    assert parse_uptime(UPTIME) == 1100.0


@pytest.mark.parametrize("text", ["", "nan 1", "-1 2"])
def test_an_unreadable_uptime_is_refused(text):
    with pytest.raises(ValueError):
        parse_uptime(text)


# --- sample_resources ----------------------------------------------------------------------------


def test_a_sample_carries_every_gauge_from_its_sources():
    s = sample()
    assert s.at.ToDatetime(tzinfo=dt.UTC) == NOW
    assert s.rss_bytes == 183124 * 1024
    assert s.memory_available_bytes == 2871234 * 1024
    assert s.temperature_celsius == 61.0  # the hottest zone
    assert s.disk_free_bytes == 1_000 * 4096


def test_the_first_cpu_reading_is_the_average_since_the_process_started():
    # 20 s of CPU over the 100 s between its start (1000 s after boot) and now (uptime 1100 s).
    assert sample().cpu_percent == pytest.approx(20.0)


def test_later_cpu_readings_cover_the_interval_since_the_previous_sample():
    sampler = ResourceSampler()
    sample(sampler=sampler, monotonic=50.0)
    busier = STAT.replace(" 1500 500 ", " 1800 700 ")  # 5 s more CPU
    assert sample(files(stat=busier), sampler=sampler, monotonic=60.0).cpu_percent == pytest.approx(50.0)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.floats(0, 1e4), st.floats(-1e4, 1e4), st.floats(0, 1e4))
def test_cpu_percent_is_never_negative(cpu_a, cpu_b, at_a, step, since_start):
    sampler = ResourceSampler()
    sampler.cpu_percent("self", cpu_a / HZ, at_a, since_start)
    assert sampler.cpu_percent("self", cpu_b / HZ, at_a + step, since_start) >= 0.0


def test_a_sampler_ignores_state_left_by_another_pid():
    sampler = ResourceSampler()
    sampler.cpu_percent(1, 500.0, 10.0, 1000.0)
    assert sampler.cpu_percent(2, 10.0, 20.0, 100.0) == pytest.approx(10.0)


def test_temperature_is_nan_when_the_os_exposes_no_thermal_zone():
    assert math.isnan(sample(zones=[]).temperature_celsius)


def test_zones_that_fail_to_read_are_skipped():
    assert sample(files(zone1=None)).temperature_celsius == 48.25
    assert math.isnan(sample(files(zone0=None, zone1="garbage")).temperature_celsius)


@pytest.mark.parametrize(
    ("missing", "field"),
    [
        ("stat", "cpu_percent"),
        ("uptime", "cpu_percent"),
        ("status", "rss_bytes"),
        ("meminfo", "memory_available_bytes"),
    ],
)
def test_an_unreadable_source_zeroes_only_its_own_gauge(missing, field):
    s = sample(files(**{missing: None}))
    assert getattr(s, field) == 0
    assert s.disk_free_bytes == 1_000 * 4096 and s.temperature_celsius == 61.0


def test_disk_free_is_zero_when_the_data_dir_cannot_be_statted():
    def failing(path: Path) -> os.statvfs_result:
        raise FileNotFoundError(path)

    assert sample(statvfs=failing).disk_free_bytes == 0


def test_a_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        sample_resources(dt.datetime(2026, 3, 1), pid=PID, data_dir=Path("/"))


def test_the_real_sources_of_this_machine_give_plausible_gauges(tmp_path):
    sampler = ResourceSampler()
    first = sample_resources(NOW, pid=os.getpid(), data_dir=tmp_path, sampler=sampler)
    second = sample_resources(NOW, pid=os.getpid(), data_dir=tmp_path, sampler=sampler)
    assert first.rss_bytes > 0 and first.memory_available_bytes > 0 and first.disk_free_bytes > 0
    assert first.cpu_percent >= 0.0 and second.cpu_percent >= 0.0
