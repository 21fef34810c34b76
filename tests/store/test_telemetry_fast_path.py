"""The fast path of ``ingest_batches``: its driver-level inserts store exactly what SQLAlchemy's own inserts
would, skip stored keys and say which, on both backends; the parse's shortcuts refuse what they must."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert

from controlplane.store import Store
from controlplane.store.schema import ModelMinute, TelemetryBatchKey
from controlplane.store.telemetry import _claim_batch_keys, _DriverInsert, parse_batch
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import BUCKETS, MAX_COUNT, Histogram
from tests.store.sample import T0, device

MINUTE = T0.replace(second=0, microsecond=0)
SINCE = MINUTE - timedelta(hours=1)
MINUTE_COLUMNS = (
    "minute, name, version, variant, task, requests, errors, CAST(latency_counts AS TEXT), latency_sum_ms, "
    "latency_max_ms, confidence_sum, low_confidence, input_size_sum, input_size_max"
)


def _histogram(*samples: float) -> Histogram:
    histogram = Histogram()
    for ms in samples:
        histogram.observe(ms)
    return histogram


def _point(at: datetime, name: str = "nlu", *samples: float) -> telemetry_pb2.ModelMinute:
    point = telemetry_pb2.ModelMinute(
        model=common_pb2.ModelRef(name=name, version=3, variant="int8"),
        task="text-nlu",
        requests=len(samples) + 1,
        errors=1,
        latency=_histogram(*samples).to_proto(),
        confidence_sum=0.75,
        low_confidence=1,
        input_size_sum=12.5,
        input_size_max=9.25,
    )
    point.minute.FromDatetime(at)
    return point


def _batch(sequence: int, *points: telemetry_pb2.ModelMinute) -> telemetry_pb2.TelemetryBatch:
    return telemetry_pb2.TelemetryBatch(device_id="dev-1", boot_id="boot-1", sequence=sequence, minutes=points)


def _raw(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """Rows as the driver returns them: no SQLAlchemy type conversion (on SQLite a time is its stored text)."""
    with store._engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(sql)]


def test_a_minute_and_a_batch_key_are_stored_as_sqlalchemy_stores_them(store: Store) -> None:
    """dev-1's rows come through ingest_batch, dev-2's through SQLAlchemy Core with the same values: the
    stored values (time text on SQLite, JSON text) are the same, and so is what the store reads back."""
    device(store, "dev-1")
    device(store, "dev-2")
    batch = _batch(1, _point(MINUTE, "nlu", 0.3, 4.0, 4.0, 250.0))
    assert store.ingest_batch("dev-1", batch, T0) is False
    [point] = parse_batch(batch).minutes
    values = point._asdict()
    latency = values.pop("latency")
    with store._engine.begin() as conn:
        conn.execute(
            insert(ModelMinute),
            [
                {
                    "device_id": "dev-2",
                    **values,
                    "latency_counts": latency.counts,
                    "latency_sum_ms": latency.sum_ms,
                    "latency_max_ms": latency.max_ms,
                }
            ],
        )
        conn.execute(
            insert(TelemetryBatchKey), [{"device_id": "dev-2", "boot_id": "boot-1", "sequence": 1, "received_at": T0}]
        )
    fast, core = _raw(store, f"SELECT device_id, {MINUTE_COLUMNS} FROM model_minutes ORDER BY device_id")
    assert fast[0] == "dev-1" and fast[1:] == core[1:]
    assert json.loads(fast[8]) == latency.counts
    keys = _raw(store, "SELECT device_id, boot_id, sequence, received_at FROM telemetry_batches ORDER BY device_id")
    assert keys[0][1:] == keys[1][1:]
    rows = {row.key.pop("device"): row for row in store.latency(since=SINCE, by="device")}
    assert rows["dev-1"] == rows["dev-2"]
    assert (rows["dev-1"].latency, rows["dev-1"].requests, rows["dev-1"].confidence_sum) == (latency, 5, 0.75)
    assert [row.key["minute"] for row in store.latency(since=SINCE, by="minute")] == [MINUTE.isoformat()]


@pytest.mark.parametrize("rows_per_statement", [None, 2], ids=["one-statement", "two-rows-a-statement"])
def test_claiming_batch_keys_skips_stored_ones_and_undoes_nothing_else(
    store: Store, monkeypatch: pytest.MonkeyPatch, rows_per_statement: int | None
) -> None:
    """Stored keys in the middle (the plain insert falls short, is undone and run again with RETURNING);
    on SQLite also split over several statements."""
    if rows_per_statement is not None:
        monkeypatch.setattr(_DriverInsert, "_SQLITE_MAX_PARAMETERS", 4 * rows_per_statement)  # 4 columns a row
    device(store, "dev-1")
    keys = [("dev-1", "boot-1", sequence) for sequence in range(7)]
    with store._transaction(write=True) as conn:
        assert _claim_batch_keys(conn, [keys[1], keys[4]], T0) == {keys[1], keys[4]}
    with store._transaction(write=True) as conn:
        assert _claim_batch_keys(conn, keys, T0 + timedelta(minutes=1)) == set(keys) - {keys[1], keys[4]}
        assert _claim_batch_keys(conn, keys, T0) == set()
        assert _claim_batch_keys(conn, [], T0) == set()
    stored = [row[0] for row in _raw(store, "SELECT sequence FROM telemetry_batches ORDER BY sequence")]
    assert stored == list(range(7))


def test_minutes_split_over_statements_add_up_with_stored_ones(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rows a SQLite statement: new and stored minutes mixed in every statement still merge exactly."""
    monkeypatch.setattr(_DriverInsert, "_SQLITE_MAX_PARAMETERS", 2 * 15)  # model_minutes has 15 columns
    device(store, "dev-1")
    minutes = [MINUTE - timedelta(minutes=i) for i in range(5)]
    store.ingest_batch("dev-1", _batch(1, *(_point(at, "nlu", 1.0) for at in minutes[::2])), T0)
    outcomes = store.ingest_batches(
        [("dev-1", _batch(2, *(_point(at, "nlu", 2.0) for at in minutes))), ("dev-1", _batch(3, _point(MINUTE, "x")))],
        T0,
    )
    assert outcomes == [False, False]
    rows = {row.key["minute"]: row for row in store.latency(since=SINCE, by="minute", model="nlu")}
    for i, at in enumerate(minutes):
        expected = _histogram(1.0, 2.0) if i % 2 == 0 else _histogram(2.0)
        assert rows[at.isoformat()].latency == expected
        assert rows[at.isoformat()].requests == expected.count + (2 if i % 2 == 0 else 1)
    assert [row.requests for row in store.latency(since=SINCE, model="x")] == [1]


