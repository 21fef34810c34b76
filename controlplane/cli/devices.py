"""`edgefleet devices`: list, show (or watch) and revoke enrolled devices."""

from __future__ import annotations

import json as jsonlib
import sys
import time
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from controlplane.cli.telemetry import model_ref
from protos.edgefleet.v1 import admin_pb2, agent_pb2

app = typer.Typer(help="Enrolled devices: list, inspect, revoke.", no_args_is_help=True)

MIN_WATCH_INTERVAL = 0.2
_SETTLED = (agent_pb2.IDLE, agent_pb2.COMMITTED, agent_pb2.FAILED)


@app.command("list")
def list_devices(
    fleet: Annotated[str | None, typer.Option("--fleet", "-f", help="Only devices of this fleet")] = None,
    device_class: Annotated[str | None, typer.Option("--class", "-c", help="Only devices of this class")] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """List devices with their state, class and hardware.

    Example: edgefleet devices list --fleet lab --json
    """
    devices: list[admin_pb2.Device] = []
    with admin(resolve(server, token, ca)) as (stub, meta):
        page_token = ""
        while True:
            response = stub.ListDevices(
                admin_pb2.ListDevicesRequest(fleet=fleet or "", device_class=device_class or "", page_token=page_token),
                metadata=meta,
                timeout=RPC_TIMEOUT_SECONDS,
            )
            devices.extend(response.devices)
            page_token = response.next_page_token
            if not page_token:
                break
    if json:
        output.emit_json([output.message_dict(d) for d in devices])
        return
    rows = [
        [
            d.device_id,
            d.fleet,
            "[green]online[/]" if d.online else "[red]offline[/]" if not d.HasField("revoked_at") else "revoked",
            output.ago(d.last_seen, d.HasField("last_seen")),
            d.device_class or "-",
            d.facts.architecture or "-",
            str(d.facts.cpu_cores or "-"),
            output.gib(d.facts.memory_total_bytes),
            d.facts.onnxruntime_version or "-",
            ", ".join(f"{a.model.name}:{a.model.version}:{a.model.variant}" for a in d.active) or "-",
        ]
        for d in devices
    ]
    columns = ["DEVICE", "FLEET", "STATE", "LAST SEEN", "CLASS", "ARCH", "CORES", "RAM", "ONNXRUNTIME", "SERVING"]
    output.stdout().print(output.table(None, columns, rows))
    if not rows and not fleet:
        output.stderr().print("no devices yet: create a join string with `edgefleet tokens create --fleet NAME`")


@app.command("show")
def show(
    device_id: Annotated[str, typer.Argument(help="Device id")],
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="Follow the reconcile phase and download progress (Ctrl-C to stop)"),
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch")] = 1.0,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Show one device: identity, state, facts.

    While the device downloads a build, the reconcile row shows the progress
    ("downloading 12.3 of 40.0 MiB (31%), generation 4"). With --watch a progress bar follows the
    phase and the download until the device has settled (idle, committed or failed) on its desired
    generation; with --json too, each refresh is one JSON object on its own line.

    Example: edgefleet devices show gw-001 --watch
    """
    if watch and not interval >= MIN_WATCH_INTERVAL:
        raise CliError(f"--interval must be at least {MIN_WATCH_INTERVAL} seconds")
    conn = resolve(server, token, ca)
    if watch:
        _watch(conn, device_id, interval, json)
        return
    with admin(conn) as (stub, meta):
        d = stub.GetDevice(admin_pb2.GetDeviceRequest(device_id=device_id), metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(d)
        return
    f = d.facts
    state = "revoked" if d.HasField("revoked_at") else "online" if d.online else "offline"
    rows = [
        ["device", d.device_id],
        ["fleet", d.fleet],
        ["state", state],
        [
            "last seen",
            f"{output.local_time(d.last_seen, d.HasField('last_seen'))} "
            f"({output.ago(d.last_seen, d.HasField('last_seen'))})",
        ],
        ["enrolled", output.local_time(d.enrolled_at, d.HasField("enrolled_at"))],
        ["revoked", output.local_time(d.revoked_at, d.HasField("revoked_at"))],
        ["labels", ", ".join(f"{k}={v}" for k, v in sorted(d.labels.items())) or "-"],
        ["certificate sha256", d.certificate_sha256],
        ["agent", d.agent_version or "-"],
        ["desired generation", str(d.desired_generation)],
        ["reconcile", _reconcile(d)],
        ["active models", ", ".join(f"{model_ref(a.model)}" for a in d.active) or "-"],
        ["architecture", f.architecture or "-"],
        ["cpu", f"{f.cpu_model or '-'} ({f.cpu_cores} cores)"],
        ["cpu flags (ML)", ", ".join(x for x in f.cpu_flags if x in _ML_FLAGS) or "-"],
        ["memory", f"{output.gib(f.memory_total_bytes)} total, {output.gib(f.memory_available_bytes)} available"],
        ["disk free", output.gib(f.disk_free_bytes)],
        ["os", f.os or "-"],
        ["onnxruntime", f"{f.onnxruntime_version or '-'} ({', '.join(f.execution_providers) or '-'})"],
        ["device labels", ", ".join(f"{k}={v}" for k, v in sorted(f.labels.items())) or "-"],
        ["simulated facts", ", ".join(f.simulated_fields) if f.simulated else "no"],
    ]
    output.stdout().print(output.table(f"device {d.device_id}", ["FIELD", "VALUE"], rows))


def _reconcile(d: admin_pb2.Device) -> str:
    """'committed, generation 4', with the failure reason if any, or 'downloading 12.3 of 40.0 MiB (31%),
    generation 4' while a download reports progress; '-' before the first status report."""
    if not d.HasField("status"):
        return "-"
    text = f"{_phase(d.status)}, generation {d.status.generation}"
    return f"{text}: {d.status.failure_reason}" if d.status.failure_reason else text


def _phase(status: agent_pb2.StatusReport) -> str:
    """The phase in lower case; while downloading with progress, 'downloading 12.3 of 40.0 MiB (31%)'."""
    phase = agent_pb2.ReconcilePhase.Name(status.phase).lower()
    if status.phase != agent_pb2.DOWNLOADING or not status.bytes_total:
        return phase
    done = min(status.bytes_downloaded, status.bytes_total)
    mib = 2**20
    percent = round(100 * done / status.bytes_total)
    percent = min(percent, 99) if done < status.bytes_total else percent  # 100% only when complete
    return f"downloading {done / mib:.1f} of {status.bytes_total / mib:.1f} MiB ({percent}%)"


def _settled(d: admin_pb2.Device) -> bool:
    """The device reported a settled phase for (at least) its desired generation."""
    return d.HasField("status") and d.status.phase in _SETTLED and d.status.generation >= d.desired_generation


def _watch(conn, device_id: str, interval: float, json: bool) -> None:
    """Poll the device until it settles (see ``_settled``) or Ctrl-C; a progress bar on a terminal, else a
    line per change (or a JSON object per refresh with --json)."""
    request = admin_pb2.GetDeviceRequest(device_id=device_id)
    console = output.stdout()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        console=console,
        disable=json or not console.is_terminal,
    )
    task = bar.add_task(device_id, total=None)
    last_line = ""
    try:
        with admin(conn) as (stub, meta), bar:
            while True:
                d = stub.GetDevice(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
                line = f"{d.device_id}: {_reconcile(d)}"
                if json:
                    sys.stdout.write(jsonlib.dumps(output.message_dict(d), sort_keys=True) + "\n")
                    sys.stdout.flush()
                elif bar.disable:
                    if line != last_line:
                        console.print(line, highlight=False)
                else:
                    _update_bar(bar, task, d)
                last_line = line
                if _settled(d):
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        # Stopping the watch leaves the device working: not an error.
        sys.stderr.write("\n")
        return
    if not json and not bar.disable:
        console.print(last_line, highlight=False)


def _update_bar(bar: Progress, task, d: admin_pb2.Device) -> None:
    status = d.status
    phase = agent_pb2.ReconcilePhase.Name(status.phase).lower() if d.HasField("status") else "no status yet"
    description = f"{d.device_id} {phase}, generation {status.generation}"
    if status.phase == agent_pb2.DOWNLOADING and status.bytes_total:
        bar.update(task, description=description, completed=status.bytes_downloaded, total=status.bytes_total)
    elif _settled(d):
        bar.update(task, description=description, completed=1, total=1)
    else:
        bar.update(task, description=description, completed=0, total=None)


_ML_FLAGS = {
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "f16c",
    "fma",
    "neon",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "fp16",
    "sve",
    "amx_int8",
    "amx_bf16",
}


@app.command("revoke")
def revoke(
    device_id: Annotated[str, typer.Argument(help="Device id")],
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the revocation")] = "",
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Revoke a device: its open session is closed and every later call is refused.

    Example: edgefleet devices revoke gw-001 --reason "stolen vehicle"
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        d = stub.RevokeDevice(
            admin_pb2.RevokeDeviceRequest(device_id=device_id, reason=reason),
            metadata=meta,
            timeout=RPC_TIMEOUT_SECONDS,
        )
    if json:
        output.emit_json(d)
    else:
        output.stderr().print(f"revoked {d.device_id} at {output.local_time(d.revoked_at)}")
