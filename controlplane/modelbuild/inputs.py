"""What `models build` reads, checked up front: the source model, the .npz sample files, assets, pre-processing.

The .npz convention (calibration and eval files alike):
- one array per model input, keyed by the input's name, with the input's dtype; the first
  axis counts samples and sample ``i`` is fed as ``array[i:i+1]`` (a batch of one), so an
  input of shape [batch, d1, ...] needs an array of shape [samples, d1, ...]; fixed
  dimensions must match, symbolic ones are free but equal across samples (pad ragged
  inputs, e.g. token ids with an attention mask). Object (pickled) arrays are refused;
- the eval file also holds ``label``: [samples] integers, the expected class index of
  the scored output; and optionally ``slice:<kind>`` arrays: [samples] strings (or
  integers), the slice each sample belongs to (``slice:speaker``, ``slice:accent``).
- any other array is refused, so that a typo in a name is not silently ignored.

Every refusal is a ``BuildError`` with a one-line message naming the file and the array.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import json_format

from protos.bundles import MANIFEST_FILE, MAX_FILES, BundleError, check_path
from protos.edgefleet.v1 import bundle_pb2

MODEL_FILE = "model.onnx"
MAX_MODEL_BYTES = 2 * 1024**3 - 1  # protobuf's limit on one serialized model
MAX_NPZ_BYTES = 2 * 1024**3  # the arrays of one .npz file, uncompressed, as its zip directory declares
MAX_SAMPLES = 100_000
MAX_SLICE_KINDS = 8
MAX_SLICE_VALUES = 256
MAX_SLICE_CHARS = 64
MAX_ASSETS = MAX_FILES - 1  # the model takes one place
MAX_ASSET_BYTES = 2 * 1024**3
MAX_PREPROCESSING_BYTES = 1024 * 1024
LABEL_KEY = "label"
SLICE_PREFIX = "slice:"
_SLICE_KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_READ_CHUNK_BYTES = 1024 * 1024


class BuildError(ValueError):
    """An input of the build is refused; the message says which and why (nothing was written)."""


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: its name, numpy dtype, and shape (None: unknown rank; a None dim: symbolic)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str

    def output(self, name: str | None) -> TensorSpec:
        """The output ``name`` (None: the first one). Raises BuildError for an unknown name."""
        if name is None:
            return self.outputs[0]
        for spec in self.outputs:
            if spec.name == name:
                return spec
        names = ", ".join(repr(o.name) for o in self.outputs)
        raise BuildError(f"--output {name!r} is not an output of the model (its outputs: {names})")


@dataclass(frozen=True)
class Samples:
    """Arrays by model input name; sample ``i`` is ``{name: array[i:i+1]}``."""

    arrays: dict[str, np.ndarray]
    count: int

    def feed(self, index: int) -> dict[str, np.ndarray]:
        return {name: array[index : index + 1] for name, array in self.arrays.items()}


@dataclass(frozen=True)
class EvalSet:
    samples: Samples
    labels: np.ndarray  # int64 [samples]
    slices: dict[str, np.ndarray]  # kind -> str [samples]
    description: str  # what the manifest's eval_set says


# --- the source model ---


def inspect_model(path: Path) -> ModelInfo:
    """Check that ``path`` is a self-contained, valid ONNX model that takes one sample per run."""
    if not path.is_file():
        raise BuildError(f"source model {path} is not a file")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise BuildError(f"source model {path} is larger than 2 GiB; models with external data are not supported")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types for a file that is not a model
        raise BuildError(f"source model {path} is not a valid ONNX model: {_first_line(exc)}") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise BuildError(f"source model {path} keeps weights in external data files; save it as one file")
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(_spec(v, "input") for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_spec(v, "output") for v in model.graph.output)
    if not inputs or not outputs:
        raise BuildError(f"source model {path} has no inputs or no outputs")
    for spec in inputs:
        if spec.shape and spec.shape[0] not in (None, 1):
            raise BuildError(
                f"model input {spec.name!r} has a fixed batch size of {spec.shape[0]}; models build feeds one "
                "sample at a time, so its first dimension must be 1 or symbolic"
            )
    return ModelInfo(path=path, inputs=inputs, outputs=outputs, sha256=file_sha256(path))


def _spec(value: onnx.ValueInfoProto, kind: str) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise BuildError(f"model {kind} {value.name!r} is not a tensor; models build handles tensors only")
    tensor = value.type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, TypeError) as exc:
        raise BuildError(f"model {kind} {value.name!r} has an element type numpy cannot hold") from exc
    shape = None
    if tensor.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# --- the .npz files ---


def load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file, bounded by the sizes its zip directory declares; no pickles."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except FileNotFoundError as exc:
        raise BuildError(f"{what} {path} does not exist") from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise BuildError(f"{what} {path} is not an .npz file (np.savez writes one): {_first_line(exc)}") from exc
    if declared > MAX_NPZ_BYTES:
        raise BuildError(f"{what} {path} holds {declared} bytes of arrays; the limit is {MAX_NPZ_BYTES} (2 GiB)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BuildError(
            f"{what} {path}: cannot read its arrays ({_first_line(exc)}); object arrays are refused, pad instead"
        ) from exc
    if not arrays:
        raise BuildError(f"{what} {path} holds no arrays")
    return arrays


def check_samples(arrays: dict[str, np.ndarray], model: ModelInfo, what: str) -> Samples:
    """The model's inputs from ``arrays``, checked against the graph: names, dtypes, shapes, one sample count."""
    names = ", ".join(repr(i.name) for i in model.inputs)
    counts = set()
    for spec in model.inputs:
        if spec.name not in arrays:
            raise BuildError(f"{what}: no array {spec.name!r}; it needs one array per model input ({names})")
        _check_input(arrays[spec.name], spec, what)
        counts.add(arrays[spec.name].shape[0])
    if len(counts) > 1:
        raise BuildError(f"{what}: the input arrays hold different numbers of samples ({sorted(counts)})")
    count = counts.pop()
    if not 1 <= count <= MAX_SAMPLES:
        raise BuildError(f"{what}: {count} samples; a set holds 1 to {MAX_SAMPLES}")
    return Samples({spec.name: arrays[spec.name] for spec in model.inputs}, count)


