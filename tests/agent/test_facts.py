"""Device facts: the pure parsers on recorded /proc text, and collect_facts with injected sources."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import agent
from agent.facts import (
    KNOWN_CPU_FLAGS,
    OVERRIDABLE_FIELDS,
    _probe_onnxruntime,
    collect_facts,
    normalise_cpu_flags,
    parse_cpuinfo,
    parse_meminfo,
    parse_os_release,
    validate_overrides,
)

DATA = Path(__file__).parent / "data"
GIB = 1024**3


def cpuinfo(name: str) -> str:
    return (DATA / name).read_text()


# --- parse_cpuinfo on recorded devices ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "machine", "model", "flags"),
    [
        (
            "cpuinfo_x86_epyc_9654_avx512_vnni.txt",
            "x86_64",
            "AMD EPYC 9654 96-Core Processor",
            ["avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512cd", "avx512dq", "avx512f",
             "avx512vl", "f16c", "fma", "sse4_1", "sse4_2"],
        ),
        (
            "cpuinfo_x86_intel_i7_1265u_avx_vnni.txt",
            "x86_64",
            "12th Gen Intel(R) Core(TM) i7-1265U",
            ["avx", "avx2", "avx_vnni", "f16c", "fma", "sse4_1", "sse4_2"],
        ),
        ("cpuinfo_arm64_rpi4_cortex_a72.txt", "aarch64", "Cortex-A72", ["asimd", "neon"]),
        (
            "cpuinfo_arm64_rk3588_cortex_a55_a76.txt",
            "aarch64",
            "Cortex-A55 + Cortex-A76",
            ["asimd", "asimddp", "asimdrdm", "fp16", "neon"],
        ),
        (
            "cpuinfo_arm64_graviton3_neoverse_v1.txt",
            "aarch64",
            "Neoverse-V1",
            ["asimd", "asimddp", "asimdfhm", "asimdrdm", "bf16", "fp16", "i8mm", "neon", "sve",
             "svebf16", "svei8mm"],
        ),
        ("cpuinfo_armv7l_rpi3_cortex_a53.txt", "armv7l", "Cortex-A53", ["neon"]),
    ],
)  # fmt: skip
def test_parse_cpuinfo_reports_model_and_normalised_flags_of_recorded_devices(
    sample: str, machine: str, model: str, flags: list[str]
) -> None:
    """Each recorded device yields its exact CPU model and sorted list of build-relevant flags."""
    assert parse_cpuinfo(cpuinfo(sample), machine) == (model, flags)


def test_raspberry_pi_4_has_no_dot_product_instructions() -> None:
    """A Cortex-A72 lacks asimddp, so int8 dot-product kernels must not be chosen for it."""
    _, flags = parse_cpuinfo(cpuinfo("cpuinfo_arm64_rpi4_cortex_a72.txt"), "aarch64")
    assert "asimddp" not in flags


def test_a_flag_missing_on_one_core_is_not_reported() -> None:
    """Flags are the intersection over cores, because the agent may run on any of them."""
    text = "processor : 0\nflags : avx2 fma\n\nprocessor : 1\nflags : fma\n"
    assert parse_cpuinfo(text, "x86_64")[1] == ["fma"]


def test_unknown_arm_implementer_falls_back_to_hardware_line() -> None:
    """An ARM core not in the part table is named by the Hardware line when there is one."""
    text = "processor : 0\nFeatures : fp asimd\nCPU implementer : 0x51\nCPU part : 0x805\n\n"
    text += "Hardware : Qualcomm SM8150\n"
    assert parse_cpuinfo(text, "aarch64")[0] == "Qualcomm SM8150"


def test_unknown_arm_core_without_hardware_line_names_implementer_and_part() -> None:
    """Without a model name or Hardware line the model names the implementer and part numbers."""
    text = "processor : 0\nFeatures : fp asimd\nCPU implementer : 0x51\nCPU part : 0x805\n"
    assert parse_cpuinfo(text, "aarch64")[0] == "unknown ARM (implementer 0x51 part 0x805)"


def test_empty_cpuinfo_gives_unknown_model_and_no_flags() -> None:
    """Unreadable cpuinfo never raises: the model is "unknown" and there are no flags."""
    assert parse_cpuinfo("", "x86_64") == ("unknown", [])


def test_flags_of_another_architecture_are_dropped() -> None:
    """A flag name is only reported for the family it exists on (no avx2 on aarch64)."""
    assert normalise_cpu_flags(["avx2", "asimd"], "aarch64") == ["asimd", "neon"]
    assert normalise_cpu_flags(["avx2", "asimd"], "x86_64") == ["avx2"]
    assert normalise_cpu_flags(["avx2", "asimd"], "riscv64") == []


def test_other_spellings_of_flags_map_to_ours() -> None:
    """Upper case, dashes, dots and known aliases normalise to one canonical, deduplicated name."""
    raw = ["AVX512VNNI", "avx-vnni", "SSE4.2", "avx512_vnni", "fphp", "asimdhp"]
    assert normalise_cpu_flags(raw) == ["avx512_vnni", "avx_vnni", "fp16", "sse4_2"]


def test_every_flag_the_proto_documents_is_in_the_vocabulary() -> None:
    """The flags named in common.proto's DeviceFacts comment can all be reported."""
    assert {"avx2", "avx512_vnni", "avx_vnni", "f16c", "neon", "asimd", "asimddp"} <= KNOWN_CPU_FLAGS


