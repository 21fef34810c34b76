"""MQTT over TLS against a real Mosquitto running the shipped ``deploy/mosquitto/mosquitto.conf`` (only its port and
paths changed: a TLS-only listener, dynamic security set up by the shipped ``init-dynsec.sh``), its certificate
issued from the control plane's CA by the shipped ``issue-broker-cert.py``.

The rule under test (``controlplane/mqtt_tls.py``, ``agent/mqtt_session.py``): the broker's certificate must chain
to the CA file given (server ``--mqtt-ca``, agent ``mqtt_ca_file``), else to the edgefleet CA or a system CA; a
handshake that fails is an error, never a plain-text fallback; a CA file that cannot be used stops the start."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import pwd
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from agent.backoff import Backoff
from agent.config import load_config
from agent.errors import AgentConfigError
from agent.facts import collect_facts
from agent.identity import Identity, load_identity
from agent.mqtt_session import MqttSession
from agent.session import SessionEnded
from controlplane.pki import CA_CERT_FILE, CA_KEY_FILE, create_ca, load_or_create_ca, write_private
from protos.edgefleet.v1 import agent_pb2
from protos.limits import TLS_SERVER_NAME
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for
from tests.integration.shipping import deploy, publish, register_key
from tests.integration.test_mqtt_isolation import CP_PASSWORD, CP_USER, INIT, PLUGIN, _enroll, _free_port
from tests.integration.test_mqtt_isolation import pytestmark as _needs_mosquitto
from tests.integration.test_telemetry import FIRST, _batch

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
ISSUE = ROOT / "deploy" / "mosquitto" / "issue-broker-cert.py"
DEVICE = "dev-tls"

pytestmark = [_needs_mosquitto, pytest.mark.timeout(180)]


@dataclass
class TlsBroker:
    port: int
    server_dir: Path  # the control plane's data dir, whose CA issued the broker's certificate
    certs: Path  # server.crt, server.key, ca.crt
    log: Path

    @property
    def cp_url(self) -> str:
        return f"mqtts://{CP_USER}:{CP_PASSWORD}@127.0.0.1:{self.port}"

    def clients(self) -> str:
        """Mosquitto's log: who got as far as an MQTT CONNECT."""
        return self.log.read_text(errors="replace")


def shipped_config(port: int, certs: Path, state: Path) -> str:
    """deploy/mosquitto/mosquitto.conf with its port, file paths and user changed, and nothing else."""
    text = SHIPPED_CONF.read_text()
    for old, new in {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/certs/server.crt": str(certs / "server.crt"),
        "/etc/mosquitto/certs/server.key": str(certs / "server.key"),
        "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so": f"plugin {PLUGIN}",
        "/var/lib/mosquitto/dynamic-security.json": str(state / "dynamic-security.json"),
        "persistence_location /var/lib/mosquitto/": f"persistence_location {state}/",
    }.items():
        assert old in text, f"the shipped mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    # As root it would drop to "mosquitto", which cannot read tmp.
    return text + f"user {pwd.getpwuid(os.getuid()).pw_name}\n"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    """The broker's certificate issued from the control plane's CA."""
    yield from _tls_broker(tmp_path, tmp_path / "server")


@pytest.fixture
def private_ca_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    """The broker's certificate issued from a CA of its own, not the control plane's (``certs/ca.crt``)."""
    yield from _tls_broker(tmp_path, tmp_path / "broker-ca")


