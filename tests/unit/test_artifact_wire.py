"""FetchArtifact's hand-built chunks: byte-identical to what protobuf would send."""

from __future__ import annotations

import io
import os

import grpc
import pytest

from controlplane.services.gateway import _read_chunk, add_gateway_to_server, encode_artifact_chunk
from protos.edgefleet.v1 import agent_pb2

CASES = [
    (0, b"", 0),
    (0, b"x", 1),
    (0, b"abc", 0),
    (5, b"", 5),
    (127, os.urandom(127), 128),
    (128, os.urandom(128), 300),
    (16383, os.urandom(16384), 16384 + 16383),
    (2**20, os.urandom(2**20), 100 * 2**20),
    (2**35 + 3, os.urandom(1000), 2**40),
    (2**64 - 2, b"\x00" * 2, 2**64 - 1),
]


@pytest.mark.parametrize(("offset", "data", "total"), CASES, ids=lambda v: str(v if isinstance(v, int) else len(v)))
def test_wire_bytes_equal_protobuf(offset: int, data: bytes, total: int) -> None:
    expected = agent_pb2.ArtifactChunk(offset=offset, data=data, total_bytes=total).SerializeToString()
    wire = encode_artifact_chunk(offset, data, total)
    assert type(wire) is bytes
    assert wire == expected
    parsed = agent_pb2.ArtifactChunk.FromString(wire)
    assert (parsed.offset, parsed.data, parsed.total_bytes) == (offset, data, total)


def test_read_chunk_reads_the_next_bytes_and_stops_at_size() -> None:
    blob = os.urandom(2500)
    handle = io.BufferedReader(io.BytesIO(blob))  # type: ignore[arg-type]
    handle.seek(1000)
    wire, length = _read_chunk(handle, 1000, 1024, 2500)
    assert length == 1024
    assert wire == agent_pb2.ArtifactChunk(offset=1000, data=blob[1000:2024], total_bytes=2500).SerializeToString()
    wire, length = _read_chunk(handle, 2024, 1024, 2500)
    assert (length, agent_pb2.ArtifactChunk.FromString(wire).data) == (476, blob[2024:])


class _Server:
    def __init__(self) -> None:
        self.generic: list = []
        self.registered: dict = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, name, handlers) -> None:
        self.registered[name] = handlers


def test_only_fetch_artifact_loses_its_serializer() -> None:
    class Servicer:
        async def Session(self, *a): ...  # noqa: N802
        async def FetchArtifact(self, *a): ...  # noqa: N802
        async def FetchManifest(self, *a): ...  # noqa: N802
        async def SendTelemetry(self, *a): ...  # noqa: N802

    server = _Server()
    add_gateway_to_server(Servicer(), server)  # type: ignore[arg-type]
    handlers = server.registered["edgefleet.v1.AgentGateway"]
    assert set(handlers) == {"Session", "FetchArtifact", "FetchManifest", "SendTelemetry"}
    assert handlers["FetchArtifact"].response_serializer is None
    assert handlers["FetchArtifact"].response_streaming and not handlers["FetchArtifact"].request_streaming
    assert handlers["FetchArtifact"].request_deserializer == agent_pb2.FetchArtifactRequest.FromString
    for name in ("Session", "FetchManifest", "SendTelemetry"):
        assert handlers[name].response_serializer is not None
    details = type("D", (), {"method": "/edgefleet.v1.AgentGateway/FetchArtifact", "invocation_metadata": ()})()
    assert [h.service(details) for h in server.generic] == [handlers["FetchArtifact"]]
    assert isinstance(server.generic[0], grpc.GenericRpcHandler)
