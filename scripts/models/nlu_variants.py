"""Every variant of the text-NLU student, made by the project's own variant tool and checked against fp32.

``controlplane.modelbuild.variants`` (the makers behind ``edgefleet models build``) turns the
student's fp32 ONNX file into fp32, fp16, int8-dynamic, int8-static-qdq, int8-static-qop and
int4-weight. The static variants calibrate on real SNIPS training utterances fed exactly as the
agent feeds them: the unpadded token ids of one utterance per run (``RaggedSamples``; the .npz
convention of ``models build`` would need them padded). Each variant is then scored by the
caller (intent accuracy, slot F1 through the pipeline's ``BioDecoder``, per-intent slices) and compared with
fp32: one whose intent accuracy or slot F1 is more than ``MAX_ACCURACY_DROP`` below fp32's is
``accuracy-drop``. A variant ends in one status, as in ``models build``: ``ok``,
``not-applicable``, ``failed`` (the tool or onnxruntime refused it) or ``accuracy-drop``; only
``ok`` variants are bundled. Peak RSS is measured in a child process
(``controlplane.modelbuild.probe``), as ``models build`` and the agent's acceptance test do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controlplane.modelbuild import variants as variant_tool
from controlplane.modelbuild.evaluate import measure as probe_measure
from controlplane.modelbuild.inputs import EvalSet, Samples
from scripts.models.nlu_labels import Scores

VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8-static-qdq", "int8-static-qop", "int4-weight")
MAX_ACCURACY_DROP = 0.02  # intent accuracy and slot F1 each, absolute (2 points), as models build's default
CALIBRATION_UTTERANCES = 200
OK, NOT_APPLICABLE, FAILED, ACCURACY_DROP = "ok", "not-applicable", "failed", "accuracy-drop"
SAME_SPEED = 0.05  # a p50 within 5% of fp32's is reported as the same speed (the box is shared and noisy)
PROBE_RUNS = 50  # the child's runs: it is there for the peak RSS, which runs barely move


@dataclass(frozen=True)
class RaggedSamples:
    """Calibration samples of different lengths, one feed per run (duck-types ``inputs.Samples``)."""

    feeds: tuple[dict[str, np.ndarray], ...]

    @property
    def count(self) -> int:
        return len(self.feeds)

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return self.feeds[index]


def calibration_indices(total: int, count: int = CALIBRATION_UTTERANCES) -> list[int]:
    """``count`` indices spread evenly over ``total`` (the training set is sorted by intent: every intent is in)."""
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total))})


@dataclass
class Outcome:
    variant: str
    status: str
    how: str = ""
    reason: str = ""
    path: Path | None = None
    scores: Scores | None = None
    file_size_bytes: int = 0
    load_time_ms: float = math.nan
    peak_rss_bytes: int = 0
    latency_p50_ms: float = math.nan
    latency_p95_ms: float = math.nan


def peak_rss(model: Path, feed: dict[str, np.ndarray], work: Path) -> int:
    """The resident memory ``model`` adds to a fresh process, loaded and run on ``feed``, at one thread."""
    samples = Samples(arrays=dict(feed), count=1)
    eval_set = EvalSet(samples=samples, labels=np.zeros(1, np.int64), slices={}, description="")
    return probe_measure(model, eval_set, "intent_logits", work / model.stem, PROBE_RUNS).peak_rss_bytes


def make_variants(
    source: Path,
    wanted: Sequence[str],
    work: Path,
    calibration: RaggedSamples,
    *,
    evaluate: Callable[[Path], Scores],
    measure: Callable[[Path], tuple[float, float, float]],
    typical_feed: dict[str, np.ndarray],
    log: Callable[[str], None],
) -> list[Outcome]:
    """fp32 (always, the reference) and every variant in ``wanted``, made in ``work``, scored and measured."""
    outcomes: list[Outcome] = []
    reference: Scores | None = None
    for variant in ("fp32", *(v for v in wanted if v != "fp32")):
        out = work / f"{variant}.onnx"
        outcome = Outcome(variant, OK)
        try:
            outcome.how = variant_tool.make(variant, source, out, calibration)
            outcome.scores = evaluate(out)
        except variant_tool.NotApplicable as exc:
            outcome.status, outcome.reason = NOT_APPLICABLE, str(exc)
        except Exception as exc:  # noqa: BLE001 - any tool or runtime error is a failed conversion, reported
            outcome.status, outcome.reason = FAILED, _first_line(exc)
        if outcome.status != OK:
            log(f"{variant}: {outcome.status}: {outcome.reason}")
            if variant == "fp32":
                raise SystemExit(f"the fp32 reference does not run: {outcome.reason}")
            outcomes.append(outcome)
            continue
        outcome.path = out
        outcome.file_size_bytes = out.stat().st_size
        outcome.load_time_ms, outcome.latency_p50_ms, outcome.latency_p95_ms = measure(out)
        outcome.peak_rss_bytes = peak_rss(out, typical_feed, work)
        scores = outcome.scores
        if reference is None:
            reference = scores
        else:
            drops = {
                "intent accuracy": reference.intent_accuracy - scores.intent_accuracy,
                "slot F1": reference.slot_f1 - scores.slot_f1,
            }
            over = {k: v for k, v in drops.items() if v > MAX_ACCURACY_DROP}
            if over:
                outcome.status = ACCURACY_DROP
                outcome.reason = ", ".join(f"{k} {v * 100:.2f} points below fp32" for k, v in over.items()) + (
                    f" (tolerance {MAX_ACCURACY_DROP * 100:g} points)"
                )
        log(
            f"{variant}: {outcome.status}; {outcome.file_size_bytes} bytes, load {outcome.load_time_ms:.1f} ms, "
            f"peak RSS {outcome.peak_rss_bytes / 2**20:.1f} MiB, p50 {outcome.latency_p50_ms:.3f} ms, "
            f"p95 {outcome.latency_p95_ms:.3f} ms; intent {scores.intent_accuracy:.4f}, slot F1 {scores.slot_f1:.4f}"
            + (f"; {outcome.reason}" if outcome.reason else "")
        )
        outcomes.append(outcome)
    return outcomes


def notes(outcome: Outcome, fp32: Outcome) -> str:
    """The table's note: why a variant was not bundled, and whether it is slower than fp32 here."""
    if outcome.status in (FAILED, NOT_APPLICABLE):
        return f"{outcome.status}: {outcome.reason}"
    parts = []
    if outcome.status == ACCURACY_DROP:
        parts.append(f"accuracy-drop, not bundled: {outcome.reason}")
    ratio = outcome.latency_p50_ms / fp32.latency_p50_ms
    if outcome.variant == "fp32":
        pass
    elif ratio > 1 + SAME_SPEED:
        parts.append(f"SLOWER than fp32 on this CPU: p50 {ratio:.2f}x fp32's")
    elif ratio < 1 - SAME_SPEED:
        parts.append(f"faster than fp32: p50 {ratio:.2f}x fp32's")
    else:
        parts.append(f"as fast as fp32 within noise: p50 {ratio:.2f}x fp32's")
    return "; ".join(parts)


