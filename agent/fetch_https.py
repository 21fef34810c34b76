"""Downloading artifacts over the control plane's HTTPS artifact port, with ``agent.fetch``'s invariants.

The wire: one mutual-TLS connection per blob to (the device endpoint's host, ``Welcome.artifact_port``),
``GET /v1/artifacts/<sha256>``, with ``Range: bytes=<offset>-`` when resuming a part file. The answer is
200 (206 with ``Content-Range: bytes <offset>-<size-1>/<size>`` to a range) with ``Content-Length`` = the
bytes asked for, then the server closes; or an error status (400, 403, 404, 405, 416, 503) with a short
plain-text reason.

Invariants, on top of those of ``agent.fetch`` (part file, resume, size cap, stall and throughput rules,
sha256 over the whole file, fsync, atomic rename):
- Nothing from the server is read unbounded: status line and headers at most 16 KiB, an error body at
  most 1 KiB, a body never past the manifest's size. A response that announces anything but exactly
  the bytes asked for (status, ``Content-Length``, ``Content-Range``) is refused before a byte is written;
  bytes after the announced body are "endless data", refused (not retryable).
- The transfer runs on two threads: one receives (a blocking TLS socket, ``recv_into`` 1 MiB buffers),
  one writes and hashes and, every 8 MiB, asks a third to start an ``fdatasync``
  (``agent.fetch.BackgroundSync``): the disk writes while bytes arrive, so the final ``fsync`` is short.
  A few buffers cycle between the first two, so memory stays bounded. ``progress`` runs on the event loop
  (``call_soon_threadsafe``), after each buffer is written.
- When the awaiting task is cancelled, the threads are told to stop (an event checked per chunk, and
  the socket shut down) and awaited: no thread touches the part file after ``fetch_blob_https`` has
  returned or raised.
- A failure before the response's status line arrived (refused, unreachable, TLS handshake failed,
  timeout) raises ``ArtifactPortUnavailable``, a retryable ``FetchError``: nothing was written, so the
  caller may fetch over gRPC instead. 403 and 404 are not retryable; the other error statuses are.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import IdentityError
from agent.fetch import (
    SYNC_EVERY_BYTES,
    BackgroundSync,
    FetchError,
    FetchPolicy,
    FetchResult,
    PartialBlob,
    check_throughput,
    finish_part,
    oversize_error,
    resume_part,
    stall_error,
    stored_blob,
    wait_out,
)
from agent.identity import CA_FILE, CERT_FILE, KEY_FILE, Identity

__all__ = [
    "ArtifactPortUnavailable",
    "HttpsEndpoint",
    "client_context",
    "device_https_endpoint",
    "fetch_blob_https",
]

CONNECT_TIMEOUT_SECONDS = 10.0  # TCP connect and TLS handshake; never more than the policy's stall_seconds
MAX_HEAD_BYTES = 16 * 1024  # status line and headers
MAX_ERROR_BODY_BYTES = 1024
BUFFER_BYTES = 1 << 20
BUFFERS = 8  # cycling between the receiving and the writing thread: at most 4 MiB in flight
CHECK_SECONDS = 0.05  # how often the receiving loop looks at the stop flag and the throughput rule
HANDOFF_SECONDS = 0.25  # a buffer not yet full goes to the writer after this, so progress moves on slow links
CLOSE_WAIT_SECONDS = 1.0  # after the body, how long to wait for the server's close (bytes instead: endless data)
NOT_RETRYABLE = frozenset({403, 404})
DEFAULT_POLICY = FetchPolicy()

_SHA256 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+)", re.IGNORECASE)


class ArtifactPortUnavailable(FetchError):
    """No response came from the HTTPS artifact port (refused, unreachable, TLS handshake failed, timeout).

    Nothing was written to the part file: fetching the blob another way instead is safe.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


