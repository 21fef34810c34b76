"""The agent's MQTT session against a real Mosquitto broker, with a raw paho client playing the control plane.

Each test starts its own broker on a free port (no persistence) and kills or restarts it as it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import daemon
from agent.backoff import Backoff
from agent.config import AgentConfig, load_config, parse_mqtt_url
from agent.errors import AgentConfigError
from agent.identity import MQTT_PASSWORD_FILE, Identity, load_identity, mqtt_fields, save_identity
from agent.mqtt_session import MqttSession
from agent.session import Session, SessionEnded
from protos import mqtt
from protos.edgefleet.v1 import agent_pb2, common_pb2, enrollment_pb2, telemetry_pb2

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto broker")

FLEET, DEVICE = "lab", "gw-1"
TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """A mosquitto process on a fixed port; stop() kills it, start() brings it back on the same port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=TIMEOUT)
            self.process = None


@pytest.fixture
def broker(tmp_path: Path):
    broker = Broker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


class ControlPlane:
    """The server side, played by a raw paho client: sees everything devices publish, publishes down messages."""

    def __init__(self, broker: Broker, *, welcome: bool = False) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.welcome = welcome  # answer each hello with a Welcome, as the bridge does
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-cp", protocol=paho.MQTTv5)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(mqtt.SERVER_SUBSCRIPTION, qos=1)
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT)

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))
        if self.welcome and message.topic == mqtt.up(FLEET, DEVICE, "hello"):
            welcome = agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(device_id=DEVICE, fleet=FLEET))
            self.client.publish(mqtt.down(FLEET, DEVICE, "welcome"), welcome.SerializeToString(), qos=1)

    def kinds(self) -> list[str]:
        with self._lock:
            return [topic.rsplit("/", 1)[1] for topic, _ in self.received]

    def presence(self) -> list[bytes]:
        with self._lock:
            return [payload for topic, payload in self.received if topic.endswith("/up/presence")]

    def messages(self, kind: str) -> list[agent_pb2.AgentMessage]:
        with self._lock:
            found = [payload for topic, payload in self.received if topic == mqtt.up(FLEET, DEVICE, kind)]
        return [agent_pb2.AgentMessage.FromString(payload) for payload in found]

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def publish(self, message: agent_pb2.ControlMessage, *, kind: str | None = None) -> None:
        kind = kind or message.WhichOneof("body")
        self.publish_raw(mqtt.down(FLEET, DEVICE, kind), message.SerializeToString(), retain=kind == "desired")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cp(broker: Broker):
    plane = ControlPlane(broker)
    yield plane
    plane.close()


def identity(**extra: str) -> Identity:
    return Identity(
        device_id=DEVICE,
        fleet=FLEET,
        device_endpoint="127.0.0.1:1",
        api_endpoint="127.0.0.1:1",
        tls_server_name="edgefleet-controlplane",
        heartbeat_interval_seconds=10,
        **extra,
    )


def facts() -> common_pb2.DeviceFacts:
    return common_pb2.DeviceFacts(architecture="x86_64", cpu_cores=4)


class Recorder:
    def __init__(self) -> None:
        self.desired: list[agent_pb2.DesiredState] = []
        self.messages: list[agent_pb2.ControlMessage] = []
        self.connected = 0


def make_session(broker: Broker, recorder: Recorder, **kwargs: object) -> MqttSession:
    options: dict[str, object] = dict(
        facts=facts,
        url=broker.url,
        heartbeat_interval_seconds=0.2,
        connect_timeout_seconds=2.0,
        backoff=Backoff(initial_seconds=0.05, max_seconds=0.2),
        on_desired=recorder.desired.append,
        on_message=recorder.messages.append,
        on_connected=lambda: setattr(recorder, "connected", recorder.connected + 1),
    )
    options.update(kwargs)
    return MqttSession(identity(), **options)  # type: ignore[arg-type]


