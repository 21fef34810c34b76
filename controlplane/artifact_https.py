"""HTTPS artifact downloads: blobs by sha256 on a port of their own, for devices.

Why a listener besides ``AgentGateway.FetchArtifact``: measured on a 2-core machine, a gRPC stream in
Python moves at most about half of what a plain socket does before the device hashes or writes
anything (docs/PERFORMANCE.md); the same bytes over a plain TLS socket leave room for the device's
sha256, write and fsync. Sessions, manifests and everything else stay on gRPC (or MQTT). ADR 0013.

Wire contract (docs/WIRE.md, "Artifacts over HTTPS"): one request per connection,
``GET /v1/artifacts/<sha256> HTTP/1.1`` with an optional ``Range: bytes=<offset>-``; the answer is
``200`` (the whole blob) or ``206`` (from the offset, with ``Content-Range``) and exactly
``Content-Length`` bytes, or an error status with a short plain-text reason; then the server closes.

Invariants:
- Mutual TLS with the edgefleet CA: a connection without a client certificate, or with one the CA did
  not issue, ends in the handshake. The certificate must then be the device's current one (common name
  and fingerprint as recorded at enrollment) and the device not revoked, and the blob must be listed by
  a build of the device's desired state or pending benchmark jobs: the same checks, in the same code,
  as ``FetchArtifact`` (``gateway.device_for_certificate``, ``desired.allowed_blob_size``).
- Input is bounded: the request head is at most ``MAX_HEAD_BYTES`` and must arrive within
  ``REQUEST_TIMEOUT_SECONDS`` of the handshake; only ``GET`` of ``/v1/artifacts/<64 lowercase hex>``
  with at most a ``Range: bytes=N-`` is served; anything else gets 400/404/405/416 and a reason.
  Nothing is ever written: this listener only reads blobs.
- At most ``max_connections`` connections are handled at once; one more is answered 503 and closed.
- Each connection runs in its own thread with blocking sockets (reads and TLS writes release the GIL);
  the event loop is asked only the store questions (``run_coroutine_threadsafe``), so a slow device
  holds up no session. A device that stops reading is cut after ``SEND_TIMEOUT_SECONDS``.
- ``artifact_bytes_per_second`` caps each download, as on ``FetchArtifact``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from controlplane.blobs import BlobNotFound
from controlplane.errors import PermissionDenied, Unauthenticated
from controlplane.pki import certificate_sha256
from controlplane.services.desired import allowed_blob_size
from controlplane.store import errors as store_errors

if TYPE_CHECKING:
    from controlplane.services.context import Services

log = logging.getLogger("edgefleet.server.artifacts")

PATH_PREFIX = "/v1/artifacts/"
MAX_HEAD_BYTES = 8 * 1024
MAX_CONNECTIONS = 64
HANDSHAKE_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 10.0  # from the end of the handshake to the end of the request head
SEND_TIMEOUT_SECONDS = 60.0  # a device that reads nothing for this long is cut
STORE_TIMEOUT_SECONDS = 30.0
CHUNK_BYTES = 1 << 20

_TARGET = re.compile(r"/v1/artifacts/([0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(\d{1,19})-")
_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """A request refused with ``status``; the message is the reason sent to the device."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Request:
    sha256: str
    offset: int


