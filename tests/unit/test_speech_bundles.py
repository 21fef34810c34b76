"""The committed speech-command bundles (models/speech-command/*) are installable and do what they declare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.acceptance import run_acceptance
from agent.pipelines import frontend
from agent.pipelines.audio import SpeechPipeline
from agent.serving import LoadedModel, load_session
from protos.bundle_io import read_bundle_dir
from protos.edgefleet.v1 import bundle_pb2, common_pb2

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.parent for p in (ROOT / "models" / "speech-command").glob("*/manifest.json"))
FSDD_NPZ = ROOT / "data" / "fsdd" / "fsdd.npz"
RECORDING = ROOT / "tests" / "agent" / "data" / "fsdd" / "2_theo_34.wav"
SUBSET_EVERY = 5  # every 5th clip of takes 0-4 in (speaker, digit, take) order: 50 clips, all speakers and digits
ACCURACY_SLACK = 0.06

bundle_ids = [p.name for p in BUNDLES]


def load_command(directory: Path) -> LoadedModel:
    manifest, _ = read_bundle_dir(directory)
    session = load_session(directory / manifest.model_file, threads=1)
    ref = common_pb2.ModelRef(name=manifest.name, version=manifest.version)
    return LoadedModel(task="speech-command", ref=ref, manifest=manifest, directory=directory, session=session)


def test_the_fp32_bundle_is_committed() -> None:
    assert "fsdd-digits-fp32" in bundle_ids


@pytest.mark.parametrize("directory", BUNDLES, ids=bundle_ids)
def test_bundle_dir_is_a_valid_speech_command_bundle(directory: Path) -> None:
    manifest, files = read_bundle_dir(directory)
    assert manifest.task == bundle_pb2.SPEECH_COMMAND
    assert manifest.preprocessing.audio.labels_file in files
    assert manifest.golden and manifest.metrics.overall["accuracy"] > 0


@pytest.mark.parametrize("directory", BUNDLES, ids=bundle_ids)
def test_bundle_passes_the_on_device_acceptance_test(directory: Path) -> None:
    manifest, _ = read_bundle_dir(directory)
    report = run_acceptance(directory, manifest, threads=1, runs=5)
    assert report.passed, report.reason


@pytest.mark.skipif(not FSDD_NPZ.exists(), reason="the vendored FSDD archive (data/fsdd/fsdd.npz) is absent")
@pytest.mark.parametrize("directory", BUNDLES, ids=bundle_ids)
def test_declared_accuracy_holds_on_a_fixed_subset_of_the_test_split(directory: Path) -> None:
    from scripts.models.data import fsdd_official_split, load_fsdd

    _, test = fsdd_official_split(load_fsdd())
    subset = test[::SUBSET_EVERY]
    command = load_command(directory)
    config = command.manifest.preprocessing.audio
    predicted = [
        int(np.argmax(command.run({"features": frontend.features(c.samples, c.sample_rate, config)})[0][0]))
        for c in subset
    ]
    accuracy = float(np.mean(np.array(predicted) == np.array([c.digit for c in subset])))
    assert accuracy >= command.manifest.metrics.overall["accuracy"] - ACCURACY_SLACK


@pytest.mark.parametrize("directory", BUNDLES, ids=bundle_ids)
def test_speech_pipeline_recognizes_a_real_recording(directory: Path) -> None:
    pipeline = SpeechPipeline.load(load_command(directory), None)
    assert pipeline.recognize(RECORDING.read_bytes()).label == "two"


def test_the_fp32_manifest_reports_unseen_speaker_accuracy_for_every_speaker() -> None:
    manifest, _ = read_bundle_dir(ROOT / "models" / "speech-command" / "fsdd-digits-fp32")
    loso = {s.slice: s.value for s in manifest.metrics.slices if s.slice_kind == "loso-speaker"}
    speakers = {s.slice for s in manifest.metrics.slices if s.slice_kind == "speaker"}
    assert speakers and set(loso) == speakers
    assert manifest.metrics.overall["loso_mean_accuracy"] == pytest.approx(np.mean(list(loso.values())))


@pytest.mark.parametrize("gain", [0.25, 4.0])
@pytest.mark.parametrize("directory", BUNDLES, ids=bundle_ids)
def test_the_label_does_not_depend_on_the_recording_level(directory: Path, gain: float) -> None:
    samples, rate = frontend.read_wav(RECORDING.read_bytes())
    command = load_command(directory)
    config = command.manifest.preprocessing.audio
    logits = [
        command.run({"features": frontend.features(np.clip(samples * g, -1, 1), rate, config)})[0][0].reshape(-1)
        for g in (1.0, gain)
    ]
    assert int(np.argmax(logits[0])) == int(np.argmax(logits[1])) == 2


@pytest.mark.skipif(not FSDD_NPZ.exists(), reason="the vendored FSDD archive (data/fsdd/fsdd.npz) is absent")
def test_training_with_mixup_is_seeded() -> None:
    # Training needs the build extra (torch, installed by `make models`), which `make test` does not install.
    torch = pytest.importorskip("torch", reason="the build extra (torch) is not installed")

    from scripts.models import speech_train
    from scripts.models.data import load_fsdd

    clips = load_fsdd()[::50]  # 50 clips, every speaker and digit
    first, second = (
        speech_train.train(clips, epochs=1, seed=3, batch_size=16, mixup_alpha=0.3, log=lambda _: None)
        for _ in range(2)
    )
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
