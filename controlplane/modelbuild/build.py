"""The whole `models build` run: check the inputs, make and measure each variant, write bundles and a report.

Order, so that a refused input writes nothing: every input is checked; the source model
(fp32, always: it is the accuracy reference) is measured and scored, which also checks
the labels against the scored output; each requested variant is made, measured and
scored in a scratch directory; every manifest is built and validated; only then are the
bundle directories written (each assembled beside its place and renamed into it) and
``build-report.json`` last.

A variant ends in one status: ``ok`` (bundle written), ``not-applicable`` (the variant
does not apply to this graph), ``failed`` (a tool or onnxruntime refused it) or
``accuracy-drop`` (accuracy more than ``max_accuracy_drop`` below fp32; written only with
``keep_failing``, with a warning in its description). None is dropped silently.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from controlplane.modelbuild import variants
from controlplane.modelbuild.evaluate import Measurement, Scores, measure, predictions, score
from controlplane.modelbuild.inputs import (
    MODEL_FILE,
    BuildError,
    EvalSet,
    ModelInfo,
    Samples,
    TensorSpec,
    check_calibration,
    check_eval,
    file_sha256,
    inspect_model,
    load_npz,
    load_preprocessing,
    read_assets,
)
from protos.bundle_io import write_bundle_dir
from protos.bundles import MAX_SIGNED_MANIFEST_BYTES, MAX_VERSION, TASKS, VARIANTS, BundleError, validate_manifest
from protos.cpuinfo import local_cpu_model
from protos.edgefleet.v1 import bundle_pb2
from protos.limits import NAME_PATTERN
from protos.tensors import DTYPES, from_numpy

REPORT_FILE = "build-report.json"
OK, NOT_APPLICABLE, FAILED, ACCURACY_DROP = "ok", "not-applicable", "failed", "accuracy-drop"
FAILING = frozenset({FAILED, ACCURACY_DROP})  # statuses that make the build exit non-zero
MAX_GOLDEN = 16
MIN_RUNS, MAX_RUNS = 10, 100_000
BENCHMARK_RUNS = 20  # the acceptance policy's runs on a device
MAX_LABELS_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class BuildRequest:
    source: Path
    task: str
    variants: tuple[str, ...]
    eval_file: Path
    out: Path
    name: str
    version: int = 1
    calibration_file: Path | None = None
    output: str | None = None
    assets_dir: Path | None = None
    preprocessing_file: Path | None = None
    max_accuracy_drop: float = 0.02
    runs: int = 200
    golden: int = 3
    keep_failing: bool = False
    force: bool = False


@dataclass
class VariantResult:
    """One requested variant: its status and, once it was measured, its numbers."""

    variant: str
    status: str
    reason: str = ""
    how: str = ""
    bundle: str | None = None  # the directory under --out, None when none was written
    accuracy: float | None = None
    accuracy_drop: float | None = None
    max_slice_gap: float | None = None
    file_size_bytes: int | None = None
    load_time_ms: float | None = None
    peak_rss_bytes: int | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    slices: dict[str, float] = field(default_factory=dict)  # "kind:value" -> accuracy


@dataclass(frozen=True)
class BuildReport:
    name: str
    version: int
    task: str
    source: str
    source_sha256: str
    output: str
    eval_set: str
    cpu: str
    threads: int
    runs: int
    max_accuracy_drop: float
    fp32_accuracy: float
    variants: list[VariantResult]

    @property
    def failing(self) -> list[str]:
        return [r.variant for r in self.variants if r.status in FAILING]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Inputs:
    model: ModelInfo
    output: TensorSpec
    eval_set: EvalSet
    calibration: Samples | None
    assets: dict[str, Path]
    preprocessing: bundle_pb2.Preprocessing | None


@dataclass(frozen=True)
class _Built:
    """A variant that was made, measured and scored."""

    path: Path
    how: str
    measured: Measurement
    scores: Scores


def parse_variants(text: str) -> tuple[str, ...]:
    """'fp32,int8-dynamic' -> the variants in build order, each once. Raises BuildError."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise BuildError(
            f"--variants: {', '.join(map(repr, unknown)) or 'none given'}; use a comma-separated list "
            f"of {', '.join(VARIANTS)}"
        )
    return tuple(v for v in VARIANTS if v in names)


