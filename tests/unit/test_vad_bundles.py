"""The committed ``vad`` bundles (models/vad/, from scripts/models/build_vad.py) install and serve as the VAD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.acceptance import run_acceptance
from agent.pipelines.audio import VAD_NEG_THRESHOLD, VAD_THRESHOLD, SpeechPipeline
from agent.pipelines.frontend import read_wav
from protos.bundle_io import read_bundle_dir
from protos.bundles import validate_manifest
from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import to_numpy
from tests.agent.test_audio_pipeline import loaded, make_command
from tests.agent.test_frontend import FSDD, wav_bytes

VAD_DIR = Path(__file__).resolve().parents[2] / "models" / "vad"
BUNDLES = sorted(path.parent for path in VAD_DIR.glob("*/manifest.json"))
SILENCE_SECONDS = 0.5


def test_at_least_the_fp32_bundle_is_committed():
    assert VAD_DIR / "silero-vad-fp32" in BUNDLES


@pytest.fixture(params=BUNDLES, ids=lambda path: path.name)
def bundle(request) -> Path:
    return request.param


def test_the_bundle_directory_is_read_and_every_file_hashed(bundle):
    manifest, files = read_bundle_dir(bundle)
    assert set(files) == {manifest.model_file, "LICENSE"}
    assert all(len(f.sha256) == 64 and f.size_bytes == files[f.path].stat().st_size for f in manifest.files)
    validate_manifest(manifest)
    assert manifest.task == bundle_pb2.VAD and manifest.name == "silero-vad" and manifest.version == 1
    assert bundle.name == f"silero-vad-{manifest.variant}"
    assert manifest.licences["silero-vad"] == "MIT" and "MIT" in files["LICENSE"].read_text()


def test_the_golden_cases_hold_silence_and_speech_with_both_outputs(bundle):
    manifest, _ = read_bundle_dir(bundle)
    cases = {case.name: case for case in manifest.golden}
    assert set(cases) == {"silence-8k", "speech-8k"}
    for case in cases.values():
        inputs = {t.name: to_numpy(t) for t in case.inputs}
        assert set(inputs) == {"input", "state", "sr"}
        assert inputs["input"].shape == (1, 32 + 256) and inputs["state"].shape == (2, 1, 128)
        assert inputs["sr"].dtype == np.int64 and inputs["sr"].item() == 8000
        assert [t.name for t in case.expected_outputs] == ["output", "stateN"]
    probability = {name: to_numpy(case.expected_outputs[0]).item() for name, case in cases.items()}
    assert probability["silence-8k"] < VAD_NEG_THRESHOLD and probability["speech-8k"] >= VAD_THRESHOLD


def test_the_bundle_passes_the_on_device_acceptance_test_at_one_thread(bundle):
    manifest, _ = read_bundle_dir(bundle)
    report = run_acceptance(bundle, manifest, threads=1)
    assert report.passed, report.reason
    assert report.runs == manifest.acceptance.benchmark_runs == 20


def test_the_speech_pipeline_uses_the_bundle_to_find_a_spoken_digit_inside_silence(bundle, tmp_path):
    manifest, _ = read_bundle_dir(bundle)
    vad = loaded("vad", bundle / manifest.model_file, manifest)
    pipeline = SpeechPipeline.load(make_command(tmp_path), vad)
    speech, rate = read_wav((FSDD / "2_theo_34.wav").read_bytes())
    silence = np.zeros(round(SILENCE_SECONDS * rate), dtype=np.float32)
    result = pipeline.recognize(wav_bytes(np.concatenate([silence, speech, silence]), rate=rate))
    assert result.segmenter == "silero-vad"
    start, end = max(result.segments, key=lambda s: s[1] - s[0])
    speech_end = SILENCE_SECONDS + speech.size / rate
    assert SILENCE_SECONDS - 0.1 <= start < speech_end and SILENCE_SECONDS < end <= speech_end + 0.15
