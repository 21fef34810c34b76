"""Telemetry and status over a real session: batches are acked, resends are de-duplicated, minutes add
up, another device's batch is not stored, and the operator CLI shows latency, status and events."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import grpc
import pytest

from agent.channel import device_channel
from agent.enroll import enroll
from agent.facts import collect_facts
from protos.edgefleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2, telemetry_pb2
from protos.histogram import Histogram, bucket_index, bucket_range
from protos.join import parse_join_string
from tests.integration.harness import wait_for

DEVICE = "dev-t"
FIRST = [0.4, 1.5, 1.6, 2.0, 30.0]
SECOND = [1.7, 1.8, 1.9]


@pytest.fixture
def identity(cp, tmp_path):
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(cp.join_string())
    return asyncio.run(enroll(join, data_dir=tmp_path / DEVICE, device_id=DEVICE, facts=facts))


def _minute(model: str, samples: list[float], minute: dt.datetime) -> telemetry_pb2.ModelMinute:
    histogram = Histogram()
    for ms in samples:
        histogram.observe(ms)
    message = telemetry_pb2.ModelMinute(
        model=common_pb2.ModelRef(name=model, version=1, variant="fp32"),
        task="text-nlu",
        requests=len(samples),
        latency=histogram.to_proto(),
        confidence_sum=0.9 * len(samples),
    )
    message.minute.FromDatetime(minute)
    return message


def _batch(sequence: int, samples: list[float], *, device_id: str = DEVICE) -> telemetry_pb2.TelemetryBatch:
    minute = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    batch = telemetry_pb2.TelemetryBatch(
        device_id=device_id,
        boot_id="boot-1",
        sequence=sequence,
        minutes=[_minute("intent", samples, minute), _minute("vad", [5.0], minute)],
    )
    event = batch.events.add(kind=common_pb2.LifecycleEvent.ACTIVATED, reason=f"batch {sequence}", generation=1)
    event.at.GetCurrentTime()
    event.model.CopyFrom(common_pb2.ModelRef(name="intent", version=1, variant="fp32"))
    return batch


async def _converse(identity, messages: list[agent_pb2.AgentMessage], acks: int) -> list[agent_pb2.ControlMessage]:
    """Open a session, send Hello then messages, and return the first ``acks`` control messages after Welcome."""
    async with device_channel(identity) as channel:
        call = agent_pb2_grpc.AgentGatewayStub(channel).Session(timeout=30)
        hello = agent_pb2.Hello(device_id=DEVICE, boot_id="boot-1", protocol_version=1)
        await call.write(agent_pb2.AgentMessage(hello=hello))
        assert (await call.read()).HasField("welcome")
        for message in messages:
            await call.write(message)
        received = [await call.read() for _ in range(acks)]
        call.cancel()
        return received


def _latency(cli) -> dict[str, dict]:
    code, out, err = cli("telemetry", "latency", "--device", DEVICE, "--json")
    assert code == 0, err
    return {row["key"]["model"]: row for row in json.loads(out)}


def test_batches_are_acked_deduplicated_and_added_up(cp, identity, cli):
    first = _batch(1, FIRST)
    acks = asyncio.run(_converse(identity, [agent_pb2.AgentMessage(telemetry=first)], 1))
    assert acks[0].telemetry_ack == telemetry_pb2.TelemetryAck(boot_id="boot-1", sequence=1, duplicate=False)
    before = _latency(cli)
    assert int(before["intent"]["requests"]) == len(FIRST) and int(before["vad"]["requests"]) == 1

    acks = asyncio.run(_converse(identity, [agent_pb2.AgentMessage(telemetry=first)], 1))
    assert acks[0].telemetry_ack.duplicate is True
    assert _latency(cli) == before

    acks = asyncio.run(_converse(identity, [agent_pb2.AgentMessage(telemetry=_batch(2, SECOND))], 1))
    assert acks[0].telemetry_ack == telemetry_pb2.TelemetryAck(boot_id="boot-1", sequence=2, duplicate=False)
    row = _latency(cli)["intent"]
    samples = sorted(FIRST + SECOND)
    assert int(row["requests"]) == len(samples) and row.get("errors", "0") == "0"
    true_p50 = samples[(len(samples) + 1) // 2 - 1]  # nearest rank
    lower, upper = bucket_range(bucket_index(true_p50))
    assert lower < row["p50_ms"] <= upper
    assert row["mean_confidence"] == pytest.approx(0.9)

    code, out, _ = cli("telemetry", "events", "--device", DEVICE, "--json")
    assert code == 0
    events = json.loads(out)
    assert [e["event"]["reason"] for e in events] == ["batch 1", "batch 2"]
    assert events[0]["event"]["kind"] == "ACTIVATED" and events[0]["device_id"] == DEVICE

    code, out, _ = cli("telemetry", "latency", "--by", "variant")
    assert code == 0 and "intent" in out and "fp32" in out and " ms" in out
    code, out, _ = cli("telemetry", "events")
    assert code == 0 and "activated" in out and "intent v1 (fp32)" in out
    code, out, _ = cli("telemetry", "health", "--json")
    assert code == 0 and [row["device_id"] for row in json.loads(out)] == [DEVICE]


def test_a_batch_naming_another_device_is_not_acked_nor_stored(cp, identity, cli):
    foreign = _batch(1, FIRST, device_id="someone-else")
    own = _batch(2, SECOND)
    messages = [agent_pb2.AgentMessage(telemetry=foreign), agent_pb2.AgentMessage(telemetry=own)]
    [ack] = asyncio.run(_converse(identity, messages, 1))
    assert ack.telemetry_ack.sequence == 2  # the foreign batch got no ack
    assert int(_latency(cli)["intent"]["requests"]) == len(SECOND)


def test_a_status_report_shows_in_devices_show(cp, identity, cli):
    active = agent_pb2.ActiveModel(model=common_pb2.ModelRef(name="intent", version=3, variant="int8-dynamic"))
    status = agent_pb2.StatusReport(generation=4, phase=agent_pb2.COMMITTED, active=[active])

    async def send_status():
        async with device_channel(identity) as channel:
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session(timeout=30)
            await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id=DEVICE, boot_id="b")))
            await call.read()
            await call.write(agent_pb2.AgentMessage(status=status))
            stored = await asyncio.to_thread(
                wait_for, lambda: cp.device(DEVICE).HasField("status"), what="status stored"
            )
            call.cancel()
            return stored

    assert asyncio.run(send_status())
    code, out, _ = cli("devices", "show", DEVICE, "--json")
    shown = json.loads(out)
    assert code == 0
    assert shown["status"]["phase"] == "COMMITTED" and shown["status"]["generation"] == "4"
    assert shown["active"][0]["model"]["variant"] == "int8-dynamic"
    code, out, _ = cli("devices", "show", DEVICE)
    assert code == 0 and "committed, generation 4" in out and "intent v3 (int8-dynamic)" in out


def test_unary_send_telemetry_acks_and_deduplicates(cp, identity, cli):
    async def send(batch):
        async with device_channel(identity) as channel:
            return await agent_pb2_grpc.AgentGatewayStub(channel).SendTelemetry(batch, timeout=10)

    assert asyncio.run(send(_batch(7, FIRST))).duplicate is False
    assert asyncio.run(send(_batch(7, FIRST))).duplicate is True
    assert int(_latency(cli)["intent"]["requests"]) == len(FIRST)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(send(_batch(8, FIRST, device_id="someone-else")))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "request_",
    [
        admin_pb2.QueryLatencyRequest(by="bogus"),
        admin_pb2.QueryLatencyRequest(since_seconds=31 * 86400),
    ],
)
def test_out_of_bounds_latency_queries_are_refused(cp, request_):
    stub, meta, channel = cp.admin()
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.QueryLatency(request_, metadata=meta, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_events_are_refused(cp):
    stub, meta, channel = cp.admin()
    with channel, pytest.raises(grpc.RpcError) as refused:
        stub.QueryEvents(admin_pb2.QueryEventsRequest(limit=1001), metadata=meta, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
