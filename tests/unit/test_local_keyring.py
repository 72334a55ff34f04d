"""The local keyring file and the root key provider built on it."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelvault import errors
from reelvault.clock import FakeClock
from reelvault.keys.local import (
    LocalKeyring,
    init_keyring,
    read_keyring_info,
    rotate_keyring,
)
from reelvault.keys.provider import RootKeyProvider, WrappedKey

TENANT_A = "0123456789abcdef0123456789abcdef"
TENANT_B = "fedcba9876543210fedcba9876543210"
CONTEXT = {"reelvault:tenant": TENANT_A, "reelvault:kek-version": "7"}


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    init_keyring(path, clock=FakeClock())
    return path


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def materials(path: Path) -> list[str]:
    return [entry["material"] for entry in json.loads(path.read_text())["keys"]]


def write_keyring(path: Path, document: object) -> None:
    path.write_text(json.dumps(document))
    path.chmod(0o600)


def valid_document(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "format": "reelvault-keyring",
        "format_version": 1,
        "active_version": 1,
        "keys": [
            {
                "version": 1,
                "created_at": "2027-01-15T08:00:00Z",
                "material": base64.b64encode(bytes(32)).decode(),
            }
        ],
    }
    document.update(overrides)
    return document


# --- creating the file ------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_init_creates_a_0600_file_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    info = init_keyring(path, clock=FakeClock(1_800_000_000))

    assert mode(path) == 0o600
    assert path.stat().st_uid == os.geteuid()
    assert info.active_version == 1
    assert [(v.version, v.created_at) for v in info.versions] == [(1, "2027-01-15T08:00:00Z")]
    assert LocalKeyring.load(path).versions == (1,)


def test_init_creates_missing_parent_directories_0700(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keyring.json"
    init_keyring(path)
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600


def test_init_refuses_to_overwrite_an_existing_keyring(keyring_path: Path) -> None:
    before = keyring_path.read_bytes()
    with pytest.raises(errors.AlreadyExists, match="refusing to overwrite"):
        init_keyring(keyring_path)
    assert keyring_path.read_bytes() == before


def test_init_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    link = tmp_path / "keyring.json"
    link.symlink_to(target)
    with pytest.raises(errors.AlreadyExists):
        init_keyring(link)
    assert not target.exists()


def test_each_init_draws_a_fresh_root_key(tmp_path: Path) -> None:
    init_keyring(tmp_path / "a.json")
    init_keyring(tmp_path / "b.json")
    assert materials(tmp_path / "a.json") != materials(tmp_path / "b.json")


# --- refusing unsafe or malformed files ---------------------------------------------------


@pytest.mark.parametrize("unsafe_mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602])
def test_load_refuses_a_file_group_or_others_can_access(
    keyring_path: Path, unsafe_mode: int
) -> None:
    keyring_path.chmod(unsafe_mode)
    with pytest.raises(errors.ConfigurationError) as raised:
        LocalKeyring.load(keyring_path)
    assert f"chmod 600 {keyring_path}" in str(raised.value)
    assert f"{unsafe_mode:04o}" in str(raised.value)


@pytest.mark.parametrize("safe_mode", [0o600, 0o400])
def test_load_accepts_owner_only_modes(keyring_path: Path, safe_mode: int) -> None:
    keyring_path.chmod(safe_mode)
    assert LocalKeyring.load(keyring_path).active_version == 1


def test_load_refuses_a_symlink(keyring_path: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(keyring_path)
    with pytest.raises(errors.ConfigurationError, match="symlink"):
        LocalKeyring.load(link)


def test_load_refuses_a_file_owned_by_someone_else(
    keyring_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = keyring_path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(errors.ConfigurationError, match=f"owned by uid {owner}"):
        LocalKeyring.load(keyring_path)


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keyring.json"
    directory.mkdir(mode=0o700)
    with pytest.raises(errors.ConfigurationError, match="not a regular file"):
        LocalKeyring.load(directory)


def test_load_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "keyring.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(errors.ConfigurationError, match="not a regular file"):
        LocalKeyring.load(fifo)


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(errors.ConfigurationError) as raised:
        LocalKeyring.load(path)
    assert f"reelvault keyring init --path {path}" in str(raised.value)


def test_suggested_commands_quote_the_path(tmp_path: Path) -> None:
    path = tmp_path / "my keys.json"
    init_keyring(path)
    path.chmod(0o644)
    with pytest.raises(errors.ConfigurationError) as raised:
        LocalKeyring.load(path)
    assert f"chmod 600 '{path}'" in str(raised.value)


SECRET_LOOKING = base64.b64encode(b"\x5a" * 31).decode()  # right alphabet, wrong length


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        ([], "not a JSON object"),
        (valid_document(format="other"), '"format"'),
        (valid_document(format_version=2), "format_version"),
        (valid_document(format_version=True), "format_version"),
        (valid_document(keys=[]), '"keys"'),
        (valid_document(keys={"1": {}}), '"keys"'),
        (valid_document(keys=["x"]), r"keys\[0\] is not an object"),
        (valid_document(active_version=2), "active_version"),
        (valid_document(active_version=True), "active_version"),
        (valid_document(active_version="1"), "active_version"),
        (
            valid_document(
                keys=[{"version": True, "created_at": "2027-01-01T00:00:00Z", "material": ""}]
            ),
            r"keys\[0\].version",
        ),
        (
            valid_document(
                keys=[{"version": 0, "created_at": "2027-01-01T00:00:00Z", "material": ""}]
            ),
            r"keys\[0\].version",
        ),
        (
            valid_document(
                keys=[
                    {
                        "version": 1,
                        "created_at": "2027-01-01T00:00:00Z",
                        "material": base64.b64encode(bytes(32)).decode(),
                    }
                ]
                * 2
            ),
            "appears twice",
        ),
        (
            valid_document(
                keys=[
                    {
                        "version": 1,
                        "created_at": "yesterday",
                        "material": base64.b64encode(bytes(32)).decode(),
                    }
                ]
            ),
            "created_at",
        ),
        (
            valid_document(
                keys=[
                    {"version": 1, "created_at": "2027-01-01T00:00:00Z", "material": SECRET_LOOKING}
                ]
            ),
            "material",
        ),
        (
            valid_document(
                keys=[
                    {"version": 1, "created_at": "2027-01-01T00:00:00Z", "material": "not base64!"}
                ]
            ),
            "material",
        ),
    ],
)
def test_load_refuses_malformed_content(tmp_path: Path, document: object, detail: str) -> None:
    path = tmp_path / "keyring.json"
    write_keyring(path, document)
    with pytest.raises(errors.ConfigurationError, match=detail) as raised:
        LocalKeyring.load(path)
    assert str(path) in str(raised.value)
    assert SECRET_LOOKING not in str(raised.value)


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b" " * (2 << 20)])
def test_load_refuses_content_that_is_not_json(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(errors.ConfigurationError, match="malformed"):
        LocalKeyring.load(path)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (
            b'{"format": "reelvault-keyring", "version": ' + b"9" * 5000 + b"}",
            "a number has too many digits",
        ),
        (b'{"keys": [' + b"9" * 100_000 + b"]}", "a number has too many digits"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    ],
    ids=["long integer", "long integer in a list", "deep list", "deep object"],
)
def test_load_refuses_hostile_json_with_a_configuration_error(
    tmp_path: Path, content: bytes, detail: str
) -> None:
    """json.loads raises a plain ValueError for an integer past Python's digit limit and
    RecursionError for deep nesting; neither may escape as a traceback."""
    path = tmp_path / "keyring.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(errors.ConfigurationError, match=f"malformed: {detail}") as raised:
        LocalKeyring.load(path)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    with pytest.raises(errors.ConfigurationError, match=detail):
        read_keyring_info(path)


# --- rotation ---------------------------------------------------------------------------


def test_rotate_adds_an_active_version_and_keeps_the_old_ones(keyring_path: Path) -> None:
    before = materials(keyring_path)
    clock = FakeClock(1_900_000_000)
    info = rotate_keyring(keyring_path, clock=clock)

    assert info.active_version == 2
    assert [v.version for v in info.versions] == [1, 2]
    assert info.versions[1].created_at == "2030-03-17T17:46:40Z"
    assert materials(keyring_path)[:1] == before
    assert mode(keyring_path) == 0o600
    assert read_keyring_info(keyring_path) == info


@pytest.mark.usefixtures("permissive_umask")
def test_rotate_keeps_mode_0600_and_leaves_no_staging_file(keyring_path: Path) -> None:
    rotate_keyring(keyring_path)
    rotate_keyring(keyring_path)
    assert mode(keyring_path) == 0o600
    assert sorted(p.name for p in keyring_path.parent.iterdir()) == ["keyring.json"]


def test_keys_wrapped_before_a_rotation_still_unwrap(keyring_path: Path) -> None:
    before = LocalKeyring.load(keyring_path)
    key, wrapped = before.generate_key(CONTEXT)

    rotate_keyring(keyring_path)
    after = LocalKeyring.load(keyring_path)

    assert after.unwrap(wrapped, CONTEXT) == key
    _, fresh = after.generate_key(CONTEXT)
    assert fresh.root_key_id == "local:2"
    rewrapped = after.rewrap(wrapped, CONTEXT)
    assert rewrapped.root_key_id == "local:2"
    assert after.unwrap(rewrapped, CONTEXT) == key


def test_rotate_refuses_while_a_staging_file_exists(keyring_path: Path) -> None:
    staging = keyring_path.with_name("keyring.json.new")
    staging.write_text("left over")
    before = keyring_path.read_bytes()
    with pytest.raises(errors.ConfigurationError, match="another rotation"):
        rotate_keyring(keyring_path)
    assert keyring_path.read_bytes() == before
    assert staging.read_text() == "left over"


def test_rotate_refuses_an_unsafe_file_and_cleans_up(keyring_path: Path) -> None:
    keyring_path.chmod(0o644)
    before = keyring_path.read_bytes()
    with pytest.raises(errors.ConfigurationError, match="chmod 600"):
        rotate_keyring(keyring_path)
    assert keyring_path.read_bytes() == before
    assert sorted(p.name for p in keyring_path.parent.iterdir()) == ["keyring.json"]


# --- the provider ---------------------------------------------------------------------------


def make_keyring(*versions: int, active: int | None = None) -> LocalKeyring:
    keys = {v: bytes([v]) * 32 for v in versions}
    return LocalKeyring(keys, active_version=active or max(versions))


def test_is_a_root_key_provider() -> None:
    provider: RootKeyProvider = make_keyring(1)
    key, wrapped = provider.generate_key(CONTEXT)
    assert len(key) == 32
    assert provider.unwrap(wrapped, CONTEXT) == key


def test_generate_key_draws_fresh_keys_and_nonces() -> None:
    keyring = make_keyring(1)
    (k1, w1), (k2, w2) = keyring.generate_key(CONTEXT), keyring.generate_key(CONTEXT)
    assert k1 != k2
    assert w1.ciphertext[5:17] != w2.ciphertext[5:17]


def test_wrapped_key_layout() -> None:
    keyring = make_keyring(1, 2, 3, active=3)
    _, wrapped = keyring.generate_key(CONTEXT)
    blob = wrapped.ciphertext
    assert wrapped.root_key_id == "local:3"
    assert len(blob) == 1 + 4 + 12 + 32 + 16
    assert blob[0] == 0x01
    assert int.from_bytes(blob[1:5], "big") == 3


def test_known_answer_vector() -> None:
    """Pins the format, the AAD label and the context serialization. Computed with
    ``cryptography``'s AESGCM directly from the layout in the module docstring."""
    keyring = LocalKeyring({3: bytes(range(32))}, active_version=3)
    blob = bytes.fromhex(
        "0100000003a0a1a2a3a4a5a6a7a8a9aaaba6593e6e018e44f82a2ccd984b378e9120"
        "fd0b43c6e2143bc4577cdd23f62b5ed23aa272a7371d7061220b3c7b8dd3ee"
    )
    assert keyring.unwrap(WrappedKey("local:3", blob), CONTEXT) == bytes(range(0x40, 0x60))


