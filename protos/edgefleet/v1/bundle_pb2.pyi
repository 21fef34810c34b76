from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TEXT_NLU: _ClassVar[Task]
    SPEECH_COMMAND: _ClassVar[Task]
    VAD: _ClassVar[Task]
    GENERIC: _ClassVar[Task]
TASK_UNSPECIFIED: Task
TEXT_NLU: Task
SPEECH_COMMAND: Task
VAD: Task
GENERIC: Task

class BundleFile(_message.Message):
    __slots__ = ("path", "size_bytes", "sha256", "role")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    sha256: str
    role: str
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RuntimeRequirements(_message.Message):
    __slots__ = ("min_onnxruntime_version", "opset", "execution_providers", "cpu_features", "min_memory_bytes", "architectures")
    MIN_ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURES_FIELD_NUMBER: _ClassVar[int]
    min_onnxruntime_version: str
    opset: int
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    min_memory_bytes: int
    architectures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, min_onnxruntime_version: _Optional[str] = ..., opset: _Optional[int] = ..., execution_providers: _Optional[_Iterable[str]] = ..., cpu_features: _Optional[_Iterable[str]] = ..., min_memory_bytes: _Optional[int] = ..., architectures: _Optional[_Iterable[str]] = ...) -> None: ...

class TextPreprocessing(_message.Message):
    __slots__ = ("tokenizer_file", "max_sequence_length", "lowercase", "intent_labels_file", "slot_labels_file")
    TOKENIZER_FILE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LOWERCASE_FIELD_NUMBER: _ClassVar[int]
    INTENT_LABELS_FILE_FIELD_NUMBER: _ClassVar[int]
    SLOT_LABELS_FILE_FIELD_NUMBER: _ClassVar[int]
    tokenizer_file: str
    max_sequence_length: int
    lowercase: bool
    intent_labels_file: str
    slot_labels_file: str
    def __init__(self, tokenizer_file: _Optional[str] = ..., max_sequence_length: _Optional[int] = ..., lowercase: _Optional[bool] = ..., intent_labels_file: _Optional[str] = ..., slot_labels_file: _Optional[str] = ...) -> None: ...

