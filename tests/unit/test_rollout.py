"""The rollout state machine: wave planning, gates, pause/abort/rollback, deadlines, crash recovery."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane import rollout_json
from controlplane.gates import Thresholds
from controlplane.rollout import (
    IN_FLIGHT,
    IN_PROGRESS,
    TERMINAL,
    Abort,
    Action,
    Assign,
    Build,
    DeviceAssigned,
    DeviceJoined,
    DeviceReport,
    DeviceStatus,
    Event,
    GateResult,
    MeasureGate,
    Notify,
    Pause,
    Persist,
    Phase,
    Resume,
    Revert,
    Rollback,
    RolloutError,
    RolloutSpec,
    RolloutState,
    Start,
    Tick,
    create,
    plan_waves,
    recover,
    step,
)

S = DeviceStatus
T0 = 1_700_000_000.0
OLD = Build("kws", 3, "int8", "a" * 64)
NEW = Build("kws", 4, "int8", "b" * 64)
NEW_FP16 = Build("kws", 4, "fp16", "c" * 64)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec(**changes: object) -> RolloutSpec:
    base = RolloutSpec(
        "r-1", "fleet-a", "kws", 4, waves=(1, 10, 50, 100), bake_seconds=600.0, step_timeout_seconds=300.0
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def fleet(n_a: int, n_b: int = 0, previous: Build | None = OLD) -> dict[str, tuple[str, Build | None]]:
    devices = {f"a-{i:03d}": ("small", previous) for i in range(n_a)}
    devices.update({f"b-{i:03d}": ("large", previous) for i in range(n_b)})
    return devices


# --- a tiny fake server and fleet ---------------------------------------------------------------------------


@dataclass
class World:
    """The server's side: executes actions, and the devices behind it. Deterministic."""

    outcome: Mapping[str, str] = field(default_factory=dict)  # device -> ok | fail | silent (default ok)
    verdicts: Callable[[int], str] = lambda wave: "advance"
    persisted: str = ""
    desired: dict[str, Build | None] = field(default_factory=dict)
    active: dict[str, Build | None] = field(default_factory=dict)
    assigned: Counter[str] = field(default_factory=Counter)
    measured: list[MeasureGate] = field(default_factory=list)

    def execute(self, action: Action) -> list[Event]:
        match action:
            case Persist(state=state):
                self.persisted = rollout_json.to_json(state)
            case Assign(device_ids=ids):
                for device_id in ids:
                    self.assigned[device_id] += 1
                    self.desired[device_id] = NEW
                return [DeviceAssigned(device_id, NEW) for device_id in ids]
            case MeasureGate():
                self.measured.append(action)
                return [GateResult(action.wave, self.verdicts(action.wave), (f"scripted for {action.wave}",))]
            case Revert(device_records=records):
                events: list[Event] = []
                for d in records:
                    self.desired[d.device_id] = d.previous
                    if self.outcome.get(d.device_id, "ok") != "silent":
                        self.active[d.device_id] = d.previous
                        events.append(DeviceReport(d.device_id, d.previous))
                return events
        return []

    def reports(self) -> list[Event]:
        """Periodic status reports from every device that has a desired state."""
        events: list[Event] = []
        for device_id, want in sorted(self.desired.items()):
            outcome = self.outcome.get(device_id, "ok")
            if outcome == "silent":
                continue
            if outcome == "fail" and want == NEW:
                events.append(DeviceReport(device_id, self.active.get(device_id, OLD), True, "acceptance failed"))
                continue
            self.active[device_id] = want
            events.append(DeviceReport(device_id, want))
        return events


