"""`edgefleet classes`: apply a class file, list the classes, show one.

A class file lists device classes in matching order: each has match rules over the facts devices
report and a policy (latency budgets per task, memory budget, accuracy drop, slice gap, objective).
The server validates the whole file first; an invalid file is rejected with its line and nothing
changes. See docs/OPERATOR.md ("Device classes").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from protos.edgefleet.v1 import admin_pb2

app = typer.Typer(
    help="Device classes: match rules over device facts, and the policy each class runs by.", no_args_is_help=True
)

MAX_FILE_BYTES = 256 * 1024


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CliError(f"{path} is {size} bytes; a class file may be at most {MAX_FILE_BYTES // 1024} KiB")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read class file {path}: {exc}") from exc


def describe_rules(c: admin_pb2.DeviceClass) -> str:
    return " and ".join(f"{r.fact} {r.op} {','.join(r.values)}" for r in c.match) or "(every device)"


def describe_policy(p: admin_pb2.ClassPolicy) -> str:
    parts = [p.objective or "most-accurate"]
    parts += [f"{b.task} p95 <= {b.latency_p95_ms:g} ms" for b in p.latency_budgets]
    if p.model_memory_budget_bytes:
        parts.append(f"memory <= {output.human_size(p.model_memory_budget_bytes)}")
    if p.max_accuracy_drop >= 0:
        parts.append(f"accuracy drop <= {p.max_accuracy_drop:g}")
    if p.max_slice_gap >= 0:
        parts.append(f"slice gap <= {p.max_slice_gap:g}")
    return "; ".join(parts)


def _print_classes(classes) -> None:
    rows = [
        [c.name, str(c.device_count), describe_rules(c), describe_policy(c.policy), ", ".join(c.overlaps_with) or "-"]
        for c in classes
    ]
    output.stdout().print(output.table(None, ["CLASS", "DEVICES", "MATCH", "POLICY", "OVERLAPS"], rows))


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="Class file (YAML)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and show the result; change nothing")] = False,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Replace the device classes with those in FILE and re-classify every device.

    Example: edgefleet classes apply deploy/classes.example.yaml --dry-run
    """
    text = _read(file)
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.ApplyClasses(
            admin_pb2.ApplyClassesRequest(yaml=text, dry_run=dry_run), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json(output.message_dict(response))
        return
    _print_classes(response.classes)
    for warning in response.warnings:
        output.stderr().print(f"[yellow]warning:[/] {warning}")
    verb = "would change" if dry_run else "changed"
    output.stderr().print(f"{len(response.classes)} class(es); {response.devices_reclassified} device(s) {verb} class")


@app.command("list")
def list_classes(json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None) -> None:
    """List the device classes in matching order (first match wins), with their device counts.

    Example: edgefleet classes list
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.ListClasses(admin_pb2.ListClassesRequest(), metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json([output.message_dict(c) for c in response.classes])
        return
    _print_classes(response.classes)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Class name")],
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Show one class: its rules and policy.

    Example: edgefleet classes show vehicle-arm-1g
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        c = stub.GetClass(admin_pb2.GetClassRequest(name=name), metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(output.message_dict(c))
        return
    p = c.policy
    rows = [
        ["priority", str(c.priority)],
        ["devices", str(c.device_count)],
        ["match", describe_rules(c)],
        ["objective", p.objective or "most-accurate"],
        *[[f"latency p95 budget {b.task}", f"{b.latency_p95_ms:g} ms"] for b in p.latency_budgets],
        ["model memory budget", output.human_size(p.model_memory_budget_bytes) if p.model_memory_budget_bytes else "-"],
        ["max accuracy drop", f"{p.max_accuracy_drop:g}" if p.max_accuracy_drop >= 0 else "-"],
        ["max slice gap", f"{p.max_slice_gap:g}" if p.max_slice_gap >= 0 else "-"],
        ["benchmark sample", f"{p.benchmark_sample_size} device(s)"],
    ]
    output.stdout().print(output.table(c.name, ["FIELD", "VALUE"], rows))
