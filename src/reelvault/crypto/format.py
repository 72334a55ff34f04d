"""The byte layout of a reelvault message, and the range maths over it.

reelvault stores every object (video asset or personalization payload) as an AWS Encryption
SDK message, format version 2, algorithm suite 0x0478 (AES-256-GCM, HKDF-SHA512 key
derivation, key commitment, no signature), framed. Any implementation of that public format
can decrypt our objects given the tenant KEK. All integers are big-endian::

    Header body
    off  size  field
    0    1     version                      0x02
    1    2     algorithm suite id           0x0478
    3    32    message id                   random; HKDF salt and part of every frame's AAD
    35   2     encryption context length    n (0 if the context is empty)
    37   n     encryption context           see crypto.context
    .    2     encrypted data key count     reelvault writes 1; readers accept 1..8
    .    .     encrypted data keys, each:
                 2  provider id length, provider id ("reelvault")
                 2  provider info length, provider info:
                      key name (UTF-8) | tag length in bits u32 (128) | IV length u32 (12) | IV (12)
                 2  ciphertext length (48), AES-256-GCM(KEK, IV, data key, AAD=context) || tag
    .    1     content type                 0x02 (framed)
    .    4     frame length F               65536 for reelvault's writes
    .    32    commitment key               HKDF-SHA512(data key, salt=message id, "COMMITKEY")
    Header authentication
    .    16    tag of AES-256-GCM(content key, IV=0^12, plaintext="", AAD=header body)

    Regular frame k (k = 1, 2, ...), exactly F + 32 bytes:
    0    4     sequence number k
    4    12    IV = 0^8 || uint32(k)
    16   F     ciphertext
    16+F 16    tag;  AAD = message id || "AWSKMSEncryptionClient Frame" || u32 k || u64 F

    Final frame (always present, exactly once, last), 40 + r bytes, 0 <= r <= F:
    0    4     0xFFFFFFFF end marker
    4    4     sequence number (one more than the last regular frame)
    8    12    IV = 0^8 || uint32(sequence number)
    20   4     content length r
    24   r     ciphertext
    24+r 16    tag;  AAD = message id || "AWSKMSEncryptionClient Final Frame" || u32 seq || u64 r

The content key is HKDF-SHA512(data key, salt=message id, info=0x0478 || "DERIVEKEY"), 32
bytes. reelvault's writer puts the last 1..F plaintext bytes in the final frame (an empty
message has one empty final frame); other writers may end an exact multiple of F with an
empty final frame, and the reader accepts both.

Random access: with header length H, regular frame k starts at H + (k - 1)(F + 32). Given the
ciphertext size C, the final frame's position and length follow uniquely (its content length
r <= F < F + 32), so a plaintext range maps to one contiguous ciphertext span. That size is
only a claim until the final frame has been authenticated, which readers do first.

This module is pure: parsing and arithmetic, no keys, no cryptography.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from reelvault.crypto.context import EncryptionContext, MalformedContext, parse_context

__all__ = [
    "ALGORITHM_ID",
    "DEFAULT_FRAME_LENGTH",
    "EncryptedDataKey",
    "FINAL_FRAME_OVERHEAD",
    "FRAME_OVERHEAD",
    "Header",
    "Incomplete",
    "MAX_FRAME_LENGTH",
    "Malformed",
    "MessageLayout",
    "RangePlan",
    "frame_iv",
    "parse_header",
]

VERSION: Final = 0x02
ALGORITHM_ID: Final = 0x0478
CONTENT_TYPE_FRAMED: Final = 0x02
MESSAGE_ID_LEN: Final = 32
COMMITMENT_LEN: Final = 32
TAG_LEN: Final = 16
IV_LEN: Final = 12
DATA_KEY_LEN: Final = 32

DEFAULT_FRAME_LENGTH: Final = 64 * 1024
MAX_FRAME_LENGTH: Final = 1024 * 1024  # bounds what a hostile header can make a reader buffer
MAX_ENCRYPTED_DATA_KEYS: Final = 8
MAX_HEADER_LENGTH: Final = 256 * 1024
END_MARKER: Final = 0xFFFFFFFF
MAX_SEQUENCE: Final = 0xFFFFFFFE

FRAME_OVERHEAD: Final = 4 + IV_LEN + TAG_LEN  # 32
FINAL_FRAME_OVERHEAD: Final = 4 + 4 + IV_LEN + 4 + TAG_LEN  # 40

FRAME_AAD_LABEL: Final = b"AWSKMSEncryptionClient Frame"
FINAL_FRAME_AAD_LABEL: Final = b"AWSKMSEncryptionClient Final Frame"
DERIVE_KEY_INFO: Final = struct.pack(">H", ALGORITHM_ID) + b"DERIVEKEY"
COMMIT_KEY_INFO: Final = b"COMMITKEY"
HEADER_AUTH_IV: Final = bytes(IV_LEN)


class Malformed(ValueError):
    """Bytes that are not a well-formed reelvault message. Internal to crypto/: the public
    surface turns it into the opaque ``DecryptionError``."""


class Incomplete(Exception):
    """More bytes are needed to finish parsing; ``needed`` is a lower bound on the total."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


