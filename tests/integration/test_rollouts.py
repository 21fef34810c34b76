"""Rollouts in waves with health gates, on real agents in three simulated classes, with real traffic.

The model is the tiny y = x * scale + 1 graph of tests/bundles.py: v1 (scale 2) is what the fleet
runs; v2 (scale 3) is a good update; v3 (scale 3 plus 20 MatMuls) is a regression — it answers
the same, hundreds of times slower. Apps on every device ask their local API a few times a second;
the agents send telemetry every half second, so a gate sees the canaries' traffic within a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from protos.edgefleet.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.conftest import server_config
from tests.integration.harness import ROOT, TLS_SERVER_NAME, ServerThread, wait_for
from tests.integration.shipping import LocalClient, deploy, publish, register_key

CLASSES = """\
classes:
  - name: tier-a
    match: [{fact: "label:tier", op: eq, value: a}]
  - name: tier-b
    match: [{fact: "label:tier", op: eq, value: b}]
  - name: tier-c
    match: [{fact: "label:tier", op: eq, value: c}]
"""
AGENT_TOML = """\
heartbeat_interval_seconds = 0.5
telemetry_flush_seconds = 0.5
telemetry_partial_minutes = true
onnx_threads = 1
"""
TERMINAL = ("completed", "aborted", "rolled_back", "failed")


@pytest.fixture
def cp(tmp_path: Path, db_url: str):
    server = ServerThread(
        server_config(tmp_path / "server", db_url, rollout_tick_seconds=0.3, rollout_remeasure_seconds=1.0)
    )
    yield server
    server.stop()


class Traffic(threading.Thread):
    """Apps on the devices: each asks its agent every ``interval`` seconds."""

    def __init__(self, data_dirs: list[Path], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.clients = [LocalClient(d) for d in data_dirs]
        self.interval = interval
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for client in self.clients:
                with contextlib.suppress(grpc.RpcError):
                    client.infer()
            self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        for client in self.clients:
            client.close()


def _fleet(cp, agents, tmp_path: Path, key: Path, per_class: int) -> dict[str, Path]:
    """Start per_class agents in each of three classes; returns device id -> data dir."""
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML)
    (tmp_path / "classes.yaml").write_text(CLASSES)
    stub, meta, channel = cp.admin()
    with channel:
        stub.ApplyClasses(admin_pb2.ApplyClassesRequest(yaml=CLASSES), metadata=meta, timeout=10)
    dirs = {}
    for tier in "abc":
        for i in range(1, per_class + 1):
            device_id = f"{tier}-{i}"
            dirs[device_id] = tmp_path / device_id
            agents(
                device_id,
                "--config",
                str(config),
                "--labels",
                f"tier={tier}",
                "--trust",
                f"{key}.pub",
                join=cp.join_string(),
                device_id=device_id,
            )
    wait_for(
        lambda: (
            sorted(d.device_id for d in cp.devices() if d.online and d.device_class.startswith("tier-")) == sorted(dirs)
        ),
        timeout=90,
        what=f"{len(dirs)} devices online in their classes",
    )
    return dirs


def _serving(data_dir: Path) -> int | None:
    client = LocalClient(data_dir)
    try:
        return client.serving_version()
    finally:
        client.close()


def _on_v1(cp, dirs: dict[str, Path]) -> None:
    for device_id in dirs:
        deploy(cp, device_id, version=1)
    for device_id, data_dir in dirs.items():
        wait_for(lambda d=data_dir: _serving(d) == 1, timeout=90, what=f"{device_id} serving v1")


def _start(cp, version: int, **kw) -> admin_pb2.Rollout:
    gates = admin_pb2.GateThresholds(min_requests=kw.pop("min_requests", 10), max_latency_p95_ratio=3.0)
    request = admin_pb2.StartRolloutRequest(
        name="tiny", version=version, fleet="lab", gates=gates, bake_seconds=kw.pop("bake", 2), **kw
    )
    stub, meta, channel = cp.admin()
    with channel:
        return stub.StartRollout(request, metadata=meta, timeout=30)


def _get(cp, rollout_id: str) -> admin_pb2.Rollout:
    stub, meta, channel = cp.admin()
    with channel:
        return stub.GetRollout(admin_pb2.GetRolloutRequest(rollout_id=rollout_id), metadata=meta, timeout=10)


def _generations(cp, ids) -> dict[str, int]:
    return {d: cp.device(d).desired_generation for d in ids}


def test_a_good_version_rolls_out_through_every_wave(cp, agents, tmp_path, cli):
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    publish(cp, key, tmp_path, version=2, scale=3.0)
    dirs = _fleet(cp, agents, tmp_path, key, per_class=4)
    _on_v1(cp, dirs)
    before = _generations(cp, dirs)
    traffic = Traffic(list(dirs.values()))
    traffic.start()
    try:
        started = _start(cp, 2, waves_percent=[1, 10, 50, 100])
        assert started.state in ("wave_in_progress", "baking")
        first_wave = [p for p in started.progress if p.wave == 0]
        assert sorted(p.device_class for p in first_wave) == ["tier-a", "tier-b", "tier-c"]  # canaries everywhere
        done = wait_for(
            lambda: (r := _get(cp, started.rollout_id)).state in TERMINAL and r,
            timeout=240,
            interval=0.5,
            what="the rollout to finish",
        )
    finally:
        traffic.stop()
    assert done.state == "completed", (done.reason, [list(d.reasons) for d in done.decisions])
    assert {d.verdict for d in done.decisions} <= {"advance", "wait"}
    assert sum(p.updated for p in done.progress) == 12
    for device_id, data_dir in dirs.items():
        wait_for(lambda d=data_dir: _serving(d) == 2, timeout=30, what=f"{device_id} serving v2")
    assert _generations(cp, dirs) == {d: g + 1 for d, g in before.items()}  # each device updated once

    code, out, err = cli("rollouts", "status", started.rollout_id)
    assert code == 0, err
    assert "completed" in out and "tier-a" in out
    code, out, _ = cli("rollouts", "list", "--json")
    assert json.loads(out)[0]["rollout_id"] == started.rollout_id


def test_a_regression_is_stopped_in_the_first_wave_and_rolled_back(cp, agents, tmp_path):
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    publish(cp, key, tmp_path, version=3, scale=3.0, work=20)
    dirs = _fleet(cp, agents, tmp_path, key, per_class=2)
    _on_v1(cp, dirs)
    before = _generations(cp, dirs)
    traffic = Traffic(list(dirs.values()))
    traffic.start()
    try:
        started = _start(cp, 3, waves_percent=[1, 50, 100])
        done = wait_for(
            lambda: (r := _get(cp, started.rollout_id)).state in TERMINAL and r,
            timeout=180,
            interval=0.5,
            what="the rollout to end",
        )
    finally:
        traffic.stop()
    assert done.state == "rolled_back", (done.state, done.reason)
    [verdict] = [d for d in done.decisions if d.verdict == "rollback"]
    assert verdict.wave == 0 and any("p95 latency" in r for r in verdict.reasons), list(verdict.reasons)
    wave_one = {d for d, g in _generations(cp, dirs).items() if g != before[d]}
    assert len(wave_one) == 3  # one canary per class, updated then reverted
    assert sum(p.reverted for p in done.progress) == 3 and sum(p.updated for p in done.progress) == 0
    outside = set(dirs) - wave_one
    assert all(_generations(cp, outside)[d] == before[d] for d in outside)  # never saw v3
    for device_id, data_dir in dirs.items():
        wait_for(lambda d=data_dir: _serving(d) == 1, timeout=60, what=f"{device_id} serving v1 again")


def test_operator_commands_and_refusals(cp, agents, tmp_path, cli):
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    publish(cp, key, tmp_path, version=2, scale=3.0)
    dirs = _fleet(cp, agents, tmp_path, key, per_class=1)
    _on_v1(cp, dirs)

    code, _, err = cli("rollouts", "start", "tiny:2", "--fleet", "nowhere")
    assert code == 1 and "no enrolled device" in err, err
    code, _, err = cli("rollouts", "start", "ghost:1", "--fleet", "lab")
    assert code == 1 and "has no published builds" in err, err
    code, _, err = cli("rollouts", "start", "tiny:2", "--fleet", "lab", "--selector", "tier=zzz")
    assert code == 1 and "matches the selector tier=zzz" in err, err

    # A long bake keeps it in its first wave while the operator works with it.
    code, out, err = cli("rollouts", "start", "tiny:2", "--fleet", "lab", "--bake", "1h", "--json")
    assert code == 0, err
    rollout_id = json.loads(out)["rollout_id"]
    code, _, err = cli("rollouts", "start", "tiny:2", "--fleet", "lab")
    assert code == 1 and "already has an active rollout" in err, err

    wait_for(lambda: _get(cp, rollout_id).state == "baking", timeout=90, what="wave 1 installed, baking")
    assert cli("rollouts", "pause", rollout_id)[0] == 0
    assert _get(cp, rollout_id).state == "paused"
    code, _, err = cli("rollouts", "pause", rollout_id)
    assert code == 1 and "FAILED_PRECONDITION" in err, err
    assert cli("rollouts", "resume", rollout_id)[0] == 0
    assert _get(cp, rollout_id).state in ("baking", "wave_in_progress")
    assert cli("rollouts", "rollback", rollout_id)[0] == 0
    done = wait_for(
        lambda: (r := _get(cp, rollout_id)).state in TERMINAL and r, timeout=90, what="the rollback to finish"
    )
    assert done.state == "rolled_back", done.reason
    for device_id, data_dir in dirs.items():
        wait_for(lambda d=data_dir: _serving(d) == 1, timeout=60, what=f"{device_id} serving v1")
    code, _, err = cli("rollouts", "abort", rollout_id)
    assert code == 1 and "FAILED_PRECONDITION" in err, err

    # Once it is over, a new rollout for the same fleet and model may start; abort stops it where it is.
    code, out, err = cli("rollouts", "start", "tiny:2", "--fleet", "lab", "--bake", "1h", "--json")
    assert code == 0, err
    second = json.loads(out)["rollout_id"]
    assert cli("rollouts", "abort", second)[0] == 0
    assert _get(cp, second).state == "aborted"


# --- the control plane killed during a wave ----------------------------------------------------------


class ServerProcess:
    """`edgefleet server` as a process on fixed ports, so it can be killed -9 and started again."""

    def __init__(self, data_dir: Path, api_port: int = 0, device_port: int = 0) -> None:
        self.data_dir = data_dir
        self.ready = data_dir.parent / "ready"
        self.ready.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "edgefleet", "server", "--data-dir", str(data_dir), "--listen", "127.0.0.1",
            "--advertise", "127.0.0.1", "--api-port", str(api_port), "--device-port", str(device_port),
            "--artifact-port", "0",
            "--heartbeat-seconds", "1", "--rollout-tick-seconds", "0.3", "--rollout-remeasure-seconds", "1",
            "--ready-file", str(self.ready),
        ]  # fmt: skip
        self.log = (data_dir.parent / "server.log").open("ab")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ)
        wait_for(lambda: self.ready.exists() and self.ready.read_text().strip(), timeout=60, what="server ready")
        self.api_port, self.device_port = (int(x) for x in self.ready.read_text().split()[:2])

    def admin(self):
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.api_port}",
            grpc.ssl_channel_credentials(root_certificates=(self.data_dir / "ca.crt").read_bytes()),
            options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)],
        )
        token = (self.data_dir / "admin.token").read_text().strip()
        return admin_pb2_grpc.AdminStub(channel), [("authorization", f"Bearer {token}")], channel

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(20)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.log.close()


def test_the_control_plane_killed_during_a_wave_resumes_and_updates_each_device_once(tmp_path, agents):
    server = ServerProcess(tmp_path / "server")
    try:
        cp = _ProcessCp(server)
        key = register_key(cp, tmp_path)
        publish(cp, key, tmp_path, version=1, scale=2.0)
        publish(cp, key, tmp_path, version=2, scale=3.0)
        dirs = _fleet(cp, agents, tmp_path, key, per_class=2)
        _on_v1(cp, dirs)
        before = _generations(cp, dirs)
        traffic = Traffic(list(dirs.values()))
        traffic.start()
        try:
            started = _start(cp, 2, waves_percent=[1, 50, 100], bake=3)
            wait_for(lambda: _get(cp, started.rollout_id).state == "baking", timeout=90, what="wave 1 baking")
            server.kill()
            server = ServerProcess(tmp_path / "server", server.api_port, server.device_port)
            cp.server = server
            done = wait_for(
                lambda: (r := _get(cp, started.rollout_id)).state in TERMINAL and r,
                timeout=240,
                interval=0.5,
                what="the rollout to finish after the restart",
            )
        finally:
            traffic.stop()
        assert done.state == "completed", (done.state, done.reason)
        assert _generations(cp, dirs) == {d: g + 1 for d, g in before.items()}  # exactly once each
        for device_id, data_dir in dirs.items():
            wait_for(lambda d=data_dir: _serving(d) == 2, timeout=60, what=f"{device_id} serving v2")
    finally:
        server.stop()


class _ProcessCp:
    """Enough of ServerThread's interface for the helpers above, over a ServerProcess."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def admin(self, token: str | None = None):
        return self.server.admin()

    def join_string(self, fleet: str = "lab") -> str:
        stub, meta, channel = self.admin()
        with channel:
            return stub.CreateJoinToken(
                admin_pb2.CreateJoinTokenRequest(fleet=fleet, ttl_seconds=3600), metadata=meta, timeout=10
            ).join_string

    def devices(self) -> list[admin_pb2.Device]:
        stub, meta, channel = self.admin()
        with channel:
            return list(stub.ListDevices(admin_pb2.ListDevicesRequest(), metadata=meta, timeout=10).devices)

    def device(self, device_id: str) -> admin_pb2.Device:
        stub, meta, channel = self.admin()
        with channel:
            return stub.GetDevice(admin_pb2.GetDeviceRequest(device_id=device_id), metadata=meta, timeout=10)


def test_a_device_that_joins_during_a_rollout_gets_the_current_waves_version(cp, agents, tmp_path):
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    publish(cp, key, tmp_path, version=2, scale=3.0)
    dirs = _fleet(cp, agents, tmp_path, key, per_class=1)
    _on_v1(cp, dirs)
    started = _start(cp, 2, waves_percent=[50, 100], bake=3600)  # stays in its first wave
    wait_for(lambda: _get(cp, started.rollout_id).state == "baking", timeout=90, what="wave 1 baking")

    agents(
        "late-1",
        "--config",
        str(tmp_path / "agent.toml"),
        "--labels",
        "tier=a",
        "--trust",
        f"{key}.pub",
        join=cp.join_string(),
        device_id="late-1",
    )
    wait_for(lambda: _serving(tmp_path / "late-1") == 2, timeout=90, what="the late device serving v2")
    rollout = _get(cp, started.rollout_id)
    assert sum(p.targeted for p in rollout.progress) == 4
    assert any(p.wave == 0 and p.device_class == "tier-a" and p.targeted == 2 for p in rollout.progress)
