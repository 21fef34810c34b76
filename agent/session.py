"""The agent's session with its control plane: one long-lived gRPC stream.

At connect the agent sends Hello and its facts, then a heartbeat every
interval; facts are re-sent when a stable fact changes. The control plane
answers with Welcome, desired state, jobs and, when the device is revoked, a
Disconnect that ends the agent for good. Each Welcome is handed to
``on_welcome`` (its artifact port, for one), then ``on_connected`` runs.

Invariants: every wait has a timeout; the reconnect loop uses capped
exponential backoff with full jitter (agent.backoff) and resets after a
session that got a Welcome; fatal refusals (revoked, unauthenticated) stop
the loop instead of hammering the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent import __version__
from agent.backoff import Backoff, BackoffTimer
from agent.channel import FATAL_CODES, device_channel
from agent.identity import Identity
from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from protos.limits import PROTOCOL_VERSION

log = logging.getLogger("edgefleet.agent.session")

# Facts that change all the time; a change in them alone does not resend facts.
VOLATILE_FACTS = ("memory_available_bytes", "disk_free_bytes")
FACTS_REFRESH_SECONDS = 60.0


class SessionEnded(Exception):
    """The control plane ended this device's session for good (revoked or refused)."""


@dataclass
class SessionState:
    """What the session learned; read by the rest of the agent and by tests."""

    connected: bool = False
    welcomed: int = 0
    heartbeats_sent: int = 0
    desired: agent_pb2.DesiredState | None = None
    last_error: str = ""
    fatal: str = ""
    events: list[str] = field(default_factory=list)


def _stable(facts: common_pb2.DeviceFacts) -> bytes:
    copy = common_pb2.DeviceFacts()
    copy.CopyFrom(facts)
    for name in VOLATILE_FACTS:
        copy.ClearField(name)
    return copy.SerializeToString(deterministic=True)


class Session:
    """Runs the reconnecting session loop for one device identity."""

    def __init__(
        self,
        identity: Identity,
        *,
        facts: Callable[[], common_pb2.DeviceFacts],
        heartbeat_interval_seconds: float | None = None,
        connect_timeout_seconds: float = 10.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_desired: Callable[[agent_pb2.DesiredState], None] | None = None,
        on_message: Callable[[agent_pb2.ControlMessage], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_welcome: Callable[[agent_pb2.Welcome], None] | None = None,
    ) -> None:
        self.identity = identity
        self.boot_id = secrets.token_hex(8)
        self.state = SessionState()
        self._facts = facts
        # A configured interval wins; otherwise the control plane's (Welcome) is followed.
        self._interval_configured = heartbeat_interval_seconds is not None
        self._interval = heartbeat_interval_seconds or float(identity.heartbeat_interval_seconds)
        self._connect_timeout = connect_timeout_seconds
        self._backoff = BackoffTimer(backoff or Backoff(), rng=rng or random.Random())
        self._on_desired = on_desired
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_welcome = on_welcome  # called with each Welcome, before on_connected
        # Messages other parts of the agent send (status reports, telemetry). Only sent
        # while a session is open; whoever needs durability keeps its own copy (outbox).
        self._outbound: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue(maxsize=1024)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # set on stop and when the heartbeat interval changes

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def send(self, message: agent_pb2.AgentMessage) -> bool:
        """Queue a message for the open session; False (dropped) when none is open or the queue is full."""
        if not self.state.connected:
            return False
        try:
            self._outbound.put_nowait(message)
        except asyncio.QueueFull:
            return False
        self._wake.set()
        return True

    async def run(self) -> None:
        """Keep a session open until stop() or a fatal refusal (raises SessionEnded)."""
        while not self._stop.is_set():
            try:
                await self._run_once()
            except SessionEnded:
                raise
            except grpc.aio.AioRpcError as exc:
                self.state.last_error = f"{exc.code().name}: {exc.details()}"
                if exc.code() in FATAL_CODES:
                    self.state.fatal = self.state.last_error
                    raise SessionEnded(f"control plane refused the session: {exc.details()}") from exc
                log.warning("session lost: %s", self.state.last_error)
            except (TimeoutError, OSError) as exc:
                self.state.last_error = repr(exc)
                log.warning("session lost: %r", exc)
            finally:
                self.state.connected = False
                while not self._outbound.empty():  # unsent: the senders resend from their own state
                    self._outbound.get_nowait()
            if self._stop.is_set():
                break
            delay = self._backoff.next_delay()
            log.info("reconnecting in %.2f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def _run_once(self) -> None:
        ident = self.identity
        async with device_channel(ident) as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=self._connect_timeout)
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            call = stub.Session(self._outgoing())
            stop_wait = asyncio.ensure_future(self._stop.wait())
            try:
                reader = asyncio.ensure_future(self._read(call))
                done, _ = await asyncio.wait({reader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    reader.result()
                else:
                    call.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await reader
            finally:
                stop_wait.cancel()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        async for message in call:
            kind = message.WhichOneof("body")
            if kind == "welcome":
                self.state.connected = True
                self.state.welcomed += 1
                self._backoff.reset()
                interval = float(message.welcome.heartbeat_interval_seconds)
                if not self._interval_configured and interval and interval != self._interval:
                    self._interval = interval
                    self._wake.set()
                log.info("session open as %s in fleet %s", message.welcome.device_id, message.welcome.fleet)
                if self._on_welcome is not None:
                    self._on_welcome(message.welcome)
                if self._on_connected is not None:
                    self._on_connected()
            elif kind == "desired":
                self.state.desired = message.desired
                if self._on_desired is not None:
                    self._on_desired(message.desired)
            elif kind == "disconnect":
                self.state.events.append(f"disconnect: {message.disconnect.reason}")
                if message.disconnect.revoked:
                    self.state.fatal = f"revoked: {message.disconnect.reason}"
                    raise SessionEnded(f"this device was revoked: {message.disconnect.reason}")
                return
            elif self._on_message is not None:
                self._on_message(message)  # telemetry acks, jobs
            # Messages of kinds nobody handles are ignored (forward compatibility).

    async def _outgoing(self) -> AsyncIterator[agent_pb2.AgentMessage]:
        yield agent_pb2.AgentMessage(
            hello=agent_pb2.Hello(
                device_id=self.identity.device_id,
                boot_id=self.boot_id,
                agent_version=__version__,
                protocol_version=PROTOCOL_VERSION,
            )
        )
        facts = await asyncio.to_thread(self._facts)
        sent_stable = _stable(facts)
        yield agent_pb2.AgentMessage(facts=facts)
        loop = asyncio.get_running_loop()
        next_facts = loop.time() + FACTS_REFRESH_SECONDS
        # Heartbeats keep a fixed cadence (not "interval after the last one"), so
        # a slow send does not stretch the gap the server measures.
        last_beat = loop.time()
        sequence = 0
        while not self._stop.is_set():
            next_beat = max(last_beat + self._interval, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_beat - loop.time()))
            if self._stop.is_set():
                return
            if self._wake.is_set():  # queued messages, or the interval changed: re-plan
                self._wake.clear()
                while not self._outbound.empty():
                    yield self._outbound.get_nowait()
                continue
            last_beat = next_beat
            if loop.time() >= next_facts:
                next_facts = loop.time() + FACTS_REFRESH_SECONDS
                facts = await asyncio.to_thread(self._facts)
                if _stable(facts) != sent_stable:
                    sent_stable = _stable(facts)
                    yield agent_pb2.AgentMessage(facts=facts)
            sequence += 1
            now = Timestamp()
            now.GetCurrentTime()
            self.state.heartbeats_sent += 1
            yield agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(at=now, sequence=sequence))