class AudioFrontEnd(_message.Message):
    __slots__ = ("sample_rate_hz", "kind", "n_fft", "hop_length", "win_length", "n_mels", "n_mfcc", "fmin_hz", "fmax_hz", "num_frames", "labels_file", "clip_seconds")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    N_FFT_FIELD_NUMBER: _ClassVar[int]
    HOP_LENGTH_FIELD_NUMBER: _ClassVar[int]
    WIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    N_MELS_FIELD_NUMBER: _ClassVar[int]
    N_MFCC_FIELD_NUMBER: _ClassVar[int]
    FMIN_HZ_FIELD_NUMBER: _ClassVar[int]
    FMAX_HZ_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FILE_FIELD_NUMBER: _ClassVar[int]
    CLIP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    kind: str
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    n_mfcc: int
    fmin_hz: float
    fmax_hz: float
    num_frames: int
    labels_file: str
    clip_seconds: float
    def __init__(self, sample_rate_hz: _Optional[int] = ..., kind: _Optional[str] = ..., n_fft: _Optional[int] = ..., hop_length: _Optional[int] = ..., win_length: _Optional[int] = ..., n_mels: _Optional[int] = ..., n_mfcc: _Optional[int] = ..., fmin_hz: _Optional[float] = ..., fmax_hz: _Optional[float] = ..., num_frames: _Optional[int] = ..., labels_file: _Optional[str] = ..., clip_seconds: _Optional[float] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("text", "audio")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    text: TextPreprocessing
    audio: AudioFrontEnd
    def __init__(self, text: _Optional[_Union[TextPreprocessing, _Mapping]] = ..., audio: _Optional[_Union[AudioFrontEnd, _Mapping]] = ...) -> None: ...

class SliceMetric(_message.Message):
    __slots__ = ("slice_kind", "slice", "metric", "value", "examples")
    SLICE_KIND_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    slice_kind: str
    slice: str
    metric: str
    value: float
    examples: int
    def __init__(self, slice_kind: _Optional[str] = ..., slice: _Optional[str] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., examples: _Optional[int] = ...) -> None: ...

class BuildMetrics(_message.Message):
    __slots__ = ("overall", "slices", "max_slice_gap", "file_size_bytes", "load_time_ms", "peak_rss_bytes", "latency_p50_ms", "latency_p95_ms", "measured_on_cpu", "measured_threads", "eval_set")
    class OverallEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    MAX_SLICE_GAP_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_ON_CPU_FIELD_NUMBER: _ClassVar[int]
    MEASURED_THREADS_FIELD_NUMBER: _ClassVar[int]
    EVAL_SET_FIELD_NUMBER: _ClassVar[int]
    overall: _containers.ScalarMap[str, float]
    slices: _containers.RepeatedCompositeFieldContainer[SliceMetric]
    max_slice_gap: float
    file_size_bytes: int
    load_time_ms: float
    peak_rss_bytes: int
    latency_p50_ms: float
    latency_p95_ms: float
    measured_on_cpu: str
    measured_threads: int
    eval_set: str
    def __init__(self, overall: _Optional[_Mapping[str, float]] = ..., slices: _Optional[_Iterable[_Union[SliceMetric, _Mapping]]] = ..., max_slice_gap: _Optional[float] = ..., file_size_bytes: _Optional[int] = ..., load_time_ms: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., measured_on_cpu: _Optional[str] = ..., measured_threads: _Optional[int] = ..., eval_set: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class GoldenCase(_message.Message):
    __slots__ = ("name", "inputs", "expected_outputs", "abs_tolerance", "rel_tolerance", "text", "expected_label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ABS_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    REL_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    expected_outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    abs_tolerance: float
    rel_tolerance: float
    text: str
    expected_label: str
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., expected_outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., abs_tolerance: _Optional[float] = ..., rel_tolerance: _Optional[float] = ..., text: _Optional[str] = ..., expected_label: _Optional[str] = ...) -> None: ...

class AcceptancePolicy(_message.Message):
    __slots__ = ("max_latency_p95_ms", "max_peak_rss_bytes", "benchmark_runs")
    MAX_LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_RUNS_FIELD_NUMBER: _ClassVar[int]
    max_latency_p95_ms: float
    max_peak_rss_bytes: int
    benchmark_runs: int
    def __init__(self, max_latency_p95_ms: _Optional[float] = ..., max_peak_rss_bytes: _Optional[int] = ..., benchmark_runs: _Optional[int] = ...) -> None: ...

class BundleManifest(_message.Message):
    __slots__ = ("format_version", "name", "version", "task", "variant", "files", "model_file", "requirements", "preprocessing", "metrics", "golden", "acceptance", "description", "created_at", "source_model", "licences")
    class LicencesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LICENCES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    name: str
    version: int
    task: Task
    variant: str
    files: _containers.RepeatedCompositeFieldContainer[BundleFile]
    model_file: str
    requirements: RuntimeRequirements
    preprocessing: Preprocessing
    metrics: BuildMetrics
    golden: _containers.RepeatedCompositeFieldContainer[GoldenCase]
    acceptance: AcceptancePolicy
    description: str
    created_at: str
    source_model: str
    licences: _containers.ScalarMap[str, str]
    def __init__(self, format_version: _Optional[int] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., task: _Optional[_Union[Task, str]] = ..., variant: _Optional[str] = ..., files: _Optional[_Iterable[_Union[BundleFile, _Mapping]]] = ..., model_file: _Optional[str] = ..., requirements: _Optional[_Union[RuntimeRequirements, _Mapping]] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., metrics: _Optional[_Union[BuildMetrics, _Mapping]] = ..., golden: _Optional[_Iterable[_Union[GoldenCase, _Mapping]]] = ..., acceptance: _Optional[_Union[AcceptancePolicy, _Mapping]] = ..., description: _Optional[str] = ..., created_at: _Optional[str] = ..., source_model: _Optional[str] = ..., licences: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ManifestSignature(_message.Message):
    __slots__ = ("key_id", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("manifest", "signatures")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[ManifestSignature]
    def __init__(self, manifest: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[ManifestSignature, _Mapping]]] = ...) -> None: ...
