"""`edgefleet models build` on tiny classifiers made here: real onnxruntime quantization, real measurement.

The models are x[batch, 32] -> MatMul (or Gemm) + bias -> logits, Softmax -> probs. The eval
labels are the fp32 model's own predictions except two samples of speaker 'a', so the
expected numbers are known: fp32 accuracy 58/60, speaker 'a' 18/20, a slice gap of 0.1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from agent.acceptance import run_acceptance
from controlplane.modelbuild import variants
from controlplane.modelbuild.inputs import file_sha256
from edgefleet.cli import app, run
from protos.bundle_io import read_bundle_dir
from protos.bundles import sign_manifest
from protos.tensors import to_numpy

ALL = "fp32,fp16,int8-dynamic,int8-static-qdq,int8-static-qop,int4-weight"
FEATURES, CLASSES = 32, 4
FLIPPED = (0, 3)  # eval samples (speaker 'a', room 'x') whose label is not the fp32 prediction


def save_classifier(path: Path, weights: np.ndarray, op: str = "MatMul") -> Path:
    bias = np.zeros(weights.shape[1], np.float32)
    if op == "MatMul":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"])]
    else:
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["logits"])]
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def clear_samples(weights: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Samples whose top class wins by a margin no quantization here can close."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count * 8, FEATURES)).astype(np.float32)
    logits = np.sort(x @ weights, axis=1)
    return x[logits[:, -1] - logits[:, -2] > 1.5][:count]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)
    x = clear_samples(weights, 100, seed=1)
    labels = (x[40:] @ weights).argmax(axis=1)
    labels[list(FLIPPED)] = (labels[list(FLIPPED)] + 1) % CLASSES
    np.savez(root / "calibration.npz", x=x[:40])
    np.savez(
        root / "eval.npz",
        x=x[40:],
        label=labels,
        **{"slice:speaker": np.array(["a", "b", "c"] * 20), "slice:room": np.array(["x"] * 30 + ["y"] * 30)},
    )
    (root / "assets").mkdir()
    (root / "assets" / "labels.txt").write_text("up\ndown\nleft\nright\n")
    # Gemm: int4-weight (MatMul only) does not apply.
    save_classifier(root / "gemm.onnx", weights, op="Gemm")
    # One huge weight on a feature that is always 0: int8 rounds every other weight to 0.
    fragile = weights.copy()
    fragile[0] = [1000, -1000, 1000, -1000]
    save_classifier(root / "fragile.onnx", fragile)
    x0 = x[40:].copy()
    x0[:, 0] = 0
    np.savez(root / "fragile-eval.npz", x=x0, label=(x0 @ fragile).argmax(axis=1))
    save_classifier(root / "tiny.onnx", weights)
    return {p.stem: p for p in root.iterdir()}


def build_args(data: dict[str, Path], out: Path, *extra: str, model: str = "tiny") -> list[str]:
    return ["models", "build", str(data[model]), "--task", "generic", "--eval", str(data["eval"]),
            "--calibration", str(data["calibration"]), "--out", str(out), "--runs", "10", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def built(data, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("build") / "out"
    extra = ("--variants", ALL, "--name", "tiny", "--version", "3", "--assets", str(data["assets"]))
    result = CliRunner().invoke(app, build_args(data, out, *extra))
    assert result.exit_code == 0, result.output
    return out, result.stdout


def eval_arrays(data) -> dict[str, np.ndarray]:
    with np.load(data["eval"]) as npz:
        return {key: npz[key] for key in npz.files}


# --- one bundle per variant ---


def test_every_variant_is_a_bundle_models_push_accepts(built) -> None:
    out, stdout = built
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"tiny-{v}" for v in ALL.split(",")] + ["build-report.json"])
    for variant in ALL.split(","):
        directory = out / f"tiny-{variant}"
        manifest, files = read_bundle_dir(directory)
        assert (manifest.name, manifest.version, manifest.variant) == ("tiny", 3, variant)
        assert sorted(files) == ["labels.txt", "model.onnx"]
        for entry in manifest.files:
            assert entry.sha256 == file_sha256(directory / entry.path)
            assert entry.size_bytes == (directory / entry.path).stat().st_size
        assert json.loads((directory / "manifest.json").read_text())["task"] == "generic"
        sign_manifest(manifest, ed25519.Ed25519PrivateKey.generate())  # what `models push` does before sending
        m = manifest.metrics
        assert m.file_size_bytes == (directory / "model.onnx").stat().st_size
        assert m.measured_threads == 1 and m.measured_on_cpu
        assert m.load_time_ms > 0 and m.peak_rss_bytes > 0 and 0 < m.latency_p50_ms <= m.latency_p95_ms
        assert manifest.requirements.opset >= 13 and manifest.requirements.min_onnxruntime_version
        assert variant in manifest.description and m.measured_on_cpu in manifest.description
        assert variant in stdout
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(out / "tiny-int4-weight" / "model.onnx")).graph.node}


def test_metrics_match_an_independent_evaluation(built, data) -> None:
    out, _ = built
    arrays = eval_arrays(data)
    for directory in sorted(out.glob("tiny-*")):
        manifest, _ = read_bundle_dir(directory)
        session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        predicted = np.array([session.run(["probs"], {"x": row[None]})[0].argmax() for row in arrays["x"]])
        correct = predicted == arrays["label"]
        assert manifest.metrics.overall["accuracy"] == pytest.approx(correct.mean())
        accuracy, examples, gaps = {}, {}, []
        for kind in ("room", "speaker"):
            values = arrays[f"slice:{kind}"]
            for value in sorted(set(values.tolist())):
                accuracy[(kind, value)] = float(correct[values == value].mean())
                examples[(kind, value)] = int((values == value).sum())
            gaps.append(max(v for (k, _), v in accuracy.items() if k == kind) - min(
                v for (k, _), v in accuracy.items() if k == kind))  # fmt: skip
        slices = manifest.metrics.slices
        assert {(s.slice_kind, s.slice): s.value for s in slices} == pytest.approx(accuracy)
        assert {(s.slice_kind, s.slice): s.examples for s in slices} == examples
        assert manifest.metrics.max_slice_gap == pytest.approx(max(gaps))
    fp32, _ = read_bundle_dir(out / "tiny-fp32")
    assert fp32.metrics.overall["accuracy"] == pytest.approx(58 / 60)
    assert fp32.metrics.max_slice_gap == pytest.approx(0.1)


def test_golden_cases_pass_the_agents_acceptance_test(built, data) -> None:
    out, _ = built
    arrays = eval_arrays(data)
    for directory in sorted(out.glob("tiny-*")):
        manifest, _ = read_bundle_dir(directory)
        assert len(manifest.golden) == 3
        labels = {g.expected_label for g in manifest.golden}
        assert len(labels) == 3 and labels <= {"0", "1", "2", "3"}
        for case in manifest.golden:
            index = int(case.name.removeprefix("eval-"))
            assert index not in FLIPPED  # fp32 gets golden samples right
            np.testing.assert_array_equal(to_numpy(case.inputs[0]), arrays["x"][index : index + 1])
            assert [t.name for t in case.expected_outputs] == ["probs", "logits"]
            assert (case.abs_tolerance, case.rel_tolerance) == variants.TOLERANCE[manifest.variant]
        report = run_acceptance(directory, manifest, threads=1, runs=5)
        assert report.passed, (directory.name, report.reason)


def test_the_report_and_the_table_list_every_variant(built) -> None:
    out, stdout = built
    report = json.loads((out / "build-report.json").read_text())
    assert [(r["variant"], r["status"], r["bundle"]) for r in report["variants"]] == [
        (v, "ok", f"tiny-{v}") for v in ALL.split(",")
    ]
    assert report["fp32_accuracy"] == pytest.approx(58 / 60)
    assert report["cpu"] in stdout and "fp32 accuracy 96.67%" in stdout


# --- variants that do not apply, fail, or lose accuracy ---


def test_not_applicable_and_failed_variants_are_reported_not_dropped(data, tmp_path, monkeypatch) -> None:
    def broken(source, out, calibration):
        raise RuntimeError("converter exploded\nsecond line")

    def garbage(source, out, calibration):
        out.write_bytes(b"not a model")
        return "garbage"

    monkeypatch.setitem(variants.MAKERS, "fp16", broken)
    monkeypatch.setitem(variants.MAKERS, "int8-dynamic", garbage)
    out = tmp_path / "out"
    args = build_args(data, out, "--variants", "int4-weight,int8-dynamic,fp16,fp32", "--json", model="gemm")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    statuses = {r["variant"]: r for r in json.loads(result.stdout)["variants"]}
    assert list(statuses) == ["fp32", "fp16", "int8-dynamic", "int4-weight"]
    assert statuses["fp32"]["status"] == "ok"
    assert statuses["fp16"]["status"] == "failed"
    assert statuses["fp16"]["reason"] == "conversion failed: RuntimeError: converter exploded"
    assert statuses["int8-dynamic"]["status"] == "failed"
    assert statuses["int8-dynamic"]["reason"].startswith("the model does not run in onnxruntime: ")
    assert statuses["int4-weight"]["status"] == "not-applicable"
    assert "MatMul" in statuses["int4-weight"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["build-report.json", "gemm-fp32"]
    assert json.loads((out / "build-report.json").read_text())["variants"] == json.loads(result.stdout)["variants"]


def test_a_variant_that_loses_accuracy_is_not_written_unless_kept(data, tmp_path) -> None:
    out = tmp_path / "out"
    args = build_args(data, out, "--variants", "fp32,int8-dynamic", "--name", "frag", model="fragile")
    args[args.index("--eval") + 1] = str(data["fragile-eval"])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "accuracy-drop" in result.stdout
    report = json.loads((out / "build-report.json").read_text())
    dropped = report["variants"][1]
    assert (dropped["status"], dropped["bundle"]) == ("accuracy-drop", None)
    assert dropped["accuracy_drop"] > 0.02 and "points below fp32" in dropped["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["build-report.json", "frag-fp32"]

    kept = CliRunner().invoke(app, [*args, "--keep-failing", "--force"])
    assert kept.exit_code == 1, kept.output
    manifest, _ = read_bundle_dir(out / "frag-int8-dynamic")
    assert "WARNING" in manifest.description and "do not deploy" in manifest.description
    assert manifest.metrics.overall["accuracy"] == pytest.approx(dropped["accuracy"])

    # --force again without --keep-failing: the stale bundle of the dropped variant goes.
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["build-report.json", "frag-fp32"]


# --- refused inputs: one line, exit code 2, nothing written ---


def _bad_inputs(data: dict[str, Path], tmp: Path) -> dict[str, tuple[dict[str, str | None], str]]:
    """Each case: options to set (None: leave the option out) and the message expected."""
    arrays = eval_arrays(data)
    x, label = arrays["x"], arrays["label"]

    def eval_with(**changes: np.ndarray | None) -> dict[str, str | None]:
        merged = {key: value for key, value in {**arrays, **changes}.items() if value is not None}
        path = tmp / f"eval-{len(list(tmp.glob('eval-*')))}.npz"
        np.savez(path, **merged)
        return {"--eval": str(path)}

    no_slices = {"slice:speaker": None, "slice:room": None}
    (tmp / "not-a-model.onnx").write_text("hello")
    return {
        "unknown variant": ({"--variants": "fp32,int3"}, r"--variants: 'int3'; use a comma-separated list"),
        "unknown array": (eval_with(y=x), r"eval file .*: array 'y' is not a model input"),
        "missing input": (eval_with(x=None), r"eval file .*: no array 'x'; it needs one array per model input"),
        "lengths differ": (eval_with(label=label[:10]), r"'label' is int64 \[10\]; it must be \[60\] integers"),
        "bad shape": (eval_with(x=x[:, :16]), r"array 'x' has shape \[60, 16\].*must be \[samples, 32\]"),
        "wrong dtype": (eval_with(x=x.astype(np.float64)), r"array 'x' is float64; the model's input is float32"),
        "empty set": (eval_with(x=x[:0], label=label[:0], **no_slices), r": 0 samples; a set holds 1 to"),
        "label out of range": (eval_with(label=label + 4), r"'label' holds 7, but output 'probs' has 4 classes"),
        "slice length": (eval_with(**{"slice:room": arrays["slice:room"][:5]}), r"'slice:room' is <U1 \[5\]"),
        "pickled arrays": (eval_with(x=np.array([x[0], x[1, :3]], dtype=object)), r"object arrays are refused"),
        "invalid onnx": ({"SOURCE": str(tmp / "not-a-model.onnx")}, r"not-a-model.onnx is not a valid ONNX model"),
        "unknown output": ({"--output": "nope"}, r"--output 'nope' is not an output of the model"),
        "no calibration": ({"--calibration": None}, r"the int8-static variants need --calibration"),
        "no preprocessing": ({"--task": "speech-command"}, r"--task speech-command needs --preprocessing"),
        "bad version": ({"--version": "0"}, r"--version must be 1 or more"),
    }


BAD = ["unknown variant", "unknown array", "missing input", "lengths differ", "bad shape", "wrong dtype",
       "empty set", "label out of range", "slice length", "pickled arrays", "invalid onnx", "unknown output",
       "no calibration", "no preprocessing", "bad version"]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_are_refused_in_one_line_and_write_nothing(case, data, tmp_path, capsys) -> None:
    options, message = _bad_inputs(data, tmp_path)[case]
    out = tmp_path / "out"
    args = build_args(data, out)
    for option, value in options.items():
        if option == "SOURCE":
            args[2] = value
        elif value is None:
            del args[args.index(option) : args.index(option) + 2]
        elif option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_a_non_empty_out_is_refused_without_force(data, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run(build_args(data, out, "--variants", "fp32")) == 2
    assert "is not empty; choose an empty directory, or --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
