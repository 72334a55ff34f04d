import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_ALGORITHM_UNSPECIFIED: _ClassVar[TokenAlgorithm]
    TOKEN_ALGORITHM_ED25519: _ClassVar[TokenAlgorithm]
    TOKEN_ALGORITHM_HMAC_SHA256: _ClassVar[TokenAlgorithm]
TOKEN_ALGORITHM_UNSPECIFIED: TokenAlgorithm
TOKEN_ALGORITHM_ED25519: TokenAlgorithm
TOKEN_ALGORITHM_HMAC_SHA256: TokenAlgorithm

class IssueRequest(_message.Message):
    __slots__ = ("asset_id", "prefix", "ttl_seconds", "not_before", "audience", "client_ip_prefix", "session_id", "algorithm", "cloudfront")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IP_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CLOUDFRONT_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    prefix: str
    ttl_seconds: int
    not_before: _timestamp_pb2.Timestamp
    audience: str
    client_ip_prefix: str
    session_id: str
    algorithm: TokenAlgorithm
    cloudfront: bool
    def __init__(self, asset_id: _Optional[str] = ..., prefix: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., audience: _Optional[str] = ..., client_ip_prefix: _Optional[str] = ..., session_id: _Optional[str] = ..., algorithm: _Optional[_Union[TokenAlgorithm, str]] = ..., cloudfront: _Optional[bool] = ...) -> None: ...

class IssuedUrl(_message.Message):
    __slots__ = ("url", "token", "expire_time", "key_id", "resource")
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    url: str
    token: str
    expire_time: _timestamp_pb2.Timestamp
    key_id: str
    resource: str
    def __init__(self, url: _Optional[str] = ..., token: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., resource: _Optional[str] = ...) -> None: ...

class IssuedCookie(_message.Message):
    __slots__ = ("set_cookie", "url", "expire_time", "key_id", "resource", "cloudfront_cookies")
    class CloudfrontCookiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SET_COOKIE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CLOUDFRONT_COOKIES_FIELD_NUMBER: _ClassVar[int]
    set_cookie: str
    url: str
    expire_time: _timestamp_pb2.Timestamp
    key_id: str
    resource: str
    cloudfront_cookies: _containers.ScalarMap[str, str]
    def __init__(self, set_cookie: _Optional[str] = ..., url: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., key_id: _Optional[str] = ..., resource: _Optional[str] = ..., cloudfront_cookies: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RevokeSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class RevokeAssetRequest(_message.Message):
    __slots__ = ("asset_id",)
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    def __init__(self, asset_id: _Optional[str] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("cutoff_time",)
    CUTOFF_TIME_FIELD_NUMBER: _ClassVar[int]
    cutoff_time: _timestamp_pb2.Timestamp
    def __init__(self, cutoff_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("key_id", "algorithm", "state", "public_key", "create_time", "state_change_time", "verify_until")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    VERIFY_UNTIL_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    algorithm: TokenAlgorithm
    state: str
    public_key: bytes
    create_time: _timestamp_pb2.Timestamp
    state_change_time: _timestamp_pb2.Timestamp
    verify_until: _timestamp_pb2.Timestamp
    def __init__(self, key_id: _Optional[str] = ..., algorithm: _Optional[_Union[TokenAlgorithm, str]] = ..., state: _Optional[str] = ..., public_key: _Optional[bytes] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verify_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSigningKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSigningKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ("algorithm", "retire_previous")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    RETIRE_PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    algorithm: TokenAlgorithm
    retire_previous: bool
    def __init__(self, algorithm: _Optional[_Union[TokenAlgorithm, str]] = ..., retire_previous: _Optional[bool] = ...) -> None: ...

class RotateSigningKeyResponse(_message.Message):
    __slots__ = ("key", "hmac_secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HMAC_SECRET_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    hmac_secret: bytes
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ..., hmac_secret: _Optional[bytes] = ...) -> None: ...
