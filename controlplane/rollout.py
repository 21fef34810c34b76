"""Fleet rollouts in waves with health gates and automatic rollback: a pure state machine.

``step(state, event, now)`` returns the next state and the actions for the server to execute;
``recover(state, now)`` the actions to redo after a control-plane restart. No I/O, no clock:
``now`` (epoch seconds) is an argument. The server persists the state (``controlplane.rollout_json``),
feeds events and executes actions in list order; it executes ``recover``'s actions before it feeds
any new event after a restart. Every action is idempotent on the server side.

Phases:

  created ──Start──> running ⇄ baking ──(last gate advances)──> completed
                      │  ^       │
            Pause     │  │Resume │ gate "pause", no verdict in time
                      v  │       v
                      paused ──(pause_timeout)──> aborted
  running/baking/paused/created ──Abort──> aborted
  any but created/rolling_back/rolled_back ──Rollback, gate "rollback"──> rolling_back
  rolling_back ──(every touched device reports its previous build)──> rolled_back
               ──(a revert failed, or rollback_timeout)──> failed

  running      Assign pending devices of the waves up to ``wave`` (``max_parallel`` in flight at
               most); each must report the target active within ``step_timeout_seconds`` of its
               status change (assigning, installing) or it counts as failed. When none of them is
               pending or in flight: baking.
  baking       After ``bake_seconds`` (at once if installs already failed beyond the threshold):
               MeasureGate. GateResult advance: the next wave with devices (running) or completed;
               wait: measure again after ``remeasure_seconds``; pause: paused; rollback:
               rolling_back. No non-wait verdict ``gate_timeout_seconds`` after the bake: paused.
  paused       No assignments; device reports are still recorded. Resume: running if devices of
               the current waves are left to install, else baking with a new measurement (after
               the bake if it had not ended; window from the bake's start).
  rolling_back Revert every touched device (any status but pending): its previous build, or its
               desired row removed when it had none. A device is reverted when it reports its
               previous build active (``active=None`` for one that had none: the server feeds that
               once it removed the row).
  completed, aborted, rolled_back, failed: terminal. Events change nothing; operator commands
               raise ``RolloutError`` except Rollback from completed, aborted and failed ("every
               device touched goes back"; from failed it retries the reverts that did not finish).

Rules: device events that do not fit (late, duplicate, unknown device, wrong phase) are ignored,
never raised; operator commands that do not fit raise ``RolloutError``. A device is Assigned once:
only a pending device is assigned, and only ``recover`` repeats an Assign (for a device still
``assigning``). Every in-progress phase (running, baking, paused, rolling_back) has a
``phase_deadline``; ``wake_at`` says when the server must feed the next Tick. When a step changes
the state its first action is ``Persist(new state)``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from controlplane.errors import PreconditionFailed
from controlplane.gates import VERDICTS, Thresholds

__all__ = [
    "Abort",
    "Action",
    "Assign",
    "Build",
    "Decision",
    "DeviceAssigned",
    "DeviceJoined",
    "DeviceRecord",
    "DeviceReport",
    "DeviceStatus",
    "Event",
    "GateResult",
    "MeasureGate",
    "Notify",
    "Pause",
    "Persist",
    "Phase",
    "Resume",
    "Revert",
    "Rollback",
    "RolloutError",
    "RolloutSpec",
    "RolloutState",
    "Start",
    "Tick",
    "create",
    "plan_waves",
    "recover",
    "step",
]

MAX_REASON_CHARS = 1024
MAX_DECISIONS = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class RolloutError(PreconditionFailed):
    """An operator command that does not fit the rollout's phase; the message is for the CLI."""


