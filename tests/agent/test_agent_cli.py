"""`edgefleet agent` options: the device-class simulation (--onnx-threads, --cpu-affinity, --memory-budget), --mqtt-ca.

The agent command is run by typer with the daemon replaced, so each test sees the config it would start with.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent import daemon
from agent.cli import AgentExit, agent
from agent.config import AgentConfig
from controlplane.pki import create_ca

CPU = sorted(os.sched_getaffinity(0))[0]


def invoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[object, list[AgentConfig]]:
    started: list[AgentConfig] = []

    async def fake_run(config: AgentConfig, **_: object) -> None:
        started.append(config)

    monkeypatch.setattr(daemon, "run", fake_run)
    app = typer.Typer()
    app.command()(agent)
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), *args])
    return result, started


def test_device_class_options_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, started = invoke(
        monkeypatch, tmp_path, "--onnx-threads", "2", "--cpu-affinity", f"{CPU}-{CPU}", "--memory-budget", "256MiB"
    )
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.onnx_threads == 2
    assert config.cpu_affinity == (CPU,)
    assert config.model_memory_budget_bytes == 256 * 2**20


def test_options_not_given_leave_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, started = invoke(monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    assert (started[0].onnx_threads, started[0].cpu_affinity, started[0].model_memory_budget_bytes) == (0, (), 0)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--cpu-affinity", "0-x"), "--cpu-affinity: '0-x' is not a CPU index"),
        (("--cpu-affinity", "4095"), "CPUs [4095] are not available to this process"),
        (("--memory-budget", "1.5GB"), "--memory-budget: '1.5GB' is not a whole number"),
        (("--memory-budget", f"{2**64}"), "model_memory_budget_bytes (from command line)"),
        (("--onnx-threads", "300"), "onnx_threads (from command line)"),
        (("--mqtt-url", "mqtts://broker:8883", "--mqtt-ca", "/nonexistent/ca.pem"), "mqtt_ca_file"),
        (("--mqtt-url", "mqtt://broker:1883", "--mqtt-ca", __file__), "mqtt_ca_file"),
    ],
)
def test_bad_values_end_with_exit_code_2_and_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    if "4095" in args and 4095 in os.sched_getaffinity(0):
        pytest.skip("this machine has a CPU 4095")
    result, started = invoke(monkeypatch, tmp_path, *args)
    assert isinstance(result.exception, AgentExit) and result.exception.code == 2
    assert needle in str(result.exception)
    assert started == []


def test_non_integer_thread_count_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, started = invoke(monkeypatch, tmp_path, "--onnx-threads", "many")
    assert result.exit_code == 2 and started == []


def test_cpu_affinity_is_applied_to_the_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pinned: list[tuple[int, set[int]]] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: pinned.append((pid, set(cpus))))
    daemon.apply_cpu_affinity(AgentConfig(data_dir=tmp_path))
    assert pinned == []
    daemon.apply_cpu_affinity(AgentConfig(data_dir=tmp_path, cpu_affinity=(CPU,)))
    assert pinned == [(0, {CPU})]


def test_the_broker_ca_option_reaches_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "broker-ca.pem"
    ca.write_bytes(create_ca("broker-ca", datetime.datetime.now(datetime.UTC)).cert_pem)
    result, started = invoke(monkeypatch, tmp_path, "--mqtt-url", "mqtts://broker:8883", "--mqtt-ca", str(ca))
    assert result.exit_code == 0, result.output
    assert started[0].mqtt_ca_file == ca
