"""`edgefleet rollouts`: roll a build out to a fleet in waves, watch it, pause, resume, abort, roll back.

A rollout installs NAME:VERSION on a growing share of the fleet (the waves, cumulative percentages,
stratified by device class), bakes each wave, and compares the devices on the new build (canary)
with the others (control) before going on. A breached gate rolls back or pauses (``--on-breach``).
The selector picks the variant per device class, so a rollout names no variant.

Starting and controlling a rollout needs the operator role; listing and status need viewer.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time
from typing import Annotated

import typer

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.deploy import parse_build_ref
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt, parse_duration
from protos.edgefleet.v1 import admin_pb2
from protos.limits import check_labels, check_name

app = typer.Typer(
    help="Rollouts: a build to a fleet in waves, with health gates and automatic rollback.", no_args_is_help=True
)

TERMINAL_STATES = frozenset({"completed", "aborted", "rolled_back", "failed"})
ON_BREACH = ("rollback", "pause")
MAX_BAKE_SECONDS = 7 * 86400
MAX_STEP_TIMEOUT_SECONDS = 7 * 86400
MIN_WATCH_INTERVAL = 0.5


# --- parsing (pure; each raises CliError with a message the operator can act on) ---


def parse_rollout_ref(text: str) -> tuple[str, int]:
    """'kws:3' → ('kws', 3). A variant is refused: rollouts pick it per device class."""
    name, version, variant = parse_build_ref(text)
    if variant:
        raise CliError(
            f"{text!r} names variant {variant!r}: a rollout chooses the variant per device class "
            f"(see `edgefleet models explain`); pass {name}:{version}, or use `edgefleet deploy` for one variant"
        )
    return name, version


def parse_seconds(option: str, text: str, *, minimum: int = 0, maximum: int = MAX_BAKE_SECONDS) -> int:
    """'90', '90s', '5m', '2h' (or '1d') → seconds, within [minimum, maximum]."""
    try:
        seconds = parse_duration(text)
    except CliError as exc:
        raise CliError(f"{option}: {exc}") from exc
    if not minimum <= seconds <= maximum:
        raise CliError(
            f"{option} must be between {format_seconds(minimum)} and {format_seconds(maximum)}, not {text!r}"
        )
    return seconds


def parse_waves(text: str) -> list[int]:
    """'1,10,50,100' → [1, 10, 50, 100]: strictly increasing percentages in 1..100, ending at 100."""
    usage = "use strictly increasing percentages from 1 to 100 that end at 100, e.g. 1,10,50,100"
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise CliError(f"--waves {text!r} is not a comma-separated list of whole percentages: {usage}")
    waves = [int(part) for part in parts]
    if any(not 1 <= w <= 100 for w in waves):
        raise CliError(f"--waves {text!r}: every wave must be between 1 and 100 percent; {usage}")
    if any(b <= a for a, b in zip(waves, waves[1:], strict=False)):
        raise CliError(f"--waves {text!r} is not strictly increasing: {usage}")
    if waves[-1] != 100:
        raise CliError(f"--waves {text!r} must end at 100 so the whole fleet gets the build: {usage}")
    return waves


def parse_selector(items: list[str] | None) -> dict[str, str]:
    """['tier=edge', 'site=a'] → {'tier': 'edge', 'site': 'a'}: devices must carry every label."""
    selector: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise CliError(f"--selector {item!r} is not key=value (repeat --selector for more labels)")
        if key in selector and selector[key] != value:
            raise CliError(f"--selector names label {key!r} twice, as {selector[key]!r} and {value!r}")
        selector[key] = value
    try:
        return check_labels(selector)
    except ValueError as exc:
        raise CliError(f"--selector: {exc}") from exc


def _rate(option: str, value: float | None) -> float:
    # The contract reads 0 as "the server's default", so 0 cannot mean "none allowed".
    if value is None:
        return 0.0
    if not 0.0 < value <= 1.0:
        raise CliError(f"{option} must be above 0 and at most 1 (a fraction; 0 would mean the server's default)")
    return value


def build_gates(
    *,
    min_requests: int | None = None,
    min_devices: int | None = None,
    max_install_failure_rate: float | None = None,
    max_error_rate_increase: float | None = None,
    max_error_rate: float | None = None,
    max_latency_ratio: float | None = None,
    max_confidence_drop: float | None = None,
    max_low_confidence_rate: float | None = None,
    max_low_confidence_rate_increase: float | None = None,
    max_crashes: int | None = None,
    max_rollbacks: int | None = None,
    on_breach: str | None = None,
) -> admin_pb2.GateThresholds:
    """The gate thresholds to send; an option left out stays 0/empty, i.e. the server's default."""
    for option, count, low in (
        ("--min-requests", min_requests, 1),
        ("--min-devices", min_devices, 1),
        ("--max-crashes", max_crashes, 0),
        ("--max-rollbacks", max_rollbacks, 0),
    ):
        if count is not None and count < low:
            raise CliError(f"{option} must be a whole number of at least {low}")
    if max_latency_ratio is not None and not 1.0 <= max_latency_ratio < float("inf"):
        raise CliError("--max-latency-ratio must be at least 1 (1.5 = the canary's p95 may be 50% above the control's)")
    if on_breach is not None and on_breach not in ON_BREACH:
        raise CliError(f"--on-breach must be one of {', '.join(ON_BREACH)}, not {on_breach!r}")
    return admin_pb2.GateThresholds(
        min_requests=min_requests or 0,
        min_devices=min_devices or 0,
        max_install_failure_rate=_rate("--max-install-failure-rate", max_install_failure_rate),
        max_error_rate_increase=_rate("--max-error-rate-increase", max_error_rate_increase),
        max_error_rate=_rate("--max-error-rate", max_error_rate),
        max_latency_p95_ratio=max_latency_ratio or 0.0,
        max_confidence_drop=_rate("--max-confidence-drop", max_confidence_drop),
        max_low_confidence_rate=_rate("--max-low-confidence-rate", max_low_confidence_rate),
        max_low_confidence_rate_increase=_rate("--max-low-confidence-rate-increase", max_low_confidence_rate_increase),
        max_crashes=max_crashes or 0,
        max_rollbacks=max_rollbacks or 0,
        on_breach=on_breach or "",
    )


