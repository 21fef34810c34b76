"""Telemetry in the store: batches are de-duplicated, minutes add up exactly, bounds refuse whole batches."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from controlplane.store import NotFound, Store
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import Histogram
from tests.store.sample import T0, device

MINUTE = T0.replace(second=0, microsecond=0)
SINCE = MINUTE - timedelta(hours=1)


def _histogram(*samples: float) -> Histogram:
    histogram = Histogram()
    for ms in samples:
        histogram.observe(ms)
    return histogram


def _minute(
    samples: list[float], *, errors: int = 0, variant: str = "int8", version: int = 3
) -> telemetry_pb2.ModelMinute:
    minute = telemetry_pb2.ModelMinute(
        model=common_pb2.ModelRef(name="nlu", version=version, variant=variant),
        task="text-nlu",
        requests=len(samples) + errors,
        errors=errors,
        latency=_histogram(*samples).to_proto(),
        confidence_sum=0.5 * len(samples),
        input_size_sum=10.0,
        input_size_max=7.0,
    )
    minute.minute.FromDatetime(MINUTE)
    return minute


def _batch(sequence: int, *minutes: telemetry_pb2.ModelMinute, boot_id: str = "boot-1") -> telemetry_pb2.TelemetryBatch:
    batch = telemetry_pb2.TelemetryBatch(device_id="dev-1", boot_id=boot_id, sequence=sequence, minutes=minutes)
    sample = batch.resources.add(cpu_percent=12.5, rss_bytes=100, memory_available_bytes=200, disk_free_bytes=300)
    sample.at.FromDatetime(T0)
    sample.temperature_celsius = math.nan
    event = batch.events.add(kind=common_pb2.LifecycleEvent.ACTIVATED, reason="ok", generation=2)
    event.at.FromDatetime(T0 + timedelta(seconds=sequence))
    event.model.name = "nlu"
    return batch


def test_a_duplicate_batch_changes_nothing(store: Store) -> None:
    device(store, "dev-1")
    batch = _batch(1, _minute([1.0, 2.0]))
    assert store.ingest_batch("dev-1", batch, T0) is False
    before = (store.latency(since=SINCE), store.events(since=SINCE, limit=100))
    assert store.ingest_batch("dev-1", batch, T0) is True
    assert (store.latency(since=SINCE), store.events(since=SINCE, limit=100)) == before
    [row] = before[0]
    assert row.requests == 2


def test_two_batches_for_the_same_minute_add_up_and_the_histogram_merge_is_exact(store: Store) -> None:
    device(store, "dev-1")
    first, second = [0.3, 1.0, 4.0], [2.0, 90.0]
    store.ingest_batch("dev-1", _batch(1, _minute(first, errors=1)), T0)
    store.ingest_batch("dev-1", _batch(1, _minute(second), boot_id="boot-2"), T0)
    [row] = store.latency(since=SINCE, model="nlu", device_id="dev-1")
    assert row.key == {"model": "nlu"}
    assert (row.requests, row.errors) == (6, 1)
    assert row.latency == _histogram(*first, *second)
    assert row.confidence_sum == pytest.approx(2.5)


def test_two_minutes_with_the_same_key_in_one_batch_add_up(store: Store) -> None:
    device(store, "dev-1")
    store.ingest_batch("dev-1", _batch(1, _minute([1.0]), _minute([5.0])), T0)
    [row] = store.latency(since=SINCE)
    assert row.requests == 2 and row.latency == _histogram(1.0, 5.0)


def test_latency_groups_by_variant_and_by_device(store: Store) -> None:
    device(store, "dev-1")
    device(store, "dev-2")
    store.ingest_batch("dev-1", _batch(1, _minute([1.0], variant="fp32"), _minute([2.0, 3.0])), T0)
    store.ingest_batch("dev-2", _batch(1, _minute([4.0])), T0)
    by_variant = {(r.key["variant"], r.requests) for r in store.latency(since=SINCE, by="variant")}
    assert by_variant == {("fp32", 1), ("int8", 3)}
    by_device = {(r.key["device"], r.requests) for r in store.latency(since=SINCE, by="device")}
    assert by_device == {("dev-1", 3), ("dev-2", 1)}
    assert store.latency(since=MINUTE + timedelta(minutes=1)) == []
    [per_minute] = store.latency(since=SINCE, by="minute", device_id="dev-2")
    assert per_minute.key == {"model": "nlu", "minute": MINUTE.isoformat()}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: [b.minutes.add().CopyFrom(b.minutes[0]) for _ in range(1440)], "at most 1440"),
        (lambda b: [b.events.add().CopyFrom(b.events[0]) for _ in range(1000)], "at most 1000"),
        (lambda b: setattr(b.minutes[0], "errors", 99), "more errors"),
        (lambda b: b.minutes[0].latency.counts.append(1), "highest non-empty bucket"),
        (lambda b: setattr(b, "boot_id", ""), "boot_id"),
    ],
)
def test_a_malformed_batch_is_refused_whole(store: Store, mutate, message: str) -> None:
    device(store, "dev-1")
    batch = _batch(1, _minute([1.0]))
    mutate(batch)
    with pytest.raises(ValueError, match=message):
        store.ingest_batch("dev-1", batch, T0)
    assert store.latency(since=SINCE) == [] and store.events(since=SINCE, limit=10) == []
    assert store.ingest_batch("dev-1", _batch(1, _minute([1.0])), T0) is False  # the key was not taken


def test_a_batch_for_an_unknown_device_is_refused(store: Store) -> None:
    with pytest.raises(NotFound):
        store.ingest_batch("ghost", _batch(1, _minute([1.0])), T0)


def test_health_shows_the_newest_sample_and_the_last_status(store: Store) -> None:
    device(store, "dev-1")
    device(store, "dev-2", fleet="other")
    store.ingest_batch("dev-1", _batch(1), T0)
    later = _batch(2)
    later.resources[0].at.FromDatetime(T0 + timedelta(seconds=30))
    later.resources[0].cpu_percent = 80.0
    store.ingest_batch("dev-1", later, T0)
    active = [{"model": {"name": "nlu", "version": "3"}}]
    store.record_status("dev-1", generation=2, phase="COMMITTED", failure_reason="", active=active, now=T0)
    [row] = store.health("lab")
    assert row.device.device_id == "dev-1"
    assert row.resources is not None and row.resources.cpu_percent == 80.0
    assert row.resources.temperature_celsius is None
    assert row.status is not None and (row.status.phase, row.status.active) == ("COMMITTED", active)
    assert [r.device.device_id for r in store.health()] == ["dev-1", "dev-2"]
    store.record_status("dev-1", generation=3, phase="FAILED", failure_reason="x", active=[], now=T0)
    assert store.device_statuses(["dev-1", "dev-2"])["dev-1"].phase == "FAILED"


def test_events_are_the_newest_ones_oldest_first(store: Store) -> None:
    device(store, "dev-1")
    for sequence in (1, 2, 3):
        store.ingest_batch("dev-1", _batch(sequence), T0)
    events = store.events(since=SINCE, limit=2, device_id="dev-1")
    assert [e.at for e in events] == [T0 + timedelta(seconds=2), T0 + timedelta(seconds=3)]
    assert events[0].kind == "ACTIVATED" and events[0].name == "nlu"
    assert store.events(since=SINCE, limit=10, device_id="dev-2") == []


def test_concurrent_batches_for_one_minute_all_add_up(store: Store) -> None:
    """Eight batches for the same minute, stored from eight threads at once, lose no request."""
    device(store, "dev-1")
    samples = [[0.1 * (i + 1), 3.0 * (i + 1)] for i in range(8)]

    def ingest(i: int) -> bool:
        return store.ingest_batch("dev-1", _batch(i, _minute(samples[i])), T0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(ingest, range(8))) == [False] * 8
    [row] = store.latency(since=SINCE)
    expected = _histogram(*(ms for pair in samples for ms in pair))
    assert row.requests == 16
    assert (row.latency.counts, row.latency.max_ms) == (expected.counts, expected.max_ms)
    assert row.latency.sum_ms == pytest.approx(expected.sum_ms)  # float addition order differs