def _tls_broker(tmp_path: Path, ca_dir: Path) -> Iterator[TlsBroker]:
    server_dir, certs, state = tmp_path / "server", tmp_path / "certs", tmp_path / "mosquitto"
    server_dir.mkdir(mode=0o700)
    load_or_create_ca(server_dir, dt.datetime.now(dt.UTC))  # the CA the control plane will load at start
    if ca_dir != server_dir:  # the operator's own CA, under its own name
        ca_dir.mkdir(mode=0o700)
        own = create_ca("operator's broker CA", dt.datetime.now(dt.UTC))
        write_private(ca_dir / CA_KEY_FILE, own.key_pem, 0o600)
        write_private(ca_dir / CA_CERT_FILE, own.cert_pem, 0o644)
    state.mkdir()
    subprocess.run(
        [sys.executable, str(ISSUE), "--data-dir", str(ca_dir), "--name", "127.0.0.1", "--out", str(certs)],
        check=True,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    env = dict(os.environ, EDGEFLEET_MQTT_PASSWORD=CP_PASSWORD)
    dynsec = state / "dynamic-security.json"
    subprocess.run(["sh", str(INIT), str(dynsec), CP_USER], check=True, env=env, capture_output=True, timeout=30)
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(shipped_config(port, certs, state))
    log_path = tmp_path / "mosquitto.log"
    log = log_path.open("wb")
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(answers, timeout=10, what="mosquitto to listen")
        yield TlsBroker(port, server_dir, certs, log_path)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def cp_tls(tls_broker: TlsBroker) -> Iterator[ServerThread]:
    """The control plane on the broker's CA, bridging over mqtts:// with its own account, provisioning devices;
    no CA option: the broker's certificate is the edgefleet CA's."""
    config = server_config(
        tls_broker.server_dir, mqtt_url=tls_broker.cp_url, mqtt_provision_devices=True, heartbeat_interval_seconds=5
    )
    server = ServerThread(config)
    try:
        wait_for(lambda: server.running.mqtt.connected.is_set(), timeout=15, what="the bridge to connect over TLS")
        yield server
    finally:
        server.stop()


class Device:
    """The agent's MQTT session, running on its own event loop in a thread, recording what it gets."""

    def __init__(self, identity: Identity, tmp_path: Path, **options) -> None:
        self.desired: list[agent_pb2.DesiredState] = []
        self.messages: list[agent_pb2.ControlMessage] = []
        self.session = MqttSession(
            identity,
            facts=lambda: collect_facts(data_dir=tmp_path, labels={}),
            heartbeat_interval_seconds=1.0,
            connect_timeout_seconds=5.0,
            backoff=Backoff(initial_seconds=0.2, max_seconds=1.0),
            on_desired=self.desired.append,
            on_message=self.messages.append,
            **options,
        )
        self.loop = asyncio.new_event_loop()
        self.task = self.loop.create_task(self.session.run())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=f"device-{identity.device_id}")
        self.thread.start()

    def send(self, message: agent_pb2.AgentMessage) -> bool:
        return asyncio.run_coroutine_threadsafe(_call(self.session.send, message), self.loop).result(10)

    def acks(self) -> list[agent_pb2.TelemetryAck]:
        return [m.telemetry_ack for m in list(self.messages) if m.WhichOneof("body") == "telemetry_ack"]

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.session.stop)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_wait(self.task), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _call(function: Callable, *args):
    return function(*args)


async def _wait(task: asyncio.Task) -> None:
    with contextlib.suppress(SessionEnded):
        await task


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Callable[..., Device]]:
    started: list[Device] = []

    def make(identity: Identity, **options) -> Device:
        device = Device(identity, tmp_path, **options)
        started.append(device)
        return device

    yield make
    for device in started:
        device.close()


def _never_connects(device: Device, seconds: float = 3.0) -> str:
    """Watch the session fail to connect for a while; return its last error."""
    wait_for(lambda: device.session.state.last_error, timeout=15, what="a connection error")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not device.session.state.connected and device.session.state.welcomed == 0
        time.sleep(0.1)
    return device.session.state.last_error


def _bridge_never_connects(server: ServerThread, caplog, *says: str, seconds: float = 2.0) -> None:
    """The bridge logs that it could not connect, in a line saying all of ``says``, and stays unconnected."""

    def logged() -> bool:
        return any(all(part in r.getMessage() for part in says) for r in caplog.records)

    wait_for(logged, timeout=20, what=f"a log line with {says!r}")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not server.running.mqtt.connected.is_set() and server.running.mqtt.stats.connects == 0
        time.sleep(0.1)


