"""The agent's reconciler: a pure state machine from desired state to active builds.

``step(state, event, now=...)`` returns the next state and the actions for the I/O shell;
``recover(state, now=...)`` is ``step`` with ``Restarted`` for a state read back from disk.
No I/O, no clock: ``now`` (epoch seconds, since deadlines outlive the process) is an
argument. Vocabulary: ``agent.reconcile_state`` (state, JSON), ``agent.reconcile_events``.

Transitions (``TRANSITIONS`` below; any other (phase, event) raises ``UnexpectedEvent``):

  phase                     event                 next phase                  actions
  ------------------------  --------------------  --------------------------  ---------------------------------
  IDLE, COMMITTED, FAILED   DesiredStateReceived  first target: DOWNLOADING   Emit DOWNLOAD_STARTED, Download
  DOWNLOADING .. AWAITING_  DesiredStateReceived  the same, for the new gen   Cancel, Emit RECONCILE_FAILED
    ACTIVATION_LOCK                                                             "superseded", then as above
  ACTIVATING, ROLLING_BACK  DesiredStateReceived  unchanged; deferred = new   -
  DOWNLOADING               DownloadSucceeded     VERIFYING                   Emit DOWNLOADED, Verify
  DOWNLOADING               DownloadFailed        DOWNLOADING, retry_at set   ScheduleTick (retryable, attempts left)
                                                  FAILED                      Emit RECONCILE_FAILED
  VERIFYING                 VerifySucceeded       STAGING                     Stage
  VERIFYING                 VerifyFailed          FAILED                      Emit VERIFY_FAILED
  STAGING                   StageSucceeded        ACCEPTANCE_TESTING          Emit STAGED, RunAcceptance
  STAGING                   StageFailed           FAILED                      Emit RECONCILE_FAILED
  ACCEPTANCE_TESTING        AcceptancePassed      AWAITING_ACTIVATION_LOCK    Emit ACCEPTANCE_PASSED,
                                                                                CheckActivationLock
  ACCEPTANCE_TESTING        AcceptanceFailed      FAILED                      Emit ACCEPTANCE_FAILED
  AWAITING_ACTIVATION_LOCK  LockFree              ACTIVATING                  Activate
  AWAITING_ACTIVATION_LOCK  LockStillHeld         unchanged, retry_at set     ScheduleTick (re-check)
                                                  FAILED (past the deadline)  Emit RECONCILE_FAILED
  ACTIVATING                ActivationSucceeded   next target, or COMMITTED,  Emit ACTIVATED, Cleanup(active +
                                                  or the deferred generation    previous of every slot), ...
  ACTIVATING                ActivationFailed      ROLLING_BACK                RollBack(to = the active build)
  ROLLING_BACK              RollbackSucceeded     FAILED (or deferred gen)    Emit ROLLED_BACK
  ROLLING_BACK              RollbackFailed        FAILED (or deferred gen)    Emit RECONCILE_FAILED
  every phase               Tick                  timeouts and retries, below
  every phase               Restarted             the recovery map, below

Starting a target: targets go in task order; a slot whose active build equals its
target is converged and skipped; when none is left the generation is COMMITTED (which
stays until the next generation). A target older than the slot's active build of the
same model name is refused before download, FAILED "downgrade from v5 to v3 refused"
(VERIFY_FAILED), unless ``target.rollback`` (the rule of ``agent.verify``). One failed
target fails the generation; the slots keep their builds, and a FAILED generation is
retried only by a newer generation.

Generations: one not newer than the newest known (the deferred one, if any) is a no-op;
a lower one is also answered with a Report. Outcome events carry the ticket of their
action: one that is not the awaited ticket (abandoned, already handled, or from before a
restart) is ignored; one never issued raises ``UnexpectedEvent``.

Tick: past ``deadline`` the step times out: DOWNLOADING counts it as a retryable download
failure; VERIFYING, STAGING: FAILED (RECONCILE_FAILED); ACCEPTANCE_TESTING: FAILED
(ACCEPTANCE_FAILED); AWAITING_ACTIVATION_LOCK: FAILED "activation lock held past
deadline"; ACTIVATING: ROLLING_BACK, since the swap may have happened; ROLLING_BACK: FAILED.
Reasons name the phase. At ``retry_at`` the download is retried or the lock re-checked.
Download retries wait ``download_backoff.ceiling(n)`` (1, 2, 4 .. 60 s), at most
``max_download_attempts`` Downloads per target.

Recovery map (Restarted): DOWNLOADING: Download(resume); VERIFYING, STAGING: Verify
(idempotent, then Stage); ACCEPTANCE_TESTING: RunAcceptance; AWAITING_ACTIVATION_LOCK:
CheckActivationLock with the persisted deadline; ACTIVATING: Activate (idempotent);
ROLLING_BACK: RollBack; settled phases: only a Report. A working phase emits
AGENT_CRASH_RECOVERED and its action with a fresh ticket and deadline (the lock wait
keeps its deadline). ``restarts`` counts the restarts since the current target was
started (a verify that succeeds again after a crash in STAGING is not progress); past
``max_restarts``: FAILED "crash loop: gave up after 3 restarts in ACCEPTANCE_TESTING",
from ACTIVATING by way of ROLLING_BACK (which gets its own count).

Invariants: when a step changes the state its first action is ``Persist(new state)``, and
every acting action follows it; a Report follows when generation, phase, slots or
failure reason changed; a ScheduleTick(``wake_at``) ends the list when the new state
waits for a time. At most one outcome action per step. Activate is only ever emitted
for the target that passed Verify and acceptance in the current generation, and no
failure path emits it: the previous build keeps serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent import reconcile_events as ev
from agent.backoff import Backoff
from agent.errors import AgentError
from agent.reconcile_events import Action, Emit, Event, LifecycleKind
from agent.reconcile_state import SETTLED, WORKING, BuildRef, Desired, Phase, ReconcileState, Slot, Target

__all__ = ["DEFAULT_CONFIG", "TRANSITIONS", "ReconcilerConfig", "UnexpectedEvent", "recover", "step"]

MAX_REASON_CHARS = 1024
P = Phase


class UnexpectedEvent(AgentError, RuntimeError):
    """The event is not handled in the current phase, or carries a ticket never issued: a bug, not a device failure."""


@dataclass(frozen=True)
class ReconcilerConfig:
    """Step deadlines and retry limits. Raises ``ValueError`` on construction if a value is out of range."""

    download_timeout_seconds: float = 1800.0  # per attempt
    verify_timeout_seconds: float = 300.0
    stage_timeout_seconds: float = 300.0
    acceptance_timeout_seconds: float = 600.0
    activation_lock_timeout_seconds: float = 600.0  # from entering AWAITING_ACTIVATION_LOCK
    lock_recheck_seconds: float = 5.0
    activation_timeout_seconds: float = 60.0
    rollback_timeout_seconds: float = 60.0
    max_download_attempts: int = 5
    download_backoff: Backoff = Backoff(initial_seconds=1.0, max_seconds=60.0, multiplier=2.0, jitter=0.0)
    max_restarts: int = 3

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name.endswith("_seconds") and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf
            ):
                raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
        for name, low in (("max_download_attempts", 1), ("max_restarts", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def timeout_seconds(self, phase: Phase) -> float:
        """How long one step of ``phase`` may take. Raises ``KeyError`` for a settled phase."""
        return float(getattr(self, _TIMEOUT_FIELD[phase]))


_TIMEOUT_FIELD = {
    P.DOWNLOADING: "download_timeout_seconds",
    P.VERIFYING: "verify_timeout_seconds",
    P.STAGING: "stage_timeout_seconds",
    P.ACCEPTANCE_TESTING: "acceptance_timeout_seconds",
    P.AWAITING_ACTIVATION_LOCK: "activation_lock_timeout_seconds",
    P.ACTIVATING: "activation_timeout_seconds",
    P.ROLLING_BACK: "rollback_timeout_seconds",
}
DEFAULT_CONFIG = ReconcilerConfig()
State, Config = ReconcileState, ReconcilerConfig  # short names for the handlers' signatures
Actions = list[Action]
Result = tuple[ReconcileState, Actions]
Handler = Callable[[ReconcileState, Any, float, ReconcilerConfig], Result]


# --- building blocks ---------------------------------------------------------------------------------


def _outcome_action(state: State, ticket: int) -> Action:
    """The action whose outcome ``state.phase`` waits for."""
    target = state.current
    assert target is not None and state.deadline is not None
    match state.phase:
        case P.DOWNLOADING:
            return ev.Download(ticket, target, resume=True)
        case P.VERIFYING:
            return ev.Verify(ticket, target)
        case P.STAGING:
            return ev.Stage(ticket, target)
        case P.ACCEPTANCE_TESTING:
            return ev.RunAcceptance(ticket, target)
        case P.AWAITING_ACTIVATION_LOCK:
            return ev.CheckActivationLock(ticket, target, state.deadline)
        case P.ACTIVATING:
            return ev.Activate(ticket, target)
        case _:
            return ev.RollBack(ticket, target.task, to=state.slot(target.task).active)


def _enter(
    state: State,
    phase: Phase,
    now: float,
    config: Config,
    *,
    keep_deadline: bool = False,
    **changes: Any,
) -> Result:
    """Move to working ``phase`` (with ``changes``): issue a new ticket and the action that phase waits on."""
    ticket = state.last_ticket + 1
    deadline = state.deadline if keep_deadline else now + config.timeout_seconds(phase)
    state = replace(
        state, phase=phase, last_ticket=ticket, awaiting=ticket, deadline=deadline, retry_at=None, **changes
    )
    return state, [_outcome_action(state, ticket)]


def _emit(state: State, kind: LifecycleKind, reason: str = "", **details: str) -> Emit:
    return Emit(kind, state.generation, state.current, reason, tuple(sorted(details.items())))


def _fail(state: State, reason: str, kind: LifecycleKind, actions: Actions, **changes: Any) -> Result:
    """Settle the generation as FAILED; nothing is activated, so the slots keep serving what they serve."""
    reason = reason[:MAX_REASON_CHARS]
    state = replace(
        state, phase=P.FAILED, failure_reason=reason, awaiting=None, deadline=None, retry_at=None, **changes
    )
    return state, [*actions, _emit(state, kind, reason)]


def _between_targets(state: State, **changes: Any) -> State:
    """No target in hand: the COMMITTED form the next target starts from."""
    return replace(
        state,
        phase=P.COMMITTED,
        current=None,
        failure_reason="",
        awaiting=None,
        deadline=None,
        retry_at=None,
        download_attempts=0,
        restarts=0,
        deferred=None,
        **changes,
    )


def _cancel(state: State) -> Actions:
    return [ev.Cancel(state.awaiting)] if state.awaiting is not None else []


def _is_downgrade(active: BuildRef, target: Target) -> bool:
    return active.name == target.name and target.version < active.version


def _start_next_target(state: State, now: float, config: Config, actions: Actions) -> Result:
    """From ``_between_targets``: start the first target (in task order) whose slot is not converged."""
    for target in state.targets:
        active = state.slot(target.task).active
        if active == target.ref:
            continue
        if active is not None and _is_downgrade(active, target) and not target.rollback:
            reason = f"downgrade from v{active.version} to v{target.version} refused"
            return _fail(state, reason, "VERIFY_FAILED", actions, current=target)
        state, started = _enter(state, P.DOWNLOADING, now, config, current=target, download_attempts=1)
        return state, [*actions, _emit(state, "DOWNLOAD_STARTED"), *started]
    return state, actions  # every slot converged: COMMITTED


def _start_generation(state: State, desired: Desired, now: float, config: Config, actions: Actions) -> Result:
    base = _between_targets(state, generation=desired.generation, targets=desired.targets)
    return _start_next_target(base, now, config, actions)


def _after_rollback(
    state: State, kind: LifecycleKind, reason: str, now: float, config: Config, actions: Actions
) -> Result:
    """ROLLING_BACK is over: the generation FAILED; a deferred generation starts now."""
    failed, actions = _fail(replace(state, deferred=None), reason, kind, actions)
    if state.deferred is None:
        return failed, actions
    return _start_generation(failed, state.deferred, now, config, actions)


# --- handlers ----------------------------------------------------------------------------------------


def _newer_generation_only(handler: Handler) -> Handler:
    """Wrap a DesiredStateReceived handler with the generation rule: only a newer generation acts."""

    def guarded(state: State, event: ev.DesiredStateReceived, now: float, config: Config) -> Result:
        newest = state.deferred.generation if state.deferred is not None else state.generation
        if event.generation == newest:
            return state, []
        if event.generation < newest:
            return state, [ev.Report.of(state)]
        return handler(state, event, now, config)

    return guarded


@_newer_generation_only
def _take_desired(state: State, event: ev.DesiredStateReceived, now: float, config: Config) -> Result:
    return _start_generation(state, Desired(event.generation, event.targets), now, config, [])


@_newer_generation_only
def _supersede(state: State, event: ev.DesiredStateReceived, now: float, config: Config) -> Result:
    abandoned = [*_cancel(state), _emit(state, "RECONCILE_FAILED", f"superseded by generation {event.generation}")]
    return _start_generation(state, Desired(event.generation, event.targets), now, config, abandoned)


@_newer_generation_only
def _defer(state: State, event: ev.DesiredStateReceived, now: float, config: Config) -> Result:
    # Activation and rollback are pointer swaps that must finish; the new generation waits.
    return replace(state, deferred=Desired(event.generation, event.targets)), []


def _advance(phase: Phase, emit: LifecycleKind | None = None) -> Handler:
    """A success that moves on to working ``phase``, recording ``emit`` first if given."""

    def handler(state: State, event: Any, now: float, config: Config) -> Result:
        state, actions = _enter(state, phase, now, config)
        return state, ([] if emit is None else [_emit(state, emit)]) + actions

    return handler


def _fails(kind: LifecycleKind) -> Handler:
    """A failure outcome: FAILED with the event's reason and a ``kind`` lifecycle event."""

    def handler(state: State, event: Any, now: float, config: Config) -> Result:
        return _fail(state, event.reason, kind, [])

    return handler