def drive(
    state: RolloutState,
    world: World,
    first: list[Event] | None = None,
    *,
    crash_after: int | None = None,
    dt: float = 60.0,
    max_ticks: int = 400,
    on_state: Callable[[RolloutState], None] | None = None,
) -> RolloutState:
    """Feed events until the rollout is terminal; optionally crash once after step number ``crash_after``."""
    queue: deque[Event] = deque([Start()] if first is None else first)
    now, steps = T0, 0
    for _ in range(max_ticks):
        while queue:
            event = queue.popleft()
            state, actions = step(state, event, now)
            steps += 1
            if on_state is not None:
                on_state(state)
            if steps == crash_after:
                # The control plane dies right after persisting: the rest of the actions and every
                # message in flight are lost. It restarts from the stored state.
                if actions and isinstance(actions[0], Persist):
                    world.execute(actions[0])
                queue.clear()
                state = rollout_json.from_json(world.persisted) if world.persisted else state
                for action in recover(state, now):
                    queue.extend(world.execute(action))
                continue
            for action in actions:
                queue.extend(world.execute(action))
        if state.phase in TERMINAL:
            return state
        now += dt
        queue.extend(world.reports())
        queue.append(Tick())
    raise AssertionError(f"rollout did not finish: {state.phase}")


def summary(state: RolloutState) -> tuple[object, ...]:
    return (
        state.phase,
        state.wave,
        tuple((d.device_id, d.status, d.target) for d in state.devices),
        tuple((d.wave, d.verdict) for d in state.decisions),
    )


# --- plan_waves ---------------------------------------------------------------------------------------------


def test_plan_waves_is_stratified_cumulative_and_deterministic() -> None:
    devices = {f"a-{i:03d}": "small" for i in range(200)} | {f"b-{i}": "large" for i in range(3)}
    plan = plan_waves(devices, [1, 10, 50, 100])
    assert [len(w) for w in plan] == [2 + 1, 18 + 0, 80 + 1, 100 + 1]
    assert plan[0] == ["a-000", "a-001", "b-0"]
    assert plan == plan_waves(dict(reversed(devices.items())), (1, 10, 50, 100))


def test_plan_waves_small_fleets_may_leave_later_waves_empty() -> None:
    assert plan_waves({"x": "a", "y": "b"}, [5, 100]) == [["x", "y"], []]
    assert plan_waves({}, [100]) == [[]]


@pytest.mark.parametrize(
    ("waves", "message"),
    [
        ([], "at least one"),
        ([10, 50], "last wave must be 100"),
        ([10, 10, 100], "strictly increasing"),
        ([50, 20, 100], "strictly increasing"),
        ([0, 100], "1..100"),
        ([10, 101], "1..100"),
        ([True, 100], "1..100"),
        ([1.5, 100], "1..100"),
    ],
)
def test_plan_waves_rejects_bad_percentages(waves: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_waves({"x": "a"}, waves)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text("abcdef0123", min_size=1, max_size=6), st.sampled_from(["s", "m", "l"]), max_size=60),
    st.lists(st.integers(1, 99), max_size=5, unique=True).map(lambda ps: [*sorted(ps), 100]),
)
def test_plan_waves_properties(devices: dict[str, str], waves: list[int]) -> None:
    plan = plan_waves(devices, waves)
    assert len(plan) == len(waves)
    flat = [d for wave in plan for d in wave]
    assert sorted(flat) == sorted(devices)  # every device exactly once
    assert all(wave == sorted(wave) for wave in plan)
    for cls in set(devices.values()):
        members = sorted(d for d, c in devices.items() if c == cls)
        assert set(members) & set(plan[0])  # a canary of every class
        for i, p in enumerate(waves):
            upto = [d for wave in plan[: i + 1] for d in wave if devices[d] == cls]
            assert len(upto) == min(len(members), max(1, math.ceil(len(members) * p / 100)))
            assert upto == members[: len(upto)]


# --- example rollouts ----------------------------------------------------------------------------------------


