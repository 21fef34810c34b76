"""MQTT ingest benchmark: telemetry points stored per second through Mosquitto, vs the broker's raw rate, vs gRPC.

What runs. A private Mosquitto (``mosquitto -c``, a free port on 127.0.0.1, anonymous, no persistence,
``max_queued_messages 100000``) and a control plane as its own process (``edgefleet server --mqtt
mqtt://127.0.0.1:<port>``, SQLite in a temp dir) start. N devices (default 100) enroll for real
(``agent.enroll.enroll``, one single-use join token each) in a few worker processes; each worker then
plays its devices in four phases, one after another, each started at one "go" from the parent:

(a) raw: every device is a paho-mqtt 2 client (MQTT 5) that publishes its batches, QoS 1, as fast as
    paho lets it (paho's default of 20 QoS 1 messages in flight per client), ``--raw-rounds`` times over
    (default 20: the broker is fast enough that one round is over too soon to time well), to
    ``bench-raw/<fleet>/<device>/up/telemetry``; one paho client in the parent, subscribed QoS 1 to
    ``bench-raw/#`` (as the bridge subscribes to ``edgefleet/v1/+/+/up/#``), counts what arrives. Nothing
    stores or answers: this is the broker's and paho's ceiling on this machine for these payloads.
(a2) ack floor: the devices run (b)'s windowed protocol, with (b)'s code (below: the same bytes, the
    same ``--window``, each ack releases the next batch), on ``bench-floor/<fleet>/<device>/up/telemetry``,
    without hello or presence. A bare responder process takes the server's place: one paho-mqtt 2 client
    set up as the bridge's (MQTT 5, QoS 1, ``loop_start`` network thread), subscribed QoS 1 to
    ``bench-floor/+/+/up/#``, which on paho's callback thread parses each payload as an ``AgentMessage``
    and publishes ``ControlMessage(telemetry_ack=TelemetryAck(boot_id, sequence))`` QoS 1 to the device's
    ``bench-floor/.../down/telemetry_ack``; nothing else (no event loop, no session, no store). As in
    (b), the broker moves two messages per batch and one Python paho client receives one and publishes
    one per batch: this is the most a control plane that acks each batch through paho can reach on this
    machine, before any hand-off to an event loop, any device or session check and any storing.
(b) MQTT ingest: the same clients subscribe to their ``down/#``, publish ``up/presence`` online and
    ``up/hello`` (again every 2 s until a Welcome), then publish the same bytes to
    ``edgefleet/v1/<fleet>/<device>/up/telemetry``, keeping at most ``--window`` batches unacked: each
    ``down/telemetry_ack`` (sent once the batch is stored) lets the next batch go. The bridge
    (``controlplane/mqtt_bridge.py``) parses, stores (``telemetry.ingest``) and acks each one.
(c) gRPC: the same devices open the mutual-TLS session stream (``AgentGateway.Session``, Hello then
    Welcome, as ``tests/integration/test_telemetry.py`` does), and write the same batches with the same
    window, counting ``telemetry_ack`` messages.

A telemetry point is one ``ModelMinute`` in a ``TelemetryBatch`` (one model's aggregate for one minute:
request count, latency histogram, confidence). Each batch holds ``--minutes`` minutes (default 5) of
``--models`` models (default 4): 20 points, 10 requests each (10 latency samples in the histogram). Each
device sends ``--batches`` batches (default 20) per phase: 100 x 20 x 20 = 40,000 points per phase.
Payloads: (a), (a2) and (b) publish byte-identical ``AgentMessage(telemetry=...)`` payloads; (c) sends the
same batches with another boot id and minutes shifted by the phase (same sizes), so that each phase
writes new (device, minute, model) rows in the store instead of merging into (b)'s rows.

Printed, a table on stdout then one JSON line (also written to ``--json-out``):

- points/s for each phase: points / (last ack, or last message received for (a), minus "go");
- MQTT ingest as a % of raw (goal >= 50%: met / not met), and gRPC as a % of raw; the ack floor as a %
  of raw (what acking each batch through one paho client costs by itself) and MQTT ingest as a % of the
  ack floor (how close (b) comes to what any such control plane could do here);
- control-plane CPU (utime+stime of the server process, all threads, from /proc) per 1,000 points
  for (b) and (c), the responder's for (a2), and the broker's CPU over each phase;
- batch ack latency p50 / p95 for (a2), (b) and (c): send to ack, so it includes queueing behind the window;
- the acked-once check of (a2): the responder received every batch once and published one ack for each,
  every device got exactly its acks (none for a batch not in flight);
- the stored check: ``Admin.QueryLatency`` request totals per model, read before and after (b) and (c),
  must grow by exactly points x 10 (every point stored once), with no duplicate acks;
- control-plane RSS at idle and at the end, worker CPU, server log lines at --log-level warning.

The machine is small and shared: the broker, the control plane, the agent workers, the raw subscriber
and the floor's responder compete for the same cores, so the numbers are what this machine did, not a
capacity claim.

Rerun (from the repository root):

    .venv/bin/python scripts/bench/mqtt_ingest.py                 # 100 devices, 20 batches each per phase
    .venv/bin/python scripts/bench/mqtt_ingest.py --quick         # 20 devices, 10 batches each
    .venv/bin/python scripts/bench/mqtt_ingest.py --devices 200 --batches 50 --json-out out.json

Exit status: 0 when every phase completed, every (a2) batch was acked once and every point was stored
exactly once; 1 when a phase fell short (or the totals do not match); 2 if the set-up failed; 130 on
Ctrl-C. The broker, the server, the responder and the workers are stopped and the temp dir removed on
every exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchkit import (
    BENCH_REQUESTS_PER_POINT,
    STOP_TIMEOUT_SECONDS,
    BenchError,
    ServerProcess,
    WarningCounter,
    WorkerPool,
    bench_model_names,
    cpu_model,
    cpu_seconds,
    interrupt_on_sigterm,
    log_lines,
    mib,
    percentile,
    print_result_line,
    print_rows,
    rss_bytes,
    say,
    split,
    start_server,
    stop_process,
    tail,
    telemetry_batch,
    wait_or_cancel,
)

FLEET = "bench"
RAW_PREFIX = "bench-raw"
FLOOR_PREFIX = "bench-floor"
BENCH_PREFIXES = {"raw": RAW_PREFIX, "floor": FLOOR_PREFIX}  # the MQTT phases outside the bridge's layout
BOOT_IDS = {"mqtt": "boot-mqtt", "grpc": "boot-grpc"}  # same length: same payload sizes
PHASE_OFFSET = {"raw": 0, "mqtt": 0, "grpc": 1}  # raw publishes (b)'s bytes
REQUESTS_PER_POINT = BENCH_REQUESTS_PER_POINT
BROKER_READY_TIMEOUT_SECONDS = 15.0
WORKER_READY_TIMEOUT_SECONDS = 60.0
RPC_TIMEOUT_SECONDS = 30.0
WORKER_REPLY_TIMEOUT_SECONDS = 60.0
HELLO_RETRY_SECONDS = 2.0
PHASES = ("raw", "floor", "mqtt", "grpc")
RESPONDER_READY_TIMEOUT_SECONDS = 60.0


# --- payloads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What each device sends per phase: ``batches`` batches of ``minutes`` minutes x ``models`` models."""

    batches: int
    minutes: int
    models: int
    base_epoch: int  # the start of the minute the newest point is before, epoch seconds

    @property
    def points_per_batch(self) -> int:
        return self.minutes * self.models

    @property
    def minutes_back(self) -> int:
        """How far back the oldest point of any phase lies, in minutes."""
        return (max(PHASE_OFFSET.values()) + 1) * self.batches * self.minutes + 1