@pytest.mark.parametrize(
    "other_context",
    [
        {**CONTEXT, "reelvault:tenant": TENANT_B},
        {**CONTEXT, "reelvault:kek-version": "8"},
        {**CONTEXT, "extra": "x"},
        {"reelvault:tenant": TENANT_A},
        {},
    ],
)
def test_a_wrapped_key_is_bound_to_its_context(other_context: dict[str, str]) -> None:
    keyring = make_keyring(1)
    _, wrapped = keyring.generate_key(CONTEXT)
    with pytest.raises(errors.DecryptionError):
        keyring.unwrap(wrapped, other_context)
    with pytest.raises(errors.DecryptionError):
        keyring.rewrap(wrapped, other_context)


def test_flipping_any_bit_of_the_blob_fails() -> None:
    keyring = make_keyring(1, 2)
    _, wrapped = keyring.generate_key(CONTEXT)
    for index in range(len(wrapped.ciphertext)):
        for bit in (0x01, 0x80):
            tampered = bytearray(wrapped.ciphertext)
            tampered[index] ^= bit
            with pytest.raises(errors.DecryptionError):
                keyring.unwrap(WrappedKey(wrapped.root_key_id, bytes(tampered)), CONTEXT)


def test_relabelling_the_version_fails_even_with_a_matching_root_key_id() -> None:
    keyring = make_keyring(1, 2)
    _, wrapped = keyring.generate_key(CONTEXT)
    relabelled = wrapped.ciphertext[:1] + (1).to_bytes(4, "big") + wrapped.ciphertext[5:]
    with pytest.raises(errors.DecryptionError):
        keyring.unwrap(WrappedKey("local:1", relabelled), CONTEXT)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"",
        lambda b: b[:17],
    ],
    ids=["truncated", "extended", "empty", "header-only"],
)
def test_wrong_length_fails(mangle: Callable[[bytes], bytes]) -> None:
    keyring = make_keyring(1)
    _, wrapped = keyring.generate_key(CONTEXT)
    blob = mangle(wrapped.ciphertext)
    with pytest.raises(errors.DecryptionError):
        keyring.unwrap(WrappedKey(wrapped.root_key_id, blob), CONTEXT)


