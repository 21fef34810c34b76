"""What a device installs stays light: the agent and the CLI import without the server's store packages,
the agent never imports the control plane, and the committed stubs match the .proto files."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("sqlalchemy", "alembic", "psycopg", "grpc_health", "grpc_reflection", "yaml")


def test_agent_extra_pulls_no_server_only_package():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    agent = " ".join(extras["agent"]).lower()
    for name in ("sqlalchemy", "alembic", "psycopg", "grpcio-health", "grpcio-reflection", "pyyaml"):
        assert name not in agent


def test_agent_and_cli_import_with_server_packages_blocked():
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in SERVER_ONLY)
    code = f"import sys; {blocker}; import agent.daemon, agent.cli, edgefleet.cli; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_agent_package_never_imports_controlplane():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "agent").rglob("*.py")
        if any(
            line.lstrip().startswith(("from controlplane", "import controlplane"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_committed_stubs_match_the_proto_files():
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
