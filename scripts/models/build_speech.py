"""Build the FSDD spoken-digit bundles: train a DS-CNN, export, quantize, measure, write bundle dirs.

    .venv/bin/python -m scripts.models.build_speech [--epochs 30] [--loso-epochs 20] [--loso-jobs 2] [--skip-loso]
        [--mixup-alpha 0.3] [--channels 96]
    .venv/bin/python -m scripts.models.build_speech --variants-only int8-static-qdq,int8-static-qop

Writes ``models/speech-command/fsdd-digits-<variant>/`` (model.onnx, labels.txt,
manifest.json) for every variant that applies, prints the per-variant table and the
leave-one-speaker-out table on stdout; progress goes to stderr. Needs torch (CPU) and the
vendored ``data/fsdd``; nothing from the network.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from protos.bundle_io import write_bundle_dir
from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import from_numpy
from scripts.models import speech_train, speech_variants
from scripts.models.data import ROOT, Clip, fsdd_leave_one_speaker_out, fsdd_official_split, load_fsdd
from scripts.models.measure import cpu_model

NAME = "fsdd-digits"
VERSION = 1
MODEL_FILE = "model.onnx"
EVAL_SET = "FSDD official test split (takes 0-4)"
MAX_ACCURACY_DROP = 0.02
CALIBRATION_CLIPS = 200
GOLDEN_CLIPS = 3
TOLERANCE = {  # (abs, rel): quantized kernels differ between CPUs, fp32 does not
    "fp32": (1e-4, 1e-4),
    "fp16": (2e-2, 1e-2),
    "int8-dynamic": (0.15, 0.03),
    "int8-static-qdq": (0.15, 0.03),
    "int8-static-qop": (0.15, 0.03),
    "int4-weight": (0.15, 0.03),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def slice_metrics(clips: Sequence[Clip], predicted: np.ndarray) -> tuple[float, list[bundle_pb2.SliceMetric], float]:
    """(overall accuracy, accuracy per speaker and per accent, largest gap between two slices of one kind)."""
    correct = predicted == np.array([c.digit for c in clips])
    slices, gap = [], 0.0
    for kind in ("speaker", "accent"):
        values = []
        for name in sorted({getattr(c, kind) for c in clips}):
            mask = np.array([getattr(c, kind) == name for c in clips])
            value = float(correct[mask].mean())
            values.append(value)
            slices.append(
                bundle_pb2.SliceMetric(
                    slice_kind=kind, slice=name, metric="accuracy", value=value, examples=int(mask.sum())
                )
            )
        gap = max(gap, max(values) - min(values))
    return float(correct.mean()), slices, gap


def golden_clips(clips: Sequence[Clip], predicted: np.ndarray) -> list[int]:
    """Indices of test clips of different speakers and digits that the fp32 model gets right."""
    chosen: list[int] = []
    for i, clip in enumerate(clips):
        if predicted[i] != clip.digit:
            continue
        if any(clips[j].speaker == clip.speaker or clips[j].digit == clip.digit for j in chosen):
            continue
        chosen.append(i)
        if len(chosen) == GOLDEN_CLIPS:
            break
    return chosen


def write_bundle(
    directory: Path,
    variant: str,
    onnx_path: Path,
    *,
    metrics: bundle_pb2.BuildMetrics,
    golden: list[tuple[Clip, np.ndarray, np.ndarray]],
    description: str,
    source_model: str,
) -> None:
    atol, rtol = TOLERANCE[variant]
    manifest = bundle_pb2.BundleManifest(
        format_version=1,
        name=NAME,
        version=VERSION,
        variant=variant,
        model_file=MODEL_FILE,
        requirements=bundle_pb2.RuntimeRequirements(opset=speech_train.OPSET, min_onnxruntime_version="1.16"),
        preprocessing=bundle_pb2.Preprocessing(audio=speech_train.FRONT_END),
        metrics=metrics,
        golden=[
            bundle_pb2.GoldenCase(
                name=f"{clip.digit}_{clip.speaker}_{clip.take}",
                inputs=[from_numpy("features", inputs)],
                expected_outputs=[from_numpy("logits", logits)],
                abs_tolerance=atol,
                rel_tolerance=rtol,
                expected_label=speech_train.LABELS[clip.digit],
            )
            for clip, inputs, logits in golden
        ],
        description=description,
        created_at=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
        source_model=source_model,
        licences={"FSDD recordings (training data)": "CC BY-SA 4.0"},
    )
    data = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    data["task"] = "speech-command"
    data["files"] = [
        {"path": MODEL_FILE, "role": "model"},
        {"path": speech_train.LABELS_FILE, "role": "labels"},
    ]
    labels = ("\n".join(speech_train.LABELS) + "\n").encode()
    write_bundle_dir(directory, {MODEL_FILE: onnx_path, speech_train.LABELS_FILE: labels}, data)


def _loso_fold(
    clips: Sequence[Clip],
    speaker: str,
    epochs: int,
    seed: int,
    threads: int,
    mixup_alpha: float = speech_train.MIXUP_ALPHA,
    channels: int = speech_train.CHANNELS,
) -> float:
    """Train without ``speaker``, return the accuracy on every clip of ``speaker``."""
    import torch

    torch.set_num_threads(threads)
    train, test = fsdd_leave_one_speaker_out(clips, speaker)
    log(f"LOSO: training without {speaker} ({len(train)} clips)")
    model = speech_train.train(
        train, epochs=epochs, seed=seed, mixup_alpha=mixup_alpha, channels=channels, log=lambda _: None
    )
    predicted = speech_train.predict(model, speech_train.clip_features(test))
    value = float((predicted == np.array([c.digit for c in test])).mean())
    log(f"LOSO {speaker}: {value:.4f}")
    return value


def _loso_fold_in_child(speaker: str, epochs: int, seed: int, threads: int, mixup_alpha: float, channels: int) -> float:
    return _loso_fold(load_fsdd(), speaker, epochs, seed, threads, mixup_alpha, channels)


def _loso_rows(clips: Sequence[Clip], values: dict[str, float]) -> list[bundle_pb2.SliceMetric]:
    return [
        bundle_pb2.SliceMetric(
            slice_kind="loso-speaker", slice=s, metric="accuracy", value=v, examples=sum(c.speaker == s for c in clips)
        )
        for s, v in sorted(values.items())
    ]


def start_leave_one_speaker_out(
    clips: Sequence[Clip],
    epochs: int,
    seed: int,
    *,
    jobs: int,
    threads: int = 1,
    mixup_alpha: float = speech_train.MIXUP_ALPHA,
    channels: int = speech_train.CHANNELS,
) -> Callable[[], list[bundle_pb2.SliceMetric]]:
    """Start the folds in ``jobs`` child processes; the returned call waits for them (same results as in-process).

    With ``jobs`` 0 nothing starts now: the returned call trains the folds in this process, one after the other.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    speakers = sorted({c.speaker for c in clips})
    if jobs <= 0:
        return lambda: _loso_rows(
            clips, {s: _loso_fold(clips, s, epochs, seed, threads, mixup_alpha, channels) for s in speakers}
        )
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive fork
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    futures = {s: pool.submit(_loso_fold_in_child, s, epochs, seed, threads, mixup_alpha, channels) for s in speakers}

    def wait() -> list[bundle_pb2.SliceMetric]:
        try:
            return _loso_rows(clips, {s: f.result() for s, f in futures.items()})
        finally:
            pool.shutdown(cancel_futures=True)

    return wait


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "speech-command")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loso-epochs", type=int, default=20)
    parser.add_argument("--skip-loso", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument(
        "--mixup-alpha",
        type=float,
        default=speech_train.MIXUP_ALPHA,
        help="mixup between the clips of a batch, Beta(alpha, alpha) weights (0: off)",
    )
    parser.add_argument(
        "--channels", type=int, default=speech_train.CHANNELS, help="DS-CNN width (channels of every block)"
    )
    parser.add_argument(
        "--loso-jobs",
        type=int,
        default=0,
        help="child processes that train the leave-one-speaker-out folds while the shipped model trains "
        "(0: train the folds afterwards, in this process)",
    )
    parser.add_argument(
        "--variants-only",
        metavar="LIST",
        help="train nothing: remake these comma-separated variants from the committed fp32 bundle in --out "
        "(measured beside them as the reference, not rewritten)",
    )
    args = parser.parse_args(argv)
    if args.variants_only:
        wanted = [v.strip() for v in args.variants_only.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(speech_variants.MAKERS))
        if unknown or not wanted:
            parser.error(f"--variants-only takes some of {', '.join(speech_variants.MAKERS)}; got {unknown or wanted}")
        return variants_only(args.out, wanted, args.seed)

    import torch

    torch.set_num_threads(args.threads)
    clips = load_fsdd()
    train, test = fsdd_official_split(clips)
    log(f"training on {len(train)} clips (takes 5-49), testing on {len(test)} (takes 0-4)")
    pending_loso = None
    if not args.skip_loso:  # with --loso-jobs the folds train in child processes while the shipped model trains
        pending_loso = start_leave_one_speaker_out(
            clips,
            args.loso_epochs,
            args.seed,
            jobs=args.loso_jobs,
            threads=args.threads,
            mixup_alpha=args.mixup_alpha,
            channels=args.channels,
        )
    model = speech_train.train(
        train, epochs=args.epochs, seed=args.seed, mixup_alpha=args.mixup_alpha, channels=args.channels, log=log
    )
    log(f"DS-CNN with {speech_train.parameter_count(model)} parameters")
    calibration = calibration_features(train, args.seed)
    loso = pending_loso() if pending_loso is not None else []

    fp32_how = (
        f"DS-CNN ({speech_train.parameter_count(model)} parameters, {args.channels} channels) trained "
        f"from scratch, mixup alpha {args.mixup_alpha:g}, fp32"
    )
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = speech_train.export_onnx(model, Path(tmp) / "fp32.onnx")
        rows = write_variants(args.out, fp32, fp32_how, ("fp32", *speech_variants.MAKERS), test, calibration, loso)
    print_tables(rows, loso)
    return 0


def variants_only(out: Path, wanted: Sequence[str], seed: int) -> int:
    """Variants of the committed fp32 bundle (``out/fsdd-digits-fp32``), which is measured as the
    reference but not rewritten: nothing is trained."""
    fp32 = out / f"{NAME}-fp32" / MODEL_FILE
    if not fp32.is_file():
        raise SystemExit(f"{fp32} is missing: build the fp32 bundle first")
    train, test = fsdd_official_split(load_fsdd())
    calibration = calibration_features(train, seed)
    rows = write_variants(out, fp32, "", ("fp32", *wanted), test, calibration, [], write=set(wanted))
    print_tables(rows, [])
    return 0


def calibration_features(train: Sequence[Clip], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return speech_train.clip_features([train[i] for i in rng.permutation(len(train))[:CALIBRATION_CLIPS]])


def write_variants(
    out: Path,
    fp32: Path,
    fp32_how: str,
    variants: Sequence[str],
    test: Sequence[Clip],
    calibration: np.ndarray,
    loso: list[bundle_pb2.SliceMetric],
    write: set[str] | None = None,
) -> list[dict]:
    """Make, measure, score and write each of ``variants`` (fp32 first: the reference and the golden
    clips); ``write`` limits which are written (None: all). Returns the table rows."""
    test_inputs = speech_train.clip_features(test)
    cpu = cpu_model()
    rows, fp32_accuracy, golden_index = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for variant in variants:
            path = work / f"{variant}.onnx"
            if variant == "fp32":
                path, how = fp32, fp32_how
            else:
                try:
                    how = speech_variants.MAKERS[variant](fp32, path, calibration)
                except speech_variants.NotApplicable as exc:
                    log(f"{variant}: not applicable: {exc}")
                    rows.append({"variant": variant, "status": f"not applicable: {exc}"})
                    continue
            measured, logits = speech_variants.measure(path, test_inputs, work / variant)
            predicted = logits.argmax(axis=1)
            accuracy, slices, gap = slice_metrics(test, predicted)
            if fp32_accuracy is None:
                fp32_accuracy, golden_index = accuracy, golden_clips(test, predicted)
            drop = fp32_accuracy - accuracy
            status = "ok"
            if drop > MAX_ACCURACY_DROP:
                status = f"accuracy {100 * drop:.1f} points below fp32: do not deploy"
                how += f". WARNING: {status}"
            size = path.stat().st_size
            metrics = bundle_pb2.BuildMetrics(
                overall={"accuracy": accuracy},
                slices=slices + (loso if variant == "fp32" else []),
                max_slice_gap=gap,
                file_size_bytes=size,
                measured_on_cpu=cpu,
                measured_threads=1,
                eval_set=EVAL_SET,
                **measured,
            )
            if variant == "fp32" and loso:
                metrics.overall["loso_mean_accuracy"] = float(np.mean([r.value for r in loso]))
            golden = [(test[i], test_inputs[i : i + 1], logits[i : i + 1]) for i in golden_index]
            if write is None or variant in write:
                write_bundle(
                    out / f"{NAME}-{variant}",
                    variant,
                    path,
                    metrics=metrics,
                    golden=golden,
                    description=f"Spoken digits 0-9 (FSDD), log-mel 40x100 at 8 kHz. {how}",
                    source_model="scripts/models/build_speech.py" + ("" if variant == "fp32" else f" from {NAME}-fp32"),
                )
            rows.append({"variant": variant, "status": status, "accuracy": accuracy, "max_slice_gap": gap,
                         "size_bytes": size, **measured,
                         "slices": {f"{s.slice_kind}:{s.slice}": s.value for s in slices}})  # fmt: skip
            log(f"{variant}: accuracy {accuracy:.4f}, {size} bytes, p50 {measured['latency_p50_ms']:.3f} ms")

    return rows


def print_tables(rows: list[dict], loso: list[bundle_pb2.SliceMetric]) -> None:
    cpu = cpu_model()
    print(f"CPU: {cpu}, 1 thread; eval set: {EVAL_SET}")
    columns = ("variant", "accuracy", "max slice gap", "size (bytes)", "load (ms)", "peak RSS (MiB)", "p50 (ms)")
    print("| " + " | ".join((*columns, "p95 (ms)", "status")) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "accuracy" not in r:
            print(f"| {r['variant']} | - | - | - | - | - | - | - | {r['status']} |")
            continue
        print(
            f"| {r['variant']} | {100 * r['accuracy']:.1f}% | {100 * r['max_slice_gap']:.1f} | {r['size_bytes']} "
            f"| {r['load_time_ms']:.1f} | {r['peak_rss_bytes'] / 2**20:.1f} | {r['latency_p50_ms']:.3f} "
            f"| {r['latency_p95_ms']:.3f} | {r['status']} |"
        )
    if rows and "slices" in rows[0]:
        print("fp32 slices: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rows[0]["slices"].items()))
    if loso:
        print("| LOSO held-out speaker | accuracy |\n|---|---|")
        for r in loso:
            print(f"| {r.slice} | {100 * r.value:.1f}% |")
        print(f"| mean | {100 * np.mean([r.value for r in loso]):.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
