"""The key hierarchy below the object format: root key providers and tenant KEK versions.

Layout and semantics: docs/keys.md. The data keys themselves are drawn and wrapped by
:mod:`reelvault.crypto`, which asks :class:`KekResolver` for the KEK a header names.
"""

from reelvault.crypto.names import kek_key_name, parse_kek_key_name, valid_tenant_id
from reelvault.keys.kms import KmsRootKeyProvider
from reelvault.keys.local import LocalKeyring, init_keyring, rotate_keyring
from reelvault.keys.provider import RootKeyProvider, WrappedKey
from reelvault.keys.tenant import Kek, KekResolver, KekState, KekVersion, Tenant, TenantKeys

__all__ = [
    "Kek",
    "KekResolver",
    "KekState",
    "KekVersion",
    "KmsRootKeyProvider",
    "LocalKeyring",
    "RootKeyProvider",
    "Tenant",
    "TenantKeys",
    "WrappedKey",
    "init_keyring",
    "kek_key_name",
    "parse_kek_key_name",
    "rotate_keyring",
    "valid_tenant_id",
]
