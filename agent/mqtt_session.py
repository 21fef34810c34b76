"""The agent's session with its control plane over MQTT 5, through the fleet's broker.

The same interface as ``agent.session.Session`` (``run()``, ``stop()``, ``send()``, ``state``,
``boot_id``, the ``on_desired`` / ``on_message`` / ``on_welcome`` / ``on_connected`` callbacks), so the
daemon can use either. Topics and payload rules are ``protos.mqtt``'s: the agent subscribes to its own
``.../down/#`` and publishes ``AgentMessage``s on ``.../up/<body kind>``.

At each connect the agent subscribes (QoS 1), then publishes ``up/presence`` ``online``
(retained), Hello and its facts, then a heartbeat every interval; facts are re-sent when a
stable fact changes. The broker holds a retained Last Will ``up/presence`` ``offline`` that it
publishes when the connection ends without a clean disconnect; ``stop()`` publishes
``offline`` itself and disconnects cleanly.

Invariants:
- paho's own reconnect is off; the reconnect loop here uses capped exponential backoff with
  full jitter (``agent.backoff``), reset once a connection is established (subscribed);
- every wait has a timeout;
- paho runs its network loop on its own thread; its callbacks only hand events to the
  asyncio loop (``call_soon_threadsafe``), where all state changes and callbacks happen;
- an incoming message off the layout, over the size cap, that does not parse, or whose body
  does not match its topic's kind is dropped with a logged reason, and the session goes on;
- a Disconnect with ``revoked``, or a broker refusing the credentials, ends the session for
  good (``SessionEnded``), as on the gRPC stream. Any other Disconnect means the control plane
  closed its side of the session (``controlplane/mqtt_bridge.py``): the agent says hello again
  after a backoff, on the same broker connection;
- ``mqtts://`` checks the broker's certificate by the rule of ``controlplane/mqtt_tls.py``: the
  ``mqtt_ca_file`` alone when given, else the CA pinned at enrollment or the system's CAs, and
  the host name in the URL; a failed handshake is a lost connection (retried after a backoff,
  its reason in ``state.last_error``), never a plain-text retry;
- ``on_connected`` is called at each Welcome, as on the gRPC stream: a Welcome means a session
  on the control plane has just opened, whether in answer to this agent's hello or resumed by
  the control plane from the retained presence (after its own or the broker's restart, when
  the hello may have been lost), so the telemetry outbox resends whatever is unacked: batches
  published while nobody was subscribed are gone from the broker. A Welcome also resets the
  backoff and may set the heartbeat interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.backoff import Backoff, BackoffTimer
from agent.config import parse_mqtt_url, read_mqtt_ca_file
from agent.errors import AgentConfigError
from agent.identity import Identity
from agent.session import FACTS_REFRESH_SECONDS, SessionEnded, SessionState, _stable
from protos import mqtt
from protos.edgefleet.v1 import agent_pb2, common_pb2
from protos.limits import PROTOCOL_VERSION

__all__ = ["MqttSession"]

log = logging.getLogger("edgefleet.agent.mqtt_session")

# CONNACK reason codes that mean "these credentials will not do": like UNAUTHENTICATED /
# PERMISSION_DENIED on the gRPC stream, retrying cannot help.
FATAL_CONNACK = {134: "bad user name or password", 135: "not authorized", 138: "banned"}
MAX_QUEUED_MESSAGES = 1024  # like Session's outbound queue: send() returns False beyond it
# The broker drops anything bigger than this for us; between the payload cap and this, the
# agent drops it itself (with a logged reason). Headroom for the topic and properties.
MAX_PACKET_BYTES = mqtt.MAX_PAYLOAD_BYTES + 64 * 1024
STOP_PUBLISH_TIMEOUT_SECONDS = 2.0


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho drops such a socket without closing it."""

    def do_handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().do_handshake(*args, **kwargs)
        except BaseException:
            self.close()
            raise


class _Lost(Exception):
    """The connection ended or could not be set up; the run loop reconnects after a backoff."""


