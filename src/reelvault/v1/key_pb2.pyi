import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantRef(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class KeyVersion(_message.Message):
    __slots__ = ("version", "state", "root_key_id", "create_time", "state_change_time", "deletion_due_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROOT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETION_DUE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    root_key_id: str
    create_time: _timestamp_pb2.Timestamp
    state_change_time: _timestamp_pb2.Timestamp
    deletion_due_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., root_key_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deletion_due_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class KeyStatus(_message.Message):
    __slots__ = ("tenant_id", "state", "min_decryption_version", "versions", "deletion_due_time", "kms_key_arn", "keys_to_rewrap")
    class KeysToRewrapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MIN_DECRYPTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DELETION_DUE_TIME_FIELD_NUMBER: _ClassVar[int]
    KMS_KEY_ARN_FIELD_NUMBER: _ClassVar[int]
    KEYS_TO_REWRAP_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: str
    min_decryption_version: int
    versions: _containers.RepeatedCompositeFieldContainer[KeyVersion]
    deletion_due_time: _timestamp_pb2.Timestamp
    kms_key_arn: str
    keys_to_rewrap: _containers.ScalarMap[str, int]
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[str] = ..., min_decryption_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[KeyVersion, _Mapping]]] = ..., deletion_due_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kms_key_arn: _Optional[str] = ..., keys_to_rewrap: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetKeyStatusRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class RotateTenantKeyRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class RewrapTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class RewrapProgress(_message.Message):
    __slots__ = ("kind", "moved", "done")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    moved: int
    done: bool
    def __init__(self, kind: _Optional[str] = ..., moved: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class KeyVersionRequest(_message.Message):
    __slots__ = ("tenant_id", "version")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    version: int
    def __init__(self, tenant_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RewrapRootKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewrapRootKeysResponse(_message.Message):
    __slots__ = ("kek_versions", "pseudonym_keys")
    KEK_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_KEYS_FIELD_NUMBER: _ClassVar[int]
    kek_versions: int
    pseudonym_keys: int
    def __init__(self, kek_versions: _Optional[int] = ..., pseudonym_keys: _Optional[int] = ...) -> None: ...

class ScheduleTenantDeletionRequest(_message.Message):
    __slots__ = ("tenant_id", "waiting_days")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    WAITING_DAYS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    waiting_days: int
    def __init__(self, tenant_id: _Optional[str] = ..., waiting_days: _Optional[int] = ...) -> None: ...

class KeyExport(_message.Message):
    __slots__ = ("id", "tenant_id", "algorithm", "recipient_fingerprint", "request_time", "approve_time", "collect_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVE_TIME_FIELD_NUMBER: _ClassVar[int]
    COLLECT_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    algorithm: str
    recipient_fingerprint: str
    request_time: _timestamp_pb2.Timestamp
    approve_time: _timestamp_pb2.Timestamp
    collect_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., recipient_fingerprint: _Optional[str] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., collect_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RequestKeyExportRequest(_message.Message):
    __slots__ = ("tenant_id", "recipient_public_key")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    recipient_public_key: bytes
    def __init__(self, tenant_id: _Optional[str] = ..., recipient_public_key: _Optional[bytes] = ...) -> None: ...

class ApproveKeyExportRequest(_message.Message):
    __slots__ = ("tenant_id", "export_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    export_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., export_id: _Optional[str] = ...) -> None: ...

class ExportTenantKeysRequest(_message.Message):
    __slots__ = ("tenant_id", "export_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    export_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., export_id: _Optional[str] = ...) -> None: ...

class TenantKeyExport(_message.Message):
    __slots__ = ("export", "envelope")
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    export: KeyExport
    envelope: bytes
    def __init__(self, export: _Optional[_Union[KeyExport, _Mapping]] = ..., envelope: _Optional[bytes] = ...) -> None: ...