async def until(check: Callable[[], object], what: str | Callable[[], str], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(session: MqttSession) -> AsyncIterator[asyncio.Task]:
    task = asyncio.ensure_future(session.run())
    try:
        yield task
    finally:
        session.stop()
        with contextlib.suppress(SessionEnded):
            await asyncio.wait_for(task, TIMEOUT)


def desired(generation: int) -> agent_pb2.ControlMessage:
    return agent_pb2.ControlMessage(desired=agent_pb2.DesiredState(generation=generation))


def test_connect_publishes_presence_hello_facts_then_heartbeats(broker: Broker, cp: ControlPlane) -> None:
    """Subscribe, then presence online (retained), Hello, facts, heartbeats; on_connected once, at the Welcome."""
    recorder = Recorder()

    async def scenario() -> MqttSession:
        session = make_session(broker, recorder)
        async with running(session):
            await until(lambda: len(cp.messages("heartbeat")) >= 2, "two heartbeats")
            assert session.state.connected and recorder.connected == 0  # no session on the control plane yet
            cp.publish(agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(device_id=DEVICE, fleet=FLEET)))
            await until(lambda: recorder.connected == 1, "on_connected at the Welcome")
        await until(lambda: cp.presence()[-1:] == [mqtt.PRESENCE_OFFLINE], "presence offline after stop")
        return session

    session = asyncio.run(scenario())
    kinds = cp.kinds()
    assert kinds[:3] == ["presence", "hello", "facts"]
    assert cp.presence()[0] == mqtt.PRESENCE_ONLINE
    (hello,) = cp.messages("hello")
    assert (hello.hello.device_id, hello.hello.boot_id) == (DEVICE, session.boot_id)
    assert cp.messages("facts")[0].facts == facts()
    beats = [m.heartbeat.sequence for m in cp.messages("heartbeat")]
    assert beats == list(range(1, len(beats) + 1)) and session.state.heartbeats_sent >= 2


def test_retained_desired_reaches_on_desired_and_welcome_is_counted(broker: Broker, cp: ControlPlane) -> None:
    """A desired state published retained before the device connects arrives at subscribe; later ones too."""
    recorder = Recorder()
    cp.publish(desired(3))

    async def scenario() -> MqttSession:
        session = make_session(broker, recorder, heartbeat_interval_seconds=None)
        async with running(session):
            await until(lambda: recorder.desired, "the retained desired state")
            cp.publish(agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(device_id=DEVICE, fleet=FLEET)))
            cp.publish(desired(4))
            await until(lambda: len(recorder.desired) == 2 and session.state.welcomed == 1, "welcome, desired 4")
        return session

    session = asyncio.run(scenario())
    assert [d.generation for d in recorder.desired] == [3, 4]
    assert session.state.desired.generation == 4


def test_invalid_down_messages_are_dropped_and_the_session_goes_on(
    broker: Broker, cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    """A body of the wrong kind, garbage, an oversized payload, an unknown kind: each dropped with a reason."""
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="edgefleet.agent.mqtt_session")

    async def scenario() -> MqttSession:
        session = make_session(broker, recorder)
        async with running(session):
            await until(lambda: session.state.connected, "connected")
            root = mqtt.device_root(FLEET, DEVICE)
            cp.publish(agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(device_id=DEVICE)), kind="job")
            cp.publish_raw(f"{root}/down/job", b"\xff\xff\xff garbage")
            cp.publish_raw(f"{root}/down/job", b"\x00" * (mqtt.MAX_PAYLOAD_BYTES + 1))
            cp.publish_raw(f"{root}/down/bogus", desired(9).SerializeToString())
            ack = telemetry_pb2.TelemetryAck(boot_id=session.boot_id, sequence=7)
            cp.publish(agent_pb2.ControlMessage(telemetry_ack=ack))
            cp.publish(desired(5))
            await until(lambda: recorder.desired and recorder.messages, "the valid messages after the bad ones")
            assert session.state.connected
        return session

    session = asyncio.run(scenario())
    assert [d.generation for d in recorder.desired] == [5]
    assert [m.telemetry_ack.sequence for m in recorder.messages] == [7]
    assert session.state.welcomed == 0
    reasons = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(reasons) == 4, reasons
    assert "its body is welcome, not job" in reasons[0]
    assert "does not parse as a ControlMessage" in reasons[1]
    assert "over the" in reasons[2] and "byte cap" in reasons[2]
    assert "unknown down kind 'bogus'" in reasons[3]


def test_send_publishes_on_the_body_kind_topic_only_while_connected(broker: Broker, cp: ControlPlane) -> None:
    recorder = Recorder()
    status = agent_pb2.AgentMessage(status=agent_pb2.StatusReport())

    async def scenario() -> None:
        session = make_session(broker, recorder)
        assert not session.send(status)  # not connected yet
        async with running(session):
            await until(lambda: session.state.connected, "connected")
            assert session.send(status)
            await until(lambda: cp.messages("status"), "the status report")
        assert not session.send(status)  # stopped

    asyncio.run(scenario())
    assert cp.messages("status") == [status]


