"""Write format-v2-0478.json: known-answer vectors for reelvault's message format.

Run once, by hand, when the vectors are first created:

    .venv/bin/python tests/vectors/generate.py

The tests never run this script: they regenerate each vector from its stored inputs and
compare with the checked-in file, so a change to the writer that alters a single byte fails
them. Rewriting the file is a format change and needs a reviewer who knows why.

Every input is fixed (KEK, data key, message id, the IV that wraps the data key), so the
output is deterministic. Plaintext follows a recipe instead of being stored, which keeps the
file small; the full ciphertext is stored for the small sizes only, the header and the
ciphertext's SHA-256 for all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from reelvault.crypto import DEFAULT_FRAME_LENGTH, KIND_ASSET, EncryptionContext, Sealer
from reelvault.crypto.names import kek_key_name

OUT = Path(__file__).with_name("format-v2-0478.json")
TENANT_ID = "00112233445566778899aabbccddeeff"
OBJECT_ID = "vector-object"
KEK_VERSION = 7
KEK_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
SIZES = (0, 1, 65536, 65537, 200000)
FULL_HEX_UP_TO = 1  # store the whole ciphertext for sizes up to this many bytes
RECIPE = "bytes(i % 251 for i in range(size))"


def plaintext(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


@dataclass(frozen=True)
class _Kek:
    name: str
    key: bytes


def _fixed(label: str, size: int, n: int) -> bytes:
    """A fixed, distinct value per vector: not secret, only reproducible."""
    return hashlib.sha256(f"reelvault vector {label} {size}".encode()).digest()[:n]


def build() -> dict[str, object]:
    kek = _Kek(kek_key_name(TENANT_ID, KEK_VERSION), KEK_KEY)
    context = EncryptionContext.for_object(
        tenant_id=TENANT_ID, object_id=OBJECT_ID, kind=KIND_ASSET
    )
    vectors = []
    for size in SIZES:
        message_id = _fixed("message id", size, 32)
        data_key = _fixed("data key", size, 32)
        wrap_iv = _fixed("wrap iv", size, 12)
        sealer = Sealer(kek, context, message_id=message_id, data_key=data_key, wrap_iv=wrap_iv)
        ciphertext = b"".join(sealer.seal([plaintext(size)]))
        vector: dict[str, object] = {
            "plaintext_size": size,
            "plaintext_sha256": hashlib.sha256(plaintext(size)).hexdigest(),
            "message_id": message_id.hex(),
            "data_key": data_key.hex(),
            "wrap_iv": wrap_iv.hex(),
            "header": sealer.header.hex(),
            "ciphertext_length": len(ciphertext),
            "ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest(),
        }
        if size <= FULL_HEX_UP_TO:
            vector["ciphertext"] = ciphertext.hex()
        vectors.append(vector)
    return {
        "description": (
            "reelvault object format: AWS Encryption SDK message format v2, algorithm suite "
            "0x0478 (AES-256-GCM, HKDF-SHA512, key commitment, unsigned), framed. The data "
            "key is wrapped in the Raw AES keyring wire format (provider id 'reelvault'). "
            "Decryptable by the official aws-encryption-sdk given the KEK below."
        ),
        "algorithm_suite": "0x0478",
        "frame_length": DEFAULT_FRAME_LENGTH,
        "provider_id": "reelvault",
        "kek_name": kek.name,
        "kek": kek.key.hex(),
        "encryption_context": dict(context),
        "plaintext_recipe": RECIPE,
        "vectors": vectors,
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