class Phase(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    BAKING = "baking"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class DeviceStatus(enum.StrEnum):
    PENDING = "pending"
    ASSIGNING = "assigning"
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"
    REVERTING = "reverting"
    REVERTED = "reverted"


P, S = Phase, DeviceStatus
TERMINAL = frozenset({P.COMPLETED, P.ABORTED, P.ROLLED_BACK, P.FAILED})
IN_PROGRESS = frozenset({P.RUNNING, P.BAKING, P.PAUSED, P.ROLLING_BACK})
"""The phases that have a ``phase_deadline``; ``created`` waits for an operator, without one."""
IN_FLIGHT = frozenset({S.ASSIGNING, S.INSTALLING})
ROLLBACK_FROM = frozenset({P.RUNNING, P.BAKING, P.PAUSED, P.COMPLETED, P.ABORTED, P.FAILED})


# --- data ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Build:
    """One build of a model (the wire's ``ModelRef``)."""

    name: str
    version: int
    variant: str
    manifest_sha256: str

    def __post_init__(self) -> None:
        for name in ("name", "variant"):
            _check_text(self, name)
        if not _is_int(self.version, 0):
            raise ValueError(f"build {self.name!r}: version must be a non-negative integer, got {self.version!r}")
        if not isinstance(self.manifest_sha256, str) or not _SHA256.fullmatch(self.manifest_sha256):
            raise ValueError(f"build {self.name!r}: manifest_sha256 must be 64 lower-case hex digits")

    def __str__(self) -> str:
        return f"{self.name} v{self.version} {self.variant}"


@dataclass(frozen=True)
class RolloutSpec:
    """What to roll out where, and how carefully. Raises ``ValueError`` naming a bad field."""

    rollout_id: str
    fleet: str
    model: str
    version: int
    waves: tuple[int, ...] = (1, 10, 50, 100)
    """Cumulative percentages of the targeted devices, strictly increasing, ending at 100."""
    bake_seconds: float = 3600.0
    max_parallel: int = 0
    """At most this many devices assigning or installing at once; 0 = no cap."""
    step_timeout_seconds: float = 1800.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    remeasure_seconds: float = 300.0
    """After a "wait" verdict, measure again this much later."""
    gate_timeout_seconds: float = 6 * 3600.0
    """From the end of the bake until a verdict other than "wait"; then paused."""
    pause_timeout_seconds: float = 7 * 86400.0
    """A rollout paused this long is aborted: devices keep what they have."""
    rollback_timeout_seconds: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("rollout_id", "fleet", "model"):
            _check_text(self, name)
        if not _is_int(self.version, 0):
            raise ValueError(f"version must be a non-negative integer, got {self.version!r}")
        object.__setattr__(self, "waves", _check_waves(self.waves))
        if not _is_int(self.max_parallel, 0):
            raise ValueError(f"max_parallel must be an integer >= 0 (0 = no cap), got {self.max_parallel!r}")
        for name in (
            "bake_seconds",
            "step_timeout_seconds",
            "remeasure_seconds",
            "gate_timeout_seconds",
            "pause_timeout_seconds",
            "rollback_timeout_seconds",
        ):
            value = getattr(self, name)
            bound = ">= 0" if name == "bake_seconds" else "> 0"
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < math.inf
                or (value == 0 and name != "bake_seconds")
            ):
                raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.thresholds, Thresholds):
            raise ValueError(f"thresholds must be a gates.Thresholds, got {type(self.thresholds).__name__}")


@dataclass(frozen=True)
class DeviceRecord:
    """One targeted device: what it ran before, what it was given, and where it stands."""

    device_id: str
    device_class: str
    wave: int
    previous: Build | None
    target: Build | None = None
    """The variant the server chose (set on DeviceAssigned)."""
    status: DeviceStatus = S.PENDING
    since: float = 0.0
    """When ``status`` was entered (epoch seconds)."""
    reason: str = ""
    """Why the device failed, when it did."""

    def __post_init__(self) -> None:
        _check_text(self, "device_id")
        _check_text(self, "device_class")
        if not _is_int(self.wave, 0):
            raise ValueError(f"device {self.device_id}: wave must be a non-negative integer, got {self.wave!r}")
        object.__setattr__(self, "status", DeviceStatus(self.status))
        object.__setattr__(self, "since", _finite(self.since, f"device {self.device_id}: since"))
        object.__setattr__(self, "reason", _reason(self.reason))
        for name in ("previous", "target"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Build):
                raise ValueError(f"device {self.device_id}: {name} must be a Build or None")
        if self.status in (S.PENDING, S.ASSIGNING) and self.target is not None:
            raise ValueError(f"device {self.device_id}: a {self.status} device has no target yet")
        if self.status in (S.INSTALLING, S.INSTALLED) and self.target is None:
            raise ValueError(f"device {self.device_id}: an {self.status} device needs its target")


@dataclass(frozen=True)
class Decision:
    """One decision of the rollout: a gate verdict, a timeout, or an operator command."""

    at: float
    wave: int
    verdict: str
    """advance, wait, pause, rollback (gates.VERDICTS), or resume, abort (operator)."""
    reasons: tuple[str, ...]
    numbers: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _finite(self.at, "decision at"))
        if not _is_int(self.wave, 0):
            raise ValueError(f"decision wave must be a non-negative integer, got {self.wave!r}")
        if self.verdict not in DECISION_VERDICTS:
            raise ValueError(f"decision verdict must be one of {', '.join(DECISION_VERDICTS)}, got {self.verdict!r}")
        if isinstance(self.reasons, str) or not all(isinstance(r, str) for r in self.reasons):
            raise ValueError("decision reasons must be a sequence of strings")
        object.__setattr__(self, "reasons", tuple(_reason(r) for r in self.reasons))
        numbers = {}
        for key, value in self.numbers.items():
            if not isinstance(key, str):
                raise ValueError(f"decision numbers: key {key!r} is not a string")
            numbers[key] = _finite(value, f"decision numbers[{key!r}]")
        object.__setattr__(self, "numbers", MappingProxyType(dict(sorted(numbers.items()))))


