"""End to end over MQTT: a real agent process whose session runs only through a real Mosquitto joins,
reports facts, installs a deployed build (artifacts by content hash over the device port), answers
an app, and its telemetry reaches the operator's latency query exactly once."""

from __future__ import annotations

import pytest

from protos.edgefleet.v1 import admin_pb2
from tests.integration.harness import wait_for
from tests.integration.shipping import LocalClient, deploy, publish, register_key
from tests.integration.test_mqtt_bridge import broker, cp_mqtt  # noqa: F401 - fixtures

AGENT_TOML = """\
transport = "mqtt"
heartbeat_interval_seconds = 1
telemetry_flush_seconds = 0.5
telemetry_partial_minutes = true
"""


def _requests(cp) -> int:
    stub, meta, channel = cp.admin()
    with channel:
        rows = stub.QueryLatency(
            admin_pb2.QueryLatencyRequest(model="tiny", since_seconds=3600), metadata=meta, timeout=10
        ).rows
    return sum(r.requests for r in rows)


@pytest.mark.timeout(180)
def test_an_agent_on_mqtt_alone_joins_installs_serves_and_reports(cp_mqtt, agents, tmp_path):  # noqa: F811
    cp = cp_mqtt
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML)
    agent = agents(
        "gw", "--config", str(config), "--labels", "site=lab", "--trust", f"{key}.pub",
        join=cp.join_string(), device_id="gw-mqtt",
    )  # fmt: skip
    wait_for(lambda: cp.is_online("gw-mqtt"), timeout=60, what="gw-mqtt online over MQTT")
    # Online comes from the retained presence; the class from the facts message, which may follow it.
    wait_for(lambda: cp.device("gw-mqtt").device_class == "default", timeout=30, what="gw-mqtt classified")
    assert cp.device("gw-mqtt").facts.labels["site"] == "lab"
    assert "MQTT session open as gw-mqtt" in agent.output()
    received_before = cp.running.mqtt.stats.received

    deploy(cp, "gw-mqtt", version=1)
    client = LocalClient(tmp_path / "gw")
    try:
        wait_for(lambda: client.serving_version() == 1, timeout=60, what="v1 serving")
        assert cp.running.artifacts.served >= 1  # the Welcome over MQTT announced the HTTPS artifact port
        for _ in range(25):
            assert client.infer()[0] == 1
    finally:
        client.close()
    wait_for(lambda: _requests(cp) >= 25, timeout=30, what="the app's requests in telemetry")
    assert cp.running.mqtt.stats.received > received_before  # status and telemetry came through the broker
    assert cp.running.mqtt.stats.dropped == 0


class RestartableBroker:
    """A private Mosquitto that can be stopped and started again on the same port."""

    def __init__(self, tmp_path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.conf = tmp_path / "restartable.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = (tmp_path / "restartable.log").open("ab")
        self.process = None
        self.start()

    def start(self) -> None:
        import socket
        import subprocess

        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(answers, timeout=10, what="mosquitto to listen")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.stop()
        self.log.close()


@pytest.mark.timeout(240)
def test_a_broker_restart_mid_stream_loses_no_telemetry_and_the_pending_deploy_completes(agents, tmp_path):
    from tests.integration.conftest import server_config
    from tests.integration.harness import ServerThread

    mqtt = RestartableBroker(tmp_path)
    cp = ServerThread(server_config(tmp_path / "server", mqtt_url=f"mqtt://127.0.0.1:{mqtt.port}"))
    client = None
    try:
        key = register_key(cp, tmp_path)
        publish(cp, key, tmp_path, version=1, scale=2.0)
        publish(cp, key, tmp_path, version=2, scale=3.0)
        config = tmp_path / "agent.toml"
        config.write_text(AGENT_TOML)
        agents("gw", "--config", str(config), "--trust", f"{key}.pub", join=cp.join_string(), device_id="gw-m")
        wait_for(lambda: cp.is_online("gw-m"), timeout=60, what="gw-m online over MQTT")
        deploy(cp, "gw-m", version=1)
        client = LocalClient(tmp_path / "gw")
        answered = 0  # every request the app got an answer to: each is counted once in telemetry

        def version() -> int | None:
            nonlocal answered
            served = client.serving_version()
            answered += served is not None
            return served

        def ask(n: int) -> None:
            nonlocal answered
            for _ in range(n):
                client.infer()
                answered += 1

        wait_for(lambda: version() == 1, timeout=60, what="v1 serving")
        ask(20)
        mqtt.stop()  # the broker goes away mid-stream; the device keeps serving and keeps counting
        ask(30)
        deploy(cp, "gw-m", version=2)  # pending: neither side can reach the broker now
        ask(10)
        mqtt.start()
        wait_for(lambda: version() == 2, timeout=90, what="the pending deploy to complete")
        ask(20)
        wait_for(
            lambda: _requests(cp) >= answered, timeout=60, what=f"every request in telemetry ({answered} answered)"
        )
        import time

        time.sleep(3)  # several flushes later: nothing lost, nothing counted twice
        assert _requests(cp) == answered
        assert cp.running.mqtt.stats.connects >= 2  # the bridge reconnected by itself
    finally:
        if client is not None:
            client.close()
        cp.stop()
        mqtt.close()