def _download_failed(state: State, event: ev.DownloadFailed, now: float, config: Config) -> Result:
    return _retry_or_fail_download(state, event.reason, event.retryable, now, config)


def _retry_or_fail_download(state: State, reason: str, retryable: bool, now: float, config: Config) -> Result:
    attempts = state.download_attempts
    if not retryable:
        return _fail(state, reason, "RECONCILE_FAILED", [])
    if attempts >= config.max_download_attempts:
        return _fail(state, f"download failed after {attempts} attempts: {reason}", "RECONCILE_FAILED", [])
    retry_at = now + config.download_backoff.ceiling(attempts - 1)
    return replace(state, awaiting=None, deadline=None, retry_at=retry_at), []


def _accepted(state: State, event: ev.AcceptancePassed, now: float, config: Config) -> Result:
    state, actions = _enter(state, P.AWAITING_ACTIVATION_LOCK, now, config)
    metrics = {name: f"{value:g}" for name, value in event.metrics.items()}
    return state, [_emit(state, "ACCEPTANCE_PASSED", **metrics), *actions]


def _lock_reason(config: Config) -> str:
    seconds = config.activation_lock_timeout_seconds
    return f"activation lock held past deadline ({seconds:g} s in AWAITING_ACTIVATION_LOCK)"