def parse_request(head: bytes) -> Request:
    """The blob and offset a request head asks for (pure). Raises HttpError (400, 404 or 405)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "the request head must be ASCII") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line {request_line[:80]!r}")
    method, target, _version = parts
    if method != "GET":
        raise HttpError(405, f"only GET is served here, not {method[:16]!r}")
    match = _TARGET.fullmatch(target)
    if match is None:
        raise HttpError(404, f"no such resource {target[:100]!r}: ask for {PATH_PREFIX}<sha256, 64 lowercase hex>")
    offset = 0
    seen_range = False
    for line in header_lines:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        if name.lower() == "range":
            if seen_range:
                raise HttpError(400, "more than one Range header")
            seen_range = True
            ranged = _RANGE.fullmatch(value.strip())
            if ranged is None:
                raise HttpError(400, f"only Range: bytes=<offset>- is supported, not {value.strip()[:60]!r}")
            offset = int(ranged.group(1))
    return Request(match.group(1), offset)


def response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("ascii")


def error_response(status: int, reason: str) -> bytes:
    body = reason[:1000].encode("utf-8", "replace")
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    return response_head(status, headers) + body


def server_context(chain_pem: bytes, key_pem: bytes, ca_pem: bytes, scratch: Path) -> ssl.SSLContext:
    """The listener's TLS settings: this server's certificate, client certificates from the edgefleet CA.

    ``ssl`` loads a key only from a file: it is written owner-only under ``scratch`` and removed at once.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    context.set_alpn_protocols(["http/1.1"])
    # A device that closes its sending side without a TLS close_notify still gets its answer.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    fd, name = tempfile.mkstemp(prefix=".artifact-tls-", suffix=".pem", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key_pem + b"\n" + chain_pem)
        context.load_cert_chain(name)
    finally:
        os.unlink(name)
    return context


