"""Key export envelopes (reelvault.crypto.recipient): round trips, tampering, rejected keys,
the documented layout, and two openers that do not use the module: RFC 9180 written out
here on bare X25519, HMAC-SHA256 and AES-GCM (checked against the RFC's vector A.1.1), and
the tenant-side snippet of docs/key-export.md, run as written."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import pathlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from reelvault.crypto import _primitives, recipient
from reelvault.crypto.recipient import (
    ALGORITHM_RSA_OAEP_SHA256,
    ALGORITHM_X25519,
    MAX_AAD_LEN,
    MAX_PEM_LEN,
    open_from_recipient,
    parse_recipient_key,
    seal_to_recipient,
)
from reelvault.errors import DecryptionError, InvalidArgument

OPAQUE = str(DecryptionError())
DOCUMENT = b'{"keks": ["v1", "v2"], "subjects": 3}' * 3
AAD = b"reelvault-export|tenant=0123456789abcdef0123456789abcdef|export=exp-1"
DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs" / "key-export.md"


# --- keys ----------------------------------------------------------------------------------


def public_pem(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def spki_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class Pair:
    name: str
    private: rsa.RSAPrivateKey | x25519.X25519PrivateKey
    wrapped_len: int
    algorithm_byte: int

    @property
    def private_pem(self) -> bytes:
        return private_pem(self.private)

    @property
    def public_pem(self) -> bytes:
        return public_pem(self.private.public_key())


@pytest.fixture(scope="module")
def pairs() -> dict[str, Pair]:
    return {
        "rsa2048": Pair("rsa2048", rsa.generate_private_key(65537, 2048), 256, 0x01),
        "rsa3072": Pair("rsa3072", rsa.generate_private_key(65537, 3072), 384, 0x01),
        "x25519": Pair("x25519", x25519.X25519PrivateKey.generate(), 80, 0x02),
        "x25519-other": Pair("x25519-other", x25519.X25519PrivateKey.generate(), 80, 0x02),
        "rsa2048-other": Pair("rsa2048-other", rsa.generate_private_key(65537, 2048), 256, 1),
    }


KINDS = ["rsa2048", "rsa3072", "x25519"]


def seal(pair: Pair, document: bytes = DOCUMENT, aad: bytes = AAD) -> bytes:
    return seal_to_recipient(parse_recipient_key(pair.public_pem), document, aad)


@pytest.fixture(autouse=True)
def load_each_private_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading an RSA private key checks it (50 to 150 ms); the tamper tests open hundreds
    of envelopes with one key. Failures are not cached, so load errors still show."""
    monkeypatch.setattr(
        recipient, "RecipientPrivateKey", functools.cache(_primitives.RecipientPrivateKey)
    )


def assert_opaque(private_key_pem: bytes, envelope: bytes, aad: bytes = AAD) -> None:
    with pytest.raises(DecryptionError) as caught:
        open_from_recipient(private_key_pem, envelope, aad)
    assert type(caught.value) is DecryptionError
    assert str(caught.value) == OPAQUE
    # Never a cryptography exception, neither raised nor chained.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("document", [b"", b"k", DOCUMENT, bytes(range(256)) * 300])
def test_round_trip(pairs: dict[str, Pair], kind: str, document: bytes) -> None:
    pair = pairs[kind]
    envelope = seal(pair, document)
    assert open_from_recipient(pair.private_pem, envelope, AAD) == document


@pytest.mark.parametrize("kind", KINDS)
def test_empty_aad_round_trips_and_is_not_any_other_aad(pairs: dict[str, Pair], kind: str) -> None:
    pair = pairs[kind]
    envelope = seal(pair, aad=b"")
    assert open_from_recipient(pair.private_pem, envelope, b"") == DOCUMENT
    assert_opaque(pair.private_pem, envelope, b"\x00")


@pytest.mark.parametrize("kind", KINDS)
def test_every_seal_is_fresh(pairs: dict[str, Pair], kind: str) -> None:
    pair = pairs[kind]
    a, b = seal(pair), seal(pair)
    assert a != b
    w = pair.wrapped_len
    assert a[7 : 7 + w] != b[7 : 7 + w]  # a fresh content key (and ephemeral key)
    assert a[7 + w : 19 + w] != b[7 + w : 19 + w]  # a fresh nonce