def _lock_held(state: State, event: ev.LockStillHeld, now: float, config: Config) -> Result:
    assert state.deadline is not None
    if now >= state.deadline:
        return _fail(state, _lock_reason(config), "RECONCILE_FAILED", [])
    retry_at = min(now + config.lock_recheck_seconds, state.deadline)
    return replace(state, awaiting=None, retry_at=retry_at), []


def _activated(state: State, event: ev.ActivationSucceeded, now: float, config: Config) -> Result:
    target = state.current
    assert target is not None
    replaced = state.slot(target.task).active
    state = state.with_slot(Slot(target.task, active=target.ref, previous=replaced, activated_at=now))
    reason = ""
    if replaced is not None and _is_downgrade(replaced, target):
        reason = f"explicit rollback from v{replaced.version} to v{target.version}"
    keep = sorted({ref for s in state.slots for ref in (s.active, s.previous) if ref is not None})
    actions: Actions = [_emit(state, "ACTIVATED", reason), ev.Cleanup(tuple(keep))]
    if state.deferred is not None:
        return _start_generation(state, state.deferred, now, config, actions)
    return _start_next_target(_between_targets(state), now, config, actions)


def _activation_failed(state: State, event: ev.ActivationFailed, now: float, config: Config) -> Result:
    reason = f"activation failed: {event.reason}"[:MAX_REASON_CHARS]
    return _enter(replace(state, failure_reason=reason), P.ROLLING_BACK, now, config)