def test_broker_restart_reconnects_with_backoff_and_says_hello_again(tmp_path: Path, broker: Broker) -> None:
    """Kill the broker: disconnected, send() False, retries refused; bring it back: re-subscribe, re-hello."""
    recorder = Recorder()
    planes = [ControlPlane(broker, welcome=True)]

    async def scenario() -> MqttSession:
        # No jitter: the first retry comes 0.3 s after the loss, the next ones 0.6 s apart.
        session = make_session(broker, recorder, backoff=Backoff(initial_seconds=0.3, max_seconds=0.6, jitter=0.0))
        async with running(session):
            await until(lambda: session.state.connected, "connected")
            planes[0].publish(desired(1))
            await until(lambda: recorder.desired, "desired 1")
            planes[0].close()
            broker.stop()
            await until(lambda: not session.state.connected, "disconnected")
            assert not session.send(agent_pb2.AgentMessage(status=agent_pb2.StatusReport()))
            await until(lambda: "ConnectionRefused" in session.state.last_error, "a refused retry")
            # The next retry is 0.6 s away: time to restart the broker and the control plane.
            broker.start()
            planes.append(ControlPlane(broker, welcome=True))
            await until(lambda: session.state.connected, "reconnected")
            await until(lambda: planes[1].messages("hello"), "the second hello")
            assert planes[1].presence()[0] == mqtt.PRESENCE_ONLINE
            await until(lambda: recorder.connected == 2, "on_connected at the second Welcome")
            # Without persistence the broker forgot desired 1; a new one arrives.
            planes[1].publish(desired(2))
            await until(lambda: len(recorder.desired) == 2, "desired 2")
        return session

    try:
        session = asyncio.run(scenario())
    finally:
        planes[-1].close()
    assert [d.generation for d in recorder.desired] == [1, 2]
    assert planes[1].messages("hello")[0].hello.boot_id == session.boot_id


def test_last_will_marks_the_device_offline_when_its_connection_is_cut(broker: Broker, cp: ControlPlane) -> None:
    """No clean disconnect (the socket is shut down under paho): the broker publishes the Will, then the
    session reconnects by itself and is online again."""
    recorder = Recorder()

    async def scenario() -> None:
        session = make_session(broker, recorder)
        cp.welcome = True
        async with running(session):
            await until(lambda: session.state.connected and recorder.connected == 1, "connected and welcomed")
            session._client.socket().shutdown(socket.SHUT_RDWR)
            # The Will, then (after a backoff) online again: the reconnect may beat any polling in between.
            await until(lambda: len(cp.presence()) >= 3, lambda: f"the Last Will and online again, got {cp.presence()}")
            await until(lambda: len(cp.messages("hello")) == 2, "the second hello")
            assert len(cp.messages("hello")) == 2
            await until(lambda: recorder.connected == 2, "on_connected at the second Welcome")
        await until(lambda: len(cp.presence()) == 4, "presence offline after stop")

    asyncio.run(scenario())
    assert cp.presence() == [mqtt.PRESENCE_ONLINE, mqtt.PRESENCE_OFFLINE, mqtt.PRESENCE_ONLINE, mqtt.PRESENCE_OFFLINE]


def test_stop_publishes_offline_retained_and_no_will(broker: Broker, cp: ControlPlane) -> None:
    recorder = Recorder()

    async def scenario() -> None:
        session = make_session(broker, recorder)
        task = asyncio.ensure_future(session.run())
        await until(lambda: session.state.connected, "connected")
        session.stop()
        await asyncio.wait_for(task, TIMEOUT)
        assert not session.state.connected
        await asyncio.sleep(0.2)  # a Will would have come by now

    asyncio.run(scenario())
    assert cp.presence() == [mqtt.PRESENCE_ONLINE, mqtt.PRESENCE_OFFLINE]
    got: list[bytes] = []  # a fresh subscriber sees the retained presence
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe(mqtt.up(FLEET, DEVICE, "presence"), qos=1)
    client.loop_start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()
    assert got == [mqtt.PRESENCE_OFFLINE]


