"""The stored form of a rollout: ``RolloutState`` to and from one JSON document.

``to_json(state)`` is what the server writes to ``rollouts.state`` (the ``Persist`` action);
``from_json(text)`` reads it back, after a restart too. No I/O. The state and its rules live in
``controlplane.rollout``; this module only encodes them, and ``controlplane.rollout`` does not
import it.

Invariants:
- ``from_json(to_json(s)) == s`` for every ``RolloutState``. ``to_json`` is deterministic: one
  compact JSON object, ``schema`` first, keys in a fixed order (thresholds in
  ``gates.Thresholds`` field order, a decision's numbers sorted), never NaN or infinity.
- ``from_json`` accepts only what ``to_json`` writes: ``schema`` 1, every field, no others;
  an integer where an int is stored (a bool is never a number), an integer or a float where
  a float is stored; ``str`` or ``bytes`` of at most ``MAX_STATE_BYTES``. Any other schema is
  refused (a state written by a newer server), so a change of the format bumps ``SCHEMA``.
- Every value goes through the constructors of ``controlplane.rollout``'s data classes, so a
  state that was read is as consistent as one that was built.
- Every refusal is a ``ValueError``. One about a field names its path (``state.devices[3].target:
  ...``, or the enclosing object's path when its constructor refused a field); the whole
  document being too large, not JSON, not an object or of another schema says so; fields
  that each parse but do not fit together (``RolloutState``'s own checks) give "rollout state
  is inconsistent: ...".
"""

from __future__ import annotations

import json
from typing import Any

from controlplane.gates import Thresholds
from controlplane.rollout import Build, Decision, DeviceRecord, DeviceStatus, Phase, RolloutSpec, RolloutState
from protos.strict_json import FieldError, FieldReader, reject_constant

__all__ = ["MAX_STATE_BYTES", "SCHEMA", "from_json", "to_json"]

SCHEMA = 1
MAX_STATE_BYTES = 64 * 1024 * 1024


def to_json(state: RolloutState) -> str:
    """The stored form of ``state``: one JSON object, ``schema`` first."""
    spec = state.spec
    t = spec.thresholds
    data = {
        "schema": SCHEMA,
        "spec": {
            "rollout_id": spec.rollout_id,
            "fleet": spec.fleet,
            "model": spec.model,
            "version": spec.version,
            "waves": list(spec.waves),
            "bake_seconds": spec.bake_seconds,
            "max_parallel": spec.max_parallel,
            "step_timeout_seconds": spec.step_timeout_seconds,
            "thresholds": {name: getattr(t, name) for name in _THRESHOLD_FIELDS},
            "remeasure_seconds": spec.remeasure_seconds,
            "gate_timeout_seconds": spec.gate_timeout_seconds,
            "pause_timeout_seconds": spec.pause_timeout_seconds,
            "rollback_timeout_seconds": spec.rollback_timeout_seconds,
        },
        "phase": state.phase.value,
        "wave": state.wave,
        "devices": [
            {
                "device_id": d.device_id,
                "device_class": d.device_class,
                "wave": d.wave,
                "previous": _build_dict(d.previous),
                "target": _build_dict(d.target),
                "status": d.status.value,
                "since": d.since,
                "reason": d.reason,
            }
            for d in state.devices
        ],
        "decisions": [
            {"at": d.at, "wave": d.wave, "verdict": d.verdict, "reasons": list(d.reasons), "numbers": dict(d.numbers)}
            for d in state.decisions
        ],
        "paused_reason": state.paused_reason,
        "reason": state.reason,
        "updated_at": state.updated_at,
        "phase_deadline": state.phase_deadline,
        "bake_started_at": state.bake_started_at,
        "measure_at": state.measure_at,
        "measuring": state.measuring,
    }
    return json.dumps(data, allow_nan=False, separators=(",", ":"))


def from_json(text: str | bytes) -> RolloutState:
    """Parse what ``to_json`` wrote. Raises ``ValueError`` naming the first bad field."""
    if len(text) > MAX_STATE_BYTES:
        raise ValueError(f"rollout state is {len(text)} bytes (at most {MAX_STATE_BYTES})")
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"rollout state is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("rollout state must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise ValueError(f"rollout state schema {data.get('schema')!r} is not supported (this reads {SCHEMA})")
    r = FieldReader(data, "state")
    r.keys(
        "schema spec phase wave devices decisions paused_reason reason updated_at phase_deadline bake_started_at "
        "measure_at measuring"
    )
    try:
        phase = r.get("phase", str)
        if phase not in Phase._value2member_map_:
            raise ValueError(f"state.phase: unknown phase {phase!r}")
        return RolloutState(
            spec=_spec(r.get("spec", dict), "state.spec"),
            phase=Phase(phase),
            wave=r.get("wave", int),
            devices=tuple(_device(item, f"state.devices[{i}]") for i, item in enumerate(r.get("devices", list))),
            decisions=tuple(
                _decision(item, f"state.decisions[{i}]") for i, item in enumerate(r.get("decisions", list))
            ),
            paused_reason=r.get("paused_reason", str),
            reason=r.get("reason", str),
            updated_at=r.get("updated_at", float),
            phase_deadline=r.get("phase_deadline", float, optional=True),
            bake_started_at=r.get("bake_started_at", float, optional=True),
            measure_at=r.get("measure_at", float, optional=True),
            measuring=r.get("measuring", bool),
        )
    except FieldError:
        raise
    except ValueError as exc:
        raise ValueError(f"rollout state is inconsistent: {exc}") from exc