@pytest.mark.parametrize("root_key_id", ["local:2", "local:01", "kms:1", ""])
def test_a_root_key_id_that_disagrees_with_the_blob_fails(root_key_id: str) -> None:
    keyring = make_keyring(1, 2, active=1)
    _, wrapped = keyring.generate_key(CONTEXT)
    with pytest.raises(errors.DecryptionError):
        keyring.unwrap(WrappedKey(root_key_id, wrapped.ciphertext), CONTEXT)


def test_an_unknown_root_version_fails() -> None:
    _, wrapped = make_keyring(1, 2).generate_key(CONTEXT)
    with pytest.raises(errors.DecryptionError):
        make_keyring(1).unwrap(wrapped, CONTEXT)


def test_another_keyring_cannot_unwrap() -> None:
    _, wrapped = LocalKeyring({1: bytes(32)}, 1).generate_key(CONTEXT)
    with pytest.raises(errors.DecryptionError):
        LocalKeyring({1: bytes([1]) * 32}, 1).unwrap(wrapped, CONTEXT)


def test_decryption_errors_are_opaque() -> None:
    keyring = make_keyring(1, 2)
    _, wrapped = keyring.generate_key(CONTEXT)
    failures = [
        WrappedKey(wrapped.root_key_id, wrapped.ciphertext[:-1]),
        WrappedKey("local:1", wrapped.ciphertext),
        WrappedKey(wrapped.root_key_id, wrapped.ciphertext[:-1] + b"\x00"),
    ]
    messages = set()
    for bad in failures:
        with pytest.raises(errors.DecryptionError) as raised:
            keyring.unwrap(bad, CONTEXT)
        messages.add(str(raised.value))
    assert messages == {errors.DecryptionError.default_message}


