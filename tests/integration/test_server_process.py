"""`edgefleet server` as a process: first start writes its secrets owner-only, SIGTERM stops it cleanly,
and an unusable data dir stops it before it listens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, AgentProcess, wait_for


def _server(data_dir: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "edgefleet", "server", "--data-dir", str(data_dir), "--listen", "127.0.0.1",
        "--advertise", "127.0.0.1", "--api-port", "0", "--device-port", "0", "--artifact-port", "0",
        "--heartbeat-seconds", "1",
        "--ready-file", str(data_dir.parent / "ready"), *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_first_start_writes_ca_and_admin_token_owner_only_and_sigterm_stops_cleanly(tmp_path):
    server = _server(tmp_path / "server")
    try:
        wait_for(lambda: (tmp_path / "ready").exists() or server.poll() is not None, what="ready file")
        assert server.poll() is None
        for name in ("ca.key", "admin.token", "cli.toml"):
            assert oct(os.stat(tmp_path / "server" / name).st_mode & 0o777) == "0o600", name
        assert (tmp_path / "server" / "admin.token").read_text().startswith("efop_")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        server.kill()
        output = server.communicate()[0]
    assert "shutting down" in output and "Traceback" not in output


def test_agent_reconnects_after_the_control_plane_restarts(tmp_path):
    from protos.edgefleet.v1 import admin_pb2
    from tests.integration.conftest import server_config
    from tests.integration.harness import ServerThread

    config = server_config(tmp_path / "server")
    first = ServerThread(config)
    agent = AgentProcess(tmp_path / "gw", "--heartbeat-seconds", "0.5", join=first.join_string(), device_id="gw-1")
    try:
        wait_for(lambda: first.is_online("gw-1"), what="gw-1 online")
        ports = (first.running.api_port, first.running.device_port)
        first.stop()
        again = ServerThread(config.model_copy(update={"api_port": ports[0], "device_port": ports[1]}))
        try:
            wait_for(lambda: again.is_online("gw-1"), timeout=60, what="gw-1 back online")
            stub, meta, channel = again.admin()
            with channel:
                devices = stub.ListDevices(admin_pb2.ListDevicesRequest(), metadata=meta, timeout=10).devices
            assert [d.device_id for d in devices] == ["gw-1"]
            assert agent.process.poll() is None
        finally:
            again.stop()
    finally:
        agent.close()


@pytest.mark.parametrize("kind", ["parent-is-a-file", "read-only-filesystem"])
def test_unwritable_data_dir_stops_the_server_with_one_line_and_nothing_written(tmp_path, kind):
    if kind == "parent-is-a-file":
        (tmp_path / "file").write_text("not a directory")
        data_dir = tmp_path / "file" / "server"
    else:
        data_dir = Path("/proc/edgefleet-test/server")  # read-only even for root
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "server", "--data-dir", str(data_dir), "--api-port", "0",
         "--device-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"error: data dir {data_dir} is not writable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ready").exists()


def test_lost_ca_is_refused_instead_of_silently_replaced(tmp_path):
    """Devices trust the CA they pinned; a new CA would strand them, so the server stops and says why."""
    from controlplane.errors import DataDirError
    from tests.integration.conftest import server_config
    from tests.integration.harness import ServerThread

    config = server_config(tmp_path / "server")
    ServerThread(config).stop()
    (tmp_path / "server" / "ca.key").unlink()
    (tmp_path / "server" / "ca.crt").unlink()
    with pytest.raises(DataDirError, match="restore ca.crt and ca.key"):
        ServerThread(config)
