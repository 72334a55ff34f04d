"""The only module in reelvault that imports ``cryptography.hazmat``.

Everything above this layer works with named operations (seal a frame, derive a content
key, wrap a key, sign a checkpoint) rather than raw primitives, so the set of algorithms in
use can be read off this file: AES-256-GCM, HKDF-SHA512, Ed25519 (RFC 8032, for the audit
log's signed checkpoints), and the OS CSPRNG. There is deliberately no way to choose another
algorithm.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
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
    "TAG_LEN",
    "constant_time_equal",
    "ed25519_generate",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha512",
    "random_bytes",
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
