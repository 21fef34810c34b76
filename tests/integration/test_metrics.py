"""The Prometheus endpoint of a real control plane: fleet-level counts from a real agent, no device ids
in any label, the retention task counted; and the endpoint is off unless asked for."""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.server import run_retention
from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import Histogram
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for

DEVICE = "gw-metrics-1"


@pytest.fixture
def cp_metrics(tmp_path: Path, db_url: str) -> Iterator[ServerThread]:
    server = ServerThread(server_config(tmp_path / "server", db_url, metrics_port=0, metrics_cache_seconds=0))
    yield server
    server.stop()


def _scrape(cp: ServerThread) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample, by sample name, then by its sorted labels."""
    url = f"http://127.0.0.1:{cp.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _batch() -> telemetry_pb2.TelemetryBatch:
    histogram = Histogram()
    for ms in (1.0, 2.0, 3.0, 40.0):
        histogram.observe(ms)
    minute = telemetry_pb2.ModelMinute(
        model=common_pb2.ModelRef(name="intent", version=2, variant="int8"),
        task="text-nlu",
        requests=5,
        errors=1,
        latency=histogram.to_proto(),
    )
    minute.minute.FromDatetime(dt.datetime.now(dt.UTC).replace(second=0, microsecond=0))
    return telemetry_pb2.TelemetryBatch(device_id=DEVICE, boot_id="boot-m", sequence=1, minutes=[minute])


def test_metrics_count_a_connected_device_without_naming_it(cp_metrics: ServerThread, agents) -> None:
    cp = cp_metrics
    agents("gw", "--heartbeat-seconds", "0.5", join=cp.join_string(fleet="lab"), device_id=DEVICE)
    wait_for(lambda: cp.is_online(DEVICE), what="device online")

    def online() -> dict | None:
        samples = _scrape(cp)
        return samples if samples["edgefleet_devices"].get((("fleet", "lab"), ("state", "online"))) == 1 else None

    samples = wait_for(online, what="device counted online in the metrics")
    assert samples["edgefleet_store_up"][()] == 1
    assert samples["edgefleet_devices"][(("fleet", "lab"), ("state", "offline"))] == 0
    assert samples["edgefleet_sessions_open"][()] == 1
    assert sum(samples["edgefleet_devices_by_class"].values()) == 1
    assert samples["edgefleet_benchmark_jobs"][(("state", "pending"),)] == 0

    store = cp.running.services.store
    store.ingest_batch(DEVICE, _batch(), dt.datetime.now(dt.UTC))
    store.ingest_batch(DEVICE, _batch(), dt.datetime.now(dt.UTC))  # a resend
    counts = cp.call(run_retention(cp.running.services, cp.running.stats))
    assert counts is not None and counts["minutes"] == 0  # nothing is old yet

    samples = _scrape(cp)
    build = (("model", "intent"), ("variant", "int8"), ("version", "2"))
    assert samples["edgefleet_model_requests_5m"][build] == 5
    assert samples["edgefleet_model_errors_5m"][build] == 1
    p50 = samples["edgefleet_model_latency_5m_milliseconds"][tuple(sorted((*build, ("quantile", "0.5"))))]
    assert 1.5 <= p50 <= 3.0
    batches = samples["edgefleet_telemetry_batches_total"]
    assert batches[(("outcome", "stored"),)] >= 1 and batches[(("outcome", "duplicate"),)] >= 1
    assert samples["edgefleet_rollups_total"][(("outcome", "ok"),)] >= 1
    assert samples["edgefleet_heartbeats_total"][()] >= 1
    for name, by_labels in samples.items():
        for labels in by_labels:
            assert all(DEVICE not in value for _key, value in labels), (name, labels)


def test_the_metrics_endpoint_is_off_by_default_and_stops_with_the_server(tmp_path: Path) -> None:
    plain = ServerThread(server_config(tmp_path / "plain"))
    try:
        assert plain.running.metrics is None and plain.running.metrics_port is None
    finally:
        plain.stop()
    with_metrics = ServerThread(server_config(tmp_path / "metrics", metrics_port=0))
    port = with_metrics.running.metrics_port
    assert port
    with_metrics.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
