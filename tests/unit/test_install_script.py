"""deploy/agent/install.sh and uninstall.sh, run for real against a temporary root (`--root DIR`).

The package is really installed into ``<root>/opt/edgefleet/venv``: a wheel built from this checkout, with
``--no-deps --no-index`` so that the test works offline. The agent's dependencies (grpcio, pydantic, ...) are
not downloaded; the installed ``edgefleet`` finds them through PYTHONPATH pointing at this test's own
site-packages (the installed copy of ``agent`` still comes from the venv, which the test checks). With a root
other than /, the scripts print the useradd, chown and systemctl commands instead of running them; the tests
check those lines and every file and directory written.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from agent.config import load_config

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
    pytest.mark.timeout(240),
]

REPO = Path(__file__).resolve().parents[2]
AGENT_DEPLOY = REPO / "deploy" / "agent"
INSTALL = AGENT_DEPLOY / "install.sh"
UNINSTALL = AGENT_DEPLOY / "uninstall.sh"
UNIT = AGENT_DEPLOY / "edgefleet-agent.service"
JOIN = "efjoin1.eyJjYSI6ImZha2UifQ"
PUBLIC_KEY = "\n".join(
    [
        "-----BEGIN PUBLIC KEY-----",
        "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=",
        "-----END PUBLIC KEY-----",
        "",
    ]
)

# Everything install.sh writes outside the venv, with its mode, for a run with --join and --trust.
EXPECTED = {
    "etc": 0o755,
    "etc/edgefleet": 0o755,
    "etc/edgefleet/agent.env": 0o600,
    "etc/edgefleet/agent.toml": 0o644,
    "etc/edgefleet/trust": 0o755,
    "etc/edgefleet/trust/release.key.pub": 0o644,
    "etc/systemd": 0o755,
    "etc/systemd/system": 0o755,
    "etc/systemd/system/edgefleet-agent.service": 0o644,
    "opt": 0o755,
    "opt/edgefleet": 0o755,
    "opt/edgefleet/venv": 0o755,
    "var": 0o755,
    "var/lib": 0o755,
    "var/lib/edgefleet": 0o700,
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built offline from a copy (the checkout gets no build/ directory)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel needs setuptools in this environment")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("edgefleet", "agent", "controlplane", "protos"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(base), str(src)],
        check=True,
        capture_output=True,
    )
    (built,) = base.glob("edgefleet-*.whl")
    return built


@pytest.fixture(scope="module")
def trust_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "release.key.pub"
    path.write_text(PUBLIC_KEY)
    return path


def _env(fake_bin: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_") and k != "PYTHONPATH"}
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if fake_bin is not None:
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    return env


def _run(script: Path, *args: str, fake_bin: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, env=_env(fake_bin), timeout=180, check=False
    )


def _install(root: Path, wheel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(
        INSTALL,
        "--root",
        str(root),
        "--python",
        sys.executable,
        "--package",
        f"{wheel}[agent]",
        "--pip-args",
        "--no-deps --no-index",
        *args,
    )


def _tree(root: Path) -> dict[str, int]:
    """Every path under root except the venv's contents, with its permission bits."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith("opt/edgefleet/venv/"):
            found[rel] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {
        rel: (mode, (root / rel).read_bytes() if (root / rel).is_file() else None) for rel, mode in _tree(root).items()
    }


def _would_run(result: subprocess.CompletedProcess[str]) -> list[str]:
    prefix = f"{Path(result.args[1]).name}: would run: "
    return [line.removeprefix(prefix) for line in result.stdout.splitlines() if line.startswith(prefix)]


