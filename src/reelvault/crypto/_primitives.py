"""The only module in reelvault that imports ``cryptography.hazmat``.

Everything above this layer works with named operations (seal a frame, derive a content
key, wrap a key, sign a checkpoint) rather than raw primitives, so the set of algorithms in
use can be read off this file: AES-256-GCM, HKDF-SHA512, Ed25519 (RFC 8032, for the audit
log's signed checkpoints), and the OS CSPRNG. There is deliberately no way to choose another
algorithm. Key exports to a tenant's own public key (crypto.recipient) add RSA-OAEP-SHA256 and
HPKE (RFC 9180) with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "Aead",
    "AuthenticationFailed",
    "CloudFrontPolicySigner",
    "KEY_LEN",
    "NONCE_LEN",
    "ED25519_KEY_LEN",
    "ED25519_SIGNATURE_LEN",
    "HPKE_X25519_ENC_LEN",
    "PublicKeyFacts",
    "RecipientPrivateKey",
    "TAG_LEN",
    "constant_time_equal",
    "ed25519_generate",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha512",
    "hpke_x25519_seal",
    "public_key_facts",
    "random_bytes",
    "rsa_oaep_sha256_encrypt",
    "x25519_is_low_order",
]

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
ED25519_KEY_LEN = 32
ED25519_SIGNATURE_LEN = 64

Buffer = bytes | bytearray | memoryview


AuthenticationFailed = InvalidTag
"""An AES-GCM tag did not verify. Re-exported so that code above this module can catch it
without importing ``cryptography``; internal: callers above crypto/ never see it."""


class Aead:
    """AES-256-GCM bound to one key.

    The key schedule is computed once per key, not once per frame, and ``seal``/``open``
    are the library's bound methods themselves: at 64 KiB frames and ~8 GB/s, one extra
    Python call per frame is a measurable share of the time.

    Attributes:
        seal: ``seal(nonce, plaintext, aad) -> ciphertext || tag``.
        open: ``open(nonce, ciphertext || tag, aad) -> plaintext``; raises
            :data:`AuthenticationFailed`.
    """

    __slots__ = ("_aead", "open", "seal")

    seal: Callable[[Buffer, Buffer, Buffer], bytes]
    open: Callable[[Buffer, Buffer, Buffer], bytes]

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)
        self.seal = self._aead.encrypt
        self.open = self._aead.decrypt

    def seal_into(self, nonce: Buffer, plaintext: Buffer, aad: Buffer, out: Buffer) -> None:
        """Write ciphertext || tag into ``out`` (exactly len(plaintext) + 16 bytes)."""
        self._aead.encrypt_into(nonce, plaintext, aad, out)

    def open_into(
        self, nonce: Buffer, ciphertext_and_tag: Buffer, aad: Buffer, out: Buffer
    ) -> None:
        """Authenticate and decrypt into ``out``.

        ``cryptography`` writes the unauthenticated plaintext into ``out`` before it checks
        the tag, so on failure the buffer is zeroed here: no caller can pick up plaintext of
        a frame that failed authentication.
        """
        try:
            self._aead.decrypt_into(nonce, ciphertext_and_tag, aad, out)
        except InvalidTag:
            view = memoryview(out).cast("B")
            view[:] = bytes(len(view))
            raise


def hkdf_sha512(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) with SHA-512."""
    return HKDF(algorithm=hashes.SHA512(), length=length, salt=salt, info=info).derive(ikm)


