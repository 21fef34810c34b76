"""`edgefleet telemetry`: latency per model, device health and lifecycle events."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt, parse_duration
from protos.edgefleet.v1 import admin_pb2, common_pb2

app = typer.Typer(help="Telemetry: latency per model, device health, lifecycle events.", no_args_is_help=True)

SinceOpt = Annotated[str, typer.Option("--since", help="How far back: 90s, 15m, 1h, 2d (at most 30d)")]
_GROUPS = ("variant", "version", "class", "device")


@app.command("latency")
def latency(
    model: Annotated[str | None, typer.Option("--model", help="Only this model")] = None,
    version: Annotated[int | None, typer.Option("--version", help="Only this version of the model")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Group by variant, version, class or device")] = None,
    since: SinceOpt = "1h",
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Requests, errors and latency percentiles per model from the devices' telemetry.

    Example: edgefleet telemetry latency --model intent --by variant --since 6h
    """
    if by is not None and by not in _GROUPS:
        raise CliError(f"--by must be one of {', '.join(_GROUPS)}, not {by!r}")
    request = admin_pb2.QueryLatencyRequest(
        model=model or "", version=version or 0, device_id=device or "", by=by or "", since_seconds=_since(since)
    )
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.QueryLatency(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json([output.message_dict(r) for r in response.rows])
        return
    keys = sorted({k for r in response.rows for k in r.key}, key=lambda k: (k != "model", k))
    rows = [
        [
            *(r.key.get(k, "-") or "-" for k in keys),
            str(r.requests),
            str(r.errors),
            *(f"{ms:.2f} ms" if r.requests > r.errors else "-" for ms in (r.p50_ms, r.p95_ms, r.p99_ms)),
            f"{r.mean_confidence:.3f}" if r.requests > r.errors else "-",
        ]
        for r in response.rows
    ]
    columns = [k.upper() for k in keys] + ["REQUESTS", "ERRORS", "P50", "P95", "P99", "MEAN CONFIDENCE"]
    output.stdout().print(output.table(f"latency, last {since}", columns, rows))
    if not rows:
        output.stderr().print("no telemetry in this window")


@app.command("health")
def health(
    fleet: Annotated[str | None, typer.Option("--fleet", "-f", help="Only devices of this fleet")] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Each device: online, last seen, its newest resource sample and the models it runs.

    Example: edgefleet telemetry health --fleet lab
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.QueryHealth(
            admin_pb2.QueryHealthRequest(fleet=fleet or ""), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json([output.message_dict(r) for r in response.rows])
        return
    rows = [
        [
            r.device_id,
            "[green]online[/]" if r.online else "[red]offline[/]",
            output.ago(r.last_seen, r.HasField("last_seen")),
            f"{r.cpu_percent:.0f} %",
            f"{r.rss_bytes / 2**20:.0f} MiB" if r.rss_bytes else "-",
            output.gib(r.memory_available_bytes),
            _celsius(r.temperature_celsius),
            ", ".join(model_ref(m) for m in r.active) or "-",
        ]
        for r in response.rows
    ]
    columns = ["DEVICE", "STATE", "LAST SEEN", "CPU", "AGENT RSS", "MEM AVAILABLE", "TEMP", "ACTIVE"]
    output.stdout().print(output.table(None, columns, rows))


@app.command("events")
def events(
    device: Annotated[str | None, typer.Option("--device", help="Only this device")] = None,
    since: SinceOpt = "1h",
    limit: Annotated[int, typer.Option("--limit", help="At most this many, the newest (1-1000)")] = 100,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Lifecycle events the devices reported (downloads, activations, rollbacks...), oldest first.

    Example: edgefleet telemetry events --device gw-001 --since 1d
    """
    if not 1 <= limit <= 1000:
        raise CliError(f"--limit must be between 1 and 1000, not {limit}")
    request = admin_pb2.QueryEventsRequest(device_id=device or "", since_seconds=_since(since), limit=limit)
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.QueryEvents(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json([output.message_dict(r) for r in response.rows])
        return
    rows = [
        [
            output.local_time(r.event.at, r.event.HasField("at")),
            r.device_id,
            common_pb2.LifecycleEvent.Kind.Name(r.event.kind).lower(),
            model_ref(r.event.model) if r.event.model.name else "-",
            str(r.event.generation or "-"),
            r.event.reason or "-",
        ]
        for r in response.rows
    ]
    columns = ["TIME", "DEVICE", "EVENT", "MODEL", "GENERATION", "REASON"]
    output.stdout().print(output.table(None, columns, rows))


def model_ref(ref: common_pb2.ModelRef) -> str:
    """'intent v3 (int8-dynamic)', or 'intent v3' without a variant."""
    text = f"{ref.name} v{ref.version}"
    return f"{text} ({ref.variant})" if ref.variant else text


def _celsius(value: float) -> str:
    # NaN: the OS does not expose a temperature; 0: no sample yet.
    return "-" if math.isnan(value) or not value else f"{value:.0f} °C"


def _since(text: str) -> int:
    seconds = parse_duration(text)
    if not 1 <= seconds <= 30 * 86400:
        raise CliError(f"--since must be between 1s and 30d, not {text!r}")
    return seconds