def _one_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{Path(result.args[1]).name}: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, wheel: Path, trust_key: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("root")
    result = _install(
        root, wheel, "--join", JOIN, "--device-id", "gw-001", "--labels", 'site=berlin, line/3=a "b"', "--trust",
        str(trust_key),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root, result


def test_install_writes_exactly_these_files_with_these_modes(
    installed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = installed
    assert _tree(root) == EXPECTED


def test_install_prints_the_system_commands_instead_of_running_them(
    installed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, result = installed
    assert result.stderr == ""
    assert _would_run(result) == [
        "useradd --system --user-group --home-dir /var/lib/edgefleet --no-create-home --shell /usr/sbin/nologin "
        "edgefleet",
        f"chown -R edgefleet:edgefleet {root}/var/lib/edgefleet",
        "systemctl daemon-reload",
        "systemctl enable edgefleet-agent.service",
        "systemctl restart edgefleet-agent.service",
    ]


def test_installed_unit_is_the_hardened_one_from_the_repo(
    installed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = installed
    text = (root / "etc/systemd/system/edgefleet-agent.service").read_text()
    assert text == UNIT.read_text()
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert unit["Unit"]["After"] == "network-online.target"
    assert "Requires" not in unit["Unit"] and "BindsTo" not in unit["Unit"]
    service = unit["Service"]
    assert service["ExecStart"] == (
        "/opt/edgefleet/venv/bin/edgefleet agent --config /etc/edgefleet/agent.toml --data-dir /var/lib/edgefleet "
        "$EDGEFLEET_AGENT_OPTS"
    )
    assert "JOIN" not in service["ExecStart"]
    expected = {
        "User": "edgefleet",
        "Group": "edgefleet",
        "EnvironmentFile": "-/etc/edgefleet/agent.env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/edgefleet",
        "StateDirectory": "edgefleet",
        "StateDirectoryMode": "0700",
        "RestartPreventExitStatus": "2 3",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_agent_toml_loads_with_the_labels_and_trusted_key(
    installed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = installed
    config = load_config(root / "etc/edgefleet/agent.toml")
    assert config.data_dir == Path("/var/lib/edgefleet")
    assert config.labels == {"site": "berlin", "line/3": 'a "b"'}
    assert config.trusted_publisher_key_files == (Path("/etc/edgefleet/trust/release.key.pub"),)
    assert (root / "etc/edgefleet/trust/release.key.pub").read_text() == PUBLIC_KEY


def test_agent_env_holds_the_join_string_and_device_id(
    installed: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    root, _ = installed
    lines = [line for line in (root / "etc/edgefleet/agent.env").read_text().splitlines() if not line.startswith("#")]
    assert lines == [f"EDGEFLEET_JOIN={JOIN}", "EDGEFLEET_AGENT_OPTS=--device-id gw-001"]


def test_installed_edgefleet_runs_from_the_venv(installed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = installed  # -P: the current directory (this checkout) is not on sys.path
    venv = root / "opt/edgefleet/venv"
    result = subprocess.run(
        [str(venv / "bin/edgefleet"), "--help"], capture_output=True, text=True, env=_env(), timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "agent" in result.stdout
    where = subprocess.run(
        [
            str(venv / "bin/python"),
            "-P",
            "-c",
            "import agent, edgefleet; print(agent.__file__); print(edgefleet.__file__)",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=True,
    )
    for line in where.stdout.splitlines():
        assert Path(line).is_relative_to(venv), line


def test_rerun_is_idempotent_and_keeps_config_and_identity(tmp_path: Path, wheel: Path, trust_key: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    args = ["--join", JOIN, "--device-id", "gw-001", "--labels", 'site=berlin, line/3=a "b"', "--trust", str(trust_key)]
    assert _install(root, wheel, *args).returncode == 0
    before = _snapshot(root)
    again = _install(root, wheel, *args)
    assert again.returncode == 0, again.stderr
    assert "kept /etc/edgefleet/agent.toml" in again.stdout
    assert _snapshot(root) == before

    # Other labels are not written over a kept agent.toml, unless --force-config.
    kept = _install(root, wheel, "--labels", "site=paris")
    assert kept.returncode == 0
    assert "--force-config" in kept.stderr
    assert load_config(root / "etc/edgefleet/agent.toml").labels["site"] == "berlin"
    forced = _install(root, wheel, "--labels", "site=paris", "--force-config")
    assert forced.returncode == 0, forced.stderr
    config = load_config(root / "etc/edgefleet/agent.toml")
    assert config.labels == {"site": "paris"} and config.trusted_publisher_key_files == ()
    # Without --join, the join string already in agent.env is used.
    assert "using the join string in /etc/edgefleet/agent.env" in forced.stdout
    assert "systemctl restart edgefleet-agent.service" in _would_run(forced)

    # A device that has joined keeps its identity and agent.env; a new join string is not used.
    identity = root / "var/lib/edgefleet/identity"
    identity.mkdir(mode=0o700)
    (identity / "identity.json").write_text('{"device_id": "gw-001"}')
    env_before = (root / "etc/edgefleet/agent.env").read_bytes()
    rejoin = _install(root, wheel, "--join", "efjoin1.other")
    assert rejoin.returncode == 0, rejoin.stderr
    assert "already joined as gw-001" in rejoin.stdout
    assert "not used" in rejoin.stderr
    assert (root / "etc/edgefleet/agent.env").read_bytes() == env_before
    assert (identity / "identity.json").read_text() == '{"device_id": "gw-001"}'
    assert "systemctl restart edgefleet-agent.service" in _would_run(rejoin)


def test_without_a_join_string_it_is_enabled_not_started_and_uninstall_keeps_identity(
    tmp_path: Path, wheel: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = _install(root, wheel)
    assert result.returncode == 0, result.stderr
    assert "not started: no join string" in result.stdout
    assert _would_run(result)[-1] == "systemctl enable edgefleet-agent.service"
    assert set(_tree(root)) == set(EXPECTED) - {
        "etc/edgefleet/agent.env",
        "etc/edgefleet/trust",
        "etc/edgefleet/trust/release.key.pub",
    }
    assert load_config(root / "etc/edgefleet/agent.toml").labels == {}
    identity = root / "var/lib/edgefleet/identity"
    identity.mkdir()
    (identity / "device.key").write_text("secret")

    removed = _run(UNINSTALL, "--root", str(root))
    assert removed.returncode == 0, removed.stderr
    assert _would_run(removed) == ["systemctl disable --now edgefleet-agent.service", "systemctl daemon-reload"]
    assert set(_tree(root)) == {
        "etc",
        "etc/edgefleet",
        "etc/edgefleet/agent.toml",
        "etc/systemd",
        "etc/systemd/system",
        "opt",
        "var",
        "var/lib",
        "var/lib/edgefleet",
        "var/lib/edgefleet/identity",
        "var/lib/edgefleet/identity/device.key",
    }
    assert (identity / "device.key").read_text() == "secret"

    again = _run(UNINSTALL, "--root", str(root))  # nothing left to remove: still fine
    assert again.returncode == 0, again.stderr

    purged = _run(UNINSTALL, "--root", str(root), "--purge")
    assert purged.returncode == 0, purged.stderr
    assert _would_run(purged)[-1] == "userdel edgefleet"
    assert set(_tree(root)) == {"etc", "etc/systemd", "etc/systemd/system", "opt", "var", "var/lib"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--root"], "--root needs a value"),
        (["--root", "relative/dir"], "absolute path"),
        (["--root", "/nonexistent/edgefleet-root"], "not a directory"),
        (["--join"], "--join needs a value"),
        (["--join", "--no-start"], "--join needs a value"),
        (["--join", "hello"], "efjoin1."),
        (["--join", JOIN, "--device-id", "Docs/GW"], "device id 'Docs/GW' is invalid"),
        (["--join", JOIN, "--device-id", "edgefleet-controlplane"], "reserved"),
        (["--device-id", "gw-1"], "give --join too"),
        (["--labels", "Site=x"], "key 'Site'"),
        (["--labels", "a=1,a=2"], "given twice"),
        (["--labels", "a=1,,b=2"], "is not key=value"),
        (["--labels", "noequals"], "'noequals' is not key=value"),
        (["--trust", "/nonexistent/key.pub"], "not a readable file"),
        (["--join-timeout", "soon"], "whole number"),
        (["--no-start=yes"], "--no-start takes no value"),
    ],
)
def test_bad_install_options_are_one_line_errors_with_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", str(root), *args] if "--root" not in args else args
    _one_error(_run(INSTALL, *args), 2, fragment, "(see --help)")
    assert list(root.iterdir()) == []


def test_a_private_key_is_refused_as_trust(tmp_path: Path) -> None:
    key = tmp_path / "release.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    (tmp_path / "root").mkdir()
    _one_error(_run(INSTALL, "--root", str(tmp_path / "root"), "--trust", str(key)), 2, "is a private key")


@pytest.mark.parametrize("args", [["--frobnicate"], ["--root"], ["--root", "rel"], ["--purge=1"]])
def test_bad_uninstall_options_are_one_line_errors_with_exit_2(args: list[str]) -> None:
    _one_error(_run(UNINSTALL, *args), 2, "(see --help)")


def _fake(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
    (bin_dir / name).chmod(0o755)


def test_installing_into_the_real_root_needs_root(tmp_path: Path) -> None:
    _fake(tmp_path / "bin", "id", "echo 1000")
    # --python points nowhere: should the check ever let this through, it stops before writing anything.
    result = _run(INSTALL, "--python", "/nonexistent/python3", fake_bin=tmp_path / "bin")
    _one_error(result, 1, "run as root")
    _one_error(_run(UNINSTALL, fake_bin=tmp_path / "bin"), 1, "run as root")


def test_32_bit_arm_warns_and_an_old_python_is_refused(tmp_path: Path) -> None:
    _fake(tmp_path / "bin", "uname", "echo armv7l")
    _fake(tmp_path / "bin", "python3", 'case "$*" in *version_info*) exit 1;; *) echo 3.9.2;; esac')
    (tmp_path / "root").mkdir()
    result = _run(INSTALL, "--root", str(tmp_path / "root"), fake_bin=tmp_path / "bin")
    assert result.returncode == 1
    warning, error = result.stderr.splitlines()
    assert warning.startswith("install.sh: warning: armv7l (32-bit ARM) is not supported: onnxruntime")
    assert error == "install.sh: error: python3 is Python 3.9.2; edgefleet needs 3.11 or newer (give --python PATH)"
    assert list((tmp_path / "root").iterdir()) == []


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_supported_architectures_do_not_warn(tmp_path: Path, machine: str) -> None:
    _fake(tmp_path / "bin", "uname", f"echo {machine}")
    (tmp_path / "root").mkdir()
    result = _run(
        INSTALL, "--root", str(tmp_path / "root"), "--python", "/nonexistent/python3", fake_bin=tmp_path / "bin"
    )
    _one_error(result, 1, "/nonexistent/python3 not found")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", str(INSTALL), str(UNINSTALL)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout
