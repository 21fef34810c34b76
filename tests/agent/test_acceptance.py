"""The acceptance test passes a sound build and refuses, with the reason, a build that does not load,
gives wrong golden outputs, or breaks the memory or latency policy."""

from __future__ import annotations

import pytest

from agent.acceptance import run_acceptance
from protos.edgefleet.v1 import bundle_pb2
from tests.bundles import golden_case, make_tiny_model


def _manifest(golden_scale: float = 2.0) -> bundle_pb2.BundleManifest:
    return bundle_pb2.BundleManifest(
        name="tiny", version=1, variant="fp32", model_file="model.onnx", golden=[golden_case(golden_scale, 1.0)]
    )


@pytest.fixture
def model_dir(tmp_path):
    make_tiny_model(tmp_path / "model.onnx", 2.0, 1.0)
    return tmp_path


def test_sound_build_passes_with_measured_latency_and_memory(model_dir):
    report = run_acceptance(model_dir, _manifest(), threads=1, runs=10)
    assert report.passed, report.reason
    assert report.runs == 10 and report.threads == 1
    assert 0 < report.latency_p50_ms <= report.latency_p95_ms
    assert report.load_time_ms > 0 and report.peak_rss_bytes >= 0


def test_wrong_golden_outputs_are_refused(model_dir):
    report = run_acceptance(model_dir, _manifest(golden_scale=3.0), threads=1)
    assert not report.passed
    assert "golden case 'ramp': output 'y' differs by up to" in report.reason


def test_model_that_does_not_load_is_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not an onnx graph")
    report = run_acceptance(tmp_path, _manifest(), threads=1)
    assert not report.passed and "does not load in onnxruntime" in report.reason


def test_model_over_the_memory_budget_is_refused(model_dir):
    report = run_acceptance(model_dir, _manifest(), threads=1, memory_budget_bytes=1)
    assert not report.passed and "over the budget" in report.reason


def test_model_over_the_latency_limit_is_refused(model_dir):
    report = run_acceptance(model_dir, _manifest(), threads=1, max_latency_p95_ms=1e-9)
    assert not report.passed and "latency p95" in report.reason


def test_manifest_without_golden_cases_is_refused(model_dir):
    manifest = _manifest()
    del manifest.golden[:]
    report = run_acceptance(model_dir, manifest, threads=1)
    assert not report.passed and "no golden cases" in report.reason


def test_hanging_test_is_stopped_at_the_deadline(model_dir):
    report = run_acceptance(model_dir, _manifest(), threads=1, timeout_seconds=0.01)
    assert not report.passed and "timed out" in report.reason
