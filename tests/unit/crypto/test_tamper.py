"""Tamper tests: every way of damaging a stored message ends in one opaque DecryptionError.

Fields are located by parsing the message (never by magic offsets), and each case is run
through both readers: ``decrypt_stream`` (which may release the frames that authenticated
before the damage, and nothing else) and ``RandomAccessReader`` (which must refuse to
return the damaged bytes). Every error must be exactly ``DecryptionError`` with the same
message, naming no key.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pytest

from reelvault.crypto import (
    DEFAULT_FRAME_LENGTH,
    FINAL_FRAME_OVERHEAD,
    FRAME_OVERHEAD,
    KIND_ASSET,
    KIND_PAYLOAD,
    EncryptionContext,
    MessageLayout,
    RandomAccessReader,
    Sealer,
    decrypt_stream,
    open_header,
    rewrap_data_key,
)
from reelvault.crypto.format import Header, parse_header
from reelvault.errors import DecryptionError, KeyUnavailable

from .conftest import (
    OBJECT_ID,
    OTHER_TENANT_ID,
    TENANT_ID,
    DictResolver,
    Kek,
    join,
    pattern,
    split,
)

OPAQUE = str(DecryptionError())
DATA_KEY = bytes(range(200, 232))
SMALL_F = 64


# --- the message under attack ----------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A sealed message and where its parts are, found by parsing it."""

    name: str
    kek: Kek
    context: EncryptionContext
    plaintext: bytes
    ciphertext: bytes
    layout: MessageLayout
    exhaustive: bool  # flip every bit of a field, or a sample of bits

    @property
    def chunkings(self) -> tuple[int | None, ...]:
        """How the streaming reader is fed: whole, and in pieces that straddle every field."""
        return (None, 7) if self.exhaustive else (None, 7777)

    @property
    def frame(self) -> int:
        return self.layout.frame_length

    @property
    def header_length(self) -> int:
        return self.layout.header_length

    @property
    def frames(self) -> int:
        """All frames, the final one included."""
        return self.layout.final_sequence

    def frame_span(self, sequence: int) -> tuple[int, int]:
        start = self.layout.frame_offset(sequence)
        if sequence == self.layout.final_sequence:
            return start, self.layout.ciphertext_size
        return start, start + self.frame + FRAME_OVERHEAD

    def frame_bytes(self, sequence: int) -> bytes:
        start, end = self.frame_span(sequence)
        return self.ciphertext[start:end]

    def header_fields(self) -> dict[str, tuple[int, int]]:
        return header_fields(self.ciphertext[: self.header_length])

    def frame_fields(self, sequence: int) -> dict[str, tuple[int, int]]:
        start, end = self.frame_span(sequence)
        return frame_fields(self.ciphertext[start:end], start)


def seal(kek: Kek, context: EncryptionContext, plaintext: bytes, frame: int, **fixed) -> bytes:
    return join(Sealer(kek, context, frame_length=frame, **fixed).seal([plaintext]))


def make_message(name: str, kek: Kek, context, frame: int, size: int, exhaustive: bool) -> Message:
    plaintext = pattern(size)
    ciphertext = seal(kek, context, plaintext, frame, data_key=DATA_KEY)
    header = parse_header(ciphertext)
    layout = MessageLayout.from_ciphertext_size(header.length, header.frame_length, len(ciphertext))
    assert layout.plaintext_size == size
    return Message(name, kek, context, plaintext, ciphertext, layout, exhaustive)


@pytest.fixture(scope="module", params=["small-frames", "64KiB-frames"])
def message(request: pytest.FixtureRequest, kek, context) -> Message:
    if request.param == "small-frames":
        # 4 regular frames of 64 bytes and a final frame of 10: every bit is cheap to flip
        return make_message(request.param, kek, context, SMALL_F, 4 * SMALL_F + 10, True)
    frame = DEFAULT_FRAME_LENGTH
    return make_message(request.param, kek, context, frame, 2 * frame + 100, False)


@pytest.fixture(scope="module")
def small(kek, context) -> Message:
    return make_message("small-frames", kek, context, SMALL_F, 4 * SMALL_F + 10, True)