def make_batch(shape: Shape, device_id: str, phase: str, sequence: int):
    """Batch ``sequence`` (1-based) of ``device_id`` for ``phase``: each point in its own (minute, model) row."""
    first = PHASE_OFFSET[phase] * shape.batches * shape.minutes + (sequence - 1) * shape.minutes
    minutes = [dt.datetime.fromtimestamp(shape.base_epoch - 60 * (first + j + 1), dt.UTC) for j in range(shape.minutes)]
    return telemetry_batch(device_id, BOOT_IDS["mqtt" if phase == "raw" else phase], sequence, minutes, shape.models)


def make_messages(shape: Shape, device_id: str, phase: str) -> list:
    from protos.edgefleet.v1 import agent_pb2

    return [
        agent_pb2.AgentMessage(telemetry=make_batch(shape, device_id, phase, s)) for s in range(1, shape.batches + 1)
    ]


# --- worker process: its share of the devices, in every phase --------------------------


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    join_strings: tuple[str, ...]
    first_device: int
    data_root: str
    broker_port: int
    shape: Shape
    window: int
    raw_rounds: int
    phase_timeout_seconds: float


def device_root(phase: str, device_id: str) -> str:
    """The topic root of ``device_id`` in an MQTT phase (``<root>/up/<kind>``, ``<root>/down/<kind>``): the
    bridge's layout (``protos.mqtt``) for (b); the same levels under a bench prefix, out of the bridge's
    subscription, for (a) and (a2)."""
    from protos import mqtt

    if phase == "mqtt":
        return mqtt.device_root(FLEET, device_id)
    return f"{BENCH_PREFIXES[phase]}/{FLEET}/{device_id}"


