"""The reconciler: exact transition sequences, recovery from every phase, every failure, and safety properties.

Tests drive the pure machine through ``Shell``, an in-memory stand-in for the agent's I/O
shell: it answers each outcome action (success unless a test injects a fault), follows
ScheduleTick, keeps the last persisted state as its "disk" and can crash and recover from
it. Every step it takes checks that Persist comes before any acting action.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backoff import Backoff
from agent.reconcile_events import (
    ACTING_ACTIONS,
    OUTCOME_ACTIONS,
    OUTCOME_EVENTS,
    AcceptanceFailed,
    AcceptancePassed,
    Action,
    Activate,
    ActivationFailed,
    ActivationSucceeded,
    Cancel,
    CheckActivationLock,
    Cleanup,
    DesiredStateReceived,
    Download,
    DownloadFailed,
    DownloadSucceeded,
    Emit,
    Event,
    LockFree,
    LockStillHeld,
    Persist,
    Report,
    Restarted,
    RollBack,
    RollbackFailed,
    RollbackSucceeded,
    RunAcceptance,
    ScheduleTick,
    Stage,
    StageFailed,
    StageSucceeded,
    Tick,
    Verify,
    VerifyFailed,
    VerifySucceeded,
)
from agent.reconcile_state import SETTLED, WORKING, Phase, ReconcileState, Slot, Target, from_json, to_json
from agent.reconciler import DEFAULT_CONFIG, TRANSITIONS, ReconcilerConfig, UnexpectedEvent, recover, step

P = Phase
T0 = 1_000_000.0
PROPERTY = settings(max_examples=200, deadline=None)


def build(version: int, task: str = "text-nlu", *, name: str = "intent", rollback: bool = False) -> Target:
    digest = hashlib.sha256(f"{task}/{name}/{version}".encode()).hexdigest()
    return Target(task, name, version, "int8-dynamic", digest, 50_000_000, rollback)


V3, V4, V5, V6 = (build(v) for v in (3, 4, 5, 6))
KWS1 = build(1, "speech-command", name="kws")
SERVING_V4 = ReconcileState(P.COMMITTED, 1, (V4,), slots=(Slot("text-nlu", V4.ref, V3.ref, 500.0),))
GEN2_V5 = DesiredStateReceived(2, (V5,))

Answer = Callable[[int], Event]  # the outcome event for an action's ticket
SUCCESS: dict[type, Answer] = {
    Download: DownloadSucceeded,
    Verify: VerifySucceeded,
    Stage: StageSucceeded,
    RunAcceptance: lambda t: AcceptancePassed(t, {"latency_p95_ms": 12.5}),
    CheckActivationLock: LockFree,
    Activate: ActivationSucceeded,
    RollBack: RollbackSucceeded,
}
ACTION_OF = {
    P.DOWNLOADING: Download,
    P.VERIFYING: Verify,
    P.STAGING: Stage,
    P.ACCEPTANCE_TESTING: RunAcceptance,
    P.AWAITING_ACTIVATION_LOCK: CheckActivationLock,
    P.ACTIVATING: Activate,
    P.ROLLING_BACK: RollBack,
}
ACTIVATION_FAILS: dict[type, Answer] = {Activate: lambda t: ActivationFailed(t, "session load failed")}


def connection_reset(ticket: int) -> Event:
    return DownloadFailed(ticket, "connection reset", retryable=True)


def check_persist_first(before: ReconcileState, after: ReconcileState, actions: list[Action]) -> None:
    """A changed state is persisted first; an acting action never comes without a Persist before it."""
    if after != before:
        assert actions[0] == Persist(after)
    persisted = False
    for action in actions:
        persisted = persisted or isinstance(action, Persist)
        assert persisted or not isinstance(action, ACTING_ACTIONS), actions
    assert sum(isinstance(a, OUTCOME_ACTIONS) for a in actions) <= 1


class Shell:
    """An in-memory I/O shell around the pure machine."""

    def __init__(
        self,
        state: ReconcileState,
        *,
        config: ReconcilerConfig = DEFAULT_CONFIG,
        faults: dict[type, Answer] | None = None,
    ) -> None:
        self.state = self.disk = state
        self.now, self.config, self.actions = T0, config, list[Action]()
        self.answers = {**SUCCESS, **(faults or {})}
        self.log: list[tuple[Event | None, ReconcileState, list[Action]]] = []
        self.issued: dict[int, Any] = {}  # ticket -> the outcome action that carried it

    def _record(
        self, event: Event | None, before: ReconcileState, state: ReconcileState, actions: list[Action]
    ) -> None:
        check_persist_first(before, state, actions)
        self.disk = next((a.state for a in reversed(actions) if isinstance(a, Persist)), self.disk)
        self.state, self.actions = state, actions
        self.issued.update({a.ticket: a for a in actions if isinstance(a, OUTCOME_ACTIONS)})
        self.log.append((event, state, actions))

    def feed(self, event: Event, *, now: float | None = None) -> list[Action]:
        self.now = self.now if now is None else now
        self._record(event, self.state, *step(self.state, event, now=self.now, config=self.config))
        return self.actions

    def crash_and_recover(self) -> list[Action]:
        """The process dies; a new one reads the disk and recovers."""
        assert self.disk == self.state, "a step changed the state without persisting it"
        self._record(None, self.disk, *recover(self.disk, now=self.now, config=self.config))
        return self.actions

    def pending(self) -> Any:
        """The action whose outcome the machine awaits, if any."""
        return None if self.state.awaiting is None else self.issued[self.state.awaiting]

    def run(self, *, until: Phase | None = None, limit: int = 1000) -> Shell:
        """Answer outcome actions and follow ticks until the machine settles or reaches ``until``."""
        for _ in range(limit):
            if self.state.phase is until:
                return self
            if (action := self.pending()) is not None:
                self.feed(self.answers[type(action)](action.ticket))
            elif self.state.wake_at is not None:
                self.feed(Tick(), now=max(self.now, self.state.wake_at))
            else:
                return self
        raise AssertionError("the machine did not settle")

    def all(self, kind: type) -> list[Any]:
        return [a for _, _, actions in self.log for a in actions if isinstance(a, kind)]


def at_phase(phase: Phase, faults: dict[type, Answer] | None = None) -> Shell:
    """A device serving v4 that received generation 2 (v5) and got as far as ``phase``."""
    if phase is P.ROLLING_BACK:
        faults = {**ACTIVATION_FAILS, **(faults or {})}
    shell = Shell(SERVING_V4, faults=faults)
    shell.feed(GEN2_V5)
    return shell.run(until=phase)


# --- the happy path ----------------------------------------------------------------------------------


def test_the_happy_path_for_one_slot_is_exactly_this_sequence() -> None:
    """Generation 2 moves a slot from v4 to v5 through every phase, each step persisted before it acts."""
    s1 = replace(
        SERVING_V4,
        phase=P.DOWNLOADING,
        generation=2,
        targets=(V5,),
        current=V5,
        download_attempts=1,
        last_ticket=1,
        awaiting=1,
        deadline=T0 + 1800,
    )
    s2 = replace(s1, phase=P.VERIFYING, last_ticket=2, awaiting=2, deadline=T0 + 10 + 300)
    s3 = replace(s2, phase=P.STAGING, last_ticket=3, awaiting=3, deadline=T0 + 20 + 300)
    s4 = replace(s3, phase=P.ACCEPTANCE_TESTING, last_ticket=4, awaiting=4, deadline=T0 + 30 + 600)
    s5 = replace(s4, phase=P.AWAITING_ACTIVATION_LOCK, last_ticket=5, awaiting=5, deadline=T0 + 40 + 600)
    s6 = replace(s5, phase=P.ACTIVATING, last_ticket=6, awaiting=6, deadline=T0 + 50 + 60)
    s7 = replace(s6, phase=P.COMMITTED, current=None, awaiting=None, deadline=None, download_attempts=0)
    s7 = replace(s7, slots=(Slot("text-nlu", V5.ref, V4.ref, T0 + 60),))
    expected: list[tuple[Event, ReconcileState, list[Action]]] = [
        (GEN2_V5, s1, [Emit("DOWNLOAD_STARTED", 2, V5), Download(1, V5, resume=True), ScheduleTick(s1.deadline)]),
        (DownloadSucceeded(1), s2, [Emit("DOWNLOADED", 2, V5), Verify(2, V5), ScheduleTick(s2.deadline)]),
        (VerifySucceeded(2), s3, [Stage(3, V5), ScheduleTick(s3.deadline)]),
        (StageSucceeded(3), s4, [Emit("STAGED", 2, V5), RunAcceptance(4, V5), ScheduleTick(s4.deadline)]),
        (
            AcceptancePassed(4, {"latency_p95_ms": 12.5}),
            s5,
            [
                Emit("ACCEPTANCE_PASSED", 2, V5, "", (("latency_p95_ms", "12.5"),)),
                CheckActivationLock(5, V5, T0 + 640),
                ScheduleTick(s5.deadline),
            ],
        ),
        (LockFree(5), s6, [Activate(6, V5), ScheduleTick(s6.deadline)]),
        (ActivationSucceeded(6), s7, [Emit("ACTIVATED", 2, V5), Cleanup((V4.ref, V5.ref))]),
    ]
    state = SERVING_V4
    for i, (event, want_state, want_actions) in enumerate(expected):
        state, actions = step(state, event, now=T0 + 10 * i)
        assert (state, actions) == (want_state, [Persist(want_state), Report.of(want_state), *want_actions])


def test_two_slots_are_reconciled_one_at_a_time_in_task_order_and_converged_ones_skipped() -> None:
    """speech-command goes before text-nlu; a third slot already on its target gets no action at all."""
    vad = build(1, "vad", name="vad")
    start = replace(SERVING_V4, targets=(V4, vad), slots=(*SERVING_V4.slots, Slot("vad", vad.ref)))
    shell = Shell(start)
    shell.feed(DesiredStateReceived(2, (V5, vad, KWS1)))
    shell.run()
    assert [a.target.task for a in shell.all(Download)] == ["speech-command", "text-nlu"]
    assert [a.target for a in shell.all(Activate)] == [KWS1, V5]
    assert shell.state.phase is P.COMMITTED
    assert shell.state.slots == (
        Slot("speech-command", KWS1.ref, None, T0),
        Slot("text-nlu", V5.ref, V4.ref, T0),
        Slot("vad", vad.ref),
    )
    assert shell.all(Cleanup)[-1] == Cleanup(tuple(sorted([KWS1.ref, V4.ref, V5.ref, vad.ref])))


def test_cleanup_keeps_exactly_the_active_and_previous_build_of_each_slot() -> None:
    """After v4 -> v5 -> v6, Cleanup keeps v5 and v6: v4 and v3 may be collected."""
    shell = Shell(SERVING_V4)
    shell.feed(GEN2_V5)
    shell.run()
    shell.feed(DesiredStateReceived(3, (V6,)))
    shell.run()
    assert shell.all(Cleanup) == [Cleanup((V4.ref, V5.ref)), Cleanup((V5.ref, V6.ref))]
    assert shell.state.slot("text-nlu") == Slot("text-nlu", V6.ref, V5.ref, T0)


def test_a_generation_whose_targets_are_all_active_commits_without_acting() -> None:
    """Desired state equal to what runs is converged: COMMITTED at once, no Download, no Activate."""
    state, actions = step(SERVING_V4, DesiredStateReceived(2, (V4,)), now=T0)
    assert (state.phase, state.generation) == (P.COMMITTED, 2)
    assert actions == [Persist(state), Report.of(state)]


# --- generations -------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", list(Phase))
def test_an_equal_generation_is_a_no_op_and_a_lower_one_is_ignored_and_reported(phase: Phase) -> None:
    """In every phase: the same generation again changes nothing; an older one changes nothing but reports."""
    faults: dict[type, Answer] = {Verify: lambda t: VerifyFailed(t, "bad signature")} if phase is P.FAILED else {}
    state = replace(ReconcileState(), generation=2) if phase is P.IDLE else at_phase(phase, faults).state
    assert step(state, DesiredStateReceived(2, (V6,)), now=T0) == (state, [])
    assert step(state, DesiredStateReceived(1, (V6,)), now=T0) == (state, [Report.of(state)])


@pytest.mark.parametrize(
    "phase", [P.DOWNLOADING, P.VERIFYING, P.STAGING, P.ACCEPTANCE_TESTING, P.AWAITING_ACTIVATION_LOCK]
)
def test_a_newer_generation_mid_work_abandons_the_target_and_starts_the_new_one(phase: Phase) -> None:
    """Before ACTIVATING, the current work is cancelled and reported superseded; its late outcome is ignored."""
    shell = at_phase(phase)
    old = shell.state
    actions = shell.feed(DesiredStateReceived(3, (V6,)))
    assert actions[:4] == [
        Persist(shell.state),
        Report.of(shell.state),
        Cancel(old.last_ticket),
        Emit("RECONCILE_FAILED", 2, V5, "superseded by generation 3"),
    ]
    assert (shell.state.phase, shell.state.generation, shell.state.current) == (P.DOWNLOADING, 3, V6)
    late = SUCCESS[ACTION_OF[phase]](old.awaiting)
    assert step(shell.state, late, now=T0) == (shell.state, [])
    shell.run()
    assert shell.state.slot("text-nlu").active == V6.ref
    assert [a.target for a in shell.all(Activate)] == [V6]


@pytest.mark.parametrize("phase", [P.ACTIVATING, P.ROLLING_BACK])
def test_a_newer_generation_during_a_pointer_swap_waits_for_it_to_finish(phase: Phase) -> None:
    """ACTIVATING and ROLLING_BACK finish first; the newest deferred generation starts after, older ones are ignored."""
    shell = at_phase(phase)
    swap = shell.pending()
    assert shell.feed(DesiredStateReceived(3, (V5,))) == [Persist(shell.state), ScheduleTick(shell.state.deadline)]
    shell.feed(DesiredStateReceived(4, (V6,)))
    assert shell.feed(DesiredStateReceived(3, (V5,))) == [Report.of(shell.state)]
    assert shell.pending() == swap and not shell.all(Cancel)  # the swap goes on
    shell.answers[Activate] = SUCCESS[Activate]
    shell.feed(SUCCESS[type(swap)](swap.ticket))
    if phase is P.ACTIVATING:
        assert Emit("ACTIVATED", 2, V5) in shell.actions
    else:
        assert Emit("ROLLED_BACK", 2, V5, "activation failed: session load failed") in shell.actions
    assert (shell.state.phase, shell.state.generation, shell.state.current) == (P.DOWNLOADING, 4, V6)
    shell.run()
    assert shell.state.slot("text-nlu").active == V6.ref


# --- downgrade and explicit rollback -----------------------------------------------------------------


def test_a_downgrade_is_refused_before_anything_is_downloaded() -> None:
    """Target v3 on a v4 slot without rollback: FAILED (VERIFY_FAILED), no Download, v4 keeps serving."""
    state, actions = step(SERVING_V4, DesiredStateReceived(2, (V3,)), now=T0)
    assert (state.phase, state.failure_reason) == (P.FAILED, "downgrade from v4 to v3 refused")
    assert actions == [
        Persist(state),
        Report.of(state),
        Emit("VERIFY_FAILED", 2, V3, "downgrade from v4 to v3 refused"),
    ]
    assert state.slots == SERVING_V4.slots


def test_a_different_model_in_the_slot_is_not_a_downgrade() -> None:
    """Versions compare within one model name: a new model at v1 may replace intent v4 (as agent.verify rules)."""
    other = build(1, name="intent-small")
    shell = Shell(SERVING_V4)
    shell.feed(DesiredStateReceived(2, (other,)))
    shell.run()
    assert shell.state.slot("text-nlu") == Slot("text-nlu", other.ref, V4.ref, T0)
    assert Emit("ACTIVATED", 2, other) in shell.actions


def test_an_explicit_rollback_target_installs_the_older_build_and_swaps_active_and_previous() -> None:
    """rollback=True allows v4 over v5; the ACTIVATED event says so and v5 stays as previous."""
    shell = Shell(SERVING_V4)
    shell.feed(GEN2_V5)
    shell.run()
    back = replace(V4, rollback=True)
    shell.feed(DesiredStateReceived(3, (back,)))
    shell.run()
    assert Emit("ACTIVATED", 3, back, "explicit rollback from v5 to v4") in shell.actions
    assert shell.state.slot("text-nlu") == Slot("text-nlu", V4.ref, V5.ref, T0)


# --- failures ----------------------------------------------------------------------------------------

FAILURES: list[tuple[type, Answer, str, str]] = [
    (Download, lambda t: DownloadFailed(t, "size cap: 60000000 > 50000000 bytes", retryable=False),
     "RECONCILE_FAILED", "size cap: 60000000 > 50000000 bytes"),
    (Verify, lambda t: VerifyFailed(t, "sha256 mismatch for model.onnx"), "VERIFY_FAILED",
     "sha256 mismatch for model.onnx"),
    (Stage, lambda t: StageFailed(t, "disk full"), "RECONCILE_FAILED", "disk full"),
    (RunAcceptance, lambda t: AcceptanceFailed(t, "golden input 3: label mismatch"), "ACCEPTANCE_FAILED",
     "golden input 3: label mismatch"),
    (CheckActivationLock, LockStillHeld, "RECONCILE_FAILED",
     "activation lock held past deadline (600 s in AWAITING_ACTIVATION_LOCK)"),
    (Activate, ACTIVATION_FAILS[Activate], "ROLLED_BACK", "activation failed: session load failed"),
    (RollBack, lambda t: RollbackFailed(t, "pointer write failed"), "RECONCILE_FAILED",
     "activation failed: session load failed; rollback failed: pointer write failed"),
]  # fmt: skip


@pytest.mark.parametrize(("action", "answer", "kind", "reason"), FAILURES, ids=[f[0].__name__ for f in FAILURES])
def test_every_failure_settles_as_failed_with_its_reason_and_v4_still_serving(
    action: type, answer: Answer, kind: str, reason: str
) -> None:
    """Each step's failure: FAILED, the reason kept and reported, the right lifecycle kind, no Activate after it."""
    shell = Shell(SERVING_V4, faults={**(ACTIVATION_FAILS if action is RollBack else {}), action: answer})
    shell.feed(GEN2_V5)
    shell.run()
    assert (shell.state.phase, shell.state.failure_reason, shell.state.slots) == (P.FAILED, reason, SERVING_V4.slots)
    assert shell.actions[1] == Report.of(shell.state)
    assert Emit(kind, 2, V5, reason) in shell.actions
    first_failure = next(i for i, (_, state, _) in enumerate(shell.log) if state.failure_reason)
    assert not any(isinstance(a, Activate) for _, _, actions in shell.log[first_failure:] for a in actions)
    if action in (Activate, RollBack):
        assert RollBack(7, "text-nlu", to=V4.ref) in shell.all(RollBack)