def random_bytes(n: int) -> bytes:
    """Bytes from the operating system's CSPRNG."""
    return os.urandom(n)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets (tags, commitment values, key hashes) without a timing side channel."""
    return hmac.compare_digest(a, b)


def ed25519_generate() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as raw bytes: (32-byte private seed, 32-byte public key).

    Raw bytes rather than key objects, so that callers can store and name keys without
    importing ``cryptography``; the seed is the RFC 8032 private key, from which the
    public key follows.
    """
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def ed25519_public_key(private_raw: bytes) -> bytes:
    """The 32-byte public key of a 32-byte Ed25519 private seed.

    Signers need it to compute a key id, and storing it beside the seed would be a second
    copy that could disagree.
    """
    if len(private_raw) != ED25519_KEY_LEN:
        raise ValueError("an Ed25519 private key is a 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes_raw()


def ed25519_sign(private_raw: bytes, message: bytes) -> bytes:
    """The 64-byte RFC 8032 signature of ``message``; deterministic, so known answers hold."""
    if len(private_raw) != ED25519_KEY_LEN:
        raise ValueError("an Ed25519 private key is a 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(private_raw).sign(message)


def ed25519_verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public_raw``.

    Returns False, never raises, for anything that does not verify, including a public key
    or signature of the wrong length or a key that is not a curve point: the key and the
    signature usually come from the outside (a verifier key string, a note), and every way
    they can be wrong means the same thing to the caller.
    """
    if len(public_raw) != ED25519_KEY_LEN or len(signature) != ED25519_SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# CloudFront key groups take RSA 2048 or ECDSA P-256 keys only (API_PublicKey).
_RSA_BITS = 2048


class CloudFrontPolicySigner:
    """A CloudFront signing key, loaded once: RSA 2048 or ECDSA P-256, always with SHA-256."""

    __slots__ = ("_key", "algorithm")

    _key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str

    def __init__(self, private_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(private_pem, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            # TypeError: the PEM is encrypted. The library's message says nothing useful
            # about the key, and a key's details have no place in an error.
            raise ValueError("not an unencrypted PEM private key") from None
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size == _RSA_BITS:
            self.algorithm = "rsa"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            self.algorithm = "ecdsa-p256"
        else:
            raise ValueError("a CloudFront key group takes RSA 2048 or ECDSA P-256 keys only")
        self._key = key

    def sign(self, message: bytes) -> bytes:
        """PKCS#1 v1.5 (RSA) or DER-encoded ECDSA (P-256) signature of ``message``, SHA-256."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


# -- Key export to a tenant's own public key (crypto/recipient.py) ---------------------------

HPKE_X25519_ENC_LEN = 32
"""The encapsulated key that starts every HPKE ciphertext to an X25519 key (RFC 9180 Nenc)."""

# SHA-256 for both the hash and MGF1, empty label: the combination every toolkit calls
# "RSA-OAEP-256" (JWA) or "OAEP with SHA-256", so a tenant can unwrap with any of them.
_OAEP_SHA256 = padding.OAEP(
    mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)

# RFC 9180 suite 0x0020/0x0001/0x0002; AES-256-GCM because everything else here is AES-256.
_HPKE_X25519 = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


@dataclass(frozen=True, slots=True)
class PublicKeyFacts:
    """What a DER SubjectPublicKeyInfo holds, as plain values, so that the checks on a
    tenant's key (crypto.recipient) read without ``cryptography`` types.

    Attributes:
        kind: "rsa", "x25519", "ec", "ed25519", or "other".
        spki_der: the library's DER encoding of the key (canonical, whatever the input was).
        rsa_bits: the modulus size; 0 unless RSA.
        rsa_exponent: the public exponent; 0 unless RSA.
        ec_curve: the curve's name (e.g. "secp256r1"); "" unless EC.
    """

    kind: str
    spki_der: bytes
    rsa_bits: int = 0
    rsa_exponent: int = 0
    ec_curve: str = ""


def public_key_facts(spki_der: bytes) -> PublicKeyFacts:
    """Parse a DER SubjectPublicKeyInfo; ValueError if the bytes are not one."""
    try:
        key = serialization.load_der_public_key(spki_der)
        canonical = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, UnsupportedAlgorithm):
        # The library's message describes its parser, not the key; it has no place in an error.
        raise ValueError("not a DER SubjectPublicKeyInfo") from None
    if isinstance(key, rsa.RSAPublicKey):
        return PublicKeyFacts(
            "rsa", canonical, rsa_bits=key.key_size, rsa_exponent=key.public_numbers().e
        )
    if isinstance(key, x25519.X25519PublicKey):
        return PublicKeyFacts("x25519", canonical)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return PublicKeyFacts("ec", canonical, ec_curve=key.curve.name)
    if isinstance(key, Ed25519PublicKey):
        return PublicKeyFacts("ed25519", canonical)
    return PublicKeyFacts("other", canonical)


def x25519_is_low_order(spki_der: bytes) -> bool:
    """Whether an X25519 public key is a low-order point (RFC 7748 section 6.1).

    Every exchange with such a key gives the all-zero secret, so nothing could be sealed to
    it; refusing it when the key is registered beats failing at the export.
    """
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, x25519.X25519PublicKey):
        raise ValueError("not an X25519 public key")
    try:
        x25519.X25519PrivateKey.generate().exchange(key)
    except ValueError:
        return True
    return False


