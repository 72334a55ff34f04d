"""Encryption context: the identity a ciphertext is bound to.

An encryption context is a small map of UTF-8 strings. It is authenticated (never
encrypted) by the message header and by the wrapping of the data key, so a ciphertext moved
to another tenant, object id or kind no longer decrypts. Its serialization is the AWS
Encryption SDK's::

    count      uint16 BE            number of pairs (absent when the context is empty)
    repeated, sorted by key bytes:
      key_len  uint16 BE
      key      key_len bytes UTF-8
      val_len  uint16 BE
      value    val_len bytes UTF-8

reelvault always writes the three keys below; parsing accepts any well-formed context and
the caller compares it with what it expects.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Final

__all__ = [
    "EncryptionContext",
    "KIND_ASSET",
    "KIND_PAYLOAD",
    "MalformedContext",
    "parse_context",
    "serialize_context",
]

TENANT_KEY: Final = "reelvault:tenant"
OBJECT_KEY: Final = "reelvault:object"
KIND_KEY: Final = "reelvault:kind"

KIND_ASSET: Final = "asset"
KIND_PAYLOAD: Final = "payload"

_MAX_SERIALIZED = 0xFFFF
_RESERVED_PREFIX = "aws-crypto-"


class MalformedContext(ValueError):
    """The serialized context is not well formed. Internal to crypto/."""


class EncryptionContext(Mapping[str, str]):
    """An immutable, validated encryption context."""

    __slots__ = ("_items", "_serialized")

    def __init__(self, items: Mapping[str, str]) -> None:
        for key, value in items.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise ValueError("encryption context keys and values must be strings")
            if key.startswith(_RESERVED_PREFIX):
                raise ValueError("encryption context keys may not use the aws-crypto- prefix")
        self._items = dict(sorted(items.items(), key=lambda kv: kv[0].encode()))
        self._serialized = _serialize(self._items)

    @classmethod
    def for_object(cls, *, tenant_id: str, object_id: str, kind: str) -> EncryptionContext:
        """The context reelvault binds every stored object to."""
        if kind not in (KIND_ASSET, KIND_PAYLOAD):
            raise ValueError(f"unknown object kind {kind!r}")
        if not tenant_id or not object_id:
            raise ValueError("tenant id and object id must not be empty")
        return cls({TENANT_KEY: tenant_id, OBJECT_KEY: object_id, KIND_KEY: kind})

    @property
    def tenant_id(self) -> str | None:
        return self._items.get(TENANT_KEY)

    def serialize(self) -> bytes:
        return self._serialized

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncryptionContext):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._serialized)

    def __repr__(self) -> str:
        return f"EncryptionContext({self._items!r})"


def _serialize(items: Mapping[str, str]) -> bytes:
    if not items:
        return b""
    out = bytearray(struct.pack(">H", len(items)))
    for key, value in items.items():
        kb, vb = key.encode(), value.encode()
        if len(kb) > 0xFFFF or len(vb) > 0xFFFF:
            raise ValueError("encryption context entry too long")
        out += struct.pack(">H", len(kb)) + kb + struct.pack(">H", len(vb)) + vb
    if len(out) > _MAX_SERIALIZED:
        raise ValueError("encryption context too large")
    return bytes(out)


def serialize_context(items: Mapping[str, str]) -> bytes:
    """Serialize any mapping in the SDK's canonical (sorted) form."""
    if isinstance(items, EncryptionContext):
        return items.serialize()
    return EncryptionContext(items).serialize()


def parse_context(data: bytes) -> EncryptionContext:
    """Parse a serialized context strictly: sorted, unique keys, no trailing bytes."""
    if not data:
        return EncryptionContext({})
    try:
        (count,) = struct.unpack_from(">H", data, 0)
        pos = 2
        items: dict[str, str] = {}
        previous: bytes | None = None
        for _ in range(count):
            (klen,) = struct.unpack_from(">H", data, pos)
            key = data[pos + 2 : pos + 2 + klen]
            pos += 2 + klen
            (vlen,) = struct.unpack_from(">H", data, pos)
            value = data[pos + 2 : pos + 2 + vlen]
            pos += 2 + vlen
            if len(key) != klen or len(value) != vlen or pos > len(data):
                raise MalformedContext("truncated entry")
            if previous is not None and key <= previous:
                raise MalformedContext("keys not sorted or duplicated")
            previous = key
            items[key.decode("utf-8")] = value.decode("utf-8")
    except (struct.error, UnicodeDecodeError) as exc:
        raise MalformedContext(str(exc)) from None
    if count == 0 or pos != len(data):
        raise MalformedContext("count or length mismatch")
    try:
        return EncryptionContext(items)
    except ValueError as exc:
        raise MalformedContext(str(exc)) from None