def test_a_failed_generation_is_not_retried_until_a_newer_one_arrives() -> None:
    """FAILED stays put on ticks, restarts and the same generation; generation 3 starts over."""
    shell = at_phase(P.FAILED, {Verify: lambda t: VerifyFailed(t, "bad signature")})
    failed = shell.state
    shell.feed(Tick(), now=T0 + 86_400)
    shell.feed(GEN2_V5)
    assert shell.crash_and_recover() == [Report.of(failed)]
    assert shell.state == failed
    shell.answers[Verify] = SUCCESS[Verify]
    shell.feed(DesiredStateReceived(3, (V5,)))
    shell.run()
    assert (shell.state.phase, shell.state.slot("text-nlu").active) == (P.COMMITTED, V5.ref)


def test_retryable_download_failures_back_off_1_2_4_8_then_fail_after_5_attempts() -> None:
    """Retries wait 1, 2, 4, 8 s via ScheduleTick, resume the download, and give up on the 5th failure."""
    assert retry_delays(Shell(SERVING_V4, faults={Download: connection_reset})) == [1, 2, 4, 8]


def retry_delays(shell: Shell) -> list[float]:
    """Fail every download; return the delay before each retry, checking each retry resumes with a new ticket."""
    shell.feed(GEN2_V5)
    delays = []
    while shell.state.phase is P.DOWNLOADING:
        shell.feed(shell.answers[Download](shell.state.awaiting))
        if shell.state.retry_at is not None:
            delays.append(shell.state.retry_at - shell.now)
            assert shell.actions == [Persist(shell.state), ScheduleTick(shell.state.retry_at)]
            shell.feed(Tick(), now=shell.state.retry_at)
            assert shell.pending() == Download(shell.state.awaiting, V5, resume=True)
    assert shell.state.failure_reason == f"download failed after {len(delays) + 1} attempts: connection reset"
    assert shell.state.slots == SERVING_V4.slots
    assert not shell.all(Activate)
    return delays


