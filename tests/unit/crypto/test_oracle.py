"""The official aws-encryption-sdk as an oracle for the message format, in both directions.

DESIGN.md section 3 promises that anyone holding the tenant KEK can decrypt a reelvault
object with the official SDK, and that reelvault reads what the SDK writes (suite 0x0478,
framed, 64 KiB frames). These tests hold our code to that, at every size where the frame
arithmetic changes, for any chunking of the input, and across a KEK rewrap.
"""

from __future__ import annotations

import functools
import os

import pytest
from aws_encryption_sdk.identifiers import Algorithm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelvault.crypto import (
    DEFAULT_FRAME_LENGTH,
    EncryptedDataKey,
    MessageLayout,
    RandomAccessReader,
    Sealer,
    decrypt_stream,
    rewrap_data_key,
)
from reelvault.crypto.format import parse_header
from reelvault.errors import DecryptionError

from .conftest import DictResolver, join, split

F = DEFAULT_FRAME_LENGTH
SIZES = [0, 1, F - 1, F, F + 1, 2 * F, 3 * F + 7, 5 * 1024 * 1024 + 3]
SIZE_IDS = ["0", "1", "F-1", "F", "F+1", "2F", "3F+7", "5MiB+3"]
SUITE = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
MiB = 1024 * 1024


CHUNKS = [1, 7777, MiB]
CHUNK_IDS = ["1B", "7777B", "1MiB"]
# every size with every chunking, except 1-byte chunks of megabytes (that only times Python)
CHUNKED = [
    pytest.param(size, chunk, id=f"{size_id}-{chunk_id}")
    for size, size_id in zip(SIZES, SIZE_IDS, strict=True)
    for chunk, chunk_id in zip(CHUNKS, CHUNK_IDS, strict=True)
    if not (chunk == 1 and size > 4 * F)
]


@functools.cache
def random_plaintext(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture(params=SIZES, ids=SIZE_IDS)
def plaintext(request: pytest.FixtureRequest) -> bytes:
    return random_plaintext(request.param)


def sdk_encrypt(client, provider, plaintext: bytes, context, frame_length: int = F) -> bytes:
    ciphertext, header = client.encrypt(
        source=plaintext,
        key_provider=provider,
        encryption_context=dict(context),
        algorithm=SUITE,
        frame_length=frame_length,
    )
    assert header.algorithm is SUITE
    return ciphertext


def sdk_decrypt(client, provider, ciphertext: bytes):
    return client.decrypt(source=ciphertext, key_provider=provider)


def random_access(ciphertext: bytes, resolver, context) -> RandomAccessReader:
    return RandomAccessReader(
        lambda off, n: ciphertext[off : off + n], len(ciphertext), resolver, context
    )


def boundary_ranges(size: int, frame: int) -> list[tuple[int, int]]:
    """Whole message, first and last byte, and ranges around the first frame boundaries."""
    out = [(0, size), (0, min(size, 1)), (max(size - 1, 0), min(size, 1)), (size, 0)]
    for k in (1, 2, 3):
        b = k * frame
        for lo, hi in ((b - 1, b), (b - 1, b + 1), (b, b + 1), (b - 3, b + 5)):
            start, end = max(lo, 0), min(hi, size)
            if start <= end:
                out.append((start, end - start))
    return out


# --- the SDK decrypts what we write ----------------------------------------------------


def test_sdk_decrypts_our_messages(plaintext, kek, context, sdk_client, sdk_provider) -> None:
    sealer = Sealer(kek, context)
    ciphertext = join(sealer.seal([plaintext]))

    layout = MessageLayout.for_plaintext(sealer.header_length, F, len(plaintext))
    assert len(ciphertext) == layout.ciphertext_size == sealer.ciphertext_length
    assert sealer.plaintext_length == len(plaintext)

    decrypted, header = sdk_decrypt(sdk_client, sdk_provider, ciphertext)
    assert decrypted == plaintext
    assert header.encryption_context == dict(context)
    assert header.algorithm is SUITE
    assert header.frame_length == F
    assert header.version.value == 2
    (edk,) = header.encrypted_data_keys
    assert edk.key_provider.provider_id == "reelvault"
    assert edk.key_provider.key_info.startswith(kek.name.encode())


@pytest.mark.parametrize(("size", "chunk"), CHUNKED)
def test_chunking_of_the_plaintext_does_not_change_the_ciphertext(
    size, chunk, kek, context, sdk_client, sdk_provider
) -> None:
    plaintext = random_plaintext(size)
    fixed = {"message_id": b"\x11" * 32, "data_key": b"\x22" * 32, "wrap_iv": b"\x33" * 12}
    whole = join(Sealer(kek, context, **fixed).seal([plaintext]))
    chunked = join(Sealer(kek, context, **fixed).seal(split(plaintext, chunk)))
    assert chunked == whole
    assert sdk_decrypt(sdk_client, sdk_provider, chunked)[0] == plaintext


def test_sdk_decrypts_a_stream_of_memoryviews_and_bytearrays(
    kek, context, sdk_client, sdk_provider
) -> None:
    plaintext = os.urandom(3 * F + 7)
    chunks = [
        memoryview(plaintext)[: F - 5],
        bytearray(plaintext[F - 5 : 2 * F]),
        b"",
        memoryview(bytearray(plaintext[2 * F :])),
    ]
    ciphertext = join(Sealer(kek, context).seal(chunks))
    assert sdk_decrypt(sdk_client, sdk_provider, ciphertext)[0] == plaintext


# --- we decrypt what the SDK writes ----------------------------------------------------


def test_we_decrypt_sdk_messages(
    plaintext, kek, resolver, context, sdk_client, sdk_provider
) -> None:
    ciphertext = sdk_encrypt(sdk_client, sdk_provider, plaintext, context)

    assert join(decrypt_stream([ciphertext], resolver, context)) == plaintext

    reader = random_access(ciphertext, resolver, context)
    assert reader.plaintext_size == len(plaintext)
    assert reader.header_length == parse_header(ciphertext).length
    for start, length in boundary_ranges(len(plaintext), F):
        assert reader.read(start, length) == plaintext[start : start + length], (start, length)


@pytest.mark.parametrize(("size", "chunk"), CHUNKED)
def test_chunking_of_the_ciphertext_does_not_matter(
    size, chunk, kek, resolver, context, sdk_client, sdk_provider
) -> None:
    plaintext = random_plaintext(size)
    theirs = sdk_encrypt(sdk_client, sdk_provider, plaintext, context)
    ours = join(Sealer(kek, context).seal([plaintext]))
    for ciphertext in (theirs, ours):
        pieces = list(decrypt_stream(split(ciphertext, chunk), resolver, context))
        assert join(pieces) == plaintext
        # plaintext is released frame by frame, never more than a frame at a time
        assert all(0 < len(p) <= F for p in pieces)


def test_we_decrypt_sdk_messages_with_several_data_keys(
    kek, kek2, context, sdk_client, sdk_provider_for
) -> None:
    plaintext = os.urandom(2 * F + 1)
    ciphertext = sdk_encrypt(sdk_client, sdk_provider_for(kek, kek2), plaintext, context)
    assert len(parse_header(ciphertext).data_keys) == 2
    for only in (kek, kek2):
        resolver = DictResolver(only)
        assert join(decrypt_stream([ciphertext], resolver, context)) == plaintext
        assert (
            random_access(ciphertext, resolver, context).read(F - 1, F + 2)
            == plaintext[F - 1 : 2 * F + 1]
        )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    our_frame=st.sampled_from([1, 7, 64, 100, 128]),
    # the SDK only writes frame lengths that are a multiple of 128 (it reads any)
    their_frame=st.sampled_from([128, 256]),
    size=st.integers(0, 900),
    chunk=st.integers(1, 300),
)
def test_small_frames_agree_with_the_sdk(
    our_frame, their_frame, size, chunk, kek, resolver, context, sdk_client, sdk_provider
) -> None:
    """Small frame lengths put many frame boundaries in a small message."""
    plaintext = os.urandom(size)
    ours = join(Sealer(kek, context, frame_length=our_frame).seal(split(plaintext, chunk)))
    assert sdk_decrypt(sdk_client, sdk_provider, ours)[0] == plaintext

    theirs = sdk_encrypt(sdk_client, sdk_provider, plaintext, context, frame_length=their_frame)
    assert join(decrypt_stream(split(theirs, chunk), resolver, context)) == plaintext
    reader = random_access(theirs, resolver, context)
    for start, length in boundary_ranges(size, their_frame):
        assert reader.read(start, length) == plaintext[start : start + length]


