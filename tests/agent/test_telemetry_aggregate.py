"""MinuteAggregator: per-model, per-UTC-minute counts from numbers only, bounded, nothing lost."""

from __future__ import annotations

import datetime as dt
import inspect
import types
import typing

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry.aggregate import OVERFLOW_KEY, MinuteAggregator, ModelKey
from protos.histogram import Histogram

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
INTENT = ModelKey(name="intent", version=3, variant="int8-dynamic", task="text-classification")
KWS = ModelKey(name="kws", version=1, variant="fp32", task="speech-command")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def record(agg: MinuteAggregator, model=INTENT, *, latency=2.0, ok=True, confidence=0.9, size=12.0, now=T0):
    return agg.record(model, latency, ok, confidence, size, now)


def test_a_minute_is_reported_once_it_is_over_with_every_aggregate():
    agg = MinuteAggregator()
    record(agg, latency=2.0, confidence=0.9, size=12.0, now=at(1))
    record(agg, latency=8.0, ok=False, confidence=None, size=30.0, now=at(59))
    [minute] = agg.drain(at(60))
    assert minute.minute.ToDatetime(tzinfo=dt.UTC) == T0
    assert (minute.model.name, minute.model.version, minute.model.variant, minute.task) == tuple(INTENT)
    assert (minute.requests, minute.errors) == (2, 1)
    assert (minute.confidence_sum, minute.low_confidence) == (0.9, 0)
    assert (minute.input_size_sum, minute.input_size_max) == (42.0, 30.0)
    latency = Histogram.from_proto(minute.latency)
    assert (latency.count, latency.sum_ms, latency.max_ms) == (2, 10.0, 8.0)


def test_the_current_minute_is_not_drained_and_keeps_accumulating():
    agg = MinuteAggregator()
    record(agg, now=at(10))
    assert agg.drain(at(30)) == []
    record(agg, now=at(40))
    [minute] = agg.drain(at(61))
    assert minute.requests == 2
    assert agg.drain(at(200)) == []


def test_minutes_roll_over_on_the_utc_minute_boundary():
    agg = MinuteAggregator()
    record(agg, now=at(59.999))
    record(agg, now=at(60))
    record(agg, now=at(60).astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))))
    first, second = agg.drain(at(120))
    assert (first.minute.ToDatetime(tzinfo=dt.UTC), first.requests) == (T0, 1)
    assert (second.minute.ToDatetime(tzinfo=dt.UTC), second.requests) == (at(60), 2)


def test_each_model_build_and_task_gets_its_own_minute():
    agg = MinuteAggregator()
    record(agg, INTENT)
    record(agg, KWS)
    record(agg, INTENT._replace(variant="fp32"))
    assert len(agg.drain(at(60))) == 3


def test_drain_all_includes_the_current_minute_for_shutdown():
    agg = MinuteAggregator()
    record(agg, now=at(5))
    record(agg, now=at(65))
    assert [m.requests for m in agg.drain_all()] == [1, 1]
    assert agg.drain_all() == []


def test_a_minute_ahead_of_a_clock_stepped_back_is_drained_too():
    agg = MinuteAggregator()
    record(agg, now=at(600))
    [minute] = agg.drain(at(0))
    assert minute.minute.ToDatetime(tzinfo=dt.UTC) == at(600)


@pytest.mark.parametrize(("threshold", "low"), [(0.5, 1), (0.95, 2)])
def test_requests_below_the_configured_threshold_count_as_low_confidence(threshold, low):
    agg = MinuteAggregator(low_confidence_threshold=threshold)
    for confidence in (0.49, 0.5, 0.99):
        record(agg, confidence=confidence)
    [minute] = agg.drain_all()
    assert minute.low_confidence == low
    assert minute.confidence_sum == pytest.approx(1.98)


def test_a_request_without_confidence_adds_neither_to_the_sum_nor_to_low_confidence():
    agg = MinuteAggregator()
    record(agg, ok=False, confidence=None)
    [minute] = agg.drain_all()
    assert (minute.confidence_sum, minute.low_confidence, minute.requests) == (0.0, 0, 1)


def test_numpy_scalars_from_the_runtime_are_accepted():
    agg = MinuteAggregator()
    record(agg, latency=np.float64(1.5), confidence=np.float32(0.25), size=np.int64(7))
    [minute] = agg.drain_all()
    assert (minute.low_confidence, minute.input_size_sum) == (1, 7.0)


