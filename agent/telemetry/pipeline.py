"""The agent's telemetry pipeline: aggregate, spool durably, send over the session, delete on ack.

Every ``flush_seconds`` the completed minutes of the aggregator, the lifecycle
events emitted since the last flush and a resource sample become one
TelemetryBatch, appended to the outbox (committed before anything is sent).
Pending batches are then sent over the open session, each at most once per
session; the control plane acks each by (boot id, sequence), and only an ack
deletes a batch. A new session resends whatever is still pending, so a link
drop or a restart loses nothing, and the control plane's de-duplication by
(device, boot id, sequence) makes a resend harmless.

On a graceful stop the current (incomplete) minute is flushed too; a kill -9
loses at most the minute in progress, never a spooled batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from agent.telemetry.aggregate import MinuteAggregator, ModelKey
from agent.telemetry.outbox import OUTBOX_FILENAME, Outbox
from agent.telemetry.resources import ResourceSampler, sample_resources
from protos.edgefleet.v1 import agent_pb2, common_pb2, telemetry_pb2

log = logging.getLogger("edgefleet.agent.telemetry")

MAX_EVENTS_PER_BATCH = 256
SEND_BATCHES_PER_FLUSH = 64


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TelemetryPipeline:
    def __init__(
        self,
        *,
        data_dir: Path,
        device_id: str,
        boot_id: str,
        send: Callable[[agent_pb2.AgentMessage], bool],
        clock: Callable[[], dt.datetime] = utcnow,
        flush_seconds: float = 10.0,
        resources_every: int = 6,
        partial_minutes: bool = False,
    ) -> None:
        self.device_id = device_id
        self.boot_id = boot_id
        self._data_dir = data_dir
        self._send = send
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._resources_every = resources_every
        # Also send the minute in progress at every flush (the control plane adds the parts up):
        # a rollout gate then sees traffic within one flush instead of after the minute ends.
        self._partial_minutes = partial_minutes
        self._aggregator = MinuteAggregator()
        self._sampler = ResourceSampler()
        self._events: list[common_pb2.LifecycleEvent] = []
        self._guard = threading.Lock()
        self._in_flight: set[tuple[str, int]] = set()
        self._flushes = 0
        self.outbox = Outbox.open(data_dir / OUTBOX_FILENAME, boot_id=boot_id)
        self._wake = asyncio.Event()

    # --- called by other parts of the agent ---

    def record(self, model: common_pb2.ModelRef, task: str, latency_ms: float, ok: bool,
               confidence: float | None, input_size: float) -> None:  # fmt: skip
        """Count one inference (numbers only: raw inputs never reach telemetry). Thread-safe."""
        key = ModelKey(model.name, model.version, model.variant, task)
        with self._guard:
            self._aggregator.record(key, latency_ms, ok, confidence, input_size, self._clock())

    def emit(self, event: common_pb2.LifecycleEvent) -> None:
        with self._guard:
            if len(self._events) < MAX_EVENTS_PER_BATCH * 4:
                self._events.append(event)
        self._wake.set()

    def on_ack(self, ack: telemetry_pb2.TelemetryAck) -> None:
        self._in_flight.discard((ack.boot_id, ack.sequence))
        self.outbox.ack(ack.boot_id, ack.sequence)

    def on_connected(self) -> None:
        """A new session: everything pending goes out again."""
        self._in_flight.clear()
        self._wake.set()

    # --- the loop ---

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(stop), timeout=self._flush_seconds)
            self._wake.clear()
            await self.flush(final=stop.is_set())

    async def _wait(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def flush(self, *, final: bool = False) -> None:
        """Spool what is complete (everything when final), then send what is pending."""
        batch = self._build(final)
        if batch is not None:
            await asyncio.to_thread(self.outbox.append, batch)
        pending = await asyncio.to_thread(self.outbox.pending, SEND_BATCHES_PER_FLUSH)
        for boot_id, sequence, stored in pending:
            if (boot_id, sequence) in self._in_flight:
                continue
            if not self._send(agent_pb2.AgentMessage(telemetry=stored)):
                break  # no open session: they stay pending
            self._in_flight.add((boot_id, sequence))

    def close(self) -> None:
        self.outbox.close()

    def _build(self, final: bool) -> telemetry_pb2.TelemetryBatch | None:
        now = self._clock()
        with self._guard:
            minutes = self._aggregator.drain_all() if final or self._partial_minutes else self._aggregator.drain(now)
            events, self._events = self._events[:MAX_EVENTS_PER_BATCH], self._events[MAX_EVENTS_PER_BATCH:]
        self._flushes += 1
        resources = []
        if final or self._flushes % self._resources_every == 1:
            with contextlib.suppress(OSError, ValueError):
                resources.append(sample_resources(now, pid=os.getpid(), data_dir=self._data_dir, sampler=self._sampler))
        if not minutes and not events and not resources:
            return None
        return telemetry_pb2.TelemetryBatch(
            device_id=self.device_id, minutes=minutes, events=events, resources=resources
        )
