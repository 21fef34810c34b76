"""The local inference API's second transport: the same protobuf messages, framed over a plain unix socket.

A Python gRPC unary call across processes costs about 0.45 ms on a small device before any work is
done (docs/PERFORMANCE.md, "Local inference"); for a sub-millisecond model that is most of the
answer's time. This socket, ``<data_dir>/inference-fast.sock`` (mode 0660, like the gRPC one),
carries the very same ``LocalInference`` request and response messages with a 5-byte header, and
is served by the same ``LocalInferenceService`` code (same activation semantics, same telemetry,
``served_by`` in every answer). Apps that do not care about a few tenths of a millisecond keep
using gRPC.

Wire format (all integers big-endian):

- once per connection, the client sends ``PREAMBLE`` (4 bytes, the protocol version);
- request frame: ``u32 length``, ``u8 method`` (``METHODS``), then ``length`` bytes: the request message;
- response frame: ``u32 length``, ``u8 status`` (the gRPC status code numbers: 0 OK, 3
  INVALID_ARGUMENT, 9 FAILED_PRECONDITION, ...), then ``length`` bytes: the response message when
  the status is 0, else the error details as UTF-8.

Requests on one connection are answered one by one, in order; connections are served concurrently
(asyncio; a model slower than ``INLINE_BELOW_MS`` runs in a worker thread, as over gRPC).

Bounds, like every network input: a request frame is at most ``MAX_REQUEST_BYTES`` (16 MiB, the
gRPC limit); at most ``MAX_CONNECTIONS`` connections at once (one more is answered
RESOURCE_EXHAUSTED and closed); a frame's body must arrive within ``FRAME_SECONDS`` once its
header has. An unknown method id is answered UNIMPLEMENTED and a body that is not the method's
request message INVALID_ARGUMENT, and the connection stays usable; a wrong preamble, an oversize
frame, a stalled body or a connection cut in the middle of a frame closes the connection, with
the reason logged.

This module imports neither grpc nor the agent's serving code, so an app can use ``LocalClient``
with only ``protobuf`` (and ``protos``) installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos.edgefleet.v1 import inference_pb2

if TYPE_CHECKING:
    from agent.local_api import LocalInferenceService

log = logging.getLogger("edgefleet.agent.local_fast")

FAST_SOCKET_NAME = "inference-fast.sock"
PREAMBLE = b"EFI1"
HEADER = struct.Struct(">IB")
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_RESPONSE_BYTES = 128 * 1024 * 1024
MAX_CONNECTIONS = 32
FRAME_SECONDS = 10.0
MAX_DETAILS_BYTES = 1024

# Status codes: the gRPC numbers, so an answer means the same on both transports.
OK = 0
STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
}
STATUS_CODES = {name: code for code, name in STATUS_NAMES.items()}


class LocalApiError(Exception):
    """A local API call failed. ``code`` is the gRPC status name (e.g. ``"FAILED_PRECONDITION"``)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Method:
    id: int
    name: str  # the gRPC method name
    handler: str  # the LocalInferenceService coroutine that answers it
    request: Any
    response: Any


METHODS = {
    m.id: m
    for m in (
        Method(1, "Infer", "infer", inference_pb2.InferRequest, inference_pb2.InferResponse),
        Method(2, "Understand", "understand", inference_pb2.UnderstandRequest, inference_pb2.UnderstandResponse),
        Method(3, "Recognize", "recognize", inference_pb2.RecognizeRequest, inference_pb2.RecognizeResponse),
        Method(
            4,
            "AcquireActivationLock",
            "acquire_activation_lock",
            inference_pb2.AcquireActivationLockRequest,
            inference_pb2.ActivationLock,
        ),
        Method(
            5,
            "ReleaseActivationLock",
            "release_activation_lock",
            inference_pb2.ReleaseActivationLockRequest,
            inference_pb2.ReleaseActivationLockResponse,
        ),
        Method(6, "GetStatus", "get_status", inference_pb2.GetStatusRequest, inference_pb2.GetStatusResponse),
    )
}
METHOD_IDS = {m.name: m.id for m in METHODS.values()}