# --- rewrap under the next KEK version -------------------------------------------------


@pytest.mark.parametrize("writer", ["reelvault", "sdk"])
def test_a_rewrapped_key_slot_opens_the_unchanged_message_with_only_the_new_kek(
    writer, kek, kek2, context, sdk_client, sdk_provider_for
) -> None:
    plaintext = os.urandom(3 * F + 7)
    if writer == "reelvault":
        ciphertext = join(Sealer(kek, context).seal([plaintext]))
    else:
        ciphertext = sdk_encrypt(sdk_client, sdk_provider_for(kek), plaintext, context)
    header = ciphertext[: parse_header(ciphertext).length]

    slot = rewrap_data_key(header, DictResolver(kek), context, kek2)

    assert slot.provider_info[: len(kek2.name)] == kek2.name.encode()
    slot = EncryptedDataKey.parse(slot.serialize())  # what the catalog stores and reads back
    only_new = DictResolver(kek2)
    assert join(decrypt_stream([ciphertext], only_new, context, data_keys=[slot])) == plaintext
    reader = RandomAccessReader(
        lambda off, n: ciphertext[off : off + n],
        len(ciphertext),
        only_new,
        context,
        header=header,
        data_keys=[slot],
    )
    assert reader.read(F - 2, F + 4) == plaintext[F - 2 : 2 * F + 2]
    # the slot is what carries the new KEK: without it, the new KEK alone opens nothing
    with pytest.raises(DecryptionError):
        join(decrypt_stream([ciphertext], only_new, context))
    # the stored bytes never changed, so the official SDK still opens them with the old KEK
    decrypted, _ = sdk_decrypt(sdk_client, sdk_provider_for(kek), ciphertext)
    assert decrypted == plaintext


def test_a_key_slot_from_another_message_is_refused(kek, kek2, context) -> None:
    """A catalog attacker swapping key slots between objects gains nothing: the key
    commitment proves which data key belongs to which message."""
    one = join(Sealer(kek, context).seal([b"one" * 1000]))
    two = join(Sealer(kek, context).seal([b"two" * 1000]))
    slot_of_two = rewrap_data_key(two[: parse_header(two).length], DictResolver(kek), context, kek2)
    with pytest.raises(DecryptionError):
        join(decrypt_stream([one], DictResolver(kek2), context, data_keys=[slot_of_two]))
