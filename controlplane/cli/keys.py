"""`edgefleet keys`: publisher keys that sign model bundles.

A publisher key is made and kept by the operator, ideally offline; the control plane only
learns its public half (`keys register`) and stores builds that key signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from protos.bundle_io import load_public_key, write_key_pair
from protos.bundles import BundleError
from protos.edgefleet.v1 import admin_pb2

app = typer.Typer(help="Publisher keys: create one, register its public half, list them.", no_args_is_help=True)


@app.command("create")
def create(
    out: Annotated[Path, typer.Option("--out", help="Private key file to write (and OUT.pub beside it)")],
) -> None:
    """Create an ed25519 publisher key pair and print its key id. Nothing is sent to the server.

    Example: edgefleet keys create --out ~/keys/release.key
    then: edgefleet keys register ~/keys/release.key.pub --name release
    """
    try:
        key = write_key_pair(out)
    except BundleError as exc:
        raise CliError(str(exc)) from exc
    print(key)
    output.stderr().print(
        f"wrote {out} (private, mode 0600: keep it safe, ideally offline) and {out}.pub\n"
        f"register it with: edgefleet keys register {out}.pub --name NAME"
    )


@app.command("register")
def register(
    public_key: Annotated[Path, typer.Argument(help="The public key file (KEYFILE.pub from `keys create`)")],
    name: Annotated[str, typer.Option("--name", help="A name for the key, e.g. who or what publishes with it")],
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Register a publisher key: the server then accepts bundles it signed. Prints the key id.

    Example: edgefleet keys register ~/keys/release.key.pub --name release
    """
    try:
        raw = load_public_key(public_key)
    except BundleError as exc:
        raise CliError(str(exc)) from exc
    with admin(resolve(server, token, ca)) as (stub, meta):
        key = stub.AddPublisherKey(
            admin_pb2.AddPublisherKeyRequest(public_key=raw, name=name), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json(_key_dict(key))
        return
    print(key.key_id)
    output.stderr().print(f"publisher key [bold]{key.name}[/] registered")


@app.command("list")
def list_keys(json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None) -> None:
    """List registered publisher keys.

    Example: edgefleet keys list --json
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.ListPublisherKeys(
            admin_pb2.ListPublisherKeysRequest(), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json([_key_dict(k) for k in response.keys])
        return
    rows = [[k.name, k.key_id, output.local_time(k.added_at, k.HasField("added_at"))] for k in response.keys]
    output.stdout().print(output.table(None, ["NAME", "KEY ID", "ADDED"], rows))
    if not rows:
        output.stderr().print("no publisher keys yet: `edgefleet keys create --out FILE`, then `keys register`")


def _key_dict(key: admin_pb2.PublisherKey) -> dict:
    """JSON for a key, with the public key as hex (not protobuf's base64)."""
    data = output.message_dict(key)
    data["public_key"] = key.public_key.hex()
    return data