def test_revoked_disconnect_ends_the_session(broker: Broker, cp: ControlPlane) -> None:
    recorder = Recorder()

    async def scenario() -> MqttSession:
        session = make_session(broker, recorder)
        task = asyncio.ensure_future(session.run())
        await until(lambda: session.state.connected, "connected")
        cp.publish(agent_pb2.ControlMessage(disconnect=agent_pb2.Disconnect(reason="revoked by ops", revoked=True)))
        with pytest.raises(SessionEnded, match="revoked by ops"):
            await asyncio.wait_for(task, TIMEOUT)
        await until(lambda: cp.presence()[-1:] == [mqtt.PRESENCE_OFFLINE], "presence offline")
        return session

    session = asyncio.run(scenario())
    assert session.state.fatal == "revoked: revoked by ops" and not session.state.connected


def test_a_disconnect_that_is_not_a_revocation_brings_a_new_hello(broker: Broker, cp: ControlPlane) -> None:
    """The control plane closed its side: hello again (after a backoff) on the same broker connection."""
    recorder = Recorder()

    async def scenario() -> MqttSession:
        session = make_session(broker, recorder)
        cp.welcome = True
        async with running(session):
            await until(lambda: session.state.connected and recorder.connected == 1, "connected and welcomed")
            cp.publish(agent_pb2.ControlMessage(disconnect=agent_pb2.Disconnect(reason="missed heartbeats")))
            await until(lambda: len(cp.messages("hello")) == 2, "the second hello")
            await until(lambda: recorder.connected == 2, "on_connected at the second Welcome")
            assert session.state.connected
            assert session.state.events == ["disconnect: missed heartbeats"]
        return session

    session = asyncio.run(scenario())
    assert not session.state.fatal
    assert cp.presence()[:1] == [mqtt.PRESENCE_ONLINE] and mqtt.PRESENCE_OFFLINE not in cp.presence()[:-1]
    assert {m.hello.boot_id for m in cp.messages("hello")} == {session.boot_id}


def test_broker_refusing_the_credentials_ends_the_session(tmp_path: Path) -> None:
    """Like UNAUTHENTICATED on the gRPC stream: a broker that says "not authorized" is not retried."""
    broker = Broker(tmp_path)
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npersistence false\n")
    broker.start()
    try:

        async def scenario() -> MqttSession:
            session = make_session(broker, Recorder())
            with pytest.raises(SessionEnded, match="refused this device"):
                await asyncio.wait_for(session.run(), TIMEOUT)
            return session

        session = asyncio.run(scenario())
    finally:
        broker.stop()
    assert session.state.fatal


def test_unreachable_broker_is_retried_until_stop(tmp_path: Path) -> None:
    broker = Broker(tmp_path)  # never started

    async def scenario() -> MqttSession:
        session = make_session(broker, Recorder(), backoff=Backoff(initial_seconds=0.01, max_seconds=0.02))
        task = asyncio.ensure_future(session.run())
        await until(lambda: "ConnectionRefused" in session.state.last_error, "a refused attempt")
        session.stop()
        await asyncio.wait_for(task, TIMEOUT)
        return session

    session = asyncio.run(scenario())
    assert not session.state.connected and not session.state.fatal


# --- configuration, identity, the daemon's choice ---


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", (False, "broker", 1883)),
        ("mqtts://broker.example:9883", (True, "broker.example", 9883)),
        ("mqtts://10.0.0.1", (True, "10.0.0.1", 8883)),
    ],
)
def test_mqtt_url_is_parsed(url: str, expected: tuple[bool, str, int]) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://broker", "must start with mqtt:// or mqtts://"),
        ("mqtt://", "has no host"),
        ("mqtt://u:p@broker", "only a scheme, host and port"),
        ("mqtt://broker:99999", "invalid"),
    ],
)
def test_bad_mqtt_urls_are_config_errors(tmp_path: Path, url: str, needle: str) -> None:
    with pytest.raises(AgentConfigError, match=needle):
        parse_mqtt_url(url)
    with pytest.raises(AgentConfigError, match="mqtt_url"):
        load_config(None, data_dir=tmp_path, mqtt_url=url)