def fast_socket_path(data_dir: Path) -> Path:
    return data_dir / FAST_SOCKET_NAME


# --- server ------------------------------------------------------------------------


class FastServer:
    """Serves ``service`` on a unix socket; ``close()`` stops listening and drops every connection."""

    def __init__(self, service: LocalInferenceService, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.service = service
        self.max_connections = max_connections
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task, asyncio.StreamWriter] = {}

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()  # a stale socket from a killed agent
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o660)
        self.path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task, writer in list(self._connections.items()):
            writer.close()
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self.max_connections:
            log.warning("refused a fast local API connection: %d connections already open", len(self._connections))
            await self._finish(writer, 8, f"too many connections (max {self.max_connections})")
            return
        self._connections[task] = writer
        try:
            reason = await self._frames(reader, writer)
            if reason:
                log.warning("closed a fast local API connection: %s", reason)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("a fast local API client went away")
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - one broken connection must not take the server down
            log.exception("fast local API connection failed")
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        """Answer frames until the client leaves (None) or breaks the protocol (the reason)."""
        try:
            async with asyncio.timeout(FRAME_SECONDS):
                preamble = await reader.readexactly(len(PREAMBLE))
        except TimeoutError:
            return "no preamble"
        except asyncio.IncompleteReadError as exc:
            return f"bad preamble {exc.partial!r}" if exc.partial else None
        if preamble != PREAMBLE:
            await self._finish(writer, 3, f"not an edgefleet fast local API client (preamble {preamble!r})")
            return f"bad preamble {preamble!r}"
        service = self.service
        while True:
            try:
                header = await reader.readexactly(HEADER.size)
            except asyncio.IncompleteReadError as exc:
                return f"cut in a frame header ({len(exc.partial)} bytes)" if exc.partial else None
            length, method_id = HEADER.unpack(header)
            if length > MAX_REQUEST_BYTES:
                await self._finish(writer, 8, f"request of {length} bytes is over the {MAX_REQUEST_BYTES} byte limit")
                return f"oversize frame ({length} bytes)"
            try:
                async with asyncio.timeout(FRAME_SECONDS):
                    body = await reader.readexactly(length)
            except TimeoutError:
                return f"frame body of {length} bytes not sent within {FRAME_SECONDS:g} s"
            except asyncio.IncompleteReadError as exc:
                return f"cut in a frame body ({len(exc.partial)} of {length} bytes)"
            status, payload = await self._answer(service, method_id, body)
            if writer.is_closing():
                return None
            writer.write(HEADER.pack(len(payload), status) + payload)
            await writer.drain()  # a client that does not read holds up only its own connection

    async def _answer(self, service: LocalInferenceService, method_id: int, body: bytes) -> tuple[int, bytes]:
        method = METHODS.get(method_id)
        if method is None:
            return 12, f"unknown method id {method_id}".encode()
        try:
            request = method.request.FromString(body)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError, or a RuntimeWarning-turned-error
            return 3, f"the body is not a {method.request.DESCRIPTOR.name}".encode()
        try:
            response = await getattr(service, method.handler)(request)
        except LocalApiError as exc:
            return STATUS_CODES.get(exc.code, 2), exc.details.encode()[:MAX_DETAILS_BYTES]
        except Exception as exc:  # noqa: BLE001 - a bug answers UNKNOWN, as over gRPC; the connection stays
            log.exception("fast local API %s failed", method.name)
            return 2, f"Unexpected {type(exc)}: {exc}".encode()[:MAX_DETAILS_BYTES]
        payload = response.SerializeToString()
        if len(payload) > MAX_RESPONSE_BYTES:
            return 8, f"response of {len(payload)} bytes is over the {MAX_RESPONSE_BYTES} byte limit".encode()
        return OK, payload

    @staticmethod
    async def _finish(writer: asyncio.StreamWriter, status: int, details: str) -> None:
        """Send one error frame, then close."""
        payload = details.encode()[:MAX_DETAILS_BYTES]
        with contextlib.suppress(ConnectionError):
            writer.write(HEADER.pack(len(payload), status) + payload)
            await writer.drain()
        writer.close()


