"""Artifact download throughput and resume, measured side by side in one run.

- edgefleet: ``agent.fetch_https.fetch_blob_https`` downloads a blob of ``--mib`` MiB (random
  bytes) from a real control plane (``edgefleet server`` subprocess) over its HTTPS artifact port
  (mutual TLS), with the agent's checks (size cap, sha256 over the whole file, fsync, atomic
  rename): what an agent does when the control plane announces the port (the default);
- edgefleet over gRPC: ``agent.fetch.fetch_blob`` over the device port's ``FetchArtifact``, the
  fallback (HTTPS port off or unreachable);
- raw: the same bytes copied over a plain loopback TCP socket into a file (no TLS, no
  framing, no hashing) — the ceiling on this machine;
- resume: an HTTPS download cancelled at about half, then resumed: bytes transferred by the
  second attempt vs the blob's size;
- the bare gRPC ceiling: two bare ``grpc.aio`` processes streaming the same 1 MiB chunks from
  memory into nothing, plaintext and TLS: what any gRPC download can reach here.

gRPC downloads are timed on an open channel (TCP and TLS handshakes done), as an agent's session
channel is when it fetches; an HTTPS download opens its own connection, and its time includes the
TCP and TLS handshakes.

Goal (issue "ship a model"): edgefleet ≥ 50% of raw; the resume transfers only the rest.
Rerun: ``.venv/bin/python scripts/bench/artifact.py [--mib 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.benchkit import start_server, stop_server  # noqa: E402


def raw_copy(source: Path, dest: Path, *, use_sendfile: bool) -> float:
    """Seconds to copy source into dest over a loopback socket (kernel sendfile, or a read/send loop)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send() -> None:
        conn, _ = server.accept()
        with conn, source.open("rb") as file:
            if use_sendfile:
                conn.sendfile(file)
            else:
                while block := file.read(1 << 20):
                    conn.sendall(block)

    sender = threading.Thread(target=send)
    sender.start()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn, dest.open("wb") as out:
        while block := conn.recv(1 << 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    sender.join()
    server.close()
    if dest.stat().st_size != source.stat().st_size:
        raise SystemExit(f"raw copy received {dest.stat().st_size} of {source.stat().st_size} bytes")
    return elapsed


CEILING_CHUNK = 1 << 20


def _ceiling_server(port: int, tls: bool, ca_pem: bytes, key_chain: tuple[bytes, bytes], ready) -> None:
    """A bare grpc.aio server whose FetchArtifact streams 1 MiB chunks from memory (no file, no store)."""
    import asyncio

    import grpc

    from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc

    class Gateway(agent_pb2_grpc.AgentGatewayServicer):
        async def FetchArtifact(self, request, context):  # noqa: N802 - gRPC name
            data = os.urandom(CEILING_CHUNK)
            for i in range(request.chunk_bytes):  # the request's chunk_bytes carries the chunk count here
                await context.write(agent_pb2.ArtifactChunk(offset=i * CEILING_CHUNK, data=data))

    async def serve() -> None:
        server = grpc.aio.server()
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(Gateway(), server)
        address = f"127.0.0.1:{port}"
        if tls:
            key, chain = key_chain[1], key_chain[0]
            server.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))
        else:
            server.add_insecure_port(address)
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(serve())


def grpc_ceiling(mib: int, *, tls: bool) -> float:
    """MiB/s of the same chunk stream between two bare grpc.aio processes, from memory into nothing."""
    import asyncio
    import datetime as dt
    import multiprocessing

    import grpc

    from controlplane.pki import create_ca
    from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc
    from protos.limits import TLS_SERVER_NAME

    ca = create_ca("bench", dt.datetime.now(dt.UTC))
    key_chain = ca.issue_server_certificate([TLS_SERVER_NAME], dt.datetime.now(dt.UTC))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # the parent holds gRPC channels: never fork it
    ready = context.Event()
    server = context.Process(target=_ceiling_server, args=(port, tls, ca.cert_pem, key_chain, ready))
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the bare gRPC server did not start")

        async def stream() -> float:
            address = f"127.0.0.1:{port}"
            if tls:
                options = [("grpc.ssl_target_name_override", TLS_SERVER_NAME)]
                channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca.cert_pem), options=options)
            else:
                channel = grpc.aio.insecure_channel(address)
            async with channel:
                await asyncio.wait_for(channel.channel_ready(), 30)
                stub = agent_pb2_grpc.AgentGatewayStub(channel)
                started = time.perf_counter()
                request = agent_pb2.FetchArtifactRequest(sha256="0" * 64, chunk_bytes=mib)
                received = sum([len(c.data) async for c in stub.FetchArtifact(request)])
                assert received == mib * CEILING_CHUNK
                return received / 2**20 / (time.perf_counter() - started)

        return max(asyncio.run(stream()) for _ in range(3))
    finally:
        server.terminate()
        server.join(10)


