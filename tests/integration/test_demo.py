"""The README's first command, in its short mode (`make demo DEMO_FAST=1`): a control plane and six agents,
two in each of three device classes; the devices benchmark every variant, version 1 is deployed without
naming a variant so each class gets its choice, apps send texts and recordings through the local APIs,
and version 2 of the NLU model rolls out in waves behind health gates. The test reads the fleet summary
the demo prints and checks it against the control plane; running it twice works (the second run finds
the fleet on version 2 and starts no rollout); stop ends everything, the traffic too."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EF = ROOT / ".venv" / "bin" / "edgefleet"
# Which class each demo device simulates; deploy/classes.demo.yaml defines them, scripts/demo.sh the devices.
CLASSES = {
    "demo-gw-1": "gateway",
    "demo-gw-2": "gateway",
    "demo-vehicle-1": "vehicle-1core",
    "demo-vehicle-2": "vehicle-1core",
    "demo-sensor-1": "sensor-legacy",
    "demo-sensor-2": "sensor-legacy",
}
PID_FILES = ("server.pid", "traffic.pid", *(f"agent-{i}.pid" for i in range(1, 7)))
ROLLED_OUT = ("snips-nlu-student", 2)
SUMMARY = re.compile(r"^={20,}\nFLEET SUMMARY .*?^={20,}$", re.S | re.M)


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


def _summary(out: str) -> str:
    found = SUMMARY.search(out)
    assert found, f"no fleet summary in the output:\n{out[-3000:]}"
    return found.group(0)


@pytest.mark.skipif(not EF.exists(), reason="the demo runs from .venv (make venv)")
def test_demo_fast_runs_twice_prints_its_summary_and_stops(tmp_path):
    demo_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "DEMO_FAST": "1",
        "EDGEFLEET_DEMO_DIR": str(demo_dir),
        "EDGEFLEET_DEMO_API_PORT": str(_free_port()),
        "EDGEFLEET_DEMO_DEVICE_PORT": str(_free_port()),
        "EDGEFLEET_DEMO_ARTIFACT_PORT": str(_free_port()),
    }
    cli_env = {**env, "EDGEFLEET_CONFIG": str(demo_dir / "server" / "cli.toml")}

    def demo(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "scripts/demo.sh", action], cwd=ROOT, env=env, capture_output=True, text=True, timeout=360
        )

    def cli_json(*args: str):
        done = subprocess.run(
            [str(EF), *args, "--json"], cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    pids: list[int] = []
    rollout_ids: list[str] = []
    try:
        for run in range(2):
            started = demo("start")
            out = started.stdout
            assert started.returncode == 0, f"run {run + 1}: {started.stderr[-3000:]}\n{out[-3000:]}"
            summary = _summary(out)
            lines = summary.splitlines()

            # Six devices online, two in each of three classes; the summary lists them by class.
            devices = {d["device_id"]: d for d in cli_json("devices", "list", "--fleet", "demo")}
            assert {name: d["device_class"] for name, d in devices.items()} == CLASSES
            assert all(d["online"] for d in devices.values())
            assert "devices: 6 (6 online) in 3 classes" in summary
            for device_class in set(CLASSES.values()):
                members = sorted(n for n, c in CLASSES.items() if c == device_class)
                [line] = [x for x in lines if x.split()[:1] == [device_class]]
                assert " ".join(line.split()) == f"{device_class} {', '.join(members)}", line

            # Per class and model: the variant the selector chose, with its reason; the devices serve it.
            for model, version in (("fsdd-digits", 1), ROLLED_OUT):
                for device_class in set(CLASSES.values()):
                    choice = cli_json("models", "explain", f"{model}:{version}", "--class", device_class)
                    variant = choice["chosen_variant"]
                    [line] = [x for x in lines if x.split()[:2] == [f"{model}:{version}", device_class]]
                    assert f" {variant}: " in line and "within budget" in line, line
                    for name in (n for n, c in CLASSES.items() if c == device_class):
                        active = {m["model"]["name"]: m["model"] for m in devices[name]["status"]["active"]}
                        assert set(active) == {"silero-vad", "fsdd-digits", "snips-nlu-student"}, (name, active)
                        assert active[model]["variant"] == variant and int(active[model]["version"]) == version
                        assert f"{model}:{version}:{variant}" in next(x for x in lines if x.split()[:1] == [name])

            # Latency per class from the devices' telemetry: a row per model and class, with requests.
            for model in ("fsdd-digits", "snips-nlu-student"):
                rows = {
                    r["key"]["class"]: r for r in cli_json("telemetry", "latency", "--model", model, "--by", "class")
                }
                assert set(rows) == set(CLASSES.values()), (model, rows)
                for device_class in set(CLASSES.values()):
                    [line] = [x for x in lines if x.split()[:2] == [model, device_class]]
                    assert int(line.split()[2]) > 0, line  # requests
                    assert " ms " in line, line

            # The rollout of version 2 completed, wave by wave, and its gate decisions are shown.
            [rollout] = cli_json("rollouts", "list", "--fleet", "demo")  # the second run starts none
            status = cli_json("rollouts", "status", rollout["rollout_id"])
            assert status["state"] == "completed", status
            verdicts = [(d.get("wave", 0), d["verdict"]) for d in status["decisions"]]
            assert {v for _, v in verdicts} <= {"advance", "wait"}, verdicts  # wait: not enough traffic yet
            assert [w for w, v in verdicts if v == "advance"] == [0, 1], verdicts  # wave 3 (100%) has no one left
            assert f"rollout {rollout['rollout_id']} of snips-nlu-student:2" in summary
            assert "completed, 6/6 devices updated" in summary
            assert "wave 1 (34%): gateway 1/1, sensor-legacy 1/1, vehicle-1core 1/1 updated" in summary
            assert "gate of wave 1/3 (34%): advance" in summary and "gate of wave 2/3 (67%): advance" in summary
            assert "p95 latency" in summary and "the control's" in summary  # wave 1's canaries vs the rest
            rollout_ids.append(rollout["rollout_id"])
            if run == 1:
                assert "no new rollout" in out

            # Traffic through the local APIs, and the answers of the real models.
            traffic = next(x for x in lines if x.startswith("traffic"))
            counts = [int(n) for n in re.findall(r"(\d+) (?:texts|recordings)", traffic)]
            assert len(counts) == 2 and all(n > 0 for n in counts), traffic
            assert "two (" in out  # a real recording of "two" recognised
            assert "PlayMusic (" in out and "genre='jazz'" in out
            assert "rollouts status" in out and "telemetry latency" in out  # the Explore help

            pids = [int((demo_dir / name).read_text()) for name in PID_FILES]
            assert all(_alive(pid) for pid in pids)
        assert rollout_ids[0] == rollout_ids[1]
    finally:
        stopped = demo("stop")
    assert stopped.returncode == 0 and "demo stopped" in stopped.stdout
    for name in PID_FILES:
        assert not (demo_dir / name).exists()
    assert not any(_alive(pid) for pid in pids)