def test_the_recipient_key_exposes_algorithm_and_fingerprint(pairs: dict[str, Pair]) -> None:
    for kind, algorithm in (
        ("rsa2048", ALGORITHM_RSA_OAEP_SHA256),
        ("rsa3072", ALGORITHM_RSA_OAEP_SHA256),
        ("x25519", ALGORITHM_X25519),
    ):
        public = pairs[kind].private.public_key()
        key = parse_recipient_key(public_pem(public))
        assert key.algorithm == algorithm
        assert key.fingerprint == hashlib.sha256(spki_der(public)).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", key.fingerprint)
        assert key.spki_der == spki_der(public)
        assert key.rsa_bits == (0 if kind == "x25519" else int(kind[3:]))
        assert key.spki_der.hex() not in repr(key)


def test_crlf_pem_and_surrounding_whitespace_are_the_same_key(pairs: dict[str, Pair]) -> None:
    pem = pairs["x25519"].public_pem
    variants = [pem, pem.replace(b"\n", b"\r\n"), b"\n  " + pem + b"\n\n", pem.rstrip(b"\n")]
    assert len({parse_recipient_key(v).fingerprint for v in variants}) == 1


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_flipped_byte_fails(pairs: dict[str, Pair], kind: str) -> None:
    pair = pairs[kind]
    envelope = seal(pair, b"sixteen byte kek")
    # 0x80 reaches the bit that X25519 itself ignores in the last byte of enc.
    masks = (0x01, 0x80) if kind == "x25519" else (0x01,)
    for i in range(len(envelope)):
        for mask in masks:
            damaged = bytearray(envelope)
            damaged[i] ^= mask
            assert_opaque(pair.private_pem, bytes(damaged))


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_or_extended_envelopes_fail(pairs: dict[str, Pair], kind: str) -> None:
    pair = pairs[kind]
    envelope = seal(pair)
    for n in range(len(envelope)):
        assert_opaque(pair.private_pem, envelope[:n])
    for extra in (b"\x00", b"\x01" * 16, envelope):
        assert_opaque(pair.private_pem, envelope + extra)
    # The ciphertext length field claiming one byte more than there is, or one less.
    c_at = 19 + pair.wrapped_len
    (c,) = struct.unpack_from(">I", envelope, c_at)
    for claimed in (c + 1, c - 1, 0, 15, 2**32 - 1):
        damaged = bytearray(envelope)
        struct.pack_into(">I", damaged, c_at, claimed)
        assert_opaque(pair.private_pem, bytes(damaged))


@pytest.mark.parametrize("kind", KINDS)
def test_another_aad_fails(pairs: dict[str, Pair], kind: str) -> None:
    pair = pairs[kind]
    envelope = seal(pair)
    for aad in (b"", AAD[:-1], AAD + b"\x00", AAD.replace(b"exp-1", b"exp-2")):
        assert_opaque(pair.private_pem, envelope, aad)
    assert_opaque(pair.private_pem, envelope, b"x" * (MAX_AAD_LEN + 1))


@pytest.mark.parametrize(
    ("sealed_to", "opened_with"),
    [
        ("rsa2048", "rsa2048-other"),  # same size, another key
        ("rsa2048", "rsa3072"),  # another size
        ("rsa2048", "x25519"),  # another algorithm
        ("x25519", "x25519-other"),
        ("x25519", "rsa2048"),
        ("rsa3072", "rsa2048"),
    ],
)
def test_another_private_key_fails(
    pairs: dict[str, Pair], sealed_to: str, opened_with: str
) -> None:
    assert_opaque(pairs[opened_with].private_pem, seal(pairs[sealed_to]))


def test_an_unknown_algorithm_byte_fails_even_with_a_matching_layout(
    pairs: dict[str, Pair],
) -> None:
    pair = pairs["x25519"]
    envelope = bytearray(seal(pair))
    for algorithm in (0x00, 0x01, 0x03, 0xFF):
        envelope[4] = algorithm
        assert_opaque(pair.private_pem, bytes(envelope))


