"""Telemetry in the store: batches are de-duplicated, minutes add up exactly, bounds refuse whole batches."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from controlplane.store import NotFound, Store
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import MAX_COUNT, Histogram
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
        # Values the database would refuse, which would fail every batch stored in the same group:
        (lambda b: setattr(b, "sequence", 2**63), "sequence is 9223372036854775808"),
        (lambda b: setattr(b.minutes[0], "requests", 2**63), "requests is"),
        (lambda b: setattr(b.minutes[0], "low_confidence", MAX_COUNT + 1), "low_confidence is"),
        (lambda b: setattr(b.minutes[0].model, "version", 2**64 - 1), "model version is"),
        (lambda b: setattr(b.resources[0], "rss_bytes", 2**63), "rss_bytes is"),
        (lambda b: setattr(b.events[0], "generation", 2**63), "generation is"),
        (lambda b: setattr(b.minutes[0].model, "name", "nl\x00u"), "model name contains a NUL"),
        (lambda b: setattr(b.events[0], "reason", "\x00"), "event reason contains a NUL"),
        (lambda b: b.events[0].details.__setitem__("k", "v\x00"), "event detail contains a NUL"),
        (lambda b: setattr(b, "boot_id", "b\x00"), "boot_id contains a NUL"),
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


def test_ingest_batches_gives_each_batch_its_own_outcome_and_stores_the_good_ones(store: Store) -> None:
    """One call: stored, a resend of a stored batch, the same batch twice, a malformed one, an unknown device."""
    device(store, "dev-1")
    device(store, "dev-2")
    assert store.ingest_batch("dev-1", _batch(1, _minute([1.0])), T0) is False
    malformed = _batch(3, _minute([1.0]))
    malformed.minutes[0].errors = 99
    outcomes = store.ingest_batches(
        [
            ("dev-1", _batch(1, _minute([1.0]))),  # stored before: a duplicate
            ("dev-1", _batch(2, _minute([2.0]))),
            ("dev-2", _batch(2, _minute([4.0]))),  # the same (boot, sequence), another device: its own batch
            ("dev-1", _batch(2, _minute([2.0]))),  # the same batch again in this call
            ("dev-1", malformed),
            ("ghost", _batch(1, _minute([8.0]))),
        ],
        T0,
    )
    assert outcomes[:4] == [True, False, False, True]
    assert isinstance(outcomes[4], ValueError) and "more errors" in str(outcomes[4])
    assert isinstance(outcomes[5], NotFound) and "ghost" in str(outcomes[5])
    by_device = {(r.key["device"], r.requests) for r in store.latency(since=SINCE, by="device")}
    assert by_device == {("dev-1", 2), ("dev-2", 1)}
    assert len(store.events(since=SINCE, limit=100, device_id="dev-1")) == 2  # batches 1 and 2, once each
    assert store.ingest_batch("dev-1", _batch(3, _minute([1.0])), T0) is False  # the malformed one took no key
    assert store.ingest_counts() == {"stored": 4, "duplicate": 2, "refused": 2}


def test_ingest_batches_adds_up_like_one_batch_after_another(store: Store) -> None:
    """Minutes of one key spread over the batches of one call, some already stored, merge exactly."""
    device(store, "dev-1")
    samples = [[0.2, 1.0], [3.0], [0.05, 40.0, 7.0], [2.0]]
    store.ingest_batch("dev-1", _batch(0, _minute(samples[0], errors=1)), T0)
    other = _minute([9.0], variant="fp32")
    outcomes = store.ingest_batches(
        [("dev-1", _batch(i, _minute(samples[i]), *([other] if i == 2 else []))) for i in (1, 2, 3)], T0
    )
    assert outcomes == [False, False, False]
    rows = {r.key["variant"]: r for r in store.latency(since=SINCE, by="variant")}
    expected = _histogram(*(ms for part in samples for ms in part))
    assert (rows["int8"].requests, rows["int8"].errors) == (8, 1)  # 7 samples and 1 error
    assert (rows["int8"].latency.counts, rows["int8"].latency.max_ms) == (expected.counts, expected.max_ms)
    assert rows["int8"].latency.sum_ms == pytest.approx(expected.sum_ms)
    assert rows["int8"].confidence_sum == pytest.approx(0.5 * 7)
    assert rows["fp32"].requests == 1


def test_ingest_batches_with_nothing_storable_touches_nothing(store: Store) -> None:
    assert store.ingest_batches([], T0) == []
    [outcome] = store.ingest_batches([("ghost", _batch(1, _minute([1.0])))], T0)
    assert isinstance(outcome, NotFound)
    with pytest.raises(ValueError, match="naive"):
        store.ingest_batches([("ghost", _batch(1))], T0.replace(tzinfo=None))


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


def test_status_keeps_the_download_progress(store: Store) -> None:
    """The byte counters of a DOWNLOADING report round-trip; a later report without them reads 0."""
    device(store, "dev-1")
    big = 5 * 2**32  # over 32 bits: BIGINT on both databases
    store.record_status(
        "dev-1",
        generation=4,
        phase="DOWNLOADING",
        failure_reason="",
        active=[],
        now=T0,
        bytes_downloaded=big // 3,
        bytes_total=big,
    )
    row = store.device_statuses(["dev-1"])["dev-1"]
    assert (row.phase, row.bytes_downloaded, row.bytes_total) == ("DOWNLOADING", big // 3, big)
    [health] = store.health("lab")
    assert health.status is not None and health.status.bytes_total == big
    store.record_status("dev-1", generation=4, phase="VERIFYING", failure_reason="", active=[], now=T0)
    row = store.device_statuses(["dev-1"])["dev-1"]
    assert (row.phase, row.bytes_downloaded, row.bytes_total) == ("VERIFYING", 0, 0)


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


# --- retention: roll-ups into hours and age-based deletes ----------------------------------------------------

DAY = timedelta(days=1)
OLD = MINUTE - 10 * DAY  # older than the minute retention below, newer than the hour retention
RETENTION = {
    "minute_retention": 7 * DAY,
    "hour_retention": 90 * DAY,
    "event_retention": 7 * DAY,
    "resource_retention": 7 * DAY,
}
ALL_TIME = OLD - DAY


def _at(minute: telemetry_pb2.ModelMinute, at) -> telemetry_pb2.ModelMinute:
    minute.minute.FromDatetime(at)
    return minute


def _old_batch(device_id: str, sequence: int, at, *minutes: telemetry_pb2.ModelMinute) -> telemetry_pb2.TelemetryBatch:
    batch = telemetry_pb2.TelemetryBatch(device_id=device_id, boot_id="boot-old", sequence=sequence, minutes=minutes)
    sample = batch.resources.add(cpu_percent=1.0, rss_bytes=1, memory_available_bytes=2, disk_free_bytes=3)
    sample.at.FromDatetime(at)
    event = batch.events.add(kind=common_pb2.LifecycleEvent.ACTIVATED, reason="old", generation=1)
    event.at.FromDatetime(at)
    return batch


def _fill(store: Store) -> None:
    """Two devices (two classes), old minutes over two hours and two variants, and recent minutes."""
    device(store, "dev-1")
    device(store, "dev-2")
    store.set_device_class("dev-1", "jetson")
    store.set_device_class("dev-2", "pi")
    old_hour = OLD.replace(minute=0)
    for i, offset in enumerate((0, 1, 59, 60, 61, 125)):
        at = old_hour + timedelta(minutes=offset)
        samples = [0.2 * (i + 1), 3.0 + i, 40.0 * (i + 1)]
        store.ingest_batch(
            "dev-1",
            _old_batch(
                "dev-1", i, at, _at(_minute(samples, errors=i % 2), at), _at(_minute(samples[:1], variant="fp32"), at)
            ),
            at,
        )
        store.ingest_batch("dev-2", _old_batch("dev-2", i, at, _at(_minute([7.0 * (i + 1)], version=4), at)), at)
    store.ingest_batch("dev-1", _batch(1, _minute([1.0, 2.5])), T0)  # recent: stays per minute
    store.ingest_batch("dev-2", _batch(1, _minute([9.0])), T0)


def _view(rows) -> list[tuple]:
    """What must survive a roll-up exactly (the float sums up to rounding)."""
    return [
        (
            r.key,
            r.requests,
            r.errors,
            r.low_confidence,
            r.latency.counts,
            r.latency.max_ms,
            pytest.approx(r.latency.sum_ms),
            pytest.approx(r.confidence_sum),
            [r.latency.quantile(q) for q in (0.5, 0.95, 0.99)],
        )
        for r in rows
    ]


GROUPS_KEPT_BY_ROLLUP = ("", "variant", "version", "class", "device", "variant-class")


def test_roll_up_merges_old_minutes_into_hours_exactly(store: Store) -> None:
    _fill(store)
    before = {by: _view(store.latency(since=ALL_TIME, by=by)) for by in GROUPS_KEPT_BY_ROLLUP}
    recent = _view(store.latency(since=SINCE, by="variant"))
    counts = store.roll_up(T0, **RETENTION, batch_rows=4)  # small batches: several transactions
    # 6 minutes x 3 builds rolled; dev-1 has two builds in three hours, dev-2 one build in three hours.
    assert counts["minutes"] == 18 and counts["hours"] >= 9  # an hour split over two batches is written twice
    for by in GROUPS_KEPT_BY_ROLLUP:
        assert _view(store.latency(since=ALL_TIME, by=by)) == before[by], by
    assert _view(store.latency(since=SINCE, by="variant")) == recent  # recent minutes untouched
    per_hour = {r.key["minute"] for r in store.latency(since=ALL_TIME, by="minute", device_id="dev-2")}
    old_hour = OLD.replace(minute=0)
    assert per_hour == {(old_hour + timedelta(hours=h)).isoformat() for h in range(3)} | {MINUTE.isoformat()}


def test_roll_up_is_idempotent_and_later_minutes_add_to_the_hour(store: Store) -> None:
    _fill(store)
    store.roll_up(T0, **RETENTION)
    after = _view(store.latency(since=ALL_TIME, by="variant"))
    again = store.roll_up(T0, **RETENTION)
    assert again == dict.fromkeys(again, 0)
    assert _view(store.latency(since=ALL_TIME, by="variant")) == after
    # A minute of an already rolled-up hour arriving late is merged into the same hour row next time.
    late = OLD.replace(minute=30)
    before = store.latency(since=ALL_TIME, device_id="dev-2")[0]
    store.ingest_batch("dev-2", _old_batch("dev-2", 99, late, _at(_minute([123.0], version=4), late)), T0)
    assert store.roll_up(T0, **RETENTION)["minutes"] == 1
    [row] = store.latency(since=ALL_TIME, device_id="dev-2")
    assert row.requests == before.requests + 1
    assert row.latency.counts == before.latency.merge(_histogram(123.0)).counts


def test_roll_up_deletes_what_is_old_and_keeps_what_is_recent(store: Store) -> None:
    _fill(store)
    counts = store.roll_up(T0, **RETENTION)
    assert counts["events_deleted"] == 12 and counts["resources_deleted"] == 12
    assert counts["batch_keys_deleted"] == 12 and counts["hours_deleted"] == 0
    assert [e.reason for e in store.events(since=ALL_TIME, limit=100)] == ["ok", "ok"]  # the recent ones
    assert {r.device.device_id: r.resources.at for r in store.health()} == {"dev-1": T0, "dev-2": T0}
    assert store.ingest_batch("dev-1", _batch(1, _minute([1.0, 2.5])), T0) is True  # a recent key still de-dups
    # Past the hour retention the hour rows go too; the recent minute is still there.
    later = store.roll_up(T0 + 85 * DAY, **RETENTION)
    assert later["hours_deleted"] == 9 and later["minutes"] == 2
    assert store.latency(since=ALL_TIME, by="device")[0].requests == 2  # dev-1's recent minute, now an hour row
    assert store.roll_up(T0 + 200 * DAY, **RETENTION)["hours_deleted"] == 2
    assert store.latency(since=ALL_TIME) == []


def test_latency_reads_across_the_roll_up_boundary(store: Store) -> None:
    _fill(store)
    whole = _view(store.latency(since=ALL_TIME, by="class"))
    old_only = _view(store.latency(since=ALL_TIME, by="class", model="nlu", version=4))
    store.roll_up(T0, **RETENTION)
    assert _view(store.latency(since=ALL_TIME, by="class")) == whole
    assert _view(store.latency(since=ALL_TIME, by="class", model="nlu", version=4)) == old_only
    # A range starting inside a rolled-up hour counts that hour whole.
    [inside] = store.latency(since=OLD.replace(minute=0) + timedelta(hours=2, minutes=30), version=4)
    assert (inside.requests, inside.latency.max_ms) == (1, 42.0)  # dev-2's hour of the 125th minute, whole


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minute_retention": timedelta(0)}, "minute_retention must be positive"),
        ({"hour_retention": DAY}, "shorter than minute_retention"),
        ({"batch_rows": 0}, "batch_rows"),
    ],
)
def test_roll_up_refuses_bad_retentions(store: Store, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.roll_up(T0, **{**RETENTION, **change})


# --- fleet snapshot and ingest counters (the metrics endpoint's inputs) --------------------------------------


def test_fleet_snapshot_counts_devices_jobs_and_recent_models(store: Store) -> None:
    _fill(store)
    device(store, "dev-3", fleet="other")
    store.mark_connected("dev-1", "boot-1", T0)
    store.touch_last_seen({"dev-1": T0})
    store.mark_connected("dev-3", "boot-1", T0 - DAY)
    store.revoke_device("dev-2", "stolen", T0)
    store.create_jobs(
        [
            {
                "job_id": "job-1",
                "device_id": "dev-1",
                "name": "nlu",
                "version": 3,
                "variant": "int8",
                "manifest_sha256": "ab" * 32,
                "device_class": "jetson",
                "deadline": T0 + DAY,
            }
        ],
        T0,
    )
    snapshot = store.fleet_snapshot(T0, online_since=T0 - timedelta(seconds=30), window=timedelta(minutes=5))
    assert snapshot.devices == {("lab", "online"): 1, ("lab", "revoked"): 1, ("other", "offline"): 1}
    assert snapshot.classes == {"jetson": 1, "": 1}
    assert snapshot.jobs == {"pending": 1}
    assert set(snapshot.desired_generations) == {"lab", "other"}
    by_build = {(m.name, m.version, m.variant): (m.requests, m.latency.count) for m in snapshot.models}
    assert by_build == {("nlu", 3, "int8"): (3, 3)}  # the recent minutes only


def test_ingest_counts_stored_duplicate_and_refused_batches(store: Store) -> None:
    device(store, "dev-1")
    store.ingest_batch("dev-1", _batch(1, _minute([1.0])), T0)
    store.ingest_batch("dev-1", _batch(1, _minute([1.0])), T0)
    with pytest.raises(NotFound):
        store.ingest_batch("ghost", _batch(2), T0)
    assert store.ingest_counts() == {"stored": 1, "duplicate": 1, "refused": 1}


# --- histogram overflow: a merge past MAX_COUNT refuses the batch that causes it, alone --------------------


def _full_minute() -> telemetry_pb2.ModelMinute:
    """A minute whose histogram holds MAX_COUNT samples: any merge into it overflows."""
    minute = _minute([])
    minute.requests = 1
    minute.latency.CopyFrom(telemetry_pb2.LatencyHistogram(scheme=1, counts=[MAX_COUNT], sum_ms=0.0, max_ms=0.0))
    return minute


def test_a_merge_that_would_overflow_a_histogram_refuses_only_the_batch_that_causes_it(store: Store) -> None:
    """Within one call (the group falls back to one batch at a time) and against a stored minute."""
    device(store, "dev-1")
    device(store, "dev-2")
    outcomes = store.ingest_batches(
        [
            ("dev-1", _batch(1, _full_minute())),
            ("dev-2", _batch(1, _minute([2.0]))),
            ("dev-1", _batch(2, _minute([1.0]))),  # the same minute as the full one
        ],
        T0,
    )
    assert outcomes[:2] == [False, False]
    assert isinstance(outcomes[2], ValueError) and "exceed" in str(outcomes[2])
    assert isinstance(store.ingest_batches([("dev-1", _batch(3, _minute([1.0])))], T0)[0], ValueError)
    by_device = {r.key["device"]: r.latency.count for r in store.latency(since=SINCE, by="device")}
    assert by_device == {"dev-1": MAX_COUNT, "dev-2": 1}
    with pytest.raises(ValueError, match="exceed"):  # refused again, not found already stored: no key was taken
        store.ingest_batch("dev-1", _batch(2, _minute([1.0])), T0)


def test_request_counts_that_would_overflow_refuse_only_the_batch_that_causes_it(store: Store) -> None:
    """Each count is at most MAX_COUNT, and so is any sum of them: the store's BIGINT never overflows."""
    device(store, "dev-1")
    device(store, "dev-2")
    big = _minute([1.0])
    big.requests = MAX_COUNT
    outcomes = store.ingest_batches(
        [("dev-1", _batch(1, big)), ("dev-2", _batch(1, _minute([2.0]))), ("dev-1", _batch(2, big))], T0
    )
    assert outcomes[:2] == [False, False]
    assert isinstance(outcomes[2], ValueError) and "more than" in str(outcomes[2])
    assert isinstance(store.ingest_batches([("dev-1", _batch(3, big))], T0)[0], ValueError)  # against the stored row
    by_device = {r.key["device"]: r.requests for r in store.latency(since=SINCE, by="device")}
    assert by_device == {"dev-1": MAX_COUNT, "dev-2": 1}


def test_a_value_the_database_refuses_fails_only_its_own_batch(store: Store, monkeypatch) -> None:
    """The safety net behind parse_batch: whatever a database refuses is pinned on the one batch that carries it."""
    import controlplane.store.telemetry as telemetry

    monkeypatch.setattr(telemetry, "_count", lambda what, value: value)  # let an out-of-range count through
    device(store, "dev-1")
    device(store, "dev-2")
    poison = _minute([1.0])
    poison.requests = 2**63
    outcomes = store.ingest_batches(
        [("dev-1", _batch(1, _minute([1.0]))), ("dev-2", _batch(1, poison)), ("dev-1", _batch(2, _minute([3.0])))],
        T0,
    )
    assert outcomes[0] is False and outcomes[2] is False
    assert isinstance(outcomes[1], ValueError) and "the database refused this batch" in str(outcomes[1])
    by_device = {r.key["device"]: r.requests for r in store.latency(since=SINCE, by="device")}
    assert by_device == {"dev-1": 2}
    assert store.ingest_batch("dev-2", _batch(1, _minute([1.0])), T0) is False  # the refused batch took no key