DECISION_VERDICTS: tuple[str, ...] = (*VERDICTS, "resume", "abort")


@dataclass(frozen=True)
class RolloutState:
    """Everything the rollout knows; persisted before every action that acts on the fleet."""

    spec: RolloutSpec
    phase: Phase = P.CREATED
    wave: int = 0
    """Index into ``spec.waves``: the wave being installed, baked or paused in."""
    devices: tuple[DeviceRecord, ...] = ()
    """Sorted by device_id, one record per device."""
    decisions: tuple[Decision, ...] = ()
    paused_reason: str = ""
    reason: str = ""
    """Why the rollout is rolling back, rolled back, aborted or failed."""
    updated_at: float = 0.0
    phase_deadline: float | None = None
    bake_started_at: float | None = None
    """When the current wave was fully installed (the gate window's start); set in baking and paused."""
    measure_at: float | None = None
    """Baking: when the next MeasureGate is due (None while one is outstanding)."""
    measuring: bool = False
    """Baking: a MeasureGate is outstanding; its GateResult decides."""

    def __post_init__(self) -> None:
        if not isinstance(self.spec, RolloutSpec):
            raise ValueError("spec must be a RolloutSpec")
        object.__setattr__(self, "phase", Phase(self.phase))
        if not _is_int(self.wave, 0) or self.wave >= len(self.spec.waves):
            raise ValueError(f"wave must be an index into {len(self.spec.waves)} waves, got {self.wave!r}")
        ids = [d.device_id for d in self.devices]
        if ids != sorted(set(ids)):
            raise ValueError("devices must be sorted by device_id, one record per device")
        for d in self.devices:
            if d.wave >= len(self.spec.waves):
                raise ValueError(f"device {d.device_id}: wave {d.wave} is not one of {len(self.spec.waves)} waves")
        object.__setattr__(self, "decisions", tuple(self.decisions[-MAX_DECISIONS:]))
        object.__setattr__(self, "paused_reason", _reason(self.paused_reason))
        object.__setattr__(self, "reason", _reason(self.reason))
        object.__setattr__(self, "updated_at", _finite(self.updated_at, "updated_at"))
        for name in ("phase_deadline", "bake_started_at", "measure_at"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _finite(value, name))
        if (self.phase_deadline is not None) != (self.phase in IN_PROGRESS):
            raise ValueError(f"phase {self.phase}: a deadline is set exactly in {', '.join(sorted(IN_PROGRESS))}")
        if self.phase is not P.BAKING and (self.measure_at is not None or self.measuring):
            raise ValueError(f"phase {self.phase} measures no gate")
        if self.phase is P.BAKING and (self.measure_at is None) != self.measuring:
            raise ValueError("baking either has a measurement due or one outstanding")
        if self.phase is P.BAKING and self.bake_started_at is None:
            raise ValueError("baking needs bake_started_at")
        if not isinstance(self.measuring, bool):
            raise ValueError(f"measuring must be a bool, got {self.measuring!r}")
        if self.phase in (P.CREATED, P.RUNNING, P.BAKING, P.PAUSED, P.COMPLETED) and any(
            d.status in (S.REVERTING, S.REVERTED) for d in self.devices
        ):
            raise ValueError(f"phase {self.phase} has no reverting or reverted devices")

    def device(self, device_id: str) -> DeviceRecord | None:
        return next((d for d in self.devices if d.device_id == device_id), None)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def wake_at(self) -> float | None:
        """When the server must feed the next Tick: the earliest deadline or due measurement."""
        times = [t for t in (self.phase_deadline, self.measure_at) if t is not None]
        if self.phase in IN_PROGRESS:
            times += [d.since + self.spec.step_timeout_seconds for d in self.devices if d.status in IN_FLIGHT]
        return min(times) if times else None


# --- events ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Operator: begin the first wave."""


@dataclass(frozen=True)
class Tick:
    """Time passed: device timeouts, the end of a bake, phase deadlines."""


@dataclass(frozen=True)
class DeviceAssigned:
    """The server chose ``target`` for the device and set its desired state."""

    device_id: str
    target: Build


