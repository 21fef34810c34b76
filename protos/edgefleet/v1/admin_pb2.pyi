import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.edgefleet.v1 import common_pb2 as _common_pb2
from protos.edgefleet.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    VIEWER: _ClassVar[Role]
    OPERATOR: _ClassVar[Role]
    ADMIN: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
VIEWER: Role
OPERATOR: Role
ADMIN: Role

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("name", "role", "server_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    server_version: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., server_version: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("fleet", "ttl_seconds", "labels", "publisher_key_ids", "server_address")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLEET_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    ttl_seconds: int
    labels: _containers.ScalarMap[str, str]
    publisher_key_ids: _containers.RepeatedScalarFieldContainer[str]
    server_address: str
    def __init__(self, fleet: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., publisher_key_ids: _Optional[_Iterable[str]] = ..., server_address: _Optional[str] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("join_string", "token_id", "expires_at")
    JOIN_STRING_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    join_string: str
    token_id: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, join_string: _Optional[str] = ..., token_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateOperatorTokenRequest(_message.Message):
    __slots__ = ("name", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class CreateOperatorTokenResponse(_message.Message):
    __slots__ = ("token", "info")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: OperatorToken
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[OperatorToken, _Mapping]] = ...) -> None: ...

class OperatorToken(_message.Message):
    __slots__ = ("name", "role", "created_at", "revoked_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    created_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListOperatorTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOperatorTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[OperatorToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[OperatorToken, _Mapping]]] = ...) -> None: ...

class RevokeOperatorTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeOperatorTokenResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: OperatorToken
    def __init__(self, info: _Optional[_Union[OperatorToken, _Mapping]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("device_id", "fleet", "labels", "facts", "online", "last_seen", "enrolled_at", "revoked_at", "device_class", "default_class", "certificate_sha256", "desired_generation", "status", "active", "agent_version", "facts_updated_at")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CLASS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FACTS_UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    fleet: str
    labels: _containers.ScalarMap[str, str]
    facts: _common_pb2.DeviceFacts
    online: bool
    last_seen: _timestamp_pb2.Timestamp
    enrolled_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    device_class: str
    default_class: bool
    certificate_sha256: str
    desired_generation: int
    status: _agent_pb2.StatusReport
    active: _containers.RepeatedCompositeFieldContainer[_agent_pb2.ActiveModel]
    agent_version: str
    facts_updated_at: _timestamp_pb2.Timestamp
    def __init__(self, device_id: _Optional[str] = ..., fleet: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., facts: _Optional[_Union[_common_pb2.DeviceFacts, _Mapping]] = ..., online: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., enrolled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., device_class: _Optional[str] = ..., default_class: _Optional[bool] = ..., certificate_sha256: _Optional[str] = ..., desired_generation: _Optional[int] = ..., status: _Optional[_Union[_agent_pb2.StatusReport, _Mapping]] = ..., active: _Optional[_Iterable[_Union[_agent_pb2.ActiveModel, _Mapping]]] = ..., agent_version: _Optional[str] = ..., facts_updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("fleet", "device_class", "label_selector", "page_size", "page_token")
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FLEET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    device_class: str
    label_selector: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, fleet: _Optional[str] = ..., device_class: _Optional[str] = ..., label_selector: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices", "next_page_token")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    next_page_token: str
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class RevokeDeviceRequest(_message.Message):
    __slots__ = ("device_id", "reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    reason: str
    def __init__(self, device_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ClassRule(_message.Message):
    __slots__ = ("fact", "op", "values")
    FACT_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    fact: str
    op: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fact: _Optional[str] = ..., op: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskBudget(_message.Message):
    __slots__ = ("task", "latency_p95_ms")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    task: str
    latency_p95_ms: float
    def __init__(self, task: _Optional[str] = ..., latency_p95_ms: _Optional[float] = ...) -> None: ...

class ClassPolicy(_message.Message):
    __slots__ = ("latency_budgets", "model_memory_budget_bytes", "max_accuracy_drop", "max_slice_gap", "objective", "benchmark_sample_size")
    LATENCY_BUDGETS_FIELD_NUMBER: _ClassVar[int]
    MODEL_MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    MAX_SLICE_GAP_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    latency_budgets: _containers.RepeatedCompositeFieldContainer[TaskBudget]
    model_memory_budget_bytes: int
    max_accuracy_drop: float
    max_slice_gap: float
    objective: str
    benchmark_sample_size: int
    def __init__(self, latency_budgets: _Optional[_Iterable[_Union[TaskBudget, _Mapping]]] = ..., model_memory_budget_bytes: _Optional[int] = ..., max_accuracy_drop: _Optional[float] = ..., max_slice_gap: _Optional[float] = ..., objective: _Optional[str] = ..., benchmark_sample_size: _Optional[int] = ...) -> None: ...

class DeviceClass(_message.Message):
    __slots__ = ("name", "priority", "match", "policy", "device_count", "overlaps_with")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    OVERLAPS_WITH_FIELD_NUMBER: _ClassVar[int]
    name: str
    priority: int
    match: _containers.RepeatedCompositeFieldContainer[ClassRule]
    policy: ClassPolicy
    device_count: int
    overlaps_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., priority: _Optional[int] = ..., match: _Optional[_Iterable[_Union[ClassRule, _Mapping]]] = ..., policy: _Optional[_Union[ClassPolicy, _Mapping]] = ..., device_count: _Optional[int] = ..., overlaps_with: _Optional[_Iterable[str]] = ...) -> None: ...

class ApplyClassesRequest(_message.Message):
    __slots__ = ("yaml", "dry_run")
    YAML_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    dry_run: bool
    def __init__(self, yaml: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ApplyClassesResponse(_message.Message):
    __slots__ = ("classes", "warnings", "devices_reclassified")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_RECLASSIFIED_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[DeviceClass]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    devices_reclassified: int
    def __init__(self, classes: _Optional[_Iterable[_Union[DeviceClass, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., devices_reclassified: _Optional[int] = ...) -> None: ...

class ListClassesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListClassesResponse(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[DeviceClass]
    def __init__(self, classes: _Optional[_Iterable[_Union[DeviceClass, _Mapping]]] = ...) -> None: ...

class GetClassRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BlobChunk(_message.Message):
    __slots__ = ("sha256", "total_bytes", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    total_bytes: int
    data: bytes
    def __init__(self, sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class StatBlobsRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class StatBlobsResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, present: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("sha256", "size_bytes", "already_present")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    already_present: bool
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class PublishBundleRequest(_message.Message):
    __slots__ = ("signed_manifest",)
    SIGNED_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    signed_manifest: bytes
    def __init__(self, signed_manifest: _Optional[bytes] = ...) -> None: ...

class PublisherKey(_message.Message):
    __slots__ = ("key_id", "public_key", "name", "added_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key: bytes
    name: str
    added_at: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., name: _Optional[str] = ..., added_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddPublisherKeyRequest(_message.Message):
    __slots__ = ("public_key", "name")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    name: str
    def __init__(self, public_key: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class ListPublisherKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPublisherKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[PublisherKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[PublisherKey, _Mapping]]] = ...) -> None: ...

class ModelBuild(_message.Message):
    __slots__ = ("ref", "task", "total_bytes", "published_at", "publisher_key_id", "manifest")
    REF_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ModelRef
    task: str
    total_bytes: int
    published_at: _timestamp_pb2.Timestamp
    publisher_key_id: str
    manifest: bytes
    def __init__(self, ref: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., task: _Optional[str] = ..., total_bytes: _Optional[int] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publisher_key_id: _Optional[str] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("builds",)
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    builds: _containers.RepeatedCompositeFieldContainer[ModelBuild]
    def __init__(self, builds: _Optional[_Iterable[_Union[ModelBuild, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("builds",)
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    builds: _containers.RepeatedCompositeFieldContainer[ModelBuild]
    def __init__(self, builds: _Optional[_Iterable[_Union[ModelBuild, _Mapping]]] = ...) -> None: ...

class EvidenceCell(_message.Message):
    __slots__ = ("variant", "device_class", "devices", "latency_p50_ms", "latency_p95_ms", "load_time_ms", "peak_rss_bytes", "acceptance_failures", "source", "field_requests")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FIELD_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    device_class: str
    devices: int
    latency_p50_ms: float
    latency_p95_ms: float
    load_time_ms: float
    peak_rss_bytes: int
    acceptance_failures: int
    source: str
    field_requests: int
    def __init__(self, variant: _Optional[str] = ..., device_class: _Optional[str] = ..., devices: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., load_time_ms: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., acceptance_failures: _Optional[int] = ..., source: _Optional[str] = ..., field_requests: _Optional[int] = ...) -> None: ...

class GetEvidenceRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("model", "cells")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    cells: _containers.RepeatedCompositeFieldContainer[EvidenceCell]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., cells: _Optional[_Iterable[_Union[EvidenceCell, _Mapping]]] = ...) -> None: ...

class ExplainSelectionRequest(_message.Message):
    __slots__ = ("name", "version", "device_class", "device_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    device_class: str
    device_id: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., device_class: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("variant", "eligible", "reason", "score")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    eligible: bool
    reason: str
    score: float
    def __init__(self, variant: _Optional[str] = ..., eligible: _Optional[bool] = ..., reason: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Selection(_message.Message):
    __slots__ = ("device_class", "chosen_variant", "ranked", "rejected", "fallback_no_evidence", "summary")
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_VARIANT_FIELD_NUMBER: _ClassVar[int]
    RANKED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_NO_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    device_class: str
    chosen_variant: str
    ranked: _containers.RepeatedCompositeFieldContainer[Candidate]
    rejected: _containers.RepeatedCompositeFieldContainer[Candidate]
    fallback_no_evidence: bool
    summary: str
    def __init__(self, device_class: _Optional[str] = ..., chosen_variant: _Optional[str] = ..., ranked: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., fallback_no_evidence: _Optional[bool] = ..., summary: _Optional[str] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("name", "version", "variant", "device_id", "fleet")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    variant: str
    device_id: str
    fleet: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., variant: _Optional[str] = ..., device_id: _Optional[str] = ..., fleet: _Optional[str] = ...) -> None: ...

class DeviceAssignment(_message.Message):
    __slots__ = ("device_id", "model", "generation", "reason")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model: _common_pb2.ModelRef
    generation: int
    reason: str
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., generation: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[DeviceAssignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[DeviceAssignment, _Mapping]]] = ...) -> None: ...

class GateThresholds(_message.Message):
    __slots__ = ("max_install_failure_rate", "max_error_rate", "max_latency_p95_ratio", "max_confidence_drop", "max_low_confidence_rate", "max_crashes", "max_rollbacks", "min_requests", "min_devices", "max_error_rate_increase", "max_low_confidence_rate_increase", "on_breach")
    MAX_INSTALL_FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_P95_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_CONFIDENCE_DROP_FIELD_NUMBER: _ClassVar[int]
    MAX_LOW_CONFIDENCE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_CRASHES_FIELD_NUMBER: _ClassVar[int]
    MAX_ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MIN_DEVICES_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_LOW_CONFIDENCE_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    ON_BREACH_FIELD_NUMBER: _ClassVar[int]
    max_install_failure_rate: float
    max_error_rate: float
    max_latency_p95_ratio: float
    max_confidence_drop: float
    max_low_confidence_rate: float
    max_crashes: int
    max_rollbacks: int
    min_requests: int
    min_devices: int
    max_error_rate_increase: float
    max_low_confidence_rate_increase: float
    on_breach: str
    def __init__(self, max_install_failure_rate: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., max_latency_p95_ratio: _Optional[float] = ..., max_confidence_drop: _Optional[float] = ..., max_low_confidence_rate: _Optional[float] = ..., max_crashes: _Optional[int] = ..., max_rollbacks: _Optional[int] = ..., min_requests: _Optional[int] = ..., min_devices: _Optional[int] = ..., max_error_rate_increase: _Optional[float] = ..., max_low_confidence_rate_increase: _Optional[float] = ..., on_breach: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("name", "version", "fleet", "selector", "waves_percent", "bake_seconds", "max_parallel", "gates", "step_timeout_seconds")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WAVES_PERCENT_FIELD_NUMBER: _ClassVar[int]
    BAKE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    fleet: str
    selector: _containers.ScalarMap[str, str]
    waves_percent: _containers.RepeatedScalarFieldContainer[int]
    bake_seconds: int
    max_parallel: int
    gates: GateThresholds
    step_timeout_seconds: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., fleet: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., waves_percent: _Optional[_Iterable[int]] = ..., bake_seconds: _Optional[int] = ..., max_parallel: _Optional[int] = ..., gates: _Optional[_Union[GateThresholds, _Mapping]] = ..., step_timeout_seconds: _Optional[int] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("wave", "verdict", "at", "canary", "control", "reasons")
    class CanaryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ControlEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WAVE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    wave: int
    verdict: str
    at: _timestamp_pb2.Timestamp
    canary: _containers.ScalarMap[str, float]
    control: _containers.ScalarMap[str, float]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, wave: _Optional[int] = ..., verdict: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., canary: _Optional[_Mapping[str, float]] = ..., control: _Optional[_Mapping[str, float]] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class WaveProgress(_message.Message):
    __slots__ = ("wave", "percent", "device_class", "targeted", "updated", "failed", "pending", "reverted")
    WAVE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    TARGETED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    REVERTED_FIELD_NUMBER: _ClassVar[int]
    wave: int
    percent: int
    device_class: str
    targeted: int
    updated: int
    failed: int
    pending: int
    reverted: int
    def __init__(self, wave: _Optional[int] = ..., percent: _Optional[int] = ..., device_class: _Optional[str] = ..., targeted: _Optional[int] = ..., updated: _Optional[int] = ..., failed: _Optional[int] = ..., pending: _Optional[int] = ..., reverted: _Optional[int] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("rollout_id", "model", "fleet", "state", "current_wave", "waves_percent", "progress", "decisions", "created_at", "updated_at", "reason", "selector", "bake_seconds", "max_parallel")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_WAVE_FIELD_NUMBER: _ClassVar[int]
    WAVES_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    BAKE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    model: _common_pb2.ModelRef
    fleet: str
    state: str
    current_wave: int
    waves_percent: _containers.RepeatedScalarFieldContainer[int]
    progress: _containers.RepeatedCompositeFieldContainer[WaveProgress]
    decisions: _containers.RepeatedCompositeFieldContainer[GateDecision]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    reason: str
    selector: _containers.ScalarMap[str, str]
    bake_seconds: int
    max_parallel: int
    def __init__(self, rollout_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., fleet: _Optional[str] = ..., state: _Optional[str] = ..., current_wave: _Optional[int] = ..., waves_percent: _Optional[_Iterable[int]] = ..., progress: _Optional[_Iterable[_Union[WaveProgress, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[GateDecision, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., bake_seconds: _Optional[int] = ..., max_parallel: _Optional[int] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("fleet", "active_only")
    FLEET_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    active_only: bool
    def __init__(self, fleet: _Optional[str] = ..., active_only: _Optional[bool] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("rollout_id",)
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    def __init__(self, rollout_id: _Optional[str] = ...) -> None: ...

class ControlRolloutRequest(_message.Message):
    __slots__ = ("rollout_id", "action")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    action: str
    def __init__(self, rollout_id: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class LatencyRow(_message.Message):
    __slots__ = ("key", "requests", "errors", "p50_ms", "p95_ms", "p99_ms", "mean_confidence")
    class KeyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    key: _containers.ScalarMap[str, str]
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_confidence: float
    def __init__(self, key: _Optional[_Mapping[str, str]] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., mean_confidence: _Optional[float] = ...) -> None: ...

class QueryLatencyRequest(_message.Message):
    __slots__ = ("model", "version", "device_id", "by", "since_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    device_id: str
    by: str
    since_seconds: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., device_id: _Optional[str] = ..., by: _Optional[str] = ..., since_seconds: _Optional[int] = ...) -> None: ...

class QueryLatencyResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[LatencyRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[LatencyRow, _Mapping]]] = ...) -> None: ...

class HealthRow(_message.Message):
    __slots__ = ("device_id", "online", "last_seen", "cpu_percent", "rss_bytes", "memory_available_bytes", "temperature_celsius", "active")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    online: bool
    last_seen: _timestamp_pb2.Timestamp
    cpu_percent: float
    rss_bytes: int
    memory_available_bytes: int
    temperature_celsius: float
    active: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    def __init__(self, device_id: _Optional[str] = ..., online: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., temperature_celsius: _Optional[float] = ..., active: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ...) -> None: ...

class QueryHealthRequest(_message.Message):
    __slots__ = ("fleet",)
    FLEET_FIELD_NUMBER: _ClassVar[int]
    fleet: str
    def __init__(self, fleet: _Optional[str] = ...) -> None: ...

class QueryHealthResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[HealthRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[HealthRow, _Mapping]]] = ...) -> None: ...

class EventRow(_message.Message):
    __slots__ = ("device_id", "event")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    event: _common_pb2.LifecycleEvent
    def __init__(self, device_id: _Optional[str] = ..., event: _Optional[_Union[_common_pb2.LifecycleEvent, _Mapping]] = ...) -> None: ...

class QueryEventsRequest(_message.Message):
    __slots__ = ("device_id", "since_seconds", "limit")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    since_seconds: int
    limit: int
    def __init__(self, device_id: _Optional[str] = ..., since_seconds: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryEventsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[EventRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[EventRow, _Mapping]]] = ...) -> None: ...
