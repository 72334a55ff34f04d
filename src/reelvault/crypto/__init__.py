"""Everything reelvault encrypts goes through this package.

The public surface is below; ``_primitives`` is the only module that touches
``cryptography.hazmat``. Message layout: :mod:`reelvault.crypto.format`; sealing and
opening, step by step: :mod:`reelvault.crypto.message`.
"""

from reelvault.crypto.context import (
    KIND_ASSET,
    KIND_PAYLOAD,
    EncryptionContext,
    parse_context,
    serialize_context,
)
from reelvault.crypto.format import (
    DEFAULT_FRAME_LENGTH,
    FINAL_FRAME_OVERHEAD,
    FRAME_OVERHEAD,
    EncryptedDataKey,
    MessageLayout,
    RangePlan,
)
from reelvault.crypto.message import (
    PROVIDER_ID,
    KeyResolver,
    OpenedMessage,
    RandomAccessReader,
    ReadAt,
    Sealer,
    StreamAt,
    WrappingKey,
    decrypt_stream,
    encrypt_stream,
    open_frames,
    open_header,
    open_message,
    rechunk,
    rewrap_data_key,
    seal_message,
    unwrap_key,
    wrap_key,
)

__all__ = [
    "DEFAULT_FRAME_LENGTH",
    "EncryptedDataKey",
    "EncryptionContext",
    "FINAL_FRAME_OVERHEAD",
    "FRAME_OVERHEAD",
    "KIND_ASSET",
    "KIND_PAYLOAD",
    "KeyResolver",
    "MessageLayout",
    "OpenedMessage",
    "PROVIDER_ID",
    "RandomAccessReader",
    "RangePlan",
    "ReadAt",
    "Sealer",
    "StreamAt",
    "WrappingKey",
    "decrypt_stream",
    "encrypt_stream",
    "open_frames",
    "open_header",
    "open_message",
    "parse_context",
    "rechunk",
    "rewrap_data_key",
    "seal_message",
    "serialize_context",
    "unwrap_key",
    "wrap_key",
]
