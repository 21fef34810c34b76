"""`edgefleet server`: run the control plane."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli.errors import CliError


def server(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="CA, tokens, SQLite database")] = Path(
        ".edgefleet/server"
    ),
    db: Annotated[
        str, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db (default: SQLite in --data-dir)")
    ] = "",
    listen: Annotated[str, typer.Option("--listen", help="Address to listen on")] = "0.0.0.0",
    api_port: Annotated[int, typer.Option("--api-port", help="Operator API and enrollment (TLS); 0 = any")] = 7443,
    device_port: Annotated[int, typer.Option("--device-port", help="Device sessions (mutual TLS); 0 = any")] = 7444,
    artifact_port: Annotated[
        int,
        typer.Option(
            "--artifact-port",
            help="Artifact downloads over HTTPS (mutual TLS), on the host devices dial; 0 = any, -1 = off "
            "(devices then fetch over the device port)",
        ),
    ] = 7445,
    advertise: Annotated[str, typer.Option("--advertise", help="Host name devices use to reach this server")] = "",
    artifact_rate: Annotated[
        int, typer.Option("--artifact-bytes-per-second", help="Cap each device download stream (0 = no cap)")
    ] = 0,
    device_advertise: Annotated[
        str, typer.Option("--device-advertise", help="HOST:PORT devices dial for sessions, when NAT maps the port")
    ] = "",
    tls_name: Annotated[list[str] | None, typer.Option("--tls-name", help="Extra name for the certificate")] = None,
    heartbeat_seconds: Annotated[int, typer.Option("--heartbeat-seconds", help="Agent heartbeat interval")] = 10,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", help="Serve Prometheus metrics on this port of --listen, e.g. 9464 (default: off)"
        ),
    ] = None,
    rollup_interval: Annotated[
        float, typer.Option("--rollup-interval-seconds", help="How often old telemetry is rolled up and expired")
    ] = 300.0,
    minute_retention: Annotated[
        int, typer.Option("--minute-retention-days", help="Keep per-minute model telemetry this long, then hourly")
    ] = 7,
    hour_retention: Annotated[
        int, typer.Option("--hour-retention-days", help="Keep hourly model telemetry this long")
    ] = 90,
    event_retention: Annotated[
        int, typer.Option("--event-retention-days", help="Keep device lifecycle events this long")
    ] = 30,
    resource_retention: Annotated[
        int, typer.Option("--resource-retention-days", help="Keep device resource samples this long")
    ] = 7,
    benchmark_runs: Annotated[
        int, typer.Option("--benchmark-runs", help="Timed inferences per benchmark job on a device (5-1000)")
    ] = 50,
    rollout_tick: Annotated[
        float, typer.Option("--rollout-tick-seconds", help="How often rollout controllers check their devices")
    ] = 2.0,
    rollout_remeasure: Annotated[
        float,
        typer.Option("--rollout-remeasure-seconds", help="A gate short of data measures again after this long"),
    ] = 60.0,
    mqtt: Annotated[
        str,
        typer.Option("--mqtt", help="Also serve devices over this MQTT 5 broker: mqtt[s]://[user:pass@]host[:port]"),
    ] = "",
    mqtt_device_url: Annotated[
        str,
        typer.Option("--mqtt-device-url", help="Broker URL given to devices at join (default: --mqtt without user)"),
    ] = "",
    mqtt_provision_devices: Annotated[
        bool,
        typer.Option(
            "--mqtt-provision-devices",
            help="Give each device its own broker account at join (Mosquitto dynamic security; see deploy/mosquitto)",
        ),
    ] = False,
    mqtt_ca: Annotated[
        Path | None,
        typer.Option(
            "--mqtt-ca",
            help="CA file (PEM) the mqtts:// broker's certificate must chain to "
            "(default: the edgefleet CA or the system's CAs)",
        ),
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(
            "--ready-file", help="Write 'API_PORT DEVICE_PORT PID ARTIFACT_PORT' here when ready (0 = no HTTPS port)"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Run the control plane (embedded SQLite by default; PostgreSQL with --db).

    Example: edgefleet server --data-dir /var/lib/edgefleet-server --advertise fleet.example.com --metrics-port 9464
    """
    from pydantic import ValidationError

    from controlplane.config import ServerConfig
    from controlplane.errors import DataDirError
    from controlplane.server import serve
    from controlplane.store.errors import StoreError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig(
            data_dir=data_dir,
            db_url=db,
            listen_host=listen,
            api_port=api_port,
            device_port=device_port,
            artifact_port=None if artifact_port == -1 else artifact_port,
            advertise_host=advertise,
            device_advertise=device_advertise,
            artifact_bytes_per_second=artifact_rate,
            extra_tls_names=tuple(tls_name or ()),
            heartbeat_interval_seconds=heartbeat_seconds,
            metrics_port=metrics_port,
            rollup_interval_seconds=rollup_interval,
            minute_retention_days=minute_retention,
            hour_retention_days=hour_retention,
            event_retention_days=event_retention,
            resource_retention_days=resource_retention,
            benchmark_runs=benchmark_runs,
            rollout_tick_seconds=rollout_tick,
            rollout_remeasure_seconds=rollout_remeasure,
            mqtt_url=mqtt,
            mqtt_device_url=mqtt_device_url,
            mqtt_provision_devices=mqtt_provision_devices,
            mqtt_ca_file=mqtt_ca,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "combination"
        message = first["msg"].removeprefix("Value error, ")
        raise CliError(f"invalid server option {where}: {message}") from exc
    try:
        asyncio.run(serve(config, ready_file=ready_file))
    except (DataDirError, StoreError, ValueError) as exc:
        raise CliError(str(exc)) from exc
