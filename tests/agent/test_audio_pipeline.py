"""The speech pipeline end to end with tiny real ONNX models: segments, labels, the VAD path and refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from agent.pipelines.audio import MAX_WAV_BYTES, SpeechPipeline
from agent.pipelines.frontend import AudioError, FrontEndConfigError, read_wav
from agent.serving import LoadedModel
from protos.edgefleet.v1 import bundle_pb2, common_pb2
from tests.agent.test_frontend import FSDD, RATE, make_config, tone, wav_bytes
from tests.bundles import IR_VERSION, OPSET

LABELS = ("low", "high")
SILENCE_BEFORE, TONE_SECONDS, SILENCE_AFTER = 0.5, 0.4, 0.6
TOLERANCE_SECONDS = 0.05


def make_command_model(path: Path, n_mels: int, num_frames: int) -> Path:
    """logits = mean over frames of the log-mel, times weights rising on low bands for "low", high for "high"."""
    slope = np.linspace(1.0, -1.0, n_mels, dtype=np.float32)
    weights = np.stack([slope, -slope], axis=1)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[1, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "weights"], ["logits"]),
        ],
        "tone-command",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 1, n_mels, num_frames])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(LABELS)])],
        initializer=[helper.make_tensor("weights", TensorProto.FLOAT, weights.shape, weights.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_fake_vad(path: Path) -> Path:
    """Silero's I/O contract with an energy rule inside: speech when over 2/3 of the window holds a 0.5 tone.

    probability = sigmoid(240 * mean(x^2) - 20); a full window of the tone has mean(x^2) = 0.125.
    """
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "input"], ["squared"]),
            helper.make_node("ReduceMean", ["squared"], ["energy"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["energy", "gain"], ["scaled"]),
            helper.make_node("Sub", ["scaled", "offset"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], ["output"]),
            helper.make_node("Identity", ["state"], ["stateN"]),
        ],
        "fake-silero",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "samples"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 128]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, 128]),
        ],
        initializer=[
            helper.make_tensor("gain", TensorProto.FLOAT, [], [240.0]),
            helper.make_tensor("offset", TensorProto.FLOAT, [], [20.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def loaded(task: str, model_path: Path, manifest: bundle_pb2.BundleManifest) -> LoadedModel:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ref = common_pb2.ModelRef(name=manifest.name, version=manifest.version)
    return LoadedModel(task=task, ref=ref, manifest=manifest, directory=model_path.parent, session=session)


def make_command(tmp_path: Path, labels: tuple[str, ...] = LABELS, labels_file: str = "labels.txt") -> LoadedModel:
    cfg = make_config(labels_file=labels_file)
    directory = tmp_path / "command"
    directory.mkdir()
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")
    model = make_command_model(directory / "model.onnx", cfg.n_mels, cfg.num_frames)
    manifest = bundle_pb2.BundleManifest(
        name="tones", version=1, model_file="model.onnx", preprocessing=bundle_pb2.Preprocessing(audio=cfg)
    )
    return loaded("speech-command", model, manifest)


def make_vad(path: Path) -> LoadedModel:
    return loaded("vad", path, bundle_pb2.BundleManifest(name="vad", version=1, model_file=path.name))


def tone_clip(freq_hz: float) -> bytes:
    silence = np.zeros(round(SILENCE_BEFORE * RATE), dtype=np.float32)
    after = np.zeros(round(SILENCE_AFTER * RATE), dtype=np.float32)
    return wav_bytes(np.concatenate([silence, tone(freq_hz, TONE_SECONDS), after]))


def assert_one_segment_around_the_tone(segments):
    assert len(segments) == 1
    start, end = segments[0]
    assert abs(start - SILENCE_BEFORE) <= TOLERANCE_SECONDS
    assert abs(end - (SILENCE_BEFORE + TONE_SECONDS)) <= TOLERANCE_SECONDS


@pytest.mark.parametrize(("freq_hz", "label"), [(300.0, "low"), (2500.0, "high")])
def test_energy_segmenter_finds_the_tone_and_the_model_labels_it(tmp_path, freq_hz, label):
    pipeline = SpeechPipeline.load(make_command(tmp_path), None)
    result = pipeline.recognize(tone_clip(freq_hz))
    assert result.segmenter == "energy" and result.vad_latency_ms == 0.0
    assert_one_segment_around_the_tone(result.segments)
    assert result.label == label and 0.5 < result.confidence <= 1.0
    assert result.latency_ms > 0


@pytest.mark.parametrize(("freq_hz", "label"), [(300.0, "low"), (2500.0, "high")])
def test_a_vad_model_with_silero_io_segments_the_clip(tmp_path, freq_hz, label):
    pipeline = SpeechPipeline.load(make_command(tmp_path), make_vad(make_fake_vad(tmp_path / "vad.onnx")))
    result = pipeline.recognize(tone_clip(freq_hz))
    assert result.segmenter == "silero-vad" and result.vad_latency_ms > 0
    assert_one_segment_around_the_tone(result.segments)
    assert result.label == label


def test_silence_has_no_segments_and_the_whole_clip_is_labelled(tmp_path):
    pipeline = SpeechPipeline.load(make_command(tmp_path), None)
    result = pipeline.recognize(wav_bytes(np.zeros(RATE, dtype=np.float32)))
    assert result.segments == ()
    assert result.label in LABELS and result.confidence == pytest.approx(0.5, abs=1e-3)


SILERO = importlib.util.find_spec("silero_vad")  # the package imports torch: locate its file, do not import it
SILERO_ONNX = Path(SILERO.submodule_search_locations[0]) / "data" / "silero_vad.onnx" if SILERO else None


@pytest.mark.skipif(SILERO_ONNX is None or not SILERO_ONNX.exists(), reason="silero-vad is not installed")
# 6_nicolas_7 is left out: Silero hears only ~60 ms of it as speech, under the 100 ms minimum.
@pytest.mark.parametrize("name", ["2_theo_34", "6_yweweler_3"])
def test_real_silero_vad_finds_a_spoken_digit_inside_silence(tmp_path, name):
    speech, rate = read_wav((FSDD / f"{name}.wav").read_bytes())
    silence = np.zeros(round(SILENCE_BEFORE * rate), dtype=np.float32)
    clip = wav_bytes(np.concatenate([silence, speech, silence]), rate=rate)
    pipeline = SpeechPipeline.load(make_command(tmp_path), make_vad(SILERO_ONNX))
    result = pipeline.recognize(clip)
    assert result.segmenter == "silero-vad"
    start, end = max(result.segments, key=lambda s: s[1] - s[0])
    speech_end = SILENCE_BEFORE + speech.size / rate
    assert SILENCE_BEFORE - 0.1 <= start < speech_end and SILENCE_BEFORE < end <= speech_end + 0.15


@pytest.mark.parametrize("path", sorted(FSDD.glob("*.wav")), ids=lambda p: p.stem)
def test_a_real_fsdd_recording_runs_end_to_end(tmp_path, path):
    result = SpeechPipeline.load(make_command(tmp_path), None).recognize(path.read_bytes())
    assert result.label in LABELS and 0.5 <= result.confidence <= 1.0
    assert result.segments and all(0.0 <= s < e for s, e in result.segments)


@pytest.mark.parametrize("data", [b"", b"RIFF....WAVEfmt garbage", wav_bytes(tone(440, 0.1), channels=2)])
def test_malformed_audio_is_refused(tmp_path, data):
    with pytest.raises(AudioError):
        SpeechPipeline.load(make_command(tmp_path), None).recognize(data)


def test_oversized_audio_is_refused_before_parsing(tmp_path):
    with pytest.raises(AudioError, match="limit"):
        SpeechPipeline.load(make_command(tmp_path), None).recognize(b"RIFF" + bytes(MAX_WAV_BYTES))


def test_a_bundle_whose_labels_do_not_match_the_logits_is_refused(tmp_path):
    with pytest.raises(FrontEndConfigError, match="2 logits but 3 labels"):
        SpeechPipeline.load(make_command(tmp_path, labels=("a", "b", "c")), None)


def test_a_labels_file_outside_the_bundle_is_refused(tmp_path):
    with pytest.raises(FrontEndConfigError, match="relative path inside the bundle"):
        SpeechPipeline.load(make_command(tmp_path, labels_file="../labels.txt"), None)


def test_a_vad_model_without_the_silero_inputs_is_refused(tmp_path):
    command = make_command(tmp_path)
    with pytest.raises(FrontEndConfigError, match="Silero contract"):
        SpeechPipeline.load(command, command)


def test_recognize_rpc_answers_with_the_active_command_model(tmp_path):
    """The local API's Recognize runs the speech pipeline of the active speech-command build."""
    import asyncio

    import grpc

    from agent.local_api import LocalInferenceService, socket_path, start_local_api
    from agent.serving import Serving
    from protos.edgefleet.v1 import inference_pb2, inference_pb2_grpc

    command = make_command(tmp_path)
    serving = Serving(tmp_path, threads=1)
    (command.directory / "manifest.pb").write_bytes(command.manifest.SerializeToString())
    serving.activate("speech-command", command.ref, command.directory, command.manifest.SerializeToString())
    wav = tone_clip(300.0)

    async def scenario():
        server, _ = await start_local_api(LocalInferenceService(serving, device_id="gw-1"), tmp_path)
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket_path(tmp_path)}") as channel:
                stub = inference_pb2_grpc.LocalInferenceStub(channel)
                answer = await stub.Recognize(inference_pb2.RecognizeRequest(wav=wav), timeout=30)
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.Recognize(inference_pb2.RecognizeRequest(wav=b"RIFF nonsense"), timeout=30)
            return answer, bad.value
        finally:
            await server.stop(None)

    answer, bad = asyncio.run(scenario())
    assert answer.label == "low" and 0 < answer.confidence <= 1
    assert len(answer.segments) == 1 and answer.served_by.model.name == command.ref.name
    assert not answer.HasField("vad")  # no VAD model active: the energy segmenter was used
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
