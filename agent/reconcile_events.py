"""What the shell feeds the reconciler (events) and what it gets back to execute (actions).

Pure data, no I/O. Every outcome action (Download, Verify, Stage, RunAcceptance,
CheckActivationLock, Activate, RollBack) carries a ticket; the event that reports its
outcome echoes the ticket, so an outcome of work the machine has since abandoned is
recognised and ignored. The other actions (Persist, Cancel, Cleanup, Report, Emit,
ScheduleTick) produce no event: the shell completes them in list order before the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent.reconcile_state import (
    BuildRef,
    Desired,
    Phase,
    ReconcileState,
    Slot,
    Target,
    epoch_timestamp,
    status_report,
)
from protos.edgefleet.v1 import agent_pb2, common_pb2

# --- events: what the shell feeds in (outcome events echo the ticket of their action) -------------


@dataclass(frozen=True)
class DesiredStateReceived:
    generation: int
    targets: tuple[Target, ...]

    def __post_init__(self) -> None:
        Desired(self.generation, self.targets)  # validates
        object.__setattr__(self, "targets", tuple(sorted(self.targets, key=lambda t: t.task)))


@dataclass(frozen=True)
class DownloadSucceeded:
    ticket: int


@dataclass(frozen=True)
class DownloadFailed:
    ticket: int
    reason: str
    retryable: bool


@dataclass(frozen=True)
class VerifySucceeded:
    ticket: int


@dataclass(frozen=True)
class VerifyFailed:
    ticket: int
    reason: str


@dataclass(frozen=True)
class StageSucceeded:
    ticket: int


@dataclass(frozen=True)
class StageFailed:
    ticket: int
    reason: str


@dataclass(frozen=True)
class AcceptancePassed:
    ticket: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AcceptanceFailed:
    ticket: int
    reason: str


@dataclass(frozen=True)
class LockFree:
    ticket: int


@dataclass(frozen=True)
class LockStillHeld:
    ticket: int


@dataclass(frozen=True)
class ActivationSucceeded:
    ticket: int


@dataclass(frozen=True)
class ActivationFailed:
    ticket: int
    reason: str


@dataclass(frozen=True)
class RollbackSucceeded:
    ticket: int


@dataclass(frozen=True)
class RollbackFailed:
    ticket: int
    reason: str


@dataclass(frozen=True)
class Tick:
    """Time passed; ``now`` is the argument of every step, so a Tick carries nothing."""


@dataclass(frozen=True)
class Restarted:
    """The agent process started again with this persisted state."""


OutcomeEvent = (
    DownloadSucceeded | DownloadFailed | VerifySucceeded | VerifyFailed | StageSucceeded | StageFailed
    | AcceptancePassed | AcceptanceFailed | LockFree | LockStillHeld | ActivationSucceeded | ActivationFailed
    | RollbackSucceeded | RollbackFailed
)  # fmt: skip
Event = DesiredStateReceived | OutcomeEvent | Tick | Restarted
OUTCOME_EVENTS: tuple[type, ...] = (
    DownloadSucceeded, DownloadFailed, VerifySucceeded, VerifyFailed, StageSucceeded, StageFailed,
    AcceptancePassed, AcceptanceFailed, LockFree, LockStillHeld, ActivationSucceeded, ActivationFailed,
    RollbackSucceeded, RollbackFailed,
)  # fmt: skip


# --- actions: what the shell executes, in order -----------------------------------------------------

LifecycleKind = Literal[
    "DOWNLOAD_STARTED", "DOWNLOADED", "VERIFY_FAILED", "STAGED", "ACCEPTANCE_PASSED", "ACCEPTANCE_FAILED",
    "ACTIVATED", "ROLLED_BACK", "RECONCILE_FAILED", "AGENT_CRASH_RECOVERED",
]  # fmt: skip


@dataclass(frozen=True)
class Persist:
    """Write ``state`` durably (atomic replace, fsync) before executing the next action."""

    state: ReconcileState


@dataclass(frozen=True)
class Download:
    """Fetch the target's manifest and files, continuing a partial download; never more than ``max_bytes``."""

    ticket: int
    target: Target
    resume: bool = True