@dataclass(frozen=True)
class HttpsEndpoint:
    """Where the HTTPS artifact listener is, the name its certificate must carry, and the client's TLS context."""

    host: str
    port: int
    server_name: str
    context: ssl.SSLContext

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def client_context(ca: Path | str | bytes, cert_path: Path | str, key_path: Path | str) -> ssl.SSLContext:
    """A mutual-TLS client context: TLS 1.2 or later, the server verified against ``ca`` (a PEM file's path, or
    PEM bytes), the client certificate and key from their files, ALPN ``http/1.1``.

    Raises ``IdentityError`` naming the file that cannot be used.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        if isinstance(ca, bytes):
            context.load_verify_locations(cadata=ca.decode("ascii"))
        else:
            context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError, ValueError) as exc:
        where = "the CA certificate given" if isinstance(ca, bytes) else str(ca)
        raise IdentityError(f"cannot use {where} to verify the control plane: {exc}; re-join the device") from exc
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise IdentityError(
            f"cannot use the device certificate {cert_path} with key {key_path}: {exc}; re-join the device"
        ) from exc
    return context


def device_https_endpoint(identity: Identity, folder: Path, port: int = 0) -> HttpsEndpoint:
    """The HTTPS artifact endpoint on the device endpoint's host, as the device whose identity files are in
    ``folder`` (``agent.identity.identity_dir``). ``port`` comes from the Welcome. Raises ``IdentityError``."""
    host = identity.device_endpoint.rpartition(":")[0] or identity.device_endpoint
    context = client_context(folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE)
    return HttpsEndpoint(host.strip("[]"), port, identity.tls_server_name, context)


async def fetch_blob_https(
    endpoint: HttpsEndpoint,
    sha256: str,
    size: int,
    directory: Path,
    *,
    policy: FetchPolicy = DEFAULT_POLICY,
    progress: Callable[[int], None] | None = None,
) -> FetchResult:
    """Fetch blob sha256 of exactly size bytes into directory over HTTPS (see ``agent.fetch.fetch_blob``).

    Raises ``FetchError``; ``ArtifactPortUnavailable`` when no response came (nothing was written).
    """
    if not _SHA256.fullmatch(sha256):
        raise FetchError(f"{sha256[:80]!r} is not a sha256 in lowercase hex", retryable=False)
    if (stored := stored_blob(sha256, size, directory, progress)) is not None:
        return stored
    partial = await resume_part(sha256, size, directory, progress)
    resumed_from = partial.offset
    received = 0
    if partial.offset < size:
        transfer = _Transfer(endpoint, sha256, size, partial, policy, progress, asyncio.get_running_loop())
        received = await transfer.run()
        partial.offset += received
    final = finish_part(partial, sha256, size, directory)
    return FetchResult(final, received, resumed_from)


# --- the wire: pure functions ------------------------------------------------------------------------


def request_bytes(sha256: str, offset: int, server_name: str) -> bytes:
    lines = [f"GET /v1/artifacts/{sha256} HTTP/1.1", f"Host: {server_name}"]
    if offset:
        lines.append(f"Range: bytes={offset}-")
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("ascii")


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]  # names in lower case


_SINGLE_HEADERS = ("content-length", "content-range", "transfer-encoding")


def parse_head(head: bytes) -> ResponseHead:
    """Parse a status line and headers (without the blank line). Raises ``FetchError`` (retryable) if malformed."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not _DIGITS.fullmatch(code):
        raise FetchError(
            f"the artifact server's answer is not HTTP/1.x: {_printable(status_line[:80])!r}", retryable=True
        )
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise FetchError(
                f"malformed header line from the artifact server: {_printable(line[:80])!r}", retryable=True
            )
        key, value = name.lower(), value.strip(" \t")
        if key in _SINGLE_HEADERS and headers.get(key, value) != value:
            raise FetchError(f"the artifact server sent conflicting {name} headers", retryable=True)
        headers[key] = value
    return ResponseHead(int(code), reason.strip(), headers)


