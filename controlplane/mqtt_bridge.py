"""The MQTT 5 transport: the control plane's side of the broker (topic layout and payload rules: ``protos.mqtt``).

One paho-mqtt client (client id ``edgefleet-controlplane``) subscribes to every device's ``up`` subtree.
Its network loop runs in paho's thread; each message is handed to the server's event loop
(``call_soon_threadsafe``) and handled there by the same functions as the gRPC session stream
(``services.gateway.open_session / catch_up / handle_message / close_session``), so deploys, benchmark
jobs and revocation reach an MQTT device through its ``SessionHandle`` unchanged.

Invariants:
- A message is acted on only if its topic is in the layout (``up`` direction), its payload is within
  ``MAX_PAYLOAD_BYTES`` and parses as an ``AgentMessage`` whose body is the topic's kind, and the device
  it names exists, is not revoked, and is in the fleet the topic names. Anything else is dropped with
  a logged reason (and counted in ``dropped``); the bridge never stops for a bad message.
- Messages of one device are handled in order, one at a time (a queue and a task per device); devices
  do not wait for each other.
- ``up/hello`` opens a session: Welcome on ``down/welcome``, then the whole desired state (retained)
  and pending jobs, then whatever services queue on the handle's outbox, each on ``down/<body kind>``,
  QoS 1; ``desired`` retained. A newer hello replaces the device's MQTT session without a Disconnect.
- A session ends on ``up/presence`` ``offline`` (the agent's Last Will or clean stop; nothing is
  published), when the device is silent for ``offline_after_seconds`` (a Disconnect is published), or
  when the handle is closed by the server (revocation, a newer gRPC session, shutdown: the queued
  Disconnect is published). A Disconnect over MQTT means "your session on the control plane is over:
  publish up/hello again (after backoff) to open a new one"; with ``revoked`` set, stop. Revocation
  also clears the retained desired state.
- A retained ``online`` presence that the broker hands over at (re)subscription, for a device with no
  session here, re-opens its session (Welcome, desired, jobs): after a bridge or server restart,
  connected devices are online again without having to do anything.
- A message other than hello from a device with no session here gets a Disconnect (at most one per
  ``offline_after_seconds``) so that it says hello; a telemetry batch is still stored and acked, as
  ``SendTelemetry`` does over gRPC. A revoked device gets ``Disconnect(revoked)`` likewise.

Delivery: the client connects with clean start off and a session expiry of ``SESSION_EXPIRY_SECONDS``, so
the broker keeps its subscription and queues QoS 1 ``up`` messages while the bridge is away (a server
restart, a broker connection cut) and delivers them when it is back (Mosquitto caps a session's queue
with ``max_queued_messages``, 1000 by default; its sessions survive a broker restart only with
``persistence true``). Messages are acknowledged to the broker once handed to the event loop, so the
few in hand when the process dies are lost: agents resend telemetry until acked and say hello at
every connect. One bridge per broker: a second server with the same client id takes the session over.

Desired state is published (retained) when it changes for a device with an MQTT session and at each
hello, not to devices that are not connected (as over gRPC): the retained copy a device finds when it
subscribes may be older than the one that follows its hello, never newer.

A broker that comes back without the bridge's session (``session_present`` false: restarted without
persistence) has lost whatever devices published while the bridge was not subscribed, perhaps a hello or
telemetry: every MQTT session here is then marked stale and opened again (Welcome, desired, jobs) at the
device's next sign of life (its retained ``online`` presence handed over at subscription, or any other
message); the Welcome makes the agent resend every unacked telemetry batch, and the store keeps each
(device, boot, sequence) once.

Reconnects: paho's own reconnect is off; ``_run`` reconnects with capped exponential backoff and full
jitter (the policy of ``agent/backoff.py``, restated in ``_Backoff`` since the control plane does not
import the agent). ``mqtts://`` checks the broker's certificate by ``controlplane.mqtt_tls``'s rule (the
``--mqtt-ca`` file if given, else the edgefleet CA or the system's CAs; never a plain-text fallback); a failed
handshake is logged as such and retried like an unreachable broker. Broker authentication is the broker's:
with ``--mqtt-provision-devices`` each device has its own broker account limited to its own subtree
(``controlplane/mqtt_accounts.py``, deploy/mosquitto/); without it, anyone who may publish on the
broker can speak for any device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controlplane.config import parse_broker_url
from controlplane.errors import InvalidRequest, PermissionDenied
from controlplane.mqtt_tls import broker_tls_context, tls_failure
from controlplane.presence import SessionHandle
from controlplane.services import telemetry
from controlplane.services.context import Services
from controlplane.services.gateway import catch_up, close_session, handle_message, open_session
from controlplane.store import errors as store_errors
from protos import mqtt
from protos.edgefleet.v1 import agent_pb2

log = logging.getLogger("edgefleet.server.mqtt")

CLIENT_ID = "edgefleet-controlplane"
SESSION_EXPIRY_SECONDS = 24 * 3600  # how long the broker keeps queuing for a bridge that is away
KEEPALIVE_SECONDS = 30
DEVICE_INBOX = 256  # queued up messages per device; more are dropped (logged)
INBOX_IDLE_SECONDS = 60.0  # a device's inbox task ends after this long without messages
STOP_FLUSH_SECONDS = 2.0  # at stop, how long sessions get to publish their Disconnect


def _close_sockets(client: paho.Client) -> None:
    """Close the client's network socket and loop wake-up socket pair, once its network loop is stopped.

    paho has no public call for this: ``loop_start`` makes a new socket pair each time without closing the
    previous one, and ``loop_stop`` / ``disconnect`` leave it open until the client is garbage collected."""
    with contextlib.suppress(Exception):
        client._reset_sockets()  # noqa: SLF001 - the only way to release them without dropping the client


class _Backoff:
    """Capped exponential backoff with full jitter: delay in (0, min(cap, initial * 2**attempt)]."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial, self.cap, self.attempt = initial, cap, 0
        self._rng = random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2.0 ** min(self.attempt, 32))
        if ceiling < self.cap:
            self.attempt += 1
        return ceiling * (1.0 - self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


@dataclass(eq=False)
class _Session:
    """An MQTT device's open session: the presence handle, and the task publishing its outbox."""

    fleet: str
    device_id: str
    handle: SessionHandle
    last_seen: float  # loop time of its last message
    task: asyncio.Task | None = None
    # The broker came back without the bridge's session (restarted without persistence, or it expired):
    # what the device published while nobody was subscribed, maybe its hello, is gone. The session is
    # opened again (Welcome: the agent resends its unacked telemetry) at its next sign of life.
    stale: bool = False


@dataclass
class BridgeStats:
    received: int = 0
    dropped: int = 0
    published: int = 0
    connects: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class MqttBridge:
    def __init__(self, services: Services, url: str) -> None:
        """Raises ValueError if the URL is invalid or, for mqtts://, the configured broker CA file cannot be used."""
        self.s = services
        self.broker = parse_broker_url(url)
        self._ca_file = services.config.mqtt_ca_file
        self._tls = broker_tls_context(self._ca_file, services.ca.cert_pem) if self.broker.tls else None
        self.stats = BridgeStats()
        self.connected = asyncio.Event()  # set while the broker has accepted the connection
        self._loop = asyncio.get_running_loop()
        self._lost = asyncio.Event()
        self._sessions: dict[str, _Session] = {}
        self._inboxes: dict[str, asyncio.Queue] = {}
        self._workers: set[asyncio.Task] = set()
        self._nudged: dict[str, float] = {}  # device -> loop time of the last "say hello" Disconnect
        self._task: asyncio.Task | None = None
        self._accepted_now = False
        self._answered = False
        self._client = self._make_client()  # one client for the bridge's life: what it queued while away goes out

    def _make_client(self) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=CLIENT_ID,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # _run reconnects, with backoff
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password or None)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- lifecycle ---

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name="mqtt-bridge")

    async def stop(self) -> None:
        """Publish queued Disconnects (briefly), end every session, and leave the broker; the broker keeps
        the bridge's session, so up messages sent while the server is down are delivered at its next start."""
        sessions = list(self._sessions.values())
        tasks = [x.task for x in sessions if x.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_FLUSH_SECONDS)
        for session in sessions:
            await self._end(session, "control plane stopping")
        with contextlib.suppress(Exception):
            self._client.disconnect()  # sends what is queued, then DISCONNECT; the broker keeps the session
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for worker in list(self._workers):
            worker.cancel()
        if self._workers:
            await asyncio.wait(self._workers, timeout=5)
        await asyncio.to_thread(self._client.loop_stop)
        _close_sockets(self._client)

    async def _run(self) -> None:
        backoff = _Backoff()
        where = f"{self.broker.host}:{self.broker.port}"
        while True:
            self._lost.clear()
            self._accepted_now = False
            self._answered = False  # any CONNACK, set on paho's thread
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            connecting = asyncio.ensure_future(
                asyncio.to_thread(
                    self._client.connect,
                    self.broker.host,
                    self.broker.port,
                    keepalive=KEEPALIVE_SECONDS,
                    clean_start=False,
                    properties=properties,
                )
            )
            try:
                await asyncio.shield(connecting)
            except asyncio.CancelledError:  # stop(): let the connect in progress end, then close its socket
                with contextlib.suppress(Exception):
                    await connecting
                _close_sockets(self._client)
                raise
            except ssl.SSLError as exc:  # before OSError, its base: say what to fix
                _close_sockets(self._client)
                delay = backoff.next_delay()
                log.error("MQTT broker %s: %s; retrying in %.1f s", where, tls_failure(exc, self._ca_file), delay)
                await asyncio.sleep(delay)
                continue
            except (OSError, ValueError) as exc:
                _close_sockets(self._client)
                delay = backoff.next_delay()
                log.warning("MQTT broker %s unreachable (%s); retrying in %.1f s", where, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._client.loop_start()
            try:
                await self._lost.wait()
            finally:
                self.connected.clear()
                await asyncio.to_thread(self._client.loop_stop)
                # loop_start makes a new wake-up socket pair each time without closing the last one.
                _close_sockets(self._client)
            if self._accepted_now:
                backoff.reset()
            delay = backoff.next_delay()
            if not self._answered and not self.broker.tls:  # e.g. a TLS-only listener: it just closes
                log.warning(
                    "MQTT broker %s closed the connection before accepting it (a TLS-only listener? then use "
                    "mqtts://); reconnecting in %.1f s",
                    where,
                    delay,
                )
            else:
                log.warning("MQTT connection to %s lost; reconnecting in %.1f s", where, delay)
            await asyncio.sleep(delay)

    # --- paho thread: hand everything to the event loop ---

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answered = True
        if reason_code.is_failure:
            log.warning("MQTT broker refused the control plane: %s", reason_code)
            return
        # Before subscribing: the messages the subscription brings are handled after _accepted.
        self._loop.call_soon_threadsafe(self._accepted, bool(flags.session_present))
        client.subscribe(mqtt.SERVER_SUBSCRIPTION, qos=1)  # at every connect: a new broker session has none

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._loop.call_soon_threadsafe(self._lost.set)

    def _on_message(self, client, userdata, message) -> None:
        self._loop.call_soon_threadsafe(self._received, message.topic, bytes(message.payload), bool(message.retain))

    # --- event loop ---

    def _accepted(self, session_present: bool) -> None:
        self.stats.connects += 1
        self._accepted_now = True
        self.connected.set()
        if not session_present and self._sessions:
            for session in self._sessions.values():
                session.stale = True
            log.info(
                "MQTT broker lost the bridge's session: %d device session(s) open again at their next message",
                len(self._sessions),
            )
        log.info(
            "MQTT bridge connected to %s:%d (%s session)",
            self.broker.host,
            self.broker.port,
            "resumed" if session_present else "new",
        )

    def _drop(self, reason: str, detail: str) -> None:
        self.stats.dropped += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        log.warning("MQTT message dropped (%s): %s", reason, detail)

    def _received(self, topic: str, payload: bytes, retained: bool) -> None:
        self.stats.received += 1
        log.debug("MQTT message on %s (%d bytes%s)", topic, len(payload), ", retained" if retained else "")
        try:
            parsed = mqtt.parse(topic)
        except mqtt.TopicError as exc:
            self._drop("topic", str(exc))
            return
        if parsed.direction != "up":
            self._drop("topic", f"{topic}: not an up topic")
            return
        try:
            mqtt.check_payload(payload)
        except mqtt.TopicError as exc:
            self._drop("size", f"{topic}: {exc}")
            return
        inbox = self._inboxes.get(parsed.device_id)
        if inbox is None:
            inbox = self._inboxes[parsed.device_id] = asyncio.Queue(maxsize=DEVICE_INBOX)
            worker = self._loop.create_task(self._work(parsed.device_id, inbox), name=f"mqtt-{parsed.device_id}")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        try:
            inbox.put_nowait((parsed, payload, retained))
        except asyncio.QueueFull:
            self._drop("overload", f"{topic}: {DEVICE_INBOX} messages of {parsed.device_id} are waiting")

    async def _work(self, device_id: str, inbox: asyncio.Queue) -> None:
        while True:
            try:
                parsed, payload, retained = await asyncio.wait_for(inbox.get(), INBOX_IDLE_SECONDS)
            except TimeoutError:
                if inbox.empty():  # no await since: nothing can have been queued in between
                    del self._inboxes[device_id]
                    return
                continue
            try:
                await self._process(parsed, payload, retained)
            except asyncio.CancelledError:
                raise
            except (InvalidRequest, PermissionDenied, ValueError) as exc:
                self._drop("refused", f"{parsed}: {exc}")
            except store_errors.StoreError as exc:
                self._drop("store", f"{parsed}: {exc}")
            except Exception:  # noqa: BLE001 - one bad message must not end the device's inbox
                self.stats.dropped += 1
                log.exception("MQTT message on %s failed", parsed)

    async def _process(self, topic: mqtt.Topic, payload: bytes, retained: bool) -> None:
        s = self.s
        session = self._sessions.get(topic.device_id)
        device = None
        if session is None or session.stale or session.fleet != topic.fleet or topic.kind in ("hello", "presence"):
            device = await s.db(s.store.get_device, topic.device_id)
            if device is None:
                self._drop("unknown device", f"{topic}: no device {topic.device_id!r} is enrolled")
                return
            if device.fleet != topic.fleet:
                self._drop("wrong fleet", f"{topic}: device {topic.device_id!r} is in fleet {device.fleet!r}")
                return
            if device.revoked_at is not None:
                self._drop("revoked", f"{topic}: device {topic.device_id!r} was revoked")
                if topic.kind != "presence":
                    self._nudge(topic, device.revoke_reason or "revoked", revoked=True)
                return
        if topic.kind == "presence":
            await self._presence(topic, payload, retained, session, device)
            return
        try:
            message = agent_pb2.AgentMessage.FromString(payload)
        except DecodeError as exc:
            self._drop("parse", f"{topic}: not an AgentMessage ({exc})")
            return
        body = message.WhichOneof("body")
        if body != topic.kind:
            self._drop("kind", f"{topic}: carries a {body or 'empty'} message")
            return
        if body == "hello":
            await self._hello(device, message.hello)
            return
        if session is not None and session.stale:  # its hello may be lost with the broker's state
            session = await self._resume(device)
        if session is None:
            if body == "telemetry":  # stored and acked without a session, as SendTelemetry does
                try:
                    ack = await telemetry.ingest(s, topic.device_id, message.telemetry)
                except (PermissionDenied, ValueError) as exc:
                    self._drop("refused", f"{topic}: telemetry batch not acked: {exc}")
                else:
                    log.debug("telemetry %s/%d stored without a session: %s", ack.boot_id, ack.sequence, topic)
                    self._publish(topic.fleet, topic.device_id, agent_pb2.ControlMessage(telemetry_ack=ack))
            else:
                self._drop("no session", f"{topic}: {topic.device_id} has not said hello")
            self._nudge(topic, "no session on the control plane: publish up/hello")
            return
        session.last_seen = self._loop.time()
        await handle_message(s, topic.device_id, message, session.handle)

    async def _presence(self, topic, payload: bytes, retained: bool, session: _Session | None, device) -> None:
        if payload == mqtt.PRESENCE_OFFLINE:
            if session is not None:
                log.info("mqtt session of %s: device went offline", topic.device_id)
                await self._end(session, "offline")
        elif payload == mqtt.PRESENCE_ONLINE:
            if retained and (session is None or session.stale):
                # Handed over at subscription: the device was connected before this bridge was.
                await self._resume(device)
        else:
            self._drop("parse", f"{topic}: presence must be online or offline, not {payload[:40]!r}")

    async def _resume(self, device) -> _Session:
        """Open a session for a device that is connected but whose hello this bridge did not get."""
        hello = agent_pb2.Hello(device_id=device.device_id, boot_id=device.boot_id or "")
        return await self._hello(device, hello, what="mqtt session resumed")

    async def _hello(self, device, hello: agent_pb2.Hello, *, what: str = "mqtt session") -> _Session:
        old = self._sessions.pop(device.device_id, None)
        if old is not None:  # a newer hello: the old session ends without a Disconnect
            self.s.presence.release(old.handle)
            await self._end(old, "replaced")
        handle, welcome = await open_session(self.s, device, hello, what=what)
        handle.outbox.put_nowait(welcome)  # first: nothing else can have reached the new handle yet
        session = _Session(device.fleet, device.device_id, handle, self._loop.time())
        self._sessions[device.device_id] = session
        self._nudged.pop(device.device_id, None)
        session.task = self._loop.create_task(self._serve(session), name=f"mqtt-session-{device.device_id}")
        for message in await catch_up(self.s, device.device_id):
            await handle.outbox.put(message)
        return session

    async def _serve(self, session: _Session) -> None:
        """Publish the session's outbox; close it after offline_after without messages; end at Disconnect."""
        handle = session.handle
        offline_after = float(self.s.config.offline_after_seconds)
        try:
            while True:
                remaining = offline_after - (self._loop.time() - session.last_seen)
                try:
                    message = await asyncio.wait_for(handle.outbox.get(), timeout=max(remaining, 0.05))
                except TimeoutError:
                    if handle.closed.is_set():
                        return  # closed, and its Disconnect did not fit in the outbox
                    if self._loop.time() - session.last_seen >= offline_after:
                        log.info(
                            "mqtt session of %s missed heartbeats for %.0f s; closing", session.device_id, offline_after
                        )
                        handle.close(f"no message for {offline_after:.0f} s (missed heartbeats); reconnect")
                    continue
                disconnect = message.WhichOneof("body") == "disconnect"
                if disconnect and message.disconnect.revoked:  # cleared first: gone by the time it hears why
                    self._clear_desired(session.fleet, session.device_id)
                self._publish(session.fleet, session.device_id, message)
                if disconnect:
                    return
        finally:
            if self._sessions.get(session.device_id) is session:
                del self._sessions[session.device_id]
            log.info("mqtt session closed: %s", session.device_id)
            await close_session(self.s, handle)

    async def _end(self, session: _Session, why: str) -> None:
        """End a session without publishing anything."""
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
        if session.task is not None and not session.task.done():
            session.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.task
        else:
            await close_session(self.s, session.handle)

    def _nudge(self, topic: mqtt.Topic, reason: str, *, revoked: bool = False) -> None:
        """A Disconnect to a device with no session here, at most once per offline_after."""
        now = self._loop.time()
        last = self._nudged.get(topic.device_id)
        if last is not None and now - last < self.s.config.offline_after_seconds:
            return
        self._nudged[topic.device_id] = now
        if revoked:
            self._clear_desired(topic.fleet, topic.device_id)
        message = agent_pb2.ControlMessage(disconnect=agent_pb2.Disconnect(reason=reason, revoked=revoked))
        self._publish(topic.fleet, topic.device_id, message)

    def _publish(self, fleet: str, device_id: str, message: agent_pb2.ControlMessage) -> None:
        kind = message.WhichOneof("body")
        payload = message.SerializeToString()
        if len(payload) > mqtt.MAX_PAYLOAD_BYTES:
            log.error("%s for %s is %d bytes, over the MQTT payload cap; not sent", kind, device_id, len(payload))
            return
        topic = mqtt.down(fleet, device_id, kind)
        info = self._client.publish(topic, payload, qos=1, retain=kind in mqtt.RETAINED_DOWN)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publishing %s to %s failed: %s", kind, topic, paho.error_string(info.rc))
            return
        # NO_CONN: queued in paho, sent when the bridge is connected again (an ack lost on the way is
        # harmless: the agent resends the batch at its next Welcome and the store keeps it once).
        log.debug("published %s to %s%s", kind, topic, " (queued: not connected)" if info.rc else "")
        self.stats.published += 1

    def _clear_desired(self, fleet: str, device_id: str) -> None:
        """Remove the retained desired state of a revoked device from the broker."""
        self._client.publish(mqtt.down(fleet, device_id, "desired"), b"", qos=1, retain=True)
