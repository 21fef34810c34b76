"""Which devices have a session open on this replica, and when each was last seen.

Heartbeats only touch memory; a background task flushes last-seen times to
the store in one batched transaction every ``flush_seconds``, so the store
sees O(devices / flush interval) writes, not one per heartbeat. Sessions are
registered here so that a revoke (or a newer session of the same device) can
close the old stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from protos.edgefleet.v1 import agent_pb2

log = logging.getLogger("edgefleet.server.presence")


@dataclass(eq=False)
class SessionHandle:
    device_id: str
    boot_id: str
    outbox: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self, reason: str, *, revoked: bool = False) -> None:
        """Ask the session to send Disconnect and end the stream."""
        if self.closed.is_set():
            return
        message = agent_pb2.ControlMessage(disconnect=agent_pb2.Disconnect(reason=reason, revoked=revoked))
        with contextlib.suppress(asyncio.QueueFull):
            self.outbox.put_nowait(message)
        self.closed.set()


class Presence:
    def __init__(
        self,
        *,
        flush: Callable[[dict[str, dt.datetime]], None],
        flush_seconds: float,
        executor: Executor | None = None,
    ) -> None:
        self._flush_to_store = flush
        self._executor = executor
        self._flush_seconds = flush_seconds
        self._sessions: dict[str, SessionHandle] = {}
        self._pending: dict[str, dt.datetime] = {}
        self._task: asyncio.Task | None = None
        self.heartbeats = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def open(self, handle: SessionHandle) -> None:
        old = self._sessions.get(handle.device_id)
        if old is not None:
            old.close("replaced by a newer session of the same device")
        self._sessions[handle.device_id] = handle

    def release(self, handle: SessionHandle) -> bool:
        """Forget handle; True if it was the device's current session."""
        if self._sessions.get(handle.device_id) is handle:
            del self._sessions[handle.device_id]
            return True
        return False

    def session(self, device_id: str) -> SessionHandle | None:
        return self._sessions.get(device_id)

    def sessions(self) -> list[SessionHandle]:
        return list(self._sessions.values())

    def seen(self, device_id: str, now: dt.datetime) -> None:
        self.heartbeats += 1
        self._pending[device_id] = now

    def last_seen(self, device_id: str, stored: dt.datetime | None) -> dt.datetime | None:
        pending = self._pending.get(device_id)
        if pending is None:
            return stored
        return pending if stored is None or pending > stored else stored

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._flush_to_store, batch)
        except Exception:
            log.exception("could not store last-seen times; keeping them for the next flush")
            for device_id, seen in batch.items():
                self._pending.setdefault(device_id, seen)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()
