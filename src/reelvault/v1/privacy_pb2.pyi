import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Payload(_message.Message):
    __slots__ = ("id", "tenant_id", "subject", "purpose", "content_type", "labels", "size", "create_time", "expire_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    subject: str
    purpose: str
    content_type: str
    labels: _containers.ScalarMap[str, str]
    size: int
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., subject: _Optional[str] = ..., purpose: _Optional[str] = ..., content_type: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., size: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutPayloadRequest(_message.Message):
    __slots__ = ("subject_id", "purpose", "content_type", "data", "ttl_seconds", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    content_type: str
    data: bytes
    ttl_seconds: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetPayloadRequest(_message.Message):
    __slots__ = ("id", "purpose")
    ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    id: str
    purpose: str
    def __init__(self, id: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class PayloadData(_message.Message):
    __slots__ = ("payload", "data")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    payload: Payload
    data: bytes
    def __init__(self, payload: _Optional[_Union[Payload, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListPayloadsRequest(_message.Message):
    __slots__ = ("subject_id", "page_size", "page_token")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    page_size: int
    page_token: str
    def __init__(self, subject_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPayloadsResponse(_message.Message):
    __slots__ = ("payloads", "next_page_token")
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payloads: _containers.RepeatedCompositeFieldContainer[Payload]
    next_page_token: str
    def __init__(self, payloads: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePayloadRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeletePayloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConsentDecision(_message.Message):
    __slots__ = ("subject", "purpose", "granted", "source", "effective_time", "record_time")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORD_TIME_FIELD_NUMBER: _ClassVar[int]
    subject: str
    purpose: str
    granted: bool
    source: str
    effective_time: _timestamp_pb2.Timestamp
    record_time: _timestamp_pb2.Timestamp
    def __init__(self, subject: _Optional[str] = ..., purpose: _Optional[str] = ..., granted: _Optional[bool] = ..., source: _Optional[str] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., record_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordConsentRequest(_message.Message):
    __slots__ = ("subject_id", "purpose", "granted", "source", "effective_time")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    granted: bool
    source: str
    effective_time: _timestamp_pb2.Timestamp
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ..., granted: _Optional[bool] = ..., source: _Optional[str] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetConsentRequest(_message.Message):
    __slots__ = ("subject_id", "purpose")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    purpose: str
    def __init__(self, subject_id: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class GetConsentResponse(_message.Message):
    __slots__ = ("subject", "granted", "history")
    class GrantedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    subject: str
    granted: _containers.ScalarMap[str, bool]
    history: _containers.RepeatedCompositeFieldContainer[ConsentDecision]
    def __init__(self, subject: _Optional[str] = ..., granted: _Optional[_Mapping[str, bool]] = ..., history: _Optional[_Iterable[_Union[ConsentDecision, _Mapping]]] = ...) -> None: ...

class HashSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class HashSubjectResponse(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class EraseSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class EraseSubjectResponse(_message.Message):
    __slots__ = ("subject", "key_destroyed", "payloads_deleted", "assets_deleted")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KEY_DESTROYED_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_DELETED_FIELD_NUMBER: _ClassVar[int]
    ASSETS_DELETED_FIELD_NUMBER: _ClassVar[int]
    subject: str
    key_destroyed: bool
    payloads_deleted: int
    assets_deleted: int
    def __init__(self, subject: _Optional[str] = ..., key_destroyed: _Optional[bool] = ..., payloads_deleted: _Optional[int] = ..., assets_deleted: _Optional[int] = ...) -> None: ...

class ExportSubjectRequest(_message.Message):
    __slots__ = ("subject_id",)
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    def __init__(self, subject_id: _Optional[str] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class SetLegalHoldRequest(_message.Message):
    __slots__ = ("subject_id", "hold")
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    subject_id: str
    hold: bool
    def __init__(self, subject_id: _Optional[str] = ..., hold: _Optional[bool] = ...) -> None: ...

class SubjectStatus(_message.Message):
    __slots__ = ("subject", "legal_hold", "create_time", "erase_time")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LEGAL_HOLD_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERASE_TIME_FIELD_NUMBER: _ClassVar[int]
    subject: str
    legal_hold: bool
    create_time: _timestamp_pb2.Timestamp
    erase_time: _timestamp_pb2.Timestamp
    def __init__(self, subject: _Optional[str] = ..., legal_hold: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., erase_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