def test_the_retry_delay_is_capped_at_60_seconds() -> None:
    """With more attempts allowed the delays grow 1, 2, 4 .. 32, then stay at 60 s."""
    config = ReconcilerConfig(max_download_attempts=9)
    assert retry_delays(Shell(SERVING_V4, config=config, faults={Download: connection_reset})) == [
        1,
        2,
        4,
        8,
        16,
        32,
        60,
        60,
    ]
    assert config.download_backoff == Backoff(1.0, 60.0, 2.0, 0.0)


def test_a_held_activation_lock_is_rechecked_every_5_seconds_until_its_deadline() -> None:
    """LockStillHeld schedules a re-check; each re-check is a new ticket; at T0+600 the generation FAILED."""
    shell = Shell(SERVING_V4, faults={CheckActivationLock: LockStillHeld})
    shell.feed(GEN2_V5)
    shell.run(until=P.AWAITING_ACTIVATION_LOCK)
    deadline = shell.state.deadline
    shell.feed(LockStillHeld(shell.state.awaiting))
    assert shell.actions == [Persist(shell.state), ScheduleTick(T0 + 5)]
    shell.feed(Tick(), now=T0 + 5)
    assert shell.actions[1:] == [CheckActivationLock(shell.state.awaiting, V5, deadline), ScheduleTick(deadline)]
    shell.run()
    checks = shell.all(CheckActivationLock)
    assert len(checks) == 120 and {c.deadline for c in checks} == {deadline}  # at T0, T0+5 .. T0+595
    assert (shell.state.phase, shell.now) == (P.FAILED, deadline)
    assert shell.state.failure_reason.startswith("activation lock held past deadline")


