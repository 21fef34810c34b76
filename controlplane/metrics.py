"""The control plane's Prometheus endpoint: fleet-level gauges and counters, never per device.

``MetricsServer`` serves one ``CollectorRegistry`` of its own (the process-wide default registry is
left alone) over HTTP on ``listen_host:metrics_port``, in a daemon thread. Its ``FleetCollector``
answers a scrape from a ``FleetSnapshot`` (a few aggregate queries in one read transaction), reused
for ``metrics_cache_seconds`` so that many scrapers cost no more than one.

Labels are bounded by what operators create: fleet, device class, model name, version and
variant, job and device state. No metric carries a device id.

Metrics (counters end in ``_total``; the counters of this process restart at zero with it):
- ``edgefleet_devices{fleet,state}``: state is online, offline or revoked.
- ``edgefleet_devices_by_class{device_class}``: devices not revoked ("" = never classified).
- ``edgefleet_sessions_open``: device sessions open on this server.
- ``edgefleet_heartbeats_total``: heartbeats this server received.
- ``edgefleet_desired_generations_total{fleet}``: desired-state generations published (summed over
  the fleet's devices: +1 per device each time its desired state changes).
- ``edgefleet_telemetry_batches_total{outcome}``: stored, duplicate (a resend) or refused.
- ``edgefleet_model_requests_5m``, ``edgefleet_model_errors_5m``,
  ``edgefleet_model_latency_5m_milliseconds{quantile}``, each by (model, version, variant): the
  fleet's model minutes that started in the last five minutes (agents report a minute after it ends).
- ``edgefleet_benchmark_jobs{state}``: pending, done, expired.
- ``edgefleet_rollups_total{outcome}`` and ``edgefleet_rollup_rows_total{step}``: retention runs.
- ``edgefleet_store_up`` (0 when the last snapshot query failed) and ``edgefleet_metrics_query_seconds``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controlplane.store.telemetry import FleetSnapshot

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from controlplane.services.context import Services

log = logging.getLogger("edgefleet.server.metrics")

MODEL_WINDOW = dt.timedelta(minutes=5)
QUANTILES = (0.5, 0.95, 0.99)
JOB_STATES = ("pending", "done", "expired")
DEVICE_STATES = ("online", "offline", "revoked")


class ServerStats:
    """Counters the server's own tasks keep (roll-ups); read by the collector from the HTTP thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollups: Counter[str] = Counter()
        self._rollup_rows: Counter[str] = Counter()

    def rollup_done(self, counts: dict[str, int]) -> None:
        with self._lock:
            self._rollups["ok"] += 1
            self._rollup_rows.update(counts)

    def rollup_failed(self) -> None:
        with self._lock:
            self._rollups["failed"] += 1

    def rollups(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self._rollups), dict(self._rollup_rows)


