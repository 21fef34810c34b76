"""The HTTPS download rules against a real TLS server that misbehaves on demand: the same invariants as the
gRPC fetch (resume, size cap, stall and throughput, hash), a response that announces anything but the bytes
asked for is refused, no thread writes after a cancelled fetch returns, and ``GatewaySource`` falls back to
gRPC only when the HTTPS port gave no response."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent import fetch_https
from agent.errors import IdentityError
from agent.fetch import FetchError, FetchPolicy
from agent.fetch_https import (
    ArtifactPortUnavailable,
    HttpsEndpoint,
    client_context,
    device_https_endpoint,
    fetch_blob_https,
)
from agent.identity import CA_FILE, CERT_FILE, KEY_FILE, Identity, generate_key_and_csr
from agent.reconcile_shell import HTTPS_RETRY_SECONDS, GatewaySource
from controlplane.pki import create_ca
from protos.edgefleet.v1 import agent_pb2
from protos.limits import TLS_SERVER_NAME

DATA = random.Random(7).randbytes(3 * 2**20 + 12345)  # several 1 MiB buffers and a partial one
SHA = hashlib.sha256(DATA).hexdigest()
SIZE = len(DATA)
HALF = SIZE // 2
TIMEOUT = 10.0


# --- certificates: a CA, the device's identity folder, the server's certificate --------------------------


@dataclass(frozen=True)
class Pki:
    folder: Path  # device.key, device.crt, ca.crt: an identity folder
    identity: Identity
    server: ssl.SSLContext  # the artifact server's: requires a device certificate from the CA
    foreign_server: ssl.SSLContext  # the same, but its certificate comes from another CA


def _server_context(ca, device_ca_pem: bytes, folder: Path, name: str) -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    chain, key = ca.issue_server_certificate(["127.0.0.1"], now)
    (folder / f"{name}.crt").write_bytes(chain)
    (folder / f"{name}.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / f"{name}.crt", folder / f"{name}.key")
    context.load_verify_locations(cadata=device_ca_pem.decode())
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    folder = root / "identity"
    folder.mkdir()
    now = dt.datetime.now(dt.UTC)
    ca, other_ca = create_ca("test fleet", now), create_ca("someone else", now)
    key_pem, csr = generate_key_and_csr("dev-1")
    cert_pem, _, _ = ca.sign_device_csr(csr, "dev-1", now)
    (folder / KEY_FILE).write_bytes(key_pem)
    (folder / CERT_FILE).write_bytes(cert_pem)
    (folder / CA_FILE).write_bytes(ca.cert_pem)
    identity = Identity(
        device_id="dev-1",
        fleet="lab",
        device_endpoint="127.0.0.1:1",
        api_endpoint="127.0.0.1:1",
        tls_server_name=TLS_SERVER_NAME,
        heartbeat_interval_seconds=10,
    )
    return Pki(
        folder,
        identity,
        _server_context(ca, ca.cert_pem, root, "server"),
        _server_context(other_ca, ca.cert_pem, root, "foreign"),
    )


# --- the server ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    line: str
    headers: dict[str, str]  # lower-case names

    @property
    def offset(self) -> int:
        value = self.headers.get("range", "bytes=0-")
        return int(value.removeprefix("bytes=").removesuffix("-"))


Handler = Callable[["ArtifactServer", ssl.SSLSocket, Request], None]


class ArtifactServer:
    """A mutual-TLS server on a free port, one thread per connection: records each request and answers it with
    ``handler``. Handlers that hang or trickle wait on ``release``, set by ``close``."""

    def __init__(self, context: ssl.SSLContext, handler: Handler) -> None:
        self.context, self.handler = context, handler
        self.requests: list[Request] = []
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, name="test-artifact-server")]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), name="test-artifact-conn")
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        with contextlib.suppress(OSError), self.context.wrap_socket(conn, server_side=True) as tls:  # fmt: skip
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                data += chunk
            line, *lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
            headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
            request = Request(line, headers)
            self.requests.append(request)
            self.handler(self, tls, request)
        conn.close()

    def close(self) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(TIMEOUT)
        self.listener.close()


def serve(
    data: bytes = DATA,
    *,
    status: int | None = None,
    length: int | None = None,
    content_range: str | None = None,
    endless: bool = False,
    stall_after: int | None = None,
    trickle: tuple[int, float] | None = None,
) -> Handler:
    """A handler that serves ``data`` by the wire contract (headers in odd case and order), unless told to
    answer with another status / length / range, to send bytes past the body, to stall after some bytes,
    or to send ``trickle`` = (bytes, every seconds)."""

    def handler(server: ArtifactServer, tls: ssl.SSLSocket, request: Request) -> None:
        offset = request.offset
        body = data[offset:]
        code = status or (206 if offset else 200)
        lines = [f"HTTP/1.1 {code} {'Partial Content' if code == 206 else 'OK'}", "connection: close"]
        if offset:
            lines.append(f"CONTENT-RANGE: {content_range or f'bytes {offset}-{len(data) - 1}/{len(data)}'}")
        lines += [
            f"content-LENGTH: {len(body) if length is None else length}",
            "Content-Type: application/octet-stream",
        ]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if stall_after is not None:
            tls.sendall(body[:stall_after])
            server.release.wait(TIMEOUT)
            return
        if trickle is not None:
            piece, every = trickle
            for start in range(0, len(body), piece):
                tls.sendall(body[start : start + piece])
                if server.release.wait(every):
                    return
            return
        tls.sendall(body)
        while endless and not server.release.is_set():
            tls.sendall(b"x" * 16384)

    return handler


def refuse(code: int, reason: str, text: str) -> Handler:
    def handler(server: ArtifactServer, tls: ssl.SSLSocket, request: Request) -> None:
        body = text.encode()
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        tls.sendall(head.encode() + body)

    return handler


@pytest.fixture
def start(pki):
    """start(handler, foreign=False) -> (server, endpoint): a running server and the device's endpoint for it."""
    servers: list[ArtifactServer] = []

    def starter(handler: Handler, *, foreign: bool = False) -> tuple[ArtifactServer, HttpsEndpoint]:
        server = ArtifactServer(pki.foreign_server if foreign else pki.server, handler)
        servers.append(server)
        return server, device_https_endpoint(pki.identity, pki.folder, server.port)

    yield starter
    for server in servers:
        server.close()