# --- timeouts ----------------------------------------------------------------------------------------

TIMEOUTS = {
    P.DOWNLOADING: (P.DOWNLOADING, None),  # a timed-out attempt is a retryable failure
    P.VERIFYING: (P.FAILED, "RECONCILE_FAILED"),
    P.STAGING: (P.FAILED, "RECONCILE_FAILED"),
    P.ACCEPTANCE_TESTING: (P.FAILED, "ACCEPTANCE_FAILED"),
    P.AWAITING_ACTIVATION_LOCK: (P.FAILED, "RECONCILE_FAILED"),
    P.ACTIVATING: (P.ROLLING_BACK, None),  # the swap may have happened: swap back
    P.ROLLING_BACK: (P.FAILED, "RECONCILE_FAILED"),
}


@pytest.mark.parametrize("phase", list(TIMEOUTS))
def test_every_working_phase_times_out_on_a_tick_past_its_deadline(phase: Phase) -> None:
    """An early tick only re-arms the timer; one at the deadline cancels the work with a reason naming the phase."""
    shell = at_phase(phase)
    before = shell.state
    assert shell.feed(Tick(), now=before.deadline - 0.001) == [ScheduleTick(before.deadline)]
    shell.feed(Tick(), now=before.deadline)
    next_phase, kind = TIMEOUTS[phase]
    assert shell.state.phase is next_phase
    assert Cancel(before.awaiting) in shell.actions
    if phase is P.DOWNLOADING:
        assert shell.state.retry_at == before.deadline + 1.0
    else:
        assert phase.name in shell.state.failure_reason
    if kind is not None:
        assert Emit(kind, 2, V5, shell.state.failure_reason) in shell.actions
    assert not any(isinstance(a, Activate) for a in shell.actions)
    late = SUCCESS[ACTION_OF[phase]](before.awaiting)
    assert step(shell.state, late, now=shell.now) == (shell.state, [])