def _rolled_back(state: State, event: ev.RollbackSucceeded, now: float, config: Config) -> Result:
    return _after_rollback(state, "ROLLED_BACK", state.failure_reason, now, config, [])


def _rollback_failed(state: State, event: ev.RollbackFailed, now: float, config: Config) -> Result:
    reason = f"{state.failure_reason}; rollback failed: {event.reason}"
    return _after_rollback(state, "RECONCILE_FAILED", reason, now, config, [])


def _tick(state: State, event: ev.Tick, now: float, config: Config) -> Result:
    if state.deadline is not None and now >= state.deadline:
        return _timed_out(state, now, config)
    if state.retry_at is not None and now >= state.retry_at:
        if state.phase is P.DOWNLOADING:
            return _enter(replace(state, download_attempts=state.download_attempts + 1), P.DOWNLOADING, now, config)
        return _enter(state, P.AWAITING_ACTIVATION_LOCK, now, config, keep_deadline=True)
    # Early or spurious: keep the shell's single timer armed.
    return state, ([] if state.wake_at is None else [ev.ScheduleTick(state.wake_at)])


def _timed_out(state: State, now: float, config: Config) -> Result:
    phase = state.phase
    reason = f"{phase.name} timed out after {config.timeout_seconds(phase):g} s"
    cancel = _cancel(state)
    if phase is P.DOWNLOADING:
        state, actions = _retry_or_fail_download(state, reason, True, now, config)
        return state, [*cancel, *actions]
    if phase is P.ACTIVATING:  # the swap may or may not have happened: swap back to be sure
        state, actions = _enter(replace(state, failure_reason=reason), P.ROLLING_BACK, now, config)
        return state, [*cancel, *actions]
    if phase is P.ROLLING_BACK:
        return _after_rollback(state, "RECONCILE_FAILED", f"{state.failure_reason}; {reason}", now, config, cancel)
    if phase is P.AWAITING_ACTIVATION_LOCK:
        return _fail(state, _lock_reason(config), "RECONCILE_FAILED", cancel)
    return _fail(state, reason, "ACCEPTANCE_FAILED" if phase is P.ACCEPTANCE_TESTING else "RECONCILE_FAILED", cancel)


