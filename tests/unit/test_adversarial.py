"""Adversarial review of crypto/ and keys/: attacks, as tests.

The attackers: whoever controls object storage (rewrites, truncates, swaps, replays stored
bytes and keeps every version it ever saw), whoever can corrupt catalog rows, a tenant
reaching for another tenant's data, and anyone feeding hostile headers.

A test that passes documents an attack that is defeated and that the rest of the suite does
not already pin down. A test that fails demonstrates a vulnerability; its docstring says
what the attacker gains and what would fix it. They are kept failing on purpose (no xfail).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from reelvault import crypto, errors
from reelvault.catalog import Database
from reelvault.clock import FakeClock
from reelvault.crypto import (
    DEFAULT_FRAME_LENGTH,
    FRAME_OVERHEAD,
    KIND_ASSET,
    EncryptionContext,
    RandomAccessReader,
    Sealer,
    decrypt_stream,
    open_header,
    rewrap_data_key,
)
from reelvault.crypto import _primitives as prim
from reelvault.crypto.context import MalformedContext, parse_context
from reelvault.crypto.format import (
    MAX_HEADER_LENGTH,
    Header,
    Incomplete,
    Malformed,
    parse_header,
)
from reelvault.crypto.names import kek_key_name, parse_kek_key_name
from reelvault.keys.local import LocalKeyring, init_keyring, rotate_keyring
from reelvault.keys.tenant import KekState, TenantKeys

TENANT_A = "0123456789abcdef0123456789abcdef"
TENANT_B = "fedcba9876543210fedcba9876543210"
F = DEFAULT_FRAME_LENGTH
MiB = 1024 * 1024


@dataclass(frozen=True)
class Kek:
    name: str
    key: bytes


def kek(tenant: str, version: int, seed: int = 0) -> Kek:
    return Kek(kek_key_name(tenant, version), bytes((seed + version + i) % 256 for i in range(32)))


class Resolver:
    """A KeyResolver holding exactly the given KEKs."""

    def __init__(self, *keks: Kek) -> None:
        self.keys = {k.name: k.key for k in keks}
        self.asked: list[str] = []

    def wrapping_key(self, key_name: str) -> bytes | None:
        self.asked.append(key_name)
        return self.keys.get(key_name)


def ctx(tenant: str = TENANT_A, obj: str = "asset-1") -> EncryptionContext:
    return EncryptionContext.for_object(tenant_id=tenant, object_id=obj, kind=KIND_ASSET)


def seal(k: Kek, context: EncryptionContext, plaintext: bytes, frame: int = F) -> bytes:
    return b"".join(Sealer(k, context, frame_length=frame).seal([plaintext]))


def read_all(data: bytes, resolver: Resolver, context: EncryptionContext) -> dict[str, object]:
    """What each reader makes of ``data``: the plaintext it returned, or the exception."""
    out: dict[str, object] = {}
    try:
        out["decrypt_stream"] = b"".join(decrypt_stream([data], resolver, context))
    except Exception as exc:
        out["decrypt_stream"] = exc
    try:
        reader = RandomAccessReader(lambda o, n: data[o : o + n], len(data), resolver, context)
        out["RandomAccessReader"] = reader.read(0, reader.plaintext_size)
    except Exception as exc:
        out["RandomAccessReader"] = exc
    return out


# =========================================================================================
# 1. rewrap_header reuses the header's AES-GCM (key, nonce): GHASH key recovery, forgery
# =========================================================================================
#
# GF(2^128) in GCM's bit order, GHASH, and root finding of polynomials over GF(2^128)
# (Cantor-Zassenhaus with the trace map). This is the textbook "forbidden attack" on GCM
# nonce reuse (Joux, 2006); it needs nothing but bytes the object store holds.

_R = 0xE1 << 120
_ONE = 1 << 127  # the field's 1 (bit 0 of the first byte)


def gmul(x: int, y: int) -> int:
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def ginv(a: int) -> int:
    result, e = _ONE, (1 << 128) - 2
    while e:
        if e & 1:
            result = gmul(result, a)
        a, e = gmul(a, a), e >> 1
    return result


def ghash_blocks(aad: bytes, ciphertext: bytes) -> list[int]:
    def blocks(b: bytes) -> list[int]:
        b += bytes(-len(b) % 16)
        return [int.from_bytes(b[i : i + 16], "big") for i in range(0, len(b), 16)]

    lengths = struct.pack(">QQ", 8 * len(aad), 8 * len(ciphertext))
    return [*blocks(aad), *blocks(ciphertext), int.from_bytes(lengths, "big")]


def ghash(h: int, aad: bytes, ciphertext: bytes) -> int:
    y = 0
    for block in ghash_blocks(aad, ciphertext):
        y = gmul(y ^ block, h)
    return y


Poly = list[int]  # coefficients, lowest degree first


def _trim(p: Poly) -> Poly:
    while p and p[-1] == 0:
        p.pop()
    return p


def _padd(a: Poly, b: Poly) -> Poly:
    n = max(len(a), len(b))
    return _trim([(a[i] if i < len(a) else 0) ^ (b[i] if i < len(b) else 0) for i in range(n)])


def _pdivmod(a: Poly, b: Poly) -> tuple[Poly, Poly]:
    a, inv = list(a), ginv(b[-1])
    q = [0] * max(0, len(a) - len(b) + 1)
    while len(a) >= len(b):
        c, shift = gmul(a[-1], inv), len(a) - len(b)
        q[shift] = c
        for j, y in enumerate(b):
            a[shift + j] ^= gmul(c, y)
        _trim(a)
    return _trim(q), a


def _monic(p: Poly) -> Poly:
    inv = ginv(p[-1])
    return [gmul(c, inv) for c in p]


def _pgcd(a: Poly, b: Poly) -> Poly:
    while b:
        a, b = b, _pdivmod(a, b)[1]
    return _monic(a)


def _square_mod(p: Poly, f: Poly) -> Poly:
    square = [0] * (2 * len(p) - 1)
    for i, c in enumerate(p):
        square[2 * i] = gmul(c, c)  # characteristic 2: squaring is the Frobenius map
    return _pdivmod(_trim(square), f)[1]


def _peval(p: Poly, x: int) -> int:
    y = 0
    for c in reversed(p):
        y = gmul(y, x) ^ c
    return y


def field_roots(f: Poly) -> list[int]:
    """Every root of ``f`` in GF(2^128)."""
    f = _monic(_trim(list(f)))
    xq = [0, _ONE]
    for _ in range(128):  # X^(2^128) mod f
        xq = _square_mod(xq, f)
    return _split(_pgcd(f, _padd(xq, [0, _ONE])))  # gcd(f, X^q - X): its linear factors


def _split(g: Poly) -> list[int]:
    if len(g) <= 1:
        return []
    if len(g) == 2:
        return [g[0]]  # monic X + c has the root c
    while True:
        t = [0, int.from_bytes(os.urandom(16), "big")]
        trace = t
        for _ in range(127):
            t = _square_mod(t, g)
            trace = _padd(trace, t)
        d = _pgcd(g, trace) if trace else [_ONE]
        if 1 < len(d) < len(g):
            return _split(d) + _split(_monic(_pdivmod(g, d)[0]))


def header_tag_equation(old: bytes, new: bytes) -> Poly:
    """The polynomial whose roots include H, if both header tags share a (key, nonce).

    tag = E_K(J0) xor GHASH_H(body); XOR-ing two tags cancels E_K(J0) when the nonce is the
    same, leaving sum((S1_i xor S2_i) H^(L-i+1)) + (T1 xor T2) = 0.
    """
    a, b = parse_header(old), parse_header(new)
    if len(a.body) != len(b.body) or a.body == b.body:
        return []
    s1, s2 = ghash_blocks(a.body, b""), ghash_blocks(b.body, b"")
    coefficients = [0] * (len(s1) + 1)
    for i, (x, y) in enumerate(zip(s1, s2, strict=True)):
        coefficients[len(s1) - i] = x ^ y
    coefficients[0] = int.from_bytes(a.auth_tag, "big") ^ int.from_bytes(b.auth_tag, "big")
    return _trim(coefficients)


def recover_ghash_keys(headers: list[bytes]) -> list[int]:
    """GHASH key candidates consistent with every pair of stored header versions."""
    first = header_tag_equation(headers[0], headers[1])
    if not first:
        return []
    candidates = field_roots(first)
    for other in headers[2:]:
        equation = header_tag_equation(headers[0], other)
        candidates = [h for h in candidates if equation and _peval(equation, h) == 0]
    return candidates


def test_the_gcm_attack_helpers_agree_with_cryptography() -> None:
    """Guards the test below against passing vacuously because of a bug in its maths."""
    key, iv, aad, plaintext = os.urandom(32), os.urandom(12), os.urandom(37), os.urandom(100)
    sealed = AESGCM(key).encrypt(iv, plaintext, aad)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    h = int.from_bytes(ecb.update(bytes(16)), "big")
    ej0 = int.from_bytes(ecb.update(iv + b"\0\0\0\1"), "big")
    assert ej0 ^ ghash(h, aad, sealed[:-16]) == int.from_bytes(sealed[-16:], "big")
    assert gmul(ginv(h), h) == _ONE
    roots = [int.from_bytes(os.urandom(16), "big") for _ in range(3)]
    poly: Poly = [_ONE]
    for r in roots:  # (X + r0)(X + r1)(X + r2)
        shifted = [0, *poly]
        poly = _padd(shifted, [gmul(c, r) for c in poly])
    assert sorted(field_roots(poly)) == sorted(roots)


def _frame(message: bytes, header_length: int, sequence: int) -> tuple[bytes, bytes, bytes]:
    """(16-byte prefix, ciphertext, tag) of regular frame ``sequence``."""
    start = header_length + (sequence - 1) * (F + FRAME_OVERHEAD)
    raw = message[start : start + F + FRAME_OVERHEAD]
    return raw[:16], raw[16:-16], raw[-16:]


def _regular_aad(message_id: bytes, sequence: int) -> bytes:
    return message_id + b"AWSKMSEncryptionClient Frame" + struct.pack(">IQ", sequence, F)


def _forgeries(h: int, header: bytes, body: bytes, known_prefix: bytes) -> dict[str, bytes]:
    """Messages built from stored bytes and the GHASH key only: no KEK, no data key."""
    parsed = parse_header(header)
    mid, n = parsed.message_id, parsed.length
    message = header + body

    def keystream_mask(sequence: int) -> int:  # E_K(J0) of a frame, from its genuine tag
        _, ciphertext, tag = _frame(message, n, sequence)
        return int.from_bytes(tag, "big") ^ ghash(h, _regular_aad(mid, sequence), ciphertext)

    # (a) truncation: an empty final frame at sequence 2 (same IV as regular frame 2)
    final_aad = mid + b"AWSKMSEncryptionClient Final Frame" + struct.pack(">IQ", 2, 0)
    final_tag = keystream_mask(2) ^ ghash(h, final_aad, b"")
    final = struct.pack(">II8xII", 0xFFFFFFFF, 2, 2, 0) + final_tag.to_bytes(16, "big")
    frame1 = b"".join(_frame(message, n, 1))
    truncated = header + frame1 + final

    # (b) chosen plaintext: rewrite the known first bytes of frame 1 (CTR is malleable)
    prefix, ciphertext, _ = _frame(message, n, 1)
    target = b"FORGED!!"
    delta = bytes(a ^ b for a, b in zip(known_prefix, target, strict=True))
    forged_ct = bytes(c ^ d for c, d in zip(ciphertext, delta, strict=False)) + ciphertext[8:]
    forged_tag = keystream_mask(1) ^ ghash(h, _regular_aad(mid, 1), forged_ct)
    rest = message[n + F + FRAME_OVERHEAD :]
    rewritten = header + prefix + forged_ct + forged_tag.to_bytes(16, "big") + rest
    return {"truncated to one frame": truncated, "first bytes rewritten": rewritten}


def test_rotation_never_gives_object_storage_a_second_header_tag() -> None:
    """Fixed: KEK rotation used to rewrite the header and re-tag it under the message's
    content key with the fixed all-zero IV; two header versions under one (key, IV) gave
    the store the GHASH key (see ``recover_ghash_keys``) and with it arbitrary forgeries.

    Rotation now rewraps the data key into a catalog key slot (AES-GCM under the new KEK,
    random IV) and leaves every stored byte as written, so the store only ever sees one
    header tag per message and the attack has nothing to work with.
    """
    k1, k2, k3 = kek(TENANT_A, 1), kek(TENANT_A, 2), kek(TENANT_A, 3)
    context = ctx()
    plaintext = os.urandom(3 * F + 10)
    stored = seal(k1, context, plaintext)
    before = bytes(stored)
    header = parse_header(stored).serialize()
    slot2 = rewrap_data_key(header, Resolver(k1), context, k2)
    slot3 = rewrap_data_key(header, Resolver(k2), context, k3, data_keys=[slot2])
    assert stored == before  # nothing in storage changes on rotation
    assert slot2.provider_info[-12:] != slot3.provider_info[-12:]  # fresh wrap IVs
    # the last version alone, through its slot, opens the unchanged message
    out = b"".join(decrypt_stream([stored], Resolver(k3), context, data_keys=[slot3]))
    assert out == plaintext
    assert "rewrap_header" not in crypto.__all__


# =========================================================================================
# 2. Rotation across replicas: new objects sealed under an already-retired KEK version
# =========================================================================================


@pytest.mark.db
def test_retiring_a_version_right_after_rotate_does_not_orphan_new_uploads(
    tenant_keys: TenantKeys,
    database: Database,
    root_provider: object,
    clock: FakeClock,
) -> None:
    """FAILS: another replica keeps sealing new objects under the old version for up to
    ``cache_ttl`` after ``rotate``, while ``set_min_decryption_version`` (or
    ``schedule_deletion`` with a short waiting period, then ``destroy``) may retire that
    version at once. Uploads landing on the stale replica in that window are sealed under
    a version nobody may decrypt with any more: unreadable, or crypto-shredded at birth.
    keys.md promises "New objects are sealed under n+1 at once", which is true only on the
    replica that rotated. Fix: refuse to raise min_decryption_version above (or to schedule
    for deletion) a version that stopped being active less than cache_ttl ago (its
    state_changed_at is in the catalog), or require the waiting period to exceed the TTL.
    """
    replica = TenantKeys(database, root_provider, clock, cache_ttl=60.0)  # type: ignore[arg-type]
    tenant_id = tenant_keys.create_tenant("acme").id
    replica.encryption_kek(tenant_id)  # replica 2 is serving uploads

    tenant_keys.rotate(tenant_id)  # operator: rotate, rewrap (nothing yet), retire v1
    clock.advance(5)
    try:
        tenant_keys.set_min_decryption_version(tenant_id, 2)
    except errors.FailedPrecondition:
        return  # refused while a replica may still seal under version 1: safe

    upload = replica.encryption_kek(tenant_id)  # a new upload lands on replica 2
    context = ctx(tenant_id, "uploaded-after-rotation")
    stored = seal(upload, context, b"a new upload")  # type: ignore[arg-type]
    try:
        got = b"".join(decrypt_stream([stored], tenant_keys.resolver(tenant_id), context))
    except errors.KeyUnavailable:
        pytest.fail(
            f"an upload accepted after the rotation was sealed under KEK version "
            f"{upload.version}, which is below min_decryption_version: it is unreadable"
        )
    assert got == b"a new upload"


# =========================================================================================
# 3. RandomAccessReader buffers a whole range's ciphertext in one read
# =========================================================================================


def test_a_large_range_is_not_buffered_whole() -> None:
    """FAILS: ``iter_range`` fetches the entire span of a range with one ``read_at`` call
    that returns ``bytes``, before yielding its first byte. ``Range: bytes=0-`` on a 4 GiB
    asset makes one 4 GiB allocation per request; a few concurrent viewers exhaust the
    origin's memory (and the first byte waits for the last). The span is bounded only by
    the asset size. Fix: keep the one ranged GET but consume it as a stream (make ReadAt
    return an iterator of chunks), or cap each read at a few MiB of whole frames.
    """
    k, context = kek(TENANT_A, 1), ctx()
    size = 16 * MiB
    stored = seal(k, context, bytes(size))
    reads: list[int] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append(length)
        return stored[offset : offset + length]

    reader = RandomAccessReader(read_at, len(stored), Resolver(k), context)
    reads.clear()
    first = next(iter(reader.iter_range(0, size)))
    assert first == bytes(F)
    assert max(reads) <= 4 * MiB, (
        f"one read of {max(reads) / MiB:.1f} MiB before the first byte of a "
        f"{size / MiB:.0f} MiB range: memory per request grows with the range"
    )


# =========================================================================================
# 4. Sealer and rewrap_header accept any KEK, whatever tenant or name width
# =========================================================================================


@pytest.mark.parametrize(
    "case", ["rewrap under another tenant's KEK", "rewrap under a name of another width", "seal"]
)
def test_a_kek_that_does_not_belong_to_the_object_is_refused(case: str) -> None:
    """FAILS: nothing ties the KEK to the context's tenant or to the fixed name width.

    rewrap_header(header, A's resolver, A's context, B's KEK) succeeds: tenant A's data key
    is now wrapped only under tenant B's KEK. Whoever holds B's KEK (tenant B with an
    exported key, the official SDK) decrypts A's object offline, and destroying A's KEK no
    longer shreds it; A itself can no longer read it. A KEK name of another width changes
    the header length, so a catalog copy of the new header no longer lines up with the
    stored frames and every range read fails. Sealer has the first gap too. The context
    cannot be moved (that part holds), but the object is silently re-homed or bricked.
    Fix: in Sealer and rewrap_data_key, parse kek.name with keys.names and require its tenant
    to equal context["reelvault:tenant"]; require len(new header) == len(old header).
    """
    context = ctx()
    a1, a2, b1 = kek(TENANT_A, 1), kek(TENANT_A, 2), kek(TENANT_B, 1, seed=99)
    plaintext = os.urandom(2 * F + 5)
    original = seal(a1, context, plaintext)
    header = parse_header(original).serialize()
    if case == "seal":
        call = lambda: seal(b1, context, plaintext)  # noqa: E731
    elif case.endswith("another tenant's KEK"):
        call = lambda: rewrap_data_key(header, Resolver(a1), context, b1)  # noqa: E731
    else:
        short = Kek(f"tenant/{TENANT_A}/kek/2", a2.key)
        call = lambda: rewrap_data_key(header, Resolver(a1), context, short)  # noqa: E731
    with pytest.raises(ValueError):
        call()
    assert original  # the original stays readable by A alone
    assert read_all(original, Resolver(a1), context)["decrypt_stream"] == plaintext


# =========================================================================================
# 5. rotate() caches its new version as active after a concurrent state change
# =========================================================================================


@pytest.mark.db
def test_a_state_change_racing_rotate_is_not_undone_by_the_cache(
    tenant_keys: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAILS: ``rotate`` commits, then calls ``_KekCache.replace``, which bumps the epoch
    and caches the new version as active unconditionally. A ``disable`` (or deletion
    schedule) of that version committed by another thread in between is overwritten in
    this replica's cache: for up to cache_ttl the "disabled" version keeps encrypting and
    decrypting here, breaking "a state change made through this object takes effect at
    once". Fix: take the epoch before the rotate transaction commits and only cache the
    new key if no invalidation happened since (put(..., epoch=...) instead of replace).
    """
    tenant_id = tenant_keys.create_tenant("acme").id
    cache = tenant_keys._cache
    real_replace = cache.replace

    # **kwargs: the fix passes replace() what it needs to detect the race (ticket=...).
    def replace_after_a_racing_disable(tenant: str, new_kek: object, **kwargs: object) -> None:
        tenant_keys.disable(tenant, new_kek.version)  # type: ignore[attr-defined]
        real_replace(tenant, new_kek, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "replace", replace_after_a_racing_disable)
    version = tenant_keys.rotate(tenant_id)
    monkeypatch.undo()

    states = {v.version: v.state for v in tenant_keys.list_versions(tenant_id)}
    assert states[version] is KekState.DISABLED
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.encryption_kek(tenant_id)


# =========================================================================================
# 6. Keyring parser: hostile JSON escapes the ConfigurationError contract
# =========================================================================================


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": "reelvault-keyring", "format_version": 1, "active_version": '
        + b"9" * 5000
        + b', "keys": []}',
        b"[" * 100_000,
    ],
    ids=["integer of 5000 digits", "deeply nested"],
)
def test_hostile_keyring_json_is_a_configuration_error(tmp_path: Path, content: bytes) -> None:
    """FAILS (low): json.loads raises plain ValueError (int digit limit) or RecursionError,
    which _parse does not catch, so ``load`` and ``reelvault keyring show`` crash with a
    traceback instead of ConfigurationError. Fix: catch ValueError and RecursionError
    around json.loads (JSONDecodeError is a ValueError already)."""
    path = tmp_path / "keyring.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(errors.ConfigurationError):
        LocalKeyring.load(path)


