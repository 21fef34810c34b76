import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.edgefleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LatencyHistogram(_message.Message):
    __slots__ = ("scheme", "counts", "sum_ms", "max_ms")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    scheme: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum_ms: float
    max_ms: float
    def __init__(self, scheme: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ..., sum_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class ModelMinute(_message.Message):
    __slots__ = ("minute", "model", "requests", "errors", "latency", "confidence_sum", "low_confidence", "input_size_sum", "input_size_max", "task")
    MINUTE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SUM_FIELD_NUMBER: _ClassVar[int]
    LOW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_SUM_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_MAX_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    minute: _timestamp_pb2.Timestamp
    model: _common_pb2.ModelRef
    requests: int
    errors: int
    latency: LatencyHistogram
    confidence_sum: float
    low_confidence: int
    input_size_sum: float
    input_size_max: float
    task: str
    def __init__(self, minute: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., latency: _Optional[_Union[LatencyHistogram, _Mapping]] = ..., confidence_sum: _Optional[float] = ..., low_confidence: _Optional[int] = ..., input_size_sum: _Optional[float] = ..., input_size_max: _Optional[float] = ..., task: _Optional[str] = ...) -> None: ...

class ResourceSample(_message.Message):
    __slots__ = ("at", "cpu_percent", "rss_bytes", "memory_available_bytes", "temperature_celsius", "disk_free_bytes")
    AT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    cpu_percent: float
    rss_bytes: int
    memory_available_bytes: int
    temperature_celsius: float
    disk_free_bytes: int
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., temperature_celsius: _Optional[float] = ..., disk_free_bytes: _Optional[int] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("device_id", "boot_id", "sequence", "minutes", "resources", "events", "dropped_batches")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MINUTES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    boot_id: str
    sequence: int
    minutes: _containers.RepeatedCompositeFieldContainer[ModelMinute]
    resources: _containers.RepeatedCompositeFieldContainer[ResourceSample]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.LifecycleEvent]
    dropped_batches: int
    def __init__(self, device_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., sequence: _Optional[int] = ..., minutes: _Optional[_Iterable[_Union[ModelMinute, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[ResourceSample, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[_common_pb2.LifecycleEvent, _Mapping]]] = ..., dropped_batches: _Optional[int] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("boot_id", "sequence", "duplicate")
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    boot_id: str
    sequence: int
    duplicate: bool
    def __init__(self, boot_id: _Optional[str] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...
