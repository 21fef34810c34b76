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
    advertise: Annotated[str, typer.Option("--advertise", help="Host name devices use to reach this server")] = "",
    artifact_rate: Annotated[
        int, typer.Option("--artifact-bytes-per-second", help="Cap each device download stream (0 = no cap)")
    ] = 0,
    device_advertise: Annotated[
        str, typer.Option("--device-advertise", help="HOST:PORT devices dial for sessions, when NAT maps the port")
    ] = "",
    tls_name: Annotated[list[str] | None, typer.Option("--tls-name", help="Extra name for the certificate")] = None,
    heartbeat_seconds: Annotated[int, typer.Option("--heartbeat-seconds", help="Agent heartbeat interval")] = 10,
    ready_file: Annotated[
        Path | None, typer.Option("--ready-file", help="Write 'API_PORT DEVICE_PORT PID' here when ready")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Run the control plane (embedded SQLite by default; PostgreSQL with --db).

    Example: edgefleet server --data-dir /var/lib/edgefleet-server --advertise fleet.example.com
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
            advertise_host=advertise,
            device_advertise=device_advertise,
            artifact_bytes_per_second=artifact_rate,
            extra_tls_names=tuple(tls_name or ()),
            heartbeat_interval_seconds=heartbeat_seconds,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"invalid server option {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    try:
        asyncio.run(serve(config, ready_file=ready_file))
    except (DataDirError, StoreError, ValueError) as exc:
        raise CliError(str(exc)) from exc
