"""`edgefleet infer`: ask the agent on this device, over its local socket, what the active models say.

Each answer names the build that served it. With ``--file`` every line is one input
(a text, or a wav path) and one JSON object is printed per line, so an evaluation over
hundreds of inputs runs in one process over one connection. ``--fast`` uses the agent's
second socket (``inference-fast.sock``, ``agent.local_fast``) instead of gRPC: same answers.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run inference through the local agent (on the device).", no_args_is_help=True)

DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="The agent's data dir (holds inference.sock)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="One input per line; one JSON object per line out")]
FastOpt = Annotated[bool, typer.Option("--fast", help="Use the agent's fast socket (inference-fast.sock), not gRPC")]
TIMEOUT_SECONDS = 30.0


class InferError(Exception):
    """The local agent could not answer; the message says why."""


@contextmanager
def _connect(data_dir: Path, fast: bool) -> Iterator[Callable]:
    """Yields ``call(method, request)`` over one connection: gRPC, or the fast socket with ``fast``."""
    if fast:
        from agent.local_fast import LocalApiError, LocalClient, fast_socket_path

        path = fast_socket_path(data_dir)
        if not path.exists():
            raise InferError(f"no agent is serving in {data_dir} ({path} is missing): is `edgefleet agent` running?")

        def call_fast(method: str, request):
            try:
                return client.call(method, request)
            except LocalApiError as exc:
                raise InferError(f"{exc.details} [{exc.code}]") from exc

        with LocalClient(path, timeout=TIMEOUT_SECONDS) as client:
            yield call_fast
        return
    import grpc

    from agent.local_api import socket_path
    from protos.edgefleet.v1 import inference_pb2_grpc

    path = socket_path(data_dir)
    if not path.exists():
        raise InferError(f"no agent is serving in {data_dir} ({path} is missing): is `edgefleet agent` running?")
    with grpc.insecure_channel(f"unix://{path}") as channel:
        stub = inference_pb2_grpc.LocalInferenceStub(channel)
        yield lambda method, request: getattr(stub, method)(request, timeout=TIMEOUT_SECONDS)


def _served(result: dict) -> str:
    model = result["model"]
    return f"[{model['name']}:{model['version']}:{model['variant']}, {result['latency_ms']:.1f} ms]"


def _model(served_by) -> dict:
    ref = served_by.model
    return {"name": ref.name, "version": ref.version, "variant": ref.variant}


def understand_json(response) -> dict:
    return {
        "intent": response.intent,
        "confidence": round(float(response.confidence), 6),
        "slots": [{"slot": s.slot, "value": s.value, "start": s.start, "end": s.end} for s in response.slots],
        "model": _model(response.served_by),
        "latency_ms": round(response.served_by.latency_ms, 3),
    }


def recognize_json(response) -> dict:
    return {
        "label": response.label,
        "confidence": round(float(response.confidence), 6),
        "segments": [{"start": s.start_seconds, "end": s.end_seconds} for s in response.segments],
        "model": _model(response.served_by),
        "vad": _model(response.vad) if response.HasField("vad") else None,
        "latency_ms": round(response.served_by.latency_ms, 3),
    }


def _inputs(single: str | None, file: Path | None) -> list[str]:
    if file is not None:
        try:
            return [line.rstrip("\n") for line in file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise InferError(f"cannot read {file}: {exc.strerror}") from exc
    if single is None:
        raise InferError("give an input, or --file PATH")
    return [single]


@app.command("text")
def text(
    utterance: Annotated[str | None, typer.Argument(help="The text to understand")] = None,
    data_dir: DataDirOpt = Path("/var/lib/edgefleet"),
    json_out: JsonOpt = False,
    file: FileOpt = None,
    fast: FastOpt = False,
) -> None:
    """Intent and slots for a text.

    Example: edgefleet infer text "play some jazz in the kitchen" --data-dir /var/lib/edgefleet --json
    """
    from protos.edgefleet.v1 import inference_pb2

    with _connect(data_dir, fast) as call:
        for item in _inputs(utterance, file):
            response = call("Understand", inference_pb2.UnderstandRequest(text=item))
            result = understand_json(response)
            if json_out or file is not None:
                sys.stdout.write(json.dumps(result) + "\n")
            else:
                slots = ", ".join(f"{s['slot']}={s['value']!r}" for s in result["slots"]) or "no slots"
                print(f"{result['intent']} ({result['confidence']:.2f}); {slots}  {_served(result)}")


@app.command("audio")
def audio(
    wav: Annotated[Path | None, typer.Argument(help="A wav file (PCM 16-bit mono)")] = None,
    data_dir: DataDirOpt = Path("/var/lib/edgefleet"),
    json_out: JsonOpt = False,
    file: FileOpt = None,
    fast: FastOpt = False,
) -> None:
    """The spoken command in a recording (speech found by VAD first).

    Example: edgefleet infer audio command.wav --data-dir /var/lib/edgefleet --json
    """
    from protos.edgefleet.v1 import inference_pb2

    with _connect(data_dir, fast) as call:
        for item in _inputs(str(wav) if wav else None, file):
            try:
                data = Path(item).read_bytes()
            except OSError as exc:
                raise InferError(f"cannot read {item}: {exc.strerror}") from exc
            response = call("Recognize", inference_pb2.RecognizeRequest(wav=data))
            result = recognize_json(response)
            if json_out or file is not None:
                sys.stdout.write(json.dumps(result) + "\n")
            else:
                segments = len(result["segments"])
                print(
                    f"{result['label']} ({result['confidence']:.2f}); {segments} speech segment(s)  {_served(result)}"
                )


@app.command("status")
def status(data_dir: DataDirOpt = Path("/var/lib/edgefleet"), json_out: JsonOpt = False, fast: FastOpt = False) -> None:
    """What the local agent serves now.

    Example: edgefleet infer status --data-dir /var/lib/edgefleet
    """
    from google.protobuf import json_format

    from protos.edgefleet.v1 import inference_pb2

    with _connect(data_dir, fast) as call:
        response = call("GetStatus", inference_pb2.GetStatusRequest())
    if json_out:
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    print(f"device {response.device_id}; connected: {'yes' if response.connected else 'no'}; "
          f"activation locks held: {response.activation_locks}")  # fmt: skip
    for ref in response.active:
        print(f"  active {ref.name}:{ref.version}:{ref.variant}")
    if not response.active:
        print("  no active model")