def agent_local_work_ms(source: Path, dest: Path, rounds: int = 3) -> dict[str, float]:
    """What ``fetch_blob`` does with the bytes besides receiving them, each step timed alone over the
    whole blob in 1 MiB pieces (median of ``rounds``): sha256, unbuffered writes, the final fsync."""
    pieces = []
    with source.open("rb") as file:
        while piece := file.read(1 << 20):
            pieces.append(piece)
    times: dict[str, list[float]] = {"sha256": [], "write": [], "fsync": []}
    for _ in range(rounds):
        started = time.perf_counter()
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)
        times["sha256"].append(time.perf_counter() - started)
        with dest.open("wb", buffering=0) as out:
            started = time.perf_counter()
            for piece in pieces:
                out.write(piece)
            times["write"].append(time.perf_counter() - started)
            started = time.perf_counter()
            os.fsync(out.fileno())
            times["fsync"].append(time.perf_counter() - started)
        dest.unlink()
    return {step: sorted(values)[len(values) // 2] * 1000 for step, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    opts = parser.parse_args()

    import grpc

    from agent.channel import device_channel
    from agent.enroll import enroll
    from agent.facts import collect_facts
    from agent.fetch import FetchError, FetchPolicy, fetch_blob
    from agent.fetch_https import device_https_endpoint, fetch_blob_https
    from agent.identity import identity_dir
    from controlplane.cli.models import push_bundle
    from protos.bundle_io import load_public_key, write_key_pair
    from protos.edgefleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
    from protos.join import parse_join_string
    from protos.limits import TLS_SERVER_NAME
    from tests.bundles import make_bundle_dir

    size = opts.mib * 2**20
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = start_server(tmp_path)
        try:
            api_port = server.api_port
            srv = server.data_dir
            creds = grpc.ssl_channel_credentials((srv / "ca.crt").read_bytes())
            admin_channel = grpc.secure_channel(
                f"127.0.0.1:{api_port}", creds, options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)]
            )
            admin = admin_pb2_grpc.AdminStub(admin_channel)
            meta = [("authorization", f"Bearer {(srv / 'admin.token').read_text().strip()}")]
            key = tmp_path / "release.key"
            write_key_pair(key)
            admin.AddPublisherKey(
                admin_pb2.AddPublisherKeyRequest(public_key=load_public_key(Path(f"{key}.pub")), name="r"),
                metadata=meta,
            )
            payload = os.urandom(size)
            sha = hashlib.sha256(payload).hexdigest()
            bundle = make_bundle_dir(tmp_path / "bundles", "big", 1, "fp32", extra_files={"weights.bin": payload})
            push_bundle(admin, meta, bundle, key)
            join = admin.CreateJoinToken(admin_pb2.CreateJoinTokenRequest(fleet="bench"), metadata=meta).join_string
            facts = collect_facts(data_dir=tmp_path, labels={})
            ident = asyncio.run(enroll(parse_join_string(join), data_dir=tmp_path / "dev", device_id="bench-1",
                                       facts=facts))  # fmt: skip
            admin.Deploy(
                admin_pb2.DeployRequest(name="big", version=1, variant="fp32", device_id="bench-1"), metadata=meta
            )
            admin_channel.close()

            class CutStub:
                """The device stub, but the stream stops after ``limit`` bytes: a link cut at that point."""

                def __init__(self, stub, limit: int) -> None:
                    self.stub, self.limit = stub, limit

                def FetchArtifact(self, request):  # noqa: N802 - gRPC name
                    call = self.stub.FetchArtifact(request)
                    limit = self.limit

                    class Cut:
                        def __aiter__(self):
                            return self._chunks()

                        async def _chunks(self):
                            sent = 0
                            async for chunk in call:
                                if sent + len(chunk.data) > limit:
                                    return
                                sent += len(chunk.data)
                                yield chunk

                        def cancel(self) -> None:
                            call.cancel()

                    return Cut()

            timed: list[float] = []
            folder = identity_dir(tmp_path / "dev")
            endpoint = device_https_endpoint(ident, folder, server.artifact_port)

            async def fetch(directory: Path, cut_at: float | None = None):
                # An agent fetches over the channel its session holds open: connect (TCP, TLS) first, then time.
                async with device_channel(ident) as channel:  # fmt: skip
                    await asyncio.wait_for(channel.channel_ready(), 30)
                    stub = agent_pb2_grpc.AgentGatewayStub(channel)
                    if cut_at is None:
                        started = time.perf_counter()
                        result = await fetch_blob(stub, sha, size, directory, policy=FetchPolicy())
                        timed.append(time.perf_counter() - started)
                        return result
                    try:
                        await fetch_blob(CutStub(stub, int(size * cut_at)), sha, size, directory, policy=FetchPolicy())
                    except FetchError as exc:
                        assert exc.retryable, exc
                        return None
                    raise SystemExit("the cut download did not stop")

            async def fetch_https(directory: Path, cut_at: float | None = None):
                if cut_at is None:
                    started = time.perf_counter()
                    result = await fetch_blob_https(endpoint, sha, size, directory)
                    timed.append(time.perf_counter() - started)
                    return result
                # Cancelled once half the blob is on disk, as a changed desired state or a stop would.
                task = asyncio.current_task()

                def progress(done: int) -> None:
                    if done >= size * cut_at:
                        task.cancel()

                try:
                    await fetch_blob_https(endpoint, sha, size, directory, progress=progress)
                except asyncio.CancelledError:
                    return None
                raise SystemExit("the cancelled download did not stop")

            # Each measurement starts with no dirty pages, so the kernel's writeback throttling
            # (left over from writing the bundle and the upload) hits neither side.
            raw_source = tmp_path / "raw-source.bin"
            raw_source.write_bytes(payload)
            # Rounds of (raw copy, HTTPS fetch, gRPC fetch), interleaved and each from clean pages: this
            # VM's disk varies a lot from one write to the next, so medians of side-by-side runs are compared.
            fetch_runs, grpc_runs, raw_runs = [], [], []
            for round_ in range(opts.rounds):
                os.sync()
                raw_runs.append(raw_copy(raw_source, tmp_path / f"raw-{round_}.bin", use_sendfile=False))
                (tmp_path / f"raw-{round_}.bin").unlink()
                for runs, how in ((fetch_runs, fetch_https), (grpc_runs, fetch)):
                    os.sync()
                    result = asyncio.run(how(tmp_path / f"full-{round_}"))
                    runs.append(timed.pop())
                    assert result.bytes_transferred == size
                    result.path.unlink()
            fetch_seconds = sorted(fetch_runs)[len(fetch_runs) // 2]
            grpc_seconds = sorted(grpc_runs)[len(grpc_runs) // 2]
            raw_seconds = sorted(raw_runs)[len(raw_runs) // 2]

            async def discard() -> float:
                async with device_channel(ident) as channel:  # fmt: skip
                    await asyncio.wait_for(channel.channel_ready(), 30)
                    stub = agent_pb2_grpc.AgentGatewayStub(channel)
                    started = time.perf_counter()
                    request = agent_pb2.FetchArtifactRequest(sha256=sha, chunk_bytes=1 << 20)
                    received = sum([len(c.data) async for c in stub.FetchArtifact(request)])
                    assert received == size
                    return time.perf_counter() - started

            discard_seconds = asyncio.run(discard())
            ceiling_plain = grpc_ceiling(opts.mib, tls=False)
            ceiling_tls = grpc_ceiling(opts.mib, tls=True)
            os.sync()
            sendfile_seconds = raw_copy(raw_source, tmp_path / "raw-dest2.bin", use_sendfile=True)

            local_ms = agent_local_work_ms(raw_source, tmp_path / "local-work.bin")

            os.sync()
            cut = tmp_path / "cut"
            asyncio.run(fetch_https(cut, cut_at=0.5))
            partial = (cut / f"{sha}.part").stat().st_size
            resumed = asyncio.run(fetch_https(cut))
            timed.pop()
        finally:
            stop_server(server)

    mib_s = size / 2**20 / fetch_seconds
    raw_mib_s = size / 2**20 / raw_seconds
    out = {
        "blob_mib": opts.mib,
        "edgefleet_seconds": fetch_seconds,
        "edgefleet_mib_per_s": mib_s,
        "raw_loopback_seconds": raw_seconds,
        "raw_loopback_mib_per_s": raw_mib_s,
        "ratio": mib_s / raw_mib_s,
        "fetch_runs_seconds": fetch_runs,
        "raw_runs_seconds": raw_runs,
        "grpc_seconds": grpc_seconds,
        "grpc_mib_per_s": size / 2**20 / grpc_seconds,
        "grpc_ratio": raw_seconds / grpc_seconds,
        "grpc_runs_seconds": grpc_runs,
        "stream_only_mib_per_s": size / 2**20 / discard_seconds,
        "sendfile_loopback_mib_per_s": size / 2**20 / sendfile_seconds,
        "grpc_ceiling_plain_mib_per_s": ceiling_plain,
        "grpc_ceiling_tls_mib_per_s": ceiling_tls,
        "cut_at_bytes": partial,
        "resume_transferred_bytes": resumed.bytes_transferred,
        "resume_resumed_from": resumed.resumed_from,
        "resume_fraction_of_blob": resumed.bytes_transferred / size,
        "agent_local_work_ms": local_ms,
        "cores": os.cpu_count(),
    }
    print(f"blob                  {opts.mib} MiB of random bytes")
    print(f"rounds                {opts.rounds} of (raw copy, HTTPS fetch, gRPC fetch) interleaved; medians below")
    print(
        f"edgefleet HTTPS       {fetch_seconds:.2f} s = {mib_s:.0f} MiB/s (fetch_blob_https: mTLS, handshake "
        "included, sha256, fsync)"
    )
    print(
        f"edgefleet gRPC        {grpc_seconds:.2f} s = {size / 2**20 / grpc_seconds:.0f} MiB/s "
        f"(fetch_blob over FetchArtifact, the fallback) = {raw_seconds / grpc_seconds:.0%} of raw"
    )
    print(
        f"gRPC stream (discard) {discard_seconds:.2f} s = {size / 2**20 / discard_seconds:.0f} MiB/s (no disk, no hash)"
    )
    print(f"raw loopback copy     {raw_seconds:.2f} s = {raw_mib_s:.0f} MiB/s (plain TCP read/send loop, fsync)")
    print(
        f"bare gRPC ceiling     {ceiling_plain:.0f} MiB/s plaintext, {ceiling_tls:.0f} MiB/s TLS "
        f"(= {ceiling_plain / raw_mib_s:.0%} / {ceiling_tls / raw_mib_s:.0%} of raw): two bare grpc.aio processes, "
        "the same 1 MiB chunks from memory into nothing, best of 3"
    )
    print(f"kernel sendfile copy  {sendfile_seconds:.2f} s = {size / 2**20 / sendfile_seconds:.0f} MiB/s (for scale)")
    print(
        f"agent's own work      sha256 {local_ms['sha256']:.0f} ms, write {local_ms['write']:.0f} ms, "
        f"fsync {local_ms['fsync']:.0f} ms for the whole blob, each alone, in 1 MiB pieces (median of 3)"
    )
    verdict = "met" if mib_s / raw_mib_s >= 0.5 else "NOT met"
    print(f"ratio                 HTTPS {mib_s / raw_mib_s:.1%} of raw; goal >= 50%: {verdict}")
    print(
        f"resume (HTTPS)        cancelled at {partial / size:.0%} ({partial} B); the resumed attempt transferred "
        f"{resumed.bytes_transferred} B = {resumed.bytes_transferred / size:.0%} of the blob "
        f"(exactly the rest: {'yes' if resumed.bytes_transferred == size - partial else 'NO'})"
    )
    print(json.dumps(out))
    if opts.json_out:
        opts.json_out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
