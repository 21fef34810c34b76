"""A download cut half-way — the connection dropped, or the control plane stopped — resumes from the
last byte received: the next attempt transfers only the rest, and the file is whole."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from agent.channel import device_channel
from agent.fetch import FetchError, FetchPolicy, fetch_blob
from protos.edgefleet.v1 import agent_pb2_grpc
from tests.integration.shipping import device_with_a_blob

SIZE = 8 * 2**20
POLICY = FetchPolicy(chunk_bytes=32 * 1024)


@pytest.fixture
def device(cp_sqlite, tmp_path):
    """An enrolled device told to install a build with an 8 MiB file; returns (identity, sha256, bytes)."""
    found = device_with_a_blob(cp_sqlite, tmp_path, SIZE)
    # 16 MiB/s per stream: the 8 MiB download takes about half a second, so it can be cut half-way.
    services = cp_sqlite.running.services
    services.config = services.config.model_copy(update={"artifact_bytes_per_second": 16 * 2**20})
    return found


class CutAtHalf:
    """The device's stub, with a hook run once half of the blob has been received: the hook cuts
    the link (or stops the control plane); the stream then ends or fails as a real cut would."""

    def __init__(self, stub, hook) -> None:
        self.stub, self.hook = stub, hook

    def FetchArtifact(self, request):  # noqa: N802 - gRPC name
        call, hook = self.stub.FetchArtifact(request), self.hook

        class Stream:
            def __aiter__(self):
                return self._chunks()

            async def _chunks(self):
                received, hooked = request.offset, False
                async for chunk in call:
                    yield chunk
                    received += len(chunk.data)
                    if not hooked and received >= SIZE // 2:
                        hooked = True
                        if await hook(call):
                            return  # the link is gone: no more bytes arrive

            def cancel(self) -> None:
                call.cancel()

        return Stream()


async def _fetch(ident, sha, directory, *, hook=None):
    async with device_channel(ident) as channel:  # fmt: skip
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        return await fetch_blob(CutAtHalf(stub, hook) if hook else stub, sha, SIZE, directory, policy=POLICY)


def test_dropped_connection_resumes_with_only_the_rest(device, tmp_path):
    ident, sha, payload = device
    directory = tmp_path / "blobs"

    async def drop(call):
        call.cancel()
        return True

    with pytest.raises(FetchError, match="ended at") as cut:
        asyncio.run(_fetch(ident, sha, directory, hook=drop))
    assert cut.value.retryable
    partial = (directory / f"{sha}.part").stat().st_size
    assert SIZE // 2 <= partial < SIZE
    result = asyncio.run(_fetch(ident, sha, directory))
    assert result.resumed_from == partial and result.bytes_transferred == SIZE - partial
    assert result.path.read_bytes() == payload


def test_control_plane_stopped_mid_download_resumes_after_restart(device, cp_sqlite, tmp_path):
    ident, sha, payload = device
    directory = tmp_path / "blobs"

    async def stop_device_port(call):
        await asyncio.to_thread(cp_sqlite.call, cp_sqlite.running.device_server.stop(0))
        return False  # keep reading: the stream fails as the server goes away

    with pytest.raises(FetchError) as cut:
        asyncio.run(_fetch(ident, sha, directory, hook=stop_device_port))
    assert cut.value.retryable
    partial = (directory / f"{sha}.part").stat().st_size
    assert SIZE // 2 <= partial < SIZE
    from tests.integration.harness import ServerThread

    cp_sqlite.stop()
    again = ServerThread(
        cp_sqlite.config.model_copy(
            update={"api_port": cp_sqlite.running.api_port, "device_port": cp_sqlite.running.device_port}
        )
    )
    try:
        result = asyncio.run(_fetch(ident, sha, directory))
    finally:
        again.stop()
        cp_sqlite.stop = lambda: None  # already stopped; the fixture must not stop it twice
    assert result.resumed_from == partial and result.bytes_transferred == SIZE - partial
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == sha


def test_download_rate_cap_is_honoured(device, tmp_path):
    import time

    ident, sha, _ = device
    started = time.monotonic()
    asyncio.run(_fetch(ident, sha, tmp_path / "blobs"))
    assert time.monotonic() - started >= SIZE / (16 * 2**20) * 0.9
