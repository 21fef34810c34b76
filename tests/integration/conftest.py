"""Fixtures for integration tests: a real control plane on SQLite and on PostgreSQL, real agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.config import ServerConfig
from tests.integration.harness import AgentProcess, ServerThread
from tests.pg import postgres_schema, postgres_url

pytestmark = pytest.mark.integration


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """'' (the embedded SQLite default) or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield ""
        return
    with postgres_schema(postgres_url()) as url:
        yield url


def server_config(data_dir: Path, db_url: str = "", **overrides) -> ServerConfig:
    values = dict(
        data_dir=data_dir,
        db_url=db_url,
        listen_host="127.0.0.1",
        api_port=0,
        device_port=0,
        artifact_port=0,
        advertise_host="127.0.0.1",
        heartbeat_interval_seconds=1,
        hello_timeout_seconds=3.0,
        last_seen_flush_seconds=0.2,
        shutdown_grace_seconds=1.0,
    )
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture
def cp(tmp_path: Path, db_url: str) -> Iterator[ServerThread]:
    """A running control plane (on both database backends)."""
    server = ServerThread(server_config(tmp_path / "server", db_url))
    yield server
    server.stop()


@pytest.fixture
def cp_sqlite(tmp_path: Path) -> Iterator[ServerThread]:
    """A running control plane on the embedded default only (for tests about the wire, not the store)."""
    server = ServerThread(server_config(tmp_path / "server"))
    yield server
    server.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents as subprocesses: agents(name, *args, join=..., device_id=...)."""
    started: list[AgentProcess] = []

    def make(name: str, *args: str, join: str | None = None, device_id: str | None = None) -> AgentProcess:
        agent = AgentProcess(tmp_path / name, *args, join=join, device_id=device_id)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()


@pytest.fixture
def cli(cp, monkeypatch, capsys):
    """Run `edgefleet ARGS` in-process against cp; returns (exit code, stdout, stderr).

    The admin token is used unless ``token=`` names another.
    """
    from edgefleet.cli import run

    monkeypatch.setenv("EDGEFLEET_CONFIG", str(cp.config.data_dir / "cli.toml"))
    for name in ("EDGEFLEET_SERVER", "EDGEFLEET_TOKEN", "EDGEFLEET_CA"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str, token: str | None = None):
        if token is not None:
            monkeypatch.setenv("EDGEFLEET_TOKEN", token)
        else:
            monkeypatch.delenv("EDGEFLEET_TOKEN", raising=False)
        code = run(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
