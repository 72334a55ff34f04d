"""Signatures for code above the crypto package: Ed25519 (audit checkpoints, distribution
tokens) and the RSA/ECDSA signatures of CloudFront policies. Thin names over
:mod:`reelvault.crypto._primitives`, which stays the only module importing
``cryptography.hazmat``."""

from reelvault.crypto._primitives import (
    ED25519_KEY_LEN,
    ED25519_SIGNATURE_LEN,
    CloudFrontPolicySigner,
    ed25519_generate,
    ed25519_public_key,
    ed25519_sign,
    ed25519_verify,
)

__all__ = [
    "CloudFrontPolicySigner",
    "ED25519_KEY_LEN",
    "ED25519_SIGNATURE_LEN",
    "ed25519_generate",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
]