class MqttDevice:
    """One device's paho client. Raw: publish everything. Floor and ingest: a window of unacked batches, each
    ack releasing the next; ingest says hello first (and keeps a presence), the floor's responder needs none."""

    def __init__(self, device_id: str, port: int, payloads: list[bytes], window: int, *, phase: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from protos import mqtt

        self.device_id, self.payloads, self.window = device_id, payloads, window
        self.windowed, self.session = phase != "raw", phase == "mqtt"
        self.lock = threading.Lock()
        self.connected, self.subscribed = threading.Event(), threading.Event()
        self.welcomed, self.done = threading.Event(), threading.Event()
        self.next_index = 0
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.acked = self.duplicates = self.published = self.stray_acks = 0
        self.first_send = self.last_ack = 0.0
        self.errors: list[str] = []
        self.root = device_root(phase, device_id)
        self.topic = f"{self.root}/up/telemetry"
        self.ack_topic = f"{self.root}/down/telemetry_ack" if self.windowed else ""
        self.welcome_topic = f"{self.root}/down/welcome" if self.session else ""
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{time.monotonic_ns()}", protocol=paho.MQTTv5
        )
        client.max_queued_messages_set(0)  # unlimited: raw publishes everything at once
        if self.session:
            client.will_set(mqtt.up(FLEET, device_id, "presence"), mqtt.PRESENCE_OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = lambda *_: self.subscribed.set()
        self.client = client
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.errors.append(f"connect refused: {reason_code}")
            return
        if self.windowed:  # its own down subtree, as an agent subscribes
            client.subscribe(f"{self.root}/down/#", qos=1)
        self.connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Only paho's thread calls this, holding paho's own locks: taking self.lock here could deadlock
        # with a thread that holds self.lock and waits in publish() for paho's locks.
        self.published += 1
        if not self.windowed and self.published >= len(self.payloads):
            self.last_ack = time.monotonic()
            self.done.set()

    def _on_message(self, client, userdata, message) -> None:
        try:
            self._receive(message)
        except Exception as exc:  # noqa: BLE001 - counted; paho's thread must not die
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _receive(self, message) -> None:
        from protos.edgefleet.v1 import agent_pb2

        if message.topic == self.welcome_topic:
            self.welcomed.set()
            return
        if message.topic != self.ack_topic:
            return
        ack = agent_pb2.ControlMessage.FromString(message.payload).telemetry_ack
        now = time.monotonic()
        with self.lock:
            sent = self.sent_at.pop(ack.sequence, None)
            if sent is None:
                self.stray_acks += 1
                self.errors.append(f"ack for a batch not in flight: {ack.sequence}")
                return
            self.latencies.append(now - sent)
            self.acked += 1
            self.duplicates += ack.duplicate
            self.last_ack = now
            if self.acked == len(self.payloads):
                self.done.set()
            index = self._take_next()
        if index is not None:
            self.client.publish(self.topic, self.payloads[index], qos=1)  # outside self.lock

    def _take_next(self) -> int | None:
        """The index of the next batch to send, marked in flight; None when all are sent (self.lock held)."""
        if self.next_index >= len(self.payloads):
            return None
        index = self.next_index
        self.next_index += 1
        self.sent_at[index + 1] = time.monotonic()  # sequences are 1-based
        return index

    def hello(self) -> None:
        from protos import mqtt
        from protos.edgefleet.v1 import agent_pb2

        self.client.publish(mqtt.up(FLEET, self.device_id, "presence"), mqtt.PRESENCE_ONLINE, qos=1, retain=True)
        hello = agent_pb2.Hello(device_id=self.device_id, boot_id=BOOT_IDS["mqtt"], protocol_version=1)
        self.client.publish(
            mqtt.up(FLEET, self.device_id, "hello"), agent_pb2.AgentMessage(hello=hello).SerializeToString(), qos=1
        )

    def start(self) -> None:
        """Floor and ingest: publish the first window of batches; each ack then publishes the next."""
        self.first_send = time.monotonic()
        for _ in range(self.window):
            with self.lock:
                index = self._take_next()
            if index is None:
                break
            self.client.publish(self.topic, self.payloads[index], qos=1)

    def close(self) -> None:
        from protos import mqtt

        if self.session:
            with contextlib.suppress(Exception):
                info = self.client.publish(
                    mqtt.up(FLEET, self.device_id, "presence"), mqtt.PRESENCE_OFFLINE, qos=1, retain=True
                )
                info.wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


class GrpcDevice:
    """One device's session stream: Hello, Welcome, then a window of unacked batches."""

    def __init__(self, identity, messages: list, window: int) -> None:
        self.identity, self.messages, self.window = identity, messages, window
        self.welcomed = asyncio.Event()
        self.go = asyncio.Event()
        self.done = asyncio.Event()
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.acked = self.duplicates = 0
        self.first_send = self.last_ack = 0.0
        self.errors: list[str] = []
        self.task: asyncio.Task | None = None
        self.finish = asyncio.Event()

    async def run(self) -> None:
        from agent.channel import device_channel
        from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc

        try:
            async with device_channel(self.identity) as channel:
                call = agent_pb2_grpc.AgentGatewayStub(channel).Session()
                hello = agent_pb2.Hello(device_id=self.identity.device_id, boot_id=BOOT_IDS["grpc"], protocol_version=1)
                await call.write(agent_pb2.AgentMessage(hello=hello))
                credit = asyncio.Semaphore(self.window)

                async def read() -> None:
                    async for message in call:
                        kind = message.WhichOneof("body")
                        if kind == "welcome":
                            self.welcomed.set()
                        elif kind == "telemetry_ack":
                            now = time.monotonic()
                            sent = self.sent_at.pop(message.telemetry_ack.sequence, None)
                            if sent is None:
                                self.errors.append(f"ack for a batch not in flight: {message.telemetry_ack.sequence}")
                                continue
                            self.latencies.append(now - sent)
                            self.acked += 1
                            self.duplicates += message.telemetry_ack.duplicate
                            self.last_ack = now
                            credit.release()
                            if self.acked == len(self.messages):
                                self.done.set()

                reader = asyncio.create_task(read())
                await self.go.wait()
                self.first_send = time.monotonic()
                for message in self.messages:
                    await credit.acquire()
                    self.sent_at[message.telemetry.sequence] = time.monotonic()
                    await call.write(message)
                await self.finish.wait()
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the phase's result
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.done.set()


async def _worker(
    spec: WorkerSpec, conn: multiprocessing.connection.Connection, inbox: asyncio.Queue, counter: WarningCounter
) -> None:
    """A worker process's devices (run by benchkit.worker_entry): ready once every payload is built; on
    "enroll" enroll them (enrolled); then per ("phase", name) get ready (prepared) and on "go" send
    (done), until "stop" (stopped)."""
    from agent.enroll import enroll
    from agent.facts import collect_facts
    from protos.join import parse_join_string

    data_root = Path(spec.data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    facts = await asyncio.to_thread(collect_facts, data_dir=data_root, labels={"bench": "mqtt-ingest"})
    device_ids = [f"bench-{spec.first_device + i:04d}" for i in range(len(spec.join_strings))]
    # Every payload is built before any phase starts, so building them is not measured.
    payloads = {phase: {d: make_messages(spec.shape, d, phase) for d in device_ids} for phase in ("mqtt", "grpc")}
    raw_bytes = {d: [m.SerializeToString() for m in payloads["mqtt"][d]] for d in device_ids}
    conn.send(("ready", spec.index))

    identities = {}
    errors: list[str] = []
    semaphore = asyncio.Semaphore(10)

    async def join(device_id: str, join_string: str) -> None:
        async with semaphore:
            try:
                identities[device_id] = await enroll(
                    parse_join_string(join_string),
                    data_dir=data_root / device_id,
                    device_id=device_id,
                    facts=facts,
                    timeout_seconds=RPC_TIMEOUT_SECONDS,
                )
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                errors.append(f"{device_id}: {type(exc).__name__}: {exc}")

    command = await inbox.get()
    if command[0] != "enroll":
        return
    await asyncio.gather(*(join(d, js) for d, js in zip(device_ids, spec.join_strings, strict=True)))
    conn.send(("enrolled", spec.index, len(identities), errors[:5], len(errors)))
    enrolled = [d for d in device_ids if d in identities]

    while True:
        command = await inbox.get()
        if command[0] == "stop":
            break
        phase = command[1]
        if phase in ("raw", "floor", "mqtt"):
            result = await _mqtt_phase(spec, conn, inbox, phase, enrolled, raw_bytes)
        else:
            result = await _grpc_phase(spec, conn, inbox, enrolled, identities, payloads["grpc"])
        result["warnings"] = counter.count
        result["warning_samples"] = list(counter.samples)
        conn.send(("done", spec.index, result))
    conn.send(("stopped", spec.index))


def _summary(devices, phase: str, points_per_batch: int, cpu_before: float, expected: int) -> dict:
    acked = sum(d.published if phase == "raw" else d.acked for d in devices)
    return {
        "devices": len(devices),
        "batches_expected": expected,
        "batches_acked": acked,
        "points_acked": acked * points_per_batch,
        "duplicates": sum(getattr(d, "duplicates", 0) for d in devices),
        "stray_acks": sum(getattr(d, "stray_acks", 0) for d in devices),
        "first_send": min((d.first_send for d in devices if d.first_send), default=0.0),
        "last_ack": max((d.last_ack for d in devices), default=0.0),
        "latencies": [x for d in devices for x in getattr(d, "latencies", [])],
        "errors": [e for d in devices for e in d.errors][:5],
        "error_count": sum(len(d.errors) for d in devices),
        "worker_cpu_seconds": cpu_seconds() - cpu_before,
        "worker_rss_bytes": rss_bytes(),
    }


async def _mqtt_phase(spec, conn, inbox, phase: str, device_ids: list[str], raw_bytes: dict) -> dict:
    """Raw, floor or MQTT ingest: the same bytes; floor and ingest through the same windowed MqttDevice."""
    windowed, ingest = phase != "raw", phase == "mqtt"
    rounds = 1 if windowed else spec.raw_rounds  # raw: the same bytes, several times over, for a longer window
    devices = [
        MqttDevice(d, spec.broker_port, raw_bytes[d] * rounds, spec.window, phase=phase) for d in device_ids
    ]  # connects in the background
    try:
        deadline = time.monotonic() + spec.phase_timeout_seconds
        joined = [d.subscribed if windowed else d.connected for d in devices]  # windowed: subscribed for acks
        while not all(e.is_set() for e in joined) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the SUBACKs land
        if ingest:  # hello until a Welcome: the bridge may not be subscribed yet
            while not all(d.welcomed.is_set() for d in devices) and time.monotonic() < deadline:
                for d in devices:
                    if not d.welcomed.is_set():
                        d.hello()
                waited = time.monotonic() + HELLO_RETRY_SECONDS
                while time.monotonic() < waited and not all(d.welcomed.is_set() for d in devices):
                    await asyncio.sleep(0.05)
        ready = sum(1 for d, e in zip(devices, joined, strict=True) if (d.welcomed if ingest else e).is_set())
        conn.send(("prepared", spec.index, ready))
        command = await inbox.get()
        if command[0] != "go":
            return _summary(devices, phase, spec.shape.points_per_batch, cpu_seconds(), 0)
        cpu_before = cpu_seconds()
        if windowed:
            for d in devices:
                d.start()
        else:  # round-robin, so every device is publishing from the start
            for d in devices:
                d.first_send = time.monotonic()
            for i in range(spec.shape.batches * rounds):
                for d in devices:
                    d.client.publish(d.topic, d.payloads[i], qos=1)
        deadline = time.monotonic() + spec.phase_timeout_seconds
        while not all(d.done.is_set() for d in devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        expected = len(devices) * spec.shape.batches * rounds
        return _summary(devices, phase, spec.shape.points_per_batch, cpu_before, expected)
    finally:
        for d in devices:
            await asyncio.to_thread(d.close)


async def _grpc_phase(spec, conn, inbox, device_ids: list[str], identities: dict, messages: dict) -> dict:
    devices = [GrpcDevice(identities[d], messages[d], spec.window) for d in device_ids]
    for d in devices:
        d.task = asyncio.create_task(d.run())
    try:
        deadline = time.monotonic() + spec.phase_timeout_seconds
        while not all(d.welcomed.is_set() or d.errors for d in devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        conn.send(("prepared", spec.index, sum(1 for d in devices if d.welcomed.is_set())))
        command = await inbox.get()
        if command[0] != "go":
            return _summary(devices, "grpc", spec.shape.points_per_batch, cpu_seconds(), 0)
        cpu_before = cpu_seconds()
        for d in devices:
            d.go.set()
        deadline = time.monotonic() + spec.phase_timeout_seconds
        while not all(d.done.is_set() for d in devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return _summary(devices, "grpc", spec.shape.points_per_batch, cpu_before, len(devices) * spec.shape.batches)
    finally:
        for d in devices:
            d.go.set()
            d.finish.set()
        await wait_or_cancel([d.task for d in devices if d.task is not None])


# --- the broker, the control plane, the raw subscriber, the floor's responder ----------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Broker:
    process: subprocess.Popen
    port: int
    log_path: Path


def start_broker(tmp: Path) -> Broker:
    executable = shutil.which("mosquitto")
    if executable is None:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf, log_path = tmp / "mosquitto.conf", tmp / "mosquitto.log"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([executable, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + BROKER_READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"mosquitto exited with {process.returncode}: {tail(log_path)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return Broker(process, port, log_path)
        time.sleep(0.05)
    process.kill()
    raise BenchError(f"mosquitto did not listen within {BROKER_READY_TIMEOUT_SECONDS:.0f} s")


class RawSubscriber:
    """One paho client subscribed QoS 1 to ``bench-raw/#``, counting messages (as the bridge's one client)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.received = 0
        self.last = 0.0
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-sub", protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{RAW_PREFIX}/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise BenchError("the raw subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        self.received += 1
        self.last = time.monotonic()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _respond(port: int, conn: multiprocessing.connection.Connection) -> None:
    """The floor's responder process (spawned): one paho client set up as the bridge's (MQTT 5, QoS 1,
    paho's network thread from ``loop_start``), subscribed to ``bench-floor/+/+/up/#``. For each message,
    on paho's callback thread: parse the AgentMessage, publish the TelemetryAck of its batch (boot id,
    sequence) QoS 1 to that device's ``down/telemetry_ack``. Nothing else: no event loop, no store, no
    session. Sends ``("subscribed",)`` once the subscription is granted; on ``("stop",)`` (or the parent
    gone) leaves the broker and answers ``("stopped", counts, error samples)``."""
    import signal

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from protos.edgefleet.v1 import agent_pb2, telemetry_pb2

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops us
    counts = {"received": 0, "acks_published": 0, "errors": 0}
    errors: list[str] = []
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            errors.append(f"connect refused: {reason_code}")
            return
        client.subscribe(f"{FLOOR_PREFIX}/+/+/up/#", qos=1)  # as the bridge's edgefleet/v1/+/+/up/#

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        if any(code.is_failure for code in reason_codes):
            errors.append(f"subscription refused: {reason_codes}")
            return
        subscribed.set()

    def on_message(client, userdata, message) -> None:
        counts["received"] += 1
        try:
            prefix, fleet, device_id, _, _ = message.topic.split("/")
            batch = agent_pb2.AgentMessage.FromString(message.payload).telemetry
            ack = telemetry_pb2.TelemetryAck(boot_id=batch.boot_id, sequence=batch.sequence)
            payload = agent_pb2.ControlMessage(telemetry_ack=ack).SerializeToString()
            client.publish(f"{prefix}/{fleet}/{device_id}/down/telemetry_ack", payload, qos=1)
            counts["acks_published"] += 1
        except Exception as exc:  # noqa: BLE001 - counted; paho's thread must not die
            counts["errors"] += 1
            if len(errors) < 5:
                errors.append(f"{message.topic}: {type(exc).__name__}: {exc}")

    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-floor-responder", protocol=paho.MQTTv5, reconnect_on_failure=False
    )
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        deadline = time.monotonic() + RESPONDER_READY_TIMEOUT_SECONDS
        while not subscribed.wait(0.05) and not errors and time.monotonic() < deadline:
            pass
        conn.send(("subscribed",) if subscribed.is_set() else ("error", errors[:1] or ["no SUBACK"]))
        with contextlib.suppress(EOFError):
            while conn.recv()[0] != "stop":
                pass
        client.disconnect()
        client.loop_stop()
        with contextlib.suppress(OSError):  # the parent may be gone
            conn.send(("stopped", counts, errors[:5]))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", [f"{type(exc).__name__}: {exc}"]))
        raise


class FloorResponder:
    """The floor's responder (``_respond``) in a process of its own, so its CPU is read from /proc like the
    server's."""

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process = context.Process(target=_respond, args=(port, child_end), name="bench-floor-responder")
        self.process.start()
        child_end.close()
        self.pid = self.process.pid
        try:
            reply = self._reply(RESPONDER_READY_TIMEOUT_SECONDS + 10.0)
            if reply[0] != "subscribed":
                raise BenchError(f"the floor's responder could not subscribe: {reply[1]}")
        except BaseException:
            self.close()
            raise

    def _reply(self, timeout_seconds: float) -> tuple:
        if not self.conn.poll(timeout_seconds):
            raise BenchError(f"the floor's responder did not answer within {timeout_seconds:.0f} s")
        try:
            return self.conn.recv()
        except EOFError as exc:
            raise BenchError(f"the floor's responder exited with {self.process.exitcode}") from exc

    def stop(self) -> tuple[dict, list[str]]:
        """Stop it: (its counts: received, acks_published, errors; the first few errors). Raises BenchError."""
        self.conn.send(("stop",))
        reply = self._reply(STOP_TIMEOUT_SECONDS)
        if reply[0] != "stopped":
            raise BenchError(f"the floor's responder failed: {reply[1]}")
        return reply[1], reply[2]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(timeout=STOP_TIMEOUT_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=STOP_TIMEOUT_SECONDS)
        self.conn.close()


# --- the operator API ---------------------------------------------------------------


def admin_call(server: ServerProcess, method: str, request):
    import grpc

    from controlplane.cli.connection import Connection, admin

    connection = Connection(
        server=f"127.0.0.1:{server.api_port}",
        token=(server.data_dir / "admin.token").read_text().strip(),
        ca_pem=(server.data_dir / "ca.crt").read_bytes(),
    )
    try:
        with admin(connection) as (stub, metadata):
            return getattr(stub, method)(request, metadata=metadata, timeout=RPC_TIMEOUT_SECONDS)
    except grpc.RpcError as exc:
        raise BenchError(f"{method} failed: {exc.code().name}: {exc.details()}") from exc


def create_join_tokens(server: ServerProcess, count: int) -> list[str]:
    from protos.edgefleet.v1 import admin_pb2

    return [
        admin_call(server, "CreateJoinToken", admin_pb2.CreateJoinTokenRequest(fleet=FLEET)).join_string
        for _ in range(count)
    ]


def stored_requests(server: ServerProcess, shape: Shape) -> int:
    """Requests stored for the bench models (all devices, the whole range of minutes), per QueryLatency."""
    from protos.edgefleet.v1 import admin_pb2

    since = int(time.time()) - shape.base_epoch + 60 * (shape.minutes_back + 2)
    names = set(bench_model_names(shape.models))
    response = admin_call(server, "QueryLatency", admin_pb2.QueryLatencyRequest(since_seconds=since))
    return sum(row.requests for row in response.rows if row.key.get("model") in names)


# --- the parent: orchestrate, measure, report ------------------------------------------


def run_phase(
    phase: str,
    args: argparse.Namespace,
    workers: WorkerPool,
    server: ServerProcess,
    broker: Broker,
    shape: Shape,
    say: Callable[[str], None],
) -> dict:
    subscriber = RawSubscriber(broker.port) if phase == "raw" else None
    responder = FloorResponder(broker.port) if phase == "floor" else None  # subscribed before any device sends
    responded: dict = {}
    responder_errors: list[str] = []
    try:
        workers.send_all(("phase", phase))
        prepared = workers.collect("prepared", args.phase_timeout + WORKER_REPLY_TIMEOUT_SECONDS)
        ready = sum(r[2] for r in prepared)
        stored_before = stored_requests(server, shape) if phase in ("mqtt", "grpc") else 0
        say(f"{phase}: {ready}/{args.devices} devices ready; go")
        server_cpu, broker_cpu = cpu_seconds(server.pid), cpu_seconds(broker.process.pid)
        parent_cpu = cpu_seconds()
        responder_cpu = cpu_seconds(responder.pid) if responder is not None else 0.0
        t_go = time.monotonic()
        workers.send_all(("go",))
        results = [r[2] for r in workers.collect("done", args.phase_timeout + WORKER_REPLY_TIMEOUT_SECONDS)]
        expected = args.devices * args.batches * (args.raw_rounds if phase == "raw" else 1)
        if subscriber is not None:  # publishers are done once PUBACKed; the subscriber may still be receiving
            deadline = time.monotonic() + args.phase_timeout
            while subscriber.received < expected and time.monotonic() < deadline:
                time.sleep(0.02)
        server_cpu = cpu_seconds(server.pid) - server_cpu
        broker_cpu = cpu_seconds(broker.process.pid) - broker_cpu
        parent_cpu = cpu_seconds() - parent_cpu
        if responder is not None:
            responder_cpu = cpu_seconds(responder.pid) - responder_cpu
            responded, responder_errors = responder.stop()
    finally:
        if subscriber is not None:
            subscriber.close()
        if responder is not None:
            responder.close()
    if subscriber is not None:
        batches, t_end = subscriber.received, subscriber.last
    else:
        batches, t_end = sum(r["batches_acked"] for r in results), max(r["last_ack"] for r in results)
    elapsed = max(t_end - t_go, 1e-9)
    points = batches * shape.points_per_batch
    latencies = [x for r in results for x in r["latencies"]]
    out = {
        "ready_devices": ready,
        "batches_expected": expected,
        "batches": batches,
        "points": points,
        "seconds": elapsed,
        "points_per_second": points / elapsed if batches else 0.0,
        "batches_per_second": batches / elapsed if batches else 0.0,
        "server_cpu_seconds": server_cpu,
        "server_cpu_seconds_per_1000_points": 1000.0 * server_cpu / points if points else None,
        "server_cpu_percent": 100.0 * server_cpu / elapsed,
        "broker_cpu_seconds": broker_cpu,
        "worker_cpu_seconds": sum(r["worker_cpu_seconds"] for r in results),
        "worker_rss_bytes": [r["worker_rss_bytes"] for r in results],
        "duplicates": sum(r["duplicates"] for r in results),
        "stray_acks": sum(r["stray_acks"] for r in results),
        "errors": sum(r["error_count"] for r in results),
        "error_samples": [e for r in results for e in r["errors"]][:5],
        "warnings": sum(r["warnings"] for r in results),
        "warning_samples": [w for r in results for w in r["warning_samples"]][:5],
        "complete": batches == expected and ready == args.devices,
    }
    if subscriber is not None:
        out["publishers_acked"] = sum(r["batches_acked"] for r in results)
        out["subscriber_cpu_seconds"] = parent_cpu
    else:
        out["ack_latency_p50_ms"] = 1000 * percentile(latencies, 0.5)
        out["ack_latency_p95_ms"] = 1000 * percentile(latencies, 0.95)
        out["ack_latency_max_ms"] = 1000 * max(latencies, default=0.0)
    if responder is not None:
        out["responder_cpu_seconds"] = responder_cpu
        out["responder_cpu_seconds_per_1000_points"] = 1000.0 * responder_cpu / points if points else None
        out["responder_cpu_percent"] = 100.0 * responder_cpu / elapsed
        out["responder_received"] = responded["received"]
        out["responder_acks_published"] = responded["acks_published"]
        out["responder_errors"] = responded["errors"]
        out["error_samples"] = (out["error_samples"] + responder_errors)[:5]
        out["acked_once"] = (
            responded["received"] == responded["acks_published"] == batches == expected and not out["stray_acks"]
        )
    if phase in ("mqtt", "grpc"):
        stored = stored_requests(server, shape) - stored_before
        out["stored_requests"] = stored
        out["stored_points"] = stored // REQUESTS_PER_POINT
        out["stored_once"] = stored == expected * shape.points_per_batch * REQUESTS_PER_POINT and not out["duplicates"]
    answering = f"responder CPU {responder_cpu:.1f} s" if responder is not None else f"server CPU {server_cpu:.1f} s"
    say(
        f"{phase}: {points:,} points in {elapsed:.2f} s = {out['points_per_second']:,.0f} points/s; "
        f"{answering}, broker CPU {broker_cpu:.1f} s"
    )
    return out


def run(args: argparse.Namespace, say: Callable[[str], None], cleanup: list[Callable[[], None]]) -> dict:
    base_epoch = int(time.time()) // 60 * 60
    shape = Shape(batches=args.batches, minutes=args.minutes, models=args.models, base_epoch=base_epoch)
    if shape.minutes_back * 60 > 29 * 86400:
        raise BenchError("--batches x --minutes reaches back more than 29 days (QueryLatency looks back 30 at most)")
    sample = make_messages(Shape(1, args.minutes, args.models, base_epoch), "bench-0000", "mqtt")[0]
    result: dict = {
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version()},
        "params": {
            "devices": args.devices, "workers": args.workers, "batches": args.batches,
            "minutes": args.minutes, "models": args.models, "window": args.window, "raw_rounds": args.raw_rounds,
            "points_per_batch": shape.points_per_batch, "requests_per_point": REQUESTS_PER_POINT,
            "payload_bytes": sample.ByteSize(),
            "points_per_phase": args.devices * args.batches * shape.points_per_batch,
        },
    }  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-bench-mqtt-"))
    cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    broker = start_broker(tmp)
    cleanup.append(lambda: stop_process(broker.process))
    server = start_server(
        tmp,
        "--mqtt",
        f"mqtt://127.0.0.1:{broker.port}",
        # Devices here send no heartbeats: a long interval keeps their sessions open between phases.
        heartbeat_seconds=600,
    )
    workers: WorkerPool | None = None

    def stop_server() -> None:
        result["server_exit_code"] = stop_process(server.process)

    cleanup.append(stop_server)
    say(
        f"mosquitto on {broker.port}; control plane pid {server.pid}: "
        f"api {server.api_port}, devices {server.device_port}"
    )
    join_strings = create_join_tokens(server, args.devices)
    time.sleep(1.0)
    result["server_idle_rss_bytes"] = rss_bytes(server.pid)
    specs = [
        WorkerSpec(
            index=i, join_strings=chunk, first_device=first, data_root=str(tmp / f"agents-{i}"),
            broker_port=broker.port, shape=shape, window=args.window, raw_rounds=args.raw_rounds,
            phase_timeout_seconds=args.phase_timeout,
        )
        for i, (first, chunk) in enumerate(split(join_strings, args.workers))
    ]  # fmt: skip
    workers = WorkerPool(_worker, specs)
    cleanup.append(workers.close)
    workers.collect("ready", WORKER_READY_TIMEOUT_SECONDS + 60.0)
    workers.send_all(("enroll",))
    enrolled = workers.collect("enrolled", args.phase_timeout + WORKER_REPLY_TIMEOUT_SECONDS)
    result["enrolled"] = sum(r[2] for r in enrolled)
    result["enroll_errors"] = [e for r in enrolled for e in r[3]][:5]
    say(
        f"{result['enrolled']}/{args.devices} devices enrolled; "
        f"{result['params']['points_per_phase']:,} points per phase"
    )
    if result["enrolled"] != args.devices:
        raise BenchError(f"only {result['enrolled']} of {args.devices} devices enrolled: {result['enroll_errors']}")
    for phase in PHASES:
        result[phase] = run_phase(phase, args, workers, server, broker, shape, say)
    raw, floor = result["raw"]["points_per_second"], result["floor"]["points_per_second"]
    result["mqtt_vs_raw"] = result["mqtt"]["points_per_second"] / raw if raw else None
    result["grpc_vs_raw"] = result["grpc"]["points_per_second"] / raw if raw else None
    result["floor_vs_raw"] = floor / raw if raw else None
    result["mqtt_vs_floor"] = result["mqtt"]["points_per_second"] / floor if floor else None
    result["goal_met"] = result["mqtt_vs_raw"] is not None and result["mqtt_vs_raw"] >= 0.5
    result["server_end_rss_bytes"] = rss_bytes(server.pid)
    workers.send_all(("stop",))
    with contextlib.suppress(BenchError):
        workers.collect("stopped", STOP_TIMEOUT_SECONDS + WORKER_REPLY_TIMEOUT_SECONDS)
    stop_server()
    result["server_log"] = {"lines": len(log_lines(server.log_path)), "samples": log_lines(server.log_path)[:10]}
    return result


def print_table(result: dict) -> None:
    m, p = result["machine"], result["params"]
    raw, fl, mq, gr = result["raw"], result["floor"], result["mqtt"], result["grpc"]

    def rate(r: dict) -> str:
        return (
            f"{r['points_per_second']:,.0f} points/s ({r['batches_per_second']:,.0f} batches/s; "
            f"{r['points']:,} points in {r['seconds']:.2f} s)" + ("" if r["complete"] else "  INCOMPLETE")
        )

    def per_1000(r: dict, who: str = "server") -> str:
        value = r[f"{who}_cpu_seconds_per_1000_points"]
        return (
            "n/a"
            if value is None
            else f"{value:.3f} s ({r[f'{who}_cpu_seconds']:.1f} s in all, {r[f'{who}_cpu_percent']:.0f}% of one core)"
        )

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    def stored(r: dict) -> str:
        expected = p["points_per_phase"]
        return f"{r['stored_points']:,} / {expected:,} points, {r['duplicates']} duplicate acks" + (
            "" if r["stored_once"] else "  FAIL"
        )

    ratio = result["mqtt_vs_raw"]
    acked_once = (
        f"{fl['responder_received']:,} / {fl['batches_expected']:,} batches received by the responder, "
        f"{fl['responder_acks_published']:,} acks published, {fl['stray_acks']} stray acks"
        + ("" if fl["acked_once"] else "  FAIL")
    )
    rows = [
        ("machine", f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}"),
        ("devices / workers", f"{p['devices']} / {p['workers']}"),
        ("per device, per phase", f"{p['batches']} batches of {p['minutes']} minutes x {p['models']} models = "
                                  f"{p['points_per_batch']} points ({p['payload_bytes']} B payload); "
                                  f"window {p['window']} unacked"),
        ("(a) raw paho QoS 1", rate(raw) + f" [each payload {p['raw_rounds']}x]"),
        ("(a2) ack floor (no store)", rate(fl)),
        ("(b) MQTT ingest", rate(mq)),
        ("(c) gRPC ingest", rate(gr)),
        ("MQTT ingest / raw", "n/a" if ratio is None else
            f"{ratio:.1%} (goal >= 50%: {'met' if result['goal_met'] else 'NOT MET'})"),
        ("gRPC ingest / raw", percent(result["grpc_vs_raw"])),
        ("ack floor / raw", percent(result["floor_vs_raw"])),
        ("MQTT ingest / ack floor", percent(result["mqtt_vs_floor"])),
        ("MQTT ingest / gRPC ingest", f"{mq['points_per_second'] / gr['points_per_second']:.0%}"
                                      if gr["points_per_second"] else "n/a"),
        ("server CPU / 1000 points", f"MQTT {per_1000(mq)}; gRPC {per_1000(gr)}"),
        ("responder CPU / 1000 points", f"ack floor {per_1000(fl, 'responder')}"),
        ("broker CPU per phase", f"raw {raw['broker_cpu_seconds']:.1f} s, floor {fl['broker_cpu_seconds']:.1f} s, "
                                 f"MQTT {mq['broker_cpu_seconds']:.1f} s, gRPC {gr['broker_cpu_seconds']:.1f} s"),
        ("ack latency p50 / p95", f"floor {fl['ack_latency_p50_ms']:.1f} / {fl['ack_latency_p95_ms']:.1f} ms; "
                                  f"MQTT {mq['ack_latency_p50_ms']:.1f} / {mq['ack_latency_p95_ms']:.1f} ms; "
                                  f"gRPC {gr['ack_latency_p50_ms']:.1f} / {gr['ack_latency_p95_ms']:.1f} ms"),
        ("acked once (ack floor)", acked_once),
        ("stored once (QueryLatency)", f"MQTT {stored(mq)}; gRPC {stored(gr)}"),
        ("worker CPU per phase", f"raw {raw['worker_cpu_seconds']:.1f} s (+ subscriber "
                                 f"{raw['subscriber_cpu_seconds']:.1f} s), floor {fl['worker_cpu_seconds']:.1f} s, "
                                 f"MQTT {mq['worker_cpu_seconds']:.1f} s, gRPC {gr['worker_cpu_seconds']:.1f} s"),
        ("server RSS idle -> end", f"{mib(result['server_idle_rss_bytes'])} -> "
                                   f"{mib(result['server_end_rss_bytes'])}"),
        ("errors / warnings", f"raw {raw['errors']}/{raw['warnings']}, floor {fl['errors']}/{fl['warnings']} "
                              f"(+ responder {fl['responder_errors']}), MQTT {mq['errors']}/{mq['warnings']}, "
                              f"gRPC {gr['errors']}/{gr['warnings']}"),
        ("server log lines", f"{result['server_log']['lines']} (at --log-level warning); "
                             f"exit code on SIGTERM {result.get('server_exit_code')}"),
    ]  # fmt: skip
    samples = [(phase, result[phase]["error_samples"] + result[phase]["warning_samples"]) for phase in PHASES]
    print_rows(rows, [*samples, ("server log", result["server_log"]["samples"])])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100, help="simulated devices (default 100)")
    parser.add_argument("--batches", type=int, default=20, help="batches per device per phase (default 20)")
    parser.add_argument("--minutes", type=int, default=5, help="minutes per batch (default 5)")
    parser.add_argument("--models", type=int, default=4, help="models per minute (default 4)")
    parser.add_argument("--window", type=int, default=4, help="unacked batches per device, (b) and (c) (default 4)")
    parser.add_argument("--raw-rounds", type=int, default=20, help="(a) publishes each payload this often (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="device worker processes (default 2)")
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="deadline per phase, seconds")
    parser.add_argument("--json-out", type=Path, help="also write the result JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 devices, 10 batches each")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.batches = 20, 10
    if min(args.devices, args.batches, args.minutes, args.models, args.window, args.workers, args.raw_rounds) < 1:
        parser.error("--devices, --batches, --minutes, --models, --window, --raw-rounds and --workers must be >= 1")
    args.workers = min(args.workers, args.devices)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup: list[Callable[[], None]] = []
    interrupt_on_sigterm()
    try:
        result = run(args, say, cleanup)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        for step in reversed(cleanup):
            with contextlib.suppress(Exception):
                step()
    print_table(result)
    print_result_line(result, args.json_out)
    ok = (
        all(result[p]["complete"] for p in PHASES)
        and result["floor"]["acked_once"]
        and result["mqtt"]["stored_once"]
        and result["grpc"]["stored_once"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