# --- meminfo and os-release ---------------------------------------------------------------------


def test_parse_meminfo_returns_total_and_available_bytes() -> None:
    """MemTotal and MemAvailable are read in KiB and returned in bytes."""
    assert parse_meminfo((DATA / "meminfo_rpi4_4gb.txt").read_text()) == (3884360 * 1024, 3289572 * 1024)


def test_parse_meminfo_without_memavailable_estimates_from_free_buffers_and_cache() -> None:
    """Kernels before 3.14 have no MemAvailable; available is MemFree + Buffers + Cached."""
    text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n"
    assert parse_meminfo(text) == (1000 * 1024, 420 * 1024)


@pytest.mark.parametrize("text", ["", "MemFree: 10 kB\n", "MemTotal: lots kB\n", "MemTotal: 10 kB\n"])
def test_parse_meminfo_rejects_text_without_total_or_available(text: str) -> None:
    """Meminfo lacking a numeric MemTotal, or any source of available memory, raises ValueError."""
    with pytest.raises(ValueError, match="meminfo"):
        parse_meminfo(text)


def test_parse_os_release_prefers_pretty_name_and_falls_back_to_name_and_version() -> None:
    """PRETTY_NAME wins; otherwise NAME and VERSION; otherwise an empty string."""
    assert parse_os_release('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n') == (
        "Debian GNU/Linux 12 (bookworm)"
    )
    assert parse_os_release("NAME=Yocto\nVERSION='4.0.9 (kirkstone)'\n") == "Yocto 4.0.9 (kirkstone)"
    assert parse_os_release("# nothing here\n") == ""


# --- collect_facts with injected sources -------------------------------------------------------


def fake_files(files: dict[str, str]) -> Callable[[Path], str]:
    def read_file(path: Path) -> str:
        if str(path) not in files:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return files[str(path)]

    return read_file


def fake_statvfs(existing: Path, free_blocks: int = 1000, block_bytes: int = 4096) -> Callable[[Path], object]:
    def statvfs(path: Path) -> os.statvfs_result:
        if path != existing:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return os.statvfs_result((block_bytes, block_bytes, 10_000, free_blocks, free_blocks, 0, 0, 0, 0, 255))

    return statvfs


