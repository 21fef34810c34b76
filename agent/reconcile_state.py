"""The reconciler's state and its persisted form: pure data, no I/O.

What lives here: ``Phase`` (numbered exactly as ``agent_pb2.ReconcilePhase``); ``BuildRef``
(one build, the wire's ``ModelRef``), ``Target`` (a build wanted in a task slot), ``Slot``
(what a slot runs and what it ran before), ``Desired`` (one generation's targets);
``ReconcileState``; ``to_json``/``from_json`` for the state file; ``status_report`` for the
wire. Events and actions are in ``agent.reconcile_events``, the transitions in
``agent.reconciler``.

Invariants:
- A ``ReconcileState`` that exists is consistent: construction raises ``ValueError`` if,
  for example, a working phase has no current target or a settled phase awaits an outcome.
- ``from_json(to_json(s)) == s`` for every state. ``from_json`` accepts only what
  ``to_json`` writes (``schema`` 1, every field, no others) and raises ``StateFileError``
  naming the field for anything else: truncated, corrupt or written by a newer agent.
- Outcome actions carry a ticket and their outcome events echo it. Tickets are issued
  from the persisted ``last_ticket`` counter, so they are never reused, not even across
  a restart; ``awaiting`` is the one ticket whose outcome the machine is waiting for.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from agent.errors import AgentError
from protos.edgefleet.v1 import agent_pb2, common_pb2
from protos.strict_json import FieldReader, reject_constant

SCHEMA = 1
MAX_STATE_BYTES = 1024 * 1024
MAX_TARGETS = 32
_TASK = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UINT64_MAX = 2**64 - 1


class StateFileError(AgentError, ValueError):
    """The persisted reconcile state is corrupt, truncated or from a newer agent; the message names the field."""


class InvalidDesiredState(AgentError, ValueError):
    """A desired state (or one of its targets) is malformed; it is refused and changes nothing."""


class Phase(enum.Enum):
    IDLE = agent_pb2.IDLE  # no desired state received yet
    DOWNLOADING = agent_pb2.DOWNLOADING
    VERIFYING = agent_pb2.VERIFYING
    STAGING = agent_pb2.STAGING
    ACCEPTANCE_TESTING = agent_pb2.ACCEPTANCE_TESTING
    AWAITING_ACTIVATION_LOCK = agent_pb2.AWAITING_ACTIVATION_LOCK
    ACTIVATING = agent_pb2.ACTIVATING
    COMMITTED = agent_pb2.COMMITTED  # every target of the generation is active; stays until the next one
    FAILED = agent_pb2.FAILED  # the generation failed; the previous builds keep serving
    ROLLING_BACK = agent_pb2.ROLLING_BACK


SETTLED = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.FAILED})
WORKING = frozenset(Phase) - SETTLED


@dataclass(frozen=True, order=True)
class BuildRef:
    """One build of a model (the wire's ``ModelRef``)."""

    name: str
    version: int
    variant: str
    manifest_sha256: str

    def __post_init__(self) -> None:
        where = f"build {self.name!r}"
        for name in ("name", "variant"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable():
                raise InvalidDesiredState(f"{where}: {name} must be 1..256 printable characters, got {value!r}")
        if not _is_int(self.version, 0, _UINT64_MAX):
            raise InvalidDesiredState(f"{where}: version must be an unsigned integer, got {self.version!r}")
        if not isinstance(self.manifest_sha256, str) or not _SHA256.fullmatch(self.manifest_sha256):
            raise InvalidDesiredState(f"{where}: manifest_sha256 must be 64 lower-case hex digits")

    def to_proto(self) -> common_pb2.ModelRef:
        return common_pb2.ModelRef(
            name=self.name, version=self.version, variant=self.variant, manifest_sha256=self.manifest_sha256
        )


@dataclass(frozen=True)
class Target:
    """A build wanted in one task slot. Raises ``InvalidDesiredState`` naming the bad field."""

    task: str
    name: str
    version: int
    variant: str
    manifest_sha256: str
    max_bytes: int
    rollback: bool = False  # an older version than the active one is allowed (explicit rollback)

    def __post_init__(self) -> None:
        where = f"target {self.task!r}"
        if not isinstance(self.task, str) or not _TASK.fullmatch(self.task):
            raise InvalidDesiredState(f"{where}: task must be 1..63 of a-z 0-9 . _ - starting with a letter or digit")
        try:
            _ = self.ref  # the build fields are validated by BuildRef
        except InvalidDesiredState as exc:
            raise InvalidDesiredState(f"{where}: {exc}") from exc
        if not _is_int(self.max_bytes, 1, _UINT64_MAX):
            raise InvalidDesiredState(f"{where}: max_bytes must be a positive integer, got {self.max_bytes!r}")
        if not isinstance(self.rollback, bool):
            raise InvalidDesiredState(f"{where}: rollback must be a bool, got {self.rollback!r}")

    @property
    def ref(self) -> BuildRef:
        return BuildRef(self.name, self.version, self.variant, self.manifest_sha256)


@dataclass(frozen=True)
class Slot:
    """One task slot: the build it serves and the one before, kept on disk for instant rollback."""

    task: str
    active: BuildRef | None = None
    previous: BuildRef | None = None
    activated_at: float | None = None  # epoch seconds

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not _TASK.fullmatch(self.task):
            raise ValueError(f"slot task {self.task!r} must be 1..63 of a-z 0-9 . _ - starting with a letter or digit")
        if self.activated_at is not None and not (
            isinstance(self.activated_at, float) and math.isfinite(self.activated_at)
        ):
            raise ValueError(f"slot {self.task!r}: activated_at must be a finite float, got {self.activated_at!r}")


@dataclass(frozen=True)
class Desired:
    """One generation of desired state: targets sorted by task, at most one per task."""

    generation: int
    targets: tuple[Target, ...]

    def __post_init__(self) -> None:
        if not _is_int(self.generation, 1, _UINT64_MAX):
            raise InvalidDesiredState(f"generation must be a positive integer, got {self.generation!r}")
        if len(self.targets) > MAX_TARGETS:
            raise InvalidDesiredState(f"too many targets: {len(self.targets)} (at most {MAX_TARGETS})")
        tasks = [t.task for t in self.targets]
        if len(set(tasks)) != len(tasks):
            raise InvalidDesiredState(f"generation {self.generation}: a task slot is named twice in {tasks}")
        object.__setattr__(self, "targets", tuple(sorted(self.targets, key=lambda t: t.task)))


@dataclass(frozen=True)
class ReconcileState:
    """Everything the reconciler knows; persisted before every action that acts on the world."""

    phase: Phase = Phase.IDLE
    generation: int = 0  # the generation being worked on, or the last one settled
    targets: tuple[Target, ...] = ()  # that generation's targets, sorted by task
    current: Target | None = None  # the target being worked on (FAILED keeps the one that failed)
    slots: tuple[Slot, ...] = ()  # sorted by task
    failure_reason: str = ""
    deadline: float | None = None  # the current step times out at this epoch second
    retry_at: float | None = None  # a download retry or lock re-check is due at this epoch second
    download_attempts: int = 0  # Download actions issued for the current target
    restarts: int = 0  # restarts since the last progress in this generation
    last_ticket: int = 0
    awaiting: int | None = None  # the ticket whose outcome is awaited
    deferred: Desired | None = None  # a newer generation waiting for ACTIVATING/ROLLING_BACK to finish

    def __post_init__(self) -> None:
        for name in ("generation", "download_attempts", "restarts", "last_ticket"):
            if not _is_int(getattr(self, name), 0, _UINT64_MAX):
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        for name in ("deadline", "retry_at"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, float) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite float or None, got {value!r}")
        if [t.task for t in self.targets] != sorted({t.task for t in self.targets}):
            raise ValueError("targets must be sorted by task, one per task")
        if [s.task for s in self.slots] != sorted({s.task for s in self.slots}):
            raise ValueError("slots must be sorted by task, one per task")
        if self.current is not None and self.current not in self.targets:
            raise ValueError(f"current target {self.current.task!r} is not one of the generation's targets")
        if self.phase in WORKING and self.current is None:
            raise ValueError(f"{self.phase.name} needs a current target")
        if self.phase in (Phase.IDLE, Phase.COMMITTED) and self.current is not None:
            raise ValueError(f"{self.phase.name} has no current target")
        if self.phase in SETTLED and (self.awaiting, self.deadline, self.retry_at) != (None, None, None):
            raise ValueError(f"{self.phase.name} awaits nothing and has no deadline")
        if self.phase in WORKING and (self.awaiting is None) == (self.retry_at is None):
            raise ValueError(f"{self.phase.name} awaits exactly one of an outcome and a retry time")
        if (self.awaiting is not None or self.phase is Phase.AWAITING_ACTIVATION_LOCK) and self.deadline is None:
            raise ValueError(f"{self.phase.name} awaiting an outcome or the activation lock needs a deadline")
        if self.awaiting is not None and not _is_int(self.awaiting, 1, self.last_ticket):
            raise ValueError(f"awaiting ticket {self.awaiting!r} was never issued (last {self.last_ticket})")
        if self.retry_at is not None and (
            self.phase not in (Phase.DOWNLOADING, Phase.AWAITING_ACTIVATION_LOCK) or self.awaiting is not None
        ):
            raise ValueError(f"retry_at is only for a download retry or a lock re-check, not in {self.phase.name}")
        if self.deferred is not None and (
            self.phase not in (Phase.ACTIVATING, Phase.ROLLING_BACK) or self.deferred.generation <= self.generation
        ):
            raise ValueError("a deferred generation is newer and waits only on ACTIVATING or ROLLING_BACK")

    def slot(self, task: str) -> Slot:
        """The slot for ``task``; an empty one if nothing was ever activated there."""
        return next((s for s in self.slots if s.task == task), Slot(task))

    def with_slot(self, slot: Slot) -> ReconcileState:
        others = [s for s in self.slots if s.task != slot.task]
        return replace(self, slots=tuple(sorted([*others, slot], key=lambda s: s.task)))

    @property
    def wake_at(self) -> float | None:
        """When the machine next needs a Tick: the earlier of the retry time and the deadline."""
        times = [t for t in (self.retry_at, self.deadline) if t is not None]
        return min(times) if times else None


# --- wire ------------------------------------------------------------------------------------------


class StatusLike(Protocol):
    """What a status report is made of; ``ReconcileState`` and the ``Report`` action both have it."""

    @property
    def generation(self) -> int: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def slots(self) -> tuple[Slot, ...]: ...
    @property
    def failure_reason(self) -> str: ...


def status_report(status: StatusLike) -> agent_pb2.StatusReport:
    """The ``StatusReport`` for a state (or a ``Report``); the byte counters are the shell's to fill."""
    return agent_pb2.StatusReport(
        generation=status.generation,
        phase=status.phase.value,
        active=[_active_model(s) for s in status.slots if s.active is not None],
        failure_reason=status.failure_reason,
    )


def epoch_timestamp(epoch_seconds: float) -> Timestamp:
    """A protobuf ``Timestamp`` for epoch seconds."""
    stamp = Timestamp()
    stamp.FromNanoseconds(round(epoch_seconds * 1e9))
    return stamp


def _active_model(slot: Slot) -> agent_pb2.ActiveModel:
    assert slot.active is not None
    model = agent_pb2.ActiveModel(model=slot.active.to_proto())
    if slot.activated_at is not None:
        model.activated_at.CopyFrom(epoch_timestamp(slot.activated_at))
    if slot.previous is not None:
        model.previous.CopyFrom(slot.previous.to_proto())
    return model


def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# --- JSON ------------------------------------------------------------------------------------------


def to_json(state: ReconcileState) -> str:
    """The on-disk form of ``state``: one JSON object, ``schema`` first."""
    data = {
        "schema": SCHEMA,
        "phase": state.phase.name,
        "generation": state.generation,
        "targets": [_target_dict(t) for t in state.targets],
        "current": None if state.current is None else _target_dict(state.current),
        "slots": [
            {
                "task": s.task,
                "active": _ref_dict(s.active),
                "previous": _ref_dict(s.previous),
                "activated_at": s.activated_at,
            }
            for s in state.slots
        ],
        "failure_reason": state.failure_reason,
        "deadline": state.deadline,
        "retry_at": state.retry_at,
        "download_attempts": state.download_attempts,
        "restarts": state.restarts,
        "last_ticket": state.last_ticket,
        "awaiting": state.awaiting,
        "deferred": None
        if state.deferred is None
        else {"generation": state.deferred.generation, "targets": [_target_dict(t) for t in state.deferred.targets]},
    }
    return json.dumps(data, allow_nan=False, separators=(",", ":"))


def from_json(text: str | bytes) -> ReconcileState:
    """Parse what ``to_json`` wrote. Raises ``StateFileError`` naming the first bad field."""
    if len(text) > MAX_STATE_BYTES:
        raise StateFileError(f"state file is {len(text)} bytes (at most {MAX_STATE_BYTES})")
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        raise StateFileError(f"state file is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StateFileError("state file must hold a JSON object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise StateFileError(f"state file schema {schema!r} is not supported (this agent reads schema {SCHEMA})")
    r = FieldReader(data, "state", error=StateFileError)
    r.keys(
        "schema phase generation targets current slots failure_reason deadline retry_at download_attempts "
        "restarts last_ticket awaiting deferred"
    )
    phase_name = r.get("phase", str)
    if phase_name not in Phase.__members__:
        raise StateFileError(f"state.phase: unknown phase {phase_name!r}")
    current = r.get("current", dict, optional=True)
    deferred = r.get("deferred", dict, optional=True)
    try:
        return ReconcileState(
            phase=Phase[phase_name],
            generation=r.get("generation", int),
            targets=tuple(_target(item, f"state.targets[{i}]") for i, item in enumerate(r.get("targets", list))),
            current=None if current is None else _target(current, "state.current"),
            slots=tuple(_slot(item, f"state.slots[{i}]") for i, item in enumerate(r.get("slots", list))),
            failure_reason=r.get("failure_reason", str),
            deadline=r.get("deadline", float, optional=True),
            retry_at=r.get("retry_at", float, optional=True),
            download_attempts=r.get("download_attempts", int),
            restarts=r.get("restarts", int),
            last_ticket=r.get("last_ticket", int),
            awaiting=r.get("awaiting", int, optional=True),
            deferred=None if deferred is None else _desired(deferred, "state.deferred"),
        )
    except StateFileError:
        raise
    except ValueError as exc:  # InvalidDesiredState included: a build or target without its own path
        raise StateFileError(f"state file is inconsistent: {exc}") from exc


def _ref_dict(ref: BuildRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"name": ref.name, "version": ref.version, "variant": ref.variant, "manifest_sha256": ref.manifest_sha256}


def _target_dict(target: Target) -> dict[str, Any]:
    ref = _ref_dict(target.ref) or {}
    return {"task": target.task, **ref, "max_bytes": target.max_bytes, "rollback": target.rollback}


def _build_ref(data: object, where: str) -> BuildRef | None:
    if data is None:
        return None
    r = FieldReader(data, where, error=StateFileError)
    r.keys("name version variant manifest_sha256")
    return BuildRef(r.get("name", str), r.get("version", int), r.get("variant", str), r.get("manifest_sha256", str))


def _target(data: object, where: str) -> Target:
    r = FieldReader(data, where, error=StateFileError)
    r.keys("task name version variant manifest_sha256 max_bytes rollback")
    try:
        return Target(
            *(r.get(k, str) for k in ("task", "name")),
            r.get("version", int),
            *(r.get(k, str) for k in ("variant", "manifest_sha256")),
            r.get("max_bytes", int),
            r.get("rollback", bool),
        )
    except InvalidDesiredState as exc:
        raise StateFileError(f"{where}: {exc}") from exc


def _slot(data: object, where: str) -> Slot:
    r = FieldReader(data, where, error=StateFileError)
    r.keys("task active previous activated_at")
    return Slot(
        r.get("task", str),
        _build_ref(r.get("active", dict, optional=True), f"{where}.active"),
        _build_ref(r.get("previous", dict, optional=True), f"{where}.previous"),
        r.get("activated_at", float, optional=True),
    )


def _desired(data: object, where: str) -> Desired:
    r = FieldReader(data, where, error=StateFileError)
    r.keys("generation targets")
    targets = tuple(_target(item, f"{where}.targets[{i}]") for i, item in enumerate(r.get("targets", list)))
    try:
        return Desired(r.get("generation", int), targets)
    except InvalidDesiredState as exc:
        raise StateFileError(f"{where}: {exc}") from exc