# =========================================================================================
# Attacks that are defeated (and not covered elsewhere)
# =========================================================================================


def _hostile_header(edks: int = 8, field: int = 0xFFFF) -> bytes:
    out = struct.pack(">BH32sH", 2, 0x0478, bytes(32), 0)
    out += struct.pack(">H", edks)
    for _ in range(edks):
        out += (struct.pack(">H", field) + b"p" * field) * 3
    return out


def test_a_header_bomb_is_refused_after_a_bounded_read() -> None:
    """8 EDKs of three 64 KiB fields each declare a 1.5 MiB header: both readers give up at
    the 256 KiB header cap, whatever the object's claimed size."""
    bomb = _hostile_header() + bytes(64)
    consumed = 0

    def chunks() -> Iterator[bytes]:
        nonlocal consumed
        for i in range(0, len(bomb), 64 * 1024):
            consumed += len(bomb[i : i + 64 * 1024])
            yield bomb[i : i + 64 * 1024]

    with pytest.raises(errors.DecryptionError):
        b"".join(decrypt_stream(chunks(), Resolver(), ctx()))
    assert consumed <= MAX_HEADER_LENGTH + 64 * 1024

    reads: list[int] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append(length)
        return bomb[offset : offset + length].ljust(length, b"\0")

    with pytest.raises(errors.DecryptionError):
        RandomAccessReader(read_at, 2**40, Resolver(), ctx())
    assert max(reads) <= 2 * MAX_HEADER_LENGTH and sum(reads) <= 4 * MAX_HEADER_LENGTH
    with pytest.raises(Malformed):
        parse_header(_hostile_header(edks=0xFFFF, field=0))