@dataclass(frozen=True)
class DeviceReport:
    """From a status report or lifecycle event: the build of the rollout's model active on the device."""

    device_id: str
    active: Build | None
    failed: bool = False
    reason: str = ""


@dataclass(frozen=True)
class GateResult:
    """The server's ``gates.evaluate`` of a MeasureGate."""

    wave: int
    verdict: str
    reasons: tuple[str, ...] = ()
    numbers: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"gate verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


@dataclass(frozen=True)
class DeviceJoined:
    """A device joined the fleet during the rollout: it gets the current wave's version."""

    device_id: str
    device_class: str
    previous: Build | None = None


@dataclass(frozen=True)
class Pause:
    reason: str = ""


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Abort:
    reason: str = ""


@dataclass(frozen=True)
class Rollback:
    reason: str = ""


Event = Start | Tick | DeviceAssigned | DeviceReport | GateResult | DeviceJoined | Pause | Resume | Abort | Rollback


# --- actions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    """Store ``state`` durably before executing the next action."""

    state: RolloutState


@dataclass(frozen=True)
class Assign:
    """Choose each device's variant with the selector, set its desired state, then feed DeviceAssigned.

    A device the selector finds no variant for is answered with ``DeviceReport(failed=True)``.
    """

    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class MeasureGate:
    """Measure canary (new version) vs control (old version) over the window, ``gates.evaluate``, feed GateResult.

    ``failed_device_ids`` are the rollout's failed installs: the canary's ``install_failures``, with
    ``installs`` = canary + failed.
    """

    wave: int
    canary_device_ids: tuple[str, ...]
    control_device_ids: tuple[str, ...]
    window_start: float
    window_end: float
    failed_device_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Revert:
    """Set each device back to its ``previous`` build (rollback=True), or remove its desired row if None."""

    device_records: tuple[DeviceRecord, ...]


@dataclass(frozen=True)
class Notify:
    """A line for the rollout's event log."""

    message: str


Action = Persist | Assign | MeasureGate | Revert | Notify
Result = tuple[RolloutState, list[Action]]


# --- planning ----------------------------------------------------------------------------------------------