_THRESHOLD_FIELDS = tuple(Thresholds.__dataclass_fields__)
_OPTIONAL_THRESHOLDS = frozenset(
    {"max_error_rate", "max_latency_p95_ms", "min_mean_confidence", "max_low_confidence_rate"}
)


def _build_dict(build: Build | None) -> dict[str, Any] | None:
    if build is None:
        return None
    return {"name": build.name, "version": build.version, "variant": build.variant, "sha256": build.manifest_sha256}


def _build(data: object, where: str) -> Build | None:
    if data is None:
        return None
    r = FieldReader(data, where)
    r.keys("name version variant sha256")
    try:
        return Build(r.get("name", str), r.get("version", int), r.get("variant", str), r.get("sha256", str))
    except FieldError:
        raise
    except ValueError as exc:
        raise FieldError(f"{where}: {exc}") from exc


def _spec(data: object, where: str) -> RolloutSpec:
    r = FieldReader(data, where)
    r.keys(
        "rollout_id fleet model version waves bake_seconds max_parallel step_timeout_seconds thresholds "
        "remeasure_seconds gate_timeout_seconds pause_timeout_seconds rollback_timeout_seconds"
    )
    t = FieldReader(r.get("thresholds", dict), f"{where}.thresholds")
    t.keys(_THRESHOLD_FIELDS)
    thresholds: dict[str, Any] = {}
    for name in _THRESHOLD_FIELDS:
        default = Thresholds.__dataclass_fields__[name].default
        kind = str if name == "on_breach" else int if isinstance(default, int) else float
        thresholds[name] = t.get(name, kind, optional=name in _OPTIONAL_THRESHOLDS)
    waves = r.get("waves", list)
    try:
        return RolloutSpec(
            rollout_id=r.get("rollout_id", str),
            fleet=r.get("fleet", str),
            model=r.get("model", str),
            version=r.get("version", int),
            waves=tuple(waves),
            bake_seconds=r.get("bake_seconds", float),
            max_parallel=r.get("max_parallel", int),
            step_timeout_seconds=r.get("step_timeout_seconds", float),
            thresholds=Thresholds(**thresholds),
            remeasure_seconds=r.get("remeasure_seconds", float),
            gate_timeout_seconds=r.get("gate_timeout_seconds", float),
            pause_timeout_seconds=r.get("pause_timeout_seconds", float),
            rollback_timeout_seconds=r.get("rollback_timeout_seconds", float),
        )
    except FieldError:
        raise
    except ValueError as exc:
        raise FieldError(f"{where}: {exc}") from exc


def _device(data: object, where: str) -> DeviceRecord:
    r = FieldReader(data, where)
    r.keys("device_id device_class wave previous target status since reason")
    status = r.get("status", str)
    if status not in DeviceStatus._value2member_map_:
        raise FieldError(f"{where}.status: unknown status {status!r}")
    try:
        return DeviceRecord(
            device_id=r.get("device_id", str),
            device_class=r.get("device_class", str),
            wave=r.get("wave", int),
            previous=r.nested("previous", _build),
            target=r.nested("target", _build),
            status=DeviceStatus(status),
            since=r.get("since", float),
            reason=r.get("reason", str),
        )
    except FieldError:
        raise
    except ValueError as exc:
        raise FieldError(f"{where}: {exc}") from exc


def _decision(data: object, where: str) -> Decision:
    r = FieldReader(data, where)
    r.keys("at wave verdict reasons numbers")
    reasons = r.get("reasons", list)
    numbers = FieldReader(r.get("numbers", dict), f"{where}.numbers")
    try:
        return Decision(
            at=r.get("at", float),
            wave=r.get("wave", int),
            verdict=r.get("verdict", str),
            reasons=tuple(reasons),
            numbers={key: numbers.get(key, float) for key in numbers.data},
        )
    except FieldError:
        raise
    except ValueError as exc:
        raise FieldError(f"{where}: {exc}") from exc