# --- crash recovery ----------------------------------------------------------------------------------

RECOVERY = {
    P.DOWNLOADING: (P.DOWNLOADING, Download),
    P.VERIFYING: (P.VERIFYING, Verify),
    P.STAGING: (P.VERIFYING, Verify),  # verification is idempotent; staging follows it again
    P.ACCEPTANCE_TESTING: (P.ACCEPTANCE_TESTING, RunAcceptance),
    P.AWAITING_ACTIVATION_LOCK: (P.AWAITING_ACTIVATION_LOCK, CheckActivationLock),
    P.ACTIVATING: (P.ACTIVATING, Activate),  # the shell's activation is an idempotent pointer swap
    P.ROLLING_BACK: (P.ROLLING_BACK, RollBack),
}


@pytest.mark.parametrize("phase", list(RECOVERY))
def test_a_crash_in_any_working_phase_resumes_it_and_finishes(phase: Phase) -> None:
    """After kill -9 the persisted phase maps to its recovery action, with a new ticket, and the run completes."""
    shell = at_phase(phase)
    crashed = shell.disk
    actions = shell.crash_and_recover()
    resumed, kind = RECOVERY[phase]
    state = shell.state
    assert (state.phase, state.restarts, state.last_ticket) == (resumed, 1, crashed.last_ticket + 1)
    assert actions[:3] == [
        Persist(state),
        Report.of(state),
        Emit("AGENT_CRASH_RECOVERED", 2, V5, f"resumed {phase.name} (restart 1 of 3)"),
    ]
    assert isinstance(actions[3], kind) and actions[3].ticket == state.awaiting
    assert actions[4:] == [ScheduleTick(state.deadline)]
    shell.answers[Activate] = SUCCESS[Activate]
    shell.run()
    if phase is P.ROLLING_BACK:
        assert (shell.state.phase, shell.state.slots) == (P.FAILED, SERVING_V4.slots)
    else:
        assert (shell.state.phase, shell.state.slot("text-nlu")) == (P.COMMITTED, Slot("text-nlu", V5.ref, V4.ref, T0))


