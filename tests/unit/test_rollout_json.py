"""The stored form of a rollout (controlplane.rollout_json): round trip, strict parsing, errors that name the field."""

from __future__ import annotations

import json

import pytest

from controlplane import rollout_json
from controlplane.gates import Thresholds
from controlplane.rollout import GateResult, Tick, step
from tests.unit.test_rollout import T0, install_wave, started


def test_json_round_trip_and_corrupt_text() -> None:
    state = install_wave(started(thresholds=Thresholds(max_error_rate=0.1, on_breach="pause")))
    state, _ = step(state, Tick(), T0 + 600)
    state, _ = step(state, GateResult(0, "wait", ("r",), {"canary_requests": 12}), T0 + 601)
    text = rollout_json.to_json(state)
    assert rollout_json.from_json(text) == state
    assert rollout_json.from_json(text.encode()) == state
    data = json.loads(text)
    for mutate, message in (
        (lambda d: d.pop("wave"), "missing field 'wave'"),
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (lambda d: d.update(schema=2), "schema 2"),
        (lambda d: d.update(phase="dancing"), "unknown phase"),
        (lambda d: d["devices"][0].update(status="lost"), r"state.devices\[0\].status"),
        (lambda d: d["devices"][0]["target"].update(sha256="xyz"), r"state.devices\[0\].target"),
        (lambda d: d["spec"].update(waves=[50, 20]), "strictly increasing"),
        (lambda d: d["spec"]["thresholds"].update(on_breach="panic"), "on_breach"),
        (lambda d: d.update(phase_deadline=None), "deadline"),
        (lambda d: d["decisions"][0].update(verdict="maybe"), "verdict"),
        (lambda d: d.update(wave="1"), "expected int"),
    ):
        broken = json.loads(text)
        mutate(broken)
        with pytest.raises(ValueError, match=message):
            rollout_json.from_json(json.dumps(broken))
    for text in ("", "{", "[]", '{"schema": 1}', '{"schema":1,"x":NaN}'):
        with pytest.raises(ValueError):
            rollout_json.from_json(text)
    assert data["schema"] == 1


def test_an_oversized_state_is_refused_before_parsing() -> None:
    with pytest.raises(ValueError, match="at most"):
        rollout_json.from_json(b" " * (rollout_json.MAX_STATE_BYTES + 1))
