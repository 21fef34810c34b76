"""The device's hardware and software facts, as reported to the control plane.

Two layers. The parsers (``parse_cpuinfo`` and ``normalise_cpu_flags``, shared with the control
plane in ``protos.cpuinfo``, ``parse_meminfo``, ``parse_os_release``, ``validate_overrides``)
take text or values and return values; they do no I/O. ``collect_facts`` is the thin reader around them; every source it
touches is a keyword argument defaulting to the real one, so tests pass fakes.

Invariants:
- ``cpu_flags`` holds only names from ``KNOWN_CPU_FLAGS``, sorted, without duplicates:
  the flags that decide which model build a device can run, never the kernel's full list.
- A flag is reported only if every processor block lists it (big.LITTLE: the
  scheduler may move the agent to any core).
- A fact that could not be read is the proto's zero value ("" or 0), never a guess.
- Any fact replaced by an override sets ``simulated`` and appears in ``simulated_fields``.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from agent import __version__ as AGENT_VERSION
from protos.cpuinfo import KNOWN_CPU_FLAGS, normalise_cpu_flags, parse_cpuinfo
from protos.edgefleet.v1 import common_pb2

__all__ = [
    "KNOWN_CPU_FLAGS", "OVERRIDABLE_FIELDS", "collect_facts", "normalise_cpu_flags",
    "parse_cpuinfo", "parse_meminfo", "parse_os_release", "validate_overrides",
]  # fmt: skip


def parse_meminfo(text: str) -> tuple[int, int]:
    """Return ``(total, available)`` bytes from /proc/meminfo text.

    Kernels before 3.14 lack ``MemAvailable``; then available is MemFree + Buffers + Cached.
    Raises ``ValueError`` if ``MemTotal`` (or every source of available) is missing or malformed.
    """
    kib: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and parts and parts[0].isdigit():
            kib[key.strip()] = int(parts[0])
    if "MemTotal" not in kib:
        raise ValueError("meminfo has no readable MemTotal line")
    if "MemAvailable" in kib:
        available = kib["MemAvailable"]
    elif "MemFree" in kib:
        available = kib["MemFree"] + kib.get("Buffers", 0) + kib.get("Cached", 0)
    else:
        raise ValueError("meminfo has neither MemAvailable nor MemFree")
    return kib["MemTotal"] * 1024, min(available, kib["MemTotal"]) * 1024


def parse_os_release(text: str) -> str:
    """Return the distribution's name from os-release text: PRETTY_NAME, else NAME VERSION, else ""."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return values.get("PRETTY_NAME") or " ".join(v for k in ("NAME", "VERSION") if (v := values.get(k)))


_UINT64_MAX = 2**64 - 1
# Overridable field -> its rule: ("str", max length), ("int", low, high) or ("list", max items).
_OVERRIDE_RULES: dict[str, tuple[str, int] | tuple[str, int, int]] = {
    "architecture": ("str", 64),
    "cpu_model": ("str", 256),
    "cpu_flags": ("list", 64),
    "cpu_cores": ("int", 1, 1024),
    "memory_total_bytes": ("int", 0, _UINT64_MAX),
    "memory_available_bytes": ("int", 0, _UINT64_MAX),
    "disk_free_bytes": ("int", 0, _UINT64_MAX),
    "os": ("str", 256),
    "onnxruntime_version": ("str", 64),
    "execution_providers": ("list", 32),
}
OVERRIDABLE_FIELDS: tuple[str, ...] = tuple(sorted(_OVERRIDE_RULES))


