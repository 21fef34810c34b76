"""The deployment files in deploy/controlplane/ agree with the real `edgefleet server` command: every flag they
pass exists, the compose file wires PostgreSQL, Mosquitto and the control plane together, the systemd unit
keeps its hardening, the container health check answers for a real server, and docs/DEPLOY.md documents
every option (and no option that does not exist)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from edgefleet.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "controlplane"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
DATA_DIR = "/var/lib/edgefleet-server"


def _server_command() -> Any:
    """The click command Typer builds for `edgefleet server` (Typer vendors its own click)."""
    return typer.main.get_command(app).commands["server"]


def _server_options() -> dict[str, Any]:
    """Every long flag of `edgefleet server` (``--help`` excluded) and its click option."""
    options: dict[str, Any] = {}
    for param in _server_command().params:
        if param.param_type_name == "option":
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    options[opt] = param
    return options


def _check_server_args(args: list[str]) -> None:
    """Every ``--flag`` in args is a real option, and each one that takes a value is followed by one."""
    options = _server_options()
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"{arg!r} is not a flag (edgefleet server takes no positional arguments)"
        name, has_value = (arg.split("=", 1)[0], True) if "=" in arg else (arg, False)
        assert name in options, f"{name} is not an `edgefleet server` option (known: {sorted(options)})"
        if not options[name].is_flag and not has_value:
            assert i + 1 < len(args) and not args[i + 1].startswith("--"), f"{name} needs a value"
            i += 1
        i += 1


def _parses(args: list[str]) -> None:
    """click itself accepts args for `edgefleet server` (its types; the config's ranges are checked later)."""
    _server_command().make_context("server", list(args), resilient_parsing=False)


# --- the systemd unit -------------------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "edgefleet-server.service").read_text())
    return parser


def test_the_server_unit_moved_here_and_nothing_points_at_the_old_place():
    assert (DEPLOY / "edgefleet-server.service").is_file()
    assert not (ROOT / "deploy" / "systemd" / "edgefleet-server.service").exists()
    stale = [
        str(path.relative_to(ROOT))
        for path in [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "deploy").rglob("*")]
        if path.is_file() and "systemd/edgefleet-server.service" in path.read_text(errors="replace")
    ]
    assert stale == []


def test_the_unit_is_hardened_and_does_not_restart_after_exit_2():
    service = _unit()["Service"]
    expected = {
        "User": "edgefleet",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictSUIDSGID": "yes",
        "StateDirectory": "edgefleet-server",
        "StateDirectoryMode": "0700",
        "ReadWritePaths": DATA_DIR,
        "RestartPreventExitStatus": "2",
        "KillSignal": "SIGTERM",
    }
    assert {key: service.get(key) for key in expected} == expected


def test_the_unit_runs_edgefleet_server_with_real_options_on_its_state_directory():
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[0].endswith("/bin/edgefleet") and argv[1] == "server"
    _check_server_args(argv[2:])
    _parses(argv[2:])
    assert argv[argv.index("--data-dir") + 1] == DATA_DIR


# --- the Containerfile ------------------------------------------------------------------------------------


def _containerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Containerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (match.group(1).upper(), match.group(2).strip())
        for match in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.MULTILINE)
    ]


def _exec_form(instructions: list[tuple[str, str]], name: str) -> list[str]:
    values = [rest for instruction, rest in instructions if instruction == name]
    assert len(values) == 1, f"one {name} expected, found {len(values)}"
    parsed = json.loads(values[0])  # exec form: a JSON array, so signals reach the server directly
    assert isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)
    return parsed


def test_the_containerfile_entrypoint_and_cmd_are_real_server_options():
    instructions = _containerfile_instructions()
    entrypoint = _exec_form(instructions, "ENTRYPOINT")
    cmd = _exec_form(instructions, "CMD")
    assert entrypoint[:2] == ["edgefleet", "server"]
    _check_server_args(entrypoint[2:] + cmd)
    _parses(entrypoint[2:] + cmd)
    assert entrypoint[entrypoint.index("--data-dir") + 1] == DATA_DIR
    assert "--advertise" in cmd  # join strings must not carry the container's id as host name


def test_the_containerfile_runs_as_a_user_with_a_data_volume_ports_and_a_health_check():
    instructions = _containerfile_instructions()
    by_name: dict[str, list[str]] = {}
    for name, rest in instructions:
        by_name.setdefault(name, []).append(rest)
    assert by_name["FROM"] == ["python:3.11-slim"]
    assert by_name["USER"][-1].split(":")[0] == "edgefleet"
    assert json.loads(by_name["VOLUME"][0]) == [DATA_DIR]
    assert by_name["EXPOSE"] == ["7443 7444 7445 9464"]
    assert any('pip install "/src[server,cli]"' in run for run in by_name["RUN"])
    (health,) = by_name["HEALTHCHECK"]
    assert "healthcheck.py" in health and "--port" in health and "7443" in health
    copied = [rest.split()[0] for rest in by_name["COPY"]]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert "deploy/controlplane/healthcheck.py" in copied
    # Everything the Containerfile copies is let through by its .dockerignore.
    allowed = (DEPLOY / "Containerfile.dockerignore").read_text()
    for source in copied:
        assert f"!{source.rstrip('/')}" in allowed, source


