"""The `edgefleet` command: operator commands, `server` and `agent` in one tool.

Errors are one line on stderr and a non-zero exit; `--debug` (anywhere on
the command line) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

# gRPC's C core prints its own diagnostics on stderr; errors here are one line unless --debug.
if "--debug" not in sys.argv:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import typer  # noqa: E402

from agent.cli import AgentExit, agent  # noqa: E402
from agent.infer_cli import InferError  # noqa: E402
from agent.infer_cli import app as infer_app  # noqa: E402
from controlplane.cli import classes, devices, keys, models, operators, rollouts, telemetry, tokens  # noqa: E402
from controlplane.cli.deploy import deploy  # noqa: E402
from controlplane.cli.errors import CliError  # noqa: E402
from controlplane.cli.server_cmd import server  # noqa: E402

app = typer.Typer(
    name="edgefleet",
    help="Run ML models on fleets of edge devices: control plane, agent and operator commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(devices.app, name="devices")
app.add_typer(classes.app, name="classes")
app.add_typer(tokens.app, name="tokens")
app.add_typer(operators.app, name="operators")
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="models")
app.add_typer(telemetry.app, name="telemetry")
app.add_typer(rollouts.app, name="rollouts")
app.add_typer(infer_app, name="infer")
app.command("deploy")(deploy)
app.command("server")(server)
app.command("agent")(agent)


@app.callback(epilog="Add --debug anywhere to see a traceback instead of a one-line error.")
def root() -> None:
    """edgefleet: measured model builds for every device class."""


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code (used by main and by tests)."""
    import grpc

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]  # accepted anywhere on the line
    try:
        # Standalone mode prints usage errors itself and ends with SystemExit.
        app(args=argv, prog_name="edgefleet")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else _fail(str(exc.code), 1))
    except (CliError, InferError) as exc:
        if debug:
            raise
        return _fail(str(exc), 2)
    except AgentExit as exc:
        if debug:
            raise
        return _fail(str(exc), exc.code)
    except grpc.RpcError as exc:
        if debug:
            raise
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"control plane unavailable ({details})"
        return _fail(f"{details} [{code.name if code else 'UNKNOWN'}]", 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for a CLI
        if debug:
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 70)


def main() -> None:
    sys.exit(run())