def rpi4(tmp_path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    """collect_facts as run on a Raspberry Pi 4 with 4 GiB, 2 usable cores and onnxruntime 1.17.3."""
    files = {
        "/proc/cpuinfo": cpuinfo("cpuinfo_arm64_rpi4_cortex_a72.txt"),
        "/proc/meminfo": (DATA / "meminfo_rpi4_4gb.txt").read_text(),
        "/etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
    }
    defaults: dict[str, object] = {
        "data_dir": tmp_path,
        "labels": {"site": "depot-7"},
        "read_file": fake_files(files),
        "statvfs": fake_statvfs(tmp_path),
        "uname": lambda: platform.uname_result("Linux", "pi", "6.6.31-v8+", "#1 SMP", "aarch64"),
        "usable_cpus": lambda: 2,
        "probe_onnxruntime": lambda: ("1.17.3", ["CPUExecutionProvider"]),
    }
    return collect_facts(**{**defaults, **kwargs})  # type: ignore[arg-type]


def test_collect_facts_fills_every_field_from_its_source(tmp_path: Path) -> None:
    """Each DeviceFacts field comes from the matching injected source or argument."""
    facts = rpi4(tmp_path, onnx_threads=2, model_memory_budget_bytes=512 * 1024**2)
    assert facts.architecture == "aarch64"
    assert facts.cpu_model == "Cortex-A72"
    assert list(facts.cpu_flags) == ["asimd", "neon"]
    assert facts.cpu_cores == 2
    assert (facts.memory_total_bytes, facts.memory_available_bytes) == (3884360 * 1024, 3289572 * 1024)
    assert facts.disk_free_bytes == 1000 * 4096
    assert facts.os == "Linux 6.6.31-v8+ (Debian GNU/Linux 12 (bookworm))"
    assert facts.onnxruntime_version == "1.17.3"
    assert list(facts.execution_providers) == ["CPUExecutionProvider"]
    assert facts.agent_version == agent.__version__
    assert dict(facts.labels) == {"site": "depot-7"}
    assert facts.python_version == platform.python_version()
    assert (facts.onnx_threads, facts.model_memory_budget_bytes) == (2, 512 * 1024**2)
    assert not facts.simulated
    assert list(facts.simulated_fields) == []


def test_collect_facts_gives_zero_values_for_unreadable_files(tmp_path: Path) -> None:
    """Missing /proc files and os-release leave unknown facts at their zero values instead of failing."""
    facts = rpi4(tmp_path, read_file=fake_files({}))
    assert (facts.cpu_model, list(facts.cpu_flags)) == ("unknown ARM", [])
    assert (facts.memory_total_bytes, facts.memory_available_bytes) == (0, 0)
    assert facts.os == "Linux 6.6.31-v8+"


def test_collect_facts_measures_disk_of_nearest_existing_ancestor(tmp_path: Path) -> None:
    """A data dir that does not exist yet is measured on the filesystem of its nearest ancestor."""
    facts = rpi4(tmp_path, data_dir=tmp_path / "not" / "yet", statvfs=fake_statvfs(tmp_path, free_blocks=7))
    assert facts.disk_free_bytes == 7 * 4096


def test_collect_facts_reports_no_runtime_when_onnxruntime_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If onnxruntime cannot be imported, its version and providers are empty."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    facts = rpi4(tmp_path, probe_onnxruntime=_probe_onnxruntime)
    assert (facts.onnxruntime_version, list(facts.execution_providers)) == ("", [])


# --- overrides ----------------------------------------------------------------------------------


def test_overrides_replace_measured_facts_and_mark_them_simulated(tmp_path: Path) -> None:
    """Overridden fields take the given values; simulated is set and simulated_fields lists them sorted."""
    facts = rpi4(tmp_path, overrides={"memory_total_bytes": GIB, "cpu_cores": 1, "cpu_flags": ["asimd", "asimddp"]})
    assert (facts.memory_total_bytes, facts.cpu_cores) == (GIB, 1)
    assert list(facts.cpu_flags) == ["asimd", "asimddp", "neon"]
    assert facts.simulated
    # Available memory (3.1 GiB measured) is capped at the simulated total, so it is simulated too.
    assert facts.memory_available_bytes == GIB
    assert list(facts.simulated_fields) == [
        "cpu_cores",
        "cpu_flags",
        "memory_available_bytes",
        "memory_total_bytes",
    ]


def test_overriding_architecture_drops_measured_flags_of_the_real_one(tmp_path: Path) -> None:
    """Simulating x86_64 on an ARM board keeps no ARM flags, and counts cpu_flags as simulated."""
    facts = rpi4(tmp_path, overrides={"architecture": "x86_64"})
    assert list(facts.cpu_flags) == []
    assert list(facts.simulated_fields) == ["architecture", "cpu_flags"]


def test_unknown_override_names_the_field_and_lists_valid_ones(tmp_path: Path) -> None:
    """A misspelt override raises ValueError naming it and every valid field."""
    with pytest.raises(ValueError, match="'cpu_core'") as caught:
        rpi4(tmp_path, overrides={"cpu_core": 2})
    assert all(field in str(caught.value) for field in OVERRIDABLE_FIELDS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu_cores", 0),
        ("cpu_cores", 1025),
        ("cpu_cores", True),
        ("cpu_cores", 2.0),
        ("memory_total_bytes", -1),
        ("memory_total_bytes", 2**64),
        ("disk_free_bytes", "10GB"),
        ("architecture", 64),
        ("cpu_model", "x" * 257),
        ("cpu_flags", "avx2"),
        ("cpu_flags", ["avx2", "warp_drive"]),
        ("execution_providers", ["CPU Execution Provider"]),
    ],
)
def test_override_with_wrong_type_or_range_is_rejected(field: str, value: object) -> None:
    """An override value of the wrong type or outside its range raises ValueError naming the field."""
    with pytest.raises(ValueError, match=f"'{field}'"):
        validate_overrides({field: value})