def header_fields(header: bytes) -> dict[str, tuple[int, int]]:
    """Every field of a header, as (start, end), walking the layout in crypto.format."""
    fields: dict[str, tuple[int, int]] = {}
    pos = 0

    def take(name: str, n: int) -> bytes:
        nonlocal pos
        fields[name] = (pos, pos + n)
        pos += n
        return header[pos - n : pos]

    def u16(name: str) -> int:
        value: int = struct.unpack(">H", take(name, 2))[0]
        return value

    take("version", 1)
    take("algorithm_id", 2)
    take("message_id", 32)
    take("context", u16("context_length"))
    assert u16("edk_count") == 1
    take("provider_id", u16("provider_id_length"))
    info_length = u16("provider_info_length")
    take("key_name", info_length - 4 - 4 - 12)
    take("tag_length", 4)
    take("iv_length", 4)
    take("wrap_iv", 12)
    take("edk_ciphertext", u16("edk_ciphertext_length"))
    take("content_type", 1)
    take("frame_length", 4)
    take("commitment", 32)
    take("header_tag", 16)
    assert pos == len(header)
    return fields


def frame_fields(frame: bytes, base: int) -> dict[str, tuple[int, int]]:
    """Fields of a regular or final frame, as absolute (start, end)."""
    (marker,) = struct.unpack_from(">I", frame)
    if marker != 0xFFFFFFFF:
        names = [("sequence", 4), ("iv", 12), ("body", len(frame) - 32), ("tag", 16)]
    else:
        (length,) = struct.unpack_from(">I", frame, 20)
        names = [
            ("marker", 4),
            ("sequence", 4),
            ("iv", 12),
            ("length", 4),
            ("body", length),
            ("tag", 16),
        ]
    fields, pos = {}, base
    for name, n in names:
        fields[name] = (pos, pos + n)
        pos += n
    assert pos == base + len(frame)
    return fields


HEADER_FIELDS = [
    "version",
    "algorithm_id",
    "message_id",
    "context_length",
    "context",
    "edk_count",
    "provider_id_length",
    "provider_id",
    "provider_info_length",
    "key_name",
    "tag_length",
    "iv_length",
    "wrap_iv",
    "edk_ciphertext_length",
    "edk_ciphertext",
    "content_type",
    "frame_length",
    "commitment",
    "header_tag",
]
REGULAR_FIELDS = ["sequence", "iv", "body", "tag"]
FINAL_FIELDS = ["marker", "sequence", "iv", "length", "body", "tag"]