def test_a_good_rollout_goes_through_every_wave_and_completes() -> None:
    state = create(spec(), fleet(150, 50), T0)
    world = World()
    end = drive(state, world)
    assert end.phase is Phase.COMPLETED
    assert all(d.status is S.INSTALLED and d.target == NEW for d in end.devices)
    assert [(d.wave, d.verdict) for d in end.decisions] == [
        (0, "advance"),
        (1, "advance"),
        (2, "advance"),
        (3, "advance"),
    ]
    assert max(world.assigned.values()) == 1 and len(world.assigned) == 200
    # canary vs control: wave 1 compares 3 devices with the 197 still on the old version
    first = world.measured[0]
    assert (len(first.canary_device_ids), len(first.control_device_ids)) == (3, 197)
    assert world.measured[-1].control_device_ids == ()
    assert first.window_end - first.window_start >= 600.0


def test_a_regression_is_stopped_at_the_first_wave_and_rolled_back() -> None:
    state = create(spec(), fleet(150, 50), T0)
    world = World(verdicts=lambda wave: "rollback")
    end = drive(state, world)
    assert end.phase is Phase.ROLLED_BACK
    wave0 = {d.device_id for d in end.devices if d.wave == 0}
    assert set(world.assigned) == wave0  # nobody outside wave 1 was ever assigned
    assert all(d.status is S.REVERTED for d in end.devices if d.wave == 0)
    assert all(d.status is S.PENDING for d in end.devices if d.wave > 0)
    assert all(world.desired[d] == OLD and world.active[d] == OLD for d in wave0)
    assert "gate of wave 1 of 4 (1%)" in end.reason


def test_install_failures_are_measured_at_once_and_devices_without_previous_are_removed() -> None:
    devices = fleet(10) | {"new-1": ("small", None)}
    state = create(spec(waves=(100,)), devices, T0)
    failing = {"a-000": "fail", "a-001": "fail", "a-002": "fail"}
    world = World(outcome=failing, verdicts=lambda wave: "rollback")
    end = drive(state, world)
    assert end.phase is Phase.ROLLED_BACK
    assert world.measured[0].failed_device_ids == ("a-000", "a-001", "a-002")
    assert world.measured[0].window_end == world.measured[0].window_start  # no bake for a broken build
    assert world.desired["new-1"] is None  # had no previous build: its desired row is removed


def test_max_parallel_caps_devices_in_flight() -> None:
    peak = 0

    def watch(s: RolloutState) -> None:
        nonlocal peak
        peak = max(peak, sum(1 for d in s.devices if d.status in IN_FLIGHT))

    end = drive(create(spec(max_parallel=4), fleet(30), T0), World(), on_state=watch)
    assert end.phase is Phase.COMPLETED
    assert peak == 4


def test_a_silent_device_times_out_and_counts_as_failed() -> None:
    state = create(spec(waves=(100,), thresholds=Thresholds(max_install_failure_rate=0.5)), fleet(4), T0)
    world = World(outcome={"a-002": "silent"})
    end = drive(state, world)
    assert end.phase is Phase.COMPLETED
    bad = end.device("a-002")
    assert bad is not None and bad.status is S.FAILED
    assert bad.reason == "installing: did not report kws v4 int8 active within 300 s"
    assert world.measured[0].failed_device_ids == ("a-002",)


def test_a_rollback_that_devices_never_confirm_fails_with_the_reason() -> None:
    state = create(spec(waves=(100,)), fleet(3), T0)
    end = drive(state, World(outcome={"a-001": "silent"}, verdicts=lambda wave: "rollback"))
    assert end.phase is Phase.FAILED
    assert "rollback timed out after 3600 s: 1 device(s) did not report their previous build (a-001)" in end.reason
    # The operator can retry the reverts from failed.
    again, actions = step(end, Rollback("retry"), T0 + 10**6)
    assert again.phase is Phase.ROLLING_BACK
    assert [a for a in actions if isinstance(a, Revert)][0].device_records[0].device_id == "a-001"


# --- manual stepping -----------------------------------------------------------------------------------------


def run(state: RolloutState, *events: Event, now: float = T0) -> tuple[RolloutState, list[Action]]:
    actions: list[Action] = []
    for event in events:
        state, actions = step(state, event, now)
    return state, actions


def started(**changes: object) -> RolloutState:
    state, _ = run(create(spec(**changes), fleet(20), T0), Start())
    return state