class ArtifactServer:
    """The HTTPS artifact listener: an accept thread and a thread per connection."""

    def __init__(
        self,
        services: Services,
        context: ssl.SSLContext,
        *,
        loop: asyncio.AbstractEventLoop,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = services
        self._context = context
        self._loop = loop
        self._max = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._clock = clock
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.served = 0  # downloads sent to the end (for tests and logs)

    def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 = any free port); returns the bound port. Raises OSError."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=128, reuse_port=False)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept_loop, name="artifact-https-accept", daemon=True)
        self._accepting.start()
        return listener.getsockname()[1]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut open downloads (devices resume later) and wait for the threads."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            open_now = list(self._open)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._accepting is not None:
            self._accepting.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._open:
                    break
            time.sleep(0.02)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: do not spin
                continue
            if not self._slots.acquire(blocking=False):
                threading.Thread(target=self._refuse_busy, args=(conn,), daemon=True).start()
                continue
            with self._lock:
                self._open.add(conn)
            threading.Thread(target=self._handle, args=(conn, peer), name="artifact-https", daemon=True).start()

    def _refuse_busy(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            conn.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
            with contextlib.suppress(OSError, ssl.SSLError):
                tls = self._context.wrap_socket(conn, server_side=True)
                tls.sendall(error_response(503, f"more than {self._max} downloads at once; try again"))
                tls.close()

    def _handle(self, conn: socket.socket, peer) -> None:
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
            try:
                tls = self._context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.info("artifact download from %s refused in the TLS handshake: %s", peer[0], exc)
                return
            with contextlib.closing(tls):
                self._serve(tls, peer)
        except Exception:  # noqa: BLE001 - one connection must never take the listener down
            log.exception("artifact download from %s failed", peer[0])
        finally:
            with self._lock:
                self._open.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()

    def _serve(self, tls: ssl.SSLSocket, peer) -> None:
        try:
            self._answer(tls, peer)
        except (OSError, ssl.SSLError) as exc:
            log.info("artifact download from %s ended: %s", peer[0], exc)

    def _answer(self, tls: ssl.SSLSocket, peer) -> None:
        try:
            head = _read_head(tls, self._clock() + REQUEST_TIMEOUT_SECONDS, self._clock)
            request = parse_request(head)
            common_name, fingerprint = _peer_identity(tls)
            device_id, size = self._authorize(common_name, fingerprint, request.sha256)
            if request.offset > size:
                raise HttpError(416, f"offset {request.offset} is past the end of blob {request.sha256} ({size} bytes)")
            try:
                handle = self.s.blobs.open_at(request.sha256, request.offset)
            except BlobNotFound as exc:
                raise HttpError(404, str(exc)) from exc
        except HttpError as exc:
            log.info("artifact download from %s refused (%d): %s", peer[0], exc.status, exc)
            with contextlib.suppress(OSError, ssl.SSLError):
                tls.sendall(error_response(exc.status, str(exc)))
            return
        with handle:
            self._send(tls, handle, request, size, device_id)

    def _authorize(self, common_name: str, fingerprint: str, sha256: str) -> tuple[str, int]:
        """(device id, blob size) if this certificate's device may fetch the blob. Raises HttpError."""
        future = asyncio.run_coroutine_threadsafe(_allowed(self.s, common_name, fingerprint, sha256), self._loop)
        try:
            return future.result(STORE_TIMEOUT_SECONDS)
        except (Unauthenticated, PermissionDenied) as exc:
            raise HttpError(403, str(exc)) from exc
        except store_errors.StoreError as exc:
            raise HttpError(503, f"the control plane's store is unavailable: {exc}") from exc
        except FutureTimeout as exc:
            future.cancel()
            raise HttpError(503, "the control plane is busy; try again") from exc

    def _send(self, tls: ssl.SSLSocket, handle, request: Request, size: int, device_id: str) -> None:
        length = size - request.offset
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if request.offset:
            headers["Content-Range"] = f"bytes {request.offset}-{size - 1}/{size}"
        headers["Connection"] = "close"
        tls.settimeout(SEND_TIMEOUT_SECONDS)
        rate = self.s.config.artifact_bytes_per_second
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        sent = 0
        started = self._clock()
        try:
            tls.sendall(response_head(206 if request.offset else 200, headers))
            while sent < length and not self._stopping.is_set():
                count = handle.readinto(view[: min(CHUNK_BYTES, length - sent)])
                if not count:  # the blob file is shorter than its manifest says: never pad
                    log.error("blob %s ended at %d of %d bytes", request.sha256, request.offset + sent, size)
                    return
                tls.sendall(view[:count])
                sent += count
                if rate:  # keep this download at or under the configured bandwidth
                    ahead = sent / rate - (self._clock() - started)
                    if ahead > 0:
                        self._stopping.wait(ahead)
        except (OSError, ssl.SSLError) as exc:
            # The device went away (cut link, cancelled fetch) or stopped reading: it resumes from its offset.
            log.debug("artifact download of %s to %s ended at %d: %r", request.sha256[:12], device_id, sent, exc)
            return
        if sent == length:
            self.served += 1
            log.debug("artifact %s sent to %s (%d bytes from %d)", request.sha256[:12], device_id, sent, request.offset)
            with contextlib.suppress(OSError, ssl.SSLError):
                tls.unwrap()  # close_notify, so the device can tell a whole answer from a cut one


async def _allowed(s: Services, common_name: str, fingerprint: str, sha256: str) -> tuple[str, int]:
    from controlplane.services.gateway import device_for_certificate  # gateway imports grpc; this module not

    device = await device_for_certificate(s, common_name, fingerprint)
    return device.device_id, await allowed_blob_size(s, device.device_id, sha256)


def _read_head(tls: ssl.SSLSocket, deadline: float, clock: Callable[[], float]) -> bytes:
    """The request head up to and without its blank line. Raises HttpError (400) if too long or too slow."""
    head = bytearray()
    while True:
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(head[:end])
        if len(head) > MAX_HEAD_BYTES:
            raise HttpError(400, f"request head over {MAX_HEAD_BYTES} bytes")
        remaining = deadline - clock()
        if remaining <= 0:
            raise HttpError(400, f"no complete request within {REQUEST_TIMEOUT_SECONDS:.0f} s")
        tls.settimeout(remaining)
        try:
            data = tls.recv(MAX_HEAD_BYTES + 4 - len(head))
        except TimeoutError:
            raise HttpError(400, f"no complete request within {REQUEST_TIMEOUT_SECONDS:.0f} s") from None
        except ssl.SSLEOFError:  # the device closed its side without a TLS close_notify
            data = b""
        if not data:
            raise HttpError(400, "the connection closed before the request was complete")
        head += data


def _peer_identity(tls: ssl.SSLSocket) -> tuple[str, str]:
    """(common name, sha256 fingerprint) of the verified client certificate."""
    der = tls.getpeercert(binary_form=True)
    info = tls.getpeercert()
    if not der or not info:
        raise HttpError(403, "a device certificate is required on this port")
    names = [value for rdn in info.get("subject", ()) for key, value in rdn if key == "commonName"]
    if len(names) != 1:
        raise HttpError(403, "the client certificate has no single common name")
    return names[0], certificate_sha256(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))
