"""Shared fixtures for the crypto tests: KEKs, resolvers and the official SDK as an oracle.

The official ``aws-encryption-sdk`` is configured exactly as DESIGN.md section 3 says an
outside party would be: a Raw AES keyring with provider id ``reelvault`` and the tenant KEK
under its fixed-width key name, suite 0x0478, commitment required on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aws_encryption_sdk
import pytest
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.exceptions import UnknownIdentityError
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider

from reelvault.crypto import KIND_ASSET, EncryptionContext
from reelvault.crypto.names import kek_key_name

TENANT_ID = "0123456789abcdef0123456789abcdef"
OTHER_TENANT_ID = "fedcba9876543210fedcba9876543210"
OBJECT_ID = "asset-0001"


@dataclass(frozen=True)
class Kek:
    """A tenant KEK version in plaintext (satisfies ``reelvault.crypto.WrappingKey``)."""

    name: str
    key: bytes


class DictResolver:
    """A ``KeyResolver`` over a fixed set of KEKs; None for any name it does not hold."""

    def __init__(self, *keks: Kek) -> None:
        self._keys = {k.name: k.key for k in keks}
        self.calls: list[str] = []

    def wrapping_key(self, key_name: str) -> bytes | None:
        self.calls.append(key_name)
        return self._keys.get(key_name)


class ReelvaultKeyProvider(RawMasterKeyProvider):  # type: ignore[misc]
    """The official SDK's Raw AES keyring, holding only the KEKs it is given."""

    provider_id = "reelvault"
    _keks: dict[str, bytes]

    def _get_raw_key(self, key_id: bytes | str) -> WrappingKey:
        name = key_id.decode() if isinstance(key_id, bytes) else key_id
        if name not in self._keks:
            raise UnknownIdentityError(f"no KEK named {name}")
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=self._keks[name],
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


def make_sdk_provider(*keks: Kek) -> ReelvaultKeyProvider:
    provider = ReelvaultKeyProvider()  # the SDK's __new__ takes only its config kwargs
    provider._keks = {k.name: k.key for k in keks}
    for k in keks:
        provider.add_master_key(k.name)
    return provider


def join(pieces: Iterable[bytes | bytearray | memoryview]) -> bytes:
    return b"".join(pieces)


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` as chunks of ``size`` bytes (the last may be shorter)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def pattern(n: int) -> bytes:
    """Deterministic, non-repeating-per-frame plaintext (also the vectors' recipe)."""
    return bytes(i % 251 for i in range(n))


@pytest.fixture(scope="session")
def kek() -> Kek:
    return Kek(kek_key_name(TENANT_ID, 1), bytes(range(32)))


@pytest.fixture(scope="session")
def kek2() -> Kek:
    """The same tenant's next KEK version (rotation target)."""
    return Kek(kek_key_name(TENANT_ID, 2), bytes(range(100, 132)))


@pytest.fixture(scope="session")
def resolver(kek: Kek) -> DictResolver:
    return DictResolver(kek)


@pytest.fixture(scope="session")
def context() -> EncryptionContext:
    return EncryptionContext.for_object(tenant_id=TENANT_ID, object_id=OBJECT_ID, kind=KIND_ASSET)


@pytest.fixture(scope="session")
def sdk_provider(kek: Kek) -> ReelvaultKeyProvider:
    return make_sdk_provider(kek)


@pytest.fixture(scope="session")
def sdk_client() -> aws_encryption_sdk.EncryptionSDKClient:
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )


@pytest.fixture(scope="session")
def sdk_provider_for() -> Callable[..., ReelvaultKeyProvider]:
    """Build an SDK key provider holding exactly the given KEKs."""
    return make_sdk_provider