def test_rewrap_moves_to_the_active_version_with_a_fresh_nonce() -> None:
    old = make_keyring(1)
    key, wrapped = old.generate_key(CONTEXT)
    new = make_keyring(1, 2)
    rewrapped = new.rewrap(wrapped, CONTEXT)
    assert rewrapped.root_key_id == "local:2"
    assert new.unwrap(rewrapped, CONTEXT) == key
    again = new.rewrap(rewrapped, CONTEXT)
    assert again.ciphertext != rewrapped.ciphertext
    assert new.unwrap(again, CONTEXT) == key


def test_constructor_rejects_inconsistent_keyrings() -> None:
    with pytest.raises(ValueError, match="active"):
        LocalKeyring({1: bytes(32)}, active_version=2)
    with pytest.raises(ValueError, match="uint32"):
        LocalKeyring({0: bytes(32)}, active_version=0)
    with pytest.raises(ValueError, match="32-byte"):
        LocalKeyring({1: bytes(16)}, active_version=1)


def test_no_key_material_in_repr_or_info(keyring_path: Path) -> None:
    rotate_keyring(keyring_path)
    secrets = materials(keyring_path)
    raw = [base64.b64decode(m) for m in secrets]
    keyring = LocalKeyring.load(keyring_path)
    shown = " ".join([repr(keyring), str(keyring), repr(read_keyring_info(keyring_path))])
    assert repr(keyring) == "LocalKeyring(versions=[1, 2], active_version=2)"
    for secret in secrets:
        assert secret not in shown
    for material in raw:
        assert material.hex() not in shown
        assert repr(material) not in shown


utf8_text = st.characters(codec="utf-8")  # no lone surrogates
context_items = st.dictionaries(
    st.text(utf8_text, min_size=1, max_size=20).filter(lambda k: not k.startswith("aws-crypto-")),
    st.text(utf8_text, max_size=40),
    max_size=5,
)


@given(context=context_items, other=context_items)
def test_unwrap_succeeds_exactly_under_the_same_context(
    context: dict[str, str], other: dict[str, str]
) -> None:
    keyring = make_keyring(1)
    key, wrapped = keyring.generate_key(context)
    assert keyring.unwrap(wrapped, context) == key
    if other != context:
        with pytest.raises(errors.DecryptionError):
            keyring.unwrap(wrapped, other)
