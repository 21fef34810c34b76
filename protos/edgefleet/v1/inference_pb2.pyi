from protos.edgefleet.v1 import common_pb2 as _common_pb2
from protos.edgefleet.v1 import bundle_pb2 as _bundle_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServedBy(_message.Message):
    __slots__ = ("model", "latency_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    latency_ms: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("task", "inputs")
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    task: str
    inputs: _containers.RepeatedCompositeFieldContainer[_bundle_pb2.Tensor]
    def __init__(self, task: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_bundle_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("outputs", "served_by")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_bundle_pb2.Tensor]
    served_by: ServedBy
    def __init__(self, outputs: _Optional[_Iterable[_Union[_bundle_pb2.Tensor, _Mapping]]] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ...) -> None: ...

class Slot(_message.Message):
    __slots__ = ("slot", "value", "start", "end")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    slot: str
    value: str
    start: int
    end: int
    def __init__(self, slot: _Optional[str] = ..., value: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class UnderstandRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class UnderstandResponse(_message.Message):
    __slots__ = ("intent", "confidence", "slots", "served_by")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    intent: str
    confidence: float
    slots: _containers.RepeatedCompositeFieldContainer[Slot]
    served_by: ServedBy
    def __init__(self, intent: _Optional[str] = ..., confidence: _Optional[float] = ..., slots: _Optional[_Iterable[_Union[Slot, _Mapping]]] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ...) -> None: ...

class SpeechSegment(_message.Message):
    __slots__ = ("start_seconds", "end_seconds")
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    start_seconds: float
    end_seconds: float
    def __init__(self, start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ...) -> None: ...

class RecognizeRequest(_message.Message):
    __slots__ = ("wav",)
    WAV_FIELD_NUMBER: _ClassVar[int]
    wav: bytes
    def __init__(self, wav: _Optional[bytes] = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("label", "confidence", "segments", "served_by", "vad")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    label: str
    confidence: float
    segments: _containers.RepeatedCompositeFieldContainer[SpeechSegment]
    served_by: ServedBy
    vad: ServedBy
    def __init__(self, label: _Optional[str] = ..., confidence: _Optional[float] = ..., segments: _Optional[_Iterable[_Union[SpeechSegment, _Mapping]]] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., vad: _Optional[_Union[ServedBy, _Mapping]] = ...) -> None: ...

class AcquireActivationLockRequest(_message.Message):
    __slots__ = ("holder", "ttl_seconds")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    holder: str
    ttl_seconds: int
    def __init__(self, holder: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ActivationLock(_message.Message):
    __slots__ = ("lock_id", "holder", "ttl_seconds")
    LOCK_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lock_id: str
    holder: str
    ttl_seconds: int
    def __init__(self, lock_id: _Optional[str] = ..., holder: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ReleaseActivationLockRequest(_message.Message):
    __slots__ = ("lock_id",)
    LOCK_ID_FIELD_NUMBER: _ClassVar[int]
    lock_id: str
    def __init__(self, lock_id: _Optional[str] = ...) -> None: ...

class ReleaseActivationLockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("device_id", "active", "connected", "activation_locks")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_LOCKS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    active: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelRef]
    connected: bool
    activation_locks: int
    def __init__(self, device_id: _Optional[str] = ..., active: _Optional[_Iterable[_Union[_common_pb2.ModelRef, _Mapping]]] = ..., connected: _Optional[bool] = ..., activation_locks: _Optional[int] = ...) -> None: ...
