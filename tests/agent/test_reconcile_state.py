"""The reconciler's persisted state: JSON round trip, strict parsing of a state file, the wire forms."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.reconcile_events import DesiredStateReceived, Emit, LifecycleKind, Report, desired_from_proto
from agent.reconcile_state import (
    MAX_STATE_BYTES,
    SETTLED,
    WORKING,
    BuildRef,
    Desired,
    InvalidDesiredState,
    Phase,
    ReconcileState,
    Slot,
    StateFileError,
    Target,
    from_json,
    status_report,
    to_json,
)
from protos.edgefleet.v1 import agent_pb2, common_pb2

PROPERTY = settings(max_examples=300, deadline=None)
U64 = 2**64 - 1


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


V4 = Target("text-nlu", "intent", 4, "int8-dynamic", sha("v4"), 50_000_000)
V5 = Target("text-nlu", "intent", 5, "int8-dynamic", sha("v5"), 50_000_000)
KWS = Target("speech-command", "kws", 2, "fp16", sha("kws2"), 5_000_000)

# --- strategies: any state the constructor accepts -------------------------------------------------

texts = st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=24)
times = st.floats(allow_nan=False, allow_infinity=False)
tasks = st.sampled_from(["generic", "speech-command", "text-nlu", "vad"])
refs = st.builds(
    BuildRef,
    name=texts,
    version=st.integers(0, U64),
    variant=st.sampled_from(["fp32", "fp16", "int8-dynamic", "int4-weight"]),
    manifest_sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
)
targets = st.builds(
    lambda task, ref, max_bytes, rollback: Target(task, *vars(ref).values(), max_bytes, rollback),
    tasks,
    refs,
    st.integers(1, U64),
    st.booleans(),
)
target_sets = st.lists(targets, min_size=1, max_size=4, unique_by=lambda t: t.task).map(
    lambda ts: tuple(sorted(ts, key=lambda t: t.task))
)
slots = st.lists(
    st.builds(Slot, tasks, st.none() | refs, st.none() | refs, st.none() | times),
    max_size=4,
    unique_by=lambda s: s.task,
).map(lambda ss: tuple(sorted(ss, key=lambda s: s.task)))


@st.composite
def states(draw: st.DrawFn) -> ReconcileState:
    phase = draw(st.sampled_from(Phase))
    chosen = draw(target_sets) if phase in WORKING else draw(st.just(()) | target_sets)
    current = None
    if phase in WORKING or (phase is Phase.FAILED and chosen and draw(st.booleans())):
        current = draw(st.sampled_from(chosen))
    generation = draw(st.integers(0, U64 - 1))
    last_ticket = draw(st.integers(1, U64))
    awaiting = retry_at = deadline = None
    if phase in WORKING:
        if phase in (Phase.DOWNLOADING, Phase.AWAITING_ACTIVATION_LOCK) and draw(st.booleans()):
            retry_at = draw(times)
        else:
            awaiting = draw(st.integers(1, last_ticket))
        if awaiting is not None or phase is Phase.AWAITING_ACTIVATION_LOCK or draw(st.booleans()):
            deadline = draw(times)
    deferred = None
    if phase in (Phase.ACTIVATING, Phase.ROLLING_BACK) and draw(st.booleans()):
        deferred = Desired(draw(st.integers(generation + 1, U64)), draw(target_sets))
    return ReconcileState(
        phase=phase,
        generation=generation,
        targets=chosen,
        current=current,
        slots=draw(slots),
        failure_reason=draw(st.text(max_size=40)),
        deadline=deadline,
        retry_at=retry_at,
        download_attempts=draw(st.integers(0, 10)),
        restarts=draw(st.integers(0, 10)),
        last_ticket=last_ticket,
        awaiting=awaiting,
        deferred=deferred,
    )


@PROPERTY
@given(state=states())
def test_every_state_survives_a_json_round_trip(state: ReconcileState) -> None:
    """from_json(to_json(s)) == s for any valid state, unicode and extreme integers included."""
    text = to_json(state)
    assert from_json(text) == state
    assert from_json(text.encode()) == state
    assert json.loads(text)["schema"] == 1


def test_the_initial_state_is_idle_and_round_trips() -> None:
    """A device that never received a desired state is IDLE at generation 0 and serves nothing."""
    state = ReconcileState()
    assert (state.phase, state.generation, state.slots) == (Phase.IDLE, 0, ())
    assert from_json(to_json(state)) == state


# --- a corrupt, truncated or foreign state file is refused with a clear error ----------------------

GOOD = ReconcileState(
    phase=Phase.DOWNLOADING,
    generation=2,
    targets=(V5,),
    current=V5,
    slots=(Slot("text-nlu", V4.ref, None, 500.0),),
    deadline=2000.0,
    download_attempts=1,
    last_ticket=1,
    awaiting=1,
)


def edited(**changes: Any) -> str:
    data = json.loads(to_json(GOOD))
    data.update(changes)
    return json.dumps(data)


def without(key: str) -> str:
    data = json.loads(to_json(GOOD))
    del data[key]
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON"),
        (to_json(GOOD)[:-9], "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"schema": 1, "phase": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (without("schema"), "schema None is not supported"),
        (edited(schema=2), "schema 2 is not supported (this agent reads schema 1)"),
        (edited(colour="blue"), "state: unknown field 'colour'"),
        (without("last_ticket"), "state: missing field 'last_ticket'"),
        (edited(generation="2"), "state.generation: expected int, got '2'"),
        (edited(generation=True), "state.generation: expected int, got True"),
        (edited(generation=2.0), "state.generation: expected int, got 2.0"),
        (edited(deadline="soon"), "state.deadline: expected float"),
        (edited(phase="PAUSED"), "state.phase: unknown phase 'PAUSED'"),
        (edited(current=None), "DOWNLOADING needs a current target"),
        (edited(awaiting=7), "awaiting ticket 7 was never issued"),
        (edited(generation=-1), "generation must be a non-negative integer"),
        (edited(slots=[{"task": "text-nlu", "active": None, "previous": None}]), "state.slots[0]: missing field"),
        (edited(slots=[{"task": "text-nlu", "active": 3, "previous": None, "activated_at": None}]), "expected dict"),
        (edited(targets=[{**json.loads(to_json(GOOD))["targets"][0], "manifest_sha256": "ab"}]), "state.targets[0]"),
        (edited(deferred={"generation": 3, "targets": []}), "a deferred generation"),
    ],
)
def test_a_bad_state_file_is_refused_with_an_error_naming_the_problem(text: str | bytes, message: str) -> None:
    """Truncation, corruption, a newer schema or an inconsistent state raise StateFileError, never a bare error."""
    with pytest.raises(StateFileError) as caught:
        from_json(text)
    assert message in str(caught.value)


def test_an_oversized_state_file_is_refused_before_parsing() -> None:
    """A state file over 1 MiB is refused without being parsed."""
    with pytest.raises(StateFileError, match="at most"):
        from_json(" " * (MAX_STATE_BYTES + 1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"current": None}, "needs a current target"),
        ({"phase": Phase.COMMITTED}, "has no current target"),
        ({"awaiting": None}, "awaits exactly one of an outcome and a retry time"),
        ({"deadline": None}, "needs a deadline"),
        ({"deadline": 5}, "finite float"),
        ({"targets": (V5, KWS)}, "sorted by task"),
        ({"current": V4}, "is not one of the generation's targets"),
        ({"retry_at": 5.0}, "awaits exactly one"),
        ({"deferred": Desired(3, (V5,))}, "a deferred generation"),
        ({"restarts": -1}, "restarts must be a non-negative integer"),
    ],
)
def test_an_inconsistent_state_cannot_be_built(changes: dict[str, Any], message: str) -> None:
    """The constructor refuses states the machine could never be in, so none reaches the disk."""
    with pytest.raises(ValueError, match=message):
        replace(GOOD, **changes)


def test_settled_phases_await_nothing() -> None:
    """IDLE, COMMITTED and FAILED carry no ticket, deadline or retry time."""
    for phase in SETTLED:
        with pytest.raises(ValueError, match="awaits nothing"):
            ReconcileState(phase=phase, last_ticket=1, awaiting=1, deadline=1.0)


# --- the wire ----------------------------------------------------------------------------------------


def test_phases_map_one_to_one_onto_the_wire_enum() -> None:
    """Every Phase has the name and number of a ReconcilePhase, and every non-zero ReconcilePhase has a Phase."""
    assert {p.name: p.value for p in Phase} == {
        name: number for name, number in agent_pb2.ReconcilePhase.items() if number != 0
    }


def test_every_lifecycle_kind_the_reconciler_emits_exists_on_the_wire() -> None:
    """Each LifecycleKind literal names a LifecycleEvent.Kind value."""
    for kind in get_args(LifecycleKind):
        assert common_pb2.LifecycleEvent.Kind.Value(kind) != 0


def test_status_report_carries_generation_phase_active_previous_and_reason() -> None:
    """The StatusReport lists each serving slot with its build, activation time and the previous build."""
    state = replace(
        GOOD,
        phase=Phase.FAILED,
        awaiting=None,
        deadline=None,
        failure_reason="sha256 mismatch for model.onnx",
        slots=(Slot("text-nlu", V5.ref, V4.ref, 1234.5), Slot("vad")),
    )
    report = status_report(state)
    assert report == Report.of(state).to_proto()
    assert (report.generation, report.phase, report.failure_reason) == (2, agent_pb2.FAILED, state.failure_reason)
    [active] = report.active
    assert active.model == V5.ref.to_proto()
    assert active.previous == V4.ref.to_proto()
    assert active.activated_at.ToNanoseconds() == 1_234_500_000_000


def test_emit_becomes_a_lifecycle_event_with_model_generation_and_details() -> None:
    """Emit.to_proto fills the kind, time, model, reason, generation and details."""
    event = Emit("ACCEPTANCE_PASSED", 7, V5, "", (("latency_p95_ms", "12.5"),)).to_proto(at=10.0)
    assert event.kind == common_pb2.LifecycleEvent.ACCEPTANCE_PASSED
    assert (event.generation, event.model.version, dict(event.details)) == (7, 5, {"latency_p95_ms": "12.5"})
    assert event.at.seconds == 10
    assert not Emit("RECONCILE_FAILED", 7, None, "x").to_proto(at=0.0).HasField("model")


def desired_message(generation: int, *models: tuple[str, int, str]) -> agent_pb2.DesiredState:
    return agent_pb2.DesiredState(
        generation=generation,
        models=[
            agent_pb2.DesiredModel(
                task=task,
                model=common_pb2.ModelRef(name="m", version=version, variant="fp32", manifest_sha256=digest),
                max_bytes=1000,
            )
            for task, version, digest in models
        ],
    )


def test_a_desired_state_message_becomes_an_event_with_targets_in_task_order() -> None:
    """desired_from_proto keeps every field and sorts the targets by task."""
    event = desired_from_proto(desired_message(3, ("vad", 1, sha("a")), ("text-nlu", 2, sha("b"))))
    assert event == DesiredStateReceived(
        3, (Target("text-nlu", "m", 2, "fp32", sha("b"), 1000), Target("vad", "m", 1, "fp32", sha("a"), 1000))
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (desired_message(0, ("vad", 1, sha("a"))), "generation must be a positive integer"),
        (desired_message(3, ("vad", 1, sha("a")), ("vad", 2, sha("b"))), "named twice"),
        (desired_message(3, ("vad", 1, "ABC")), "manifest_sha256 must be 64 lower-case hex digits"),
        (desired_message(3, ("", 1, sha("a"))), "task must be"),
        (desired_message(3, ("Text NLU", 1, sha("a"))), "task must be"),
        (desired_message(3, *((f"t{i}", 1, sha("a")) for i in range(33))), "too many targets"),
    ],
)
def test_a_malformed_desired_state_is_refused(message: agent_pb2.DesiredState, error: str) -> None:
    """A desired state with a bad generation, a repeated slot or a bad reference raises InvalidDesiredState."""
    with pytest.raises(InvalidDesiredState, match=error):
        desired_from_proto(message)


def test_a_target_without_a_size_cap_is_refused() -> None:
    """max_bytes 0 (the proto default) would mean no cap on the download, so it is refused."""
    with pytest.raises(InvalidDesiredState, match="max_bytes must be a positive integer"):
        Target("vad", "m", 1, "fp32", sha("a"), 0)
