"""The metrics collector on its own: a snapshot is cached, a store failure shows as store_up 0, the
retention config is checked."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from controlplane.config import ServerConfig
from controlplane.metrics import FleetCollector, ServerStats
from controlplane.store.telemetry import FleetSnapshot

NOW = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC)
SNAPSHOT = FleetSnapshot(
    devices={("lab", "online"): 2}, classes={"pi": 2}, desired_generations={"lab": 4}, jobs={}, models=[]
)


class FakeStore:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    def fleet_snapshot(self, now, *, online_since, window):
        self.calls += 1
        if self.fail:
            raise RuntimeError("database down")
        assert online_since < now and window == dt.timedelta(minutes=5)
        return SNAPSHOT

    def ingest_counts(self):
        return {"stored": 3}


def _registry(store: FakeStore, cache_seconds: float) -> CollectorRegistry:
    services = SimpleNamespace(
        config=ServerConfig(data_dir="/tmp/x"),
        clock=lambda: NOW,
        store=store,
        presence=SimpleNamespace(sessions=lambda: [1, 2], heartbeats=7),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(services, ServerStats(), cache_seconds=cache_seconds))
    return registry


def test_a_scrape_within_the_cache_time_reuses_the_snapshot() -> None:
    store = FakeStore()
    registry = _registry(store, cache_seconds=60)
    first = generate_latest(registry).decode()
    assert generate_latest(registry).decode() == first and store.calls == 1
    assert 'edgefleet_devices{fleet="lab",state="online"} 2.0' in first
    assert 'edgefleet_devices{fleet="lab",state="revoked"} 0.0' in first
    assert 'edgefleet_desired_generations_total{fleet="lab"} 4.0' in first
    assert 'edgefleet_telemetry_batches_total{outcome="stored"} 3.0' in first
    assert "edgefleet_sessions_open 2.0" in first and "edgefleet_store_up 1.0" in first


def test_a_store_failure_is_reported_not_raised() -> None:
    store = FakeStore()
    store.fail = True
    text = generate_latest(_registry(store, cache_seconds=0)).decode()
    assert "edgefleet_store_up 0.0" in text and "edgefleet_devices{" not in text


def test_hour_retention_shorter_than_minute_retention_is_refused() -> None:
    with pytest.raises(ValidationError, match="hour_retention_days"):
        ServerConfig(data_dir="/tmp/x", minute_retention_days=10, hour_retention_days=5)
    assert ServerConfig(data_dir="/tmp/x").metrics_port is None
