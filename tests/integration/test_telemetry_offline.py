"""Ten minutes of traffic on a device that is offline for most of them and restarted twice in between:
afterwards the control plane holds every minute exactly once, with every request counted once.

Time is compressed with an injected clock: the agent's telemetry pipeline (real aggregator, real
SQLite outbox, real session to a real control plane) believes ten minutes pass."""

from __future__ import annotations

import asyncio
import datetime as dt

from agent.enroll import enroll
from agent.facts import collect_facts
from agent.session import Session
from agent.telemetry.pipeline import TelemetryPipeline
from protos.edgefleet.v1 import common_pb2
from protos.join import parse_join_string

T0 = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)
MODEL = common_pb2.ModelRef(name="tiny", version=1, variant="fp32")
REQUESTS = {minute: 5 + minute for minute in range(10)}  # a different count each minute
OFFLINE = range(2, 9)  # minutes during which no session is open
RESTART_AT = (4, 6)  # the agent restarts (gracefully) at the start of these minutes


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def test_offline_minutes_arrive_exactly_once_after_two_restarts(cp, tmp_path):
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(cp.join_string())
    identity = asyncio.run(enroll(join, data_dir=tmp_path / "dev", device_id="dev-1", facts=facts))
    clock = Clock()

    async def scenario() -> None:
        pipeline: TelemetryPipeline | None = None
        session: Session | None = None
        running: asyncio.Task | None = None

        def start_pipeline(boot_id: str, send) -> TelemetryPipeline:
            return TelemetryPipeline(
                data_dir=tmp_path / "dev", device_id="dev-1", boot_id=boot_id, send=send, clock=clock
            )

        async def connect() -> None:
            nonlocal session, running
            session = Session(
                identity,
                facts=lambda: facts,
                heartbeat_interval_seconds=0.5,
                on_message=lambda m: pipeline.on_ack(m.telemetry_ack),
                on_connected=lambda: pipeline.on_connected(),
            )
            running = asyncio.ensure_future(session.run())
            for _ in range(200):
                if session.state.connected:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("session did not open")

        async def disconnect() -> None:
            session.stop()
            await asyncio.wait_for(running, 10)

        pipeline = start_pipeline("boot-a", lambda m: session.send(m))
        await connect()
        for minute in range(10):
            if minute == OFFLINE.start:
                await pipeline.flush()
                await disconnect()
            if minute in RESTART_AT:
                await pipeline.flush(final=True)
                pipeline.close()
                pipeline = start_pipeline(f"boot-{minute}", lambda m: session.send(m))
            for i in range(REQUESTS[minute]):
                clock.now = T0 + dt.timedelta(minutes=minute, seconds=i)
                pipeline.record(MODEL, "generic", 1.0 + i, True, 0.9, 4)
            clock.now = T0 + dt.timedelta(minutes=minute + 1, seconds=1)
            await pipeline.flush()
            if minute == OFFLINE.stop - 1:
                await connect()
        for _ in range(200):
            await pipeline.flush()
            if pipeline.outbox.pending_batches == 0:
                break
            await asyncio.sleep(0.05)
        assert pipeline.outbox.pending_batches == 0, "the control plane did not ack everything"
        await disconnect()
        pipeline.close()

    asyncio.run(scenario())
    rows = cp.running.services.store.latency(since=T0, by="minute", device_id="dev-1")
    per_minute = {row.key["minute"]: row.requests for row in rows}
    expected = {(T0 + dt.timedelta(minutes=m)).isoformat(): n for m, n in REQUESTS.items()}
    assert per_minute == expected
