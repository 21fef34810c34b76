"""Per-device broker identity against a real Mosquitto with the dynamic security plugin (set up by the shipped
``deploy/mosquitto/init-dynsec.sh``) and a control plane that provisions device accounts at enrollment.

Isolation is proven by non-delivery: a denied QoS 1 publish still gets its PUBACK, so what counts is that
nobody (not even a privileged observer of ``edgefleet/v1/#``) receives it and the server stores nothing."""

from __future__ import annotations

import asyncio
import os
import pwd
import queue
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.enroll import enroll
from agent.errors import AgentError
from agent.facts import collect_facts
from agent.identity import Identity
from controlplane.mqtt_accounts import BrokerAccounts
from protos import mqtt
from protos.edgefleet.v1 import admin_pb2, agent_pb2
from protos.join import parse_join_string
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for
from tests.integration.shipping import deploy, publish, register_key
from tests.integration.test_telemetry import FIRST, _batch

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "deploy" / "mosquitto" / "init-dynsec.sh"
PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
FLEET = "lab"
CP_USER, CP_PASSWORD = "edgefleet-controlplane", "cp-secret"

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None or shutil.which("mosquitto_ctrl") is None or not PLUGIN.exists(),
    reason="needs mosquitto 2 with the dynamic security plugin",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A private Mosquitto with dynamic security: the control plane's account only, no anonymous clients."""
    port = _free_port()
    dynsec = tmp_path / "dynamic-security.json"
    env = dict(os.environ, EDGEFLEET_MQTT_PASSWORD=CP_PASSWORD)
    subprocess.run(["sh", str(INIT), str(dynsec), CP_USER], check=True, env=env, capture_output=True, timeout=30)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # as root it would drop to "mosquitto", which cannot read tmp
        f"plugin {PLUGIN}\nplugin_opt_config_file {dynsec}\n"
    )
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


def _cp_url(port: int) -> str:
    return f"mqtt://{CP_USER}:{CP_PASSWORD}@127.0.0.1:{port}"


@pytest.fixture
def cp(tmp_path: Path, broker: int) -> Iterator[ServerThread]:
    config = server_config(
        tmp_path / "server", mqtt_url=_cp_url(broker), mqtt_provision_devices=True, heartbeat_interval_seconds=5
    )
    server = ServerThread(config)
    wait_for(lambda: server.running.mqtt.connected.is_set(), timeout=15, what="the bridge to connect")
    yield server
    server.stop()


def _enroll(server: ServerThread, tmp_path: Path, device_id: str) -> Identity:
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(server.join_string(FLEET))
    return asyncio.run(enroll(join, data_dir=tmp_path / device_id, device_id=device_id, facts=facts))


@dataclass
class Connected:
    client: paho.Client
    messages: queue.Queue
    events: queue.Queue

    def event(self, kind: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            got, value = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == kind:
                return value

    def subscribe(self, topic: str):
        self.client.subscribe(topic, qos=1)
        return self.event("suback")

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)  # returns once the broker's PUBACK is in
        assert info.is_published()

    def expect(self, topic: str, timeout: float = 15.0) -> paho.MQTTMessage:
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"nothing on {topic} within {timeout:.0f} s") from None
            if message.topic == topic:
                return message

    def nothing(self, seconds: float = 1.5) -> list[paho.MQTTMessage]:
        time.sleep(seconds)
        got = []
        while not self.messages.empty():
            got.append(self.messages.get_nowait())
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def connect(broker) -> Iterator:
    made: list[Connected] = []

    def make(username: str, password: str, client_id: str) -> tuple[Connected, paho.ReasonCode]:
        messages, events = queue.Queue(), queue.Queue()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        client.username_pw_set(username, password)
        client.on_message = lambda c, u, message: messages.put(message)
        client.on_connect = lambda c, u, flags, code, props: events.put(("connack", code))
        client.on_subscribe = lambda c, u, mid, codes, props: events.put(("suback", codes[0]))
        client.on_disconnect = lambda c, u, flags, code, props: events.put(("disconnect", code))
        client.connect("127.0.0.1", broker, keepalive=30)
        client.loop_start()
        connected = Connected(client, messages, events)
        made.append(connected)
        return connected, connected.event("connack")

    yield make
    for connected in made:
        connected.close()


def _device(connect, identity: Identity) -> Connected:
    """The device with its own credentials, its down subtree subscribed, said hello."""
    assert identity.mqtt_username == identity.mqtt_client_id == identity.device_id and identity.mqtt_password
    device, code = connect(identity.mqtt_username, identity.mqtt_password, identity.mqtt_client_id)
    assert not code.is_failure, code
    assert not device.subscribe(mqtt.device_subscription(FLEET, identity.device_id)).is_failure
    hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id=identity.device_id, boot_id="boot-1"))
    device.publish(mqtt.up(FLEET, identity.device_id, "hello"), hello.SerializeToString())
    device.expect(mqtt.down(FLEET, identity.device_id, "welcome"))
    return device


