"""The README's first command: the demo starts a control plane and an agent, ships the committed
model builds, leaves a device serving them and answering a real recording; running it twice
works; stop ends both."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "edgefleet").exists(), reason="the demo runs from .venv (make venv)")
def test_demo_runs_twice_and_stops(tmp_path):
    env = {
        **os.environ,
        "EDGEFLEET_DEMO_DIR": str(tmp_path / "demo"),
        "EDGEFLEET_DEMO_API_PORT": str(_free_port()),
        "EDGEFLEET_DEMO_DEVICE_PORT": str(_free_port()),
    }

    def demo(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "scripts/demo.sh", action], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
        )

    try:
        for _ in range(2):
            started = demo("start")
            assert started.returncode == 0, started.stderr[-2000:]
            assert "demo-gw-1" in started.stdout and "online" in started.stdout
            assert "active silero-vad:1:fp32" in started.stdout and "active fsdd-digits:1:fp32" in started.stdout
            assert "two (" in started.stdout  # a real recording of "two" recognised on the device
            assert "PlayMusic (" in started.stdout and "genre='jazz'" in started.stdout
    finally:
        stopped = demo("stop")
    assert stopped.returncode == 0 and "demo stopped" in stopped.stdout
    for name in ("server.pid", "agent-1.pid"):
        assert not (tmp_path / "demo" / name).exists()
