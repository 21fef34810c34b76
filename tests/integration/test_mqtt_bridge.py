"""The MQTT bridge against a real Mosquitto (a private one per test, on a free port) and a real control plane;
a raw paho client plays the device: hello gets a Welcome, facts classify, a deploy arrives retained, telemetry is
acked and de-duplicated, the Last Will takes the device offline, and bad messages are dropped with a log line
while the bridge keeps working."""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.enroll import enroll
from agent.facts import collect_facts
from protos import mqtt
from protos.edgefleet.v1 import admin_pb2, agent_pb2, telemetry_pb2
from protos.join import parse_join_string
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for
from tests.integration.shipping import deploy, publish, register_key
from tests.integration.test_telemetry import FIRST, _batch

DEVICE = "dev-t"  # the id test_telemetry's batches name
FLEET = "lab"

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto broker")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A private Mosquitto on a free port, so tests never see each other's retained messages."""
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (tmp_path / "mosquitto.log").open("wb")
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(answers, timeout=10, what="mosquitto to listen")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def cp_mqtt(tmp_path: Path, broker: int) -> Iterator[ServerThread]:
    server = ServerThread(
        server_config(tmp_path / "server", mqtt_url=f"mqtt://127.0.0.1:{broker}", heartbeat_interval_seconds=5)
    )
    wait_for(lambda: server.running.mqtt.connected.is_set(), timeout=15, what="the bridge to connect")
    yield server
    server.stop()


def _enroll(server: ServerThread, tmp_path: Path):
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(server.join_string(FLEET))
    return asyncio.run(enroll(join, data_dir=tmp_path / DEVICE, device_id=DEVICE, facts=facts))


@pytest.fixture
def identity(cp_mqtt, tmp_path):
    return _enroll(cp_mqtt, tmp_path)


class FakeDevice:
    """A raw MQTT 5 client in the device's place: its own down subtree subscribed, a Last Will of ``offline``."""

    def __init__(self, port: int, device_id: str = DEVICE, fleet: str = FLEET, *, subscribe: bool = True) -> None:
        self.fleet, self.device_id = fleet, device_id
        self.received: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{time.monotonic_ns()}", protocol=paho.MQTTv5
        )
        self.client.will_set(self.up_topic("presence"), mqtt.PRESENCE_OFFLINE, qos=1, retain=True)
        subscribed = queue.Queue()
        self.client.on_message = lambda c, u, message: self.received.put(message)
        self.client.on_subscribe = lambda *args: subscribed.put(True)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if subscribe:
            self.client.subscribe(mqtt.device_subscription(fleet, device_id), qos=1)
            subscribed.get(timeout=10)

    def up_topic(self, kind: str) -> str:
        return f"{mqtt.TOPIC_PREFIX}/{self.fleet}/{self.device_id}/up/{kind}"

    def send(self, kind: str, payload: bytes | agent_pb2.AgentMessage, *, topic: str | None = None, retain=False):
        data = payload if isinstance(payload, bytes) else payload.SerializeToString()
        self.client.publish(topic or self.up_topic(kind), data, qos=1, retain=retain).wait_for_publish(10)

    def hello(self, boot_id: str = "boot-1") -> None:
        self.send("presence", mqtt.PRESENCE_ONLINE, retain=True)
        self.send("hello", agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id=self.device_id, boot_id=boot_id)))

    def expect(self, kind: str, timeout: float = 15.0) -> tuple[agent_pb2.ControlMessage, paho.MQTTMessage]:
        """The next message on down/<kind> (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.received.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no down/{kind} for {self.device_id} within {timeout:.0f} s") from None
            if message.topic == mqtt.down(self.fleet, self.device_id, kind):
                control = agent_pb2.ControlMessage.FromString(message.payload)
                assert control.WhichOneof("body") == kind
                return control, message

    def drop_with_will(self) -> None:
        """Disconnect so that the broker publishes the Last Will."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def devices(broker) -> Iterator:
    made: list[FakeDevice] = []

    def make(*args, **kwargs) -> FakeDevice:
        device = FakeDevice(broker, *args, **kwargs)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def _facts_message(identity_dir: Path) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(facts=collect_facts(data_dir=identity_dir, labels={}))


def test_enrollment_gives_the_broker_settings(cp_mqtt, identity, broker):
    from controlplane.services.enrollment import mqtt_credentials

    creds = mqtt_credentials(cp_mqtt.running.services, FLEET, DEVICE)
    assert creds.url == f"mqtt://127.0.0.1:{broker}"
    assert creds.username == creds.client_id == DEVICE and creds.password == ""
    assert creds.topic_root == f"edgefleet/v1/{FLEET}/{DEVICE}"