def install_wave(state: RolloutState, now: float = T0) -> RolloutState:
    for d in state.devices:
        if d.status is S.ASSIGNING:
            state, _ = step(state, DeviceAssigned(d.device_id, NEW), now)
    for d in state.devices:
        if d.status is S.INSTALLING:
            state, _ = step(state, DeviceReport(d.device_id, NEW), now)
    return state


def test_start_assigns_the_first_wave_and_persists_first() -> None:
    state, actions = run(create(spec(), fleet(20), T0), Start())
    assert state.phase is Phase.RUNNING
    assert isinstance(actions[0], Persist) and actions[0].state == state
    assigns = [a for a in actions if isinstance(a, Assign)]
    assert assigns == [Assign(("a-000",))]
    assert state.phase_deadline == T0 + 300.0 == state.wake_at


def test_baking_then_measure_then_advance() -> None:
    state = install_wave(started())
    assert state.phase is Phase.BAKING and state.measure_at == T0 + 600.0
    same, actions = step(state, Tick(), T0 + 599)
    assert same == state and actions == []
    state, actions = step(state, Tick(), T0 + 600)
    measure = [a for a in actions if isinstance(a, MeasureGate)]
    assert measure == [MeasureGate(0, ("a-000",), tuple(f"a-{i:03d}" for i in range(1, 20)), T0, T0 + 600.0, ())]
    assert state.measuring
    state, actions = step(state, GateResult(0, "wait", ("canary has 12 of 200 requests needed",)), T0 + 601)
    assert state.phase is Phase.BAKING and state.measure_at == T0 + 901
    state, actions = step(state, Tick(), T0 + 901)
    state, actions = step(state, GateResult(0, "advance", ("ok",), {"p95": 3.0}), T0 + 902)
    assert state.phase is Phase.RUNNING and state.wave == 1
    assert [a for a in actions if isinstance(a, Assign)] == [Assign(("a-001",))]  # 10% of 20: 2 so far
    assert state.decisions[-1].numbers == {"p95": 3.0}


def test_late_and_duplicate_events_are_ignored() -> None:
    state = install_wave(started())
    for event in (
        DeviceAssigned("a-000", NEW),  # duplicate
        DeviceReport("a-000", NEW),  # duplicate
        DeviceReport("a-005", OLD),  # a device not yet in a wave
        DeviceReport("ghost", NEW, True),  # unknown device
        GateResult(0, "advance"),  # not asked for yet
        GateResult(3, "rollback"),  # another wave
        Tick(),
    ):
        again, actions = step(state, event, T0 + 1)
        assert again == state and actions == [], event


def test_pause_resume_and_abort() -> None:
    state = started()
    with pytest.raises(RolloutError, match="not paused: nothing to resume"):
        step(state, Resume(), T0)
    state, actions = step(state, Pause("investigating"), T0 + 1)
    assert state.phase is Phase.PAUSED and state.paused_reason == "operator: investigating"
    assert state.phase_deadline == T0 + 1 + 7 * 86400
    with pytest.raises(RolloutError, match="already paused|only a running or baking one pauses"):
        step(state, Pause(), T0 + 2)
    # reports still count while paused, but nothing is assigned
    state = install_wave(state, T0 + 2)
    assert state.phase is Phase.PAUSED
    assert all(d.status is S.PENDING for d in state.devices if d.wave > 0)
    # resume: the wave finished installing while paused, so its bake starts now
    state, actions = step(state, Resume(), T0 + 3)
    assert state.phase is Phase.BAKING and state.bake_started_at == T0 + 3
    state, actions = step(state, Abort("enough"), T0 + 4)
    assert state.phase is Phase.ABORTED and state.reason == "operator: enough"
    assert state.phase_deadline is None
    for event in (Tick(), DeviceReport("a-001", NEW), DeviceJoined("z", "small"), GateResult(0, "advance")):
        assert step(state, event, T0 + 5) == (state, [])
    for command in (Pause(), Resume(), Abort(), Start()):
        with pytest.raises(RolloutError):
            step(state, command, T0 + 5)


