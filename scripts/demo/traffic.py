"""Apps on the demo's devices: texts and recordings through each agent's local inference API.

Each round sends one text to every device (snips-nlu-student) and, every --audio-every rounds, one
recording (silero-vad, then fsdd-digits); every device gets the same inputs in the same order, so
the devices' telemetry is comparable (a rollout's gate compares canaries with the rest). Calls go
over the agents' unix sockets (agent/local_api.py), one channel per device, one call at a time, so
the load stays modest. A device that is not serving yet (or restarting) is skipped until it is.

    traffic.py --rate 2 --audio-every 2 --stats STATS.json DATA_DIR...

Runs until SIGTERM or SIGINT; writes its counts to --stats every few seconds and on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import grpc

from protos.edgefleet.v1 import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
TEXTS = (
    "play some jazz music",
    "book a table for two in Paris tomorrow",
    "what will the weather be like in Berlin this weekend",
    "add this song to my workout playlist",
    "rate this book five stars",
    "find the movie schedule for tonight",
    "search for the album thriller",
)
WAVS = tuple(sorted((ROOT / "tests" / "agent" / "data" / "fsdd").glob("*.wav")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", type=Path, help="the agents' data dirs (each holds inference.sock)")
    parser.add_argument("--rate", type=float, default=2.0, help="rounds per second (one text per device each)")
    parser.add_argument("--audio-every", type=int, default=2, help="a recording every N rounds (0: none)")
    parser.add_argument("--stats", type=Path, help="write counts here (JSON)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    wavs = [w.read_bytes() for w in WAVS]
    channels = [grpc.insecure_channel(f"unix://{d / 'inference.sock'}") for d in args.dirs]
    stubs = [inference_pb2_grpc.LocalInferenceStub(c) for c in channels]
    counts = {"text": 0, "audio": 0, "failed": 0, "devices": len(stubs), "pid": os.getpid()}
    last_write, rounds = 0.0, 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            text = TEXTS[rounds % len(TEXTS)]
            audio = wavs[(rounds // max(args.audio_every, 1)) % len(wavs)] if wavs and args.audio_every else None
            send_audio = audio is not None and rounds % args.audio_every == 0
            for stub in stubs:
                try:
                    stub.Understand(inference_pb2.UnderstandRequest(text=text), timeout=5)
                    counts["text"] += 1
                    if send_audio:
                        stub.Recognize(inference_pb2.RecognizeRequest(wav=audio), timeout=5)
                        counts["audio"] += 1
                except grpc.RpcError:
                    counts["failed"] += 1  # not serving yet, restarting, or a model being swapped
            rounds += 1
            if args.stats and started - last_write > 2.0:
                _write(args.stats, counts)
                last_write = started
            stop.wait(max(0.0, 1.0 / args.rate - (time.monotonic() - started)))
    finally:
        if args.stats:
            _write(args.stats, counts)
        for channel in channels:
            channel.close()
    return 0


def _write(path: Path, counts: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
