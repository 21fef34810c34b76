"""`edgefleet deploy`: make one build the desired model of its task on a device or a fleet.

Online devices are told at once; the others get it right after their next Welcome.
"""

from __future__ import annotations

from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from protos.edgefleet.v1 import admin_pb2
from protos.limits import check_name


def parse_build_ref(text: str) -> tuple[str, int, str]:
    """'kws:3' → ('kws', 3, ''), 'kws:3:int8' → ('kws', 3, 'int8'). Raises CliError."""
    parts = text.split(":")
    usage = f"{text!r} is not NAME:VERSION or NAME:VERSION:VARIANT with a version of 1 or more"
    if len(parts) not in (2, 3) or not parts[1].isdigit() or int(parts[1]) < 1:
        raise CliError(usage)
    if len(parts) == 3 and not parts[2]:
        raise CliError(usage)
    try:
        check_name("model name", parts[0])
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else ""


def deploy(
    build: Annotated[str, typer.Argument(help="NAME:VERSION or NAME:VERSION:VARIANT")],
    device: Annotated[str | None, typer.Option("--device", "-d", help="Deploy to this device")] = None,
    fleet: Annotated[str | None, typer.Option("--fleet", "-f", help="Deploy to every device of this fleet")] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Deploy a published build to one device or a whole fleet (no waves: see rollouts for that).

    Without a VARIANT the selector picks one per device, from its class's policy and the measured
    evidence (see `edgefleet models explain`); a device on which no variant complies gets nothing new.

    Example: edgefleet deploy kws:3:int8-dynamic --fleet lab
    """
    name, version, variant = parse_build_ref(build)
    if bool(device) == bool(fleet):
        raise CliError("name exactly one target: --device ID or --fleet FLEET")
    request = admin_pb2.DeployRequest(
        name=name, version=version, variant=variant, device_id=device or "", fleet=fleet or ""
    )
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.Deploy(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(
            [
                {
                    "device_id": a.device_id,
                    "name": a.model.name,
                    "version": a.model.version,
                    "variant": a.model.variant,
                    "manifest_sha256": a.model.manifest_sha256,
                    "generation": a.generation,
                    "reason": a.reason,
                }
                for a in response.assignments
            ]
        )
        return
    for a in response.assignments:
        if not a.model.name:
            print(f"{a.device_id}: {a.reason}")
            continue
        print(
            f"{a.device_id}: {a.model.name}:{a.model.version}:{a.model.variant} generation {a.generation} ({a.reason})"
        )