def _context_bytes(*pairs: tuple[bytes, bytes], count: int | None = None) -> bytes:
    out = struct.pack(">H", len(pairs) if count is None else count)
    for key, value in pairs:
        out += struct.pack(">H", len(key)) + key + struct.pack(">H", len(value)) + value
    return out


TENANT_KEY = b"reelvault:tenant"


@pytest.mark.parametrize(
    "data",
    [
        _context_bytes((TENANT_KEY, TENANT_A.encode()), (TENANT_KEY, TENANT_B.encode())),
        _context_bytes((b"reelvault:tenant", b"a"), (b"reelvault:object", b"b")),  # unsorted
        _context_bytes((b"reelvault\xc0\xbatenant", b"a")),  # overlong ':'
        _context_bytes((b"reelvault:tenant", b"\xed\xa0\x80")),  # encoded surrogate
        _context_bytes((b"reelvault:tenant", b"\xff")),
        _context_bytes((b"", b"a")),  # empty key
        _context_bytes((b"aws-crypto-public-key", b"a")),  # reserved by the SDK
        _context_bytes(count=0),
        _context_bytes((TENANT_KEY, b"a")) + b"\0",  # trailing byte
        _context_bytes((TENANT_KEY, b"a"), count=2),  # fewer pairs than counted
        _context_bytes((TENANT_KEY, b"a"))[:-1],  # value runs past the end
    ],
    ids=[
        "duplicate tenant key",
        "unsorted",
        "overlong UTF-8",
        "surrogate",
        "invalid UTF-8",
        "empty key",
        "aws-crypto- key",
        "zero pairs",
        "trailing byte",
        "short count",
        "truncated value",
    ],
)
def test_hostile_encryption_contexts_are_refused(data: bytes) -> None:
    """A lax parser (last duplicate wins, lenient UTF-8) could read tenant B out of bytes
    the writer meant as tenant A; ours refuses every non-canonical form."""
    with pytest.raises(MalformedContext):
        parse_context(data)