def _fetch(
    endpoint: HttpsEndpoint, directory: Path, *, policy: FetchPolicy = fetch_https.DEFAULT_POLICY, progress=None
):
    return asyncio.run(fetch_blob_https(endpoint, SHA, SIZE, directory, policy=policy, progress=progress))


def _part(directory: Path) -> Path:
    return directory / f"{SHA}.part"


# --- the download rules ----------------------------------------------------------------------------------


def test_whole_blob_is_stored_under_its_hash_with_progress_to_the_end(start, tmp_path, monkeypatch):
    """A plain GET (no Range) with the device's certificate stores the blob; progress climbs to size."""
    monkeypatch.setattr(fetch_https, "SYNC_EVERY_BYTES", 1 << 20)  # the periodic fdatasync runs too
    server, endpoint = start(serve())
    seen: list[int] = []
    result = _fetch(endpoint, tmp_path, progress=seen.append)
    assert result.path == tmp_path / SHA and result.path.read_bytes() == DATA
    assert (result.bytes_transferred, result.resumed_from) == (SIZE, 0)
    assert not _part(tmp_path).exists()
    (request,) = server.requests
    assert request.line == f"GET /v1/artifacts/{SHA} HTTP/1.1"
    assert request.headers["host"] == TLS_SERVER_NAME and "range" not in request.headers
    assert seen[0] == 0 and seen[-1] == SIZE and seen == sorted(seen)


def test_resume_asks_for_the_rest_only(start, tmp_path):
    """With half the blob in the part file, the request says Range: bytes=HALF- and only the rest is sent."""
    _part(tmp_path).write_bytes(DATA[:HALF])
    server, endpoint = start(serve())
    seen: list[int] = []
    result = _fetch(endpoint, tmp_path, progress=seen.append)
    assert result.path.read_bytes() == DATA
    assert (result.bytes_transferred, result.resumed_from) == (SIZE - HALF, HALF)
    assert server.requests[0].headers["range"] == f"bytes={HALF}-"
    assert seen[0] == HALF and seen[-1] == SIZE


def test_endless_data_is_cut_at_the_manifest_size_and_refused(start, tmp_path):
    _, endpoint = start(serve(endless=True))
    with pytest.raises(FetchError, match="more than the manifest's") as refused:
        _fetch(endpoint, tmp_path)
    assert not refused.value.retryable
    assert not (tmp_path / SHA).exists() and _part(tmp_path).stat().st_size <= SIZE


@pytest.mark.parametrize(
    ("options", "resume", "match", "retryable"),
    [
        (dict(length=SIZE + 1), False, "more than the manifest's", False),
        (dict(length=SIZE - 1), False, "not the .* asked for", True),
        (dict(content_range=f"bytes 0-{SIZE - 1}/{SIZE}"), True, "Content-Range", True),
        (dict(content_range=f"bytes {HALF}-{SIZE}/{SIZE + 1}"), True, "Content-Range", True),
        (dict(status=200), True, "answered 200", True),
        (dict(status=206), False, "answered 206", True),
    ],
    ids=["length-over", "length-under", "range-from-0", "range-total", "200-to-a-range", "206-to-no-range"],
)
def test_a_response_that_does_not_announce_the_bytes_asked_for_is_refused_before_writing(
    start, tmp_path, options, resume, match, retryable
):
    if resume:
        _part(tmp_path).write_bytes(DATA[:HALF])
    _, endpoint = start(serve(**options))
    with pytest.raises(FetchError, match=match) as refused:
        _fetch(endpoint, tmp_path)
    assert refused.value.retryable is retryable
    assert not isinstance(refused.value, ArtifactPortUnavailable)
    assert (_part(tmp_path).stat().st_size if resume else _part(tmp_path).exists()) == (HALF if resume else False)