def test_devices_are_confined_to_their_own_subtree(cp, connect, tmp_path):
    a_id, b_id = _enroll(cp, tmp_path, "dev-a"), _enroll(cp, tmp_path, "dev-b")
    assert a_id.mqtt_password != b_id.mqtt_password
    a, b = _device(connect, a_id), _device(connect, b_id)
    observer, code = connect(CP_USER, CP_PASSWORD, "edgefleet-controlplane-observer")
    assert not code.is_failure
    assert not observer.subscribe(f"{mqtt.TOPIC_PREFIX}/#").is_failure

    # A cannot read B's desired state: its subscription is refused, and nothing arrives while B gets it.
    assert a.subscribe(mqtt.device_subscription(FLEET, "dev-b")).is_failure
    assert a.subscribe(mqtt.down(FLEET, "dev-b", "desired")).is_failure
    b.publish(
        mqtt.up(FLEET, "dev-b", "facts"),
        agent_pb2.AgentMessage(facts=collect_facts(data_dir=tmp_path, labels={})).SerializeToString(),
    )
    wait_for(lambda: cp.device("dev-b").device_class, what="B's facts to classify it")
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path)
    deploy(cp, "dev-b")
    b.expect(mqtt.down(FLEET, "dev-b", "desired"))
    assert [m.topic for m in a.nothing() if "dev-b" in m.topic] == []

    # A cannot publish into B's telemetry: acked by the broker, delivered to nobody, stored nowhere.
    observer.nothing(0.5)
    received = cp.running.mqtt.stats.received
    forged = agent_pb2.AgentMessage(telemetry=_batch(1, FIRST, device_id="dev-b")).SerializeToString()
    a.publish(mqtt.up(FLEET, "dev-b", "telemetry"), forged)  # the PUBACK comes even though it is denied
    assert [m.topic for m in observer.nothing()] == []
    assert cp.running.mqtt.stats.received == received
    stub, meta, channel = cp.admin()
    with channel:
        rows = stub.QueryLatency(admin_pb2.QueryLatencyRequest(device_id="dev-b"), metadata=meta, timeout=10).rows
    assert list(rows) == []
    # ... while A's own telemetry goes through.
    own = agent_pb2.AgentMessage(telemetry=_batch(1, FIRST, device_id="dev-a")).SerializeToString()
    a.publish(mqtt.up(FLEET, "dev-a", "telemetry"), own)
    a.expect(mqtt.down(FLEET, "dev-a", "telemetry_ack"))

    # A cannot subscribe to the whole tree.
    assert a.subscribe(f"{mqtt.TOPIC_PREFIX}/#").is_failure
    assert a.subscribe("#").is_failure


def test_the_client_id_must_be_the_device_id(cp, connect, tmp_path):
    identity = _enroll(cp, tmp_path, "dev-a")
    _, code = connect(identity.mqtt_username, identity.mqtt_password, "someone-else")
    assert code.is_failure and code.getName() == "Not authorized"
    _, code = connect(identity.mqtt_username, "wrong password", identity.mqtt_client_id)
    assert code.is_failure
    _, code = connect(identity.mqtt_username, identity.mqtt_password, identity.mqtt_client_id)
    assert not code.is_failure


def test_a_revoked_device_is_disconnected_and_cannot_connect_again(cp, connect, tmp_path):
    identity = _enroll(cp, tmp_path, "dev-a")
    device = _device(connect, identity)
    stub, meta, channel = cp.admin()
    with channel:
        stub.RevokeDevice(admin_pb2.RevokeDeviceRequest(device_id="dev-a", reason="stolen"), metadata=meta, timeout=10)
    assert device.event("disconnect") is not None
    _, code = connect(identity.mqtt_username, identity.mqtt_password, identity.mqtt_client_id)
    assert code.is_failure and code.getName() == "Not authorized"
    roles = asyncio.run(
        asyncio.to_thread(
            BrokerAccounts(_cp_url(cp.running.mqtt.broker.port)).run,
            [
                {"command": "getRole", "rolename": "edgefleet-device-dev-a"},
            ],
        )
    )
    assert roles[0].get("error")  # the role is gone too


def test_a_broker_that_does_not_answer_fails_the_enrollment_with_nothing_created(tmp_path):
    dead = _free_port()
    config = server_config(tmp_path / "server", mqtt_url=_cp_url(dead), mqtt_provision_devices=True)
    server = ServerThread(config)
    try:
        with pytest.raises(AgentError, match="unreachable"):
            _enroll(server, tmp_path, "dev-a")
        assert [d.device_id for d in server.devices()] == []
    finally:
        server.stop()


def test_reserved_device_ids_are_refused(cp, tmp_path):
    with pytest.raises(AgentError, match="control plane"):
        _enroll(cp, tmp_path, "edgefleet-controlplane")
    assert [d.device_id for d in cp.devices()] == []
