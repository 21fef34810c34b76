"""Apps on the device reach the active build over the unix socket; activation swaps builds between
requests; activation locks are leases; a restarted agent serves its last active build."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from agent.local_api import LocalInferenceService, socket_path, start_local_api
from agent.serving import ActivationLocks, Serving
from protos.edgefleet.v1 import bundle_pb2, common_pb2, inference_pb2, inference_pb2_grpc
from protos.tensors import from_numpy, to_numpy
from tests.bundles import GOLDEN_INPUT, golden_case, make_tiny_model


def _build(root, scale: float, version: int):
    directory = root / f"build-{version}"
    make_tiny_model(directory / "model.onnx", scale, 0.0)
    manifest = bundle_pb2.BundleManifest(
        name="tiny", version=version, variant="fp32", model_file="model.onnx", golden=[golden_case(scale, 0.0)]
    )
    (directory / "manifest.pb").write_bytes(manifest.SerializeToString())
    ref = common_pb2.ModelRef(name="tiny", version=version, variant="fp32")
    return ref, directory, manifest.SerializeToString()


async def _infer(path) -> inference_pb2.InferResponse:
    async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
        stub = inference_pb2_grpc.LocalInferenceStub(channel)
        return await stub.Infer(
            inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", GOLDEN_INPUT)]), timeout=10
        )


def test_inference_is_served_by_the_active_build_and_switches_on_activation(tmp_path):
    serving = Serving(tmp_path, threads=1)

    async def scenario():
        server, _ = await start_local_api(LocalInferenceService(serving, device_id="gw-1"), tmp_path)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as none_yet:
                await _infer(socket_path(tmp_path))
            assert none_yet.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            serving.activate("generic", *_build(tmp_path, 2.0, 1))
            first = await _infer(socket_path(tmp_path))
            serving.activate("generic", *_build(tmp_path, 3.0, 2))
            second = await _infer(socket_path(tmp_path))
            return first, second
        finally:
            await server.stop(None)

    first, second = asyncio.run(scenario())
    assert np.allclose(to_numpy(first.outputs[0]), GOLDEN_INPUT * 2)
    assert first.served_by.model.version == 1 and first.served_by.latency_ms > 0
    assert np.allclose(to_numpy(second.outputs[0]), GOLDEN_INPUT * 3)
    assert second.served_by.model.version == 2


def test_restarted_agent_serves_its_last_active_build(tmp_path):
    Serving(tmp_path, threads=1).activate("generic", *_build(tmp_path, 5.0, 7))
    restarted = Serving(tmp_path, threads=1)
    assert restarted.restore() == []
    loaded = restarted.current("generic")
    assert loaded is not None and loaded.ref.version == 7
    outputs, _ = loaded.run({"x": GOLDEN_INPUT})
    assert np.allclose(outputs[0], GOLDEN_INPUT * 5)


def test_build_that_does_not_load_never_becomes_active(tmp_path):
    serving = Serving(tmp_path, threads=1)
    serving.activate("generic", *_build(tmp_path, 2.0, 1))
    ref, directory, manifest = _build(tmp_path, 3.0, 2)
    (directory / "model.onnx").write_bytes(b"broken")
    with pytest.raises(Exception, match="(?i)protobuf|invalid|load"):
        serving.activate("generic", ref, directory, manifest)
    assert serving.current("generic").ref.version == 1
    assert Serving(tmp_path).restore() == [] and Serving(tmp_path, threads=1)


def test_activation_locks_are_leases_that_expire():
    locks = ActivationLocks()
    lock = locks.acquire("vehicle-in-motion", 30, now=100.0)
    assert locks.held(now=110.0) == 1
    assert locks.held(now=131.0) == 0
    assert not locks.release(lock)
    other = locks.acquire("app", 10, now=200.0)
    assert locks.release(other) and locks.held(now=201.0) == 0
    with pytest.raises(ValueError, match="ttl_seconds"):
        locks.acquire("app", 0, now=0.0)


def test_task_calls_without_an_active_model_say_what_to_deploy(tmp_path):
    serving = Serving(tmp_path, threads=1)

    async def scenario():
        server, _ = await start_local_api(LocalInferenceService(serving, device_id="gw-1"), tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket_path(tmp_path)}") as channel:
                stub = inference_pb2_grpc.LocalInferenceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as text:
                    await stub.Understand(inference_pb2.UnderstandRequest(text="play jazz"), timeout=10)
                with pytest.raises(grpc.aio.AioRpcError) as huge:
                    await stub.Understand(inference_pb2.UnderstandRequest(text="x" * 5000), timeout=10)
                status = await stub.GetStatus(inference_pb2.GetStatusRequest(), timeout=10)
            return text.value, huge.value, status
        finally:
            await server.stop(None)

    text, huge, status = asyncio.run(scenario())
    assert text.code() == grpc.StatusCode.FAILED_PRECONDITION and "no active text-nlu model" in text.details()
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status.device_id == "gw-1" and list(status.active) == [] and status.activation_locks == 0
