"""`edgefleet operators`: operator tokens and their roles (admin only)."""

from __future__ import annotations

from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from protos.edgefleet.v1 import admin_pb2

app = typer.Typer(
    help="Operator tokens: viewer reads, operator changes the fleet, admin manages tokens.", no_args_is_help=True
)

_ROLES = {"viewer": admin_pb2.VIEWER, "operator": admin_pb2.OPERATOR, "admin": admin_pb2.ADMIN}


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Who the token is for")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator or admin")] = "viewer",
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Create an operator token; it is printed once.

    Example: edgefleet operators create alice --role operator
    """
    if role not in _ROLES:
        raise CliError(f"role {role!r} is unknown: use viewer, operator or admin")
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.CreateOperatorToken(
            admin_pb2.CreateOperatorTokenRequest(name=name, role=_ROLES[role]),
            metadata=meta,
            timeout=RPC_TIMEOUT_SECONDS,
        )
    if json:
        output.emit_json(response)
        return
    print(response.token)
    output.stderr().print(f"token for {name} ({role}); it is shown only this once")


@app.command("list")
def list_tokens(json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None) -> None:
    """List operator tokens (never the secrets).

    Example: edgefleet operators list --json
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.ListOperatorTokens(
            admin_pb2.ListOperatorTokensRequest(), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json([output.message_dict(t) for t in response.tokens])
        return
    rows = [
        [
            t.name,
            admin_pb2.Role.Name(t.role).lower(),
            output.local_time(t.created_at),
            output.local_time(t.revoked_at, t.HasField("revoked_at")),
        ]
        for t in response.tokens
    ]
    output.stdout().print(output.table(None, ["NAME", "ROLE", "CREATED", "REVOKED"], rows))


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="Token name")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Revoke an operator token.

    Example: edgefleet operators revoke alice
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        stub.RevokeOperatorToken(
            admin_pb2.RevokeOperatorTokenRequest(name=name), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    output.stderr().print(f"revoked operator token {name}")