def cpu_model() -> str:
    """The CPU's model name, as the agent reports it in its facts."""
    return local_cpu_model()


def run_build(request: BuildRequest, log: Callable[[str], None] = lambda _: None) -> BuildReport:
    """Build, measure and write every requested variant of ``request.source``; see the module docstring.

    Raises:
        BuildError: an input is refused, or the source model does not run (nothing was written).
    """
    inputs = _check(request)
    cpu = cpu_model()
    with tempfile.TemporaryDirectory(prefix="edgefleet-build-") as tmp:
        work = Path(tmp)
        log(f"fp32: measuring the source model on {inputs.eval_set.samples.count} eval samples")
        reference = _reference(request, inputs, work)
        golden = _golden_indices(reference.scores.correct, inputs.eval_set.labels, request.golden)
        results: list[VariantResult] = []
        manifests: dict[str, tuple[_Built, dict]] = {}
        for variant in request.variants:
            result, built = _variant(variant, request, inputs, work, reference, log)
            results.append(result)
            if built is not None and (result.status == OK or request.keep_failing):
                manifests[variant] = (built, _manifest(request, inputs, variant, built, result, golden, cpu))
                result.bundle = f"{request.name}-{variant}"
        report = BuildReport(
            name=request.name,
            version=request.version,
            task=request.task,
            source=str(request.source),
            source_sha256=inputs.model.sha256,
            output=inputs.output.name,
            eval_set=inputs.eval_set.description,
            cpu=cpu,
            threads=1,
            runs=request.runs,
            max_accuracy_drop=request.max_accuracy_drop,
            fp32_accuracy=reference.scores.accuracy,
            variants=results,
        )
        _write(request, inputs, manifests, report)
    return report


# --- checking the request ---


