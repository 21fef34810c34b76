"""Measuring a variant on this CPU and scoring it on the eval set.

``measure`` runs the model in a child process (``controlplane.modelbuild.probe``), as the
agent's acceptance test does: the load time is honest (nothing cached in this process),
and the peak RSS is the child's own high-water mark. The child runs every eval sample
once (their scored outputs come back in a .npy file), then times ``runs`` runs of the
first sample after a warm-up, at one intra-op thread.

``score`` turns those outputs into top-1 accuracy overall and per slice.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controlplane.modelbuild.inputs import BuildError, EvalSet

MEASURE_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Measurement:
    load_time_ms: float
    peak_rss_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float
    outputs: np.ndarray  # the scored output of every eval sample, stacked: [samples, *output of one]


@dataclass(frozen=True)
class SliceScore:
    kind: str
    value: str
    accuracy: float
    examples: int


@dataclass(frozen=True)
class Scores:
    accuracy: float
    slices: tuple[SliceScore, ...]
    max_slice_gap: float  # the largest difference between two slices of one kind
    correct: np.ndarray  # bool [samples]


def measure(model: Path, eval_set: EvalSet, output: str, work: Path, runs: int) -> Measurement:
    """Run ``model`` on every eval sample and time it, in a child process. Raises RuntimeError when the child fails."""
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs.npz"
    if not inputs.exists():
        np.savez(inputs, **eval_set.samples.arrays)
    outputs_file = work / f"{model.stem}.outputs.npy"
    request = {"model": str(model), "inputs": str(inputs), "output": output, "outputs_file": str(outputs_file)}
    try:
        child = subprocess.run(
            [sys.executable, "-m", "controlplane.modelbuild.probe"],
            input=json.dumps({**request, "runs": runs}),
            capture_output=True,
            text=True,
            timeout=MEASURE_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"measuring took longer than {MEASURE_TIMEOUT_SECONDS} s") from exc
    if child.returncode != 0:
        tail = child.stderr.strip().splitlines()[-1:] or [f"exit code {child.returncode}"]
        raise RuntimeError(f"the model does not run in onnxruntime: {tail[0][:300]}")
    result = json.loads(child.stdout)
    return Measurement(**result, outputs=np.load(outputs_file))


def predictions(outputs: np.ndarray, output: str) -> np.ndarray:
    """Top-1 class per sample: argmax over the output's last axis, which must leave one value per sample."""
    if outputs.ndim < 2:
        raise BuildError(f"output {output!r} has no class axis (one sample gives shape {list(outputs.shape[1:])})")
    predicted = outputs.argmax(axis=-1).reshape(len(outputs), -1)
    if predicted.shape[1] != 1:
        raise BuildError(
            f"output {output!r} gives {predicted.shape[1]} predictions per sample (shape "
            f"{list(outputs.shape[1:])}); top-1 accuracy needs one: choose another --output"
        )
    return predicted[:, 0]


def score(predicted: np.ndarray, eval_set: EvalSet) -> Scores:
    """Accuracy overall and per value of every slice kind, and the largest gap within one kind."""
    correct = predicted == eval_set.labels
    slices: list[SliceScore] = []
    gap = 0.0
    for kind, values in sorted(eval_set.slices.items()):
        accuracies = []
        for value in sorted(set(values.tolist())):
            mask = values == value
            accuracy = float(correct[mask].mean())
            accuracies.append(accuracy)
            slices.append(SliceScore(kind, value, accuracy, int(mask.sum())))
        gap = max(gap, max(accuracies) - min(accuracies))
    return Scores(float(correct.mean()), tuple(slices), gap, correct)