def table(outcomes: Sequence[Outcome], cpu: str) -> str:
    """A plain-text table of every variant, one row each, measured numbers or the reason there are none."""
    fp32 = next(o for o in outcomes if o.variant == "fp32")
    header = ("variant", "status", "model bytes", "load ms", "peak RSS MiB", "p50 / p95 ms", "intent", "slot F1", "gap")
    rows = [header]
    for o in outcomes:
        if o.scores is None or o.path is None:
            rows.append((o.variant, o.status, "-", "-", "-", "-", "-", "-", "-"))
            continue
        rows.append(
            (
                o.variant,
                o.status,
                f"{o.file_size_bytes:,}",
                f"{o.load_time_ms:.1f}",
                f"{o.peak_rss_bytes / 2**20:.1f}",
                f"{o.latency_p50_ms:.3f} / {o.latency_p95_ms:.3f}",
                f"{o.scores.intent_accuracy * 100:.2f}%",
                f"{o.scores.slot_f1:.4f}",
                f"{o.scores.max_slice_gap * 100:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"student variants at one thread on {cpu} (gap: largest intent-slice accuracy gap, points)"]
    for row, outcome in zip(rows, [None, *outcomes], strict=True):
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        note = notes(outcome, fp32) if outcome is not None else "note"
        lines.append(f"{line}  {note}".rstrip())
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
