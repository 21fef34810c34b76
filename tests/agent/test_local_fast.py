"""The fast local socket (agent.local_fast) answers exactly what gRPC answers, through the same service
code, on the committed models; bad, oversize, unknown and cut frames are refused without hurting other
clients; many clients at once each get their own answers."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent import local_fast
from agent.local_api import LocalInferenceService, socket_path, start_local_api
from agent.local_fast import (
    HEADER,
    MAX_REQUEST_BYTES,
    METHOD_IDS,
    PREAMBLE,
    FastServer,
    LocalApiError,
    LocalClient,
    fast_socket_path,
)
from agent.serving import Serving
from protos.bundle_io import read_bundle_dir
from protos.edgefleet.v1 import bundle_pb2, common_pb2, inference_pb2, inference_pb2_grpc
from protos.tensors import from_numpy, to_numpy
from tests.bundles import GOLDEN_INPUT, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
NLU = ROOT / "models" / "text-nlu" / "snips-student-fp32"
DIGITS = ROOT / "models" / "speech-command" / "fsdd-digits-fp32"
WAV = ROOT / "tests" / "agent" / "data" / "fsdd" / "6_nicolas_7.wav"


def _activate_committed(serving: Serving, task: str, bundle: Path) -> None:
    manifest, _ = read_bundle_dir(bundle)
    ref = common_pb2.ModelRef(name=manifest.name, version=manifest.version, variant=manifest.variant)
    serving.activate(task, ref, bundle, manifest.SerializeToString())


def _activate_tiny(serving: Serving, root: Path, scale: float, version: int) -> None:
    directory = root / f"tiny-{version}"
    make_tiny_model(directory / "model.onnx", scale, 0.0)
    manifest = bundle_pb2.BundleManifest(name="tiny", version=version, variant="fp32", model_file="model.onnx")
    ref = common_pb2.ModelRef(name="tiny", version=version, variant="fp32")
    serving.activate("generic", ref, directory, manifest.SerializeToString())


class Agent:
    """The agent's two local transports, served by one service on an event loop in a thread."""

    def __init__(self, data_dir: Path, serving: Serving, *, max_connections: int = local_fast.MAX_CONNECTIONS):
        self.records: list[tuple] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            service = LocalInferenceService(serving, device_id="gw-1", record=lambda *a: self.records.append(a))
            server, _ = await start_local_api(service, data_dir)
            fast = FastServer(service, max_connections=max_connections)
            await fast.start(fast_socket_path(data_dir))
            return server, fast

        self.grpc_server, self.fast = self.run(start())
        self.channel = grpc.insecure_channel(f"unix://{socket_path(data_dir)}")
        self.stub = inference_pb2_grpc.LocalInferenceStub(self.channel)
        self.client = LocalClient(data_dir, timeout=30)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.client.close()
        self.channel.close()
        self.run(self.fast.close())
        self.run(self.grpc_server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def serving(tmp_path) -> Serving:
    serving = Serving(tmp_path, threads=1)
    _activate_committed(serving, "text-nlu", NLU)
    _activate_committed(serving, "speech-command", DIGITS)
    _activate_tiny(serving, tmp_path, 2.0, 1)
    return serving


@pytest.fixture
def agent(tmp_path, serving):
    agent = Agent(tmp_path, serving)
    yield agent
    agent.close()


def _raw(path: Path, preamble: bytes = PREAMBLE) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    sock.sendall(preamble)
    return sock


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < HEADER.size:
        chunk = sock.recv(HEADER.size - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    length, status = HEADER.unpack(header)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return status, body


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _without_latency(message):
    copy = type(message)()
    copy.CopyFrom(message)
    for field in ("served_by", "vad"):
        if field in copy.DESCRIPTOR.fields_by_name and copy.HasField(field):
            getattr(copy, field).latency_ms = 0
    return copy


def test_every_call_answers_as_over_grpc_on_the_committed_models(agent, tmp_path):
    features = np.random.default_rng(3).standard_normal((1, 1, 40, 100)).astype(np.float32)
    ids = np.array([[2, 150, 300, 3]], dtype=np.int64)
    requests = [
        ("Infer", inference_pb2.InferRequest(task="speech-command", inputs=[from_numpy("features", features)])),
        (
            "Infer",
            inference_pb2.InferRequest(
                task="text-nlu",
                inputs=[from_numpy("input_ids", ids), from_numpy("attention_mask", np.ones_like(ids))],
            ),
        ),
        ("Infer", inference_pb2.InferRequest(inputs=[from_numpy("x", GOLDEN_INPUT)])),
        ("Understand", inference_pb2.UnderstandRequest(text="play some jazz in the kitchen")),
        ("Recognize", inference_pb2.RecognizeRequest(wav=WAV.read_bytes())),
        ("GetStatus", inference_pb2.GetStatusRequest()),
    ]
    for method, request in requests:
        over_grpc = getattr(agent.stub, method)(request, timeout=30)
        over_fast = agent.client.call(method, request)
        assert type(over_fast) is type(over_grpc)
        assert _without_latency(over_fast) == _without_latency(over_grpc), method
        if over_fast.DESCRIPTOR.fields_by_name.get("served_by"):
            assert over_fast.served_by.model.name and over_fast.served_by.model.version >= 1
            assert over_fast.served_by.model.variant and over_fast.served_by.latency_ms > 0
    understand = agent.client.understand(inference_pb2.UnderstandRequest(text="play some jazz in the kitchen"))
    assert understand.intent == "PlayMusic" and understand.served_by.model.name == "snips-nlu-student"
    assert agent.client.recognize(inference_pb2.RecognizeRequest(wav=WAV.read_bytes())).label == "six"
    tiny = agent.client.infer(inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", GOLDEN_INPUT)]))
    assert np.allclose(to_numpy(tiny.outputs[0]), GOLDEN_INPUT * 2)
    # Telemetry hears of fast calls as of gRPC calls: 5 inferences per transport, and the two above.
    assert sum(1 for r in agent.records if r[2]) == 5 * 2 + 3
    assert fast_socket_path(tmp_path).stat().st_mode & 0o777 == 0o660


def test_errors_carry_the_same_status_and_details_as_grpc(agent):
    cases = [
        ("Infer", inference_pb2.InferRequest(task="nothing-here")),
        ("Infer", inference_pb2.InferRequest(task="generic", inputs=[from_numpy("wrong", GOLDEN_INPUT)])),
        ("Infer", inference_pb2.InferRequest(task="generic", inputs=[bundle_pb2.Tensor(name="x", dtype="complex")])),
        ("Understand", inference_pb2.UnderstandRequest(text="")),
        ("Understand", inference_pb2.UnderstandRequest(text="x" * 5000)),
        ("Recognize", inference_pb2.RecognizeRequest(wav=b"RIFF nonsense")),
        ("AcquireActivationLock", inference_pb2.AcquireActivationLockRequest(holder="app", ttl_seconds=0)),
        ("ReleaseActivationLock", inference_pb2.ReleaseActivationLockRequest(lock_id="nope")),
    ]
    for method, request in cases:
        with pytest.raises(grpc.RpcError) as over_grpc:
            getattr(agent.stub, method)(request, timeout=30)
        with pytest.raises(LocalApiError) as over_fast:
            agent.client.call(method, request)
        assert over_fast.value.code == over_grpc.value.code().name, method
        assert over_fast.value.details == over_grpc.value.details(), method
    # The connection is still usable after errors; locks taken on one transport are seen by the other.
    lock = agent.client.acquire_activation_lock(
        inference_pb2.AcquireActivationLockRequest(holder="app", ttl_seconds=60)
    )
    assert agent.stub.GetStatus(inference_pb2.GetStatusRequest(), timeout=10).activation_locks == 1
    agent.stub.ReleaseActivationLock(inference_pb2.ReleaseActivationLockRequest(lock_id=lock.lock_id), timeout=10)
    assert agent.client.get_status().activation_locks == 0


def test_activation_swaps_builds_between_fast_calls(agent, serving, tmp_path):
    request = inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", GOLDEN_INPUT)])
    assert agent.client.infer(request).served_by.model.version == 1
    _activate_tiny(serving, tmp_path, 3.0, 2)
    answer = agent.client.infer(request)
    assert answer.served_by.model.version == 2 and np.allclose(to_numpy(answer.outputs[0]), GOLDEN_INPUT * 3)


def test_unknown_method_and_undecodable_body_are_answered_and_the_connection_stays(agent, tmp_path):
    sock = _raw(fast_socket_path(tmp_path))
    sock.sendall(HEADER.pack(3, 99) + b"abc")
    assert _read_frame(sock) == (12, b"unknown method id 99")
    sock.sendall(HEADER.pack(4, METHOD_IDS["Infer"]) + b"\xff\xff\xff\xff")
    status, details = _read_frame(sock)
    assert status == 3 and details == b"the body is not a InferRequest"
    body = inference_pb2.GetStatusRequest().SerializeToString()
    sock.sendall(HEADER.pack(len(body), METHOD_IDS["GetStatus"]) + body)
    status, payload = _read_frame(sock)
    assert status == 0 and inference_pb2.GetStatusResponse.FromString(payload).device_id == "gw-1"
    sock.close()


def test_garbage_and_oversize_frames_close_the_connection_with_a_logged_reason(agent, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edgefleet.agent.local_fast")
    path = fast_socket_path(tmp_path)
    http2 = _raw(path, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    status, details = _read_frame(http2)
    assert status == 3 and b"not an edgefleet fast local API client" in details and _closed(http2)
    http2.close()
    huge = _raw(path)
    huge.sendall(HEADER.pack(MAX_REQUEST_BYTES + 1, METHOD_IDS["Infer"]))
    status, details = _read_frame(huge)
    assert status == 8 and b"over the 16777216 byte limit" in details and _closed(huge)
    huge.close()
    cut = _raw(path)
    cut.sendall(HEADER.pack(100, METHOD_IDS["Infer"]) + b"x" * 10)
    cut.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(caplog.records) < 3:
        time.sleep(0.02)
    reasons = [r.getMessage() for r in caplog.records]
    assert any("bad preamble b'PRI '" in r for r in reasons)
    assert any(f"oversize frame ({MAX_REQUEST_BYTES + 1} bytes)" in r for r in reasons)
    assert any("cut in a frame body (10 of 100 bytes)" in r for r in reasons)
    # The client library refuses to send an oversize request at all; the server still serves.
    big = inference_pb2.RecognizeRequest(wav=b"\0" * (MAX_REQUEST_BYTES + 1))
    with pytest.raises(LocalApiError) as refused:
        agent.client.recognize(big)
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    assert agent.client.get_status().device_id == "gw-1"


def test_a_stalled_client_blocks_nobody_and_is_dropped_after_the_frame_deadline(agent, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(local_fast, "FRAME_SECONDS", 1.0)
    caplog.set_level(logging.WARNING, logger="edgefleet.agent.local_fast")
    stalled = _raw(fast_socket_path(tmp_path))
    stalled.sendall(HEADER.pack(1000, METHOD_IDS["Infer"]) + b"x" * 10)  # and then nothing
    request = inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", GOLDEN_INPUT)])
    started = time.monotonic()
    for _ in range(20):
        agent.client.infer(request)
    assert time.monotonic() - started < 1.0  # answered while the stalled frame was pending
    assert _closed(stalled)
    stalled.close()
    assert any("frame body of 1000 bytes not sent within 1 s" in r.getMessage() for r in caplog.records)


def test_connections_over_the_cap_are_refused_and_the_others_served(tmp_path, serving, caplog):
    agent = Agent(tmp_path, serving, max_connections=2)
    try:
        open_ = [LocalClient(tmp_path), LocalClient(tmp_path)]
        for client in open_:
            client.get_status()
        extra = _raw(fast_socket_path(tmp_path))
        status, details = _read_frame(extra)
        assert status == 8 and details == b"too many connections (max 2)" and _closed(extra)
        extra.close()
        assert all(client.get_status().device_id == "gw-1" for client in open_)
        open_[0].close()
        deadline = time.monotonic() + 10
        while agent.fast.connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with LocalClient(tmp_path) as again:
            assert again.get_status().device_id == "gw-1"
        open_[1].close()
    finally:
        agent.close()


def test_concurrent_clients_each_get_their_own_answers(agent, tmp_path):
    def worker(index: int) -> int:
        rng = np.random.default_rng(index)
        wrong = 0
        with LocalClient(tmp_path) as client:
            for _ in range(40):
                x = rng.standard_normal((1, 4)).astype(np.float32)
                answer = client.infer(inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", x)]))
                wrong += not np.allclose(to_numpy(answer.outputs[0]), x * 2)
                if index % 2:
                    text = client.understand(inference_pb2.UnderstandRequest(text="play some jazz"))
                    wrong += text.intent != "PlayMusic"
        return wrong

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(worker, range(8))) == [0] * 8
    # One client shared between threads: calls take turns on its one connection.
    shared = agent.client
    x = np.full((1, 4), 5.0, np.float32)
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: shared.infer(inference_pb2.InferRequest(inputs=[from_numpy("x", x)])), range(40))
        )
    assert all(np.allclose(to_numpy(a.outputs[0]), 10.0) for a in answers)


def test_a_client_that_leaves_mid_request_does_not_disturb_the_agent(agent, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="edgefleet.agent.local_fast")
    wav = inference_pb2.RecognizeRequest(wav=WAV.read_bytes()).SerializeToString()
    for _ in range(5):  # Recognize runs in a worker thread: the client is gone before the answer
        leaving = _raw(fast_socket_path(tmp_path))
        leaving.sendall(HEADER.pack(len(wav), METHOD_IDS["Recognize"]) + wav)
        leaving.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (agent.fast.connections or len(agent.records) < 5):
        time.sleep(0.02)
    assert agent.fast.connections == 0 and len(agent.records) == 5  # answered, recorded, then dropped
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert agent.client.recognize(inference_pb2.RecognizeRequest(wav=WAV.read_bytes())).label == "six"


def test_client_errors_when_no_agent_serves_and_reconnects_after_a_restart(tmp_path, serving):
    client = LocalClient(tmp_path / "nowhere.sock", timeout=5)
    with pytest.raises(LocalApiError) as missing:
        client.get_status()
    assert missing.value.code == "UNAVAILABLE"
    first = Agent(tmp_path, serving)
    with LocalClient(tmp_path, timeout=5) as client:
        assert client.get_status().device_id == "gw-1"
        first.close()
        with pytest.raises(LocalApiError) as gone:
            client.get_status()
        assert gone.value.code == "UNAVAILABLE"
        second = Agent(tmp_path, serving)
        try:
            assert client.get_status().device_id == "gw-1"
        finally:
            second.close()


def test_header_layout_is_length_then_method():
    assert HEADER.size == 5 and HEADER.pack(1, 2) == struct.pack(">IB", 1, 2) and PREAMBLE == b"EFI1"


def test_edgefleet_infer_fast_prints_what_the_grpc_path_prints(agent, tmp_path, capsys):
    from edgefleet.cli import run

    answers = {}
    for fast in ([], ["--fast"]):
        assert (
            run(["infer", "text", "play some jazz in the kitchen", "--data-dir", str(tmp_path), "--json", *fast]) == 0
        )
        assert run(["infer", "audio", str(WAV), "--data-dir", str(tmp_path), "--json", *fast]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        for line in lines:
            line.pop("latency_ms")
        answers[bool(fast)] = lines
    assert answers[True] == answers[False]
    assert answers[True][0]["intent"] == "PlayMusic" and answers[True][1]["label"] == "six"
    assert run(["infer", "text", "", "--data-dir", str(tmp_path), "--fast"]) == 2
    assert "[INVALID_ARGUMENT]" in capsys.readouterr().err


def test_a_bug_in_the_agent_answers_unknown_on_both_transports_and_the_connection_stays(agent, caplog):
    def broken(*args):
        raise RuntimeError("boom")

    agent.fast.service.record = broken
    request = inference_pb2.InferRequest(inputs=[from_numpy("x", GOLDEN_INPUT)])
    with pytest.raises(grpc.RpcError) as over_grpc:
        agent.stub.Infer(request, timeout=10)
    with pytest.raises(LocalApiError) as over_fast:
        agent.client.infer(request)
    assert over_fast.value.code == over_grpc.value.code().name == "UNKNOWN"
    assert over_fast.value.details == over_grpc.value.details() == "Unexpected <class 'RuntimeError'>: boom"
    assert any("fast local API Infer failed" in r.getMessage() for r in caplog.records)
    agent.fast.service.record = None
    assert agent.client.infer(request).served_by.model.name == "tiny"