class MqttSession:
    """Runs the reconnecting MQTT session loop for one device identity."""

    def __init__(
        self,
        identity: Identity,
        *,
        facts: Callable[[], common_pb2.DeviceFacts],
        url: str | None = None,
        ca_file: Path | None = None,
        heartbeat_interval_seconds: float | None = None,
        connect_timeout_seconds: float = 10.0,
        keepalive_seconds: int = 30,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_desired: Callable[[agent_pb2.DesiredState], None] | None = None,
        on_message: Callable[[agent_pb2.ControlMessage], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_welcome: Callable[[agent_pb2.Welcome], None] | None = None,
    ) -> None:
        """``url`` overrides the broker URL stored at join. For ``mqtts://``, the broker's certificate must chain to
        ``ca_file`` when given (``mqtt_ca_file``), else to the CA pinned at enrollment or a system CA. Raises
        ``AgentConfigError`` if there is no URL, it is invalid, ``ca_file`` cannot be read or is given for a plain
        ``mqtt://`` URL, or the fleet / device id cannot be a topic level."""
        self.identity = identity
        self.boot_id = secrets.token_hex(8)
        self.state = SessionState()
        url = url or identity.mqtt_url
        if not url:
            raise AgentConfigError(
                "transport mqtt needs a broker URL: set mqtt_url (--mqtt-url), "
                "or join a control plane that hands one over"
            )
        self.url = url
        self._tls, self._host, self._port = parse_mqtt_url(url)
        self._ca_file = ca_file
        self._tls_context = self._make_tls_context() if self._tls else None
        if ca_file is not None and not self._tls:
            raise AgentConfigError(
                f"mqtt_ca_file checks the broker's TLS certificate, but the broker URL {url} is not mqtts://"
            )
        try:
            self._root = mqtt.device_root(identity.fleet, identity.device_id)
        except mqtt.TopicError as exc:
            raise AgentConfigError(f"cannot use MQTT: {exc}") from exc
        if identity.mqtt_topic_root and identity.mqtt_topic_root != self._root:
            log.warning(
                "the join's MQTT topic root %r differs from %r; using the latter", identity.mqtt_topic_root, self._root
            )
        self._facts = facts
        self._interval_configured = heartbeat_interval_seconds is not None
        self._interval = heartbeat_interval_seconds or float(identity.heartbeat_interval_seconds)
        self._connect_timeout = connect_timeout_seconds
        self._keepalive = keepalive_seconds
        self._backoff = BackoffTimer(backoff or Backoff(), rng=rng or random.Random())
        self._on_desired = on_desired
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_welcome = on_welcome  # called with each Welcome, before on_connected
        self._stop = asyncio.Event()
        self._client: paho.Client | None = None
        self._events: asyncio.Queue[tuple[Any, ...]] | None = None

    # --- the interface shared with Session ---

    def stop(self) -> None:
        """End the session: publish presence offline, disconnect cleanly, and return from run()."""
        self._stop.set()
        if self._events is not None:
            self._events.put_nowait(("stop",))

    def send(self, message: agent_pb2.AgentMessage) -> bool:
        """Publish on ``up/<body kind>`` (QoS 1); False (dropped) when not connected or paho's queue is full."""
        client = self._client
        if not self.state.connected or client is None:
            return False
        return self._publish(client, message)

    async def run(self) -> None:
        """Keep a session open until stop() or a fatal refusal (raises SessionEnded)."""
        while not self._stop.is_set():
            try:
                await self._run_once()
            except SessionEnded:
                raise
            except (_Lost, TimeoutError, OSError) as exc:
                self.state.last_error = str(exc) if isinstance(exc, _Lost) else repr(exc)
                log.warning("MQTT session lost: %s", self.state.last_error)
            finally:
                self.state.connected = False
            if self._stop.is_set():
                break
            delay = self._backoff.next_delay()
            log.info("reconnecting to %s in %.2f s", self.url, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    # --- one connection ---

    def _topic(self, kind: str) -> str:
        return f"{self._root}/up/{kind}"

    def _publish(self, client: paho.Client, message: agent_pb2.AgentMessage) -> bool:
        kind = message.WhichOneof("body")
        if kind is None:
            return False
        info = client.publish(self._topic(kind), message.SerializeToString(), qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            log.debug("publishing %s failed: %s", kind, paho.error_string(info.rc))
            return False
        if kind == "telemetry":
            log.debug("telemetry batch %d published (mid %d)", message.telemetry.sequence, info.mid)
        return True

    def _make_client(self, post: Callable[..., None]) -> paho.Client:
        ident = self.identity
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=ident.mqtt_client_id or ident.device_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        client.username_pw_set(ident.mqtt_username or ident.device_id, ident.mqtt_password or None)
        client.will_set(self._topic("presence"), mqtt.PRESENCE_OFFLINE, qos=1, retain=True)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.connect_timeout = self._connect_timeout
        if self._tls_context is not None:
            client.tls_set_context(self._tls_context)
        # Runs on paho's thread: only hand over to the asyncio loop.
        client.on_connect = lambda _c, _u, _f, reason, _p: post("connack", reason)
        client.on_subscribe = lambda _c, _u, _m, reasons, _p: post("suback", reasons)
        client.on_message = lambda _c, _u, msg: post("message", msg.topic, bytes(msg.payload), msg.retain)
        client.on_disconnect = lambda _c, _u, _f, reason, _p: post("disconnect", reason)
        return client

    def _make_tls_context(self) -> ssl.SSLContext:
        """The broker CA file alone when given; else the CA pinned at enrollment and the system's CAs."""
        if self._ca_file is not None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=read_mqtt_ca_file(self._ca_file))
        else:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            for pem in (self.identity.ca_pem, self.identity.mqtt_ca_pem):  # pinned CA, broker CA from the join
                if pem:
                    context.load_verify_locations(cadata=pem.decode("ascii"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sslsocket_class = _ClosingSSLSocket
        return context

    def _trust(self) -> str:
        if self._ca_file is not None:
            return f"the mqtt_ca_file {self._ca_file}"
        if self.identity.mqtt_ca_pem:
            return "the CA pinned at enrollment, the broker CA handed over at join and the system's CAs"
        return "the CA pinned at enrollment and the system's CAs"

    def _tls_failure(self, exc: ssl.SSLError) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"TLS with the MQTT broker at {self.url} failed: its certificate is not trusted "
                f"({exc.verify_message}); checked against {self._trust()}: set mqtt_ca_file to the CA that "
                "issued it, for this host name"
            )
        return f"TLS with the MQTT broker at {self.url} failed ({exc.reason or exc}): is that port a TLS listener?"

    async def _run_once(self) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def post(*item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(events.put_nowait, item)

        client = self._make_client(post)
        properties = Properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = MAX_PACKET_BYTES
        try:
            await asyncio.to_thread(
                client.connect,
                self._host,
                self._port,
                keepalive=self._keepalive,
                clean_start=True,
                properties=properties,
            )
        except ssl.SSLError as exc:  # no plain-text fallback: retried after a backoff, like any failed connect
            raise _Lost(self._tls_failure(exc)) from None
        self._events = events
        if self._stop.is_set():
            events.put_nowait(("stop",))
        client.loop_start()
        try:
            await self._converse(client, events, loop)
        finally:
            self._events = None
            if self.state.connected and client.is_connected():  # stop, revoked, or ended by the control plane
                await self._say_goodbye(client)
            self._client = None
            self.state.connected = False
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    async def _converse(
        self, client: paho.Client, events: asyncio.Queue[tuple[Any, ...]], loop: asyncio.AbstractEventLoop
    ) -> None:
        deadline = loop.time() + self._connect_timeout  # for CONNACK and SUBACK
        established = answered = False
        next_beat = next_facts = 0.0
        sent_stable = b""
        sequence = 0
        rehello_at: float | None = None  # after a Disconnect that is not a revocation
        while True:
            wake_at = min(next_beat, rehello_at or next_beat) if established else deadline
            try:
                item = await asyncio.wait_for(events.get(), timeout=max(0.0, wake_at - loop.time()))
            except TimeoutError:
                if not established:
                    raise TimeoutError(
                        f"no answer from the MQTT broker at {self.url} in {self._connect_timeout} s"
                    ) from None
                if rehello_at is not None and loop.time() >= rehello_at:
                    rehello_at = None
                    sent_stable = await self._open(client)
                    next_facts = loop.time() + FACTS_REFRESH_SECONDS
                    continue
                # Fixed cadence (not "interval after the last one"), like Session.
                next_beat = max(next_beat + self._interval, loop.time())
                if loop.time() >= next_facts:
                    next_facts = loop.time() + FACTS_REFRESH_SECONDS
                    facts = await asyncio.to_thread(self._facts)
                    if _stable(facts) != sent_stable:
                        sent_stable = _stable(facts)
                        self._publish(client, agent_pb2.AgentMessage(facts=facts))
                sequence += 1
                now = Timestamp()
                now.GetCurrentTime()
                if self._publish(
                    client, agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(at=now, sequence=sequence))
                ):
                    self.state.heartbeats_sent += 1
                continue
            match item:
                case ("stop",):
                    return
                case ("connack", reason):
                    answered = True
                    if reason.is_failure:
                        if reason.value in FATAL_CONNACK:
                            self.state.fatal = f"{reason} ({reason.value})"
                            raise SessionEnded(f"the MQTT broker at {self.url} refused this device: {reason}")
                        raise _Lost(f"the MQTT broker at {self.url} refused the connection: {reason}")
                    client.subscribe(mqtt.device_subscription(self.identity.fleet, self.identity.device_id), qos=1)
                case ("suback", reasons):
                    if not reasons or reasons[0].is_failure:
                        raise _Lost(f"the MQTT broker refused the subscription to {self._root}/down/#: {reasons}")
                    established = True
                    self._client = client
                    self.state.connected = True
                    self._backoff.reset()
                    client.publish(self._topic("presence"), mqtt.PRESENCE_ONLINE, qos=1, retain=True)
                    sent_stable = await self._open(client)
                    next_beat = loop.time() + self._interval
                    next_facts = loop.time() + FACTS_REFRESH_SECONDS
                case ("message", topic, payload, retained):
                    interval = self._interval
                    if self._receive(topic, payload, retained) == "rehello" and rehello_at is None:
                        # The control plane closed our session there (not revoked): say hello again after a
                        # backoff, on the same broker connection.
                        delay = self._backoff.next_delay()
                        rehello_at = loop.time() + delay
                        log.info("the control plane ended the session; hello again in %.2f s", delay)
                    if interval != self._interval:  # a Welcome changed it: re-plan the next beat
                        next_beat = loop.time() + self._interval
                case ("disconnect", reason):
                    self.state.connected = False
                    if not answered:  # e.g. plain MQTT to a TLS-only listener: the broker just closes it
                        hint = "" if self._tls else " (is it a TLS-only listener? then use mqtts://)"
                        raise _Lost(f"the MQTT broker at {self.url} closed the connection before answering{hint}")
                    raise _Lost(f"disconnected from the MQTT broker at {self.url}: {reason}")

    async def _open(self, client: paho.Client) -> bytes:
        """Hello and facts (a control-plane session opens on hello; its Welcome calls on_connected).

        Returns the stable facts."""
        self._publish(client, self._hello())
        facts = await asyncio.to_thread(self._facts)
        self._publish(client, agent_pb2.AgentMessage(facts=facts))
        log.info("MQTT session open as %s in fleet %s via %s", self.identity.device_id, self.identity.fleet, self.url)
        return _stable(facts)

    async def _say_goodbye(self, client: paho.Client) -> None:
        """Publish presence offline (retained) and wait a little for the broker to take it."""
        self.state.connected = False
        info = client.publish(self._topic("presence"), mqtt.PRESENCE_OFFLINE, qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):
            await asyncio.to_thread(info.wait_for_publish, STOP_PUBLISH_TIMEOUT_SECONDS)
        log.info("MQTT session closed")

    def _hello(self) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(
            hello=agent_pb2.Hello(
                device_id=self.identity.device_id,
                boot_id=self.boot_id,
                agent_version=__version__,
                protocol_version=PROTOCOL_VERSION,
            )
        )

    # --- incoming ---

    def _receive(self, topic: str, payload: bytes, retained: bool) -> str | None:
        """Validate one incoming message and dispatch it; drop it with a logged reason if invalid.

        Returns ``"rehello"`` for a Disconnect that is not a revocation; raises ``SessionEnded`` for one that is.
        """
        try:
            parsed = mqtt.parse(topic)
            if (parsed.fleet, parsed.device_id, parsed.direction) != (
                self.identity.fleet,
                self.identity.device_id,
                "down",
            ):
                raise mqtt.TopicError(f"topic {topic!r} is not this device's down subtree")
            if not payload and retained:
                log.debug("retained %s cleared on %s", parsed.kind, topic)
                return
            mqtt.check_payload(payload)
            message = agent_pb2.ControlMessage.FromString(payload)
        except mqtt.TopicError as exc:
            log.warning("dropped an MQTT message on %.200s: %s", topic, exc)
            return
        except DecodeError as exc:
            log.warning(
                "dropped an MQTT message on %.200s: the payload does not parse as a ControlMessage (%s)", topic, exc
            )
            return
        kind = message.WhichOneof("body")
        if kind != parsed.kind:
            log.warning("dropped an MQTT message on %.200s: its body is %s, not %s", topic, kind, parsed.kind)
            return
        if kind == "welcome":
            self.state.welcomed += 1
            self._backoff.reset()
            interval = float(message.welcome.heartbeat_interval_seconds)
            if not self._interval_configured and interval:
                self._interval = interval
            log.info("welcomed as %s in fleet %s", message.welcome.device_id, message.welcome.fleet)
            if self._on_welcome is not None:
                self._on_welcome(message.welcome)
            if self._on_connected is not None:
                self._on_connected()  # a new control-plane session: the telemetry outbox resends what is unacked
        elif kind == "desired":
            self.state.desired = message.desired
            if self._on_desired is not None:
                self._on_desired(message.desired)
        elif kind == "disconnect":
            self.state.events.append(f"disconnect: {message.disconnect.reason}")
            if message.disconnect.revoked:
                self.state.fatal = f"revoked: {message.disconnect.reason}"
                raise SessionEnded(f"this device was revoked: {message.disconnect.reason}")
            return "rehello"
        elif self._on_message is not None:
            self._on_message(message)  # telemetry acks, jobs
        return None
