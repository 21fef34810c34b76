"""What every service needs: the store, the blob store, the CA, the presence tracker, the config and a clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controlplane.blobs import BlobStore
from controlplane.config import ServerConfig
from controlplane.pki import CertificateAuthority
from controlplane.presence import Presence
from controlplane.services.group_commit import GroupCommit
from controlplane.store import Store
from protos.edgefleet.v1.telemetry_pb2 import TelemetryBatch

# At most this many telemetry batches per store transaction (each holds at most 1,440 minutes).
TELEMETRY_GROUP_MAX_BATCHES = 64


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Services:
    config: ServerConfig
    store: Store
    ca: CertificateAuthority
    presence: Presence
    api_address: str  # host:port put into join strings
    device_port: int
    device_endpoint: str  # what enrollment tells devices: "host:port" or ":port" (same host)
    # Store calls run here, not in asyncio's default pool, so that shutdown can wait for
    # calls whose callers were cancelled before it closes the store.
    executor: ThreadPoolExecutor
    blobs: BlobStore  # bundle files by sha256; its blocking calls run in threads (asyncio.to_thread)
    clock: Callable[[], dt.datetime] = utcnow
    artifact_port: int = 0  # the HTTPS artifact listener's port, told to devices in Welcome; 0 = none
    # Classifying devices and planning benchmark jobs read-then-write; one server process serialises them.
    class_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    job_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Telemetry batches from every session and the MQTT bridge, stored in groups (see group_commit.py).
    telemetry_writes: GroupCommit[tuple[str, TelemetryBatch], bool] = field(init=False)

    def __post_init__(self) -> None:
        self.telemetry_writes = GroupCommit(self._store_telemetry, max_items=TELEMETRY_GROUP_MAX_BATCHES)

    async def _store_telemetry(self, items: list[tuple[str, TelemetryBatch]]) -> list[bool | Exception]:
        return await self.db(self.store.ingest_batches, items, self.clock())

    async def db(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(method, *args, **kwargs)
        )
