"""The control plane's HTTPS artifact listener, spoken to with a plain TLS socket: who may fetch what,
ranges, and every malformed request refused with a status and a reason (controlplane.artifact_https)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest

from agent.channel import device_channel
from agent.identity import identity_dir
from controlplane.artifact_https import HttpError, parse_request
from controlplane.pki import load_or_create_ca
from protos.edgefleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc
from protos.limits import TLS_SERVER_NAME
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for
from tests.integration.shipping import LocalClient, deploy, device_with_a_blob, publish, register_key

SIZE = 3 * 2**20 + 17  # more than one 1 MiB chunk, not a multiple of it


@pytest.fixture
def device(cp_sqlite, tmp_path):
    """An enrolled device told to install a build with a 3 MiB file: (identity dir, sha256, payload)."""
    _, sha, payload = device_with_a_blob(cp_sqlite, tmp_path, SIZE)
    return identity_dir(tmp_path / "dev"), sha, payload


def _context(folder: Path | None, ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    if folder is not None:
        context.load_cert_chain(folder / "device.crt", folder / "device.key")
    return context


def _exchange(port: int, context: ssl.SSLContext, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes; returns (status, headers with lower-case names, body)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=TLS_SERVER_NAME) as tls:
        tls.sendall(request)
        data = bytearray()
        while chunk := tls.recv(1 << 20):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def _get(port, context, sha: str, offset: int | None = None) -> tuple[int, dict[str, str], bytes]:
    range_header = f"Range: bytes={offset}-\r\n" if offset is not None else ""
    request = f"GET /v1/artifacts/{sha} HTTP/1.1\r\nHost: x\r\n{range_header}Connection: close\r\n\r\n"
    return _exchange(port, context, request.encode())


def test_the_whole_blob_and_a_range(cp_sqlite, device):
    folder, sha, payload = device
    port = cp_sqlite.running.services.artifact_port
    context = _context(folder, cp_sqlite.ca_pem)
    status, headers, body = _get(port, context, sha)
    assert (status, int(headers["content-length"]), body) == (200, SIZE, payload)
    assert "content-range" not in headers

    offset = SIZE // 2 + 3
    status, headers, body = _get(port, context, sha, offset)
    assert status == 206
    assert headers["content-range"] == f"bytes {offset}-{SIZE - 1}/{SIZE}"
    assert int(headers["content-length"]) == SIZE - offset
    assert body == payload[offset:]

    status, headers, body = _get(port, context, sha, SIZE)  # nothing left: an empty 206
    assert (status, headers["content-length"], body) == (206, "0", b"")


def test_welcome_announces_the_port(cp_sqlite, device):
    folder, _, _ = device
    from agent.identity import load_identity

    ident = load_identity(folder.parent)

    async def welcome() -> agent_pb2.Welcome:
        async with device_channel(ident) as channel:  # fmt: skip
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session()
            await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id="dev-1", boot_id="b1")))
            message = await call.read()
            call.cancel()
            return message.welcome

    assert asyncio.run(welcome()).artifact_port == cp_sqlite.running.services.artifact_port > 0


def test_only_blobs_of_the_devices_own_builds(cp_sqlite, device):
    folder, sha, _ = device
    port = cp_sqlite.running.services.artifact_port
    status, _, body = _get(port, _context(folder, cp_sqlite.ca_pem), "ab" * 32)
    assert status == 403
    assert b"not part of a build this device was told to install" in body


def test_a_listed_blob_missing_from_the_store_is_404(cp_sqlite, device):
    folder, sha, _ = device
    cp_sqlite.running.services.blobs.path(sha).unlink()
    status, _, body = _get(cp_sqlite.running.services.artifact_port, _context(folder, cp_sqlite.ca_pem), sha)
    assert status == 404
    assert sha.encode() in body


def test_a_range_past_the_end_is_416(cp_sqlite, device):
    folder, sha, _ = device
    status, _, body = _get(cp_sqlite.running.services.artifact_port, _context(folder, cp_sqlite.ca_pem), sha, SIZE + 1)
    assert status == 416
    assert b"past the end" in body


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"POST /v1/artifacts/{sha} HTTP/1.1\r\n\r\n", 405, b"only GET"),
        (b"GET /v1/artifacts/../../ca.key HTTP/1.1\r\n\r\n", 404, b"no such resource"),
        (b"GET /v1/artifacts/{SHA} HTTP/1.1\r\n\r\n", 404, b"no such resource"),  # upper-case hex
        (b"GET /v1/artifacts/{sha}\r\n\r\n", 400, b"malformed request line"),
        (b"GET /v1/artifacts/{sha} HTTP/1.1\r\nRange: bytes=1-2\r\n\r\n", 400, b"only Range: bytes=<offset>-"),
        (b"GET /v1/artifacts/{sha} HTTP/1.1\r\nRange: bytes=1-\r\nRange: bytes=2-\r\n\r\n", 400, b"more than one"),
        (b"GET /v1/artifacts/{sha} HTTP/1.1\r\nno colon here\r\n\r\n", 400, b"malformed header"),
        (b"GET /v1/artifacts/{sha} HTTP/1.1\r\nX: \xff\r\n\r\n", 400, b"ASCII"),
        (b"GET /v1/artifacts/{sha} HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 400, b"request head over"),
        (b"GET /v1/artifacts/{sha} HTTP/1.1\r\n", 400, b"closed before the request was complete"),
    ],
)
def test_malformed_requests_get_a_status_and_a_reason(cp_sqlite, device, request_bytes, status, reason):
    folder, sha, _ = device
    request = request_bytes.replace(b"{sha}", sha.encode()).replace(b"{SHA}", sha.upper().encode())
    port = cp_sqlite.running.services.artifact_port
    context = _context(folder, cp_sqlite.ca_pem)
    if request.endswith(b"\r\n\r\n"):
        got, _, body = _exchange(port, context, request)
    else:  # an incomplete head, then the device half-closes
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with context.wrap_socket(raw, server_hostname=TLS_SERVER_NAME) as tls:
            tls.sendall(request)
            # A TCP half-close without a TLS close_notify (SSLSocket.shutdown would also drop the TLS layer).
            socket.socket.shutdown(tls, socket.SHUT_WR)
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        got = int(head.split(b" ")[1])
    assert got == status
    assert reason in body
    assert len(body) <= 1000


def test_a_client_without_a_device_certificate_is_refused_in_the_handshake(cp_sqlite, device):
    _, sha, _ = device
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        status, _, _ = _get(cp_sqlite.running.services.artifact_port, _context(None, cp_sqlite.ca_pem), sha)
        # TLS 1.3: the refusal may surface only as a closed connection; never as an answer
        assert status is None


def test_a_certificate_from_another_ca_is_refused(cp_sqlite, device, tmp_path):
    folder, sha, _ = device
    (tmp_path / "other-ca").mkdir()
    other = load_or_create_ca(tmp_path / "other-ca", dt.datetime.now(dt.UTC))
    chain, key = other.issue_server_certificate(["dev-1"], dt.datetime.now(dt.UTC))  # a certificate, not ours
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "device.crt").write_bytes(chain)
    (foreign / "device.key").write_bytes(key)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        status, _, _ = _get(cp_sqlite.running.services.artifact_port, _context(foreign, cp_sqlite.ca_pem), sha)
        assert status is None


def test_a_revoked_device_is_refused(cp_sqlite, device):
    folder, sha, _ = device
    stub, meta, channel = cp_sqlite.admin()
    with channel:
        stub.RevokeDevice(admin_pb2.RevokeDeviceRequest(device_id="dev-1", reason="stolen"), metadata=meta, timeout=10)
    status, _, body = _get(cp_sqlite.running.services.artifact_port, _context(folder, cp_sqlite.ca_pem), sha)
    assert status == 403
    assert b"revoked" in body


def test_off_means_no_listener_and_port_zero_in_welcome(tmp_path):
    server = ServerThread(server_config(tmp_path / "server", artifact_port=None))
    try:
        assert server.running.artifacts is None
        assert server.running.services.artifact_port == 0
    finally:
        server.stop()


def test_parse_request_is_pure_and_strict():
    sha = "0f" * 32
    assert parse_request(f"GET /v1/artifacts/{sha} HTTP/1.1\r\nrAnGe:  bytes=42- ".encode()).offset == 42
    assert parse_request(f"GET /v1/artifacts/{sha} HTTP/1.0".encode()).sha256 == sha
    for bad in (f"GET /v1/artifacts/{sha}?x=1 HTTP/1.1", f"GET  /v1/artifacts/{sha} HTTP/1.1", "GET / HTTP/2"):
        with pytest.raises(HttpError):
            parse_request(bad.encode())


def test_an_agent_whose_https_port_is_gone_installs_over_grpc(cp_sqlite, agents, tmp_path):
    """The port was announced, then stopped answering (a firewall, a listener down): the download falls back."""
    key = register_key(cp_sqlite, tmp_path)
    publish(cp_sqlite, key, tmp_path, version=1)
    agent = agents("gw", "--trust", f"{key}.pub", "--heartbeat-seconds", "0.5", join=cp_sqlite.join_string(),
                   device_id="gw-1")  # fmt: skip
    wait_for(lambda: cp_sqlite.is_online("gw-1"), what="gw-1 online")
    cp_sqlite.running.artifacts.stop()  # connections to the announced port are now refused
    deploy(cp_sqlite, "gw-1", version=1)
    client = LocalClient(tmp_path / "gw")
    try:
        wait_for(lambda: client.serving_version() == 1, what="v1 serving, fetched over gRPC")
    finally:
        client.close()
    assert cp_sqlite.running.artifacts.served == 0
    assert "fetching over gRPC" in agent.output()