@dataclass(frozen=True, slots=True)
class EncryptedDataKey:
    provider_id: str
    provider_info: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, data: bytes) -> EncryptedDataKey:
        """Parse one serialized encrypted data key (as stored in the catalog's key slot).

        Raises:
            Malformed: not exactly one well-formed encrypted data key.
        """
        cur = _Cursor(data)
        try:
            pid = cur.take(cur.u16()).decode("utf-8")
            info = cur.take(cur.u16())
            ciphertext = cur.take(cur.u16())
        except (Incomplete, UnicodeDecodeError):
            raise Malformed("bad encrypted data key") from None
        if cur.pos != len(data):
            raise Malformed("trailing bytes after encrypted data key")
        return cls(pid, info, ciphertext)

    def serialize(self) -> bytes:
        pid = self.provider_id.encode()
        return (
            struct.pack(">H", len(pid))
            + pid
            + struct.pack(">H", len(self.provider_info))
            + self.provider_info
            + struct.pack(">H", len(self.ciphertext))
            + self.ciphertext
        )


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed (not yet authenticated) message header."""

    message_id: bytes
    context: EncryptionContext
    data_keys: tuple[EncryptedDataKey, ...]
    frame_length: int
    commitment: bytes
    body: bytes  # the serialized header body, the AAD of the header tag
    auth_tag: bytes

    @property
    def length(self) -> int:
        """Bytes from the start of the message to the first frame."""
        return len(self.body) + TAG_LEN

    def serialize(self) -> bytes:
        return self.body + self.auth_tag

    @staticmethod
    def serialize_body(
        message_id: bytes,
        context: EncryptionContext,
        data_keys: tuple[EncryptedDataKey, ...],
        frame_length: int,
        commitment: bytes,
    ) -> bytes:
        ctx = context.serialize()
        out = bytearray(struct.pack(">BH32sH", VERSION, ALGORITHM_ID, message_id, len(ctx)))
        out += ctx
        out += struct.pack(">H", len(data_keys))
        for edk in data_keys:
            out += edk.serialize()
        out += struct.pack(">BI", CONTENT_TYPE_FRAMED, frame_length)
        out += commitment
        return bytes(out)


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise Incomplete(end)
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse a header strictly from the start of ``data``.

    Raises:
        Incomplete: ``data`` ends inside the header (and is below the size cap).
        Malformed: anything this implementation would not have written or cannot read.
    """
    cur = _Cursor(data)
    try:
        if cur.u8() != VERSION:
            raise Malformed("unsupported message version")
        if cur.u16() != ALGORITHM_ID:
            raise Malformed("unsupported algorithm suite")
        message_id = cur.take(MESSAGE_ID_LEN)
        ctx_len = cur.u16()
        try:
            context = parse_context(cur.take(ctx_len))
        except MalformedContext as exc:
            raise Malformed("bad encryption context") from exc
        count = cur.u16()
        if not 1 <= count <= MAX_ENCRYPTED_DATA_KEYS:
            raise Malformed("encrypted data key count out of range")
        keys = []
        for _ in range(count):
            pid_raw = cur.take(cur.u16())
            info = cur.take(cur.u16())
            ciphertext = cur.take(cur.u16())
            try:
                pid = pid_raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Malformed("provider id is not UTF-8") from None
            keys.append(EncryptedDataKey(pid, info, ciphertext))
        if cur.u8() != CONTENT_TYPE_FRAMED:
            raise Malformed("only framed content is supported")
        frame_length = cur.u32()
        if not 1 <= frame_length <= MAX_FRAME_LENGTH:
            raise Malformed("frame length out of range")
        commitment = cur.take(COMMITMENT_LEN)
        body_end = cur.pos
        auth_tag = cur.take(TAG_LEN)
    except Incomplete as exc:
        if exc.needed > MAX_HEADER_LENGTH:
            raise Malformed("header too large") from None
        raise
    return Header(
        message_id=message_id,
        context=context,
        data_keys=tuple(keys),
        frame_length=frame_length,
        commitment=commitment,
        body=bytes(data[:body_end]),
        auth_tag=auth_tag,
    )


