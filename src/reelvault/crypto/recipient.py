"""Key export: seal a document to a public key that a tenant supplies.

A tenant that leaves asks for its KEKs (and, where it has them, per-subject keys) so that it
can go on reading its stored objects with the official ``aws-encryption-sdk``. They leave
the vault sealed to the tenant's own public key, never in plaintext. The format is small,
versioned and strict, and specified here and in docs/key-export.md.

Recipient keys: a PEM SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``) of

* RSA, 2048 to 16384 bits (3072 or more recommended), public exponent 65537, used with
  RSA-OAEP, SHA-256 and MGF1-SHA-256, no label ("rsa-oaep-sha256"); or
* X25519, used with HPKE (RFC 9180), base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
  AES-256-GCM ("x25519").

Both are hybrid: a fresh random 32-byte content key seals the document with AES-256-GCM, and
only that key is encrypted to the recipient. All integers are big-endian::

    off     size  field
    0       4     magic                   "RVX1" (52 56 58 31); the 1 is the format version
    4       1     algorithm               0x01 rsa-oaep-sha256, 0x02 x25519
    5       2     wrapped key length w    RSA: the modulus length in bytes (256 for 2048
                                          bits, 384 for 3072); X25519: 80
    7       w     wrapped content key     RSA: RSA-OAEP(public key, content key)
                                          X25519: HPKE single-shot Seal(public key,
                                          info="reelvault key export v1", aad="", content
                                          key) = enc (32) || ciphertext (32) || tag (16)
    7+w     12    nonce                   random
    19+w    4     ciphertext length c     length of the document + 16
    23+w    c     ciphertext || tag       AES-256-GCM(content key, nonce, document,
                                          AAD = the caller's aad)

An envelope is exactly 23 + w + c bytes. A reader refuses anything else: another magic, an
unknown algorithm byte, a w other than its key's, a c that does not reach exactly to the end.
Every other byte is checked by the cryptography, so no byte of an envelope can change
without the open failing.

Why this shape: the content key is the only thing either public-key scheme encrypts
(RSA-OAEP carries at most a few hundred bytes, and must never carry the document), the
document gets one AEAD whatever the key type, and the caller's aad (which the export binds
to the tenant and the export) is a real AES-GCM AAD of any length. HPKE's single-shot API in
``cryptography`` (47.0.0 and later) takes ``info`` but no ``aad``, and RFC 9180 only
promises 64 bytes of ``info``: wrapping a 32-byte key with a fixed short ``info`` is what
every HPKE library can do, and the same key wrapping works for both algorithms.

The seal side runs in the service; :func:`open_from_recipient` is the tenant's side, for
tests and as a reference for docs/key-export.md. Every failure to open raises one opaque
:class:`~reelvault.errors.DecryptionError`; a bad recipient key or argument raises
:class:`~reelvault.errors.InvalidArgument` saying what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass, field
from typing import Final

from reelvault.crypto._primitives import (
    KEY_LEN,
    NONCE_LEN,
    TAG_LEN,
    Aead,
    AuthenticationFailed,
    RecipientPrivateKey,
    hpke_x25519_seal,
    public_key_facts,
    random_bytes,
    rsa_oaep_sha256_encrypt,
    x25519_is_low_order,
)
from reelvault.errors import DecryptionError, InvalidArgument

__all__ = [
    "ALGORITHM_RSA_OAEP_SHA256",
    "ALGORITHM_X25519",
    "HPKE_INFO",
    "MAGIC",
    "MAX_AAD_LEN",
    "MAX_DOCUMENT_LEN",
    "MAX_PEM_LEN",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "RECOMMENDED_RSA_BITS",
    "RecipientKey",
    "X25519_WRAPPED_KEY_LEN",
    "open_from_recipient",
    "parse_recipient_key",
    "seal_to_recipient",
]

ALGORITHM_RSA_OAEP_SHA256: Final = "rsa-oaep-sha256"
ALGORITHM_X25519: Final = "x25519"

MAGIC: Final = b"RVX1"
HPKE_INFO: Final = b"reelvault key export v1"

# The algorithm byte of the envelope, both ways.
_ALGORITHM_IDS: Final = {ALGORITHM_RSA_OAEP_SHA256: 0x01, ALGORITHM_X25519: 0x02}
_ALGORITHMS: Final = {v: k for k, v in _ALGORITHM_IDS.items()}

MAX_PEM_LEN: Final = 16 * 1024
"""A 16384-bit RSA key is about 2.8 KiB of PEM; anything much longer is not a public key."""

MIN_RSA_BITS: Final = 2048
RECOMMENDED_RSA_BITS: Final = 3072
MAX_RSA_BITS: Final = 16384
"""OpenSSL's own ceiling for RSA public-key operations."""