def test_a_crash_while_waiting_to_retry_a_download_resumes_the_download_at_once() -> None:
    """DOWNLOADING with a retry pending recovers to a resumed Download, keeping the attempt count."""
    shell = Shell(SERVING_V4)
    shell.feed(GEN2_V5)
    shell.feed(DownloadFailed(1, "reset", retryable=True))
    actions = shell.crash_and_recover()
    assert actions[3] == Download(2, V5, resume=True)
    assert (shell.state.download_attempts, shell.state.retry_at, shell.state.awaiting) == (1, None, 2)


def test_the_lock_deadline_survives_a_restart() -> None:
    """A restart in AWAITING_ACTIVATION_LOCK does not extend the time an app may hold the lock."""
    shell = at_phase(P.AWAITING_ACTIVATION_LOCK)
    deadline = shell.state.deadline
    shell.now += 300
    assert shell.crash_and_recover()[3] == CheckActivationLock(shell.state.awaiting, V5, deadline)


@pytest.mark.parametrize("phase", list(RECOVERY))
def test_more_than_3_restarts_without_progress_gives_up_and_v4_keeps_serving(phase: Phase) -> None:
    """The 4th restart in the same phase is a crash loop: FAILED with its reason; from ACTIVATING, via a rollback."""
    shell = at_phase(phase)
    for _ in range(3):
        shell.crash_and_recover()
    assert shell.state.restarts == 3
    gave_up = shell.crash_and_recover()
    reason = f"crash loop: gave up after 3 restarts in {RECOVERY[phase][0].name}"  # STAGING resumes as VERIFYING
    if phase is P.ACTIVATING:  # the swap may have happened: swap back before settling
        state = shell.state
        assert gave_up[2:] == [RollBack(state.awaiting, "text-nlu", to=V4.ref), ScheduleTick(state.deadline)]
    shell.answers[Activate] = SUCCESS[Activate]
    shell.run()
    assert shell.state.phase is P.FAILED and reason in shell.state.failure_reason
    assert shell.state.slots == SERVING_V4.slots
    if phase is P.ACTIVATING:
        assert Emit("ROLLED_BACK", 2, V5, reason) in shell.actions
    first = next(i for i, (_, s, _) in enumerate(shell.log) if "crash loop" in s.failure_reason)
    assert not any(isinstance(a, Activate) for _, _, acts in shell.log[first:] for a in acts)