@pytest.mark.parametrize(
    "bad_private_key",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_an_unusable_private_key_is_an_invalid_argument(
    pairs: dict[str, Pair], bad_private_key: bytes
) -> None:
    with pytest.raises(InvalidArgument, match="not an unencrypted PEM private key"):
        open_from_recipient(bad_private_key, seal(pairs["x25519"]), AAD)


def test_an_encrypted_or_unsupported_private_key_is_an_invalid_argument(
    pairs: dict[str, Pair],
) -> None:
    envelope = seal(pairs["x25519"])
    encrypted = pairs["x25519"].private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(InvalidArgument, match="not an unencrypted PEM private key"):
        open_from_recipient(encrypted, envelope, AAD)
    ed = private_pem(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(InvalidArgument, match="RSA or X25519"):
        open_from_recipient(ed, envelope, AAD)


# --- rejected recipient keys ---------------------------------------------------------------


def _rsa_public(pairs: dict[str, Pair]) -> rsa.RSAPublicKey:
    key = pairs["rsa2048"].private
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key()


def _rsa_public_numbers_pem(e: int, n: int) -> bytes:
    return public_pem(rsa.RSAPublicNumbers(e, n).public_key())


def _low_order_x25519_pem() -> bytes:
    # SubjectPublicKeyInfo of the X25519 point u = 0 (RFC 8410 prefix, then the raw key).
    der = bytes.fromhex("302a300506032b656e032100") + bytes(32)
    return _pem(b"PUBLIC KEY", der)


def _pem(label: bytes, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([b"-----BEGIN " + label + b"-----", *lines, b"-----END " + label + b"-----"])


def _certificate_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenant")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


REJECTED: dict[str, tuple[Callable[[dict[str, Pair]], bytes], str]] = {
    "rsa-private-pkcs8": (lambda p: p["rsa2048"].private_pem, "private key.*exposed"),
    "rsa-private-traditional": (
        lambda p: p["rsa2048"].private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        "private key.*exposed",
    ),
    "x25519-private": (lambda p: p["x25519"].private_pem, "private key.*exposed"),
    "encrypted-private": (
        lambda p: p["rsa2048"].private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
        "private key",
    ),
    "private-and-public": (
        lambda p: p["x25519"].public_pem + p["x25519"].private_pem,
        "private key",
    ),
    "ec-p256": (
        lambda p: public_pem(ec.generate_private_key(ec.SECP256R1()).public_key()),
        r"EC keys \(secp256r1\) are not accepted.*RSA.*X25519",
    ),
    "ed25519": (
        lambda p: public_pem(ed25519.Ed25519PrivateKey.generate().public_key()),
        "Ed25519 is a signature key",
    ),
    "x448": (
        lambda p: public_pem(x448.X448PrivateKey.generate().public_key()),
        "not accepted.*RSA.*X25519",
    ),
    "rsa-1024": (
        lambda p: public_pem(rsa.generate_private_key(65537, 1024).public_key()),
        "1024 bits is too small.*2048.*3072",
    ),
    "rsa-2047": (
        lambda p: _rsa_public_numbers_pem(65537, (1 << 2046) | 1),
        "2047 bits is too small",
    ),
    "rsa-exponent-3": (
        lambda p: _rsa_public_numbers_pem(3, _rsa_public(p).public_numbers().n),
        "exponent must be 65537",
    ),
    "rsa-too-large": (
        lambda p: _rsa_public_numbers_pem(65537, (1 << 16400) | (1 << 100) | 1),
        "too large",
    ),
    "x25519-low-order": (lambda p: _low_order_x25519_pem(), "low-order"),
    "rsa-pkcs1-pem": (
        lambda p: _rsa_public(p).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ),
        "PKCS#1",
    ),
    "pkcs1-der-under-a-public-key-label": (
        lambda p: _pem(
            b"PUBLIC KEY",
            _rsa_public(p).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.PKCS1
            ),
        ),
        "not a DER SubjectPublicKeyInfo",
    ),
    "certificate": (lambda p: _certificate_pem(), "certificate"),
    "der-not-pem": (lambda p: spki_der(p["x25519"].private.public_key()), "not a PEM"),
    "empty": (lambda p: b"", "not a PEM"),
    "garbage": (lambda p: b"\x00\xff garbage \x80" * 10, "not a PEM"),
    "two-public-keys": (
        lambda p: p["x25519"].public_pem + p["rsa2048"].public_pem,
        "exactly one PEM block",
    ),
    "text-around-the-block": (lambda p: b"my key:\n" + p["x25519"].public_pem, "not a PEM"),
    "text-after-the-block": (lambda p: p["x25519"].public_pem + b"thanks\n", "not a PEM"),
    "bad-base64": (
        lambda p: b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA===\n-----END PUBLIC KEY-----\n",
        "not valid base64",
    ),
    "not-a-key-in-the-block": (
        lambda p: _pem(b"PUBLIC KEY", b"\x30\x03\x02\x01\x00"),
        "not a valid SubjectPublicKeyInfo",
    ),
    "too-long": (
        lambda p: p["x25519"].public_pem + b" " * (MAX_PEM_LEN + 1 - len(p["x25519"].public_pem)),
        "at most 16384 bytes",
    ),
    "too-long-private": (lambda p: p["rsa2048"].private_pem * 20, "at most 16384 bytes"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_recipient_keys(pairs: dict[str, Pair], case: str) -> None:
    make, message = REJECTED[case]
    pem = make(pairs)
    with pytest.raises(InvalidArgument, match=message) as caught:
        parse_recipient_key(pem)
    assert type(caught.value) is InvalidArgument
    # The message never quotes the input.
    for line in pem.splitlines():
        if len(line) >= 16 and not line.startswith(b"-----"):
            assert line.decode("latin-1") not in caught.value.message


def test_the_size_bound_holds_exactly(pairs: dict[str, Pair]) -> None:
    pem = pairs["x25519"].public_pem
    padded = pem + b"\n" * (MAX_PEM_LEN - len(pem))
    assert len(padded) == MAX_PEM_LEN
    assert parse_recipient_key(padded).algorithm == ALGORITHM_X25519


def test_seal_bounds_its_inputs(pairs: dict[str, Pair], monkeypatch: pytest.MonkeyPatch) -> None:
    key = parse_recipient_key(pairs["x25519"].public_pem)
    with pytest.raises(InvalidArgument, match="aad"):
        seal_to_recipient(key, b"", b"x" * (MAX_AAD_LEN + 1))
    monkeypatch.setattr(recipient, "MAX_DOCUMENT_LEN", 8)
    with pytest.raises(InvalidArgument, match="at most 8 bytes"):
        seal_to_recipient(key, b"123456789", b"")
    assert len(seal_to_recipient(key, b"12345678", b"")) == 23 + 80 + 8 + 16


# --- the documented layout -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 1, 1000])
def test_envelope_layout(pairs: dict[str, Pair], kind: str, size: int) -> None:
    pair = pairs[kind]
    envelope = seal(pair, bytes(size))
    assert envelope[:4] == b"RVX1" == bytes.fromhex("52565831")
    assert envelope[4] == pair.algorithm_byte
    (w,) = struct.unpack_from(">H", envelope, 5)
    assert w == pair.wrapped_len
    (c,) = struct.unpack_from(">I", envelope, 19 + w)
    assert c == size + 16
    assert len(envelope) == 23 + w + c
    if kind == "x25519":
        # enc is an X25519 public key, not the recipient's.
        enc = envelope[7 : 7 + 32]
        x25519.X25519PublicKey.from_public_bytes(enc)
        assert isinstance(pair.private, x25519.X25519PrivateKey)
        assert enc != pair.private.public_key().public_bytes_raw()


def test_rsa_wrapped_key_is_plain_oaep_sha256(pairs: dict[str, Pair]) -> None:
    """The RSA wrapped key opens with the library's OAEP directly, and the body with AES-GCM."""
    for kind in ("rsa2048", "rsa3072"):
        pair = pairs[kind]
        assert isinstance(pair.private, rsa.RSAPrivateKey)
        envelope = seal(pair)
        w = pair.wrapped_len
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        content_key = pair.private.decrypt(envelope[7 : 7 + w], oaep)
        assert len(content_key) == 32
        body = AESGCM(content_key).decrypt(envelope[7 + w : 19 + w], envelope[23 + w :], AAD)
        assert body == DOCUMENT


# --- RFC 9180, written out here, as an independent opener ----------------------------------


def _hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _hkdf_extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, n: int) -> bytes:
    return _hkdf_expand(prk, n.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info, n)


@dataclass(frozen=True)
class HpkeContext:
    shared_secret: bytes
    key: bytes
    base_nonce: bytes


def hpke_receiver(
    sk_r: x25519.X25519PrivateKey, enc: bytes, info: bytes, aead_id: int, nk: int
) -> HpkeContext:
    """RFC 9180 SetupBaseR for DHKEM(X25519, HKDF-SHA256) and HKDF-SHA256 (sections 4.1, 5.1)."""
    kem_suite = b"KEM" + (0x0020).to_bytes(2, "big")
    dh = sk_r.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    kem_context = enc + sk_r.public_key().public_bytes_raw()
    eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(kem_suite, eae_prk, b"shared_secret", kem_context, 32)

    suite = b"HPKE" + (0x0020).to_bytes(2, "big") + (0x0001).to_bytes(2, "big")
    suite += aead_id.to_bytes(2, "big")
    psk_id_hash = _labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite, b"", b"info_hash", info)
    key_schedule_context = b"\x00" + psk_id_hash + info_hash  # mode_base
    secret = _labeled_extract(suite, shared_secret, b"secret", b"")  # psk = ""
    return HpkeContext(
        shared_secret=shared_secret,
        key=_labeled_expand(suite, secret, b"key", key_schedule_context, nk),
        base_nonce=_labeled_expand(suite, secret, b"base_nonce", key_schedule_context, 12),
    )


def test_the_rfc9180_opener_reproduces_vector_a11() -> None:
    """RFC 9180 A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode."""
    sk_r = x25519.X25519PrivateKey.from_private_bytes(
        bytes.fromhex("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
    )
    assert sk_r.public_key().public_bytes_raw() == bytes.fromhex(
        "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d"
    )
    enc = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
    info = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")  # "Ode on a Grecian Urn"
    context = hpke_receiver(sk_r, enc, info, aead_id=0x0001, nk=16)
    assert context.shared_secret == bytes.fromhex(
        "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc"
    )
    assert context.key == bytes.fromhex("4531685d41d65f03dc48f6b8302c05b0")
    assert context.base_nonce == bytes.fromhex("56d890e5accaaf011cff4b7d")
    ciphertext = bytes.fromhex(
        "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a"
    )
    plaintext = AESGCM(context.key).decrypt(context.base_nonce, ciphertext, b"Count-0")
    assert plaintext == b"Beauty is truth, truth beauty"


def test_an_x25519_envelope_opens_by_the_documented_construction(
    pairs: dict[str, Pair],
) -> None:
    """Known answer: the envelope opens with RFC 9180 as written above and AES-256-GCM, with
    nothing from reelvault but the envelope."""
    pair = pairs["x25519"]
    assert isinstance(pair.private, x25519.X25519PrivateKey)
    envelope = seal(pair)
    assert envelope[:7] == b"RVX1\x02\x00\x50"
    enc, sealed_key = envelope[7:39], envelope[39:87]
    context = hpke_receiver(pair.private, enc, b"reelvault key export v1", aead_id=0x0002, nk=32)
    content_key = AESGCM(context.key).decrypt(context.base_nonce, sealed_key, b"")
    assert len(content_key) == 32
    nonce, (c,) = envelope[87:99], struct.unpack_from(">I", envelope, 99)
    assert len(envelope) == 103 + c
    assert AESGCM(content_key).decrypt(nonce, envelope[103:], AAD) == DOCUMENT


# --- the tenant-side snippet of docs/key-export.md -----------------------------------------


@pytest.fixture(scope="module")
def documented_opener() -> Callable[[bytes, bytes, bytes], bytes]:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    (source,) = [b for b in blocks if "def open_envelope" in b]
    namespace: dict[str, object] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)
    opener = namespace["open_envelope"]
    assert callable(opener)
    return opener


@pytest.mark.parametrize("kind", KINDS)
def test_the_documented_opener_opens_envelopes(
    pairs: dict[str, Pair],
    documented_opener: Callable[[bytes, bytes, bytes], bytes],
    kind: str,
) -> None:
    pair = pairs[kind]
    envelope = seal(pair)
    assert documented_opener(pair.private_pem, envelope, AAD) == DOCUMENT
    with pytest.raises(InvalidTag):
        documented_opener(pair.private_pem, envelope, AAD + b"!")
    with pytest.raises(ValueError, match="truncated or extended"):
        documented_opener(pair.private_pem, envelope + b"\x00", AAD)


def test_the_docs_state_the_module_constants() -> None:
    text = DOCS.read_text()
    assert recipient.MAGIC.decode() in text
    assert recipient.HPKE_INFO.decode() in text
    assert f"{recipient.X25519_WRAPPED_KEY_LEN} bytes" in text
