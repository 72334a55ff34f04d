import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Asset(_message.Message):
    __slots__ = ("id", "tenant_id", "path", "content_type", "labels", "size", "sha256", "etag", "create_time", "kek_version", "subject")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    KEK_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    path: str
    content_type: str
    labels: _containers.ScalarMap[str, str]
    size: int
    sha256: bytes
    etag: str
    create_time: _timestamp_pb2.Timestamp
    kek_version: int
    subject: str
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., path: _Optional[str] = ..., content_type: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., etag: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kek_version: _Optional[int] = ..., subject: _Optional[str] = ...) -> None: ...

class AssetMetadata(_message.Message):
    __slots__ = ("path", "content_type", "labels", "expected_size", "expected_sha256", "subject_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    content_type: str
    labels: _containers.ScalarMap[str, str]
    expected_size: int
    expected_sha256: bytes
    subject_id: str
    def __init__(self, path: _Optional[str] = ..., content_type: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., expected_size: _Optional[int] = ..., expected_sha256: _Optional[bytes] = ..., subject_id: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("metadata", "chunk", "end")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    metadata: AssetMetadata
    chunk: bytes
    end: UploadEnd
    def __init__(self, metadata: _Optional[_Union[AssetMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ..., end: _Optional[_Union[UploadEnd, _Mapping]] = ...) -> None: ...

class UploadEnd(_message.Message):
    __slots__ = ("size", "sha256")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: bytes
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ByteRange(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("asset_id", "byte_range", "suffix_length")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    BYTE_RANGE_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    byte_range: ByteRange
    suffix_length: int
    def __init__(self, asset_id: _Optional[str] = ..., byte_range: _Optional[_Union[ByteRange, _Mapping]] = ..., suffix_length: _Optional[int] = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("asset", "offset", "length")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    asset: Asset
    offset: int
    length: int
    def __init__(self, asset: _Optional[_Union[Asset, _Mapping]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class StatAssetRequest(_message.Message):
    __slots__ = ("asset_id",)
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    def __init__(self, asset_id: _Optional[str] = ...) -> None: ...

class ListAssetsRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAssetsResponse(_message.Message):
    __slots__ = ("assets", "next_page_token")
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    assets: _containers.RepeatedCompositeFieldContainer[Asset]
    next_page_token: str
    def __init__(self, assets: _Optional[_Iterable[_Union[Asset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAssetRequest(_message.Message):
    __slots__ = ("asset_id",)
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    def __init__(self, asset_id: _Optional[str] = ...) -> None: ...

class DeleteAssetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OpenAssetRequest(_message.Message):
    __slots__ = ("asset_id", "byte_range", "suffix_length", "lifetime_seconds")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    BYTE_RANGE_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    byte_range: ByteRange
    suffix_length: int
    lifetime_seconds: int
    def __init__(self, asset_id: _Optional[str] = ..., byte_range: _Optional[_Union[ByteRange, _Mapping]] = ..., suffix_length: _Optional[int] = ..., lifetime_seconds: _Optional[int] = ...) -> None: ...

class ReadGrant(_message.Message):
    __slots__ = ("asset", "header", "frame_key", "object_size", "url", "expire_time", "offset", "length")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    FRAME_KEY_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SIZE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    asset: Asset
    header: bytes
    frame_key: bytes
    object_size: int
    url: str
    expire_time: _timestamp_pb2.Timestamp
    offset: int
    length: int
    def __init__(self, asset: _Optional[_Union[Asset, _Mapping]] = ..., header: _Optional[bytes] = ..., frame_key: _Optional[bytes] = ..., object_size: _Optional[int] = ..., url: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...