def test_a_crash_every_time_staging_starts_is_a_crash_loop() -> None:
    """STAGING resumes through an idempotent Verify; that verify succeeding again is not progress."""
    shell = at_phase(P.STAGING)
    for restart in (1, 2, 3):
        shell.crash_and_recover()
        shell.run(until=P.STAGING)
        assert shell.state.restarts == restart
    shell.crash_and_recover()
    assert (shell.state.phase, shell.state.failure_reason) == (
        P.FAILED,
        "crash loop: gave up after 3 restarts in STAGING",
    )


def test_each_target_gets_its_own_restart_count() -> None:
    """Three restarts while the first slot downloads do not count against the second slot."""
    shell = Shell(SERVING_V4)
    shell.feed(DesiredStateReceived(2, (KWS1, V5)))
    for _ in range(3):
        shell.crash_and_recover()
    shell.run(until=P.ACTIVATING)
    shell.feed(ActivationSucceeded(shell.state.awaiting))
    assert (shell.state.current, shell.state.restarts) == (V5, 0)
    for _ in range(3):
        shell.crash_and_recover()
    shell.run()
    assert shell.state.phase is P.COMMITTED


@pytest.mark.parametrize("phase", sorted(SETTLED, key=lambda p: p.value))
def test_a_restart_in_a_settled_phase_only_reports(phase: Phase) -> None:
    """IDLE, COMMITTED and FAILED recover to themselves: a Report, nothing persisted, nothing done."""
    state = {P.IDLE: ReconcileState(), P.COMMITTED: SERVING_V4}.get(phase)
    state = state or step(SERVING_V4, DesiredStateReceived(2, (V3,)), now=T0)[0]
    assert recover(state, now=T0) == (state, [Report.of(state)])


# --- bugs are loud, stale outcomes are quiet ---------------------------------------------------------


@pytest.mark.parametrize("phase", list(RECOVERY))
def test_an_outcome_the_phase_does_not_handle_raises(phase: Phase) -> None:
    """With the awaited ticket, every outcome event outside the phase's table rows raises UnexpectedEvent."""
    state = at_phase(phase).state
    wrong = [kind for kind in OUTCOME_EVENTS if (phase, kind) not in TRANSITIONS]
    assert len(wrong) == len(OUTCOME_EVENTS) - 2
    for kind in wrong:
        fields = {"reason": "x", "retryable": True} if kind is DownloadFailed else {}
        fields = fields or ({"reason": "x"} if "reason" in kind.__dataclass_fields__ else {})
        with pytest.raises(UnexpectedEvent, match=f"{kind.__name__} is not handled in {phase.name}"):
            step(state, kind(state.awaiting, **fields), now=T0)


@pytest.mark.parametrize("ticket", [0, -1, 99, True])
def test_an_outcome_with_a_ticket_never_issued_raises(ticket: int) -> None:
    """A ticket the machine never handed out is a shell bug, in any phase."""
    state = at_phase(P.VERIFYING).state
    with pytest.raises(UnexpectedEvent, match="never issued"):
        step(state, VerifySucceeded(ticket), now=T0)


def test_a_duplicate_outcome_is_ignored() -> None:
    """The same VerifySucceeded delivered twice acts once."""
    shell = at_phase(P.VERIFYING)
    shell.feed(VerifySucceeded(2))
    assert step(shell.state, VerifySucceeded(2), now=T0) == (shell.state, [])


def test_now_must_be_a_finite_number() -> None:
    """A NaN clock is refused rather than silently disabling every deadline."""
    with pytest.raises(ValueError, match="finite"):
        step(SERVING_V4, Tick(), now=float("nan"))


def test_the_config_refuses_values_that_would_stop_time() -> None:
    """A zero or infinite timeout, or no download attempts, is a configuration error."""
    for bad in ({"verify_timeout_seconds": 0}, {"lock_recheck_seconds": float("inf")}, {"max_download_attempts": 0}):
        with pytest.raises(ValueError):
            ReconcilerConfig(**bad)


# --- properties --------------------------------------------------------------------------------------

