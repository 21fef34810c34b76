"""The README's first command: the demo starts a control plane and three agents in three device classes,
ships the committed model builds, waits for the devices' benchmarks of every variant, deploys without
naming a variant so each device gets its class's choice, and answers a real recording and a text;
running it twice works; stop ends them all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EF = ROOT / ".venv" / "bin" / "edgefleet"
DEVICES = ("demo-gw-1", "demo-vehicle-1", "demo-sensor-1")
PID_FILES = ("server.pid", "agent-1.pid", "agent-2.pid", "agent-3.pid")
# Which class each demo device simulates; deploy/classes.demo.yaml defines them, scripts/demo.sh the devices.
CLASSES = {"demo-gw-1": "gateway", "demo-vehicle-1": "vehicle-1core", "demo-sensor-1": "sensor-legacy"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.mark.skipif(not EF.exists(), reason="the demo runs from .venv (make venv)")
def test_demo_runs_twice_and_stops(tmp_path):
    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "EDGEFLEET_DEMO_DIR": str(demo_dir),
        "EDGEFLEET_DEMO_API_PORT": str(_free_port()),
        "EDGEFLEET_DEMO_DEVICE_PORT": str(_free_port()),
    }
    cli_env = {**env, "EDGEFLEET_CONFIG": str(demo_dir / "server" / "cli.toml")}

    def demo(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "scripts/demo.sh", action], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )

    def cli_json(*args: str):
        done = subprocess.run(
            [str(EF), *args, "--json"], cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    pids: list[int] = []
    try:
        for run in range(2):
            started = demo("start")
            out = started.stdout
            assert started.returncode == 0, f"run {run + 1}: {started.stderr[-2000:]}\n{out[-3000:]}"

            # Three devices online, each in its own class (the classes come from deploy/classes.demo.yaml).
            devices = {d["device_id"]: d for d in cli_json("devices", "list", "--fleet", "demo")}
            assert set(devices) == set(DEVICES)
            assert all(devices[name]["online"] for name in DEVICES)
            assert {name: devices[name]["device_class"] for name in DEVICES} == CLASSES
            for name, device_class in CLASSES.items():
                assert name in out and device_class in out

            # The evidence matrix was printed: every variant of fsdd-digits benchmarked on every class.
            assert "fsdd-digits:1" in out and "benchmark" in out
            evidence = cli_json("models", "evidence", "fsdd-digits:1")
            cells = {(c["variant"], c["device_class"]) for c in evidence["cells"] if c["source"] == "benchmark"}
            variants = ("fp32", "fp16", "int8-dynamic", "int8-static-qdq", "int8-static-qop")
            assert cells >= {(v, c) for v in variants for c in CLASSES.values()}
            assert "for class vehicle-1core:" in out  # the explanation of one class's choice

            # The variant-less deploy: each device serves 3 models, and the variants are its class's choice.
            for name, device_class in CLASSES.items():
                active = {m["model"]["name"]: m["model"]["variant"] for m in devices[name]["status"]["active"]}
                assert set(active) == {"silero-vad", "fsdd-digits", "snips-nlu-student"}, (name, active)
                assert active["silero-vad"] == "fp32"
                for model in ("fsdd-digits", "snips-nlu-student"):
                    choice = cli_json("models", "explain", f"{model}:1", "--class", device_class)
                    assert active[model] == choice["chosen_variant"], (name, model, active, choice)
                    assert f"{name}: {model}:1:{active[model]} generation" in out  # the deploy said what and why
                assert out.count("  active ") >= 9  # infer status of each device, read from the device itself

            assert "two (" in out  # a real recording of "two" recognised on demo-gw-1
            assert "PlayMusic (" in out and "genre='jazz'" in out
            assert "models explain" in out and "classes list" in out  # the Explore help mentions them
            pids = [int((demo_dir / name).read_text()) for name in PID_FILES]
            assert all(_alive(pid) for pid in pids)
    finally:
        stopped = demo("stop")
    assert stopped.returncode == 0 and "demo stopped" in stopped.stdout
    for name in PID_FILES:
        assert not (demo_dir / name).exists()
    assert not any(_alive(pid) for pid in pids)