def test_resume_of_a_gate_pause_measures_again() -> None:
    state = install_wave(started())
    state, _ = step(state, Tick(), T0 + 600)
    state, _ = step(state, GateResult(0, "pause", ("p95 latency 31.2 ms is 2.40x the control's 13.0 ms",)), T0 + 601)
    assert state.phase is Phase.PAUSED and "2.40x" in state.paused_reason
    state, actions = step(state, Resume(), T0 + 5000)
    measure = [a for a in actions if isinstance(a, MeasureGate)]
    assert len(measure) == 1 and measure[0].window_start == T0 and measure[0].window_end == T0 + 5000
    assert [d.verdict for d in state.decisions] == ["pause", "resume"]


def test_a_device_joining_mid_rollout_is_assigned_right_away() -> None:
    state = install_wave(started())  # baking wave 1
    state, actions = step(state, DeviceJoined("c-new", "tiny", OLD), T0 + 5)
    record = state.device("c-new")
    assert record is not None and record.wave == 0 and record.status is S.ASSIGNING
    assert Assign(("c-new",)) in actions
    assert step(state, DeviceJoined("c-new", "tiny", OLD), T0 + 6) == (state, [])  # duplicate


def test_joining_while_paused_waits_for_resume() -> None:
    state, _ = step(started(), Pause(), T0)
    state, actions = step(state, DeviceJoined("c-new", "tiny", None), T0 + 1)
    assert not any(isinstance(a, Assign) for a in actions)
    state, actions = step(state, Resume(), T0 + 2)
    assert any(isinstance(a, Assign) and "c-new" in a.device_ids for a in actions)


def test_gate_without_verdict_pauses_and_a_long_pause_aborts() -> None:
    state = install_wave(started())
    deadline = state.phase_deadline
    assert deadline == T0 + 600 + 6 * 3600
    state, _ = step(state, Tick(), T0 + 600)
    state, _ = step(state, Tick(), deadline)
    assert state.phase is Phase.PAUSED
    assert state.paused_reason == "no gate verdict within 21600 s after the bake of wave 1 of 4 (1%)"
    state, _ = step(state, Tick(), deadline + 7 * 86400)
    assert state.phase is Phase.ABORTED and "paused longer than 604800 s" in state.reason


def test_rollback_of_a_completed_rollout_reverts_every_touched_device() -> None:
    end = drive(create(spec(waves=(50, 100)), fleet(6), T0), World())
    assert end.phase is Phase.COMPLETED
    state, actions = step(end, Rollback("bad in the field"), T0 + 10**5)
    assert state.phase is Phase.ROLLING_BACK
    (revert,) = [a for a in actions if isinstance(a, Revert)]
    assert len(revert.device_records) == 6 and all(d.previous == OLD for d in revert.device_records)
    for d in revert.device_records:
        state, _ = step(state, DeviceReport(d.device_id, OLD), T0 + 10**5 + 1)
    assert state.phase is Phase.ROLLED_BACK
    with pytest.raises(RolloutError, match="nothing to roll back"):
        step(state, Rollback(), T0 + 10**6)


def test_rollback_mid_wave_reverts_in_flight_devices_and_repeats_after_a_late_assignment() -> None:
    state = started(waves=(50, 100))  # 10 devices assigning
    state, _ = step(state, DeviceAssigned("a-000", NEW), T0)
    state, actions = step(state, Rollback("stop"), T0 + 1)
    (revert,) = [a for a in actions if isinstance(a, Revert)]
    assert len(revert.device_records) == 10
    assert not any(d.status is not S.PENDING for d in state.devices if d.wave == 1)
    # the assignment of a-001 lands after the revert was ordered: revert it again
    again, actions = step(state, DeviceAssigned("a-001", NEW), T0 + 2)
    assert again == state and [type(a) for a in actions] == [Revert]