_RSA_EXPONENT: Final = 65537

X25519_WRAPPED_KEY_LEN: Final = 32 + KEY_LEN + TAG_LEN
"""HPKE enc || the sealed 32-byte content key || tag."""

MAX_DOCUMENT_LEN: Final = 1 << 30
MAX_AAD_LEN: Final = 1 << 16

# magic (4) || algorithm (1) || wrapped key length (2)
_HEAD: Final = struct.Struct(">4sBH")
_CIPHERTEXT_LEN: Final = struct.Struct(">I")
_MIN_ENVELOPE: Final = _HEAD.size + NONCE_LEN + _CIPHERTEXT_LEN.size + TAG_LEN

_PEM_BEGIN: Final = re.compile(rb"-----BEGIN ([^\r\n]*?)-----")
_PEM_PUBLIC_KEY: Final = re.compile(
    rb"\s*-----BEGIN PUBLIC KEY-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END PUBLIC KEY-----\s*"
)
_USE_INSTEAD: Final = (
    f"use an RSA key ({RECOMMENDED_RSA_BITS} bits or more recommended) or an X25519 key"
)


@dataclass(frozen=True, slots=True)
class RecipientKey:
    """A tenant's public key, checked and ready to seal to; build it with
    :func:`parse_recipient_key`.

    Attributes:
        algorithm: :data:`ALGORITHM_RSA_OAEP_SHA256` or :data:`ALGORITHM_X25519`.
        fingerprint: SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex; the tenant
            gets the same from ``openssl pkey -pubin -in key.pem -outform DER | sha256sum``.
        rsa_bits: the modulus size of an RSA key; 0 for X25519.
        spki_der: the DER SubjectPublicKeyInfo.
    """

    algorithm: str
    fingerprint: str
    rsa_bits: int
    spki_der: bytes = field(repr=False)