@pytest.mark.parametrize(
    ("code", "reason", "retryable"),
    [(403, "Forbidden", False), (404, "Not Found", False), (503, "Service Unavailable", True)],
)
def test_error_statuses_carry_the_servers_reason_and_only_403_404_are_final(start, tmp_path, code, reason, retryable):
    _, endpoint = start(refuse(code, reason, f"reason from the server ({code})"))
    with pytest.raises(FetchError, match=rf"HTTP {code} {reason}: reason from the server \({code}\)") as refused:
        _fetch(endpoint, tmp_path)
    assert refused.value.retryable is retryable and not isinstance(refused.value, ArtifactPortUnavailable)


def test_stalled_download_is_abandoned_within_the_stall_time_and_keeps_the_bytes(start, tmp_path):
    _, endpoint = start(serve(stall_after=65536))
    began = time.monotonic()
    with pytest.raises(FetchError, match="stalled") as stalled:
        _fetch(endpoint, tmp_path, policy=FetchPolicy(stall_seconds=0.3))
    assert stalled.value.retryable and time.monotonic() - began < 0.3 + 3.0
    assert _part(tmp_path).stat().st_size == 65536  # kept for the resume


def test_crawling_download_is_abandoned(start, tmp_path):
    _, endpoint = start(serve(trickle=(1024, 0.02)))
    policy = FetchPolicy(stall_seconds=5, min_bytes_per_second=1_000_000, throughput_grace_seconds=0.2)
    with pytest.raises(FetchError, match="too slow") as slow:
        _fetch(endpoint, tmp_path, policy=policy)
    assert slow.value.retryable


def test_bytes_that_do_not_hash_to_the_name_are_discarded(start, tmp_path):
    _, endpoint = start(serve(bytes(reversed(DATA))))
    with pytest.raises(FetchError, match="hash to"):
        _fetch(endpoint, tmp_path)
    assert not (tmp_path / SHA).exists() and not _part(tmp_path).exists()


def test_a_server_certificate_from_another_ca_is_refused_as_no_response(start, tmp_path):
    _, endpoint = start(serve(), foreign=True)
    with pytest.raises(ArtifactPortUnavailable, match="TLS handshake failed") as refused:
        _fetch(endpoint, tmp_path)
    assert refused.value.retryable and not _part(tmp_path).exists()


def test_a_client_without_a_device_certificate_is_refused_by_the_server(start, pki, tmp_path):
    _, endpoint = start(serve())
    bare = ssl.create_default_context(cafile=pki.folder / CA_FILE)
    with pytest.raises(ArtifactPortUnavailable, match="no response|request failed"):
        _fetch(replace(endpoint, context=bare), tmp_path)


def test_missing_device_key_is_an_identity_error_naming_the_file(pki, tmp_path):
    with pytest.raises(IdentityError, match=r"device\.key"):
        client_context(pki.folder / CA_FILE, pki.folder / CERT_FILE, tmp_path / KEY_FILE)
    with pytest.raises(IdentityError, match="verify the control plane"):
        client_context(b"not a certificate", pki.folder / CERT_FILE, pki.folder / KEY_FILE)


def test_cancelled_fetch_returns_only_once_its_threads_stopped_writing(start, tmp_path):
    """After the cancelled task has ended, the part file does not grow any more and no fetch thread is left."""
    _, endpoint = start(serve(trickle=(16384, 0.005)))
    policy = FetchPolicy(stall_seconds=5, min_bytes_per_second=1, throughput_grace_seconds=60)

    async def scenario() -> int:
        seen: list[int] = []
        task = asyncio.create_task(fetch_blob_https(endpoint, SHA, SIZE, tmp_path, policy=policy, progress=seen.append))
        deadline = time.monotonic() + TIMEOUT
        while not seen or seen[-1] < 100_000:
            assert time.monotonic() < deadline, "no progress"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return _part(tmp_path).stat().st_size

    size_at_cancel = asyncio.run(scenario())
    assert not [t for t in threading.enumerate() if t.name.startswith("fetch-")]
    time.sleep(0.2)
    assert 0 < _part(tmp_path).stat().st_size == size_at_cancel < SIZE