def _check_input(array: np.ndarray, spec: TensorSpec, what: str) -> None:
    if array.dtype != spec.dtype:
        raise BuildError(f"{what}: array {spec.name!r} is {array.dtype}; the model's input is {spec.dtype}")
    if array.ndim == 0:
        raise BuildError(f"{what}: array {spec.name!r} is a scalar; its first axis must count samples")
    if spec.shape is None:
        return
    wanted = ["samples", *("?" if d is None else str(d) for d in spec.shape[1:])]
    if array.ndim != len(spec.shape) or any(
        d is not None and d != got for d, got in zip(spec.shape[1:], array.shape[1:], strict=False)
    ):
        model_shape = ", ".join("?" if d is None else str(d) for d in spec.shape)
        raise BuildError(
            f"{what}: array {spec.name!r} has shape {list(array.shape)}; the model's input is [{model_shape}] "
            f"and one sample is fed as array[i:i+1], so the array must be [{', '.join(wanted)}]"
        )


def check_calibration(arrays: dict[str, np.ndarray], model: ModelInfo, path: Path) -> Samples:
    what = f"calibration file {path}"
    _refuse_unknown(arrays, {i.name for i in model.inputs}, what, allow_eval_keys=False)
    return check_samples(arrays, model, what)


def check_eval(arrays: dict[str, np.ndarray], model: ModelInfo, path: Path) -> EvalSet:
    what = f"eval file {path}"
    _refuse_unknown(arrays, {i.name for i in model.inputs}, what, allow_eval_keys=True)
    samples = check_samples(arrays, model, what)
    if LABEL_KEY not in arrays:
        raise BuildError(f"{what}: no array 'label' ([samples] integers, the expected class of each sample)")
    labels = arrays[LABEL_KEY]
    if labels.shape != (samples.count,) or labels.dtype.kind not in "iu":
        raise BuildError(
            f"{what}: 'label' is {labels.dtype} {list(labels.shape)}; it must be [{samples.count}] integers"
        )
    if labels.min() < 0:
        raise BuildError(f"{what}: 'label' holds {labels.min()}; class indices start at 0")
    kinds = sorted(key for key in arrays if key.startswith(SLICE_PREFIX))
    if len(kinds) > MAX_SLICE_KINDS:
        raise BuildError(f"{what}: {len(kinds)} slice arrays; the limit is {MAX_SLICE_KINDS}")
    slices = {key[len(SLICE_PREFIX) :]: _check_slice(arrays[key], key, samples.count, what) for key in kinds}
    description = f"{path.name}: {samples.count} samples, sha256 {file_sha256(path)[:16]}"
    return EvalSet(samples, labels.astype(np.int64), slices, description)


