from protos.edgefleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token_id", "secret", "device_id", "csr_pem", "facts")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    token_id: str
    secret: str
    device_id: str
    csr_pem: bytes
    facts: _common_pb2.DeviceFacts
    def __init__(self, token_id: _Optional[str] = ..., secret: _Optional[str] = ..., device_id: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., facts: _Optional[_Union[_common_pb2.DeviceFacts, _Mapping]] = ...) -> None: ...

class MqttCredentials(_message.Message):
    __slots__ = ("url", "username", "password", "client_id", "topic_root", "ca_pem")
    URL_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_ROOT_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    url: str
    username: str
    password: str
    client_id: str
    topic_root: str
    ca_pem: bytes
    def __init__(self, url: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., client_id: _Optional[str] = ..., topic_root: _Optional[str] = ..., ca_pem: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "fleet", "certificate_pem", "ca_certificate_pem", "device_endpoint", "tls_server_name", "heartbeat_interval_seconds", "labels", "trusted_publisher_keys", "mqtt")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TLS_SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_PUBLISHER_KEYS_FIELD_NUMBER: _ClassVar[int]
    MQTT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    fleet: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    device_endpoint: str
    tls_server_name: str
    heartbeat_interval_seconds: int
    labels: _containers.ScalarMap[str, str]
    trusted_publisher_keys: _containers.RepeatedScalarFieldContainer[bytes]
    mqtt: MqttCredentials
    def __init__(self, device_id: _Optional[str] = ..., fleet: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., device_endpoint: _Optional[str] = ..., tls_server_name: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., trusted_publisher_keys: _Optional[_Iterable[bytes]] = ..., mqtt: _Optional[_Union[MqttCredentials, _Mapping]] = ...) -> None: ...