def parse_recipient_key(pem: bytes) -> RecipientKey:
    """Check a tenant-supplied PEM public key and return it as a :class:`RecipientKey`.

    Accepts exactly one ``-----BEGIN PUBLIC KEY-----`` block (SubjectPublicKeyInfo) holding
    an RSA key of 2048 to 16384 bits with exponent 65537, or an X25519 key that is not a
    low-order point. Raises :class:`~reelvault.errors.InvalidArgument` naming what to send
    instead for anything else: a private key (which the message says to treat as exposed),
    a certificate, a PKCS#1 RSA key, EC, Ed25519 and other key types, small RSA keys, input
    longer than :data:`MAX_PEM_LEN`, or bytes that are not PEM. Messages never quote the
    input.
    """
    der = _der_from_pem(pem)
    try:
        facts = public_key_facts(der)
    except ValueError:
        raise InvalidArgument(
            "the PEM body is not a valid SubjectPublicKeyInfo public key"
        ) from None
    if facts.spki_der != der:
        # The library also reads PKCS#1 and re-encodes: what it read is not what was sent,
        # and the fingerprint must be that of the tenant's own bytes.
        raise InvalidArgument("the PEM body is not a DER SubjectPublicKeyInfo public key")
    if facts.kind == "rsa":
        if facts.rsa_bits < MIN_RSA_BITS:
            raise InvalidArgument(
                f"an RSA key of {facts.rsa_bits} bits is too small: at least {MIN_RSA_BITS} "
                f"bits, {RECOMMENDED_RSA_BITS} or more recommended"
            )
        if facts.rsa_bits > MAX_RSA_BITS:
            raise InvalidArgument(
                f"an RSA key of {facts.rsa_bits} bits is too large: at most {MAX_RSA_BITS}"
            )
        if facts.rsa_exponent != _RSA_EXPONENT:
            raise InvalidArgument(f"an RSA key's public exponent must be {_RSA_EXPONENT}")
        algorithm = ALGORITHM_RSA_OAEP_SHA256
    elif facts.kind == "x25519":
        if x25519_is_low_order(der):
            raise InvalidArgument(
                "this X25519 public key is a low-order point: no secret can be agreed with it"
            )
        algorithm = ALGORITHM_X25519
    elif facts.kind == "ec":
        raise InvalidArgument(f"EC keys ({facts.ec_curve}) are not accepted: {_USE_INSTEAD}")
    elif facts.kind == "ed25519":
        raise InvalidArgument(f"Ed25519 is a signature key, not an encryption key: {_USE_INSTEAD}")
    else:
        raise InvalidArgument(f"this type of public key is not accepted: {_USE_INSTEAD}")
    return RecipientKey(
        algorithm=algorithm,
        fingerprint=hashlib.sha256(der).hexdigest(),
        rsa_bits=facts.rsa_bits,
        spki_der=der,
    )


def _der_from_pem(pem: bytes) -> bytes:
    """The DER inside exactly one ``PUBLIC KEY`` PEM block; InvalidArgument otherwise."""
    if len(pem) > MAX_PEM_LEN:
        raise InvalidArgument(f"a recipient public key is a PEM of at most {MAX_PEM_LEN} bytes")
    labels = _PEM_BEGIN.findall(pem)
    if any(b"PRIVATE" in label for label in labels):
        raise InvalidArgument(
            "this is a private key: send only the public key (-----BEGIN PUBLIC KEY-----), "
            "and treat the private key as exposed"
        )
    if not labels:
        raise InvalidArgument("not a PEM public key: expected -----BEGIN PUBLIC KEY-----")
    if len(labels) > 1:
        raise InvalidArgument("expected exactly one PEM block, -----BEGIN PUBLIC KEY-----")
    if labels[0] == b"CERTIFICATE":
        raise InvalidArgument(
            "this is a certificate: send its public key (openssl x509 -pubkey -noout)"
        )
    if labels[0] == b"RSA PUBLIC KEY":
        raise InvalidArgument(
            "this is a PKCS#1 RSA key: send it as -----BEGIN PUBLIC KEY----- "
            "(openssl rsa -RSAPublicKey_in -pubout)"
        )
    match = _PEM_PUBLIC_KEY.fullmatch(pem)
    if labels[0] != b"PUBLIC KEY" or match is None:
        raise InvalidArgument("not a PEM public key: expected -----BEGIN PUBLIC KEY-----")
    body = re.sub(rb"\s+", b"", match.group(1))
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        der = b""
    if not der or base64.b64encode(der) != body:
        # Python's decoder lets excess padding through; only the canonical form is accepted.
        raise InvalidArgument("the PEM body is not valid base64")
    return der