@dataclass(frozen=True)
class Verify:
    """Check hashes, signature, compatibility and that the manifest is the target's; idempotent."""

    ticket: int
    target: Target


@dataclass(frozen=True)
class Stage:
    """Unpack the verified build into its own staging directory, next to the active and previous ones."""

    ticket: int
    target: Target


@dataclass(frozen=True)
class RunAcceptance:
    """Load the staged build and run its golden inputs, latency and memory checks (``agent.acceptance``)."""

    ticket: int
    target: Target


@dataclass(frozen=True)
class CheckActivationLock:
    """Answer LockFree or LockStillHeld: whether an app holds an activation lock now."""

    ticket: int
    target: Target
    deadline: float  # epoch second after which the machine gives up waiting for the lock


@dataclass(frozen=True)
class Activate:
    """Atomically point the slot at the staged target; idempotent (it may be repeated after a crash)."""

    ticket: int
    target: Target


@dataclass(frozen=True)
class RollBack:
    """Atomically point ``task`` back at ``to`` (None: the slot serves nothing); idempotent."""

    ticket: int
    task: str
    to: BuildRef | None


@dataclass(frozen=True)
class Cancel:
    """Stop the work started for ``ticket`` if it still runs; its outcome, if any, will be ignored."""

    ticket: int


@dataclass(frozen=True)
class Cleanup:
    """Delete staged and downloaded builds other than ``keep`` (each slot's active and previous)."""

    keep: tuple[BuildRef, ...]


@dataclass(frozen=True)
class Report:
    generation: int
    phase: Phase
    slots: tuple[Slot, ...]
    failure_reason: str

    @classmethod
    def of(cls, state: ReconcileState) -> Report:
        return cls(state.generation, state.phase, state.slots, state.failure_reason)

    def to_proto(self) -> agent_pb2.StatusReport:
        return status_report(self)


@dataclass(frozen=True)
class Emit:
    """Record a lifecycle event (telemetry outbox)."""

    kind: LifecycleKind
    generation: int
    target: Target | None
    reason: str = ""
    details: tuple[tuple[str, str], ...] = ()

    def to_proto(self, *, at: float) -> common_pb2.LifecycleEvent:
        event = common_pb2.LifecycleEvent(
            kind=common_pb2.LifecycleEvent.Kind.Value(self.kind),
            at=epoch_timestamp(at),
            reason=self.reason,
            generation=self.generation,
            details=dict(self.details),
        )
        if self.target is not None:
            event.model.CopyFrom(self.target.ref.to_proto())
        return event


@dataclass(frozen=True)
class ScheduleTick:
    """Deliver a Tick at or after ``at``. One timer is enough: each ScheduleTick replaces the last."""

    at: float


Action = (
    Persist | Download | Verify | Stage | RunAcceptance | CheckActivationLock | Activate | RollBack | Cancel
    | Cleanup | Report | Emit | ScheduleTick
)  # fmt: skip
# Actions that start work whose outcome comes back as an event carrying the action's ticket.
OUTCOME_ACTIONS: tuple[type, ...] = (Download, Verify, Stage, RunAcceptance, CheckActivationLock, Activate, RollBack)
# Actions that change the device; a Persist always comes before them in the same list.
ACTING_ACTIONS: tuple[type, ...] = (
    Download, Verify, Stage, RunAcceptance, CheckActivationLock, Activate, RollBack, Cleanup,
)  # fmt: skip


def desired_from_proto(message: agent_pb2.DesiredState) -> DesiredStateReceived:
    """The event for a received ``DesiredState``. Raises ``InvalidDesiredState`` naming the bad field."""
    targets = tuple(
        Target(
            task=m.task,
            name=m.model.name,
            version=m.model.version,
            variant=m.model.variant,
            manifest_sha256=m.model.manifest_sha256,
            max_bytes=m.max_bytes,
            rollback=m.rollback,
        )
        for m in message.models
    )
    return DesiredStateReceived(message.generation, targets)
