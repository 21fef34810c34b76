"""Scheme-1 latency histogram maths: bucket bounds, merging, quantile estimates, wire form."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.edgefleet.v1 import telemetry_pb2
from protos.histogram import (
    BUCKETS,
    MAX_COUNT,
    UPPER_BOUNDS_MS,
    Histogram,
    bucket_index,
    bucket_range,
)

latencies = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(latencies, max_size=60)
nonempty_samples = st.lists(latencies, min_size=1, max_size=60)
near_bounds = st.builds(
    lambda i, side: side(UPPER_BOUNDS_MS[i]),
    st.integers(0, BUCKETS - 2),
    st.sampled_from([lambda b: b, lambda b: math.nextafter(b, 0.0), lambda b: math.nextafter(b, math.inf)]),
)


def histogram_of(values: list[float]) -> Histogram:
    h = Histogram()
    for v in values:
        h.observe(v)
    return h


# --- bucket bounds -------------------------------------------------------------------------------


def test_bounds_follow_scheme_1_and_the_last_bucket_is_open():
    assert len(UPPER_BOUNDS_MS) == BUCKETS == 64
    assert all(UPPER_BOUNDS_MS[i] == 0.05 * 1.25**i for i in range(63))
    assert UPPER_BOUNDS_MS[-1] == math.inf


@pytest.mark.parametrize("i", range(BUCKETS - 1))
def test_a_sample_equal_to_a_bound_is_in_the_bucket_that_bound_closes(i):
    bound = UPPER_BOUNDS_MS[i]
    assert bucket_index(bound) == i
    assert bucket_index(math.nextafter(bound, math.inf)) == i + 1
    assert bucket_index(math.nextafter(bound, 0.0)) == i


@pytest.mark.parametrize(("ms", "index"), [(0.0, 0), (0.05, 0), (0.0500001, 1), (1e300, 63), (60_000.0, 63)])
def test_zero_falls_in_the_first_bucket_and_huge_values_in_the_last(ms, index):
    assert bucket_index(ms) == index


@given(st.one_of(latencies, near_bounds, st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)))
def test_every_sample_lies_inside_the_range_of_its_bucket(ms):
    lower, upper = bucket_range(bucket_index(ms))
    assert (lower < ms or ms == 0.0) and ms <= upper


@given(st.integers(1, BUCKETS - 2))
def test_a_bound_rebuilt_by_repeated_multiplication_lands_next_to_its_bucket(i):
    # Another implementation may compute bound i as 0.05 * 1.25 * ... * 1.25: a few ulps off,
    # which must move it at most to the neighbouring bucket, never further.
    rebuilt = 0.05
    for _ in range(i):
        rebuilt *= 1.25
    assert bucket_index(rebuilt) in (i, i + 1)


@pytest.mark.parametrize("bad", [-0.001, -math.inf, math.inf, math.nan])
def test_negative_nan_and_infinite_latencies_are_refused(bad):
    with pytest.raises(ValueError, match="finite, non-negative"):
        bucket_index(bad)
    with pytest.raises(ValueError, match="finite, non-negative"):
        Histogram().observe(bad)


@pytest.mark.parametrize("bad", ["1.0", b"1", None, True])
def test_a_latency_that_is_not_a_number_is_a_type_error(bad):
    with pytest.raises(TypeError):
        Histogram().observe(bad)


# --- observe and merge ---------------------------------------------------------------------------


def test_observe_counts_the_sample_and_tracks_sum_and_max():
    h = histogram_of([1.0, 3.0, 2.0])
    assert (h.count, h.sum_ms, h.max_ms) == (3, 6.0, 3.0)
    assert h.counts[bucket_index(3.0)] == 1


@given(samples, samples)
def test_merge_is_commutative(a, b):
    ha, hb = histogram_of(a), histogram_of(b)
    assert ha.merge(hb) == hb.merge(ha)


@given(samples, samples, samples)
def test_merge_is_associative_exactly_in_counts_and_max_and_up_to_rounding_in_sum(a, b, c):
    ha, hb, hc = histogram_of(a), histogram_of(b), histogram_of(c)
    left, right = ha.merge(hb).merge(hc), ha.merge(hb.merge(hc))
    assert (left.counts, left.max_ms) == (right.counts, right.max_ms)
    assert math.isclose(left.sum_ms, right.sum_ms, rel_tol=1e-12)


@given(samples, samples)
def test_merging_equals_observing_both_sample_sets(a, b):
    merged, direct = histogram_of(a).merge(histogram_of(b)), histogram_of(a + b)
    assert (merged.counts, merged.max_ms) == (direct.counts, direct.max_ms)
    assert math.isclose(merged.sum_ms, direct.sum_ms, rel_tol=1e-12)


def test_merge_leaves_both_inputs_unchanged():
    a, b = histogram_of([1.0]), histogram_of([2.0])
    a.merge(b)
    assert (a.count, a.max_ms, b.count, b.max_ms) == (1, 1.0, 1, 2.0)


def test_merge_refuses_to_exceed_the_sample_cap():
    big = Histogram(counts=[MAX_COUNT] + [0] * (BUCKETS - 1), sum_ms=0.0, max_ms=0.0)
    with pytest.raises(ValueError, match="exceed"):
        big.merge(histogram_of([0.01]))


# --- quantiles -----------------------------------------------------------------------------------


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(nonempty_samples, st.floats(min_value=0.0, max_value=1.0))
def test_the_estimate_lies_in_the_bucket_of_the_exact_quantile(values, q):
    estimate = histogram_of(values).quantile(q)
    assert bucket_index(estimate) == bucket_index(exact_quantile(values, q))


@given(nonempty_samples, st.floats(min_value=0.0, max_value=1.0))
def test_the_estimate_is_never_above_the_max_nor_below_zero(values, q):
    h = histogram_of(values)
    assert 0.0 <= h.quantile(q) <= h.max_ms


@given(st.lists(st.floats(min_value=0.06, max_value=50_000.0), min_size=1, max_size=60), st.floats(0.0, 1.0))
def test_the_relative_error_is_below_one_bucket_width_in_the_log_buckets(values, q):
    exact = exact_quantile(values, q)
    assert abs(histogram_of(values).quantile(q) - exact) / exact < 0.25


@given(nonempty_samples, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_estimates_do_not_decrease_with_q(values, q1, q2):
    h = histogram_of(values)
    low, high = sorted((q1, q2))
    assert h.quantile(low) <= h.quantile(high)


def test_the_top_quantile_is_the_max():
    assert histogram_of([0.2, 7.5, 3.0]).quantile(1.0) == 7.5


def test_samples_in_the_open_last_bucket_interpolate_up_to_the_max():
    h = histogram_of([100_000.0, 200_000.0])
    assert UPPER_BOUNDS_MS[62] < h.quantile(0.5) < 200_000.0
    assert h.quantile(1.0) == 200_000.0


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan])
def test_a_quantile_outside_zero_to_one_is_refused(q):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        histogram_of([1.0]).quantile(q)


def test_an_empty_histogram_has_no_quantile():
    with pytest.raises(ValueError, match="empty"):
        Histogram().quantile(0.5)


# --- wire form -----------------------------------------------------------------------------------


@given(samples)
def test_a_histogram_survives_the_wire(values):
    h = histogram_of(values)
    wire = telemetry_pb2.LatencyHistogram.FromString(h.to_proto().SerializeToString())
    assert Histogram.from_proto(wire) == h


def test_trailing_empty_buckets_are_trimmed_on_the_wire():
    msg = histogram_of([0.01, 0.06]).to_proto()
    assert (msg.scheme, list(msg.counts)) == (1, [1, 1])
    assert list(Histogram().to_proto().counts) == []


def test_fewer_than_64_counts_mean_the_missing_buckets_are_zero():
    h = Histogram.from_proto(telemetry_pb2.LatencyHistogram(scheme=1, counts=[0, 2], sum_ms=0.12, max_ms=0.06))
    assert h.counts == [0, 2] + [0] * 62


def _wire(**overrides) -> telemetry_pb2.LatencyHistogram:
    fields = {"scheme": 1, "counts": [0, 2], "sum_ms": 0.12, "max_ms": 0.06} | overrides
    return telemetry_pb2.LatencyHistogram(**fields)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (_wire(scheme=0), "scheme"),
        (_wire(scheme=2), "scheme"),
        (_wire(counts=[1] * 65), "65 counts"),
        (_wire(sum_ms=math.nan), "sum_ms"),
        (_wire(sum_ms=-1.0), "sum_ms"),
        (_wire(max_ms=math.inf), "max_ms"),
        (_wire(max_ms=-0.5), "max_ms"),
        (_wire(max_ms=5.0), "highest non-empty bucket"),
        (_wire(counts=[], sum_ms=1.0, max_ms=0.0), "empty histogram"),
        (_wire(counts=[MAX_COUNT, 1], max_ms=0.06), "at most"),
    ],
)
def test_invalid_wire_histograms_are_refused(msg, message):
    with pytest.raises(ValueError, match=message):
        Histogram.from_proto(msg)