def rsa_oaep_sha256_encrypt(spki_der: bytes, plaintext: bytes) -> bytes:
    """RSA-OAEP (RFC 8017) with SHA-256 and MGF1-SHA-256, no label; as long as the modulus.

    Only ever given a random content key: RSA encrypts at most a few hundred bytes, and it
    is the hybrid layer's job to carry the document.
    """
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key.encrypt(plaintext, _OAEP_SHA256)


def hpke_x25519_seal(spki_der: bytes, plaintext: bytes, info: bytes) -> bytes:
    """RFC 9180 single-shot Seal in base mode to an X25519 key, with DHKEM(X25519,
    HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, and an empty aad.

    Returns enc (32 bytes, the ephemeral public key) || ciphertext || 16-byte tag, the
    layout of ``cryptography``'s HPKE and of RFC 9180's single-shot API. A fresh ephemeral
    key per call, so the derived nonce is never reused under one key.
    """
    key = serialization.load_der_public_key(spki_der)
    if not isinstance(key, x25519.X25519PublicKey):
        raise ValueError("not an X25519 public key")
    return _HPKE_X25519.encrypt(plaintext, key, info=info)


class RecipientPrivateKey:
    """A key-export recipient's private key (RSA or X25519), loaded once.

    The tenant's side of crypto.recipient: the service never holds one; tests and the
    documented opener do. Every failure to unwrap raises :data:`AuthenticationFailed`, one
    exception whatever went wrong: telling an OAEP decoding error from another is the oracle
    that Manger's attack on RSA-OAEP needs.
    """

    __slots__ = ("_key", "kind", "rsa_modulus_len")

    _key: rsa.RSAPrivateKey | x25519.X25519PrivateKey
    kind: str
    rsa_modulus_len: int

    def __init__(self, private_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(private_pem, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm):
            # TypeError: the PEM is encrypted. As for CloudFront keys, the library's message
            # says nothing useful about the key.
            raise ValueError("not an unencrypted PEM private key") from None
        if isinstance(key, rsa.RSAPrivateKey):
            self.kind = "rsa"
            self.rsa_modulus_len = (key.key_size + 7) // 8
        elif isinstance(key, x25519.X25519PrivateKey):
            self.kind = "x25519"
            self.rsa_modulus_len = 0
        else:
            raise ValueError("a key-export recipient's private key is RSA or X25519")
        self._key = key

    def rsa_oaep_sha256_decrypt(self, ciphertext: bytes) -> bytes:
        """The inverse of :func:`rsa_oaep_sha256_encrypt`."""
        if not isinstance(self._key, rsa.RSAPrivateKey):
            raise AuthenticationFailed
        try:
            return self._key.decrypt(ciphertext, _OAEP_SHA256)
        except ValueError:
            raise AuthenticationFailed from None

    def hpke_x25519_open(self, enc_and_ciphertext: bytes, info: bytes) -> bytes:
        """The inverse of :func:`hpke_x25519_seal`."""
        if not isinstance(self._key, x25519.X25519PrivateKey):
            raise AuthenticationFailed
        try:
            return _HPKE_X25519.decrypt(enc_and_ciphertext, self._key, info=info)
        except (InvalidTag, ValueError):
            raise AuthenticationFailed from None
