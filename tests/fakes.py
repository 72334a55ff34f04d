"""Fakes for the roles in reelvault's protocols, for unit tests."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from reelvault.errors import DecryptionError, Unavailable
from reelvault.keys.provider import WrappedKey

__all__ = ["FakeRootKeyProvider"]


class FakeRootKeyProvider:
    """A :class:`~reelvault.keys.provider.RootKeyProvider` that keeps keys in a dict.

    A "wrapped key" is a random handle; unwrapping looks it up and insists on the exact
    context it was made with, which is the property the real providers guarantee by
    cryptography. It counts calls, so tests can prove the service refused a key without
    asking the provider, and it can be made unreachable or given a hook that runs during
    an unwrap (to interleave another operation deterministically).
    """

    def __init__(self, root_key_id: str = "fake:1") -> None:
        self.root_key_id = root_key_id
        self.unavailable = False
        self.on_unwrap: Callable[[], None] | None = None
        self.generate_calls = 0
        self.unwrap_calls = 0
        self.contexts: list[dict[str, str]] = []
        self._keys: dict[bytes, tuple[bytes, dict[str, str]]] = {}

    def generate_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        self.generate_calls += 1
        self._check_reachable()
        key = secrets.token_bytes(32)
        return key, self._wrap(key, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self.unwrap_calls += 1
        self._check_reachable()
        if self.on_unwrap is not None:
            hook, self.on_unwrap = self.on_unwrap, None
            hook()
        entry = self._keys.get(bytes(wrapped.ciphertext))
        if entry is None or entry[1] != dict(context):
            raise DecryptionError("fake: unknown handle or context mismatch")
        return entry[0]

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        return self._wrap(self.unwrap(wrapped, context), context)

    def _wrap(self, key: bytes, context: Mapping[str, str]) -> WrappedKey:
        handle = secrets.token_bytes(40)
        self._keys[handle] = (key, dict(context))
        self.contexts.append(dict(context))
        return WrappedKey(self.root_key_id, handle)

    def _check_reachable(self) -> None:
        if self.unavailable:
            raise Unavailable("fake root key provider unreachable")
