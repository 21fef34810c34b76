"""`edgefleet models`: build variants, push signed bundles, list and show published builds.

`build` makes quantized variants of an ONNX model as bundle directories, measured on this
machine (``controlplane.modelbuild``); it needs the ``build`` extra (onnx) and talks to no server.
`push` reads a bundle directory (manifest.json and the files), signs the manifest with
the operator's publisher key, uploads only the files the server does not hold yet, then
publishes. Pushing the same bundle again uploads nothing and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from google.protobuf import json_format
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from controlplane.cli import output
from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from controlplane.cli.errors import CliError
from controlplane.cli.options import CaOpt, JsonOpt, ServerOpt, TokenOpt
from controlplane.cli.output import human_size
from protos.bundle_io import load_private_key, read_bundle_dir
from protos.bundles import VARIANTS, BundleError, key_id, raw_public_key, sign_manifest
from protos.edgefleet.v1 import admin_pb2, admin_pb2_grpc, bundle_pb2
from protos.limits import MAX_ARTIFACT_CHUNK_BYTES

if TYPE_CHECKING:
    from controlplane.modelbuild.build import BuildReport

app = typer.Typer(
    help="Model bundles: build quantized variants, push signed builds, list and show them, evidence per class.",
    no_args_is_help=True,
)

# An upload may take RPC_TIMEOUT_SECONDS plus the time its bytes need at this rate, no longer.
MIN_UPLOAD_BYTES_PER_SECOND = 256 * 1024
Metadata = list[tuple[str, str]]


@dataclass(frozen=True)
class PushResult:
    build: admin_pb2.ModelBuild
    uploaded: list[str]  # bundle paths whose bytes were sent
    already_present: list[str]  # bundle paths the server held already


def push_bundle(
    stub: admin_pb2_grpc.AdminStub,
    meta: Metadata,
    bundle_dir: Path,
    key_file: Path,
    *,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> PushResult:
    """Sign the bundle in ``bundle_dir`` with ``key_file``, upload the missing blobs, publish.

    ``on_start`` gets the number of bytes to upload, ``progress`` each chunk's size.

    Raises:
        BundleError: the directory, manifest or key is refused locally (nothing is sent).
        CliError: the key is not registered on the server (nothing is sent).
        grpc.RpcError: the server refused a blob or the bundle.
    """
    manifest, files = read_bundle_dir(bundle_dir)
    private_key = load_private_key(key_file)
    signer = key_id(raw_public_key(private_key))
    registered = stub.ListPublisherKeys(
        admin_pb2.ListPublisherKeysRequest(), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
    ).keys
    if signer not in {k.key_id for k in registered}:
        # The server would refuse too, but only after every file was uploaded.
        raise CliError(
            f"publisher key {signer} is not registered on this control plane; register it first: "
            f"edgefleet keys register {key_file}.pub --name NAME"
        )
    signed = sign_manifest(manifest, private_key)
    by_sha = {f.sha256: f for f in manifest.files}
    present = set(
        stub.StatBlobs(
            admin_pb2.StatBlobsRequest(sha256=list(by_sha)), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        ).present
    )
    missing = [f for sha, f in by_sha.items() if sha not in present]
    if on_start is not None:
        on_start(sum(f.size_bytes for f in missing))
    sent: set[str] = set()
    for f in missing:
        ref = stub.UploadBlob(
            _chunks(files[f.path], f, progress),
            metadata=meta,
            timeout=RPC_TIMEOUT_SECONDS + f.size_bytes / MIN_UPLOAD_BYTES_PER_SECOND,
        )
        if not ref.already_present:
            sent.add(f.sha256)
    build = stub.PublishBundle(
        admin_pb2.PublishBundleRequest(signed_manifest=signed.SerializeToString()),
        metadata=meta,
        timeout=RPC_TIMEOUT_SECONDS,
    )
    uploaded = [f.path for f in manifest.files if f.sha256 in sent]
    return PushResult(build, uploaded, [f.path for f in manifest.files if f.sha256 not in sent])


def _chunks(
    path: Path, entry: bundle_pb2.BundleFile, progress: Callable[[int], None] | None
) -> Iterator[admin_pb2.BlobChunk]:
    with path.open("rb") as f:
        chunk = admin_pb2.BlobChunk(
            sha256=entry.sha256, total_bytes=entry.size_bytes, data=f.read(MAX_ARTIFACT_CHUNK_BYTES)
        )
        while chunk.data:
            yield chunk
            if progress is not None:
                progress(len(chunk.data))
            chunk = admin_pb2.BlobChunk(data=f.read(MAX_ARTIFACT_CHUNK_BYTES))


@app.command("push")
def push(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle directory: manifest.json and the files")],
    key: Annotated[Path, typer.Option("--key", help="Publisher private key (from `edgefleet keys create`)")],
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Sign a bundle directory, upload the files the server lacks, and publish the build.

    The key must be registered first (`edgefleet keys register KEYFILE.pub --name NAME`).

    Example: edgefleet models push ./kws-3-int8 --key ~/keys/release.key
    """
    console = output.stderr()
    bar = Progress(
        TextColumn("uploading"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task("upload", total=None)
    with admin(resolve(server, token, ca)) as (stub, meta), bar:
        try:
            result = push_bundle(
                stub,
                meta,
                bundle_dir,
                key,
                on_start=lambda total: bar.update(task, total=total),
                progress=lambda n: bar.advance(task, n),
            )
        except BundleError as exc:
            raise CliError(str(exc)) from exc
    b = result.build
    if json:
        output.emit_json({**_build_dict(b), "uploaded": result.uploaded, "already_present": result.already_present})
        return
    count = len(result.uploaded) + len(result.already_present)
    print(
        f"published {b.ref.name}:{b.ref.version} {b.ref.variant} ({human_size(b.total_bytes)}; "
        f"uploaded {len(result.uploaded)} of {count} files)"
    )


@app.command("list")
def list_models(
    name: Annotated[str | None, typer.Option("--name", help="Only builds of this model")] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """List published builds, newest version first.

    Example: edgefleet models list --json
    """
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.ListModels(
            admin_pb2.ListModelsRequest(name=name or ""), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json([_build_dict(b) for b in response.builds])
        return
    rows = [
        [
            b.ref.name,
            str(b.ref.version),
            b.ref.variant,
            b.task,
            human_size(b.total_bytes),
            output.local_time(b.published_at, b.HasField("published_at")),
        ]
        for b in response.builds
    ]
    output.stdout().print(output.table(None, ["MODEL", "VERSION", "VARIANT", "TASK", "SIZE", "PUBLISHED"], rows))
    if not rows and not name:
        output.stderr().print("no models yet: publish one with `edgefleet models push BUNDLE_DIR --key KEYFILE`")


@app.command("show")
def show(
    model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: the latest version)")],
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Show one version of a model: each variant with its files and metrics.

    Example: edgefleet models show kws:3
    """
    name, version = parse_model_ref(model)
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.GetModel(
            admin_pb2.GetModelRequest(name=name, version=version), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    builds = [(b, bundle_pb2.BundleManifest.FromString(b.manifest)) for b in response.builds]
    if json:
        output.emit_json([{**_build_dict(b), "manifest": output.message_dict(m)} for b, m in builds])
        return
    console = output.stdout()
    for b, m in builds:
        rows = [
            ["task", b.task],
            ["size", human_size(b.total_bytes)],
            ["published", output.local_time(b.published_at, b.HasField("published_at"))],
            ["publisher key", b.publisher_key_id],
            ["manifest sha256", b.ref.manifest_sha256],
            ["model file", m.model_file],
            ["description", m.description or "-"],
            ["source model", m.source_model or "-"],
            ["golden cases", str(len(m.golden))],
        ]
        rows += _metric_rows(m.metrics)
        console.print(output.table(f"{b.ref.name}:{b.ref.version} {b.ref.variant}", ["FIELD", "VALUE"], rows))
        files = [[f.path, f.role or "-", human_size(f.size_bytes), f.sha256] for f in m.files]
        console.print(output.table(None, ["FILE", "ROLE", "SIZE", "SHA256"], files))


def _metric_rows(metrics: bundle_pb2.BuildMetrics) -> list[list[str]]:
    rows = [[f"metric {key}", f"{value:g}"] for key, value in sorted(metrics.overall.items())]
    if metrics.latency_p50_ms or metrics.latency_p95_ms:
        measured = f" on {metrics.measured_on_cpu}" if metrics.measured_on_cpu else ""
        rows.append(["latency p50/p95", f"{metrics.latency_p50_ms:g} / {metrics.latency_p95_ms:g} ms{measured}"])
    if metrics.load_time_ms:
        rows.append(["load time", f"{metrics.load_time_ms:g} ms"])
    if metrics.peak_rss_bytes:
        rows.append(["peak RSS", human_size(metrics.peak_rss_bytes)])
    if metrics.eval_set:
        rows.append(["eval set", metrics.eval_set])
    if metrics.slices:
        rows.append(["slices", f"{len(metrics.slices)} (max gap {metrics.max_slice_gap:g})"])
    return rows


def _build_dict(b: admin_pb2.ModelBuild) -> dict:
    """JSON for a build: flat, with integers as numbers."""
    return {
        "name": b.ref.name,
        "version": b.ref.version,
        "variant": b.ref.variant,
        "task": b.task,
        "total_bytes": b.total_bytes,
        "published_at": json_format.MessageToDict(b.published_at) if b.HasField("published_at") else None,
        "publisher_key_id": b.publisher_key_id,
        "manifest_sha256": b.ref.manifest_sha256,
    }


def parse_model_ref(text: str) -> tuple[str, int]:
    """'kws' → ('kws', 0) (0: the latest), 'kws:3' → ('kws', 3). Raises CliError."""
    name, sep, version = text.partition(":")
    if not sep:
        return name, 0
    if not version.isdigit() or int(version) < 1:
        raise CliError(f"{text!r} is not NAME or NAME:VERSION with a version of 1 or more")
    return name, int(version)


@app.command("evidence")
def evidence(
    model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: the latest version)")],
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Print the evidence matrix of a model version: each variant on each device class, as measured by
    benchmark jobs on the devices (and by field telemetry of variants that run).

    Example: edgefleet models evidence snips-nlu:1
    """
    name, version = parse_model_ref(model)
    with admin(resolve(server, token, ca)) as (stub, meta):
        response = stub.GetEvidence(
            admin_pb2.GetEvidenceRequest(name=name, version=version), metadata=meta, timeout=RPC_TIMEOUT_SECONDS
        )
    if json:
        output.emit_json(output.message_dict(response))
        return
    rows = [
        [
            c.device_class,
            c.variant,
            c.source,
            str(c.devices) if c.source == "benchmark" else f"{c.field_requests} req",
            f"{c.latency_p50_ms:.2f}",
            f"{c.latency_p95_ms:.2f}",
            f"{c.load_time_ms:.1f}" if c.source == "benchmark" else "-",
            human_size(c.peak_rss_bytes) if c.peak_rss_bytes else "-",
            str(c.acceptance_failures) if c.source == "benchmark" else "-",
        ]
        for c in sorted(response.cells, key=lambda c: (c.device_class, c.source, c.variant))
    ]
    title = f"{response.model.name}:{response.model.version}"
    columns = ["CLASS", "VARIANT", "SOURCE", "DEVICES", "P50 MS", "P95 MS", "LOAD MS", "PEAK RSS", "FAILED"]
    output.stdout().print(output.table(title, columns, rows))
    if not rows:
        output.stderr().print(
            "no evidence yet: benchmark jobs go to sample devices of each class when a version has two or more "
            "variants; results arrive as the devices answer"
        )


@app.command("explain")
def explain(
    model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: the latest version)")],
    device_class: Annotated[str | None, typer.Option("--class", "-c", help="Explain for this device class")] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="Explain for this device")] = None,
    json: JsonOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    """Explain which variant a class (or one device) gets and why: the choice, the ranking, and each
    rejected variant with the numbers that ruled it out.

    Example: edgefleet models explain snips-nlu:1 --class vehicle-arm-1g
    """
    name, version = parse_model_ref(model)
    if device_class and device:
        raise CliError("name a class (--class) or a device (--device), not both")
    request = admin_pb2.ExplainSelectionRequest(
        name=name, version=version, device_class=device_class or "", device_id=device or ""
    )
    with admin(resolve(server, token, ca)) as (stub, meta):
        selection = stub.ExplainSelection(request, metadata=meta, timeout=RPC_TIMEOUT_SECONDS)
    if json:
        output.emit_json(output.message_dict(selection))
        return
    console = output.stdout()
    console.print(selection.summary, highlight=False, markup=False)
    rows = [["chosen" if i == 0 else f"#{i + 1}", c.variant, c.reason] for i, c in enumerate(selection.ranked)]
    rows += [["rejected", c.variant, c.reason] for c in selection.rejected]
    console.print(output.table(None, ["RANK", "VARIANT", "WHY"], rows))


ALL_VARIANTS = ",".join(VARIANTS)


@app.command("build")
def build(
    source: Annotated[Path, typer.Argument(help="The fp32 ONNX model: one file, no external data")],
    task: Annotated[str, typer.Option("--task", help="text-nlu, speech-command, vad or generic")],
    eval_file: Annotated[
        Path, typer.Option("--eval", help="Eval set .npz: one array per model input, 'label', 'slice:<kind>'")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where the bundle directories and build-report.json go")],
    variants: Annotated[str, typer.Option("--variants", help="Comma-separated variants to build")] = ALL_VARIANTS,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Calibration .npz: one array per model input")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: SOURCE without .onnx)")] = None,
    version: Annotated[int, typer.Option("--version", help="Model version, 1 or more")] = 1,
    output_name: Annotated[
        str | None, typer.Option("--output", help="The output scored by top-1 accuracy (default: the first)")
    ] = None,
    assets: Annotated[Path | None, typer.Option("--assets", help="Directory of files copied into every bundle")] = None,
    preprocessing: Annotated[
        Path | None,
        typer.Option("--preprocessing", help="JSON Preprocessing message, or a manifest.json that has one"),
    ] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option("--max-accuracy-drop", help="Largest accuracy drop below fp32 (0.02 = 2 points)")
    ] = 0.02,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs for latency p50/p95")] = 200,
    golden: Annotated[int, typer.Option("--golden", help="Golden cases per bundle, from the eval set")] = 3,
    keep_failing: Annotated[
        bool, typer.Option("--keep-failing", help="Also write bundles whose accuracy dropped too far")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Build into a non-empty --out, replacing this build")] = False,
    json: JsonOpt = False,
) -> None:
    """Build quantized variants of an ONNX model, measure them on this CPU, and write one bundle per variant.

    Each variant is made with onnxruntime's tools (static variants calibrate on --calibration),
    scored by top-1 accuracy (argmax over the last axis of --output) overall and per slice,
    and timed at one thread in a child process. Bundles go to OUT/NAME-VARIANT, ready for
    `edgefleet models push`; OUT/build-report.json lists every variant, including those that
    do not apply, failed, or lost more accuracy than --max-accuracy-drop (not written unless
    --keep-failing). Exit code 1 when a variant failed or lost too much accuracy.

    The .npz files (np.savez): one array per model input, keyed by its name, with its dtype;
    the first axis counts samples and sample i is fed alone as a batch of one (rows i to i+1),
    so an input of shape (batch, 40, 100) needs an array of shape (samples, 40, 100). The eval
    file also holds 'label' (one integer class per sample) and may hold 'slice:<kind>' arrays
    (one string per sample, e.g. slice:speaker). Object arrays are refused: pad ragged inputs.

    Example: edgefleet models build kws.onnx --task generic --calibration calib.npz --eval eval.npz --out build/
    """
    from controlplane.modelbuild.build import BuildRequest, parse_variants, run_build
    from controlplane.modelbuild.inputs import BuildError

    console = output.stderr()
    try:
        request = BuildRequest(
            source=source,
            task=task,
            variants=parse_variants(variants),
            eval_file=eval_file,
            out=out,
            name=name or source.stem,
            version=version,
            calibration_file=calibration,
            output=output_name,
            assets_dir=assets,
            preprocessing_file=preprocessing,
            max_accuracy_drop=max_accuracy_drop,
            runs=runs,
            golden=golden,
            keep_failing=keep_failing,
            force=force,
        )
        report = run_build(request, log=lambda line: console.print(line, highlight=False, markup=False))
    except BuildError as exc:
        raise CliError(str(exc)) from exc
    if json:
        output.emit_json(report.to_dict())
    else:
        _print_build_table(report)
    if report.failing:
        raise typer.Exit(1)


def _print_build_table(report: BuildReport) -> None:
    def number(value: float | None, text: str) -> str:
        return "-" if value is None else text.format(value)

    rows = [
        [
            r.variant,
            r.status,
            number(r.accuracy, "{:.2%}"),
            number(None if r.accuracy_drop is None else 100 * r.accuracy_drop, "{:.1f}"),
            number(None if r.max_slice_gap is None else 100 * r.max_slice_gap, "{:.1f}"),
            "-" if r.file_size_bytes is None else human_size(r.file_size_bytes),
            number(r.load_time_ms, "{:.1f}"),
            "-" if r.peak_rss_bytes is None else human_size(r.peak_rss_bytes),
            number(r.latency_p50_ms, "{:.3f}"),
            number(r.latency_p95_ms, "{:.3f}"),
            "; ".join(filter(None, [r.bundle, r.reason])) or "-",
        ]
        for r in report.variants
    ]
    title = (
        f"{report.name}:{report.version} on {report.cpu}, {report.threads} thread; "
        f"fp32 accuracy {report.fp32_accuracy:.2%}"
    )
    columns = ["VARIANT", "STATUS", "ACCURACY", "DROP PTS", "SLICE GAP PTS", "SIZE", "LOAD MS", "PEAK RSS"]
    columns += ["P50 MS", "P95 MS", "BUNDLE / REASON"]
    output.stdout().print(output.table(title, columns, rows), highlight=False)
