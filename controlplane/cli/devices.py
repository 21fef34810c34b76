"""`edgefleet devices`: list, show and revoke enrolled devices."""

from __future__ import annotations

from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from controlplane.cli.telemetry import model_ref
from protos.edgefleet.v1 import admin_pb2, agent_pb2

app = typer.Typer(help="Enrolled devices: list, inspect, revoke.", no_args_is_help=True)


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
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Show one device: identity, state, facts.

    Example: edgefleet devices show gw-001
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
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
    """'committed, generation 4', with the failure reason if any; '-' before the first status report."""
    if not d.HasField("status"):
        return "-"
    text = f"{agent_pb2.ReconcilePhase.Name(d.status.phase).lower()}, generation {d.status.generation}"
    return f"{text}: {d.status.failure_reason}" if d.status.failure_reason else text


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