ANSWERS: dict[type, list[Callable[[int, bool], Event]]] = {
    Download: [lambda t, b: DownloadSucceeded(t), lambda t, b: DownloadFailed(t, "net", retryable=b)],
    Verify: [lambda t, b: VerifySucceeded(t), lambda t, b: VerifyFailed(t, "bad signature")],
    Stage: [lambda t, b: StageSucceeded(t), lambda t, b: StageFailed(t, "disk full")],
    RunAcceptance: [lambda t, b: AcceptancePassed(t, {}), lambda t, b: AcceptanceFailed(t, "too slow")],
    CheckActivationLock: [lambda t, b: LockFree(t), lambda t, b: LockStillHeld(t)],
    Activate: [lambda t, b: ActivationSucceeded(t), lambda t, b: ActivationFailed(t, "load failed")],
    RollBack: [lambda t, b: RollbackSucceeded(t), lambda t, b: RollbackFailed(t, "io")],
}
ALL_ANSWERS = [answer for answers in ANSWERS.values() for answer in answers]
LIKELY = {kind: [success, success, success, failure] for kind, (success, failure) in ANSWERS.items()}
POOL = [build(v, task) for task in ("speech-command", "text-nlu") for v in (3, 4, 5, 6)]
MOVES = ["answer"] * 8 + ["stale", "tick", "desired", "crash"]


@PROPERTY
@given(data=st.data())
def test_random_event_sequences_never_activate_an_unchecked_build(data: st.DataObject) -> None:
    """Whatever arrives (outcomes, stale outcomes, ticks, generations, crashes), Activate only follows a
    VerifySucceeded and an AcceptancePassed for that target in that generation; Persist precedes acting;
    every state round-trips through JSON; no valid sequence raises."""
    shell = Shell(replace(SERVING_V4, slots=(Slot("speech-command", KWS1.ref), *SERVING_V4.slots)))
    issued: dict[int, Action] = {}
    passed: set[tuple[str, int, Target]] = set()
    for _ in range(data.draw(st.integers(1, 80), label="steps")):
        state, move = shell.state, data.draw(st.sampled_from(MOVES))
        if move == "answer" and state.awaiting is not None:
            action = issued[state.awaiting]
            event = data.draw(st.sampled_from(LIKELY[type(action)]))(state.awaiting, data.draw(st.booleans()))
            if isinstance(event, VerifySucceeded | AcceptancePassed):
                passed.add((type(event).__name__, state.generation, action.target))
            shell.feed(event)
        elif move == "stale" and (old := [t for t in range(1, state.last_ticket + 1) if t != state.awaiting]):
            ticket = data.draw(st.sampled_from(old))
            event = data.draw(st.sampled_from(ALL_ANSWERS))(ticket, True)
            assert shell.feed(event) == [] and shell.state == state
        elif move == "tick":
            shell.feed(Tick(), now=shell.now + data.draw(st.sampled_from([0.5, 5.0, 61.0, 700.0, 2000.0])))
        elif move == "desired":
            generation = data.draw(st.integers(max(0, state.generation - 1), state.generation + 2))
            chosen = data.draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=2, unique_by=lambda t: t.task))
            rollback = data.draw(st.booleans())
            shell.feed(DesiredStateReceived(max(1, generation), tuple(replace(t, rollback=rollback) for t in chosen)))
        elif move == "crash":
            shell.crash_and_recover()
        issued.update({a.ticket: a for a in shell.actions if isinstance(a, OUTCOME_ACTIONS)})
        for activate in (a for a in shell.actions if isinstance(a, Activate)):
            generation = shell.state.generation
            assert ("VerifySucceeded", generation, activate.target) in passed
            assert ("AcceptancePassed", generation, activate.target) in passed
        assert from_json(to_json(shell.state)) == shell.state
        assert shell.state.phase in SETTLED or shell.state.wake_at is not None  # nothing waits forever
    assert shell.disk == shell.state


def test_the_test_shell_answers_every_outcome_action() -> None:
    """The in-memory shell knows a success for each action that waits on an outcome."""
    assert set(SUCCESS) == set(OUTCOME_ACTIONS) == set(ACTION_OF.values()) == set(ANSWERS)


def test_the_table_handles_ticks_restarts_and_desired_state_in_every_phase() -> None:
    """Only outcome events can be unexpected: time, restarts and new generations are handled everywhere."""
    for phase in Phase:
        for kind in (Tick, DesiredStateReceived, Restarted):
            assert (phase, kind) in TRANSITIONS
    assert {p for p, kind in TRANSITIONS if kind in OUTCOME_EVENTS} == set(WORKING)


def test_the_reconciler_is_a_pure_core_that_imports_no_io_library() -> None:
    """Importing the reconciler pulls in no event loop, socket, process, database, gRPC or onnxruntime."""
    io = ("asyncio", "socket", "subprocess", "sqlite3", "grpc", "onnxruntime", "agent.fetch", "agent.serving")
    code = f"import sys, agent.reconciler; print([m for m in {io!r} if m in sys.modules])"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