def test_transport_option(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('data_dir = "d"\ntransport = "mqtt"\nmqtt_url = "mqtt://127.0.0.1:1884"\n')
    config = load_config(path)
    assert (config.transport, config.mqtt_url) == ("mqtt", "mqtt://127.0.0.1:1884")
    assert load_config(None, data_dir=tmp_path).transport == "grpc"
    with pytest.raises(AgentConfigError, match="transport"):
        load_config(None, data_dir=tmp_path, transport="amqp")


def test_daemon_picks_the_session_by_transport(tmp_path: Path) -> None:
    async def scenario() -> None:
        grpc_config = AgentConfig(data_dir=tmp_path)
        assert type(daemon.make_session(grpc_config, identity())) is Session
        url_config = AgentConfig(data_dir=tmp_path, transport="mqtt", mqtt_url="mqtt://127.0.0.1:1")
        assert type(daemon.make_session(url_config, identity())) is MqttSession
        # The URL stored at join is used when the config gives none; the config's wins.
        mqtt_config = AgentConfig(data_dir=tmp_path, transport="mqtt")
        stored = daemon.make_session(mqtt_config, identity(mqtt_url="mqtts://broker:8883"))
        assert stored.url == "mqtts://broker:8883"
        assert daemon.make_session(url_config, identity(mqtt_url="mqtts://broker:8883")).url == "mqtt://127.0.0.1:1"
        with pytest.raises(AgentConfigError, match="transport mqtt needs a broker URL"):
            daemon.make_session(mqtt_config, identity())

    asyncio.run(scenario())


def test_cli_transport_options_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.agent.test_agent_cli import invoke

    result, started = invoke(monkeypatch, tmp_path, "--transport", "mqtt", "--mqtt-url", "mqtts://b:8883")
    assert result.exit_code == 0, result.output
    assert (started[0].transport, started[0].mqtt_url) == ("mqtt", "mqtts://b:8883")


def self_signed_pem() -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_identity_keeps_the_mqtt_credentials_and_the_password_owner_only(tmp_path: Path) -> None:
    pem = self_signed_pem()
    credentials = enrollment_pb2.MqttCredentials(
        url="mqtts://broker:8883", username=DEVICE, password="s3cret", client_id=DEVICE, topic_root="t"
    )
    saved = identity(**mqtt_fields(credentials))
    saved = Identity(**{**saved.to_meta(), "mqtt_password": "s3cret", "cert_pem": pem, "ca_pem": pem, "key_pem": b"k"})
    save_identity(tmp_path, saved)
    folder = tmp_path / "identity"
    meta = json.loads((folder / "identity.json").read_text())
    assert meta["mqtt_url"] == "mqtts://broker:8883" and "mqtt_password" not in meta
    assert "s3cret" not in (folder / "identity.json").read_text()
    assert stat.S_IMODE((folder / MQTT_PASSWORD_FILE).stat().st_mode) == 0o600
    assert load_identity(tmp_path) == saved
    # An identity joined without a broker (or before MQTT existed) loads with empty credentials.
    plain = tmp_path / "plain"
    plain.mkdir()
    save_identity(plain, Identity(**{**identity().to_meta(), "cert_pem": pem, "ca_pem": pem, "key_pem": b"k"}))
    assert not (plain / "identity" / MQTT_PASSWORD_FILE).exists()
    assert load_identity(plain).mqtt_url == load_identity(plain).mqtt_password == ""


def test_mqtt_fields_from_the_enroll_response() -> None:
    credentials = enrollment_pb2.MqttCredentials(
        url="mqtts://broker:8883", username=DEVICE, password="s3cret", client_id=DEVICE, topic_root="x"
    )
    assert mqtt_fields(credentials) == {
        "mqtt_url": "mqtts://broker:8883",
        "mqtt_username": DEVICE,
        "mqtt_client_id": DEVICE,
        "mqtt_topic_root": "x",
        "mqtt_password": "s3cret",
        "mqtt_ca_pem": b"",
    }
    assert mqtt_fields(enrollment_pb2.MqttCredentials()) == {} and mqtt_fields(None) == {}


def test_a_broker_ca_handed_over_at_join_is_kept_with_the_identity_and_a_bad_one_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pem = self_signed_pem()
    credentials = enrollment_pb2.MqttCredentials(url="mqtts://broker:8883", username=DEVICE, ca_pem=pem)
    fields = mqtt_fields(credentials)
    assert fields["mqtt_ca_pem"] == pem
    saved = Identity(**{**identity(**fields).to_meta(), "mqtt_ca_pem": pem, "cert_pem": pem, "ca_pem": pem})
    save_identity(tmp_path, saved)
    assert (tmp_path / "identity" / "mqtt-ca.crt").read_bytes() == pem
    assert "mqtt_ca_pem" not in json.loads((tmp_path / "identity" / "identity.json").read_text())
    assert load_identity(tmp_path).mqtt_ca_pem == pem

    credentials.ca_pem = b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    assert mqtt_fields(credentials)["mqtt_ca_pem"] == b""
    assert "ignoring the broker CA handed over at join" in caplog.text
