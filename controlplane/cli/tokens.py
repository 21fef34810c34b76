"""`edgefleet tokens`: join strings for new devices."""

from __future__ import annotations

from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt, parse_duration, parse_labels
from protos.edgefleet.v1 import admin_pb2

app = typer.Typer(help="Join strings that let new devices enroll.", no_args_is_help=True)


@app.command("create")
def create(
    fleet: Annotated[str, typer.Option("--fleet", "-f", help="Fleet the device joins")],
    ttl: Annotated[str, typer.Option("--ttl", help="How long the join string stays valid: 90s, 15m, 1h, 2d")] = "1h",
    labels: Annotated[str | None, typer.Option("--labels", help="Labels for the device: k=v,k2=v2")] = None,
    trust: Annotated[
        list[str] | None,
        typer.Option("--trust", help="Publisher key (name or key id) the device will trust; repeatable"),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="HOST:PORT devices dial (default: the server's advertised address)")
    ] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Print a one-time join string for one device.

    Example: edgefleet tokens create --fleet lab --ttl 1h --labels site=berlin --trust release
    then on the device: edgefleet agent --join JOIN_STRING --data-dir /var/lib/edgefleet
    """
    request = admin_pb2.CreateJoinTokenRequest(
        fleet=fleet, ttl_seconds=parse_duration(ttl), labels=parse_labels(labels), server_address=address or ""
    )
    with admin(resolve(server, token, ca)) as (stub, meta):
        if trust:
            registered = stub.ListPublisherKeys(
                admin_pb2.ListPublisherKeysRequest(), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
            ).keys
            by_name = {k.name: k.key_id for k in registered} | {k.key_id: k.key_id for k in registered}
            unknown = [name for name in trust if name not in by_name]
            if unknown:
                raise CliError(f"publisher key(s) {', '.join(unknown)} are not registered (see `edgefleet keys list`)")
            request.publisher_key_ids.extend(dict.fromkeys(by_name[name] for name in trust))
        response = stub.CreateJoinToken(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(response)
        return
    print(response.join_string)
    output.stderr().print(
        f"one-time join string for fleet [bold]{fleet}[/], valid until {output.local_time(response.expires_at)}"
    )