def test_hello_facts_deploy_and_telemetry(cp_mqtt, identity, devices, tmp_path):
    device = devices()
    device.hello()
    welcome, _ = device.expect("welcome")
    assert welcome.welcome.device_id == DEVICE and welcome.welcome.fleet == FLEET
    wait_for(lambda: cp_mqtt.is_online(DEVICE), what="the device to be online")

    device.send("facts", _facts_message(tmp_path))
    # Classified (under the class lock, as over gRPC): enrollment stores facts but does not classify.
    wait_for(lambda: cp_mqtt.device(DEVICE).device_class, what="the reported facts to classify the device")

    key = register_key(cp_mqtt, tmp_path)
    publish(cp_mqtt, key, tmp_path)
    deploy(cp_mqtt, DEVICE)
    desired, raw = device.expect("desired")
    assert [m.model.name for m in desired.desired.models] == ["tiny"] and desired.desired.generation >= 1
    later = devices(subscribe=True)  # another subscriber of the same subtree gets the retained copy
    again, raw_again = later.expect("desired")
    assert raw_again.retain and again.desired.generation == desired.desired.generation

    first = _batch(1, FIRST)
    device.send("telemetry", agent_pb2.AgentMessage(telemetry=first))
    ack, _ = device.expect("telemetry_ack")
    assert ack.telemetry_ack == telemetry_pb2.TelemetryAck(boot_id="boot-1", sequence=1, duplicate=False)
    device.send("telemetry", agent_pb2.AgentMessage(telemetry=first))
    ack, _ = device.expect("telemetry_ack")
    assert ack.telemetry_ack.duplicate is True
    stub, meta, channel = cp_mqtt.admin()
    with channel:
        rows = stub.QueryLatency(admin_pb2.QueryLatencyRequest(device_id=DEVICE), metadata=meta, timeout=10).rows
    intent = [r for r in rows if r.key["model"] == "intent"]
    assert intent and intent[0].requests == len(FIRST)  # stored once

    # A new hello (reconnect) gets Welcome and the current desired state again.
    device.hello(boot_id="boot-2")
    device.expect("welcome")
    assert device.expect("desired")[0].desired.generation == desired.desired.generation
    assert cp_mqtt.device(DEVICE).online

    device.drop_with_will()
    wait_for(lambda: not cp_mqtt.is_online(DEVICE), what="the Last Will to take the device offline")
    assert cp_mqtt.running.services.presence.session(DEVICE) is None


def test_bad_messages_are_dropped_and_the_bridge_keeps_working(cp_mqtt, identity, devices, caplog):
    caplog.set_level(logging.WARNING, logger="edgefleet.server.mqtt")
    bridge = cp_mqtt.running.mqtt
    device = devices()
    device.hello()
    device.expect("welcome")
    heartbeat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())
    bad = [
        ("parse", dict(kind="heartbeat", payload=b"\xff\xff not protobuf")),
        ("kind", dict(kind="facts", payload=heartbeat)),
        ("size", dict(kind="heartbeat", payload=b"\x00" * (mqtt.MAX_PAYLOAD_BYTES + 1))),
        ("topic", dict(kind="heartbeat", payload=heartbeat, topic=f"edgefleet/v1/{FLEET}/{DEVICE}/up/gossip")),
        ("wrong fleet", dict(kind="heartbeat", payload=heartbeat, topic=f"edgefleet/v1/other/{DEVICE}/up/heartbeat")),
        ("unknown device", dict(kind="heartbeat", payload=heartbeat, topic=f"edgefleet/v1/{FLEET}/ghost/up/heartbeat")),
    ]
    for reason, message in bad:
        before = bridge.stats.reasons.get(reason, 0)
        device.send(message["kind"], message["payload"], topic=message.get("topic"))
        wait_for(lambda r=reason, b=before: bridge.stats.reasons.get(r, 0) > b, timeout=10, what=f"a {reason} drop")
    assert all(f"MQTT message dropped ({reason})" in caplog.text for reason, _ in bad)

    # Still serving the device: telemetry is acked.
    device.send("telemetry", agent_pb2.AgentMessage(telemetry=_batch(7, FIRST)))
    ack, _ = device.expect("telemetry_ack")
    assert ack.telemetry_ack.sequence == 7
    assert cp_mqtt.is_online(DEVICE)


