"""The device-facing service on the mutual-TLS port: the session stream.

Invariants:
- Identity comes from the verified client certificate; the certificate's
  fingerprint must be the one recorded at enrollment and the device must not
  be revoked, checked at every call.
- A Hello that names another device, a first message that is not Hello, or
  out-of-bounds facts end the stream with a specific status; nothing is stored.
- A device has at most one current session; a newer one replaces the older.
- A session that misses heartbeats for ``offline_after`` is closed by the
  server, so half-open connections do not look online.
- Right after Welcome a device with desired rows gets its whole DesiredState, then every benchmark
  job it has not answered yet (see ``services.evidence``).
- Reported facts re-classify the device (see ``services.classes``); a device new to a class may be
  given benchmark jobs. A job result counts only for a job given to this device.
- Telemetry batches are stored and acked through the session's outbox, status reports stored
  (see ``services.telemetry``); SendTelemetry does the same for one batch without a session.
- FetchManifest and FetchArtifact serve only builds in the caller's own desired
  state or of its pending benchmark jobs (see ``services.desired``); file reads run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from controlplane.auth import peer_certificate
from controlplane.blobs import BlobError, check_sha256
from controlplane.errors import InvalidRequest, OutOfRange, PermissionDenied, Unauthenticated
from controlplane.fleet import facts_to_dict, timestamp, validate_facts
from controlplane.grpc_errors import handle_errors, status_for
from controlplane.presence import SessionHandle
from controlplane.services import classes, evidence, telemetry
from controlplane.services.context import Services
from controlplane.services.desired import allowed_blob_size, desired_build, desired_message
from controlplane.store import errors as store_errors
from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc
from protos.limits import MAX_ARTIFACT_CHUNK_BYTES, PROTOCOL_VERSION

log = logging.getLogger("edgefleet.server.gateway")

DEFAULT_CHUNK_BYTES = 256 * 1024


async def device_for_certificate(s: Services, common_name: str, fingerprint: str):
    """The device row of a verified client certificate (also used by ``controlplane.artifact_https``).

    Raises Unauthenticated (not a current device certificate) or PermissionDenied (revoked).
    """
    device = await s.db(s.store.get_device, common_name)
    if device is None or device.certificate_sha256 != fingerprint:
        raise Unauthenticated(f"certificate for {common_name!r} is not a current device certificate")
    if device.revoked_at is not None:
        raise PermissionDenied(
            f"device {common_name!r} was revoked; to bring it back, join it again under a new device id"
        )
    return device


class GatewayService(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    async def authenticate(self, context: grpc.aio.ServicerContext):
        """Return the device row of the caller. Raises Unauthenticated or PermissionDenied."""
        common_name, fingerprint = peer_certificate(context.auth_context())
        return await device_for_certificate(self.s, common_name, fingerprint)

    async def Session(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802
        try:
            await self._session(request_iterator, context)
        except (Unauthenticated, PermissionDenied, InvalidRequest, store_errors.StoreError) as exc:
            log.info("session refused: %s", exc)
            await context.abort(status_for(exc), str(exc))

    async def _session(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        s = self.s
        device = await self.authenticate(context)
        messages = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(anext(messages), timeout=s.config.hello_timeout_seconds)
        except TimeoutError as exc:
            raise InvalidRequest("no Hello within the hello timeout") from exc
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "hello":
            raise InvalidRequest("the first message of a session must be Hello")
        handle, welcome = await open_session(s, device, first.hello)
        await context.write(welcome)
        for message in await catch_up(s, device.device_id):
            await context.write(message)
        reader = asyncio.ensure_future(self._read(device.device_id, messages, handle))
        try:
            await self._write(context, handle, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            log.info("session closed: %s", device.device_id)
            await close_session(s, handle)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()

    @handle_errors
    async def FetchManifest(self, request, context):  # noqa: N802
        """The signed manifest of a build in the caller's desired state, and every publisher key the server knows."""
        device = await self.authenticate(context)
        build = await desired_build(self.s, device.device_id, request.model)
        keys = await self.s.db(self.s.store.list_publisher_keys)
        return agent_pb2.FetchManifestResponse(
            signed_manifest=build.signatures, publisher_keys=[k.raw_public_key for k in keys]
        )

    async def FetchArtifact(self, request, context):  # noqa: N802
        """Stream a blob listed by a build in the caller's desired state, from ``request.offset``."""
        s = self.s
        try:
            device = await self.authenticate(context)
            sha256 = check_sha256(request.sha256)
            size = await allowed_blob_size(s, device.device_id, sha256)
            if request.offset > size:
                raise OutOfRange(f"offset {request.offset} is past the end of blob {sha256} ({size} bytes)")
            handle = await s.db(s.blobs.open_at, sha256, request.offset)
        except (Unauthenticated, PermissionDenied, OutOfRange, store_errors.StoreError, BlobError, ValueError) as exc:
            log.info("artifact fetch refused: %s", exc)
            code = grpc.StatusCode.INVALID_ARGUMENT if type(exc) is ValueError else status_for(exc)
            await context.abort(code, str(exc))
        chunk_bytes = min(request.chunk_bytes or DEFAULT_CHUNK_BYTES, MAX_ARTIFACT_CHUNK_BYTES)
        offset = request.offset
        rate = s.config.artifact_bytes_per_second
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Each chunk is read and encoded in a worker thread while the previous one is written:
        # the event loop only hands finished wire bytes to gRPC (see encode_artifact_chunk).
        pending = asyncio.ensure_future(s.db(_read_chunk, handle, offset, chunk_bytes, size)) if offset < size else None
        try:
            while pending is not None:
                wire, length = await asyncio.shield(pending)  # a cancelled call leaves the read to finish
                pending = None
                if not length:
                    break
                if offset + length < size:
                    pending = asyncio.ensure_future(s.db(_read_chunk, handle, offset + length, chunk_bytes, size))
                try:
                    await context.write(wire)
                except Exception as exc:  # noqa: BLE001 - grpc raises several internal types for a gone peer
                    # The device went away (cut link, cancelled fetch): it resumes from its offset.
                    log.debug("artifact stream to %s ended at %d: %r", device.device_id, offset, exc)
                    return
                del wire
                offset += length
                if rate:  # keep this stream at or under the configured bandwidth
                    ahead = (offset - request.offset) / rate - (loop.time() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            if pending is not None and not pending.done():
                # Never close the file under a read still running in its thread.
                pending.add_done_callback(lambda f: (f.cancelled() or f.exception(), handle.close()))
            else:
                if pending is not None and not pending.cancelled():
                    pending.exception()  # retrieved: a failed read-ahead nobody waits for is not an error
                handle.close()

    async def _write(self, context, handle: SessionHandle, reader: asyncio.Task) -> None:
        """Send queued control messages until the reader ends or the session is closed."""
        while True:
            get = asyncio.ensure_future(handle.outbox.get())
            try:
                await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not get.done():
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
            if get.cancelled():
                # The reader ended; a Disconnect queued on its way out still goes to the device.
                while not handle.outbox.empty():
                    message = handle.outbox.get_nowait()
                    with contextlib.suppress(Exception):
                        await context.write(message)
                return
            message = get.result()
            await context.write(message)
            if message.WhichOneof("body") == "disconnect":
                return

    async def _read(self, device_id: str, messages, handle: SessionHandle) -> None:
        s = self.s
        timeout = float(s.config.offline_after_seconds)
        while True:
            try:
                message = await asyncio.wait_for(anext(messages), timeout=timeout)
            except StopAsyncIteration:
                return
            except TimeoutError:
                log.info("session of %s missed heartbeats for %.0f s; closing", device_id, timeout)
                handle.close(f"no message for {timeout:.0f} s (missed heartbeats); reconnect")
                return
            await handle_message(s, device_id, message, handle)

    @handle_errors
    async def SendTelemetry(self, request, context):  # noqa: N802
        """Store one batch for an agent without an open session; answers its ack."""
        device = await self.authenticate(context)
        return await telemetry.ingest(self.s, device.device_id, request)


# --- one session's life, shared by the gRPC stream above and the MQTT bridge (controlplane.mqtt_bridge) ---


async def open_session(
    s: Services, device, hello: agent_pb2.Hello, *, what: str = "session"
) -> tuple[SessionHandle, agent_pb2.ControlMessage]:
    """Check ``hello`` against the device row, record the connection and register a session handle.

    Returns the handle and the Welcome to send first; send ``catch_up(s, device_id)`` after it.
    Raises PermissionDenied or InvalidRequest.
    """
    if hello.device_id and hello.device_id != device.device_id:
        raise PermissionDenied(f"Hello names device {hello.device_id!r} but the certificate is {device.device_id!r}")
    if len(hello.boot_id) > 64:
        raise InvalidRequest("boot_id is longer than 64 characters")
    handle = SessionHandle(device_id=device.device_id, boot_id=hello.boot_id)
    now = s.clock()
    await s.db(s.store.mark_connected, device.device_id, hello.boot_id, now)
    s.presence.open(handle)
    log.info("%s open: %s boot %s", what, device.device_id, hello.boot_id)
    welcome = agent_pb2.Welcome(
        device_id=device.device_id,
        fleet=device.fleet,
        heartbeat_interval_seconds=s.config.heartbeat_interval_seconds,
        protocol_version=PROTOCOL_VERSION,
        server_time=timestamp(now),
        artifact_port=s.artifact_port,
    )
    return handle, agent_pb2.ControlMessage(welcome=welcome)


async def catch_up(s: Services, device_id: str) -> list[agent_pb2.ControlMessage]:
    """What follows a Welcome: the whole DesiredState (if the device has desired rows), then pending jobs.

    Called after presence.open: a deploy racing with the session either finds the handle or
    wrote before this read; either way the device ends up with the newest generation.
    """
    messages = []
    generation, desired = await s.db(s.store.get_desired, device_id)
    if desired:
        messages.append(desired_message(generation, desired, s))
    messages += await evidence.pending_messages(s, device_id)
    return messages


async def close_session(s: Services, handle: SessionHandle) -> None:
    """Forget the handle; if it was the device's current session, record that the session ended."""
    if s.presence.release(handle):
        # Shielded: a cancelled handler must still record that its session ended.
        await asyncio.shield(s.db(s.store.mark_disconnected, handle.device_id, s.clock()))


async def handle_message(s: Services, device_id: str, message: agent_pb2.AgentMessage, handle: SessionHandle) -> None:
    """Act on one AgentMessage of an open session (after its Hello).

    Raises InvalidRequest for a second Hello or out-of-bounds facts; a refused telemetry batch is logged, not acked.
    """
    now = s.clock()
    s.presence.seen(device_id, now)
    kind = message.WhichOneof("body")
    if kind == "facts":
        validate_facts(message.facts)
        async with s.class_lock:
            before = await s.db(s.store.get_device, device_id)
            device_class = await classes.classify(s, device_id, message.facts)
            await s.db(
                s.store.update_facts,
                device_id,
                facts_to_dict(message.facts),
                message.facts.agent_version,
                now,
                device_class=device_class,
            )
        if before is not None and before.device_class != device_class:
            log.info("device %s is in class %s", device_id, device_class)
            await evidence.plan_latest(s)  # a new member may be needed as a benchmark sample
    elif kind == "hello":
        raise InvalidRequest("Hello may only be sent once per session")
    elif kind == "telemetry":
        await _telemetry(s, device_id, message.telemetry, handle)
    elif kind == "status":
        await telemetry.record_status(s, device_id, message.status)
    elif kind == "job_result":
        await evidence.record_result(s, device_id, message.job_result)
    # heartbeat: seen() above is all it takes.


async def _telemetry(s: Services, device_id: str, batch, handle: SessionHandle) -> None:
    """Store a batch and queue its ack; a refused batch is logged and not acked (see services.telemetry)."""
    try:
        ack = await telemetry.ingest(s, device_id, batch)
    except (PermissionDenied, ValueError) as exc:
        log.warning(
            "telemetry batch %s/%d from %s refused, not acked: %s", batch.boot_id, batch.sequence, device_id, exc
        )
        return
    # Waits while the outbox is full: a device that sends faster than it reads acks is slowed down.
    await handle.outbox.put(agent_pb2.ControlMessage(telemetry_ack=ack))


# --- FetchArtifact's wire format, built by hand ---
#
# A chunk is 1 MiB: building an ArtifactChunk copies the data into the message, serialising copies
# it again, and both ran on the event loop. Instead the handler writes the chunk's wire bytes, built
# in one join (a copy that releases the GIL) in the worker thread that read them, and FetchArtifact
# is registered with no response serializer (``add_gateway_to_server``). The bytes are exactly
# ``ArtifactChunk(offset=..., data=..., total_bytes=...).SerializeToString()`` (tests/unit/test_artifact_wire.py).


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_OFFSET_TAG = b"\x08"  # field 1, varint
_DATA_TAG = b"\x12"  # field 2, length-delimited
_TOTAL_TAG = b"\x18"  # field 3, varint


def encode_artifact_chunk(offset: int, data: bytes, total_bytes: int) -> bytes:
    """The wire bytes of ``ArtifactChunk(offset, data, total_bytes)``, fields in number order, zeros omitted."""
    head = (_OFFSET_TAG + _varint(offset) if offset else b"") + (_DATA_TAG + _varint(len(data)) if data else b"")
    tail = _TOTAL_TAG + _varint(total_bytes) if total_bytes else b""
    return b"".join((head, data, tail))


def _read_chunk(handle, offset: int, chunk_bytes: int, size: int) -> tuple[bytes, int]:
    """Read the next chunk of ``handle`` (positioned at ``offset``) in a worker thread: (wire bytes, data length)."""
    data = handle.read(min(chunk_bytes, size - offset))
    return encode_artifact_chunk(offset, data, size), len(data)


class _Captured:
    """Stands in for a server to catch the method handlers a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers arrive below, by name

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        self.handlers[service_name] = dict(handlers)


def add_gateway_to_server(servicer: GatewayService, server: grpc.aio.Server) -> None:
    """Register the AgentGateway service: the generated handlers, but FetchArtifact sends ready wire bytes."""
    captured = _Captured()
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, captured)
    if not captured.handlers:  # generated code of another grpcio-tools registers differently
        raise RuntimeError("the generated AgentGateway registration changed: FetchArtifact cannot be registered")
    for service_name, handlers in captured.handlers.items():
        fetch = handlers["FetchArtifact"]
        handlers["FetchArtifact"] = grpc.unary_stream_rpc_method_handler(
            servicer.FetchArtifact, request_deserializer=fetch.request_deserializer, response_serializer=None
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
        server.add_registered_method_handlers(service_name, handlers)