# --- rendering (pure: a Rollout message in, strings and rows out) ---


def format_seconds(seconds: int) -> str:
    """3600 → '1h', 300 → '5m', 90 → '90s', 0 → '0s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def model_label(r: admin_pb2.Rollout) -> str:
    return f"{r.model.name}:{r.model.version}" if r.model.name else "-"


def wave_label(r: admin_pb2.Rollout) -> str:
    """'2/4 (10%)': the current wave, 1-based, of how many, at what cumulative percentage.

    ``current_wave`` is read as a 0-based index into ``waves_percent`` (as the state machine keeps it).
    """
    if not r.waves_percent:
        return "-"
    index = min(r.current_wave, len(r.waves_percent) - 1)
    return f"{index + 1}/{len(r.waves_percent)} ({r.waves_percent[index]}%)"


def progress_totals(r: admin_pb2.Rollout) -> tuple[int, int]:
    """(updated, targeted) summed over every wave and class."""
    return sum(p.updated for p in r.progress), sum(p.targeted for p in r.progress)


def selector_label(selector) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(every device)"


def is_terminal(r: admin_pb2.Rollout) -> bool:
    return r.state in TERMINAL_STATES


def list_row(r: admin_pb2.Rollout) -> list[str]:
    updated, targeted = progress_totals(r)
    return [
        r.rollout_id,
        model_label(r),
        r.fleet,
        r.state,
        wave_label(r),
        f"{updated}/{targeted}",
        output.local_time(r.updated_at, r.HasField("updated_at")),
    ]


LIST_COLUMNS = ["ID", "MODEL", "FLEET", "STATE", "WAVE", "UPDATED/TARGETED", "UPDATED AT"]
PROGRESS_COLUMNS = ["WAVE", "%", "CLASS", "TARGETED", "UPDATED", "FAILED", "PENDING", "REVERTED"]
DECISION_COLUMNS = ["AT", "WAVE", "VERDICT", "REASONS"]


def header_rows(r: admin_pb2.Rollout) -> list[list[str]]:
    return [
        ["model", model_label(r)],
        ["fleet", r.fleet],
        ["state", r.state],
        ["wave", wave_label(r)],
        ["waves", ",".join(f"{w}%" for w in r.waves_percent) or "-"],
        ["reason", r.reason or "-"],
        ["selector", selector_label(r.selector)],
        ["bake", format_seconds(r.bake_seconds)],
        ["max parallel", str(r.max_parallel) if r.max_parallel else "no cap"],
        ["created", output.local_time(r.created_at, r.HasField("created_at"))],
        ["updated", output.local_time(r.updated_at, r.HasField("updated_at"))],
    ]


def progress_rows(r: admin_pb2.Rollout) -> list[list[str]]:
    """One row per wave and device class, in wave then class order (waves shown 1-based)."""
    ordered = sorted(r.progress, key=lambda p: (p.wave, p.device_class))
    return [
        [
            str(p.wave + 1),
            f"{p.percent}%",
            p.device_class or "-",
            str(p.targeted),
            str(p.updated),
            str(p.failed),
            str(p.pending),
            str(p.reverted),
        ]
        for p in ordered
    ]


def decision_rows(r: admin_pb2.Rollout) -> list[list[str]]:
    """One row per gate decision, oldest first; the reasons one per line."""
    return [
        [
            output.local_time(d.at, d.HasField("at")),
            str(d.wave + 1),
            d.verdict,
            "\n".join(d.reasons) or "-",
        ]
        for d in r.decisions
    ]


def summary_line(r: admin_pb2.Rollout) -> str:
    """'r-1: kws:3 to fleet lab: baking, wave 2/4 (10%), 3/40 updated (reason)'."""
    updated, targeted = progress_totals(r)
    text = f"{r.rollout_id}: {model_label(r)} to fleet {r.fleet}: {r.state}, wave {wave_label(r)}"
    text += f", {updated}/{targeted} updated"
    return f"{text} ({r.reason})" if r.reason else text


def _print_status(r: admin_pb2.Rollout) -> None:
    console = output.stdout()
    console.print(output.table(f"rollout {r.rollout_id}", ["FIELD", "VALUE"], header_rows(r)))
    if r.progress:
        console.print(output.table("progress", PROGRESS_COLUMNS, progress_rows(r)))
    else:
        console.print("progress: no device targeted yet")
    if r.decisions:
        console.print(output.table("gate decisions", DECISION_COLUMNS, decision_rows(r)))
    else:
        console.print("gate decisions: none yet")


# --- commands ---


@app.command("start")
def start(
    build: Annotated[str, typer.Argument(help="NAME:VERSION (no variant: the selector picks one per device class)")],
    fleet: Annotated[str, typer.Option("--fleet", "-f", help="Roll out to this fleet")],
    selector: Annotated[
        list[str] | None, typer.Option("--selector", "-l", help="Only devices with this label key=value (repeatable)")
    ] = None,
    waves: Annotated[
        str, typer.Option("--waves", help="Cumulative percentages of the fleet per wave, ending at 100")
    ] = "1,10,50,100",
    bake: Annotated[
        str | None, typer.Option("--bake", help="Bake each wave this long before its gate: 0, 90s, 5m, 2h")
    ] = None,
    max_parallel: Annotated[
        int, typer.Option("--max-parallel", min=0, help="At most this many devices installing at once (0 = no cap)")
    ] = 0,
    step_timeout: Annotated[
        str | None,
        typer.Option("--step-timeout", help="A device not on the new build this long after being told: failed [30m]"),
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option("--min-requests", help="Requests the canary needs before a gate is judged")
    ] = None,
    min_devices: Annotated[
        int | None, typer.Option("--min-devices", help="Canary devices reporting before a gate is judged")
    ] = None,
    max_install_failure_rate: Annotated[
        float | None, typer.Option("--max-install-failure-rate", help="Share of a wave's installs that may fail")
    ] = None,
    max_error_rate_increase: Annotated[
        float | None,
        typer.Option("--max-error-rate-increase", help="Canary error rate minus control's, absolute (0.02 = 2 points)"),
    ] = None,
    max_error_rate: Annotated[
        float | None, typer.Option("--max-error-rate", help="Absolute ceiling on the canary's error rate")
    ] = None,
    max_latency_ratio: Annotated[
        float | None, typer.Option("--max-latency-ratio", help="Canary p95 latency over control's (1.5 = +50%)")
    ] = None,
    max_confidence_drop: Annotated[
        float | None, typer.Option("--max-confidence-drop", help="Drop of mean confidence vs the control, absolute")
    ] = None,
    max_low_confidence_rate: Annotated[
        float | None, typer.Option("--max-low-confidence-rate", help="Absolute ceiling on the low-confidence share")
    ] = None,
    max_low_confidence_rate_increase: Annotated[
        float | None,
        typer.Option("--max-low-confidence-rate-increase", help="Low-confidence share above the control's, absolute"),
    ] = None,
    max_crashes: Annotated[
        int | None, typer.Option("--max-crashes", help="Agent crashes on canary devices allowed per wave")
    ] = None,
    max_rollbacks: Annotated[
        int | None, typer.Option("--max-rollbacks", help="Device-side rollbacks allowed per wave")
    ] = None,
    on_breach: Annotated[
        str | None, typer.Option("--on-breach", help="What a breached gate does: rollback (default) or pause")
    ] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Start a rollout of NAME:VERSION to a fleet, in waves, with health gates (operator role).

    Options left out take the server's defaults.

    Example: edgefleet rollouts start kws:3 --fleet lab --waves 10,50,100 --bake 5m --on-breach pause
    """
    name, version = parse_rollout_ref(build)
    try:
        check_name("fleet", fleet)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    request = admin_pb2.StartRolloutRequest(
        name=name,
        version=version,
        fleet=fleet,
        selector=parse_selector(selector),
        waves_percent=parse_waves(waves),
        bake_seconds=parse_seconds("--bake", bake) if bake is not None else 0,
        max_parallel=max_parallel,
        step_timeout_seconds=(
            parse_seconds("--step-timeout", step_timeout, minimum=1, maximum=MAX_STEP_TIMEOUT_SECONDS)
            if step_timeout is not None
            else 0
        ),
        gates=build_gates(
            min_requests=min_requests,
            min_devices=min_devices,
            max_install_failure_rate=max_install_failure_rate,
            max_error_rate_increase=max_error_rate_increase,
            max_error_rate=max_error_rate,
            max_latency_ratio=max_latency_ratio,
            max_confidence_drop=max_confidence_drop,
            max_low_confidence_rate=max_low_confidence_rate,
            max_low_confidence_rate_increase=max_low_confidence_rate_increase,
            max_crashes=max_crashes,
            max_rollbacks=max_rollbacks,
            on_breach=on_breach,
        ),
    )
    with admin(resolve(server, token, ca)) as (stub, meta):
        rollout = stub.StartRollout(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(output.message_dict(rollout))
        return
    print(rollout.rollout_id)
    print(f"started {summary_line(rollout)}")
    _print_status(rollout)


@app.command("list")
def list_rollouts(
    fleet: Annotated[str | None, typer.Option("--fleet", "-f", help="Only rollouts to this fleet")] = None,
    active: Annotated[bool, typer.Option("--active", help="Only rollouts not finished yet")] = False,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """List rollouts with their state, wave and progress.

    Example: edgefleet rollouts list --fleet lab --active
    """
    request = admin_pb2.ListRolloutsRequest(fleet=fleet or "", active_only=active)
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.ListRollouts(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json([output.message_dict(r) for r in response.rollouts])
        return
    output.stdout().print(output.table(None, LIST_COLUMNS, [list_row(r) for r in response.rollouts]))


@app.command("status")
def status(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id")],
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh until the rollout finishes (Ctrl-C to stop watching)")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch")] = 2.0,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Show a rollout: its settings, progress per wave and device class, and gate decisions.

    With --watch the view refreshes until the rollout is completed, aborted, rolled back or failed;
    with --json too, each refresh is one JSON object on its own line.

    Example: edgefleet rollouts status r-0123 --watch
    """
    if watch and not interval >= MIN_WATCH_INTERVAL:
        raise CliError(f"--interval must be at least {MIN_WATCH_INTERVAL} seconds")
    request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
    conn = resolve(server, token, ca)
    if not watch:
        with admin(conn) as (stub, meta):
            rollout = stub.GetRollout(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
        if json:
            output.emit_json(output.message_dict(rollout))
        else:
            _print_status(rollout)
        return
    try:
        with admin(conn) as (stub, meta):
            while True:
                rollout = stub.GetRollout(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
                if json:
                    sys.stdout.write(jsonlib.dumps(output.message_dict(rollout), sort_keys=True) + "\n")
                    sys.stdout.flush()
                else:
                    console = output.stdout()
                    if console.is_terminal:
                        console.clear()
                    _print_status(rollout)
                    if not is_terminal(rollout):
                        console.print(f"refreshing every {interval:g}s; Ctrl-C stops watching", style="dim")
                if is_terminal(rollout):
                    return
                time.sleep(interval)
    except KeyboardInterrupt:
        # Stopping the watch leaves the rollout running: not an error.
        sys.stderr.write("\n")


def _control(action: str, rollout_id: str, json: bool, server, token, ca) -> None:
    request = admin_pb2.ControlRolloutRequest(rollout_id=rollout_id, action=action)
    with admin(resolve(server, token, ca)) as (stub, meta):
        rollout = stub.ControlRollout(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(output.message_dict(rollout))
        return
    print(summary_line(rollout))


RolloutIdArg = Annotated[str, typer.Argument(help="Rollout id")]


@app.command("pause")
def pause(
    rollout_id: RolloutIdArg, json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None
) -> None:
    """Pause a rollout: no new device is told; installs under way finish (operator role).

    Example: edgefleet rollouts pause r-0123
    """
    _control("pause", rollout_id, json, server, token, ca)


@app.command("resume")
def resume(
    rollout_id: RolloutIdArg, json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None
) -> None:
    """Resume a paused rollout (operator role).

    Example: edgefleet rollouts resume r-0123
    """
    _control("resume", rollout_id, json, server, token, ca)


@app.command("abort")
def abort(
    rollout_id: RolloutIdArg, json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None
) -> None:
    """Abort a rollout: it stops, and devices keep what they have now (operator role).

    Example: edgefleet rollouts abort r-0123
    """
    _control("abort", rollout_id, json, server, token, ca)


@app.command("rollback")
def rollback(
    rollout_id: RolloutIdArg, json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None, ca: CaOpt = None
) -> None:
    """Roll back a rollout: every device it updated goes back to its previous build (operator role).

    Example: edgefleet rollouts rollback r-0123
    """
    _control("rollback", rollout_id, json, server, token, ca)