# --- compose ----------------------------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_postgres_mosquitto_and_the_control_plane():
    services = _compose()["services"]
    assert set(services) == {"postgres", "mosquitto", "controlplane"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_DB"] == "edgefleet"
    assert postgres["environment"]["POSTGRES_USER"] == "edgefleet"
    mosquitto = services["mosquitto"]
    assert mosquitto["image"] == "eclipse-mosquitto:2"
    config_mounts = [v for v in mosquitto["volumes"] if v.endswith(":/mosquitto/config/mosquitto.conf:ro")]
    assert len(config_mounts) == 1
    assert (DEPLOY / config_mounts[0].split(":")[0]).resolve() == DEPLOY / "mosquitto.conf"


def test_compose_control_plane_waits_for_postgres_and_uses_it():
    compose = _compose()
    control = compose["services"]["controlplane"]
    assert control["depends_on"]["postgres"]["condition"] == "service_healthy"
    build = control["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Containerfile"
    args = [str(arg) for arg in control["command"]]
    _check_server_args(args)
    db = args[args.index("--db") + 1]
    assert db.startswith("postgresql://edgefleet@postgres:5432/edgefleet")
    assert ":" not in db.split("://", 1)[1].split("@", 1)[0], "the password belongs in PGPASSWORD, not the URL"
    assert "PGPASSWORD" in control["environment"]
    volumes = [v.split(":") for v in control["volumes"]]
    assert [name for name, target in volumes if target == DATA_DIR] == ["controlplane-data"]
    assert set(compose["volumes"]) == {"postgres-data", "mosquitto-data", "controlplane-data"}
    published = {str(port).rsplit(":", 1)[-1] for port in control["ports"]}
    assert published == {"7443", "7444", "7445", "9464"}


def test_the_compose_broker_accepts_no_anonymous_clients():
    lines = {line.split()[0]: line.split()[1:] for line in (DEPLOY / "mosquitto.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")}  # fmt: skip
    assert lines["listener"] == ["1883"]
    assert lines["allow_anonymous"] == ["false"]


# --- docs/DEPLOY.md ---------------------------------------------------------------------------------------


def _documented_options() -> set[str]:
    """The ``--flag`` at the start of each row of the configuration reference table."""
    text = DEPLOY_DOC.read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(--[a-z0-9-]+)", section, re.MULTILINE))


def test_every_server_option_is_in_the_configuration_reference_and_nothing_else_is():
    real = set(_server_options())
    documented = _documented_options()
    assert real - documented == set(), "document these in docs/DEPLOY.md"
    assert documented - real == set(), "docs/DEPLOY.md documents options that do not exist"


def test_the_documented_defaults_match_the_command():
    text = DEPLOY_DOC.read_text()
    for name, option in _server_options().items():
        if option.default in (None, "", ()) or isinstance(option.default, Path):
            continue
        row = re.search(rf"^\| `{re.escape(name)}[^|]*\| ([^|]*)\|", text, re.MULTILINE)
        assert row is not None, name
        assert f"`{option.default}`" in row.group(1), f"{name}: default {option.default!r}, doc says {row.group(1)!r}"


# --- the container health check against a real server -----------------------------------------------------


def _healthcheck(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(DEPLOY / "healthcheck.py"), "--data-dir", str(data_dir), "--port", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.integration
def test_the_health_check_reports_a_running_server_serving(tmp_path):
    data_dir, ready = tmp_path / "server", tmp_path / "ready"
    assert _healthcheck(data_dir, 1).returncode == 1  # no CA yet: unhealthy, not a crash
    command = [
        sys.executable, "-m", "edgefleet", "server", "--data-dir", str(data_dir), "--listen", "127.0.0.1",
        "--advertise", "127.0.0.1", "--api-port", "0", "--device-port", "0", "--artifact-port", "0",
        "--ready-file", str(ready),
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from tests.integration.harness import wait_for

        wait_for(lambda: ready.exists() or server.poll() is not None, what="ready file")
        assert server.poll() is None
        api_port, device_port = (int(part) for part in ready.read_text().split()[:2])
        result = _healthcheck(data_dir, api_port)
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING"), result.stderr
        # The device port wants a client certificate: the check must fail there, cleanly.
        refused = _healthcheck(data_dir, device_port)
        assert refused.returncode == 1 and refused.stderr.startswith("unhealthy: ")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        server.kill()
        server.communicate()


def test_the_health_check_uses_the_servers_tls_name():
    from protos.limits import TLS_SERVER_NAME

    assert f'TLS_SERVER_NAME = "{TLS_SERVER_NAME}"' in (DEPLOY / "healthcheck.py").read_text()