def seal_to_recipient(key: RecipientKey, plaintext: bytes, aad: bytes) -> bytes:
    """Seal ``plaintext`` to ``key`` in the envelope of the module docstring.

    ``aad`` is authenticated, not encrypted and not stored: the opener must pass the same
    bytes. Raises :class:`~reelvault.errors.InvalidArgument` for a document longer than
    :data:`MAX_DOCUMENT_LEN` or an aad longer than :data:`MAX_AAD_LEN`.
    """
    if len(plaintext) > MAX_DOCUMENT_LEN:
        raise InvalidArgument(f"a sealed document is at most {MAX_DOCUMENT_LEN} bytes")
    if len(aad) > MAX_AAD_LEN:
        raise InvalidArgument(f"the aad of a sealed document is at most {MAX_AAD_LEN} bytes")
    content_key = random_bytes(KEY_LEN)
    if key.algorithm == ALGORITHM_RSA_OAEP_SHA256:
        wrapped = rsa_oaep_sha256_encrypt(key.spki_der, content_key)
    elif key.algorithm == ALGORITHM_X25519:
        wrapped = hpke_x25519_seal(key.spki_der, content_key, HPKE_INFO)
    else:
        raise InvalidArgument("unknown recipient key algorithm")
    nonce = random_bytes(NONCE_LEN)
    ciphertext = Aead(content_key).seal(nonce, plaintext, aad)
    return b"".join(
        (
            _HEAD.pack(MAGIC, _ALGORITHM_IDS[key.algorithm], len(wrapped)),
            wrapped,
            nonce,
            _CIPHERTEXT_LEN.pack(len(ciphertext)),
            ciphertext,
        )
    )


def open_from_recipient(private_key_pem: bytes, envelope: bytes, aad: bytes) -> bytes:
    """The tenant's side: open an envelope of :func:`seal_to_recipient` with the private key.

    Raises :class:`~reelvault.errors.InvalidArgument` if ``private_key_pem`` is not an
    unencrypted PEM private key of RSA or X25519, and one opaque
    :class:`~reelvault.errors.DecryptionError` for every other failure: a malformed or
    altered envelope, a private key that is not the recipient's, a different aad. The
    reason is kept on the error for logs, never in its message.
    """
    try:
        key = RecipientPrivateKey(private_key_pem)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    if len(envelope) < _MIN_ENVELOPE:
        raise DecryptionError("key export envelope: too short")
    magic, algorithm_id, wrapped_len = _HEAD.unpack_from(envelope)
    if magic != MAGIC:
        raise DecryptionError("key export envelope: bad magic")
    algorithm = _ALGORITHMS.get(algorithm_id)
    if algorithm is None:
        raise DecryptionError("key export envelope: unknown algorithm")
    expected_kind = "rsa" if algorithm == ALGORITHM_RSA_OAEP_SHA256 else "x25519"
    if key.kind != expected_kind:
        raise DecryptionError("key export envelope: sealed to another type of key")
    expected_len = key.rsa_modulus_len if key.kind == "rsa" else X25519_WRAPPED_KEY_LEN
    if wrapped_len != expected_len:
        raise DecryptionError("key export envelope: wrapped key length is not the key's")
    at = _HEAD.size
    wrapped = envelope[at : at + wrapped_len]
    at += wrapped_len
    nonce = envelope[at : at + NONCE_LEN]
    at += NONCE_LEN
    if len(envelope) < at + _CIPHERTEXT_LEN.size:
        raise DecryptionError("key export envelope: too short")
    (ciphertext_len,) = _CIPHERTEXT_LEN.unpack_from(envelope, at)
    at += _CIPHERTEXT_LEN.size
    if ciphertext_len < TAG_LEN or ciphertext_len > MAX_DOCUMENT_LEN + TAG_LEN:
        raise DecryptionError("key export envelope: bad ciphertext length")
    if len(envelope) != at + ciphertext_len:
        raise DecryptionError("key export envelope: length does not match its fields")
    if len(aad) > MAX_AAD_LEN:
        raise DecryptionError("key export envelope: aad longer than any seal accepts")
    try:
        if key.kind == "rsa":
            content_key = key.rsa_oaep_sha256_decrypt(wrapped)
        else:
            content_key = key.hpke_x25519_open(wrapped, HPKE_INFO)
    except AuthenticationFailed:
        raise DecryptionError("key export envelope: content key did not unwrap") from None
    if len(content_key) != KEY_LEN:
        raise DecryptionError("key export envelope: content key of the wrong length")
    try:
        return Aead(content_key).open(nonce, envelope[at:], aad)
    except AuthenticationFailed:
        raise DecryptionError("key export envelope: document did not authenticate") from None