def test_agent_and_bridge_run_the_session_over_mqtts_with_per_device_accounts(cp_tls, tls_broker, devices, tmp_path):
    identity = _enroll(cp_tls, tmp_path, DEVICE)
    assert identity.mqtt_url == f"mqtts://127.0.0.1:{tls_broker.port}"  # --mqtt without its credentials
    assert identity.mqtt_username == identity.mqtt_client_id == DEVICE and identity.mqtt_password
    device = devices(identity)  # no mqtt_ca_file: the CA pinned at enrollment issued the broker's certificate

    wait_for(lambda: device.session.state.welcomed, timeout=20, what="hello answered by a Welcome over TLS")
    wait_for(lambda: cp_tls.is_online(DEVICE), timeout=20, what=f"{DEVICE} online over MQTT")
    wait_for(lambda: cp_tls.device(DEVICE).device_class, timeout=20, what="its facts to classify it")

    key = register_key(cp_tls, tmp_path)
    publish(cp_tls, key, tmp_path)
    deploy(cp_tls, DEVICE)
    wait_for(lambda: any(d.models for d in device.desired), timeout=20, what="the deployed desired state")

    assert device.send(agent_pb2.AgentMessage(telemetry=_batch(1, FIRST, device_id=DEVICE)))
    wait_for(lambda: [a.sequence for a in device.acks()] == [1], timeout=20, what="the telemetry batch acked")
    assert cp_tls.running.mqtt.stats.dropped == 0
    assert f"as {DEVICE} " in tls_broker.clients()  # Mosquitto: "New client connected from ... as dev-tls (...)"

    # The broker's certificate is for its own name only: its key cannot pass for the control plane.
    broker_cert = x509.load_pem_x509_certificate((tls_broker.certs / "server.crt").read_bytes())
    names = broker_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert TLS_SERVER_NAME not in names.get_values_for_type(x509.DNSName)


def test_a_broker_certificate_from_an_untrusted_ca_is_refused_with_a_clear_error(
    cp_tls, tls_broker, devices, tmp_path, caplog
):
    identity = _enroll(cp_tls, tmp_path, DEVICE)
    foreign = create_ca("someone else's CA", dt.datetime.now(dt.UTC))
    foreign_file = tmp_path / "foreign-ca.crt"
    foreign_file.write_bytes(foreign.cert_pem)

    # A device enrolled elsewhere (another pinned CA), and one given the wrong CA file: TLS fails, nothing else.
    elsewhere = devices(dataclasses.replace(identity, ca_pem=foreign.cert_pem))
    error = _never_connects(elsewhere)
    assert "failed: its certificate is not trusted (self-signed certificate in certificate chain)" in error
    assert "checked against the CA pinned at enrollment and the system's CAs" in error and "mqtt_ca_file" in error
    wrong_file = devices(identity, ca_file=foreign_file)
    assert f"checked against the mqtt_ca_file {foreign_file}" in _never_connects(wrong_file)
    assert f"as {DEVICE} " not in tls_broker.clients()  # neither got as far as an MQTT CONNECT
    wrong_file.close()
    elsewhere.close()

    # The right CA file alone works (positive control).
    right = devices(identity, ca_file=tls_broker.certs / "ca.crt")
    wait_for(lambda: right.session.state.welcomed, timeout=20, what="a Welcome with mqtt_ca_file set")
    right.close()

    # A control plane with another CA, or given the wrong --mqtt-ca, is refused likewise, and says why.
    caplog.set_level(logging.ERROR, logger="edgefleet.server.mqtt")
    # (Another control plane's CA has the same subject as this one's: OpenSSL reports a signature failure.)
    default_rule = "checked against the edgefleet CA and the system's CAs; give the CA that issued"
    wrong_ca = f"checked against the CA file {foreign_file}; is {foreign_file} the CA"
    for name, options, says in (
        ("other-cp", {}, default_rule),
        ("wrong-ca-cp", {"mqtt_ca_file": foreign_file}, wrong_ca),
    ):
        other = ServerThread(server_config(tmp_path / name, mqtt_url=tls_broker.cp_url, **options))
        try:
            _bridge_never_connects(other, caplog, "the broker's certificate is not trusted (", says)
        finally:
            other.stop()
    assert cp_tls.running.mqtt.connected.is_set()  # the real bridge kept its session throughout


def test_the_broker_ca_given_to_the_control_plane_is_handed_to_devices_at_join(private_ca_broker, devices, tmp_path):
    """A broker certificate from the operator's own CA: the server checks it with --mqtt-ca, and devices that join
    get that CA with their broker account, so they connect with no mqtt_ca_file of their own."""
    broker_ca = private_ca_broker.certs / "ca.crt"
    config = server_config(
        private_ca_broker.server_dir,
        mqtt_url=private_ca_broker.cp_url,
        mqtt_provision_devices=True,
        mqtt_ca_file=broker_ca,
        heartbeat_interval_seconds=5,
    )
    server = ServerThread(config)
    try:
        wait_for(lambda: server.running.mqtt.connected.is_set(), timeout=15, what="the bridge on --mqtt-ca")
        identity = _enroll(server, tmp_path, DEVICE)
        assert identity.mqtt_ca_pem == broker_ca.read_bytes()
        stored = load_identity(tmp_path / DEVICE)  # kept with the identity, read back at every start
        assert stored.mqtt_ca_pem == broker_ca.read_bytes() and stored.ca_pem != stored.mqtt_ca_pem

        device = devices(stored)
        wait_for(lambda: device.session.state.welcomed, timeout=20, what="a Welcome through the private-CA broker")
        wait_for(lambda: server.is_online(DEVICE), timeout=20, what=f"{DEVICE} online over MQTT")
        device.close()

        # Without it (a device enrolled before, or given another control plane's settings) the broker is refused.
        without = devices(dataclasses.replace(stored, mqtt_ca_pem=b""))
        assert "checked against the CA pinned at enrollment and the system's CAs" in _never_connects(without)
    finally:
        server.stop()


