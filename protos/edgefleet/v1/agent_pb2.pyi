import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.edgefleet.v1 import common_pb2 as _common_pb2
from protos.edgefleet.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconcilePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECONCILE_PHASE_UNSPECIFIED: _ClassVar[ReconcilePhase]
    IDLE: _ClassVar[ReconcilePhase]
    DOWNLOADING: _ClassVar[ReconcilePhase]
    VERIFYING: _ClassVar[ReconcilePhase]
    STAGING: _ClassVar[ReconcilePhase]
    ACCEPTANCE_TESTING: _ClassVar[ReconcilePhase]
    AWAITING_ACTIVATION_LOCK: _ClassVar[ReconcilePhase]
    ACTIVATING: _ClassVar[ReconcilePhase]
    COMMITTED: _ClassVar[ReconcilePhase]
    FAILED: _ClassVar[ReconcilePhase]
    ROLLING_BACK: _ClassVar[ReconcilePhase]
RECONCILE_PHASE_UNSPECIFIED: ReconcilePhase
IDLE: ReconcilePhase
DOWNLOADING: ReconcilePhase
VERIFYING: ReconcilePhase
STAGING: ReconcilePhase
ACCEPTANCE_TESTING: ReconcilePhase
AWAITING_ACTIVATION_LOCK: ReconcilePhase
ACTIVATING: ReconcilePhase
COMMITTED: ReconcilePhase
FAILED: ReconcilePhase
ROLLING_BACK: ReconcilePhase

class Hello(_message.Message):
    __slots__ = ("device_id", "boot_id", "agent_version", "protocol_version", "last_applied_generation")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    boot_id: str
    agent_version: str
    protocol_version: int
    last_applied_generation: int
    def __init__(self, device_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., last_applied_generation: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("at", "sequence")
    AT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    sequence: int
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class ActiveModel(_message.Message):
    __slots__ = ("model", "activated_at", "previous")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    activated_at: _timestamp_pb2.Timestamp
    previous: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., activated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("generation", "phase", "active", "failure_reason", "bytes_downloaded", "bytes_total")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWNLOADED_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    generation: int
    phase: ReconcilePhase
    active: _containers.RepeatedCompositeFieldContainer[ActiveModel]
    failure_reason: str
    bytes_downloaded: int
    bytes_total: int
    def __init__(self, generation: _Optional[int] = ..., phase: _Optional[_Union[ReconcilePhase, str]] = ..., active: _Optional[_Iterable[_Union[ActiveModel, _Mapping]]] = ..., failure_reason: _Optional[str] = ..., bytes_downloaded: _Optional[int] = ..., bytes_total: _Optional[int] = ...) -> None: ...

class BenchmarkResult(_message.Message):
    __slots__ = ("model", "acceptance_passed", "failure_reason", "latency_p50_ms", "latency_p95_ms", "load_time_ms", "peak_rss_bytes", "runs", "threads")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    acceptance_passed: bool
    failure_reason: str
    latency_p50_ms: float
    latency_p95_ms: float
    load_time_ms: float
    peak_rss_bytes: int
    runs: int
    threads: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., acceptance_passed: _Optional[bool] = ..., failure_reason: _Optional[str] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., load_time_ms: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., runs: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("job_id", "ok", "error", "benchmark")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    ok: bool
    error: str
    benchmark: BenchmarkResult
    def __init__(self, job_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., benchmark: _Optional[_Union[BenchmarkResult, _Mapping]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "facts", "heartbeat", "status", "job_result", "telemetry")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOB_RESULT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    facts: _common_pb2.DeviceFacts
    heartbeat: Heartbeat
    status: StatusReport
    job_result: JobResult
    telemetry: _telemetry_pb2.TelemetryBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., facts: _Optional[_Union[_common_pb2.DeviceFacts, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., status: _Optional[_Union[StatusReport, _Mapping]] = ..., job_result: _Optional[_Union[JobResult, _Mapping]] = ..., telemetry: _Optional[_Union[_telemetry_pb2.TelemetryBatch, _Mapping]] = ...) -> None: ...

class DesiredModel(_message.Message):
    __slots__ = ("task", "model", "max_bytes", "rollback")
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    task: str
    model: _common_pb2.ModelRef
    max_bytes: int
    rollback: bool
    def __init__(self, task: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., max_bytes: _Optional[int] = ..., rollback: _Optional[bool] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "models", "issued_at")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    models: _containers.RepeatedCompositeFieldContainer[DesiredModel]
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, generation: _Optional[int] = ..., models: _Optional[_Iterable[_Union[DesiredModel, _Mapping]]] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BenchmarkJob(_message.Message):
    __slots__ = ("model", "runs", "warmup_runs", "max_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    runs: int
    warmup_runs: int
    max_bytes: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., runs: _Optional[int] = ..., warmup_runs: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "deadline", "benchmark")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    deadline: _timestamp_pb2.Timestamp
    benchmark: BenchmarkJob
    def __init__(self, job_id: _Optional[str] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., benchmark: _Optional[_Union[BenchmarkJob, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("device_id", "fleet", "heartbeat_interval_seconds", "server_time", "protocol_version", "artifact_port")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PORT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    fleet: str
    heartbeat_interval_seconds: int
    server_time: _timestamp_pb2.Timestamp
    protocol_version: int
    artifact_port: int
    def __init__(self, device_id: _Optional[str] = ..., fleet: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., protocol_version: _Optional[int] = ..., artifact_port: _Optional[int] = ...) -> None: ...

class Disconnect(_message.Message):
    __slots__ = ("reason", "revoked")
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    reason: str
    revoked: bool
    def __init__(self, reason: _Optional[str] = ..., revoked: _Optional[bool] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("welcome", "desired", "job", "telemetry_ack", "disconnect")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ACK_FIELD_NUMBER: _ClassVar[int]
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    desired: DesiredState
    job: Job
    telemetry_ack: _telemetry_pb2.TelemetryAck
    disconnect: Disconnect
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., desired: _Optional[_Union[DesiredState, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., telemetry_ack: _Optional[_Union[_telemetry_pb2.TelemetryAck, _Mapping]] = ..., disconnect: _Optional[_Union[Disconnect, _Mapping]] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("sha256", "offset", "chunk_bytes")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    chunk_bytes: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class FetchManifestRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class FetchManifestResponse(_message.Message):
    __slots__ = ("signed_manifest", "publisher_keys")
    SIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEYS_FIELD_NUMBER: _ClassVar[int]
    signed_manifest: bytes
    publisher_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, signed_manifest: _Optional[bytes] = ..., publisher_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...