def _check_override(name: str, value: object) -> object:
    rule = _OVERRIDE_RULES[name]
    if rule[0] == "str":
        if not isinstance(value, str) or len(value) > rule[1] or not value.isprintable():
            raise ValueError(f"must be a printable string of at most {rule[1]} characters, got {value!r}")
        return value
    if rule[0] == "int":
        low, high = rule[1], rule[2]  # type: ignore[misc]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer in {low}..{high}, got {value!r}")
        return value
    if not isinstance(value, list | tuple) or len(value) > rule[1]:
        raise ValueError(f"must be a list of at most {rule[1]} names, got {value!r}")
    if not all(isinstance(item, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", item) for item in value):
        raise ValueError(f"must hold names of 1..64 letters, digits, '_', '.' or '-', got {value!r}")
    if name == "execution_providers":
        return list(value)  # onnxruntime's order is the priority order: keep it
    unknown = sorted(item for item in value if not normalise_cpu_flags([item]))
    if unknown:
        raise ValueError(f"has unknown CPU flags {unknown}; known: {', '.join(sorted(KNOWN_CPU_FLAGS))}")
    return normalise_cpu_flags(value)


def validate_overrides(overrides: Mapping[str, object]) -> dict[str, object]:
    """Check fact overrides and return them normalised (flags canonical and sorted).

    Raises ``ValueError`` naming the field for an unknown name, a wrong type or an
    out-of-range value, for CPU flags that the overridden architecture does not have,
    or if ``memory_available_bytes`` exceeds ``memory_total_bytes``.
    """
    checked: dict[str, object] = {}
    for name, value in overrides.items():
        if name not in _OVERRIDE_RULES:
            raise ValueError(f"unknown fact override {name!r}; valid fields: {', '.join(OVERRIDABLE_FIELDS)}")
        try:
            checked[name] = _check_override(name, value)
        except ValueError as exc:
            raise ValueError(f"fact override {name!r} {exc}") from None
    arch, flags = checked.get("architecture"), checked.get("cpu_flags")
    if isinstance(arch, str) and isinstance(flags, list) and normalise_cpu_flags(flags, arch) != flags:
        foreign = sorted(set(flags) - set(normalise_cpu_flags(flags, arch)))
        raise ValueError(f"fact override 'cpu_flags' has {foreign}, which {arch} CPUs do not have")
    total, available = checked.get("memory_total_bytes"), checked.get("memory_available_bytes")
    if isinstance(total, int) and isinstance(available, int) and available > total:
        raise ValueError(f"fact override 'memory_available_bytes' ({available}) exceeds memory_total_bytes")
    return checked


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _probe_onnxruntime() -> tuple[str, list[str]]:
    try:
        import onnxruntime  # lazy: slow to import, and optional on a device that only reports
    except (ImportError, OSError):
        return "", []
    return str(onnxruntime.__version__), list(onnxruntime.get_available_providers())


def _read_optional(read_file: Callable[[Path], str], *paths: Path) -> str | None:
    for path in paths:
        try:
            return read_file(path)
        except OSError:
            continue
    return None


def _disk_free_bytes(statvfs: Callable[[Path], os.statvfs_result], data_dir: Path) -> int:
    # The data dir may not exist yet; it will live on the filesystem of its nearest ancestor.
    for path in (data_dir, *data_dir.parents):
        try:
            result = statvfs(path)
        except OSError:
            continue
        return result.f_bavail * result.f_frsize
    return 0


def collect_facts(
    *,
    data_dir: Path,
    labels: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
    onnx_threads: int = 0,
    model_memory_budget_bytes: int = 0,
    read_file: Callable[[Path], str] = _read_text,
    statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    uname: Callable[[], platform.uname_result] = platform.uname,
    usable_cpus: Callable[[], int] = _usable_cpus,
    probe_onnxruntime: Callable[[], tuple[str, list[str]]] = _probe_onnxruntime,
) -> common_pb2.DeviceFacts:
    """Measure this device, apply ``overrides``, and return its ``DeviceFacts``.

    Overriding ``architecture`` drops measured flags that architecture cannot have, and
    overriding ``memory_total_bytes`` caps the measured available memory; both count as
    simulated. Unreadable /proc or os-release files give zero values. Raises ``ValueError`` for
    invalid ``overrides`` (see ``validate_overrides``) or a malformed /proc/meminfo.
    """
    checked = validate_overrides(overrides or {})
    system = uname()
    cpuinfo = _read_optional(read_file, Path("/proc/cpuinfo")) or ""
    meminfo = _read_optional(read_file, Path("/proc/meminfo"))
    os_release = _read_optional(read_file, Path("/etc/os-release"), Path("/usr/lib/os-release")) or ""
    cpu_model, cpu_flags = parse_cpuinfo(cpuinfo, system.machine)
    memory_total, memory_available = parse_meminfo(meminfo) if meminfo is not None else (0, 0)
    distribution = parse_os_release(os_release)
    ort_version, providers = probe_onnxruntime()

    measured: dict[str, object] = {
        "architecture": system.machine,
        "cpu_model": cpu_model,
        "cpu_flags": cpu_flags,
        "cpu_cores": max(1, usable_cpus()),
        "memory_total_bytes": memory_total,
        "memory_available_bytes": memory_available,
        "disk_free_bytes": _disk_free_bytes(statvfs, data_dir),
        "os": f"{system.system} {system.release}" + (f" ({distribution})" if distribution else ""),
        "onnxruntime_version": ort_version,
        "execution_providers": providers,
    }
    fields = {**measured, **checked}
    simulated = set(checked)
    # Keep simulated facts consistent: an aarch64 device has no measured x86 flags, and a
    # small device cannot have more memory available than it has in total.
    flags = normalise_cpu_flags(fields["cpu_flags"], str(fields["architecture"]))  # type: ignore[arg-type]
    total, available = fields["memory_total_bytes"], fields["memory_available_bytes"]
    if flags != fields["cpu_flags"]:
        fields["cpu_flags"] = flags
        simulated.add("cpu_flags")
    if isinstance(total, int) and isinstance(available, int) and available > total:
        fields["memory_available_bytes"] = total
        simulated.add("memory_available_bytes")

    return common_pb2.DeviceFacts(
        **fields,  # type: ignore[arg-type]
        agent_version=AGENT_VERSION,
        labels=dict(labels),
        simulated=bool(simulated),
        simulated_fields=sorted(simulated),
        python_version=platform.python_version(),
        onnx_threads=onnx_threads,
        model_memory_budget_bytes=model_memory_budget_bytes,
    )