def check_success(head: ResponseHead, sha256: str, offset: int, size: int) -> None:
    """Refuse a 2xx head that does not announce exactly bytes ``offset``..``size - 1``. Raises ``FetchError``."""
    expected = 206 if offset else 200
    asked = f"bytes {offset}-" if offset else "the whole blob"
    if head.status != expected:
        raise FetchError(
            f"the artifact server answered {head.status} {head.reason} to a request for {asked} of "
            f"{sha256[:12]}, not {expected}: refused",
            retryable=True,
        )
    if "transfer-encoding" in head.headers:
        raise FetchError(f"the artifact server sent {sha256[:12]} with a Transfer-Encoding: refused", retryable=True)
    length_text = head.headers.get("content-length", "")
    if not _DIGITS.fullmatch(length_text):
        raise FetchError(
            f"the artifact server sent {sha256[:12]} without a valid Content-Length ({length_text[:40]!r}): refused",
            retryable=True,
        )
    length, rest = int(length_text), size - offset
    if length > rest:
        raise FetchError(
            f"the artifact server announced {length} bytes from offset {offset} for {sha256[:12]}, more than "
            f"the manifest's {size} bytes: refused",
            retryable=False,
        )
    if length < rest:
        raise FetchError(
            f"the artifact server announced {length} bytes from offset {offset} for {sha256[:12]}, "
            f"not the {rest} asked for: refused",
            retryable=True,
        )
    if offset:
        found = _CONTENT_RANGE.fullmatch(head.headers.get("content-range", ""))
        if found is None or tuple(map(int, found.groups())) != (offset, size - 1, size):
            raise FetchError(
                f"the artifact server's Content-Range {head.headers.get('content-range', '')[:80]!r} for "
                f"{sha256[:12]} is not bytes {offset}-{size - 1}/{size}: refused",
                retryable=True,
            )


def error_for_status(head: ResponseHead, body: bytes, sha256: str, endpoint: HttpsEndpoint) -> FetchError:
    reason = _printable(body.decode("utf-8", "replace")).strip() or head.reason
    return FetchError(
        f"download of {sha256[:12]} from {endpoint} refused: HTTP {head.status} {head.reason}: {reason}",
        retryable=head.status not in NOT_RETRYABLE,
    )


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


# --- the transfer: two threads -----------------------------------------------------------------------


class _Stopped(Exception):
    """The transfer was told to stop (the task was cancelled, or the writer failed)."""


