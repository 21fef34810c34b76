"""`edgefleet infer`: ask the agent on this device, over its local socket, what the active models say.

Each answer names the build that served it. With ``--file`` every line is one input
(a text, or a wav path) and one JSON object is printed per line, so an evaluation over
hundreds of inputs runs in one process over one connection.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run inference through the local agent (on the device).", no_args_is_help=True)

DataDirOpt = Annotated[Path, typer.Option("--data-dir", help="The agent's data dir (holds inference.sock)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="One input per line; one JSON object per line out")]
TIMEOUT_SECONDS = 30.0


class InferError(Exception):
    """The local agent could not answer; the message says why."""


def _stub(data_dir: Path):
    import grpc

    from agent.local_api import socket_path
    from protos.edgefleet.v1 import inference_pb2_grpc

    path = socket_path(data_dir)
    if not path.exists():
        raise InferError(f"no agent is serving in {data_dir} ({path} is missing): is `edgefleet agent` running?")
    return grpc.insecure_channel(f"unix://{path}"), inference_pb2_grpc.LocalInferenceStub


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
) -> None:
    """Intent and slots for a text.

    Example: edgefleet infer text "play some jazz in the kitchen" --data-dir /var/lib/edgefleet --json
    """
    from protos.edgefleet.v1 import inference_pb2

    channel, stub_class = _stub(data_dir)
    with channel:
        stub = stub_class(channel)
        for item in _inputs(utterance, file):
            response = stub.Understand(inference_pb2.UnderstandRequest(text=item), timeout=TIMEOUT_SECONDS)
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
) -> None:
    """The spoken command in a recording (speech found by VAD first).

    Example: edgefleet infer audio command.wav --data-dir /var/lib/edgefleet --json
    """
    from protos.edgefleet.v1 import inference_pb2

    channel, stub_class = _stub(data_dir)
    with channel:
        stub = stub_class(channel)
        for item in _inputs(str(wav) if wav else None, file):
            try:
                data = Path(item).read_bytes()
            except OSError as exc:
                raise InferError(f"cannot read {item}: {exc.strerror}") from exc
            response = stub.Recognize(inference_pb2.RecognizeRequest(wav=data), timeout=TIMEOUT_SECONDS)
            result = recognize_json(response)
            if json_out or file is not None:
                sys.stdout.write(json.dumps(result) + "\n")
            else:
                segments = len(result["segments"])
                print(
                    f"{result['label']} ({result['confidence']:.2f}); {segments} speech segment(s)  {_served(result)}"
                )


@app.command("status")
def status(data_dir: DataDirOpt = Path("/var/lib/edgefleet"), json_out: JsonOpt = False) -> None:
    """What the local agent serves now.

    Example: edgefleet infer status --data-dir /var/lib/edgefleet
    """
    from google.protobuf import json_format

    from protos.edgefleet.v1 import inference_pb2

    channel, stub_class = _stub(data_dir)
    with channel:
        response = stub_class(channel).GetStatus(inference_pb2.GetStatusRequest(), timeout=TIMEOUT_SECONDS)
    if json_out:
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    print(f"device {response.device_id}; connected: {'yes' if response.connected else 'no'}; "
          f"activation locks held: {response.activation_locks}")  # fmt: skip
    for ref in response.active:
        print(f"  active {ref.name}:{ref.version}:{ref.variant}")
    if not response.active:
        print("  no active model")