def bits(span: tuple[int, int], exhaustive: bool) -> Iterator[int]:
    """Bit positions in a byte span: all of them, or the first, last and a spread sample."""
    start, end = span
    if exhaustive or (end - start) * 8 <= 64:
        yield from range(start * 8, end * 8)
        return
    total = (end - start) * 8
    for i in range(0, total, max(1, total // 48)):
        yield start * 8 + i
    yield end * 8 - 1


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


# --- the verdict -----------------------------------------------------------------------


def assert_opaque(exc: BaseException, *secrets: bytes) -> None:
    assert type(exc) is DecryptionError, f"{type(exc).__name__}: {exc}"
    assert str(exc) == OPAQUE
    assert exc.args == (OPAQUE,)
    text = f"{exc}|{exc!r}|{exc.reason}".lower()
    for secret in (DATA_KEY, *secrets):
        assert secret.hex() not in text
        assert repr(secret)[2:-1].lower() not in text


def stream(chunks: Iterable[bytes], resolver, context) -> tuple[list[bytes], BaseException | None]:
    """Run decrypt_stream to the end; return what it released and what it raised."""
    released: list[bytes] = []
    try:
        for piece in decrypt_stream(chunks, resolver, context):
            released.append(bytes(piece))
    except Exception as exc:  # any type: a non-DecryptionError is itself a finding
        return released, exc
    return released, None


def problem_with_stream(
    msg: Message,
    data: bytes,
    intact_frames: int,
    *,
    resolver=None,
    context: EncryptionContext | None = None,
    chunkings: Iterable[int | None] | None = None,
) -> str | None:
    """Why decrypt_stream's handling of ``data`` is wrong, or None if it is right.

    Right means: it raises exactly the opaque DecryptionError, and what it released before
    is the plaintext of whole frames, all of them among the first ``intact_frames``.
    """
    resolver = resolver if resolver is not None else DictResolver(msg.kek)
    context = context if context is not None else msg.context
    for chunk in msg.chunkings if chunkings is None else chunkings:
        chunks = [data] if chunk is None else split(data, chunk)
        released, exc = stream(chunks, resolver, context)
        out = b"".join(released)
        where = f"chunks={chunk}"
        if exc is None:
            return f"{where}: no error, released {len(out)} bytes"
        try:
            assert_opaque(exc, msg.kek.key)
        except AssertionError as failure:
            return f"{where}: {failure}"
        if out != msg.plaintext[: len(out)]:
            return f"{where}: released bytes that are not the plaintext"
        if len(out) % msg.frame and len(out) != len(msg.plaintext):
            return f"{where}: released a partial frame ({len(out)} bytes)"
        frames = -(-len(out) // msg.frame)
        if frames > intact_frames:
            return f"{where}: released {frames} frames, only {intact_frames} precede the damage"
    return None


def problem_with_reader(
    msg: Message,
    data: bytes,
    *,
    resolver=None,
    context: EncryptionContext | None = None,
    damaged: tuple[int, int] | None = None,
) -> str | None:
    """Why RandomAccessReader's handling of ``data`` is wrong, or None if it is right.

    Right means: construction or a read of the whole plaintext (and of ``damaged``, a
    plaintext range, when given) raises exactly the opaque DecryptionError.
    """
    resolver = resolver if resolver is not None else DictResolver(msg.kek)
    context = context if context is not None else msg.context
    try:
        reader = RandomAccessReader(
            lambda off, n: data[off : off + n], len(data), resolver, context
        )
    except Exception as exc:
        return _check_reader_error(exc, msg)
    ranges = [(0, reader.plaintext_size)] + ([damaged] if damaged else [])
    for start, length in ranges:
        try:
            got = reader.read(start, length)
        except Exception as exc:
            problem = _check_reader_error(exc, msg)
            if problem:
                return problem
        else:
            return f"read({start}, {length}) returned {len(got)} bytes"
    return None


def _check_reader_error(exc: BaseException, msg: Message) -> str | None:
    try:
        assert_opaque(exc, msg.kek.key)
    except AssertionError as failure:
        return f"reader: {failure}"
    return None


def verdict(problems: dict[str, str | None]) -> None:
    found = {case: p for case, p in problems.items() if p}
    assert not found, f"{len(found)} of {len(problems)} cases wrong, e.g. {list(found.items())[:5]}"


def frame_range(msg: Message, sequence: int) -> tuple[int, int]:
    """The plaintext range of frame ``sequence``."""
    start = (sequence - 1) * msg.frame
    return start, min(msg.frame, len(msg.plaintext) - start)


# --- the untampered baseline, and the harness itself -----------------------------------


def test_untampered_message_decrypts(message: Message) -> None:
    """The baseline the tamper cases depart from (so a failure below is the tamper's)."""
    resolver = DictResolver(message.kek)
    for chunk in message.chunkings:
        chunks = [message.ciphertext] if chunk is None else split(message.ciphertext, chunk)
        assert join(decrypt_stream(chunks, resolver, message.context)) == message.plaintext
    data = message.ciphertext
    reader = RandomAccessReader(lambda o, n: data[o : o + n], len(data), resolver, message.context)
    assert reader.read(0, len(message.plaintext)) == message.plaintext


def test_the_harness_catches_what_it_should(small: Message) -> None:
    """A checker that passes everything proves nothing: show it rejects wrong outcomes."""
    assert problem_with_stream(small, small.ciphertext, 0) is not None  # no error at all
    two_frames = small.ciphertext[: small.frame_span(3)[0]]
    assert problem_with_stream(small, two_frames, 2) is None
    assert problem_with_stream(small, two_frames, 1) is not None  # released too much
    assert problem_with_reader(small, small.ciphertext) is not None
    assert problem_with_reader(small, two_frames) is None
    with pytest.raises(AssertionError):
        assert_opaque(ValueError("x"))
    with pytest.raises(AssertionError):
        assert_opaque(DecryptionError(DATA_KEY.hex()))  # a key in the internal reason


def test_fields_cover_the_header_and_agree_with_the_parser(message: Message) -> None:
    fields = message.header_fields()
    assert list(fields) == HEADER_FIELDS
    spans = sorted(fields.values())
    assert spans[0][0] == 0 and spans[-1][1] == message.header_length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    header = parse_header(message.ciphertext)
    raw = message.ciphertext

    def field(name: str) -> bytes:
        start, end = fields[name]
        return raw[start:end]

    assert field("message_id") == header.message_id
    assert field("key_name") == message.kek.name.encode()
    assert field("edk_ciphertext") == header.data_keys[0].ciphertext
    assert field("commitment") == header.commitment
    assert field("header_tag") == header.auth_tag
    assert int.from_bytes(field("frame_length"), "big") == message.frame


# --- bit flips -------------------------------------------------------------------------


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_header_bit_flip(message: Message, field: str) -> None:
    span = message.header_fields()[field]
    problems = {}
    for bit in bits(span, message.exhaustive):
        data = flip(message.ciphertext, bit)
        problems[f"bit {bit}"] = problem_with_stream(message, data, 0) or problem_with_reader(
            message, data
        )
    verdict(problems)


@pytest.mark.parametrize("field", REGULAR_FIELDS)
def test_regular_frame_bit_flip(message: Message, field: str) -> None:
    problems = {}
    for sequence in range(1, message.layout.final_sequence):
        span = message.frame_fields(sequence)[field]
        for bit in bits(span, message.exhaustive):
            data = flip(message.ciphertext, bit)
            problems[f"frame {sequence} bit {bit}"] = problem_with_stream(
                message, data, sequence - 1
            ) or problem_with_reader(message, data, damaged=frame_range(message, sequence))
    verdict(problems)


@pytest.mark.parametrize("field", FINAL_FIELDS)
def test_final_frame_bit_flip(message: Message, field: str) -> None:
    final = message.layout.final_sequence
    span = message.frame_fields(final)[field]
    problems = {}
    for bit in bits(span, message.exhaustive):
        data = flip(message.ciphertext, bit)
        problems[f"bit {bit}"] = problem_with_stream(
            message, data, final - 1
        ) or problem_with_reader(message, data)
    verdict(problems)


def test_a_damaged_frame_does_not_stop_ranges_elsewhere(small: Message) -> None:
    """Random access to undamaged frames still works; the damaged one never opens."""
    start, _ = small.frame_fields(2)["body"]
    data = flip(small.ciphertext, start * 8)
    reader = RandomAccessReader(
        lambda o, n: data[o : o + n], len(data), DictResolver(small.kek), small.context
    )
    for sequence in range(1, small.frames + 1):
        begin, length = frame_range(small, sequence)
        if sequence == 2:
            with pytest.raises(DecryptionError) as info:
                reader.read(begin, length)
            assert_opaque(info.value)
        else:
            assert reader.read(begin, length) == small.plaintext[begin : begin + length]


# --- truncation ------------------------------------------------------------------------


def test_truncation_at_every_frame_boundary(message: Message) -> None:
    problems = {}
    for intact in range(message.frames):  # header + `intact` frames, the rest cut off
        cut = message.frame_span(intact + 1)[0]
        data = message.ciphertext[:cut]
        problems[f"after frame {intact}"] = problem_with_stream(
            message, data, intact
        ) or problem_with_reader(message, data)
    verdict(problems)


def test_truncation_inside_frames(message: Message) -> None:
    problems = {}
    for sequence in range(1, message.frames + 1):
        start, end = message.frame_span(sequence)
        for cut in sorted(
            {start + 1, start + 4, start + 20, start + 24, (start + end) // 2, end - 1}
        ):
            if start < cut < end:
                data = message.ciphertext[:cut]
                problems[f"frame {sequence} at +{cut - start}"] = problem_with_stream(
                    message, data, sequence - 1
                ) or problem_with_reader(message, data)
    verdict(problems)


def test_truncation_of_the_header(small: Message) -> None:
    problems = {}
    for cut in range(small.header_length):
        data = small.ciphertext[:cut]
        problems[f"at {cut}"] = problem_with_stream(small, data, 0, chunkings=(None,)) or (
            problem_with_reader(small, data)
        )
    verdict(problems)


# --- frames dropped, duplicated, reordered, spliced --------------------------------------


def rebuild(msg: Message, order: list[int | bytes]) -> bytes:
    """The header followed by frames in ``order`` (sequence numbers, or raw frame bytes)."""
    parts = [msg.ciphertext[: msg.header_length]]
    parts += [msg.frame_bytes(x) if isinstance(x, int) else x for x in order]
    return b"".join(parts)


def test_dropping_a_frame(message: Message) -> None:
    frames = list(range(1, message.frames + 1))
    problems = {}
    for k in frames:
        data = rebuild(message, [s for s in frames if s != k])
        problems[f"drop {k}"] = problem_with_stream(message, data, k - 1) or problem_with_reader(
            message, data
        )
    verdict(problems)


def test_duplicating_a_frame(message: Message) -> None:
    frames = list(range(1, message.frames + 1))
    problems = {}
    for k in frames:
        order = [s for f in frames for s in ([f, f] if f == k else [f])]
        data = rebuild(message, order)
        # the first copy of frame k is genuine and in place; the damage is the second copy
        problems[f"duplicate {k}"] = problem_with_stream(message, data, k) or problem_with_reader(
            message, data
        )
    verdict(problems)


def test_reordering_frames(message: Message) -> None:
    frames = list(range(1, message.frames + 1))
    problems = {}
    for k in frames[:-1]:
        order = frames.copy()
        order[k - 1], order[k] = order[k], order[k - 1]
        data = rebuild(message, order)
        problems[f"swap {k},{k + 1}"] = problem_with_stream(
            message, data, k - 1
        ) or problem_with_reader(message, data, damaged=frame_range(message, k))
    rotated = rebuild(message, frames[1:] + frames[:1])
    problems["rotate"] = problem_with_stream(message, rotated, 0) or problem_with_reader(
        message, rotated
    )
    verdict(problems)


def test_splicing_a_frame_from_another_message_under_the_same_kek(message: Message) -> None:
    # same KEK, context, frame length and plaintext: only the message id and data key differ
    other = make_message(
        "other", message.kek, message.context, message.frame, len(message.plaintext), False
    )
    other = Message(
        other.name,
        other.kek,
        other.context,
        other.plaintext,
        seal(message.kek, message.context, message.plaintext, message.frame),
        other.layout,
        False,
    )
    assert other.ciphertext[: message.header_length] != message.ciphertext[: message.header_length]
    frames = list(range(1, message.frames + 1))
    problems = {}
    for k in frames:
        data = rebuild(message, [other.frame_bytes(s) if s == k else s for s in frames])
        problems[f"frame {k}"] = problem_with_stream(message, data, k - 1) or problem_with_reader(
            message, data, damaged=frame_range(message, k)
        )
    # the other message's (valid) header in front of this message's frames
    data = other.ciphertext[: message.header_length] + message.ciphertext[message.header_length :]
    problems["header"] = problem_with_stream(message, data, 0) or problem_with_reader(message, data)
    verdict(problems)
    # the catalog's copy of the other header, in front of this message's stored frames
    resolver = DictResolver(message.kek)
    reader_or_error: object
    try:
        reader_or_error = RandomAccessReader(
            lambda o, n: message.ciphertext[o : o + n],
            len(message.ciphertext),
            resolver,
            message.context,
            header=other.ciphertext[: message.header_length],
        )
    except Exception as exc:
        reader_or_error = exc
    assert isinstance(reader_or_error, DecryptionError)
    assert_opaque(reader_or_error)


# --- trailing bytes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [b"\x00", b"\xff" * 16, b"x" * (SMALL_F + FRAME_OVERHEAD), "final frame", "empty final frame"],
    ids=["1 byte", "16 bytes", "a frame's worth", "final frame again", "empty final frame"],
)
def test_trailing_bytes(message: Message, extra: bytes | str) -> None:
    final = message.layout.final_sequence
    if extra == "final frame":
        extra = message.frame_bytes(final)
    elif extra == "empty final frame":
        extra = struct.pack(">II8xII", 0xFFFFFFFF, final + 1, final + 1, 0) + bytes(16)
    assert isinstance(extra, bytes)
    data = message.ciphertext + extra
    problems = {
        # every frame was genuine and in place, so all of them may have been released
        "same chunk": problem_with_stream(message, data, final),
        "own chunk": _stream_in_two(message, extra),
        "reader": problem_with_reader(message, data),
    }
    verdict(problems)


def _stream_in_two(msg: Message, extra: bytes) -> str | None:
    released, exc = stream([msg.ciphertext, extra], DictResolver(msg.kek), msg.context)
    if exc is None:
        return "no error"
    try:
        assert_opaque(exc, msg.kek.key)
    except AssertionError as failure:
        return str(failure)
    return None if b"".join(released) == msg.plaintext else "released wrong bytes"


# --- the wrong identity, the wrong key -------------------------------------------------


def _contexts() -> dict[str, EncryptionContext]:
    def ctx(tenant: str = TENANT_ID, obj: str = OBJECT_ID, kind: str = KIND_ASSET):
        return EncryptionContext.for_object(tenant_id=tenant, object_id=obj, kind=kind)

    return {
        "other tenant": ctx(tenant=OTHER_TENANT_ID),
        "other object": ctx(obj=OBJECT_ID + "x"),
        "object id prefix": ctx(obj=OBJECT_ID[:-1]),
        "other kind": ctx(kind=KIND_PAYLOAD),
        "extra key": EncryptionContext({**ctx(), "extra": "1"}),
        "empty": EncryptionContext({}),
    }


@pytest.mark.parametrize("case", list(_contexts()))
def test_a_different_expected_context(message: Message, case: str) -> None:
    expected = _contexts()[case]
    assert expected != message.context
    verdict(
        {
            case: problem_with_stream(message, message.ciphertext, 0, context=expected)
            or problem_with_reader(message, message.ciphertext, context=expected)
        }
    )


@pytest.mark.parametrize("case", list(_contexts()))
def test_moving_the_object_by_rewriting_its_context(small: Message, case: str) -> None:
    """Copy an object to another identity, header context rewritten to match (STYLE item 2)."""
    target = _contexts()[case]
    header = parse_header(small.ciphertext)
    body = Header.serialize_body(
        header.message_id, target, header.data_keys, header.frame_length, header.commitment
    )
    moved = body + header.auth_tag + small.ciphertext[small.header_length :]
    verdict(
        {
            case: problem_with_stream(small, moved, 0, context=target)
            or problem_with_reader(small, moved, context=target)
        }
    )


class _AnotherKey:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self.key


@pytest.mark.parametrize(
    "resolver",
    [
        _AnotherKey(bytes(32)),
        _AnotherKey(bytes(range(1, 33))),
        DictResolver(),
        DictResolver(Kek("tenant/" + OTHER_TENANT_ID + "/kek/0000000001", bytes(range(32)))),
    ],
    ids=["zero key", "another key", "none", "other tenant's kek only"],
)
def test_a_resolver_without_the_right_key(message: Message, resolver) -> None:
    verdict(
        {
            "stream": problem_with_stream(message, message.ciphertext, 0, resolver=resolver),
            "reader": problem_with_reader(message, message.ciphertext, resolver=resolver),
        }
    )
    header = message.ciphertext[: message.header_length]
    with pytest.raises(DecryptionError) as info:
        open_header(parse_header(header), resolver, message.context)
    assert_opaque(info.value, message.kek.key)
    with pytest.raises(DecryptionError) as info:
        rewrap_data_key(header, resolver, message.context, message.kek)
    assert_opaque(info.value, message.kek.key)


class _Refusing:
    """A resolver whose KEK is in a state that forbids decryption."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def wrapping_key(self, key_name: str) -> bytes | None:
        self.asked.append(key_name)
        raise KeyUnavailable()


def test_key_unavailable_propagates_unchanged(small: Message, kek2: Kek) -> None:
    data = small.ciphertext
    header = data[: small.header_length]
    calls: list[Callable[[_Refusing], object]] = [
        lambda r: join(decrypt_stream([data], r, small.context)),
        lambda r: join(decrypt_stream(split(data, 5), r, small.context)),
        lambda r: RandomAccessReader(lambda o, n: data[o : o + n], len(data), r, small.context),
        lambda r: RandomAccessReader(
            lambda o, n: data[o : o + n], len(data), r, small.context, header=header
        ),
        lambda r: open_header(parse_header(header), r, small.context),
        lambda r: rewrap_data_key(header, r, small.context, kek2),
    ]
    for call in calls:
        resolver = _Refusing()
        with pytest.raises(KeyUnavailable) as info:
            call(resolver)
        assert type(info.value) is KeyUnavailable
        assert resolver.asked == [small.kek.name]


def test_opaque_message_is_the_same_everywhere_and_names_no_key(small: Message) -> None:
    """One message for a header fault, a frame fault, a wrong key, a wrong context."""
    cases = {
        "header tag": flip(small.ciphertext, 8 * (small.header_length - 1)),
        "frame tag": flip(small.ciphertext, 8 * (small.frame_span(1)[1] - 1)),
        "truncated": small.ciphertext[:-1],
        "trailing": small.ciphertext + b"\x00",
    }
    messages = set()
    for data in cases.values():
        _, exc = stream([data], DictResolver(small.kek), small.context)
        assert exc is not None
        messages.add(str(exc))
    for resolver in (DictResolver(), _AnotherKey(bytes(32))):
        _, exc = stream([small.ciphertext], resolver, small.context)
        assert exc is not None
        messages.add(str(exc))
    _, exc = stream([small.ciphertext], DictResolver(small.kek), _contexts()["other tenant"])
    assert exc is not None
    messages.add(str(exc))
    assert messages == {OPAQUE}
    assert FINAL_FRAME_OVERHEAD == 40  # the layout the field walkers above assume
