"""The local inference API for apps on the device: gRPC on a unix socket in the data dir.

The same service is also served on a second socket with a lighter framing (``agent.local_fast``),
for apps where a gRPC call's own cost (~0.45 ms in Python) matters; both transports answer through
the same ``LocalInferenceService`` coroutines.

Raw inputs stay here: nothing a request carries is forwarded to the control
plane; only aggregated numbers reach telemetry. A model whose recent latency
is over INLINE_BELOW_MS runs in a worker thread (onnxruntime releases the
GIL), so the event loop keeps answering; a faster one runs inline, where a
thread hop would cost more than the inference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from agent.local_fast import LocalApiError
from agent.pipelines import BundleContractError, PipelineInputError
from agent.pipelines.audio import SpeechPipeline
from agent.pipelines.frontend import AudioError, FrontEndConfigError
from agent.pipelines.text import TASK as TEXT_TASK
from agent.pipelines.text import TextPipelines, check_text
from agent.serving import Serving
from protos.edgefleet.v1 import inference_pb2, inference_pb2_grpc
from protos.tensors import TensorError, from_numpy, to_numpy

log = logging.getLogger("edgefleet.agent.local_api")

SOCKET_NAME = "inference.sock"
INLINE_BELOW_MS = 1.0
MAX_TEXT_BYTES = 4096
MAX_AUDIO_BYTES = 8 * 1024 * 1024
MAX_REQUEST_BYTES = 16 * 1024 * 1024

# Called after every inference with (loaded model, latency ms, ok, confidence or None, input size).
Recorder = Callable[..., None]


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


class LocalInferenceService(inference_pb2_grpc.LocalInferenceServicer):
    """The API's logic, once for both transports: the coroutines ``infer`` ... ``get_status`` take a
    request message and return the response or raise ``LocalApiError``; the gRPC methods
    (``Infer`` ...) and the fast socket (``agent.local_fast``) only wrap them."""

    def __init__(self, serving: Serving, *, device_id: str, record: Recorder | None = None,
                 connected: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
        self.serving = serving
        self.device_id = device_id
        self.record = record
        self.connected = connected
        self._text = TextPipelines()

    # --- the gRPC methods --------------------------------------------------------

    async def Infer(self, request, context):  # noqa: N802
        return await _grpc_answer(self.infer, request, context)

    async def Understand(self, request, context):  # noqa: N802
        return await _grpc_answer(self.understand, request, context)

    async def Recognize(self, request, context):  # noqa: N802
        return await _grpc_answer(self.recognize, request, context)

    async def AcquireActivationLock(self, request, context):  # noqa: N802
        return await _grpc_answer(self.acquire_activation_lock, request, context)

    async def ReleaseActivationLock(self, request, context):  # noqa: N802
        return await _grpc_answer(self.release_activation_lock, request, context)

    async def GetStatus(self, request, context):  # noqa: N802
        return await _grpc_answer(self.get_status, request, context)

    # --- the logic ---------------------------------------------------------------

    async def infer(self, request: inference_pb2.InferRequest) -> inference_pb2.InferResponse:
        loaded = self.serving.current(request.task or "generic")
        if loaded is None:
            raise LocalApiError("FAILED_PRECONDITION", f"no active model for task {request.task!r}")
        try:
            feeds = {t.name: to_numpy(t) for t in request.inputs}
        except TensorError as exc:
            raise LocalApiError("INVALID_ARGUMENT", str(exc)) from None
        try:
            if loaded.recent_latency_ms < INLINE_BELOW_MS:
                # A sub-millisecond model costs less than a thread hop: run it on the loop.
                outputs, latency_ms = loaded.run(feeds)
            else:
                outputs, latency_ms = await asyncio.to_thread(loaded.run, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types for bad inputs
            self._record(loaded, 0.0, False, None, 0)
            raise LocalApiError("INVALID_ARGUMENT", f"model rejected the inputs: {str(exc)[:300]}") from None
        names = loaded.output_names
        self._record(loaded, latency_ms, True, None, sum(int(v.size) for v in feeds.values()))
        return inference_pb2.InferResponse(
            outputs=[from_numpy(name, value) for name, value in zip(names, outputs, strict=True)],
            served_by=inference_pb2.ServedBy(model=loaded.ref, latency_ms=latency_ms),
        )

    async def understand(self, request: inference_pb2.UnderstandRequest) -> inference_pb2.UnderstandResponse:
        try:
            check_text(request.text)
        except PipelineInputError as exc:
            raise LocalApiError("INVALID_ARGUMENT", str(exc)) from None
        loaded = self.serving.current(TEXT_TASK)
        if loaded is None:
            raise LocalApiError(
                "FAILED_PRECONDITION",
                f"no active {TEXT_TASK} model on this device: deploy one with `edgefleet deploy NAME:VERSION`",
            )
        try:
            pipeline = self._text.cached(loaded) or await asyncio.to_thread(self._text.get, loaded)
        except BundleContractError as exc:
            self._record(loaded, 0.0, False, None, 0)
            raise LocalApiError("FAILED_PRECONDITION", f"the active text-nlu build is unusable: {exc}") from None
        try:
            if pipeline.recent_latency_ms < INLINE_BELOW_MS:
                answer = pipeline.understand(request.text)
            else:
                answer = await asyncio.to_thread(pipeline.understand, request.text)
        except PipelineInputError as exc:
            self._record(loaded, 0.0, False, None, 0)
            raise LocalApiError("INVALID_ARGUMENT", str(exc)) from None
        self._record(loaded, answer.latency_ms, True, answer.confidence, answer.tokens)
        return inference_pb2.UnderstandResponse(
            intent=answer.intent,
            confidence=answer.confidence,
            slots=[inference_pb2.Slot(slot=s.slot, value=s.value, start=s.start, end=s.end) for s in answer.slots],
            served_by=inference_pb2.ServedBy(model=loaded.ref, latency_ms=answer.latency_ms),
        )

    async def recognize(self, request: inference_pb2.RecognizeRequest) -> inference_pb2.RecognizeResponse:
        if len(request.wav) > MAX_AUDIO_BYTES:
            raise LocalApiError(
                "INVALID_ARGUMENT", f"input of {len(request.wav)} bytes is over the {MAX_AUDIO_BYTES} limit"
            )
        command = self.serving.current("speech-command")
        if command is None:
            raise LocalApiError(
                "FAILED_PRECONDITION",
                "no active speech-command model on this device: deploy one with `edgefleet deploy NAME:VERSION`",
            )
        vad = self.serving.current("vad")  # None: the energy segmenter finds the speech
        try:
            pipeline = SpeechPipeline.load(command, vad)
            result = await asyncio.to_thread(pipeline.recognize, request.wav)
        except AudioError as exc:  # before FrontEndConfigError: both are ValueErrors
            self._record(command, 0.0, False, None, len(request.wav))
            raise LocalApiError("INVALID_ARGUMENT", str(exc)) from None
        except FrontEndConfigError as exc:
            self._record(command, 0.0, False, None, len(request.wav))
            raise LocalApiError("FAILED_PRECONDITION", f"the active speech-command build is broken: {exc}") from None
        seconds = sum(end - start for start, end in result.segments)
        self._record(command, result.latency_ms, True, result.confidence, seconds)
        response = inference_pb2.RecognizeResponse(
            label=result.label,
            confidence=result.confidence,
            segments=[inference_pb2.SpeechSegment(start_seconds=s, end_seconds=e) for s, e in result.segments],
            served_by=inference_pb2.ServedBy(model=command.ref, latency_ms=result.latency_ms),
        )
        if vad is not None:
            response.vad.CopyFrom(inference_pb2.ServedBy(model=vad.ref, latency_ms=result.vad_latency_ms))
        return response

    async def acquire_activation_lock(
        self, request: inference_pb2.AcquireActivationLockRequest
    ) -> inference_pb2.ActivationLock:
        try:
            lock_id = self.serving.locks.acquire(request.holder, request.ttl_seconds, time.monotonic())
        except ValueError as exc:
            raise LocalApiError("INVALID_ARGUMENT", str(exc)) from None
        return inference_pb2.ActivationLock(lock_id=lock_id, holder=request.holder, ttl_seconds=request.ttl_seconds)

    async def release_activation_lock(
        self, request: inference_pb2.ReleaseActivationLockRequest
    ) -> inference_pb2.ReleaseActivationLockResponse:
        if not self.serving.locks.release(request.lock_id):
            raise LocalApiError("NOT_FOUND", "no such activation lock (expired or released)")
        return inference_pb2.ReleaseActivationLockResponse()

    async def get_status(self, request: inference_pb2.GetStatusRequest) -> inference_pb2.GetStatusResponse:
        return inference_pb2.GetStatusResponse(
            device_id=self.device_id,
            active=[m.ref for m in self.serving.active()],
            connected=self.connected(),
            activation_locks=self.serving.locks.held(time.monotonic()),
        )

    def _record(self, loaded, latency_ms: float, ok: bool, confidence: float | None, size: float) -> None:
        if self.record is not None:
            self.record(loaded, latency_ms, ok, confidence, size)


async def _grpc_answer(logic, request, context):
    try:
        return await logic(request)
    except LocalApiError as exc:
        await context.abort(grpc.StatusCode[exc.code], exc.details)


async def start_local_api(
    service: LocalInferenceService, data_dir: Path, *, tcp_port: int | None = None
) -> tuple[grpc.aio.Server, int | None]:
    """Serve on <data_dir>/inference.sock (owner-only) and, if asked, on 127.0.0.1:tcp_port."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)])
    inference_pb2_grpc.add_LocalInferenceServicer_to_server(service, server)
    path = socket_path(data_dir)
    if path.exists():
        path.unlink()  # a stale socket from a killed agent
    server.add_insecure_port(f"unix://{path}")
    port = server.add_insecure_port(f"127.0.0.1:{tcp_port}") if tcp_port is not None else None
    await server.start()
    os.chmod(path, 0o660)
    return server, port
