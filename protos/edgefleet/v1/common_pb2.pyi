import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceFacts(_message.Message):
    __slots__ = ("architecture", "cpu_model", "cpu_flags", "cpu_cores", "memory_total_bytes", "memory_available_bytes", "disk_free_bytes", "os", "onnxruntime_version", "execution_providers", "agent_version", "labels", "simulated", "simulated_fields", "python_version", "onnx_threads", "model_memory_budget_bytes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_FLAGS_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ONNXRUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    ONNX_THREADS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    cpu_model: str
    cpu_flags: _containers.RepeatedScalarFieldContainer[str]
    cpu_cores: int
    memory_total_bytes: int
    memory_available_bytes: int
    disk_free_bytes: int
    os: str
    onnxruntime_version: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    simulated: bool
    simulated_fields: _containers.RepeatedScalarFieldContainer[str]
    python_version: str
    onnx_threads: int
    model_memory_budget_bytes: int
    def __init__(self, architecture: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_flags: _Optional[_Iterable[str]] = ..., cpu_cores: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., os: _Optional[str] = ..., onnxruntime_version: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., simulated: _Optional[bool] = ..., simulated_fields: _Optional[_Iterable[str]] = ..., python_version: _Optional[str] = ..., onnx_threads: _Optional[int] = ..., model_memory_budget_bytes: _Optional[int] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "variant", "manifest_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    variant: str
    manifest_sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., variant: _Optional[str] = ..., manifest_sha256: _Optional[str] = ...) -> None: ...

class LifecycleEvent(_message.Message):
    __slots__ = ("kind", "at", "model", "reason", "generation", "details")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[LifecycleEvent.Kind]
        DOWNLOAD_STARTED: _ClassVar[LifecycleEvent.Kind]
        DOWNLOADED: _ClassVar[LifecycleEvent.Kind]
        VERIFY_FAILED: _ClassVar[LifecycleEvent.Kind]
        STAGED: _ClassVar[LifecycleEvent.Kind]
        ACCEPTANCE_PASSED: _ClassVar[LifecycleEvent.Kind]
        ACCEPTANCE_FAILED: _ClassVar[LifecycleEvent.Kind]
        ACTIVATED: _ClassVar[LifecycleEvent.Kind]
        ROLLED_BACK: _ClassVar[LifecycleEvent.Kind]
        RECONCILE_FAILED: _ClassVar[LifecycleEvent.Kind]
        AGENT_STARTED: _ClassVar[LifecycleEvent.Kind]
        AGENT_CRASH_RECOVERED: _ClassVar[LifecycleEvent.Kind]
        TELEMETRY_DROPPED: _ClassVar[LifecycleEvent.Kind]
        BENCHMARK_DONE: _ClassVar[LifecycleEvent.Kind]
    KIND_UNSPECIFIED: LifecycleEvent.Kind
    DOWNLOAD_STARTED: LifecycleEvent.Kind
    DOWNLOADED: LifecycleEvent.Kind
    VERIFY_FAILED: LifecycleEvent.Kind
    STAGED: LifecycleEvent.Kind
    ACCEPTANCE_PASSED: LifecycleEvent.Kind
    ACCEPTANCE_FAILED: LifecycleEvent.Kind
    ACTIVATED: LifecycleEvent.Kind
    ROLLED_BACK: LifecycleEvent.Kind
    RECONCILE_FAILED: LifecycleEvent.Kind
    AGENT_STARTED: LifecycleEvent.Kind
    AGENT_CRASH_RECOVERED: LifecycleEvent.Kind
    TELEMETRY_DROPPED: LifecycleEvent.Kind
    BENCHMARK_DONE: LifecycleEvent.Kind
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    kind: LifecycleEvent.Kind
    at: _timestamp_pb2.Timestamp
    model: ModelRef
    reason: str
    generation: int
    details: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[_Union[LifecycleEvent.Kind, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., reason: _Optional[str] = ..., generation: _Optional[int] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...
