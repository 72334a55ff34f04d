"""Known-answer vectors: tests/vectors/format-v2-0478.json (written once by generate.py).

Three checks per vector: our writer reproduces it byte for byte from its fixed inputs; our
reader and the official SDK both decrypt it; and its header agrees with the format spec
recomputed here from first principles (HKDF and AES-GCM straight from ``cryptography``),
so a bug shared by our writer and reader cannot hide behind a self-consistent round trip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from reelvault.crypto import (
    EncryptionContext,
    RandomAccessReader,
    Sealer,
    decrypt_stream,
    serialize_context,
)
from reelvault.crypto.format import parse_header

from .conftest import DictResolver, Kek, join, make_sdk_provider

VECTOR_DIR = Path(__file__).parents[2] / "vectors"
VECTOR_FILE = VECTOR_DIR / "format-v2-0478.json"
DATA: dict[str, Any] = json.loads(VECTOR_FILE.read_text())
VECTORS: list[dict[str, Any]] = DATA["vectors"]
IDS = [str(v["plaintext_size"]) for v in VECTORS]


def plaintext(size: int) -> bytes:
    assert DATA["plaintext_recipe"] == "bytes(i % 251 for i in range(size))"
    return bytes(i % 251 for i in range(size))


@pytest.fixture(scope="module")
def vkek() -> Kek:
    return Kek(DATA["kek_name"], bytes.fromhex(DATA["kek"]))


@pytest.fixture(scope="module")
def vcontext() -> EncryptionContext:
    return EncryptionContext(DATA["encryption_context"])


def regenerate(vector: dict[str, Any], kek: Kek, context: EncryptionContext) -> tuple[bytes, bytes]:
    sealer = Sealer(
        kek,
        context,
        frame_length=DATA["frame_length"],
        message_id=bytes.fromhex(vector["message_id"]),
        data_key=bytes.fromhex(vector["data_key"]),
        wrap_iv=bytes.fromhex(vector["wrap_iv"]),
    )
    return sealer.header, join(sealer.seal([plaintext(vector["plaintext_size"])]))


def stored_ciphertext(vector: dict[str, Any], kek: Kek, context: EncryptionContext) -> bytes:
    """The vector's full ciphertext: stored hex, or regenerated and proven equal by hash."""
    if "ciphertext" in vector:
        return bytes.fromhex(vector["ciphertext"])
    _, ciphertext = regenerate(vector, kek, context)
    assert hashlib.sha256(ciphertext).hexdigest() == vector["ciphertext_sha256"]
    return ciphertext


def test_the_file_covers_the_frame_boundaries() -> None:
    assert DATA["algorithm_suite"] == "0x0478"
    assert DATA["frame_length"] == 65536
    assert [v["plaintext_size"] for v in VECTORS] == [0, 1, 65536, 65537, 200000]
    assert all("ciphertext" in v for v in VECTORS if v["plaintext_size"] <= 1)


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_writer_reproduces_the_vector(vector, vkek, vcontext) -> None:
    header, ciphertext = regenerate(vector, vkek, vcontext)
    assert header.hex() == vector["header"]
    assert ciphertext.startswith(header)
    assert len(ciphertext) == vector["ciphertext_length"]
    assert hashlib.sha256(ciphertext).hexdigest() == vector["ciphertext_sha256"]
    if "ciphertext" in vector:
        assert ciphertext.hex() == vector["ciphertext"]
    assert (
        hashlib.sha256(plaintext(vector["plaintext_size"])).hexdigest()
        == vector["plaintext_sha256"]
    )


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_reelvault_decrypts_the_vector(vector, vkek, vcontext) -> None:
    ciphertext = stored_ciphertext(vector, vkek, vcontext)
    expected = plaintext(vector["plaintext_size"])
    resolver = DictResolver(vkek)

    assert join(decrypt_stream([ciphertext], resolver, vcontext)) == expected

    header = bytes.fromhex(vector["header"])
    reader = RandomAccessReader(
        lambda off, n: ciphertext[off : off + n], len(ciphertext), resolver, vcontext, header=header
    )
    assert reader.plaintext_size == len(expected)
    assert reader.read(0, len(expected)) == expected


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_official_sdk_decrypts_the_vector(vector, vkek, vcontext, sdk_client) -> None:
    ciphertext = stored_ciphertext(vector, vkek, vcontext)
    decrypted, header = sdk_client.decrypt(source=ciphertext, key_provider=make_sdk_provider(vkek))
    assert decrypted == plaintext(vector["plaintext_size"])
    assert header.encryption_context == DATA["encryption_context"]


def _hkdf(data_key: bytes, message_id: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA512(), length=32, salt=message_id, info=info).derive(data_key)


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_header_matches_the_spec_computed_independently(vector, vkek, vcontext) -> None:
    header_bytes = bytes.fromhex(vector["header"])
    message_id = bytes.fromhex(vector["message_id"])
    data_key = bytes.fromhex(vector["data_key"])
    wrap_iv = bytes.fromhex(vector["wrap_iv"])
    header = parse_header(header_bytes)
    assert header.length == len(header_bytes)
    assert header_bytes[:3] == b"\x02\x04\x78"
    assert header.message_id == message_id
    assert header.context == vcontext
    assert header.frame_length == DATA["frame_length"]

    (edk,) = header.data_keys
    assert edk.provider_id == DATA["provider_id"]
    assert edk.provider_info == vkek.name.encode() + struct.pack(">II", 128, 12) + wrap_iv
    context_aad = serialize_context(DATA["encryption_context"])
    assert edk.ciphertext == AESGCM(vkek.key).encrypt(wrap_iv, data_key, context_aad)

    assert header.commitment == _hkdf(data_key, message_id, b"COMMITKEY")
    content_key = _hkdf(data_key, message_id, b"\x04\x78DERIVEKEY")
    assert header.auth_tag == AESGCM(content_key).encrypt(bytes(12), b"", header.body)


def test_generator_reproduces_the_checked_in_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """generate.py and the file agree (the test only builds in memory; it never writes)."""
    spec = importlib.util.spec_from_file_location("vector_generator", VECTOR_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.build() == DATA
