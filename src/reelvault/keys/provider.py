"""The root key provider role.

A root key provider is the only component that can unwrap a tenant KEK. reelvault ships
two: a local keyring file (:mod:`reelvault.keys.local`) and AWS KMS
(:mod:`reelvault.keys.kms`). Both bind every wrapped key to an encryption context (the
tenant id and KEK version), so a wrapped KEK copied to another tenant's row does not unwrap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "RootKeyProvider",
    "WrappedKey",
]


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A key encrypted by a root key.

    Attributes:
        root_key_id: which root key (and version) wrapped it, e.g. ``local:3`` or a KMS key
            ARN. Stored beside the ciphertext so operators can see what a rotation of the
            root key still has to rewrap.
        ciphertext: opaque to everyone but the provider.
    """

    root_key_id: str
    ciphertext: bytes

    def __repr__(self) -> str:
        size = len(self.ciphertext)
        return f"WrappedKey(root_key_id={self.root_key_id!r}, ciphertext=<{size} bytes>)"


class RootKeyProvider(Protocol):
    """Wraps and unwraps 32-byte tenant keys under a root key."""

    def generate_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        """Return a fresh random 32-byte key and the same key wrapped under the current
        root key, bound to ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Return the plaintext key. Raises ``DecryptionError`` if ``wrapped`` was not made
        by this provider for exactly ``context`` (opaque: no reason given to callers), and
        ``Unavailable`` if the provider cannot be reached."""
        ...

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """Re-encrypt under the provider's current root key without returning plaintext to
        the caller where the provider allows (KMS ReEncrypt)."""
        ...