def plan_waves(devices: Mapping[str, str], percentages: Sequence[int]) -> list[list[str]]:
    """Split ``devices`` (id -> class) into waves by cumulative ``percentages``, stratified by class.

    For a class of n devices, waves 1..i hold max(1, ceil(n * p_i / 100)) of them (sorted by id):
    every class has a canary in the first wave. Each wave's ids are sorted; a wave may be empty.
    Raises ``ValueError`` for bad percentages or ids.
    """
    waves = _check_waves(percentages)
    by_class: dict[str, list[str]] = {}
    for device_id, device_class in devices.items():
        if not isinstance(device_id, str) or not device_id or not isinstance(device_class, str) or not device_class:
            raise ValueError(f"device ids and classes must be non-empty strings, got {device_id!r}: {device_class!r}")
        by_class.setdefault(device_class, []).append(device_id)
    plan: list[list[str]] = [[] for _ in waves]
    for ids in by_class.values():
        ids.sort()
        done = 0
        for i, percent in enumerate(waves):
            upto = min(len(ids), max(1, -(-len(ids) * percent // 100)))
            plan[i].extend(ids[done:upto])
            done = upto
    return [sorted(wave) for wave in plan]


def create(spec: RolloutSpec, devices: Mapping[str, tuple[str, Build | None]], now: float) -> RolloutState:
    """A new rollout (phase created) for ``devices``: id -> (class, build of the model it runs now)."""
    plan = plan_waves({device_id: cls for device_id, (cls, _) in devices.items()}, spec.waves)
    records = [
        DeviceRecord(device_id, devices[device_id][0], i, devices[device_id][1], since=now)
        for i, wave in enumerate(plan)
        for device_id in wave
    ]
    return RolloutState(spec, devices=tuple(sorted(records, key=lambda d: d.device_id)), updated_at=now)


# --- the machine ---------------------------------------------------------------------------------------------


def step(state: RolloutState, event: Event, now: float) -> Result:
    """Apply ``event`` at ``now``: the next state and the actions to execute, in order.

    Raises ``RolloutError`` for an operator command that does not fit the phase, ``ValueError``
    for a malformed event or a non-finite ``now``; neither changes anything.
    """
    now = _finite(now, "now")
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise ValueError(f"not a rollout event: {event!r}")
    if state.terminal and not isinstance(event, _COMMANDS):
        return state, []
    new, actions = handler(state, event, now)
    if new == state:
        return state, actions
    new = replace(new, updated_at=now)
    return new, [Persist(new), *actions]


def recover(state: RolloutState, now: float) -> list[Action]:
    """The actions to redo after a control-plane restart, for the persisted ``state``.

    Assign for devices still ``assigning``, MeasureGate if the measurement is outstanding or the
    bake is over, Revert for devices ``reverting``. Devices past that point are never repeated.
    Feed a Tick afterwards for the timeouts that passed during the outage.
    """
    now = _finite(now, "now")
    actions: list[Action] = [Notify(f"rollout {state.spec.rollout_id} recovered in phase {state.phase}")]
    if state.terminal:
        return actions
    assigning = tuple(d.device_id for d in state.devices if d.status is S.ASSIGNING)
    if assigning:
        actions.append(Assign(assigning))
    if state.phase is P.BAKING and (state.measuring or (state.measure_at is not None and now >= state.measure_at)):
        actions.append(_measure_action(state, now))
    reverting = tuple(d for d in state.devices if d.status is S.REVERTING)
    if reverting:
        actions.append(Revert(reverting))
    return actions


# --- handlers ------------------------------------------------------------------------------------------------


def _start(state: RolloutState, event: Start, now: float) -> Result:
    if state.phase is not P.CREATED:
        raise RolloutError(f"rollout {state.spec.rollout_id} is already {state.phase}; it starts only once")
    spec = state.spec
    if not state.devices:
        done = replace(state, phase=P.COMPLETED, reason="no devices to update")
        return done, [Notify(f"rollout {spec.rollout_id}: no devices in fleet {spec.fleet}; completed")]
    first = min(d.wave for d in state.devices)
    return _enter_wave(replace(state, wave=first), now, [Notify(f"rollout {spec.rollout_id} started")])


def _tick(state: RolloutState, event: Tick, now: float) -> Result:
    if state.phase is P.CREATED:
        return state, []
    state, actions = _time_out_devices(state, now)
    deadline = state.phase_deadline
    if state.phase is P.BAKING and deadline is not None and now >= deadline:
        seconds = state.spec.gate_timeout_seconds
        why = f"no gate verdict within {seconds:g} s after the bake of wave {_wave_name(state)}"
        last = next((d for d in reversed(state.decisions) if d.wave == state.wave), None)
        if last is not None and last.verdict == "wait" and last.reasons:
            why += f" (last: {'; '.join(last.reasons)})"
        return _pause(state, why, now, actions, verdict="pause")
    if state.phase is P.PAUSED and deadline is not None and now >= deadline:
        why = f"paused longer than {state.spec.pause_timeout_seconds:g} s ({state.paused_reason})"
        decision = Decision(now, state.wave, "abort", (why,))
        aborted = _end(state, P.ABORTED, why, decisions=(*state.decisions, decision))
        return aborted, [*actions, Notify(f"rollout {state.spec.rollout_id} aborted: {why}")]
    if state.phase is P.ROLLING_BACK and deadline is not None and now >= deadline:
        left = [d for d in state.devices if d.status is S.REVERTING]
        why = (
            f"rollback timed out after {state.spec.rollback_timeout_seconds:g} s: {len(left)} device(s) did not"
            f" report their previous build ({_ids(left)})"
        )
        return _end(state, P.FAILED, f"{state.reason}; {why}"), [*actions, Notify(f"rollout failed: {why}")]
    return _progress(state, now, actions)


def _device_assigned(state: RolloutState, event: DeviceAssigned, now: float) -> Result:
    record = state.device(event.device_id)
    if record is None:
        return state, []
    target = event.target
    if not isinstance(target, Build) or (target.name, target.version) != (state.spec.model, state.spec.version):
        raise ValueError(
            f"device {event.device_id} was assigned {target}, not a build of {state.spec.model} v{state.spec.version}"
        )
    if record.status is S.REVERTING:
        # The assignment landed after the revert was ordered: write the revert again, after it.
        return state, [Revert((record,))]
    if record.status is not S.ASSIGNING:
        return state, []
    state = _with(state, replace(record, status=S.INSTALLING, target=target, since=now))
    return _progress(state, now, [])


def _device_report(state: RolloutState, event: DeviceReport, now: float) -> Result:
    record = state.device(event.device_id)
    if record is None or state.phase is P.CREATED:
        return state, []
    status = record.status
    if status in (S.ASSIGNING, S.INSTALLING, S.INSTALLED) and event.failed:
        why = event.reason or "the device reported a failure"
        return _device_failed(state, record, f"{status}: {why}", now)
    if status is S.INSTALLING and event.active is not None and event.active == record.target:
        state = _with(state, replace(record, status=S.INSTALLED, since=now))
        return _progress(state, now, [])
    if status is S.REVERTING:
        if event.failed:
            why = f"revert failed: {event.reason or 'the device reported a failure'}"
            state = _with(state, replace(record, status=S.FAILED, since=now, reason=why))
            return _rollback_progress(state, now, [])
        if event.active == record.previous:
            state = _with(state, replace(record, status=S.REVERTED, since=now))
            return _rollback_progress(state, now, [])
    return state, []


def _gate_result(state: RolloutState, event: GateResult, now: float) -> Result:
    if state.phase is not P.BAKING or event.wave != state.wave:
        return state, []
    if not state.measuring and (state.measure_at is None or now < state.measure_at):
        return state, []  # not asked for (a stale answer of an earlier bake)
    decision = Decision(now, state.wave, event.verdict, tuple(event.reasons), dict(event.numbers))
    state = replace(state, decisions=(*state.decisions, decision))
    summary = "; ".join(decision.reasons) or "no reasons given"
    match event.verdict:
        case "advance":
            note = Notify(f"wave {_wave_name(state)} passed its gate: {summary}")
            return _next_wave(state, now, [note])
        case "wait":
            due = now + state.spec.remeasure_seconds
            state = replace(state, measuring=False, measure_at=due)
            return state, [Notify(f"wave {_wave_name(state)} gate waits for data: {summary}")]
        case "pause":
            return _pause(state, f"gate of wave {_wave_name(state)}: {summary}", now, [])
        case _:
            return _start_rollback(state, f"gate of wave {_wave_name(state)}: {summary}", now, [])


def _device_joined(state: RolloutState, event: DeviceJoined, now: float) -> Result:
    if state.phase not in (P.CREATED, P.RUNNING, P.BAKING, P.PAUSED) or state.device(event.device_id) is not None:
        return state, []
    record = DeviceRecord(event.device_id, event.device_class, state.wave, event.previous, since=now)
    devices = tuple(sorted((*state.devices, record), key=lambda d: d.device_id))
    state = replace(state, devices=devices)
    note = Notify(f"device {event.device_id} ({event.device_class}) joined: it is in wave {_wave_name(state)}")
    return _progress(state, now, [note])


def _pause_command(state: RolloutState, event: Pause, now: float) -> Result:
    if state.phase not in (P.RUNNING, P.BAKING):
        raise RolloutError(f"rollout {state.spec.rollout_id} is {state.phase}: only a running or baking one pauses")
    return _pause(state, f"operator: {event.reason or 'paused'}", now, [], verdict="pause")


def _resume(state: RolloutState, event: Resume, now: float) -> Result:
    if state.phase is not P.PAUSED:
        raise RolloutError(f"rollout {state.spec.rollout_id} is {state.phase}, not paused: nothing to resume")
    decision = Decision(now, state.wave, "resume", (f"operator resumed (paused: {state.paused_reason})",))
    state = replace(state, paused_reason="", decisions=(*state.decisions, decision))
    note = Notify(f"rollout {state.spec.rollout_id} resumed in wave {_wave_name(state)}")
    if _wave_settled(state) and state.bake_started_at is not None:
        due = max(now, state.bake_started_at + state.spec.bake_seconds)
        baking = replace(
            state,
            phase=P.BAKING,
            measure_at=due,
            measuring=False,
            phase_deadline=due + state.spec.gate_timeout_seconds,
        )
        return _progress(baking, now, [note])
    return _progress(replace(state, phase=P.RUNNING, phase_deadline=now), now, [note])


def _abort(state: RolloutState, event: Abort, now: float) -> Result:
    if state.phase not in (P.CREATED, P.RUNNING, P.BAKING, P.PAUSED):
        raise RolloutError(f"rollout {state.spec.rollout_id} is {state.phase}: nothing to abort")
    why = f"operator: {event.reason or 'aborted'}"
    decision = Decision(now, state.wave, "abort", (why,))
    aborted = _end(state, P.ABORTED, why, decisions=(*state.decisions, decision))
    return aborted, [Notify(f"rollout {state.spec.rollout_id} aborted; devices keep what they have")]


def _rollback_command(state: RolloutState, event: Rollback, now: float) -> Result:
    if state.phase not in ROLLBACK_FROM:
        raise RolloutError(f"rollout {state.spec.rollout_id} is {state.phase}: nothing to roll back")
    why = f"operator: {event.reason or 'rollback'}"
    decision = Decision(now, state.wave, "rollback", (why,))
    return _start_rollback(replace(state, decisions=(*state.decisions, decision)), why, now, [])


_HANDLERS: dict[type, Any] = {
    Start: _start,
    Tick: _tick,
    DeviceAssigned: _device_assigned,
    DeviceReport: _device_report,
    GateResult: _gate_result,
    DeviceJoined: _device_joined,
    Pause: _pause_command,
    Resume: _resume,
    Abort: _abort,
    Rollback: _rollback_command,
}
_COMMANDS = (Start, Pause, Resume, Abort, Rollback)


# --- building blocks -----------------------------------------------------------------------------------------


def _with(state: RolloutState, record: DeviceRecord) -> RolloutState:
    devices = tuple(record if d.device_id == record.device_id else d for d in state.devices)
    return replace(state, devices=devices)


def _end(state: RolloutState, phase: Phase, reason: str, **changes: Any) -> RolloutState:
    return replace(
        state,
        phase=phase,
        reason=reason,
        phase_deadline=None,
        measure_at=None,
        measuring=False,
        **changes,
    )


def _wave_name(state: RolloutState) -> str:
    return f"{state.wave + 1} of {len(state.spec.waves)} ({state.spec.waves[state.wave]}%)"


def _ids(records: Iterable[DeviceRecord], limit: int = 5) -> str:
    ids = [d.device_id for d in records]
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _in_wave(state: RolloutState, d: DeviceRecord) -> bool:
    return d.wave <= state.wave


def _wave_settled(state: RolloutState) -> bool:
    """No device of the waves so far is pending or in flight."""
    return not any(_in_wave(state, d) and (d.status is S.PENDING or d.status in IN_FLIGHT) for d in state.devices)


def _device_failed(state: RolloutState, record: DeviceRecord, why: str, now: float) -> Result:
    state = _with(state, replace(record, status=S.FAILED, since=now, reason=why))
    return _progress(state, now, [Notify(f"device {record.device_id} failed: {why}")])


def _time_out_devices(state: RolloutState, now: float) -> Result:
    if state.phase not in (P.RUNNING, P.BAKING, P.PAUSED):
        return state, []
    timeout = state.spec.step_timeout_seconds
    late = [d for d in state.devices if d.status in IN_FLIGHT and now >= d.since + timeout]
    actions: list[Action] = []
    for d in late:
        what = "the assignment" if d.status is S.ASSIGNING else f"{d.target} active"
        why = f"{d.status}: did not report {what} within {timeout:g} s"
        state = _with(state, replace(d, status=S.FAILED, since=now, reason=why))
        actions.append(Notify(f"device {d.device_id} failed: {why}"))
    return state, actions


def _fill(state: RolloutState, now: float) -> Result:
    """Assign pending devices of the waves so far, up to ``max_parallel`` in flight."""
    pending = [d for d in state.devices if d.status is S.PENDING and _in_wave(state, d)]
    if not pending:
        return state, []
    cap = state.spec.max_parallel
    if cap:
        in_flight = sum(1 for d in state.devices if d.status in IN_FLIGHT)
        pending = sorted(pending, key=lambda d: (d.wave, d.device_id))[: max(0, cap - in_flight)]
    if not pending:
        return state, []
    for d in pending:
        state = _with(state, replace(d, status=S.ASSIGNING, since=now))
    return state, [Assign(tuple(sorted(d.device_id for d in pending)))]


def _progress(state: RolloutState, now: float, actions: list[Action]) -> Result:
    """After any change: assign what may be assigned, start the bake, measure when due, recompute deadlines."""
    if state.phase in (P.RUNNING, P.BAKING):
        state, assigned = _fill(state, now)
        actions = [*actions, *assigned]
    if state.phase is P.RUNNING and _wave_settled(state):
        state = _enter_baking(state, now)
        actions.append(Notify(f"wave {_wave_name(state)} installed; baking {state.spec.bake_seconds:g} s"))
    if state.phase is P.BAKING and not state.measuring and state.measure_at is not None and now >= state.measure_at:
        actions.append(_measure_action(state, now))
        state = replace(state, measuring=True, measure_at=None)
    if state.phase is P.RUNNING:
        deadlines = [d.since + state.spec.step_timeout_seconds for d in state.devices if d.status in IN_FLIGHT]
        state = replace(state, phase_deadline=min(deadlines))
    return state, actions


def _enter_wave(state: RolloutState, now: float, actions: list[Action]) -> Result:
    count = sum(1 for d in state.devices if d.wave == state.wave)
    state = replace(state, phase=P.RUNNING, phase_deadline=now, bake_started_at=None, measure_at=None, measuring=False)
    note = Notify(f"wave {_wave_name(state)} started: {count} device(s)")
    return _progress(state, now, [*actions, note])


def _enter_baking(state: RolloutState, now: float) -> RolloutState:
    spec = state.spec
    due = now + spec.bake_seconds
    touched = [d for d in state.devices if d.status in (S.INSTALLED, S.FAILED)]
    failed = sum(1 for d in touched if d.status is S.FAILED)
    if touched and failed / len(touched) > spec.thresholds.max_install_failure_rate:
        due = now  # already breached: measure at once instead of baking a broken build
    return replace(
        state,
        phase=P.BAKING,
        bake_started_at=now,
        measure_at=due,
        measuring=False,
        phase_deadline=due + spec.gate_timeout_seconds,
    )


def _measure_action(state: RolloutState, now: float) -> MeasureGate:
    canary = tuple(d.device_id for d in state.devices if d.status is S.INSTALLED)
    control = tuple(d.device_id for d in state.devices if d.status is S.PENDING)
    failed = tuple(d.device_id for d in state.devices if d.status is S.FAILED)
    start = state.bake_started_at if state.bake_started_at is not None else now
    return MeasureGate(state.wave, canary, control, start, max(start, now), failed)


def _next_wave(state: RolloutState, now: float, actions: list[Action]) -> Result:
    later = sorted({d.wave for d in state.devices if d.wave > state.wave and d.status is S.PENDING})
    if not later:
        spec = state.spec
        done = _end(state, P.COMPLETED, "", paused_reason="")
        return done, [*actions, Notify(f"rollout {spec.rollout_id} completed: {spec.model} v{spec.version}")]
    return _enter_wave(replace(state, wave=later[0]), now, actions)


def _pause(state: RolloutState, why: str, now: float, actions: list[Action], verdict: str | None = None) -> Result:
    decisions = state.decisions
    if verdict is not None:
        decisions = (*decisions, Decision(now, state.wave, verdict, (why,)))
    paused = replace(
        state,
        phase=P.PAUSED,
        paused_reason=why,
        decisions=decisions,
        measure_at=None,
        measuring=False,
        phase_deadline=now + state.spec.pause_timeout_seconds,
    )
    return paused, [*actions, Notify(f"rollout {state.spec.rollout_id} paused: {why}")]


def _start_rollback(state: RolloutState, why: str, now: float, actions: list[Action]) -> Result:
    touched = [d for d in state.devices if d.status not in (S.PENDING, S.REVERTED)]
    reverting = tuple(replace(d, status=S.REVERTING, since=now) for d in touched)
    changed = {d.device_id: d for d in reverting}
    state = replace(
        state,
        devices=tuple(changed.get(d.device_id, d) for d in state.devices),
        phase=P.ROLLING_BACK,
        reason=why,
        paused_reason="",
        measure_at=None,
        measuring=False,
        phase_deadline=now + state.spec.rollback_timeout_seconds,
    )
    note = Notify(f"rollout {state.spec.rollout_id} rolling back {len(reverting)} device(s): {why}")
    actions = [*actions, note]
    if reverting:
        actions.append(Revert(reverting))
    return _rollback_progress(state, now, actions)


def _rollback_progress(state: RolloutState, now: float, actions: list[Action]) -> Result:
    if state.phase is not P.ROLLING_BACK or any(d.status is S.REVERTING for d in state.devices):
        return state, actions
    failed = [d for d in state.devices if d.status is S.FAILED]
    if failed:
        why = f"{state.reason}; revert failed on {len(failed)} device(s) ({_ids(failed)})"
        return _end(state, P.FAILED, why), [*actions, Notify(f"rollout {state.spec.rollout_id} failed: {why}")]
    reverted = sum(1 for d in state.devices if d.status is S.REVERTED)
    done = _end(state, P.ROLLED_BACK, state.reason)
    return done, [*actions, Notify(f"rollout {state.spec.rollout_id} rolled back: {reverted} device(s) reverted")]


# --- validation helpers ------------------------------------------------------------------------------------


def _check_waves(percentages: Sequence[int]) -> tuple[int, ...]:
    waves = tuple(percentages)
    if not waves:
        raise ValueError("waves must list at least one percentage (ending at 100)")
    for p in waves:
        if not _is_int(p, 1) or p > 100:
            raise ValueError(f"wave percentages must be integers in 1..100, got {p!r}")
    if any(b <= a for a, b in zip(waves, waves[1:], strict=False)):
        raise ValueError(f"wave percentages must be strictly increasing, got {list(waves)}")
    if waves[-1] != 100:
        raise ValueError(f"the last wave must be 100 (every device), got {waves[-1]}")
    return waves


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_text(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable():
        raise ValueError(f"{name} must be 1..256 printable characters, got {value!r}")


def _reason(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"a reason must be a string, got {text!r}")
    return text[:MAX_REASON_CHARS]