class FleetCollector(Collector):
    """Builds the fleet metrics from the store, the presence tracker and ``ServerStats``."""

    def __init__(self, services: Services, stats: ServerStats, *, cache_seconds: float) -> None:
        self._services = services
        self._stats = stats
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, FleetSnapshot | None, float] | None = None  # (taken at, snapshot, seconds)

    def _snapshot(self) -> tuple[FleetSnapshot | None, float]:
        with self._lock:  # concurrent scrapes wait for one query instead of running their own
            if self._cached is not None and time.monotonic() - self._cached[0] < self._cache_seconds:
                return self._cached[1], self._cached[2]
            config = self._services.config
            now = self._services.clock()
            # Last-seen times reach the store every flush interval: allow for one flush of lag.
            online_since = now - dt.timedelta(seconds=config.offline_after_seconds + config.last_seen_flush_seconds)
            started = time.monotonic()
            try:
                snapshot: FleetSnapshot | None = self._services.store.fleet_snapshot(
                    now, online_since=online_since, window=MODEL_WINDOW
                )
            except Exception:  # noqa: BLE001 - a scrape reports the store down rather than failing
                log.warning("metrics: could not read the fleet snapshot", exc_info=True)
                snapshot = None
            seconds = time.monotonic() - started
            self._cached = (time.monotonic(), snapshot, seconds)
            return snapshot, seconds

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshot, seconds = self._snapshot()
        store_up = GaugeMetricFamily("edgefleet_store_up", "1 if the last metrics query of the store succeeded")
        store_up.add_metric([], 0 if snapshot is None else 1)
        yield store_up
        query = GaugeMetricFamily("edgefleet_metrics_query_seconds", "Time the last metrics snapshot query took")
        query.add_metric([], seconds)
        yield query

        presence = self._services.presence
        sessions = GaugeMetricFamily("edgefleet_sessions_open", "Device sessions open on this server")
        sessions.add_metric([], len(presence.sessions()))
        yield sessions
        heartbeats = CounterMetricFamily("edgefleet_heartbeats", "Heartbeats received by this server")
        heartbeats.add_metric([], presence.heartbeats)
        yield heartbeats

        batches = CounterMetricFamily(
            "edgefleet_telemetry_batches", "Telemetry batches received by this server, by outcome", labels=["outcome"]
        )
        ingested = self._services.store.ingest_counts()
        for outcome in ("stored", "duplicate", "refused"):
            batches.add_metric([outcome], ingested.get(outcome, 0))
        yield batches

        runs, rows = self._stats.rollups()
        rollups = CounterMetricFamily("edgefleet_rollups", "Retention runs of this server", labels=["outcome"])
        for outcome in ("ok", "failed"):
            rollups.add_metric([outcome], runs.get(outcome, 0))
        yield rollups
        rollup_rows = CounterMetricFamily(
            "edgefleet_rollup_rows", "Rows the retention runs of this server touched, by step", labels=["step"]
        )
        for step, count in sorted(rows.items()):
            rollup_rows.add_metric([step], count)
        yield rollup_rows

        if snapshot is not None:
            yield from _snapshot_metrics(snapshot)


def _snapshot_metrics(snapshot: FleetSnapshot) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    devices = GaugeMetricFamily("edgefleet_devices", "Enrolled devices by fleet and state", labels=["fleet", "state"])
    for fleet in sorted({fleet for fleet, _state in snapshot.devices}):
        for state in DEVICE_STATES:
            devices.add_metric([fleet, state], snapshot.devices.get((fleet, state), 0))
    yield devices
    classes = GaugeMetricFamily(
        "edgefleet_devices_by_class", "Devices not revoked, by device class", labels=["device_class"]
    )
    for name, count in sorted(snapshot.classes.items()):
        classes.add_metric([name], count)
    yield classes
    generations = CounterMetricFamily(
        "edgefleet_desired_generations", "Desired-state generations published, summed over devices", labels=["fleet"]
    )
    for fleet, count in sorted(snapshot.desired_generations.items()):
        generations.add_metric([fleet], count)
    yield generations
    jobs = GaugeMetricFamily("edgefleet_benchmark_jobs", "Benchmark jobs by state", labels=["state"])
    for state in sorted({*JOB_STATES, *snapshot.jobs}):
        jobs.add_metric([state], snapshot.jobs.get(state, 0))
    yield jobs

    build = ["model", "version", "variant"]
    requests = GaugeMetricFamily(
        "edgefleet_model_requests_5m", "Inference requests in the last 5 minutes", labels=build
    )
    errors = GaugeMetricFamily("edgefleet_model_errors_5m", "Failed inferences in the last 5 minutes", labels=build)
    latency = GaugeMetricFamily(
        "edgefleet_model_latency_5m_milliseconds",
        "Inference latency quantiles over the last 5 minutes (within one histogram bucket, 25%)",
        labels=[*build, "quantile"],
    )
    for row in snapshot.models:
        labels = [row.name, str(row.version), row.variant]
        requests.add_metric(labels, row.requests)
        errors.add_metric(labels, row.errors)
        if row.latency.count:
            for q in QUANTILES:
                latency.add_metric([*labels, str(q)], row.latency.quantile(q))
    yield requests
    yield errors
    yield latency


class MetricsServer:
    """The HTTP endpoint: ``start`` binds ``host:port`` (0 = any free port), ``stop`` closes it."""

    def __init__(self, services: Services, stats: ServerStats) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(services, stats, cache_seconds=services.config.metrics_cache_seconds))
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        """Listen and serve in a daemon thread; returns the bound port. Raises OSError if it cannot bind."""
        self._httpd, self._thread = start_http_server(port, addr=host or "0.0.0.0", registry=self.registry)
        return int(self._httpd.server_port)

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = self._thread = None