def test_operator_command_errors_name_the_phase() -> None:
    state = create(spec(), fleet(3), T0)
    with pytest.raises(RolloutError, match="created: only a running or baking one pauses"):
        step(state, Pause(), T0)
    with pytest.raises(RolloutError, match="nothing to roll back"):
        step(state, Rollback(), T0)
    state, _ = step(state, Start(), T0)
    with pytest.raises(RolloutError, match="already running"):
        step(state, Start(), T0)


def test_an_empty_fleet_completes_at_once() -> None:
    state, actions = step(create(spec(), {}, T0), Start(), T0)
    assert state.phase is Phase.COMPLETED and state.reason == "no devices to update"


def test_a_wrong_build_assignment_is_a_server_bug() -> None:
    with pytest.raises(ValueError, match="not a build of kws v4"):
        step(started(), DeviceAssigned("a-000", OLD), T0)


def test_recover_redoes_exactly_the_unfinished_work() -> None:
    state = started(waves=(50, 100), max_parallel=3)
    state, _ = step(state, DeviceAssigned("a-000", NEW), T0)
    state, _ = step(state, DeviceReport("a-000", NEW), T0)
    state, _ = step(state, DeviceAssigned("a-001", NEW), T0)
    actions = recover(rollout_json.from_json(rollout_json.to_json(state)), T0 + 5)
    assert [a for a in actions if not isinstance(a, Notify)] == [Assign(("a-002", "a-003"))]
    state = install_wave(state)
    state = install_wave(state)
    state = install_wave(state)
    state = install_wave(state)
    assert state.phase is Phase.BAKING
    assert [a for a in recover(state, T0 + 1) if not isinstance(a, Notify)] == []
    assert [type(a) for a in recover(state, T0 + 600) if not isinstance(a, Notify)] == [MeasureGate]
    state, _ = step(state, Rollback(), T0 + 2)
    assert [type(a) for a in recover(state, T0 + 3) if not isinstance(a, Notify)] == [Revert]


# --- properties ----------------------------------------------------------------------------------------------

IDS = [f"a-{i:03d}" for i in range(4)] + [f"b-{i:03d}" for i in range(3)]
BUILDS = st.sampled_from([None, OLD, NEW, NEW_FP16])
EVENTS = st.one_of(
    st.just(Start()),
    st.just(Tick()),
    st.builds(DeviceAssigned, st.sampled_from([*IDS, "j-0", "ghost"]), st.just(NEW)),
    st.builds(
        DeviceReport, st.sampled_from([*IDS, "j-0", "ghost"]), BUILDS, st.booleans(), st.sampled_from(["", "boom"])
    ),
    st.builds(
        GateResult, st.integers(0, 2), st.sampled_from(["advance", "wait", "pause", "rollback"]), st.just(("r",))
    ),
    st.builds(DeviceJoined, st.just("j-0"), st.sampled_from(["small", "tiny"]), BUILDS),
    st.builds(Pause, st.just("p")),
    st.just(Resume()),
    st.builds(Abort),
    st.builds(Rollback, st.just("r")),
)
COMMANDS = (Start, Pause, Resume, Abort, Rollback)


@dataclass(frozen=True)
class Help:
    """Placeholder for the event that moves the rollout on from where it stands (so waves get reached)."""


def helpful(state: RolloutState, now: float) -> tuple[Event, float]:
    for d in state.devices:
        if d.status is S.ASSIGNING:
            return DeviceAssigned(d.device_id, NEW), now
    for d in state.devices:
        if d.status is S.INSTALLING:
            return DeviceReport(d.device_id, NEW), now
        if d.status is S.REVERTING:
            return DeviceReport(d.device_id, d.previous), now
    if state.phase is Phase.BAKING and state.measuring:
        return GateResult(state.wave, "advance", ("fine",)), now
    if state.phase is Phase.BAKING and state.measure_at is not None:
        return Tick(), max(now, state.measure_at)
    if state.phase is Phase.CREATED:
        return Start(), now
    if state.phase is Phase.PAUSED:
        return Resume(), now
    return Tick(), now


