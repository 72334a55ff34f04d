"""Sealing and opening reelvault messages (layout in :mod:`reelvault.crypto.format`).

Seal, step by step:
  1. Draw a random 32-byte data key and a random 32-byte message id.
  2. Wrap the data key under the tenant KEK: AES-256-GCM with a random IV and the serialized
     encryption context as AAD (the Raw AES keyring wire format, provider id ``reelvault``,
     key name = the KEK version's name).
  3. Derive the content key and the commitment key from the data key with HKDF-SHA512,
     salted with the message id; write the header, and authenticate it with a GCM tag over
     the header body.
  4. Cut the plaintext into F-byte frames; seal each with the content key, a deterministic
     IV (its sequence number) and an AAD naming message id, sequence number, length and
     whether it is the final frame. The final frame is always written, last.

Open, step by step (any failure is one opaque ``DecryptionError``):
  1. Parse the header strictly; require the expected encryption context exactly.
  2. Ask the resolver for the KEK named by an encrypted data key of ours; unwrap.
  3. Re-derive the commitment key and compare in constant time; verify the header tag.
  4. Verify each frame's sequence number, IV and tag before releasing its plaintext; require
     exactly one final frame, last, with nothing after it.

A streaming reader can only notice truncation at the end: it releases every frame that
authenticated before that point, then raises. Callers that must not act on a prefix (the
asset service streaming to a client) authenticate the final frame first with
:class:`RandomAccessReader`.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from reelvault.crypto import _primitives as prim
from reelvault.crypto.context import EncryptionContext
from reelvault.crypto.format import (
    COMMIT_KEY_INFO,
    DATA_KEY_LEN,
    DEFAULT_FRAME_LENGTH,
    DERIVE_KEY_INFO,
    END_MARKER,
    FINAL_FRAME_AAD_LABEL,
    FINAL_FRAME_OVERHEAD,
    FRAME_AAD_LABEL,
    FRAME_OVERHEAD,
    HEADER_AUTH_IV,
    IV_LEN,
    MAX_FRAME_LENGTH,
    MAX_SEQUENCE,
    MESSAGE_ID_LEN,
    TAG_LEN,
    EncryptedDataKey,
    Header,
    Incomplete,
    Malformed,
    MessageLayout,
    frame_iv,
    parse_header,
)
from reelvault.crypto.names import parse_kek_key_name, parse_subject_key_name
from reelvault.errors import DecryptionError, OutOfRange

__all__ = [
    "KeyResolver",
    "OpenedMessage",
    "PROVIDER_ID",
    "RandomAccessReader",
    "ReadAt",
    "Sealer",
    "StreamAt",
    "WrappingKey",
    "decrypt_stream",
    "encrypt_stream",
    "open_frames",
    "open_header",
    "open_with_frame_key",
    "rechunk",
    "rewrap_data_key",
]

PROVIDER_ID: Final = "reelvault"
_TAG_BITS: Final = TAG_LEN * 8
_WRAPPED_KEY_LEN: Final = DATA_KEY_LEN + TAG_LEN
_PROVIDER_INFO_TAIL: Final = 4 + 4 + IV_LEN

Buffer = bytes | bytearray | memoryview


class WrappingKey(Protocol):
    """A tenant KEK version in plaintext: its name in the keyring format and its bytes."""

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> bytes: ...


class KeyResolver(Protocol):
    """Finds the KEK an encrypted data key names.

    Returns None for a name it does not recognise (including another tenant's), which makes
    decryption fail opaquely; raises ``KeyUnavailable`` for a KEK whose state forbids
    decryption, which callers may report as such.
    """

    def wrapping_key(self, key_name: str) -> bytes | None: ...


# --- the encrypted data key (Raw AES keyring wire format) -------------------------------


def _wrap_data_key(
    kek: WrappingKey, data_key: bytes, context: EncryptionContext, iv: bytes | None = None
) -> EncryptedDataKey:
    iv = prim.random_bytes(IV_LEN) if iv is None else iv
    sealed = prim.Aead(kek.key).seal(iv, data_key, context.serialize())
    info = kek.name.encode() + struct.pack(">II", _TAG_BITS, IV_LEN) + iv
    return EncryptedDataKey(PROVIDER_ID, info, sealed)


def _unwrap_data_key(
    edk: EncryptedDataKey, resolver: KeyResolver, context: EncryptionContext
) -> bytes | None:
    if edk.provider_id != PROVIDER_ID or len(edk.ciphertext) != _WRAPPED_KEY_LEN:
        return None
    info = edk.provider_info
    if len(info) <= _PROVIDER_INFO_TAIL:
        return None
    name_raw, tail = info[:-_PROVIDER_INFO_TAIL], info[-_PROVIDER_INFO_TAIL:]
    tag_bits, iv_len = struct.unpack_from(">II", tail)
    if tag_bits != _TAG_BITS or iv_len != IV_LEN:
        return None
    try:
        name = name_raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    kek = resolver.wrapping_key(name)
    if kek is None or len(kek) != DATA_KEY_LEN:
        return None
    try:
        return prim.Aead(kek).open(tail[8:], edk.ciphertext, context.serialize())
    except prim.AuthenticationFailed:
        return None


def _check_kek(kek: WrappingKey, context: EncryptionContext) -> None:
    """Refuse to bind an object to a KEK of another tenant (or a name that is not ours).

    A data key wrapped under tenant B's KEK would be readable by B and no longer shredded
    when A's keys are destroyed; a name of another width would change the header length.
    """
    parsed = parse_kek_key_name(kek.name) or parse_subject_key_name(kek.name)
    if parsed is None:
        raise ValueError("not a reelvault KEK or subject key name")
    tenant = context.tenant_id
    if tenant is not None and parsed[0] != tenant:
        raise ValueError("the KEK belongs to another tenant than the encryption context")


def _derive(data_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    content_key = prim.hkdf_sha512(data_key, salt=message_id, info=DERIVE_KEY_INFO, length=32)
    commitment = prim.hkdf_sha512(data_key, salt=message_id, info=COMMIT_KEY_INFO, length=32)
    return content_key, commitment


# --- sealing ---------------------------------------------------------------------------


class Sealer:
    """Seals one message from a stream of plaintext chunks.

    Output is a stream of ``bytes`` pieces (the header, then for each frame its 16-byte
    prefix and its ciphertext with tag) so that no frame is copied after AES-GCM wrote it;
    consumers that need larger buffers join pieces once (see :func:`rechunk`).

    Memory: at most one frame of plaintext is held back (the last full frame may turn out
    to be the final frame), whatever the size of the message.

    Args:
        kek: the active KEK version of the tenant.
        context: the identity this object is bound to.
        frame_length: F; reelvault writes 64 KiB.
        message_id, data_key, wrap_iv: fixed values for known-answer vectors only; random
            when omitted. Never pass them in production code.
    """

    def __init__(
        self,
        kek: WrappingKey,
        context: EncryptionContext,
        *,
        frame_length: int = DEFAULT_FRAME_LENGTH,
        message_id: bytes | None = None,
        data_key: bytes | None = None,
        wrap_iv: bytes | None = None,
    ) -> None:
        if not 1 <= frame_length <= MAX_FRAME_LENGTH:
            raise ValueError("frame length out of range")
        _check_kek(kek, context)
        self._frame_length = frame_length
        self._message_id = prim.random_bytes(MESSAGE_ID_LEN) if message_id is None else message_id
        data_key = prim.random_bytes(DATA_KEY_LEN) if data_key is None else data_key
        if len(self._message_id) != MESSAGE_ID_LEN or len(data_key) != DATA_KEY_LEN:
            raise ValueError("message id and data key must be 32 bytes")
        content_key, commitment = _derive(data_key, self._message_id)
        self._aead = prim.Aead(content_key)
        edk = _wrap_data_key(kek, data_key, context, wrap_iv)
        body = Header.serialize_body(self._message_id, context, (edk,), frame_length, commitment)
        tag = self._aead.seal(HEADER_AUTH_IV, b"", body)
        self.header = body + tag
        self.plaintext_length = 0
        self.ciphertext_length = 0
        self._finished = False
        self._sequence = 0
        self._carry = bytearray()
        self._aad_prefix = self._message_id + FRAME_AAD_LABEL

    @property
    def header_length(self) -> int:
        return len(self.header)

    @property
    def frame_length(self) -> int:
        return self._frame_length

    def seal(self, chunks: Iterable[Buffer]) -> Iterator[bytes]:
        """Yield the whole message: the header, then the frames. Single use."""
        yield self.header
        for chunk in chunks:
            yield from self.update(chunk)
        yield from self.finish()

    def update(self, chunk: Buffer) -> list[bytes]:
        """Push plaintext; return the pieces of every frame now known to be a regular frame.

        The push form suits callers that receive data (a gRPC upload) rather than pull it.
        The caller writes :attr:`header` first, then every piece returned here and by
        :meth:`finish`, in order.
        """
        if self._finished:
            raise RuntimeError("the message is already finished")
        view = memoryview(chunk).cast("B")
        if not view:
            return []
        frame = self._frame_length
        seal = self._aead.seal
        aad_prefix = self._aad_prefix
        out: list[bytes] = []
        self.plaintext_length += len(view)
        carry = self._carry
        if carry:
            take = min(frame - len(carry), len(view))
            carry += view[:take]
            view = view[take:]
            if not view:
                return out  # carry may be exactly full: it could still be the final frame
            self._check_sequence(1)
            self._sequence += 1
            seq = self._sequence
            prefix = _REGULAR_PREFIX.pack(seq, seq)
            out.append(prefix)
            out.append(seal(prefix[4:], carry, aad_prefix + _AAD_TAIL.pack(seq, frame)))
            carry = self._carry = bytearray()
        # carry is empty: seal full frames straight from the caller's buffer and keep back
        # the last 1..F bytes, which may be the final frame
        full = (len(view) - 1) // frame
        self._check_sequence(full)
        seq = self._sequence
        for i in range(full):
            seq += 1
            prefix = _REGULAR_PREFIX.pack(seq, seq)
            out.append(prefix)
            out.append(
                seal(
                    prefix[4:],
                    view[i * frame : (i + 1) * frame],
                    aad_prefix + _AAD_TAIL.pack(seq, frame),
                )
            )
        self._sequence = seq
        carry += view[full * frame :]
        return out

    def finish(self) -> list[bytes]:
        """Seal the final frame; return its pieces. After this the message is complete."""
        if self._finished:
            raise RuntimeError("the message is already finished")
        self._finished = True
        carry = self._carry
        self._sequence += 1
        seq = self._sequence
        iv = frame_iv(seq)
        aad = self._message_id + FINAL_FRAME_AAD_LABEL + _AAD_TAIL.pack(seq, len(carry))
        prefix = struct.pack(">II", END_MARKER, seq) + iv + struct.pack(">I", len(carry))
        sealed = self._aead.seal(iv, carry, aad)
        self.ciphertext_length = (
            self.header_length
            + (seq - 1) * (self._frame_length + FRAME_OVERHEAD)
            + FINAL_FRAME_OVERHEAD
            + len(carry)
        )
        self._carry = bytearray()
        return [prefix, sealed]

    def _check_sequence(self, more: int) -> None:
        # the final frame needs a sequence number too, and 0xFFFFFFFF is the end marker
        if self._sequence + more >= MAX_SEQUENCE:
            raise ValueError("message too long for this frame length")


_REGULAR_PREFIX: Final = struct.Struct(">I8xI")


def encrypt_stream(
    chunks: Iterable[Buffer],
    kek: WrappingKey,
    context: EncryptionContext,
    *,
    frame_length: int = DEFAULT_FRAME_LENGTH,
) -> Iterator[bytes]:
    """Encrypt a stream of chunks into a stream of message bytes."""
    return Sealer(kek, context, frame_length=frame_length).seal(chunks)


# --- opening ---------------------------------------------------------------------------


class OpenedMessage:
    """A header that has been authenticated, with the content key to open its frames."""

    __slots__ = ("_final_prefix", "aead", "content_key", "header", "regular_aad_prefix")

    def __init__(self, header: Header, content_key: bytes) -> None:
        self.header = header
        # the frame key: what a read grant releases (it opens this message, nothing else)
        self.content_key = content_key
        self.aead = prim.Aead(content_key)
        self.regular_aad_prefix = header.message_id + FRAME_AAD_LABEL
        self._final_prefix = header.message_id + FINAL_FRAME_AAD_LABEL

    @property
    def frame_length(self) -> int:
        return self.header.frame_length

    def open_regular(self, sequence: int, frame: memoryview) -> bytes:
        """Open one regular frame (exactly F + 32 bytes) expected at ``sequence``."""
        f = self.header.frame_length
        if len(frame) != f + FRAME_OVERHEAD:
            raise DecryptionError("regular frame has the wrong size")
        (seq,) = struct.unpack_from(">I", frame)
        if seq != sequence or frame[4:16] != frame_iv(sequence):
            raise DecryptionError("frame out of order")
        aad = self.regular_aad_prefix + struct.pack(">IQ", sequence, f)
        try:
            return self.aead.open(frame[4:16], frame[16:], aad)
        except prim.AuthenticationFailed:
            raise DecryptionError("frame tag mismatch") from None

    def open_final(self, sequence: int, frame: memoryview) -> bytes:
        """Open the final frame (40 + r bytes) expected at ``sequence``."""
        if len(frame) < FINAL_FRAME_OVERHEAD:
            raise DecryptionError("final frame truncated")
        marker, seq = struct.unpack_from(">II", frame)
        (length,) = struct.unpack_from(">I", frame, 20)
        if marker != END_MARKER or seq != sequence or frame[8:20] != frame_iv(sequence):
            raise DecryptionError("final frame out of order")
        if length > self.header.frame_length or len(frame) != FINAL_FRAME_OVERHEAD + length:
            raise DecryptionError("final frame has the wrong size")
        aad = self._final_prefix + struct.pack(">IQ", sequence, length)
        try:
            return self.aead.open(frame[8:20], frame[24:], aad)
        except prim.AuthenticationFailed:
            raise DecryptionError("final frame tag mismatch") from None


def open_header(
    header: Header,
    resolver: KeyResolver,
    expected_context: EncryptionContext,
    *,
    data_keys: Iterable[EncryptedDataKey] = (),
) -> OpenedMessage:
    """Authenticate a parsed header and recover its content key.

    Args:
        data_keys: encrypted data keys kept outside the message (the catalog's key slot,
            rewrapped on KEK rotation), tried before the header's own. Whatever slot the
            data key comes from, the key commitment and the header tag prove it is this
            message's data key, so a substituted slot fails like any tampering.

    Raises:
        DecryptionError: wrong context, no data key we can unwrap, commitment or tag mismatch.
        KeyUnavailable: the resolver refused the KEK because of its state.
    """
    return _open(header, resolver, expected_context, data_keys)[0]


def open_with_frame_key(
    header_bytes: bytes, frame_key: bytes, expected_context: EncryptionContext
) -> OpenedMessage:
    """Authenticate a header with its frame key (the content key a read grant releases)
    rather than with a KEK: the reader of a grant holds no KEK and no data key.

    The header tag under ``frame_key`` proves the header is the one that key was derived
    for; the key commitment cannot be checked without the data key, so it is the vault,
    which checked it when it released the key, that vouches for that part.

    Raises:
        DecryptionError: malformed header, wrong context, wrong key or header tag mismatch.
    """
    header = _parse_or_fail_complete(header_bytes)
    if header.context != expected_context:
        raise DecryptionError("encryption context mismatch")
    if len(frame_key) != DATA_KEY_LEN:
        raise DecryptionError("frame key has the wrong length")
    try:
        prim.Aead(frame_key).open(HEADER_AUTH_IV, header.auth_tag, header.body)
    except prim.AuthenticationFailed:
        raise DecryptionError("header tag mismatch") from None
    return OpenedMessage(header, frame_key)


def _open(
    header: Header,
    resolver: KeyResolver,
    expected_context: EncryptionContext,
    data_keys: Iterable[EncryptedDataKey] = (),
) -> tuple[OpenedMessage, bytes]:
    if header.context != expected_context:
        raise DecryptionError("encryption context mismatch")
    data_key = None
    for edk in itertools.chain(data_keys, header.data_keys):
        data_key = _unwrap_data_key(edk, resolver, header.context)
        if data_key is not None:
            break
    if data_key is None:
        raise DecryptionError("no encrypted data key could be unwrapped")
    content_key, commitment = _derive(data_key, header.message_id)
    if not prim.constant_time_equal(commitment, header.commitment):
        raise DecryptionError("key commitment mismatch")
    try:
        prim.Aead(content_key).open(HEADER_AUTH_IV, header.auth_tag, header.body)
    except prim.AuthenticationFailed:
        raise DecryptionError("header tag mismatch") from None
    return OpenedMessage(header, content_key), data_key


def rewrap_data_key(
    header_bytes: bytes,
    resolver: KeyResolver,
    expected_context: EncryptionContext,
    new_kek: WrappingKey,
    *,
    data_keys: Iterable[EncryptedDataKey] = (),
) -> EncryptedDataKey:
    """Wrap a message's data key under ``new_kek``, for KEK rotation.

    The result goes in the catalog's key slot, not into the message: the stored header
    stays byte-for-byte as written. Re-tagging a rewritten header would reuse the content
    key with the header's fixed all-zero IV, and two GCM tags under one key and IV give
    away the authentication key, letting whoever holds the stored bytes forge frames. So
    rotation never touches stored bytes at all, video frames included.

    Raises:
        DecryptionError: as :func:`open_header`.
        ValueError: ``new_kek`` does not belong to the message's tenant.
    """
    header = _parse_or_fail_complete(header_bytes)
    _check_kek(new_kek, header.context)
    _, data_key = _open(header, resolver, expected_context, data_keys)
    return _wrap_data_key(new_kek, data_key, header.context)


def wrap_key(kek: WrappingKey, key: bytes, context: EncryptionContext) -> EncryptedDataKey:
    """Wrap a 32-byte key that is not a message's data key (a subject key) under a KEK, in
    the same Raw AES keyring wire format and bound to ``context`` as data keys are.

    Raises:
        ValueError: the key is not 32 bytes, or the KEK belongs to another tenant.
    """
    if len(key) != DATA_KEY_LEN:
        raise ValueError("only 32-byte keys are wrapped")
    _check_kek(kek, context)
    return _wrap_data_key(kek, key, context)


def unwrap_key(edk: EncryptedDataKey, resolver: KeyResolver, context: EncryptionContext) -> bytes:
    """The inverse of :func:`wrap_key`.

    Raises:
        DecryptionError: the key does not unwrap (unknown KEK, other context, tampering).
        KeyUnavailable: the resolver refused the KEK because of its state.
    """
    key = _unwrap_data_key(edk, resolver, context)
    if key is None:
        raise DecryptionError("the wrapped key does not unwrap")
    return key


def seal_message(
    kek: WrappingKey,
    context: EncryptionContext,
    data: Buffer,
    *,
    frame_length: int = DEFAULT_FRAME_LENGTH,
) -> bytes:
    """A whole message of small ``data`` (a payload), header and frames joined."""
    return b"".join(Sealer(kek, context, frame_length=frame_length).seal((data,)))


def open_message(
    message: Buffer, resolver: KeyResolver, expected_context: EncryptionContext
) -> bytes:
    """The plaintext of a whole message, every frame authenticated; as
    :func:`decrypt_stream` on one chunk."""
    return b"".join(decrypt_stream((message,), resolver, expected_context))


def _parse_or_fail(data: Buffer) -> Header:
    try:
        return parse_header(data)
    except Malformed:
        raise DecryptionError("malformed header") from None


def decrypt_stream(
    chunks: Iterable[Buffer],
    resolver: KeyResolver,
    expected_context: EncryptionContext,
    *,
    data_keys: Iterable[EncryptedDataKey] = (),
) -> Iterator[bytes]:
    """Decrypt a stream of message bytes into plaintext, one frame at a time.

    Frames lying wholly inside an input chunk are opened in place (no copy); a frame that
    straddles chunks is assembled in a buffer of at most one frame. ``data_keys``: as for
    :func:`open_header`.
    """
    it = iter(chunks)
    buf = bytearray()
    need = 1  # bytes the header needs before the next parse attempt
    for chunk in it:
        view = memoryview(chunk).cast("B")
        if not view:
            continue
        if buf:
            buf += view
            data: Buffer = buf
        else:
            data = view
        try:
            if len(data) < need:
                raise Incomplete(need)
            header = _parse_or_fail(data)
        except Incomplete as exc:
            need = exc.needed
            if data is view:
                buf += view
            continue
        opened = open_header(header, resolver, expected_context, data_keys=data_keys)
        # keep pointing into the caller's chunk; only a header assembled from several
        # chunks leaves its (small) tail in a buffer of ours
        rest = memoryview(data).cast("B")[header.length :]
        yield from open_frames(itertools.chain((rest,), it), opened)
        return
    raise DecryptionError("truncated header")


def open_frames(
    chunks: Iterable[Buffer], opened: OpenedMessage, first: int = 1, last: int | None = None
) -> Iterator[bytes]:
    """Open consecutive frames of an authenticated message, yielding one plaintext per frame.

    Args:
        chunks: the stored bytes from the start of frame ``first`` on.
        opened: the message's authenticated header.
        first: the sequence number of the first frame in ``chunks``.
        last: stop after this frame and require the input to end there; None reads up to
            and including the final frame.

    Every frame's sequence number, IV and tag are checked before its plaintext is yielded;
    input that ends early or runs on raises ``DecryptionError``.
    """
    frame_length = opened.frame_length
    aad_prefix = opened.regular_aad_prefix
    aead_open = opened.aead.open
    for sequence, frame, final in _frames(chunks, opened, first, last):
        if final:
            plain = opened.open_final(sequence, frame)
            if plain:
                yield plain
            continue
        try:
            plain = aead_open(
                frame[4:16], frame[16:], aad_prefix + _AAD_TAIL.pack(sequence, frame_length)
            )
        except prim.AuthenticationFailed:
            raise DecryptionError("frame tag mismatch") from None
        yield plain


def _frames(
    chunks: Iterable[Buffer], opened: OpenedMessage, first: int, last: int | None
) -> Iterator[tuple[int, memoryview, bool]]:
    """The frames in ``chunks`` (as for :func:`open_frames`), one ``(sequence, frame,
    final)`` at a time, not yet authenticated: the caller authenticates each before it
    uses any of its bytes. A regular frame comes whole (F + 32 bytes), its sequence number
    and IV checked; a final frame is for :meth:`OpenedMessage.open_final` to check.

    Errors in the framing (order, sizes, bytes after the last frame, truncation) are
    raised once every frame before them has been yielded. The loop over whole frames is
    written out inline: it is the hot path of every download.
    """
    buf = bytearray()
    sequence = first
    done = False
    step = opened.frame_length + FRAME_OVERHEAD
    stop = MAX_SEQUENCE if last is None else last
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if not view:
            continue
        if done:
            raise DecryptionError("bytes after the last frame")
        pos = 0
        if buf:
            # finish the frame that straddles the previous chunk and this one
            pos = _fill(buf, view, opened, sequence)
            size = _frame_size(opened, buf, sequence)
            if size is None or len(buf) < size:
                continue
            frame = memoryview(buf)
            buf = bytearray()
            final = _is_final(frame)
            if not final:
                _check_order(frame, sequence)
            yield sequence, frame, final
            done = final or sequence == stop
            sequence += 1
            if done:
                if pos < len(view):
                    raise DecryptionError("bytes after the last frame")
                continue
        end = len(view)
        while pos + step <= end and not done:
            seq, zero, iv_seq = _FRAME_PREFIX.unpack_from(view, pos)
            if seq == END_MARKER:
                break
            if seq != sequence or zero or iv_seq != sequence or sequence > stop:
                raise DecryptionError("frame out of order")
            yield sequence, view[pos : pos + step], False
            pos += step
            done = sequence == stop
            sequence += 1
        rest = view[pos:]
        if done:
            if rest:
                raise DecryptionError("bytes after the last frame")
            continue
        size = _frame_size(opened, rest, sequence) if rest else None
        if size is not None and len(rest) >= size:
            # only a final frame can be complete here: a whole regular frame was consumed above
            frame = rest[:size]
            final = _is_final(frame)
            if not final:
                _check_order(frame, sequence)
            yield sequence, frame, final
            done = final
            sequence += 1
            if len(rest) > size:
                raise DecryptionError("bytes after the last frame")
        else:
            buf += rest
    if not done:
        raise DecryptionError("message truncated")


def _is_final(frame: memoryview) -> bool:
    marker: int = _MARKER.unpack_from(frame)[0]
    return marker == END_MARKER


def _check_order(frame: memoryview, sequence: int) -> None:
    """A whole regular frame's sequence number and IV must name ``sequence``."""
    seq, zero, iv_seq = _FRAME_PREFIX.unpack_from(frame)
    if seq != sequence or zero or iv_seq != sequence:
        raise DecryptionError("frame out of order")


_FRAME_PREFIX: Final = struct.Struct(">IQI")  # sequence, IV = 8 zero bytes || sequence
_MARKER: Final = struct.Struct(">I")  # a frame's first field: END_MARKER for the final frame
_AAD_TAIL: Final = struct.Struct(">IQ")
_MIN_FRAME_PREFIX: Final = 24  # enough bytes to know any frame's size


def _fill(buf: bytearray, view: memoryview, opened: OpenedMessage, sequence: int) -> int:
    """Move bytes from ``view`` into ``buf`` until it holds one whole frame; return how many."""
    pos = 0
    while pos < len(view):
        size = _frame_size(opened, buf, sequence)
        target = _MIN_FRAME_PREFIX if size is None else size
        if len(buf) >= target:
            break
        piece = view[pos : pos + target - len(buf)]
        buf += piece
        pos += len(piece)
    return pos


def _frame_size(opened: OpenedMessage, data: Buffer, sequence: int) -> int | None:
    """Size of the frame starting at ``data``, or None while too few bytes to tell."""
    if len(data) < 4:
        return None
    (marker,) = struct.unpack_from(">I", data)
    if marker != END_MARKER:
        if sequence > MAX_SEQUENCE:
            raise DecryptionError("too many frames")
        return opened.frame_length + FRAME_OVERHEAD
    if len(data) < 24:
        return None
    length: int = struct.unpack_from(">I", data, 20)[0]
    if length > opened.frame_length:
        raise DecryptionError("final frame longer than the frame length")
    return FINAL_FRAME_OVERHEAD + length


# --- random access ---------------------------------------------------------------------

ReadAt = Callable[[int, int], bytes | bytearray]
"""read_at(offset, length) -> exactly ``length`` bytes of the stored message at ``offset``."""

StreamAt = Callable[[int, int], Iterable[Buffer]]
"""stream_at(offset, length) -> the stored bytes [offset, offset + length) in chunks."""

_FIRST_READ: Final = 4096
MAX_READ: Final = 4 * 1024 * 1024
"""The most :class:`RandomAccessReader` asks ``read_at`` for at once."""


class RandomAccessReader:
    """Decrypt byte ranges of a stored message with one read per range.

    On construction the header is read and authenticated and the final frame is read and
    authenticated, so :attr:`plaintext_size` is proven, not claimed by the store's object
    size. After that, :meth:`read` fetches only the frames a range touches.

    Args:
        read_at: fetches stored bytes (a ranged GET for S3).
        ciphertext_size: the stored object's size.
        resolver, expected_context: as for :func:`decrypt_stream`.
        header: the message header if the caller already holds it (the catalog keeps it),
            saving the first read; it is authenticated all the same.
        opened: a header already authenticated (:func:`open_with_frame_key`, for a read
            grant's holder); ``resolver``, ``expected_context``, ``header`` and
            ``data_keys`` are then unused (pass None for the first two).
        size_is_trusted: ``ciphertext_size`` comes from a record the caller trusts (the
            catalog wrote it when the upload committed), not from the store. The final
            frame is then fetched and authenticated only when a range reaches it, still
            before that range's iterator is returned, and a range that stops short of it
            costs one read. Every frame a range touches is authenticated either way, at
            the position the size implies, so a wrong size can make reads fail but never
            return wrong bytes.
    """

    def __init__(
        self,
        read_at: ReadAt,
        ciphertext_size: int,
        resolver: KeyResolver | None,
        expected_context: EncryptionContext | None,
        *,
        header: bytes | None = None,
        data_keys: Iterable[EncryptedDataKey] = (),
        size_is_trusted: bool = False,
        opened: OpenedMessage | None = None,
    ) -> None:
        self._read_at = read_at
        self._ciphertext_size = ciphertext_size
        if opened is None:
            if resolver is None or expected_context is None:
                raise TypeError("give a resolver and the expected context, or an opened header")
            raw = header if header is not None else self._read_header(ciphertext_size)
            parsed = _parse_or_fail_complete(raw)
            opened = open_header(parsed, resolver, expected_context, data_keys=data_keys)
        parsed = opened.header
        self._opened = opened
        try:
            self.layout = MessageLayout.from_ciphertext_size(
                parsed.length, parsed.frame_length, ciphertext_size
            )
        except Malformed:
            raise DecryptionError("ciphertext size matches no layout") from None
        self._final_plaintext: bytes | None = None
        if not size_is_trusted:
            self._final_plaintext = self._open_final_frame()

    def open_final_frame(self) -> bytes:
        """Fetch and authenticate the final frame (once) and return its plaintext. Proves
        the message complete: for an empty message it is the only frame there is."""
        return self._open_final_frame()

    def _open_final_frame(self) -> bytes:
        if self._final_plaintext is None:
            final = self._fetch(self.layout.final_frame_offset, self._ciphertext_size)
            self._final_plaintext = self._opened.open_final(self.layout.final_sequence, final)
        return self._final_plaintext

    def _read_header(self, size: int) -> bytes:
        want = min(_FIRST_READ, size)
        while True:
            data = self._fetch(0, want)
            try:
                return parse_header(data).serialize()
            except Incomplete as exc:
                if exc.needed > size:
                    raise DecryptionError("truncated header") from None
                # the parser only knows the next field's end: grow geometrically
                want = min(size, max(exc.needed, 2 * want))
            except Malformed:
                raise DecryptionError("malformed header") from None

    def _fetch(self, start: int, end: int) -> memoryview:
        data = self._read_at(start, end - start)
        if len(data) != end - start:
            raise DecryptionError("short read from the object store")
        return memoryview(data).cast("B")

    @property
    def plaintext_size(self) -> int:
        return self.layout.plaintext_size

    @property
    def header_length(self) -> int:
        return self.layout.header_length

    def read(self, start: int, length: int) -> bytes:
        """Return plaintext[start:start + length]; the range must lie within the plaintext."""
        return b"".join(self.iter_range(start, length))

    def iter_range(self, start: int, length: int) -> Iterator[bytes]:
        """Yield plaintext[start:start + length] frame by frame.

        A span of up to :data:`MAX_READ` bytes is fetched with one read; a longer one with
        consecutive reads of that size, so memory per request stays bounded whatever the
        range. (For one ranged GET streamed end to end, use :meth:`stream_range`.)

        The range is checked here, before the first ``next()``: an HTTP origin must learn
        of a 416 before it commits to a 206 status line.

        Raises:
            OutOfRange: the range does not lie within the plaintext.
        """
        return self.stream_range(start, length, self._read_pieces)

    def _read_pieces(self, offset: int, length: int) -> Iterator[bytes | bytearray]:
        piece = max(1, MAX_READ // self.frame_step) * self.frame_step
        end = offset + length
        while offset < end:
            n = min(piece, end - offset)
            yield self._read_exact(offset, n)
            offset += n

    def _read_exact(self, offset: int, length: int) -> bytes | bytearray:
        data = self._read_at(offset, length)
        if len(data) != length:
            raise DecryptionError("short read from the object store")
        return data

    def stream_range(self, start: int, length: int, stream_at: StreamAt) -> Iterator[bytes]:
        """Like :meth:`iter_range`, for ranges too large to hold: the span arrives as a
        stream (one ranged GET whose body is read in chunks) and is opened frame by frame,
        so memory stays at about one chunk plus one frame whatever the range's size.

        Raises:
            OutOfRange: the range does not lie within the plaintext (raised here, before
                anything is fetched).
        """
        if start < 0 or length < 0 or start + length > self.plaintext_size:
            raise OutOfRange("range outside the asset")
        if length == 0:
            return iter(())
        plan = self.layout.plan(start, length)
        end = min(plan.offset + plan.length, self.layout.final_frame_offset)
        ciphertext: Iterable[Buffer] | None = None
        last = 0
        if end > plan.offset:
            last = plan.first_sequence + (end - plan.offset) // (self.frame_step) - 1
            ciphertext = stream_at(plan.offset, end - plan.offset)
        final = None
        if plan.offset + plan.length > self.layout.final_frame_offset:
            final = self._open_final_frame()
        return _Range(
            self._opened,
            ciphertext,
            first=plan.first_sequence,
            last=last,
            final=final,
            skip=plan.skip,
            take=plan.take,
        )

    @property
    def frame_step(self) -> int:
        return self._opened.frame_length + FRAME_OVERHEAD


class _Range:
    """The plaintext of a range, as :meth:`RandomAccessReader.stream_range` returns it: an
    iterator of authenticated frames, trimmed to the range (the regular frames from
    ``ciphertext``, then the final frame's plaintext ``final``, opened already, if the
    range reaches it).

    :func:`rechunk` of a range not yet started takes :meth:`chunks` instead, which opens
    each frame straight into its chunk: the same chunks without a buffer per frame nor a
    join. Either way the range is consumed once; :meth:`close` releases the stream of
    stored bytes.
    """

    __slots__ = (
        "_chunks",
        "_ciphertext",
        "_consumer",
        "_final",
        "_first",
        "_last",
        "_opened",
        "_skip",
        "_take",
    )

    def __init__(
        self,
        opened: OpenedMessage,
        ciphertext: Iterable[Buffer] | None,
        *,
        first: int,
        last: int,
        final: bytes | None,
        skip: int,
        take: int,
    ) -> None:
        self._opened = opened
        self._ciphertext = ciphertext
        self._first = first
        self._last = last
        self._final = final
        self._skip = skip
        self._take = take
        self._consumer: Iterator[bytes] | None = None  # whichever way it is read
        self._chunks: Iterator[bytes] | None = None  # set if by chunks()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._chunks is not None:
            raise RuntimeError("this range is being read in chunks")
        if self._consumer is None:
            frames: Iterator[bytes] = iter(())
            if self._ciphertext is not None:
                frames = open_frames(self._ciphertext, self._opened, self._first, self._last)
            if self._final is not None:
                frames = itertools.chain(frames, (self._final,))
            self._consumer = _trim(frames, self._skip, self._take)
        return next(self._consumer)

    def chunks(self, size: int, prefix: Callable[[int], bytes] | None) -> Iterator[bytes]:
        """What ``rechunk(self, size, prefix=prefix)`` yields."""
        if self._consumer is not None:  # already started: join what is left
            return _join(self, size, prefix)
        self._consumer = self._chunks = _open_into_chunks(
            _frames(self._ciphertext, self._opened, self._first, self._last)
            if self._ciphertext is not None
            else iter(()),
            self._opened,
            self._final,
            self._skip,
            _Chunker(self._take, size, prefix),
        )
        return self._consumer

    def close(self) -> None:
        """Stop reading: close the consumer, then the stored bytes' stream."""
        for iterator in (self._consumer, self._ciphertext):
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


def _open_into_chunks(
    frames: Iterator[tuple[int, memoryview, bool]],
    opened: OpenedMessage,
    final: bytes | None,
    skip: int,
    out: _Chunker,
) -> Iterator[bytes]:
    """The chunks of a range (:meth:`_Range.chunks`). A regular frame that lies whole in
    a chunk is opened into it (:meth:`~reelvault.crypto._primitives.Aead.open_into`
    checks the tag before a chunk leaves, and zeroes what it wrote if the tag fails); any
    other frame (trimmed, across two chunks, the final one) is opened and then copied.

    Every frame is authenticated before the chunk holding any of its bytes is yielded,
    and the last chunk only once the stream's end has been checked, as ``rechunk`` of the
    trimmed frames would.
    """
    frame_length = opened.frame_length
    aad_prefix = opened.regular_aad_prefix
    aead = opened.aead
    last: list[bytes] = []  # the last chunk, held until the stream's end has been checked
    for sequence, frame, is_final in frames:
        if out.left <= 0:
            break  # as _trim does: one item more was asked for, so the end was checked
        if is_final:
            done = out.place(memoryview(opened.open_final(sequence, frame))[skip:])
        else:
            iv, body = frame[4:16], frame[16:]
            aad = aad_prefix + _AAD_TAIL.pack(sequence, frame_length)
            whole = not skip and out.room() >= frame_length
            try:
                if whole:
                    aead.open_into(iv, body, aad, out.slot(frame_length))
                else:
                    plain = aead.open(iv, body, aad)
            except prim.AuthenticationFailed:
                raise DecryptionError("frame tag mismatch") from None
            done = out.commit(frame_length) if whole else out.place(memoryview(plain)[skip:])
        skip = 0
        if done:
            if not out.left:
                last = done[-1:]
                del done[-1]
            yield from done
    if final is not None and out.left > 0:
        done = out.place(memoryview(final)[skip:])
        if done:
            last = done[-1:]
            yield from done[:-1]
    if out.left > 0:
        raise DecryptionError("range ended early")
    yield from last


class _Chunker:
    """Fills chunks in place: each ``prefix(n)`` then ``n`` bytes, with ``n = size`` but
    for the last, until ``left`` bytes are placed. A chunk is built in a ``BytesIO``
    (zero-filled when sized, so no byte of it is ever uninitialized memory), whose value
    CPython hands over without a copy once no view of it is left."""

    __slots__ = ("_at", "_buffer", "_end", "_prefix", "_size", "_view", "left")

    def __init__(self, left: int, size: int, prefix: Callable[[int], bytes] | None) -> None:
        if size < 1:
            raise ValueError("chunk size must be positive")
        self.left = left
        self._size = size
        self._prefix = prefix
        self._buffer = io.BytesIO()
        self._view = memoryview(b"")
        self._at = self._end = 0
        if left > 0:
            self._start()

    def _start(self) -> None:
        n = min(self._size, self.left)
        head = self._prefix(n) if self._prefix is not None else b""
        buffer = io.BytesIO()
        buffer.write(head)
        buffer.seek(len(head) + n - 1)
        buffer.write(b"\0")
        self._buffer = buffer
        self._view = buffer.getbuffer()
        self._at = len(head)
        self._end = len(head) + n

    def room(self) -> int:
        """Bytes the current chunk still takes."""
        return self._end - self._at

    def slot(self, n: int) -> memoryview:
        """The next ``n`` bytes of the current chunk, to be written and then committed."""
        return self._view[self._at : self._at + n]

    def commit(self, n: int) -> list[bytes]:
        """``n`` bytes were written into :meth:`slot`; the chunk, if that completed it."""
        self._at += n
        self.left -= n
        if self._at < self._end:
            return []
        self._view.release()
        chunk = self._buffer.getvalue()
        if self.left > 0:
            self._start()
        return [chunk]

    def place(self, data: memoryview) -> list[bytes]:
        """Copy ``data`` (up to what is left) into the chunks; the chunks it completed."""
        done: list[bytes] = []
        data = data[: self.left]
        while data:
            n = min(len(data), self._end - self._at)
            self._view[self._at : self._at + n] = data[:n]
            data = data[n:]
            done += self.commit(n)
        return done


def _trim(frames: Iterator[bytes], skip: int, take: int) -> Iterator[bytes]:
    """Drop ``skip`` bytes from the first frame and stop after ``take`` bytes in all."""
    remaining = take
    for plain in frames:
        if remaining <= 0:
            break
        piece = plain[skip : skip + remaining] if skip or remaining < len(plain) else plain
        skip = 0
        remaining -= len(piece)
        yield piece
    if remaining > 0:
        raise DecryptionError("range ended early")


def _parse_or_fail_complete(raw: bytes) -> Header:
    try:
        header = parse_header(raw)
    except (Incomplete, Malformed):
        raise DecryptionError("malformed header") from None
    if header.length != len(raw):
        raise DecryptionError("trailing bytes after header")
    return header


def rechunk(
    pieces: Iterable[Buffer], size: int, *, prefix: Callable[[int], bytes] | None = None
) -> Iterator[bytes]:
    """Join a stream of pieces into ``size``-byte chunks (the last may be shorter; none if
    the pieces hold no bytes). Each chunk costs one copy: a join of views of the pieces.

    ``prefix(n)``, if given, is put in front of each chunk of ``n`` bytes by the same join,
    so a caller can frame chunks (a protobuf field key and length) without a second copy.

    The plaintext of :meth:`RandomAccessReader.stream_range` (a download's pieces) needs
    no join: its frames are opened straight into the chunks.
    """
    if isinstance(pieces, _Range):
        return pieces.chunks(size, prefix)
    return _join(pieces, size, prefix)


def _join(
    pieces: Iterable[Buffer], size: int, prefix: Callable[[int], bytes] | None
) -> Iterator[bytes]:
    pending: list[Buffer] = [b""]  # slot 0: the prefix, filled in when a chunk is cut
    have = 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while have + len(view) >= size:
            take = size - have
            pending.append(view[:take])
            pending[0] = prefix(size) if prefix else b""
            yield b"".join(pending)
            pending, have = [b""], 0
            view = view[take:]
        if view:
            pending.append(view)
            have += len(view)
    if have:
        pending[0] = prefix(have) if prefix else b""
        yield b"".join(pending)
