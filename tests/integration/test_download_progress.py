"""Download progress end to end: a real agent downloading a build through the rate-capped gateway reports
DOWNLOADING with its byte counters, the control plane keeps them, and `devices show` (and --watch) show
the percentage."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from edgefleet.cli import run
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for
from tests.integration.shipping import deploy, publish, register_key

SIZE = 8 * 2**20
RATE = 2 * 2**20  # bytes per second and stream: the 8 MiB file takes about 4 s
LINE = re.compile(r"downloading (\d+\.\d) of (\d+\.\d) MiB \((\d+)%\), generation 1")


@pytest.fixture
def capped(tmp_path: Path):
    server = ServerThread(server_config(tmp_path / "server", artifact_bytes_per_second=RATE))
    yield server
    server.stop()


@pytest.mark.timeout(120)
def test_operator_sees_the_download_progress(capped, agents, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(capped.config.data_dir / "cli.toml"))
    for name in ("EDGEFLEET_SERVER", "EDGEFLEET_TOKEN", "EDGEFLEET_CA"):
        monkeypatch.delenv(name, raising=False)

    def cli(*args: str) -> tuple[int, str]:
        code = run(list(args))
        return code, capsys.readouterr().out

    key = register_key(capped, tmp_path)
    publish(capped, key, tmp_path, extra_files={"weights.bin": os.urandom(SIZE)})
    agents("gw", "--trust", f"{key}.pub", "--heartbeat-seconds", "0.5", join=capped.join_string(), device_id="gw-1")
    wait_for(lambda: capped.is_online("gw-1"), what="gw-1 online")
    deploy(capped, "gw-1")

    seen: list[dict] = []

    def downloading() -> dict | None:
        code, out = cli("devices", "show", "gw-1", "--json")
        status = json.loads(out).get("status", {})
        if not seen or seen[-1] != status:
            seen.append(status)
        done, total = int(status.get("bytes_downloaded", 0)), int(status.get("bytes_total", 0))
        return status if status.get("phase") == "DOWNLOADING" and 0 < done < total else None

    try:
        status = wait_for(downloading, timeout=60, interval=0.1, what="a DOWNLOADING status part-way")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses seen: {seen}") from None
    assert int(status["bytes_total"]) > SIZE  # the whole build: weights.bin and the model
    code, out = cli("devices", "show", "gw-1")
    assert code == 0
    match = LINE.search(out)
    if match is not None:  # (the download may have finished between the two calls)
        assert 0 <= int(match[3]) <= 100 and float(match[2]) >= SIZE / 2**20

    # --watch follows the download to the end; off a terminal it prints a line per change.
    code, out = cli("devices", "show", "gw-1", "--watch", "--interval", "0.2")
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "gw-1: committed, generation 1", out
    if match is None:
        assert any(LINE.search(line) for line in lines), out
    code, out = cli("devices", "show", "gw-1")
    assert code == 0 and "committed, generation 1" in out and "MiB" not in out