def _recover(state: State, event: ev.Restarted, now: float, config: Config) -> Result:
    phase = state.phase
    if phase in SETTLED:
        return state, []
    restarts = state.restarts + 1
    if restarts > config.max_restarts:
        reason = f"crash loop: gave up after {config.max_restarts} restarts in {phase.name}"
        if phase is P.ACTIVATING:
            return _enter(replace(state, restarts=0, failure_reason=reason), P.ROLLING_BACK, now, config)
        if phase is P.ROLLING_BACK:
            return _after_rollback(state, "RECONCILE_FAILED", f"{state.failure_reason}; {reason}", now, config, [])
        return _fail(state, reason, "RECONCILE_FAILED", [])
    resume = P.VERIFYING if phase is P.STAGING else phase  # staging starts over from an idempotent verify
    state = replace(state, restarts=restarts)
    notice = _emit(
        state, "AGENT_CRASH_RECOVERED", f"resumed {phase.name} (restart {restarts} of {config.max_restarts})"
    )
    state, actions = _enter(state, resume, now, config, keep_deadline=resume is P.AWAITING_ACTIVATION_LOCK)
    return state, [notice, *actions]


# --- the table ---------------------------------------------------------------------------------------

# fmt: off
TRANSITIONS: dict[tuple[Phase, type], Handler] = {
    **{(phase, ev.DesiredStateReceived): _take_desired for phase in SETTLED},
    **{(phase, ev.DesiredStateReceived): _supersede for phase in WORKING - {P.ACTIVATING, P.ROLLING_BACK}},
    (P.ACTIVATING,               ev.DesiredStateReceived): _defer,
    (P.ROLLING_BACK,             ev.DesiredStateReceived): _defer,
    (P.DOWNLOADING,              ev.DownloadSucceeded):    _advance(P.VERIFYING, emit="DOWNLOADED"),
    (P.DOWNLOADING,              ev.DownloadFailed):       _download_failed,
    (P.VERIFYING,                ev.VerifySucceeded):      _advance(P.STAGING),
    (P.VERIFYING,                ev.VerifyFailed):         _fails("VERIFY_FAILED"),
    (P.STAGING,                  ev.StageSucceeded):       _advance(P.ACCEPTANCE_TESTING, emit="STAGED"),
    (P.STAGING,                  ev.StageFailed):          _fails("RECONCILE_FAILED"),
    (P.ACCEPTANCE_TESTING,       ev.AcceptancePassed):     _accepted,
    (P.ACCEPTANCE_TESTING,       ev.AcceptanceFailed):     _fails("ACCEPTANCE_FAILED"),
    (P.AWAITING_ACTIVATION_LOCK, ev.LockFree):             _advance(P.ACTIVATING),
    (P.AWAITING_ACTIVATION_LOCK, ev.LockStillHeld):        _lock_held,
    (P.ACTIVATING,               ev.ActivationSucceeded):  _activated,
    (P.ACTIVATING,               ev.ActivationFailed):     _activation_failed,
    (P.ROLLING_BACK,             ev.RollbackSucceeded):    _rolled_back,
    (P.ROLLING_BACK,             ev.RollbackFailed):       _rollback_failed,
    **{(phase, ev.Tick): _tick for phase in Phase},
    **{(phase, ev.Restarted): _recover for phase in Phase},
}
# fmt: on