def test_override_flags_must_exist_on_the_overridden_architecture() -> None:
    """Simulating aarch64 with an x86 flag is contradictory and raises ValueError."""
    with pytest.raises(ValueError, match=r"\['avx2'\].*aarch64"):
        validate_overrides({"architecture": "aarch64", "cpu_flags": ["asimd", "avx2"]})


def test_override_available_memory_above_total_is_rejected() -> None:
    """memory_available_bytes greater than memory_total_bytes raises ValueError."""
    with pytest.raises(ValueError, match="memory_available_bytes"):
        validate_overrides({"memory_total_bytes": GIB, "memory_available_bytes": 2 * GIB})


# --- this machine and import boundaries --------------------------------------------------------


def test_collect_facts_on_this_machine_returns_sane_values(tmp_path: Path) -> None:
    """On the test machine every measured fact is present and plausible."""
    facts = collect_facts(data_dir=tmp_path, labels={})
    assert facts.architecture
    assert facts.cpu_model
    assert facts.cpu_cores >= 1
    assert facts.memory_total_bytes > 0
    assert 0 < facts.memory_available_bytes <= facts.memory_total_bytes
    assert facts.disk_free_bytes > 0
    assert facts.onnxruntime_version
    assert "CPUExecutionProvider" in facts.execution_providers
    assert list(facts.cpu_flags) == sorted(set(facts.cpu_flags))
    assert not facts.simulated


def test_importing_agent_modules_pulls_in_neither_controlplane_nor_onnxruntime() -> None:
    """The agent never imports the control plane, and onnxruntime is imported only when probed."""
    code = (
        "import sys, agent.facts, agent.config, agent.backoff, agent.errors\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'controlplane', 'onnxruntime'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=60)


def test_local_cpu_model_reads_the_file_it_is_given(tmp_path: Path) -> None:
    from protos.cpuinfo import local_cpu_model

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: sse4_2 avx2\n\n")
    assert local_cpu_model(cpuinfo) == "Example CPU 9000"
    assert local_cpu_model(tmp_path / "missing")  # falls back to the platform's name, never empty
