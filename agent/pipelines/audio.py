"""Speech commands on the device: WAV bytes to a label, with the speech segments found.

Speech-command model contract (what a ``speech-command`` bundle must ship):
- the manifest's ``preprocessing.audio`` (``AudioFrontEnd``) describes the
  front end; ``agent.pipelines.frontend`` computes it the same way the build did;
- input ``features``: float32 [1, 1, n, num_frames], n = n_mels (``log-mel``),
  n_mfcc (``mfcc``) or 1 (``raw``);
- output ``logits``: float32 [1, n_labels], turned into probabilities here by softmax;
- ``labels_file``: a UTF-8 file in the bundle, one label per line, in logit order.

Segmentation: with a VAD model, Silero VAD's ONNX contract as shipped by the
``silero-vad`` package: inputs ``input`` float32 [1, context + chunk] (chunk
256 samples at 8 kHz / 512 at 16 kHz, preceded by the last 32 / 64 samples of
the previous chunk, as the package's ``OnnxWrapper`` feeds it), ``state``
float32 [2, 1, 128] and ``sr`` int64 scalar; outputs ``output`` [1, 1] speech
probability and ``stateN`` (fed back). Speech starts at probability >= 0.5 and
ends below 0.35 for at least 100 ms; segments under 100 ms are dropped and the
rest padded by 30 ms. Without a VAD model an energy segmenter (frame RMS over
a threshold between the noise floor and the peak) stands in, with the same
timing rules; ``Recognition.segmenter`` says which one ran.

The command model runs on the longest segment, or on the whole clip when no
speech was found. Input is bounded by ``MAX_WAV_BYTES`` and the front end's
``MAX_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from agent.pipelines import frontend
from agent.pipelines.frontend import AudioError, FrontEndConfigError
from agent.serving import LoadedModel

MAX_WAV_BYTES = 8 * 1024 * 1024
MAX_LABELS = 1000
MAX_LABELS_FILE_BYTES = 64 * 1024

VAD_THRESHOLD = 0.5
VAD_NEG_THRESHOLD = 0.35
MIN_SPEECH_SECONDS = 0.100
MIN_SILENCE_SECONDS = 0.100
SPEECH_PAD_SECONDS = 0.030
VAD_CHUNK = {8000: 256, 16000: 512}
VAD_CONTEXT = {8000: 32, 16000: 64}

ENERGY_FRAME_SECONDS = 0.020
ENERGY_HOP_SECONDS = 0.010
ENERGY_ABS_FLOOR = 1e-3  # about -60 dBFS: quieter than this is silence whatever the floor
ENERGY_RISE = 0.1  # the threshold sits this far from the noise floor towards the peak

Segment = tuple[float, float]


@dataclass(frozen=True)
class Recognition:
    label: str
    confidence: float
    segments: tuple[Segment, ...]  # (start_seconds, end_seconds) in the clip as sent
    latency_ms: float  # the command model's run
    vad_latency_ms: float  # all VAD model runs together; 0.0 for the energy segmenter
    segmenter: str  # "silero-vad" or "energy"


@dataclass(frozen=True)
class SpeechPipeline:
    command: LoadedModel
    vad: LoadedModel | None
    config: object  # bundle_pb2.AudioFrontEnd
    labels: tuple[str, ...]

    @classmethod
    def load(cls, command: LoadedModel, vad: LoadedModel | None = None) -> SpeechPipeline:
        """Check the bundle against the contract and read its labels.

        Raises FrontEndConfigError when the bundle does not follow the contract.
        """
        manifest = command.manifest
        if manifest.preprocessing.WhichOneof("kind") != "audio":
            raise FrontEndConfigError(f"{manifest.name}: the manifest has no audio front end (preprocessing.audio)")
        config = manifest.preprocessing.audio
        if config.kind not in frontend.KINDS:
            raise FrontEndConfigError(f"{manifest.name}: unknown front-end kind {config.kind!r}")
        labels = _read_labels(command.directory, config.labels_file)
        inputs = {i.name: i for i in command.session.get_inputs()}
        if "features" not in inputs:
            raise FrontEndConfigError(f"{manifest.name}: the model has no 'features' input")
        if "logits" not in command.output_names:
            raise FrontEndConfigError(f"{manifest.name}: the model has no 'logits' output")
        width = next(o.shape for o in command.session.get_outputs() if o.name == "logits")[-1]
        if isinstance(width, int) and width != len(labels):
            raise FrontEndConfigError(f"{manifest.name}: the model has {width} logits but {len(labels)} labels")
        if vad is not None:
            names = {i.name for i in vad.session.get_inputs()}
            if not {"input", "state", "sr"} <= names:
                raise FrontEndConfigError("the VAD model does not follow the Silero contract (input, state, sr)")
        return cls(command=command, vad=vad, config=config, labels=labels)

    def recognize(self, wav_bytes: bytes) -> Recognition:
        """Label one WAV clip. Raises AudioError for input the front end refuses."""
        if len(wav_bytes) > MAX_WAV_BYTES:
            raise AudioError(f"the audio is {len(wav_bytes)} bytes: the limit is {MAX_WAV_BYTES}")
        samples, rate = frontend.read_wav(wav_bytes)
        if self.vad is not None:
            segments, vad_ms = self._vad_segments(samples, rate)
            segmenter = "silero-vad"
        else:
            segments, vad_ms = energy_segments(samples, rate), 0.0
            segmenter = "energy"
        clip = samples
        if segments:
            start, end = max(segments, key=lambda s: s[1] - s[0])
            clip = samples[int(start * rate) : int(np.ceil(end * rate))]
        feeds = {"features": frontend.features(clip, rate, self.config)}
        outputs, latency_ms = self.command.run(feeds)
        logits = np.asarray(outputs[self.command.output_names.index("logits")], dtype=np.float64).reshape(-1)
        if logits.size != len(self.labels):
            raise FrontEndConfigError(f"the model gave {logits.size} logits for {len(self.labels)} labels")
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = int(np.argmax(probabilities))
        return Recognition(
            label=self.labels[best],
            confidence=float(probabilities[best]),
            segments=tuple(segments),
            latency_ms=latency_ms,
            vad_latency_ms=vad_ms,
            segmenter=segmenter,
        )

    def _vad_segments(self, samples: np.ndarray, rate: int) -> tuple[list[Segment], float]:
        vad_rate = rate if rate in VAD_CHUNK else 16000
        x = frontend.resample(samples, rate, vad_rate)
        probabilities, total_ms = silero_probabilities(self.vad.run, x, vad_rate)
        chunk_seconds = VAD_CHUNK[vad_rate] / vad_rate
        active = _hysteresis(probabilities, VAD_THRESHOLD, VAD_NEG_THRESHOLD)
        return _spans(active, chunk_seconds, chunk_seconds, samples.size / rate), total_ms


def silero_probabilities(run, samples: np.ndarray, rate: int) -> tuple[np.ndarray, float]:
    """Speech probability per chunk from a Silero-contract model; ``run(feeds) -> (outputs, ms)``."""
    chunk, context_size = VAD_CHUNK[rate], VAD_CONTEXT[rate]
    padded = np.pad(samples.astype(np.float32), (0, (-samples.size) % chunk))
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(context_size, dtype=np.float32)
    sr = np.array(rate, dtype=np.int64)
    probabilities, total_ms = [], 0.0
    for offset in range(0, padded.size, chunk):
        window = np.concatenate([context, padded[offset : offset + chunk]])
        outputs, ms = run({"input": window[None, :], "state": state, "sr": sr})
        probabilities.append(float(np.asarray(outputs[0]).reshape(-1)[0]))
        state = np.asarray(outputs[1], dtype=np.float32)
        context = window[-context_size:]
        total_ms += ms
    return np.array(probabilities), total_ms


def energy_segments(samples: np.ndarray, rate: int) -> list[Segment]:
    """Speech segments from frame RMS, for when no VAD model is active."""
    frame = max(1, round(ENERGY_FRAME_SECONDS * rate))
    hop = max(1, round(ENERGY_HOP_SECONDS * rate))
    x = np.asarray(samples, dtype=np.float64)
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    rms = np.sqrt(np.mean(frames**2, axis=1))
    floor, peak = float(np.percentile(rms, 10)), float(rms.max())
    threshold = max(ENERGY_ABS_FLOOR, floor + ENERGY_RISE * (peak - floor))
    return _spans(rms > threshold, hop / rate, frame / rate, samples.size / rate)


def _hysteresis(probabilities: np.ndarray, on: float, off: float) -> np.ndarray:
    active = np.zeros(probabilities.size, dtype=bool)
    speaking = False
    for i, p in enumerate(probabilities):
        speaking = p >= on or (speaking and p >= off)
        active[i] = speaking
    return active


def _spans(active: np.ndarray, hop_s: float, frame_s: float, duration_s: float) -> list[Segment]:
    """Active frames to (start, end) seconds: bridge short gaps, drop short bursts, pad, clamp."""
    raw: list[list[float]] = []
    for i in np.flatnonzero(active):
        start, end = i * hop_s, i * hop_s + frame_s
        if raw and start - raw[-1][1] < MIN_SILENCE_SECONDS:
            raw[-1][1] = end
        else:
            raw.append([start, end])
    segments: list[Segment] = []
    for start, end in raw:
        if end - start < MIN_SPEECH_SECONDS:
            continue
        start, end = max(0.0, start - SPEECH_PAD_SECONDS), min(duration_s, end + SPEECH_PAD_SECONDS)
        if segments and start <= segments[-1][1]:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments


def _read_labels(directory: Path, name: str) -> tuple[str, ...]:
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise FrontEndConfigError(f"labels_file {name!r} must be a relative path inside the bundle")
    path = directory / relative
    try:
        if path.is_symlink() or path.stat().st_size > MAX_LABELS_FILE_BYTES:
            raise FrontEndConfigError(f"labels_file {name!r} is a link or over {MAX_LABELS_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FrontEndConfigError(f"labels_file {name!r} cannot be read: {exc}") from exc
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not 1 <= len(labels) <= MAX_LABELS:
        raise FrontEndConfigError(f"labels_file {name!r} has {len(labels)} labels: expected 1 to {MAX_LABELS}")
    return labels