def test_revocation_disconnects_and_clears_the_retained_desired_state(cp_mqtt, identity, devices, tmp_path):
    device = devices()
    device.hello()
    device.expect("welcome")
    key = register_key(cp_mqtt, tmp_path)
    publish(cp_mqtt, key, tmp_path)
    deploy(cp_mqtt, DEVICE)
    device.expect("desired")
    stub, meta, channel = cp_mqtt.admin()
    with channel:
        stub.RevokeDevice(admin_pb2.RevokeDeviceRequest(device_id=DEVICE, reason="stolen"), metadata=meta, timeout=10)
    disconnect, _ = device.expect("disconnect")
    assert disconnect.disconnect.revoked and disconnect.disconnect.reason == "stolen"
    later = devices()
    with pytest.raises(AssertionError):
        later.expect("desired", timeout=1.5)  # the retained copy is gone
    assert not cp_mqtt.is_online(DEVICE)


def test_a_restarted_server_resumes_sessions_from_retained_presence(tmp_path, broker, devices):
    config = server_config(tmp_path / "server", mqtt_url=f"mqtt://127.0.0.1:{broker}", heartbeat_interval_seconds=5)
    first = ServerThread(config)
    try:
        _enroll(first, tmp_path)
        wait_for(lambda: first.running.mqtt.connected.is_set(), timeout=15, what="the bridge to connect")
        device = devices()
        device.hello()
        device.expect("welcome")
    finally:
        first.stop()
    device.expect("disconnect")  # the shutdown tells the device its session is over
    restarted = ServerThread(config)
    try:
        # The device's retained "online" re-opens its session at the new bridge's subscription.
        device.expect("welcome")
        wait_for(lambda: restarted.is_online(DEVICE), what="the device online again")
    finally:
        restarted.stop()


def test_a_silent_device_is_disconnected_after_missed_heartbeats(tmp_path, broker, devices):
    config = server_config(tmp_path / "server", mqtt_url=f"mqtt://127.0.0.1:{broker}", heartbeat_interval_seconds=1)
    server = ServerThread(config)
    try:
        _enroll(server, tmp_path)
        wait_for(lambda: server.running.mqtt.connected.is_set(), timeout=15, what="the bridge to connect")
        device = devices()
        device.hello()
        device.expect("welcome")
        disconnect, _ = device.expect("disconnect", timeout=10)  # offline after 3 intervals of silence
        assert "missed heartbeats" in disconnect.disconnect.reason and not disconnect.disconnect.revoked
        wait_for(lambda: not server.is_online(DEVICE), what="the device offline")
    finally:
        server.stop()


def test_a_broker_restart_without_the_bridges_session_reopens_the_device_session(tmp_path, devices):
    """The broker comes back without persistence: whatever the device sent while the bridge was not subscribed
    again (its hello too) is gone, so the bridge opens the device's session again at its next sign of life (a
    Welcome, after which the agent resends its unacked telemetry), and stores each batch once."""
    port = _free_port()
    conf = tmp_path / "restartable.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log = (tmp_path / "restartable.log").open("ab")

    def start() -> subprocess.Popen:
        process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(answers, timeout=10, what="mosquitto to listen")
        return process

    process = start()
    # Long heartbeats: the fake device sends none, and its session must not end of silence meanwhile.
    config = server_config(tmp_path / "server", mqtt_url=f"mqtt://127.0.0.1:{port}", heartbeat_interval_seconds=30)
    server = ServerThread(config)
    try:
        _enroll(server, tmp_path)
        bridge = server.running.mqtt
        wait_for(lambda: bridge.connected.is_set(), timeout=15, what="the bridge to connect")
        device = FakeDevice(port)
        device.hello()
        device.expect("welcome")
        for restart in range(2):  # a second time: reconnects release what the last connection held
            device.close()
            process.terminate()
            process.wait(10)
            wait_for(lambda: not bridge.connected.is_set(), timeout=15, what="the bridge to notice")
            process = start()
            device = FakeDevice(port)
            device.send("presence", mqtt.PRESENCE_ONLINE, retain=True)  # no hello: as if it were lost
            batch = _batch(restart + 1, FIRST)
            device.send("telemetry", agent_pb2.AgentMessage(telemetry=batch))
            device.expect("welcome", timeout=30)  # from the retained presence, or at the telemetry batch
            device.send("telemetry", agent_pb2.AgentMessage(telemetry=batch))  # resent at the Welcome
            ack, _ = device.expect("telemetry_ack")
            assert (ack.telemetry_ack.boot_id, ack.telemetry_ack.sequence) == ("boot-1", restart + 1)
        assert bridge.stats.connects >= 3  # at least once after each restart (a loaded machine may add one)
        stub, meta, channel = server.admin()
        with channel:
            rows = stub.QueryLatency(admin_pb2.QueryLatencyRequest(device_id=DEVICE), metadata=meta, timeout=10).rows
        assert sum(r.requests for r in rows if r.key["model"] == "intent") == 2 * len(FIRST)  # each batch once
        device.close()
    finally:
        server.stop()
        process.terminate()
        process.wait(10)
        log.close()