# --- bounded keys --------------------------------------------------------------------------------


def test_models_beyond_the_per_minute_cap_are_counted_under_the_overflow_key():
    agg = MinuteAggregator(max_keys_per_minute=2)
    assert record(agg, INTENT) is False
    assert record(agg, KWS) is False
    assert record(agg, INTENT._replace(version=4)) is True
    assert record(agg, KWS._replace(version=9)) is True
    assert record(agg, INTENT) is False  # a model already counted this minute keeps its own key
    minutes = {m.model.name: m for m in agg.drain_all()}
    assert set(minutes) == {"intent", "kws", OVERFLOW_KEY.name}
    assert (minutes["intent"].requests, minutes[OVERFLOW_KEY.name].requests) == (2, 2)
    assert agg.overflowed_requests == 2


def test_the_key_cap_applies_per_minute():
    agg = MinuteAggregator(max_keys_per_minute=1)
    record(agg, INTENT, now=at(0))
    assert record(agg, KWS, now=at(60)) is False


keys = st.builds(ModelKey, st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2), st.just("fp32"), st.just("t"))
events = st.lists(st.tuples(keys, st.booleans(), st.floats(0, 600)), max_size=80)


@given(events, st.integers(1, 5), st.floats(0, 600))
def test_no_request_is_lost_across_drains_and_overflow(recorded, cap, drain_at):
    agg = MinuteAggregator(max_keys_per_minute=cap)
    for key, ok, seconds in recorded:
        agg.record(key, 1.0, ok, 0.7, 1.0, at(seconds))
    minutes = agg.drain(at(drain_at)) + agg.drain_all()
    assert sum(m.requests for m in minutes) == len(recorded)
    assert sum(m.errors for m in minutes) == sum(not ok for _, ok, _ in recorded)
    assert all(Histogram.from_proto(m.latency).count == m.requests for m in minutes)
    per_minute: dict[int, int] = {}
    for m in minutes:
        per_minute[m.minute.seconds] = per_minute.get(m.minute.seconds, 0) + 1
    assert all(n <= cap + 1 for n in per_minute.values())


# --- numbers only --------------------------------------------------------------------------------


def test_record_is_typed_to_take_numbers_and_the_model_key_never_text_or_bytes():
    hints = typing.get_type_hints(MinuteAggregator.record)
    hints.pop("return")
    allowed = {ModelKey, float, bool, type(None), dt.datetime}
    for name, hint in hints.items():
        parts = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        assert parts <= allowed, f"record({name}: {hint}) could carry raw input"
    assert list(inspect.signature(MinuteAggregator.record).parameters)[1:] == [
        "model", "latency_ms", "ok", "confidence", "input_size", "now",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "raw", ["turn on the lights", b"\x00\x01", bytearray(b"pcm"), np.zeros(16000, dtype=np.float32), [0.1, 0.2]]
)
@pytest.mark.parametrize("argument", ["latency", "confidence", "size"])
def test_raw_input_in_any_numeric_argument_is_a_type_error_and_records_nothing(raw, argument):
    agg = MinuteAggregator()
    with pytest.raises(TypeError):
        record(agg, **{argument: raw})
    assert agg.drain_all() == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"latency": float("nan")}, "latency_ms"),
        ({"latency": -1.0}, "latency_ms"),
        ({"size": float("inf")}, "input_size"),
        ({"confidence": 1.5}, "confidence"),
        ({"now": dt.datetime(2026, 3, 1, 12)}, "timezone-aware"),
        ({"model": INTENT._replace(name="x" * 300)}, "longer than"),
    ],
)
def test_out_of_range_values_are_refused_and_record_nothing(overrides, message):
    agg = MinuteAggregator()
    with pytest.raises(ValueError, match=message):
        record(agg, **overrides)
    assert agg.drain_all() == []


@pytest.mark.parametrize(
    "overrides",
    [{"ok": 1}, {"model": "intent"}, {"model": ("intent", "3", "fp32", "t")}, {"model": ("a", 1, b"v", "t")}],
)
def test_a_wrong_type_for_the_outcome_or_the_model_is_refused(overrides):
    with pytest.raises(TypeError):
        record(MinuteAggregator(), **overrides)


@pytest.mark.parametrize("kwargs", [{"low_confidence_threshold": 1.5}, {"max_keys_per_minute": 0}])
def test_a_nonsensical_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        MinuteAggregator(**kwargs)