def _refuse_unknown(arrays: dict[str, np.ndarray], inputs: set[str], what: str, *, allow_eval_keys: bool) -> None:
    for key in sorted(arrays):
        if key in inputs:
            continue
        if allow_eval_keys and (key == LABEL_KEY or key.startswith(SLICE_PREFIX)):
            continue
        extra = ", 'label' and 'slice:<kind>'" if allow_eval_keys else ""
        raise BuildError(f"{what}: array {key!r} is not a model input ({', '.join(sorted(map(repr, inputs)))}){extra}")


def _check_slice(array: np.ndarray, key: str, count: int, what: str) -> np.ndarray:
    kind = key[len(SLICE_PREFIX) :]
    if not _SLICE_KIND.fullmatch(kind):
        raise BuildError(f"{what}: {key!r}: a slice kind is 1-32 characters a-z, 0-9, '_', '.' or '-'")
    if array.shape != (count,) or array.dtype.kind not in "USiu":
        raise BuildError(f"{what}: {key!r} is {array.dtype} {list(array.shape)}; it must be [{count}] strings")
    values = array.astype(str)
    distinct = set(values.tolist())
    if len(distinct) > MAX_SLICE_VALUES:
        raise BuildError(f"{what}: {key!r} has {len(distinct)} distinct values; the limit is {MAX_SLICE_VALUES}")
    for value in distinct:
        if not value or len(value) > MAX_SLICE_CHARS or not value.isprintable():
            raise BuildError(f"{what}: {key!r} value {value[:40]!r} must be 1-{MAX_SLICE_CHARS} printable characters")
    return values


# --- assets and pre-processing ---


def read_assets(directory: Path | None) -> dict[str, Path]:
    """The regular files directly in ``directory`` (sorted by name), each to be copied into every bundle."""
    if directory is None:
        return {}
    if not directory.is_dir():
        raise BuildError(f"--assets {directory} is not a directory")
    assets: dict[str, Path] = {}
    total = 0
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise BuildError(f"--assets: {entry.name!r} is not a regular file (no symlinks or subdirectories)")
        try:
            check_path(entry.name)
        except BundleError as exc:
            raise BuildError(f"--assets: {exc}") from exc
        if entry.name.casefold() in (MANIFEST_FILE, MODEL_FILE):
            raise BuildError(f"--assets: {entry.name!r} is a name the bundle uses for itself")
        if entry.stat().st_size == 0:
            raise BuildError(f"--assets: {entry.name!r} is empty; bundle files are 1 byte or more")
        total += entry.stat().st_size
        assets[entry.name] = entry
    if len(assets) > MAX_ASSETS or total > MAX_ASSET_BYTES:
        raise BuildError(f"--assets: {len(assets)} files, {total} bytes; the limits are {MAX_ASSETS} files, 2 GiB")
    return assets


def load_preprocessing(path: Path | None, assets: dict[str, Path], task: str) -> bundle_pb2.Preprocessing | None:
    """The Preprocessing message from a JSON file: the message itself or a manifest.json that holds one.

    speech-command bundles need ``audio``, text-nlu bundles ``text`` (the agent's pipelines read them);
    every file they name must be one of the assets.
    """
    needed = {"speech-command": "audio", "text-nlu": "text"}.get(task)
    if path is None:
        if needed:
            raise BuildError(
                f"--task {task} needs --preprocessing: a JSON file with the '{needed}' pre-processing "
                "(or a manifest.json of a bundle that has it)"
            )
        return None
    try:
        if path.stat().st_size > MAX_PREPROCESSING_BYTES:
            raise BuildError(f"--preprocessing {path} is larger than 1 MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"--preprocessing {path}: cannot read it as JSON: {_first_line(exc)}") from exc
    if isinstance(data, dict) and "preprocessing" in data:
        data = data["preprocessing"]
    try:
        message = json_format.ParseDict(data, bundle_pb2.Preprocessing())
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        raise BuildError(f"--preprocessing {path}: not a Preprocessing message: {_first_line(exc)}") from exc
    kind = message.WhichOneof("kind")
    if kind is None or (needed and kind != needed):
        raise BuildError(f"--preprocessing {path}: --task {task} needs '{needed or 'audio or text'}' pre-processing")
    fields = ("tokenizer_file", "intent_labels_file", "slot_labels_file", "labels_file")
    section = getattr(message, kind)
    for field in fields:
        named = getattr(section, field, "")
        if named and named not in assets:
            raise BuildError(f"--preprocessing names {field} {named!r}, which is not among the --assets files")
    return message
