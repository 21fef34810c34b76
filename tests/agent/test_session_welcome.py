"""Each Welcome reaches ``on_welcome`` (the daemon reads its artifact port there) before ``on_connected``,
on the gRPC stream and over MQTT alike."""

from __future__ import annotations

import asyncio

from agent.identity import Identity
from agent.mqtt_session import MqttSession
from agent.session import Session
from protos import mqtt
from protos.edgefleet.v1 import agent_pb2, common_pb2

WELCOME = agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(device_id="gw-1", fleet="lab", artifact_port=8443))
IDENTITY = Identity(
    device_id="gw-1",
    fleet="lab",
    device_endpoint="127.0.0.1:1",
    api_endpoint="127.0.0.1:1",
    tls_server_name="edgefleet-controlplane",
    heartbeat_interval_seconds=10,
    mqtt_url="mqtt://127.0.0.1:1",
)


class Calls:
    def __init__(self) -> None:
        self.order: list[object] = []
        self.callbacks = dict(
            facts=common_pb2.DeviceFacts,
            on_welcome=lambda welcome: self.order.append(welcome.artifact_port),
            on_connected=lambda: self.order.append("connected"),
        )


def test_grpc_session_hands_the_welcome_over_before_on_connected():
    calls = Calls()
    session = Session(IDENTITY, **calls.callbacks)

    async def stream():
        yield WELCOME

    asyncio.run(session._read(stream()))
    assert calls.order == [8443, "connected"] and session.state.welcomed == 1


def test_mqtt_session_hands_the_welcome_over_before_on_connected():
    calls = Calls()
    session = MqttSession(IDENTITY, **calls.callbacks)
    session._receive(mqtt.down("lab", "gw-1", "welcome"), WELCOME.SerializeToString(), False)
    assert calls.order == [8443, "connected"] and session.state.welcomed == 1
