"""The CPU facts both sides agree on: the flag vocabulary and how /proc/cpuinfo names a CPU.

The agent reports ``cpu_model`` and ``cpu_flags`` with these functions; the control plane's
model builder records the build machine's CPU with the same ``cpu_model``, so a measurement's
CPU and a device's CPU are spelled alike and can be compared as strings.

Invariants:
- ``normalise_cpu_flags`` returns only names from ``KNOWN_CPU_FLAGS``, sorted, without
  duplicates: the flags that decide which model build a device can run.
- ``parse_cpuinfo`` reports a flag only if every processor block lists it (big.LITTLE: the
  scheduler may move a process to any core), and never raises.
- No I/O except in ``local_cpu_model``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

__all__ = ["KNOWN_CPU_FLAGS", "family", "local_cpu_model", "normalise_cpu_flags", "parse_cpuinfo"]

_X86_FLAGS = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "avx_vnni_int8",
    "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
})  # fmt: skip
_ARM_FLAGS = frozenset({
    "neon", "asimd", "asimddp", "asimdrdm", "asimdfhm", "fp16", "bf16", "i8mm",
    "sve", "sve2", "svei8mm", "svebf16", "sme",
})  # fmt: skip
KNOWN_CPU_FLAGS: frozenset[str] = _X86_FLAGS | _ARM_FLAGS
"""Every flag a ``DeviceFacts`` may carry: what decides int8/fp16/bf16 kernels in onnxruntime."""

# Spellings other tools and older kernels use, mapped to ours (after lowercasing and "-"/"." -> "_").
_ALIASES = {
    "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "sse41": "sse4_1", "sse42": "sse4_2", "fma3": "fma",
    "fphp": "fp16", "asimdhp": "fp16",
}  # fmt: skip
# A flag that implies another one: AArch64 calls NEON "asimd"; we report both names.
_IMPLIES = {"asimd": ("neon",)}

# ARM Ltd (implementer 0x41) part numbers from the cores' technical reference manuals.
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
}  # fmt: skip


def family(machine: str) -> str:
    machine = machine.lower()
    if machine in {"x86_64", "amd64", "x86", "i386", "i486", "i586", "i686"}:
        return "x86"
    if machine.startswith(("arm", "aarch64")):
        return "arm"
    return "other"


def normalise_cpu_flags(raw: Iterable[str], machine: str | None = None) -> list[str]:
    """Map raw flag names to ours, drop the ones no build depends on, return them sorted.

    ``machine`` (uname machine) limits the vocabulary to that family; ``None`` accepts both.
    """
    vocabulary = KNOWN_CPU_FLAGS
    if machine is not None:
        vocabulary = {"x86": _X86_FLAGS, "arm": _ARM_FLAGS}.get(family(machine), frozenset())
    found: set[str] = set()
    for name in raw:
        key = name.strip().lower().replace("-", "_").replace(".", "_")
        key = _ALIASES.get(key, key)
        found.update(flag for flag in (key, *_IMPLIES.get(key, ())) if flag in vocabulary)
    return sorted(found)


def _blocks(text: str) -> list[dict[str, str]]:
    """Split ``key : value`` text into blank-line separated blocks; the first value of a key wins."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip(), " ".join(value.split()))
    if current:
        blocks.append(current)
    return blocks


def parse_cpuinfo(text: str, machine: str) -> tuple[str, list[str]]:
    """Return ``(cpu model, normalised flags)`` from /proc/cpuinfo text.

    x86 reads ``model name`` and ``flags``. ARM reads ``Features`` and names the core
    from ``CPU implementer``/``CPU part`` (several names joined by " + " on big.LITTLE),
    falling back to ``model name``, then ``Hardware``, then
    ``"unknown ARM (implementer 0x41 part 0xd08)"``. Never raises; unknown is ``"unknown"``.
    """
    blocks = _blocks(text)
    first: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            first.setdefault(key, value)
    flag_sets = [set(b[key].split()) for b in blocks for key in ("flags", "Features") if key in b]
    common = set.intersection(*flag_sets) if flag_sets else set()
    flags = normalise_cpu_flags(common, machine)

    model = first.get("model name") or first.get("cpu model") or ""
    if family(machine) == "arm":
        model = _arm_model(blocks, first) or model
    return model or "unknown", flags


def _arm_model(blocks: list[dict[str, str]], first: dict[str, str]) -> str:
    cores: list[tuple[str, str]] = []
    for block in blocks:
        if "CPU part" in block:
            core = (block.get("CPU implementer", "?").lower(), block["CPU part"].lower())
            if core not in cores:
                cores.append(core)
    names = [_ARM_PARTS.get(part) if implementer == "0x41" else None for implementer, part in cores]
    if cores and all(names):
        return " + ".join(name for name in names if name)
    if first.get("model name") or first.get("Hardware"):
        return first.get("model name") or first["Hardware"]
    if cores:
        return " + ".join(f"unknown ARM (implementer {imp} part {part})" for imp, part in cores)
    return "unknown ARM"


def local_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This machine's CPU model, spelled as an agent on it would report it."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    model = parse_cpuinfo(text, platform.machine())[0]
    return model if model != "unknown" else (platform.processor() or platform.machine() or "unknown")