@pytest.fixture(scope="module")
def genuine() -> bytes:
    return seal(kek(TENANT_A, 1), ctx(), b"x" * 10, frame=64)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_any_header_the_parser_accepts_is_canonical(genuine: bytes, data: st.DataObject) -> None:
    """No malleability: a mutated header is refused, or it is the exact encoding of what
    was parsed (so two byte strings never parse to one header, and the EDK's AAD, built
    from the re-serialized context, is the same bytes the header tag covers)."""
    header = bytearray(parse_header(genuine).serialize())
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        at = data.draw(st.integers(0, len(header) - 1))
        if op == "set":
            header[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            header.insert(at, data.draw(st.integers(0, 255)))
        else:
            del header[at]
    try:
        parsed = parse_header(bytes(header))
    except (Incomplete, Malformed):
        return
    body = Header.serialize_body(
        parsed.message_id, parsed.context, parsed.data_keys, parsed.frame_length, parsed.commitment
    )
    assert body == parsed.body == bytes(header[: len(body)])
    ctx_len = struct.unpack_from(">H", parsed.body, 35)[0]
    assert parsed.context.serialize() == parsed.body[37 : 37 + ctx_len]


def test_open_into_wipes_only_its_own_window_on_a_bad_tag() -> None:
    """cryptography writes unauthenticated plaintext into ``out`` before checking the tag;
    open_into must wipe exactly that window of a larger caller buffer."""
    aead = prim.Aead(bytes(range(32)))
    nonce, aad, plaintext = bytes(12), b"aad", b"S" * 100
    sealed = bytearray(aead.seal(nonce, plaintext, aad))
    buffer = bytearray(b"\xaa" * 300)
    window = memoryview(buffer)[100:200]
    aead.open_into(nonce, bytes(sealed), aad, window)
    assert bytes(window) == plaintext
    sealed[-1] ^= 1
    with pytest.raises(prim.AuthenticationFailed):
        aead.open_into(nonce, bytes(sealed), aad, window)
    assert buffer == b"\xaa" * 100 + bytes(100) + b"\xaa" * 100


def test_the_key_commitment_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, context = kek(TENANT_A, 1), ctx()
    header = parse_header(seal(k, context, b"data"))
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(prim.hmac, "compare_digest", spy)
    open_header(header, Resolver(k), context)
    assert any(b == header.commitment for _, b in compared)


@pytest.mark.parametrize(
    "target", [ctx(TENANT_B), ctx(obj="asset-2"), EncryptionContext({"reelvault:tenant": TENANT_A})]
)
def test_rewrap_cannot_move_an_object_to_another_context(
    target: EncryptionContext,
) -> None:
    """rewrap_data_key checks the expected context and wraps under the header's own: a
    key slot cannot be used to relabel an object, even by a caller holding the right KEKs."""
    k1, k2 = kek(TENANT_A, 1), kek(TENANT_A, 2)
    original = seal(k1, ctx(), b"video")
    header = parse_header(original).serialize()
    with pytest.raises((errors.DecryptionError, ValueError)):
        rewrap_data_key(header, Resolver(k1), target, k2)
    slot = rewrap_data_key(header, Resolver(k1), ctx(), k2)
    with pytest.raises(errors.DecryptionError):
        b"".join(decrypt_stream([original], Resolver(k2), target, data_keys=[slot]))
    assert b"".join(decrypt_stream([original], Resolver(k2), ctx(), data_keys=[slot])) == b"video"


@pytest.mark.parametrize(
    "name",
    [
        f"tenant/{TENANT_A}/kek/" + "\u0660" * 9 + "\u0661",  # Arabic-Indic digits
        f"tenant/{TENANT_A}/kek/" + "\uff10" * 9 + "\uff11",  # fullwidth digits
        f"tenant/{TENANT_A}/kek/0000000001\n",
        f"tenant/{TENANT_A.upper()}/kek/0000000001",
        f"tenant/{TENANT_A[:-1]}\uff41/kek/0000000001",  # fullwidth 'a'
        f"tenant/{TENANT_A}/kek/0000000000",
        f"tenant/{TENANT_A}/kek/+000000001",
        f"tenant/{TENANT_A}/../{TENANT_B}/kek/0000000001",
    ],
)
def test_kek_names_that_look_right_are_refused(name: str) -> None:
    """Attacker-written key names reach the resolver before anything is authenticated; no
    Unicode digit, stray newline or case trick maps one to a real (tenant, version)."""
    assert parse_kek_key_name(name) is None


def test_rotate_does_not_write_through_a_planted_staging_symlink(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    init_keyring(path)
    before = path.read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "keyring.json.new").symlink_to(victim)
    with pytest.raises(errors.ConfigurationError):
        rotate_keyring(path)
    assert victim.read_bytes() == b"precious"
    assert path.read_bytes() == before