async def start_fast_api(service: LocalInferenceService, data_dir: Path) -> FastServer:
    """Serve the local API on ``<data_dir>/inference-fast.sock`` (mode 0660)."""
    server = FastServer(service)
    await server.start(fast_socket_path(data_dir))
    return server


# --- client ------------------------------------------------------------------------


class LocalClient:
    """A blocking client for the fast socket, one connection, safe to share between threads (calls
    take turns). The methods mirror the gRPC stub's and take and return the same messages; a failed
    call raises ``LocalApiError`` with the gRPC status name. After a transport error or a timeout the
    connection is dropped and the next call opens a new one.

    ``target`` is the agent's data dir or the socket's path.
    """

    def __init__(self, target: Path | str, *, timeout: float | None = 30.0) -> None:
        target = Path(target)
        self.path = fast_socket_path(target) if target.is_dir() else target
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def infer(
        self, request: inference_pb2.InferRequest, *, timeout: float | None = None
    ) -> inference_pb2.InferResponse:
        return self.call("Infer", request, timeout=timeout)

    def understand(
        self, request: inference_pb2.UnderstandRequest, *, timeout: float | None = None
    ) -> inference_pb2.UnderstandResponse:
        return self.call("Understand", request, timeout=timeout)

    def recognize(
        self, request: inference_pb2.RecognizeRequest, *, timeout: float | None = None
    ) -> inference_pb2.RecognizeResponse:
        return self.call("Recognize", request, timeout=timeout)

    def acquire_activation_lock(
        self, request: inference_pb2.AcquireActivationLockRequest, *, timeout: float | None = None
    ) -> inference_pb2.ActivationLock:
        return self.call("AcquireActivationLock", request, timeout=timeout)

    def release_activation_lock(
        self, request: inference_pb2.ReleaseActivationLockRequest, *, timeout: float | None = None
    ) -> inference_pb2.ReleaseActivationLockResponse:
        return self.call("ReleaseActivationLock", request, timeout=timeout)

    def get_status(
        self, request: inference_pb2.GetStatusRequest | None = None, *, timeout: float | None = None
    ) -> inference_pb2.GetStatusResponse:
        return self.call("GetStatus", request or inference_pb2.GetStatusRequest(), timeout=timeout)

    def call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """Send one request of the gRPC method ``method``; returns its response message."""
        spec = METHODS[METHOD_IDS[method]]
        body = request.SerializeToString()
        if len(body) > MAX_REQUEST_BYTES:
            raise LocalApiError(
                "RESOURCE_EXHAUSTED", f"request of {len(body)} bytes is over the {MAX_REQUEST_BYTES} byte limit"
            )
        with self._lock:
            try:
                sock = self._connected()
                if timeout is not None:
                    sock.settimeout(timeout)
                sock.sendall(HEADER.pack(len(body), spec.id) + body)
                length, status = HEADER.unpack(self._read(sock, HEADER.size))
                if length > MAX_RESPONSE_BYTES:
                    raise ConnectionError(f"the agent sent a {length} byte frame")
                payload = self._read(sock, length)
                if timeout is not None:
                    sock.settimeout(self.timeout)
            except TimeoutError as exc:
                self._drop()
                raise LocalApiError("DEADLINE_EXCEEDED", f"no answer from {self.path} in time") from exc
            except OSError as exc:  # ConnectionError and socket errors
                self._drop()
                raise LocalApiError("UNAVAILABLE", f"{self.path}: {exc}") from exc
        if status != OK:
            if status == STATUS_CODES["RESOURCE_EXHAUSTED"]:
                self._drop_safely()  # the agent closes the connection after this answer
            raise LocalApiError(STATUS_NAMES.get(status, f"STATUS_{status}"), payload.decode(errors="replace"))
        return spec.response.FromString(payload)

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(PREAMBLE)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def _drop_safely(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _read(sock: socket.socket, size: int) -> bytes:
        if size == 0:
            return b""
        chunk = sock.recv(size)
        if len(chunk) == size:
            return chunk
        buffer = bytearray(chunk)
        while len(buffer) < size:
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            chunk = sock.recv(size - len(buffer))
            buffer += chunk
        return bytes(buffer)