def _check(request: BuildRequest) -> _Inputs:
    if not NAME_PATTERN.fullmatch(request.name):
        raise BuildError(
            f"--name {request.name!r} is invalid: use 1-63 characters a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not 1 <= request.version <= MAX_VERSION:
        raise BuildError(f"--version must be 1 or more, got {request.version}")
    if request.task not in TASKS:
        raise BuildError(f"--task {request.task!r} is unknown; use one of {', '.join(TASKS)}")
    if not 0 <= request.max_accuracy_drop <= 1:
        raise BuildError(
            f"--max-accuracy-drop is a fraction from 0 to 1 (0.02 = 2 points), got {request.max_accuracy_drop}"
        )
    if not MIN_RUNS <= request.runs <= MAX_RUNS:
        raise BuildError(f"--runs must be between {MIN_RUNS} and {MAX_RUNS}, got {request.runs}")
    if not 1 <= request.golden <= MAX_GOLDEN:
        raise BuildError(f"--golden must be between 1 and {MAX_GOLDEN}, got {request.golden}")
    _check_out(request)
    if variants.STATIC & set(request.variants) and request.calibration_file is None:
        raise BuildError("the int8-static variants need --calibration: an .npz of real input samples")
    model = inspect_model(request.source)
    output = model.output(request.output)
    eval_set = check_eval(load_npz(request.eval_file, "eval file"), model, request.eval_file)
    calibration = None
    if request.calibration_file is not None:
        arrays = load_npz(request.calibration_file, "calibration file")
        calibration = check_calibration(arrays, model, request.calibration_file)
    if output.shape and output.shape[-1] is not None:  # else checked once fp32 has run
        _check_labels(request, eval_set, output.name, output.shape[-1])
    assets = read_assets(request.assets_dir)
    preprocessing = load_preprocessing(request.preprocessing_file, assets, request.task)
    return _Inputs(model, output, eval_set, calibration, assets, preprocessing)


def _check_out(request: BuildRequest) -> None:
    out = request.out
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not request.force:
        raise BuildError(
            f"--out {out} is not empty; choose an empty directory, or --force to replace this build's bundles"
        )
    for variant in request.variants:
        target = out / f"{request.name}-{variant}"
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise BuildError(f"--out: {target} is in the way of the {variant} bundle (not a directory)")


def _check_labels(request: BuildRequest, eval_set: EvalSet, output: str, classes: int) -> None:
    if eval_set.labels.max() >= classes:
        raise BuildError(
            f"eval file {request.eval_file}: 'label' holds {eval_set.labels.max()}, but output "
            f"{output!r} has {classes} classes"
        )


# --- making and measuring the variants ---


def _reference(request: BuildRequest, inputs: _Inputs, work: Path) -> _Built:
    """The source model, measured and scored: the fp32 variant and the accuracy reference."""
    path = work / "fp32.onnx"
    how = variants.make("fp32", request.source, path, None)
    try:
        measured = measure(path, inputs.eval_set, inputs.output.name, work, request.runs)
    except RuntimeError as exc:
        raise BuildError(f"source model {request.source}: {exc}") from exc
    _check_labels(request, inputs.eval_set, inputs.output.name, measured.outputs.shape[-1])
    scores = score(predictions(measured.outputs, inputs.output.name), inputs.eval_set)
    return _Built(path, how, measured, scores)


def _make_and_measure(
    variant: str, request: BuildRequest, inputs: _Inputs, work: Path, log: Callable[[str], None]
) -> _Built | VariantResult:
    """The variant made, measured and scored; or, when it does not apply or fails, its result saying why."""
    path = work / f"{variant}.onnx"
    log(f"{variant}: converting")
    try:
        how = variants.make(variant, request.source, path, inputs.calibration)
    except variants.NotApplicable as exc:
        return VariantResult(variant, NOT_APPLICABLE, reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - any tool error is this variant's failure, reported
        return VariantResult(variant, FAILED, reason=f"conversion failed: {_describe(exc)}")
    log(f"{variant}: measuring")
    try:
        measured = measure(path, inputs.eval_set, inputs.output.name, work, request.runs)
    except RuntimeError as exc:
        return VariantResult(variant, FAILED, reason=str(exc), how=how)
    return _Built(path, how, measured, score(predictions(measured.outputs, inputs.output.name), inputs.eval_set))


def _variant(
    variant: str,
    request: BuildRequest,
    inputs: _Inputs,
    work: Path,
    reference: _Built,
    log: Callable[[str], None],
) -> tuple[VariantResult, _Built | None]:
    """One variant's result, and what was built when it was (fp32 is the reference, already measured)."""
    built = reference if variant == "fp32" else _make_and_measure(variant, request, inputs, work, log)
    if isinstance(built, VariantResult):
        log(f"{variant}: {built.status}: {built.reason}")
        return built, None
    drop = reference.scores.accuracy - built.scores.accuracy
    result = VariantResult(
        variant,
        OK,
        how=built.how,
        accuracy=built.scores.accuracy,
        accuracy_drop=drop,
        max_slice_gap=built.scores.max_slice_gap,
        file_size_bytes=built.path.stat().st_size,
        load_time_ms=built.measured.load_time_ms,
        peak_rss_bytes=built.measured.peak_rss_bytes,
        latency_p50_ms=built.measured.latency_p50_ms,
        latency_p95_ms=built.measured.latency_p95_ms,
        slices={f"{s.kind}:{s.value}": s.accuracy for s in built.scores.slices},
    )
    if round(drop, 9) > request.max_accuracy_drop:
        result.status = ACCURACY_DROP
        result.reason = (
            f"accuracy {100 * built.scores.accuracy:.1f}% is {100 * drop:.1f} points below fp32 "
            f"({100 * reference.scores.accuracy:.1f}%); the tolerance is {100 * request.max_accuracy_drop:g} points"
        )
    log(f"{variant}: {result.status}, accuracy {100 * built.scores.accuracy:.1f}%")
    return result, built


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _golden_indices(correct: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Eval samples for golden cases: ones fp32 gets right first, of different labels where possible."""
    order = [int(i) for i in np.flatnonzero(correct)] + [int(i) for i in np.flatnonzero(~correct)]
    chosen: list[int] = []
    for i in order:
        if len(chosen) < count and labels[i] not in {labels[j] for j in chosen}:
            chosen.append(i)
    for i in order:
        if len(chosen) < count and i not in chosen:
            chosen.append(i)
    return chosen


# --- manifests ---


def _manifest(
    request: BuildRequest,
    inputs: _Inputs,
    variant: str,
    built: _Built,
    result: VariantResult,
    golden: list[int],
    cpu: str,
) -> dict:
    """The bundle's manifest.json content (protobuf JSON), validated and within the size limit."""
    files = {MODEL_FILE: built.path, **inputs.assets}
    roles = _roles(inputs.preprocessing)
    manifest = bundle_pb2.BundleManifest(
        format_version=1,
        name=request.name,
        version=request.version,
        task=TASKS[request.task],
        variant=variant,
        model_file=MODEL_FILE,
        files=[
            bundle_pb2.BundleFile(
                path=path,
                size_bytes=local.stat().st_size,
                sha256=file_sha256(local),
                role="model" if path == MODEL_FILE else roles.get(path, "other"),
            )
            for path, local in files.items()
        ],
        requirements=bundle_pb2.RuntimeRequirements(
            opset=variants.opset(built.path),
            min_onnxruntime_version=variants.MIN_ONNXRUNTIME.get(variant, variants.DEFAULT_MIN_ONNXRUNTIME),
        ),
        metrics=_metrics(request, inputs, built, cpu),
        golden=_golden_cases(variant, built.path, inputs, golden),
        acceptance=bundle_pb2.AcceptancePolicy(benchmark_runs=BENCHMARK_RUNS),
        description=_description(request, variant, built, result, cpu),
        created_at=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        source_model=f"{request.source.name} (sha256 {inputs.model.sha256})"
        + ("" if variant == "fp32" else f", converted to {variant} by edgefleet models build"),
    )
    if inputs.preprocessing is not None:
        manifest.preprocessing.CopyFrom(inputs.preprocessing)
    try:
        validate_manifest(manifest)
    except BundleError as exc:
        raise BuildError(f"the {variant} manifest is refused: {exc}") from exc
    data = json_format.MessageToDict(manifest, preserving_proto_field_name=True)
    data["task"] = request.task
    size = max(len(manifest.SerializeToString()), len(json.dumps(data, indent=2)))
    if size > MAX_SIGNED_MANIFEST_BYTES:
        raise BuildError(
            f"the {variant} manifest would be {size} bytes, over the 1 MiB limit: use fewer --golden cases"
        )
    return data


def _roles(preprocessing: bundle_pb2.Preprocessing | None) -> dict[str, str]:
    """Bundle roles of the asset files the pre-processing names; other assets are 'other'."""
    if preprocessing is None:
        return {}
    text, audio = preprocessing.text, preprocessing.audio
    named = {
        text.tokenizer_file: "tokenizer",
        text.intent_labels_file: "labels",
        text.slot_labels_file: "labels",
        audio.labels_file: "labels",
    }
    return {path: role for path, role in named.items() if path}


def _metrics(request: BuildRequest, inputs: _Inputs, built: _Built, cpu: str) -> bundle_pb2.BuildMetrics:
    m = built.measured
    return bundle_pb2.BuildMetrics(
        overall={"accuracy": built.scores.accuracy},
        slices=[
            bundle_pb2.SliceMetric(
                slice_kind=s.kind, slice=s.value, metric="accuracy", value=s.accuracy, examples=s.examples
            )
            for s in built.scores.slices
        ],
        max_slice_gap=built.scores.max_slice_gap,
        file_size_bytes=built.path.stat().st_size,
        load_time_ms=m.load_time_ms,
        peak_rss_bytes=m.peak_rss_bytes,
        latency_p50_ms=m.latency_p50_ms,
        latency_p95_ms=m.latency_p95_ms,
        measured_on_cpu=cpu,
        measured_threads=1,
        eval_set=f"{inputs.eval_set.description}; top-1 of {inputs.output.name!r}; "
        f"latency over {request.runs} runs of sample 0",
    )


def _golden_cases(variant: str, model: Path, inputs: _Inputs, indices: list[int]) -> list[bundle_pb2.GoldenCase]:
    """Golden cases from eval samples: the inputs and this variant's own outputs (every output of the model)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    atol, rtol = variants.TOLERANCE[variant]
    label_names = _label_names(inputs)
    cases = []
    for i in indices:
        feed = inputs.eval_set.samples.feed(i)
        outputs = dict(zip(names, session.run(names, feed), strict=True))
        label = int(inputs.eval_set.labels[i])
        cases.append(
            bundle_pb2.GoldenCase(
                name=f"eval-{i}",
                inputs=[from_numpy(name, array) for name, array in feed.items()],
                expected_outputs=[from_numpy(n, a) for n, a in outputs.items() if _supported(a)],
                abs_tolerance=atol,
                rel_tolerance=rtol,
                expected_label=label_names[label] if label < len(label_names) else str(label),
            )
        )
    return cases


def _supported(array: np.ndarray) -> bool:
    """Whether a golden-case Tensor can hold the array's dtype."""
    return any(array.dtype == dtype for dtype in DTYPES.values())


def _label_names(inputs: _Inputs) -> list[str]:
    """Class names from the labels file the pre-processing names (one a line), if any."""
    pre = inputs.preprocessing
    if pre is None:
        return []
    path = inputs.assets.get(pre.audio.labels_file if pre.HasField("audio") else pre.text.intent_labels_file)
    if path is None or path.stat().st_size > MAX_LABELS_FILE_BYTES:
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _description(request: BuildRequest, variant: str, built: _Built, result: VariantResult, cpu: str) -> str:
    m = built.measured
    text = (
        f"{request.name} {variant} ({request.task}), built by edgefleet models build: {built.how}. "
        f"Measured on {cpu} at 1 thread: {built.path.stat().st_size} bytes, load {m.load_time_ms:.1f} ms, "
        f"peak RSS {m.peak_rss_bytes / 2**20:.1f} MiB, p50 {m.latency_p50_ms:.3f} ms, p95 {m.latency_p95_ms:.3f} ms; "
        f"accuracy {100 * built.scores.accuracy:.1f}%"
    )
    if result.status == ACCURACY_DROP:
        text += f". WARNING: {result.reason}: do not deploy"
    return text


# --- writing ---


def _write(
    request: BuildRequest, inputs: _Inputs, manifests: dict[str, tuple[_Built, dict]], report: BuildReport
) -> None:
    """Each bundle directory whole or not at all, then the report; with --force, stale bundles of this build go."""
    request.out.mkdir(parents=True, exist_ok=True)
    for variant, (built, data) in manifests.items():
        write_bundle_dir(request.out / f"{request.name}-{variant}", {MODEL_FILE: built.path, **inputs.assets}, data)
    for variant in request.variants:
        stale = request.out / f"{request.name}-{variant}"
        if variant not in manifests and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
    staging = request.out / f".{REPORT_FILE}.tmp"
    staging.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(staging, request.out / REPORT_FILE)