def test_a_minute_without_a_time_is_refused_even_after_a_minute_at_the_epoch() -> None:
    """The converted times are remembered per (seconds, nanos): an unset time reads as (0, 0) but is refused."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    missing = _point(epoch)
    missing.ClearField("minute")
    with pytest.raises(ValueError, match="has no minute"):
        parse_batch(_batch(1, _point(epoch), missing))
    assert [p.minute for p in parse_batch(_batch(1, _point(epoch), _point(epoch))).minutes] == [epoch, epoch]
    with pytest.raises(ValueError, match="not the start of a minute"):
        parse_batch(_batch(1, _point(epoch), _point(epoch + timedelta(seconds=1))))


@given(st.lists(st.integers(min_value=0, max_value=MAX_COUNT), min_size=BUCKETS, max_size=BUCKETS))
def test_the_json_of_a_histograms_counts_is_their_repr(counts: list[int]) -> None:
    """``_minute_rows`` writes ``repr`` of a histogram's counts (``int``s: ``Histogram`` refuses anything else)
    where SQLAlchemy's JSON type writes ``json.dumps``: the same text."""
    assert repr(counts) == json.dumps(counts)


def test_a_histogram_refuses_counts_that_are_not_ints() -> None:
    for bad in (True, 1.0):
        counts: list[Any] = [bad] + [0] * (BUCKETS - 1)
        with pytest.raises(ValueError, match="non-negative integers"):
            Histogram(counts=counts, sum_ms=0.01, max_ms=0.01)