class _Transfer:
    """One HTTPS download of bytes ``partial.offset``..``size - 1`` into the part file, on two threads."""

    def __init__(
        self,
        endpoint: HttpsEndpoint,
        sha256: str,
        size: int,
        partial: PartialBlob,
        policy: FetchPolicy,
        progress: Callable[[int], None] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.endpoint, self.sha256, self.size, self.partial = endpoint, sha256, size, partial
        self.policy, self.progress, self.loop = policy, progress, loop
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._interrupt: socket.socket | None = None  # a dup of the connection's socket, shut down to stop it
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._filled: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self._complete = False  # every byte received and no more: the writer syncs the file
        self._write_error: BaseException | None = None

    async def run(self) -> int:
        """Transfer the rest into the part file; returns the bytes transferred. Raises ``FetchError``, ``OSError``
        (the part file), ``CancelledError`` only once both threads have ended."""
        done: asyncio.Future[int] = self.loop.create_future()
        thread = threading.Thread(target=self._receive_thread, args=(done,), name=f"fetch-{self.sha256[:12]}")
        thread.start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the cancellation below is raised anyway
                await wait_out(done)
            if not done.cancelled():
                done.exception()  # retrieved: the cancellation is what the caller sees
            raise

    def cancel(self) -> None:
        """Stop both threads soon: the flag for the next chunk, a shutdown for a blocked connect or receive."""
        self.stop.set()
        with self._lock:
            if self._interrupt is not None:
                with contextlib.suppress(OSError):
                    self._interrupt.shutdown(socket.SHUT_RDWR)

    def _receive_thread(self, done: asyncio.Future[int]) -> None:
        try:
            result, error = self._receive(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result, error = 0, exc
        finally:
            with self._lock:
                if self._interrupt is not None:
                    self._interrupt.close()
                    self._interrupt = None
        # The writer has ended and its progress calls are queued before this: none runs after the task resumes.
        self.loop.call_soon_threadsafe(_settle, done, result, error)

    def _receive(self) -> int:
        started = time.monotonic()
        with self._connect() as sock:
            try:
                sock.sendall(request_bytes(self.sha256, self.partial.offset, self.endpoint.server_name))
            except OSError as exc:
                self._raise_if_stopped()
                raise ArtifactPortUnavailable(f"HTTPS artifact port {self.endpoint}: request failed: {exc}") from exc
            head, rest = self._read_head(sock, time.monotonic() + self.policy.stall_seconds)
            if head.status >= 300 or head.status < 200:
                raise error_for_status(head, self._read_error_body(sock, head, rest), self.sha256, self.endpoint)
            check_success(head, self.sha256, self.partial.offset, self.size)
            if len(rest) > self.size - self.partial.offset:
                raise oversize_error(self.sha256, self.size)
            return self._receive_body(sock, rest, started)

    # --- connection and head ---

    def _connect(self) -> ssl.SSLSocket:
        """A TLS connection to the endpoint, or ``ArtifactPortUnavailable``."""
        endpoint = self.endpoint
        timeout = min(CONNECT_TIMEOUT_SECONDS, self.policy.stall_seconds)
        try:
            addresses = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ArtifactPortUnavailable(f"HTTPS artifact port {endpoint}: cannot resolve the host: {exc}") from exc
        failure: OSError | None = None
        for family, kind, proto, _, address in addresses:
            raw = socket.socket(family, kind, proto)
            try:
                self._watch(raw)
                raw.settimeout(timeout)
                raw.connect(address)
                return endpoint.context.wrap_socket(raw, server_hostname=endpoint.server_name)
            except ssl.SSLError as exc:  # the handshake (SSLCertVerificationError included)
                raw.close()
                self._raise_if_stopped()
                raise ArtifactPortUnavailable(f"HTTPS artifact port {endpoint}: TLS handshake failed: {exc}") from exc
            except OSError as exc:
                raw.close()
                self._raise_if_stopped()
                failure = exc
            except BaseException:
                raw.close()
                raise
        raise ArtifactPortUnavailable(f"HTTPS artifact port {endpoint} unreachable: {failure}")

    def _watch(self, raw: socket.socket) -> None:
        """Keep a duplicate of ``raw``: shutting it down wakes a connect, handshake or receive blocked on it."""
        with self._lock:
            if self.stop.is_set():
                raise _Stopped
            if self._interrupt is not None:
                self._interrupt.close()
            self._interrupt = raw.dup()

    def _raise_if_stopped(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def _read_head(self, sock: ssl.SSLSocket, deadline: float) -> tuple[ResponseHead, bytes]:
        """Read the status line and headers (by ``deadline``); returns them and the body bytes read with them."""
        data = bytearray()
        while (end := data.find(b"\r\n\r\n")) < 0:
            status_arrived = b"\r\n" in data
            if len(data) >= MAX_HEAD_BYTES:
                raise FetchError(
                    f"the artifact server's status line and headers for {self.sha256[:12]} exceed "
                    f"{MAX_HEAD_BYTES} bytes: refused",
                    retryable=True,
                )
            try:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(MAX_HEAD_BYTES - len(data))
            except OSError as exc:  # TimeoutError and ssl.SSLError included
                self._raise_if_stopped()
                if not status_arrived:
                    raise ArtifactPortUnavailable(f"HTTPS artifact port {self.endpoint}: no response: {exc}") from exc
                if isinstance(exc, TimeoutError):
                    raise stall_error(self.sha256, self.policy) from exc
                raise FetchError(f"the artifact server's headers were cut: {exc}", retryable=True) from exc
            if not chunk:
                self._raise_if_stopped()
                if not status_arrived:
                    raise ArtifactPortUnavailable(f"HTTPS artifact port {self.endpoint} closed without a response")
                raise FetchError(
                    "the artifact server closed the connection in the middle of its headers", retryable=True
                )
            data += chunk
        return parse_head(bytes(data[:end])), bytes(data[end + 4 :])

    def _read_error_body(self, sock: ssl.SSLSocket, head: ResponseHead, rest: bytes) -> bytes:
        """Up to ``MAX_ERROR_BODY_BYTES`` of an error's body: what arrives within ``stall_seconds``, best effort."""
        length_text = head.headers.get("content-length", "")
        limit = min(int(length_text), MAX_ERROR_BODY_BYTES) if _DIGITS.fullmatch(length_text) else MAX_ERROR_BODY_BYTES
        body = bytearray(rest[:limit])
        deadline = time.monotonic() + self.policy.stall_seconds
        with contextlib.suppress(OSError):
            while len(body) < limit and time.monotonic() < deadline:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(limit - len(body))
                if not chunk:
                    break
                body += chunk
        return bytes(body)

    # --- body ---

    def _receive_body(self, sock: ssl.SSLSocket, first: bytes, started: float) -> int:
        for _ in range(BUFFERS):
            self._free.put(bytearray(BUFFER_BYTES))
        with self.partial.path.open("ab", buffering=0) as out:
            writer = threading.Thread(target=self._write_thread, args=(out,), name=f"fetch-{self.sha256[:12]}-write")
            writer.start()
            try:
                received = self._pump(sock, first, started)
                self._expect_close(sock)
                self._complete = True
            except _Stopped:
                if self._write_error is None:
                    raise
            finally:
                self._filled.put(None)
                writer.join()
        if self._write_error is not None:
            raise self._write_error
        return received

    def _pump(self, sock: ssl.SSLSocket, first: bytes, started: float) -> int:
        """Receive the body into buffers handed to the writer; returns the bytes received (all of them)."""
        rest = self.size - self.partial.offset
        received = 0
        next_check = 0.0
        sock.settimeout(self.policy.stall_seconds)
        while received < rest:
            self._raise_if_stopped()
            buffer = self._free.get()  # waits only while the writer holds every buffer
            view = memoryview(buffer)
            want = min(len(buffer), rest - received)
            filled = len(first)  # body bytes that came with the headers (checked: at most the rest)
            view[:filled] = first
            first, ended = b"", False
            try:
                # The loop runs once per TLS record (16 KiB): it does no more than it must. The stop flag and
                # the throughput rule are checked at most every CHECK_SECONDS (a cancel also shuts the socket).
                handoff_at = time.monotonic() + HANDOFF_SECONDS
                recv_into = sock.recv_into
                while filled < want:
                    try:
                        count = recv_into(view[filled:want])
                    except OSError as exc:  # TimeoutError and ssl.SSLError included
                        raise self._receive_error(exc) from exc
                    if count == 0:
                        ended = True
                        break
                    filled += count
                    now = time.monotonic()
                    if now >= next_check:
                        self._raise_if_stopped()
                        check_throughput(self.sha256, received + filled, now - started, self.policy)
                        next_check = now + CHECK_SECONDS
                    if now >= handoff_at:
                        break
            finally:
                if filled:
                    self._filled.put((buffer, filled))  # valid bytes at the right offset: kept for a resume
                    received += filled
                else:
                    self._free.put(buffer)
            if ended:
                self._raise_if_stopped()
                raise FetchError(
                    f"download of {self.sha256[:12]} ended at {self.partial.offset + received} of {self.size} bytes",
                    retryable=True,
                )
        return received

    def _receive_error(self, exc: OSError) -> FetchError:
        """The FetchError for a failed receive (``_Stopped`` is raised instead when the transfer was stopped)."""
        self._raise_if_stopped()
        if isinstance(exc, TimeoutError):
            return stall_error(self.sha256, self.policy)
        return FetchError(f"download of {self.sha256[:12]} from {self.endpoint} failed: {exc}", retryable=True)

    def _expect_close(self, sock: ssl.SSLSocket) -> None:
        """After the whole body, the server closes; a byte more is endless data, refused."""
        sock.settimeout(min(CLOSE_WAIT_SECONDS, self.policy.stall_seconds))
        try:
            extra = sock.recv(1)
        except OSError:  # no close yet, or not a clean one: the body is whole either way
            return
        if extra:
            raise oversize_error(self.sha256, self.size)

    def _write_thread(self, out) -> None:
        """Write and hash the filled buffers in order; start a sync every ``SYNC_EVERY_BYTES``, fsync at the end."""
        written = unsynced = 0
        syncer = BackgroundSync(out.fileno(), self.sha256)
        while (item := self._filled.get()) is not None:
            buffer, length = item
            if self._write_error is None and not self.stop.is_set():
                try:
                    data = view = memoryview(buffer)[:length]
                    while view:
                        view = view[out.write(view) :]
                    self.partial.digest.update(data)
                    written += length
                    unsynced += length
                    if unsynced >= SYNC_EVERY_BYTES:
                        syncer.request()
                        unsynced = 0
                    if self.progress is not None:
                        self.loop.call_soon_threadsafe(self.progress, self.partial.offset + written)
                except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                    self._write_error = exc
                    self.stop.set()
            self._free.put(buffer)
        try:
            if (error := syncer.stop()) is not None:
                raise error
            if self._complete and self._write_error is None and not self.stop.is_set():
                os.fsync(out.fileno())
        except OSError as exc:
            if self._write_error is None:
                self._write_error = exc


def _settle(done: asyncio.Future[int], result: int, error: BaseException | None) -> None:
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)