def step(
    state: ReconcileState, event: Event, *, now: float, config: ReconcilerConfig = DEFAULT_CONFIG
) -> tuple[ReconcileState, list[Action]]:
    """Apply ``event`` at ``now`` (epoch seconds): the next state and the actions to execute, in order.

    Raises ``UnexpectedEvent`` if the phase does not handle the event or an outcome carries a
    ticket never issued, and ``ValueError`` if ``now`` is not finite. Neither changes anything.
    """
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise ValueError(f"now must be finite epoch seconds, got {now!r}")
    now = float(now)
    if isinstance(event, ev.OUTCOME_EVENTS):
        ticket = event.ticket  # type: ignore[union-attr]
        if isinstance(ticket, bool) or not isinstance(ticket, int) or not 1 <= ticket <= state.last_ticket:
            raise UnexpectedEvent(f"{type(event).__name__} carries ticket {ticket!r}, never issued")
        if ticket != state.awaiting:
            return state, []  # the outcome of abandoned or already handled work
    handler = TRANSITIONS.get((state.phase, type(event)))
    if handler is None:
        raise UnexpectedEvent(f"{type(event).__name__} is not handled in {state.phase.name}")
    new, actions = handler(state, event, now, config)
    if new == state:
        return state, actions
    head: Actions = [ev.Persist(new)]
    status = (new.generation, new.phase, new.slots, new.failure_reason)
    if isinstance(event, ev.Restarted) or status != (state.generation, state.phase, state.slots, state.failure_reason):
        head.append(ev.Report.of(new))
    tail: Actions = [] if new.wake_at is None else [ev.ScheduleTick(new.wake_at)]
    return new, [*head, *actions, *tail]


def recover(
    persisted: ReconcileState, *, now: float, config: ReconcilerConfig = DEFAULT_CONFIG
) -> tuple[ReconcileState, list[Action]]:
    """Resume after a restart from the state read back from disk: ``step(persisted, Restarted())``.

    Always reports where the machine stands; see the recovery map in the module docstring.
    """
    state, actions = step(persisted, ev.Restarted(), now=now, config=config)
    if not any(isinstance(action, ev.Report) for action in actions):
        actions.insert(0, ev.Report.of(state))
    return state, actions