def test_a_name_that_is_not_a_sha256_is_refused(start, tmp_path):
    _, endpoint = start(serve())
    with pytest.raises(FetchError, match="not a sha256") as refused:
        asyncio.run(fetch_blob_https(endpoint, "../etc/passwd", 1, tmp_path))
    assert not refused.value.retryable


# --- GatewaySource: HTTPS when announced, gRPC when the port gives no response ----------------------------


class GrpcStub:
    """A FetchArtifact stub serving ``DATA`` from the request's offset; counts its calls."""

    def __init__(self) -> None:
        self.offsets: list[int] = []

    def FetchArtifact(self, request):  # noqa: N802 - gRPC name
        self.offsets.append(request.offset)

        class Call:
            def __aiter__(self):
                return self._chunks()

            async def _chunks(self):
                for start in range(request.offset, SIZE, 1 << 20):
                    yield agent_pb2.ArtifactChunk(offset=start, data=DATA[start : start + (1 << 20)], total_bytes=SIZE)

            def cancel(self) -> None:
                pass

        return Call()


def _source(endpoint: HttpsEndpoint | None, port: int, clock=time.monotonic) -> tuple[GatewaySource, GrpcStub]:
    stub = GrpcStub()
    source = GatewaySource(stub, https=endpoint and replace(endpoint, port=0), clock=clock)
    source.use_https(port)
    return source, stub


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_source_fetches_over_https_once_a_port_is_announced(start, tmp_path):
    server, endpoint = start(serve())
    source, stub = _source(endpoint, endpoint.port)
    result = asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path))
    assert result.path.read_bytes() == DATA and len(server.requests) == 1 and stub.offsets == []


def test_source_falls_back_to_grpc_when_the_https_port_refuses_and_tries_it_again_later(
    start, pki, tmp_path, caplog, monkeypatch
):
    port = _free_port()
    now = [1000.0]
    source, stub = _source(device_https_endpoint(pki.identity, pki.folder), port, clock=lambda: now[0])
    attempts = []
    real = fetch_https._Transfer._connect
    monkeypatch.setattr(fetch_https._Transfer, "_connect", lambda self: attempts.append(1) or real(self))
    _part(tmp_path).write_bytes(DATA[:HALF])
    with caplog.at_level(logging.WARNING, logger="edgefleet.agent.reconcile"):
        result = asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path))
        result.path.unlink()
        now[0] += HTTPS_RETRY_SECONDS - 1  # within the retry period: straight to gRPC, no connect
        asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path)).path.unlink()
    assert result.resumed_from == HALF and stub.offsets == [HALF, 0]  # gRPC resumed the part file
    assert len(attempts) == 1
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and f"HTTPS artifact port 127.0.0.1:{port} unreachable" in warnings[0]
    now[0] += 2  # the period is over: HTTPS is tried again (still refused), then gRPC
    asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path)).path.unlink()
    assert len(attempts) == 2 and stub.offsets == [HALF, 0, 0]
    server, endpoint = start(serve())  # a newly announced port is tried at once
    source.use_https(endpoint.port)
    asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path))
    assert len(server.requests) == 1 and stub.offsets == [HALF, 0, 0]


def test_source_falls_back_to_grpc_when_the_server_certificate_is_not_trusted(start, tmp_path):
    _, endpoint = start(serve(), foreign=True)
    source, stub = _source(endpoint, endpoint.port)
    assert asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path)).path.read_bytes() == DATA
    assert stub.offsets == [0]


def test_source_does_not_fall_back_on_an_http_error_status(start, tmp_path):
    _, endpoint = start(refuse(404, "Not Found", "no such blob"))
    source, stub = _source(endpoint, endpoint.port)
    with pytest.raises(FetchError, match="no such blob") as refused:
        asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path))
    assert not refused.value.retryable and stub.offsets == []


def test_source_uses_grpc_when_no_port_or_no_tls_material(pki, tmp_path, caplog):
    source, stub = _source(device_https_endpoint(pki.identity, pki.folder), 8443)
    source.use_https(0)
    asyncio.run(source.fetch_blob(SHA, SIZE, tmp_path))
    (tmp_path / SHA).unlink()
    with caplog.at_level(logging.WARNING, logger="edgefleet.agent.reconcile"):
        bare, bare_stub = _source(None, 8443)
    asyncio.run(bare.fetch_blob(SHA, SIZE, tmp_path))
    assert stub.offsets == [0] and bare_stub.offsets == [0]
    assert "no TLS material" in caplog.text


def test_device_endpoint_host_and_tls_name_come_from_the_identity(pki):
    identity = replace(pki.identity, device_endpoint="[::1]:7443", tls_server_name="cp.example")
    endpoint = device_https_endpoint(identity, pki.folder, 9443)
    assert (endpoint.host, endpoint.port, endpoint.server_name, str(endpoint)) == (
        "::1",
        9443,
        "cp.example",
        "[::1]:9443",
    )