def frame_iv(sequence: int) -> bytes:
    """The deterministic per-frame IV: 8 zero bytes and the sequence number."""
    return struct.pack(">8xI", sequence)


def frame_aad(message_id: bytes, sequence: int, length: int, *, final: bool) -> bytes:
    label = FINAL_FRAME_AAD_LABEL if final else FRAME_AAD_LABEL
    return message_id + label + struct.pack(">IQ", sequence, length)


@dataclass(frozen=True, slots=True)
class RangePlan:
    """Which ciphertext bytes to fetch for a plaintext range, and how to trim.

    Attributes:
        offset: first ciphertext byte to fetch (a frame boundary).
        length: number of ciphertext bytes to fetch (whole frames only).
        first_sequence: sequence number of the first frame in the span.
        skip: plaintext bytes to drop from the start of the first frame.
        take: plaintext bytes the range covers.
    """

    offset: int
    length: int
    first_sequence: int
    skip: int
    take: int


@dataclass(frozen=True, slots=True)
class MessageLayout:
    """Where every frame of a message sits, derived from three sizes.

    Attributes:
        header_length: H, bytes before the first frame.
        frame_length: F.
        regular_frames: n, the count of full frames before the final frame.
        final_length: r, plaintext bytes in the final frame (0..F).
    """

    header_length: int
    frame_length: int
    regular_frames: int
    final_length: int

    @classmethod
    def for_plaintext(cls, header_length: int, frame_length: int, size: int) -> MessageLayout:
        """The layout reelvault's writer produces for ``size`` plaintext bytes."""
        if size < 0:
            raise ValueError("size must not be negative")
        regular = max(0, (size - 1) // frame_length)
        return cls(header_length, frame_length, regular, size - regular * frame_length)

    @classmethod
    def from_ciphertext_size(
        cls, header_length: int, frame_length: int, ciphertext_size: int
    ) -> MessageLayout:
        """The only layout consistent with a ciphertext size (any conforming writer).

        Raises:
            Malformed: no layout has that size.
        """
        body = ciphertext_size - header_length - FINAL_FRAME_OVERHEAD
        if body < 0:
            raise Malformed("ciphertext shorter than header and final frame")
        regular, final = divmod(body, frame_length + FRAME_OVERHEAD)
        if final > frame_length or regular + 1 > MAX_SEQUENCE:
            raise Malformed("ciphertext size matches no frame layout")
        return cls(header_length, frame_length, regular, final)

    @property
    def plaintext_size(self) -> int:
        return self.regular_frames * self.frame_length + self.final_length

    @property
    def final_sequence(self) -> int:
        return self.regular_frames + 1

    @property
    def final_frame_offset(self) -> int:
        return self.header_length + self.regular_frames * (self.frame_length + FRAME_OVERHEAD)

    @property
    def ciphertext_size(self) -> int:
        return self.final_frame_offset + FINAL_FRAME_OVERHEAD + self.final_length

    def frame_offset(self, sequence: int) -> int:
        """Byte offset of frame ``sequence`` (1-based), the final frame included."""
        if not 1 <= sequence <= self.final_sequence:
            raise ValueError("sequence number outside the message")
        return self.header_length + (sequence - 1) * (self.frame_length + FRAME_OVERHEAD)

    def plan(self, start: int, length: int) -> RangePlan:
        """Map plaintext bytes [start, start + length) to whole frames.

        The range must lie inside the plaintext; an empty range is only meaningful to the
        caller and is refused here so that every plan fetches at least one frame.
        """
        size = self.plaintext_size
        if start < 0 or length <= 0 or start + length > size:
            raise ValueError("range outside the plaintext")
        first = start // self.frame_length + 1
        last = (start + length - 1) // self.frame_length + 1
        offset = self.frame_offset(first)
        end = self.ciphertext_size if last >= self.final_sequence else self.frame_offset(last + 1)
        return RangePlan(
            offset=offset,
            length=end - offset,
            first_sequence=first,
            skip=start - (first - 1) * self.frame_length,
            take=length,
        )