def test_plain_mqtt_to_the_tls_only_listener_fails(cp_tls, tls_broker, devices, tmp_path, caplog):
    identity = _enroll(cp_tls, tmp_path, DEVICE)
    plain = devices(identity, url=f"mqtt://127.0.0.1:{tls_broker.port}")
    error = _never_connects(plain)
    assert "closed the connection before answering (is it a TLS-only listener? then use mqtts://)" in error
    assert f"as {DEVICE} " not in tls_broker.clients()

    caplog.set_level(logging.WARNING, logger="edgefleet.server.mqtt")
    url = f"mqtt://{CP_USER}:{CP_PASSWORD}@127.0.0.1:{tls_broker.port}"
    other = ServerThread(server_config(tmp_path / "plain-cp", mqtt_url=url))
    try:
        _bridge_never_connects(other, caplog, "closed the connection before accepting it (a TLS-only listener?")
    finally:
        other.stop()


def test_a_broker_ca_file_that_cannot_be_used_stops_the_start_and_changes_nothing(tmp_path, capsys, monkeypatch):
    from edgefleet.cli import run

    monkeypatch.setenv("EDGEFLEET_CONFIG", str(tmp_path / "cli.toml"))
    not_pem = tmp_path / "not-a-cert.pem"
    not_pem.write_text("hello\n")
    cases = {
        tmp_path / "missing.pem": "cannot read the MQTT broker CA file {path}: No such file or directory",
        tmp_path: "cannot read the MQTT broker CA file {path}: Is a directory",
        not_pem: "the MQTT broker CA file {path} holds no PEM certificate",
    }
    url = "mqtts://edgefleet-controlplane:secret@127.0.0.1:1"
    for path, expected in cases.items():
        data_dir = tmp_path / "server-data"
        code = run(["server", "--data-dir", str(data_dir), "--mqtt", url, "--mqtt-ca", str(path)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, err
        assert err.startswith("error: invalid server option mqtt_ca_file: ") and expected.format(path=path) in err
        assert not data_dir.exists()

        agent_dir = tmp_path / "agent-data"
        config = tmp_path / "agent.toml"
        config.write_text(f'transport = "mqtt"\nmqtt_ca_file = "{path}"\n')
        code = run(["agent", "--config", str(config), "--data-dir", str(agent_dir)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0, err
        assert err.startswith(f"error: invalid agent config: mqtt_ca_file (from {config}): ")
        assert expected.format(path=path) in err
        assert not agent_dir.exists()

    # A CA file with a plain mqtt:// URL is a mistake, not a silent plain-text connection.
    ca = tmp_path / "ca.crt"
    ca.write_bytes(create_ca("ca", dt.datetime.now(dt.UTC)).cert_pem)
    code = run(["server", "--data-dir", str(tmp_path / "s"), "--mqtt", "mqtt://127.0.0.1:1", "--mqtt-ca", str(ca)])
    assert code == 2 and "mqtt_ca_file needs an mqtts:// mqtt_url" in capsys.readouterr().err
    with pytest.raises(AgentConfigError, match="is not mqtts://"):
        load_config(None, data_dir=tmp_path / "a", mqtt_url="mqtt://127.0.0.1:1", mqtt_ca_file=ca)
    identity = Identity(
        device_id=DEVICE,
        fleet="lab",
        device_endpoint="127.0.0.1:1",
        api_endpoint="127.0.0.1:1",
        tls_server_name="edgefleet-controlplane",
        heartbeat_interval_seconds=10,
        mqtt_url="mqtt://127.0.0.1:1",
    )
    with pytest.raises(AgentConfigError, match="is not mqtts://"):  # the URL handed over at join is plain
        MqttSession(identity, facts=lambda: None, ca_file=ca)