GUIDED = st.tuples(st.integers(0, 9), EVENTS).map(lambda pair: Help() if pair[0] < 7 else pair[1])
DELAYS = st.sampled_from([0.0, 0.0, 0.0, 1.0, 1.0, 200.0, 700.0, 4000.0, 30000.0])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(10, 150).flatmap(lambda n: st.lists(st.tuples(GUIDED, DELAYS), min_size=n, max_size=n)),
    st.integers(0, 3),
)
def test_random_event_sequences_keep_the_invariants(events: list[tuple[Event | Help, float]], cap: int) -> None:
    state = create(spec(waves=(20, 60, 100), max_parallel=cap), {d: (d[0], OLD) for d in IDS}, T0)
    now = T0
    assigned: Counter[str] = Counter()
    for drawn, dt in events:
        now += dt
        event, now = helpful(state, now) if isinstance(drawn, Help) else (drawn, now)
        try:
            new, actions = step(state, event, now)
        except RolloutError:
            assert isinstance(event, COMMANDS)
            continue
        if state.phase in TERMINAL and not isinstance(event, Rollback):
            assert (new, actions) == (state, [])
        if new != state:
            assert actions[0] == Persist(new)
        else:
            assert not any(isinstance(a, Persist) for a in actions)
        for action in actions:
            if isinstance(action, Assign):
                assert new.phase in (Phase.RUNNING, Phase.BAKING), new.phase
                assigned.update(action.device_ids)
        assert not assigned or max(assigned.values()) == 1  # never assigned twice
        if new.phase in IN_PROGRESS:
            assert new.phase_deadline is not None and new.wake_at is not None
        if cap and new.phase in (Phase.RUNNING, Phase.BAKING):
            assert sum(1 for d in new.devices if d.status in IN_FLIGHT) <= cap
        assert all(d.status is S.PENDING for d in new.devices if d.wave > new.wave)
        assert rollout_json.from_json(rollout_json.to_json(new)) == new
        state = new


@FAST
@given(
    st.dictionaries(st.sampled_from(IDS), st.sampled_from(["ok", "fail", "silent"]), max_size=3),
    st.lists(st.sampled_from(["advance", "advance", "wait", "pause", "rollback"]), min_size=3, max_size=3),
    st.integers(0, 2),
    st.floats(0, 1, exclude_max=True),
)
def test_a_crash_at_any_point_ends_like_no_crash(
    outcome: dict[str, str], verdicts: list[str], cap: int, where: float
) -> None:
    tally: dict[int, int] = {}

    def verdict(wave: int) -> str:
        # "wait" once per wave, then advance; "pause" resolves to nothing: the pause times out.
        tally[wave] = tally.get(wave, 0) + 1
        v = verdicts[wave]
        return "advance" if v == "wait" and tally[wave] > 1 else v

    def fresh() -> tuple[RolloutState, World]:
        tally.clear()
        devices = {d: (d[0], OLD if d != "b-002" else None) for d in IDS}
        thresholds = Thresholds(max_install_failure_rate=1.0)
        s = create(spec(waves=(20, 60, 100), max_parallel=cap, thresholds=thresholds), devices, T0)
        return s, World(outcome=outcome, verdicts=verdict)

    steps = 0

    def count(_: RolloutState) -> None:
        nonlocal steps
        steps += 1

    state, world = fresh()
    expected = drive(state, world, dt=3600.0, max_ticks=1000, on_state=count)
    crash_after = 1 + int(where * steps)
    state, world = fresh()
    crashed = drive(state, world, crash_after=crash_after, dt=3600.0, max_ticks=1000)
    assert summary(crashed) == summary(expected)
    assert all(d.status is not S.PENDING or world.assigned[d.device_id] == 0 for d in crashed.devices)
    installed = [d for d in crashed.devices if d.status is S.INSTALLED]
    assert all(world.assigned[d.device_id] >= 1 for d in installed)
