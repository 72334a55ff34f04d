"""Signed notes and checkpoints: known answers from Go and C2SP, round trips, tampering.

tests/vectors/signed-note.json holds the vectors of golang.org/x/mod/sumdb/note (whose
private key is given, so our signature must match byte for byte: Ed25519 is deterministic)
and the examples of the C2SP specs. Everything else is checked against notes we sign here.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from reelvault.audit import note
from reelvault.audit.note import Checkpoint, NoteError
from reelvault.crypto import _primitives as prim

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "vectors" / "signed-note.json").read_text()
)
GO = VECTORS["notes"][0]
ENOCH = VECTORS["notes"][1]
C2SP = VECTORS["notes"][2]

ORIGIN = "example.com/reelvault/audit"
ROOT = bytes(range(32))


def go_private_key(skey: str) -> tuple[str, bytes]:
    """Name and seed of a Go sumdb/note private key: PRIVATE+KEY+name+id+base64(0x01 || seed)."""
    prefix, _, name, _, key = skey.split("+", 4)
    assert prefix == "PRIVATE"
    raw = base64.b64decode(key)
    assert raw[0] == 1
    return name, raw[1:]


@pytest.fixture(scope="module")
def log_key() -> tuple[bytes, str]:
    private, public = prim.ed25519_generate()
    return private, note.encode_verifier_key(ORIGIN, public)


@pytest.fixture(scope="module")
def witness_key() -> tuple[bytes, str]:
    private, public = prim.ed25519_generate()
    return private, note.encode_verifier_key("witness.example/w1", public)


def signature_line(signed: str) -> str:
    return signed.splitlines(keepends=True)[-1]


# -- Known answers -------------------------------------------------------------------------


def test_signing_reproduces_the_go_note_byte_for_byte():
    name, seed = go_private_key(GO["private_key"])
    public = prim.ed25519_public_key(seed)
    assert note.encode_verifier_key(name, public) == GO["verifier_key"]
    assert note.key_id(name, public).hex() == GO["verifier_key"].split("+")[1]
    assert note.sign_note(GO["text"].encode(), name, seed) == GO["signed"]


@pytest.mark.parametrize("vector", VECTORS["notes"], ids=lambda v: v["verifier_key"].split("+")[0])
def test_known_notes_open(vector):
    assert note.open_note(vector["signed"], vector["verifier_key"]) == vector["text"].encode()
    assert note.open_note(vector["signed"].encode(), vector["verifier_key"]) == (
        vector["text"].encode()
    )
    name, public = note.parse_verifier_key(vector["verifier_key"])
    assert note.encode_verifier_key(name, public) == vector["verifier_key"]


def test_signatures_of_other_keys_are_ignored_in_either_order():
    peter, enoch = signature_line(GO["signed"]), signature_line(ENOCH["signed"])
    both = GO["text"] + "\n" + peter + enoch
    reversed_ = GO["text"] + "\n" + enoch + peter
    for vkey in (GO["verifier_key"], ENOCH["verifier_key"]):
        assert note.open_note(both, vkey) == GO["text"].encode()
        assert note.open_note(reversed_, vkey) == GO["text"].encode()
    with pytest.raises(NoteError):
        note.open_note(ENOCH["signed"], GO["verifier_key"])


def test_known_checkpoint_parses():
    for vector in VECTORS["checkpoints"]:
        checkpoint = note.parse_checkpoint(vector["text"].encode())
        assert checkpoint == Checkpoint(
            vector["origin"], vector["size"], bytes.fromhex(vector["root_hash"])
        )
        assert checkpoint.body() == vector["text"].encode()


# -- Round trip and tampering --------------------------------------------------------------


def test_checkpoint_round_trip(log_key):
    private, vkey = log_key
    checkpoint = Checkpoint(ORIGIN, 1234, ROOT, ("ext one", "ext two"))
    signed = note.sign_note(checkpoint.body(), ORIGIN, private)
    assert signed.startswith(checkpoint.body().decode() + "\n\u2014 " + ORIGIN + " ")
    assert note.parse_checkpoint(note.open_note(signed, vkey)) == checkpoint


def test_checkpoint_body_layout():
    body = Checkpoint(ORIGIN, 0, bytes(32)).body()
    assert body == f"{ORIGIN}\n0\n{'A' * 43}=\n".encode()
    assert Checkpoint("o", 7, ROOT, ("x",)).body().endswith(b"=\nx\n")


def test_any_one_character_changed_rejects_the_note(log_key):
    private, vkey = log_key
    signed = note.sign_note(Checkpoint(ORIGIN, 99, ROOT, ("ext",)).body(), ORIGIN, private)
    for i, ch in enumerate(signed):
        for other in {"A", "\n", " "} - {ch}:
            with pytest.raises(NoteError):
                note.open_note(signed[:i] + other + signed[i + 1 :], vkey)


def test_truncated_or_extended_notes_are_rejected(log_key):
    private, vkey = log_key
    signed = note.sign_note(Checkpoint(ORIGIN, 99, ROOT).body(), ORIGIN, private)
    for end in range(len(signed)):
        with pytest.raises(NoteError):
            note.open_note(signed[:end], vkey)
    for extra in ("\n", "x\n", "\u2014\n", "Unexpected line.\n"):
        with pytest.raises(NoteError):
            note.open_note(signed + extra, vkey)


def test_each_line_removed_rejects_the_note(log_key):
    private, vkey = log_key
    signed = note.sign_note(Checkpoint(ORIGIN, 99, ROOT, ("ext",)).body(), ORIGIN, private)
    lines = signed.splitlines(keepends=True)
    for i in range(len(lines)):
        with pytest.raises(NoteError):
            note.open_note("".join(lines[:i] + lines[i + 1 :]), vkey)


def test_wrong_key_same_name_or_same_key_other_name(log_key):
    private, _ = log_key
    signed = note.sign_note(Checkpoint(ORIGIN, 1, ROOT).body(), ORIGIN, private)
    _, stranger = prim.ed25519_generate()
    for vkey in (
        note.encode_verifier_key(ORIGIN, stranger),
        note.encode_verifier_key(ORIGIN + "2", prim.ed25519_public_key(private)),
    ):
        with pytest.raises(NoteError):
            note.open_note(signed, vkey)


def test_cosignature_by_another_key_is_ignored_and_verifies_on_its_own(log_key, witness_key):
    (log_private, log_vkey), (witness_private, witness_vkey) = log_key, witness_key
    body = Checkpoint(ORIGIN, 5, ROOT).body()
    signed = note.sign_note(body, ORIGIN, log_private)
    cosigned = signed + signature_line(note.sign_note(body, "witness.example/w1", witness_private))
    assert note.open_note(cosigned, log_vkey) == body
    assert note.open_note(cosigned, witness_vkey) == body


def test_a_bad_signature_from_the_key_rejects_the_note_even_beside_a_good_one(log_key):
    private, vkey = log_key
    body = Checkpoint(ORIGIN, 5, ROOT).body()
    good = signature_line(note.sign_note(body, ORIGIN, private))
    other = signature_line(note.sign_note(body + b"x\n", ORIGIN, private))  # same key id
    for lines in ((good, other), (other, good)):
        with pytest.raises(NoteError):
            note.open_note(body.decode() + "\n" + "".join(lines), vkey)


def test_unknown_signature_lines_must_still_be_well_formed(log_key):
    private, vkey = log_key
    signed = note.sign_note(Checkpoint(ORIGIN, 5, ROOT).body(), ORIGIN, private)
    for line in (
        "\u2014 other.example/k not*base64\n",
        "\u2014 other.example/k AAAA\n",  # too short for a key id and a signature
        "\u2014 Bad Name " + "A" * 92 + "\n",  # a name with a space
        "- other.example/k AAAAAAAA\n",
    ):
        with pytest.raises(NoteError):
            note.open_note(signed + line, vkey)


def test_go_malformed_notes_are_rejected():
    text, peter = GO["text"], signature_line(GO["signed"])
    vkey = GO["verifier_key"]
    bad: list[str | bytes] = [
        text,
        text + "\n",
        text + "\n" + peter[:-1],
        "\x01" + text + "\n" + peter,
        b"\xff" + (text + "\n" + peter).encode(),
        text + "\n" + peter.replace("PeterNeumann", "Bad Name"),
        text + "\n" + peter + "Unexpected line.\n",
        text + "\n" + peter[:60] + "ABCD" + peter[60:],  # invalid signature, right key id
        (text + "\n" + peter).replace("\n", "\r\n"),
    ]
    for msg in bad:
        with pytest.raises(NoteError):
            note.open_note(msg, vkey)


def test_limits_on_signature_count():
    text, peter, vkey = GO["text"], signature_line(GO["signed"]), GO["verifier_key"]
    assert note.open_note(text + "\n" + peter * note.MAX_SIGNATURES, vkey) == text.encode()
    with pytest.raises(NoteError):
        note.open_note(text + "\n" + peter * (note.MAX_SIGNATURES + 1), vkey)


def test_limits_on_size(log_key):
    private, vkey = log_key
    overhead = len(note.sign_note(b"\n", ORIGIN, private).encode()) - 1
    at_limit = b"x" * (note.MAX_NOTE_LEN - overhead - 1) + b"\n"
    signed = note.sign_note(at_limit, ORIGIN, private)
    assert len(signed.encode()) == note.MAX_NOTE_LEN
    assert note.open_note(signed, vkey) == at_limit
    over = note.sign_note(b"x" + at_limit, ORIGIN, private)
    for message in (over, over.encode(), signed.replace("x", "\u00e9", 1)):
        with pytest.raises(NoteError):
            note.open_note(message, vkey)


def test_sign_note_refuses_text_that_is_not_a_note_body(log_key):
    private, _ = log_key
    for body in (b"", b"no newline", b"tab\there\n", b"\xff\n", b"cr\r\n"):
        with pytest.raises(NoteError):
            note.sign_note(body, ORIGIN, private)
    with pytest.raises(ValueError):
        note.sign_note(b"ok\n", ORIGIN, private[:31])


def test_note_text_may_hold_blank_lines(log_key):
    private, vkey = log_key
    body = b"first\n\nthird\n\n"
    assert note.open_note(note.sign_note(body, ORIGIN, private), vkey) == body


# -- Verifier keys and key names -----------------------------------------------------------


def test_verifier_key_layout():
    name, seed = go_private_key(GO["private_key"])
    public = prim.ed25519_public_key(seed)
    vkey = note.encode_verifier_key(name, public)
    vname, kid, key = vkey.split("+", 2)
    assert vname == name
    assert kid == note.key_id(name, public).hex()
    assert base64.b64decode(key) == b"\x01" + public
    assert note.parse_verifier_key(vkey) == (name, public)


def test_every_mangled_go_verifier_key_is_rejected():
    vkey = GO["verifier_key"]
    for i in range(len(vkey) + 1):
        for j in range(i + 1, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                with pytest.raises(NoteError):
                    note.parse_verifier_key(vkey[i:j])
    for i in range(len(vkey)):
        with pytest.raises(NoteError):
            note.parse_verifier_key(vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :])
    for bad in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # length
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # algorithm
        vkey.replace("c74f20a3", "C74F20A3"),
        vkey + "\n",
        "",
        "+",
        "++",
    ):
        with pytest.raises(NoteError):
            note.parse_verifier_key(bad)


@pytest.mark.parametrize(
    "name", ["", "a b", "a+b", "tab\t", "nbsp\u00a0", "em\u2003space", "nl\n", "ctl\x01", "\ud800"]
)
def test_invalid_key_names_are_refused(name):
    _, public = prim.ed25519_generate()
    with pytest.raises(NoteError):
        note.encode_verifier_key(name, public)
    with pytest.raises(NoteError):
        note.key_id(name, public)


def test_key_names_may_be_any_other_unicode():
    private, public = prim.ed25519_generate()
    name = "réel.example/\u2014log"
    vkey = note.encode_verifier_key(name, public)
    assert note.parse_verifier_key(vkey) == (name, public)
    assert note.open_note(note.sign_note(b"hi\n", name, private), vkey) == b"hi\n"


def test_key_id_binds_name_and_key():
    _, a = prim.ed25519_generate()
    _, b = prim.ed25519_generate()
    assert len(note.key_id("n", a)) == 4
    assert note.key_id("n", a) != note.key_id("m", a)
    assert note.key_id("n", a) != note.key_id("n", b)
    with pytest.raises(NoteError):
        note.key_id("n", a[:31])


# -- Checkpoint parsing --------------------------------------------------------------------


def _text(size: str = "5", root: str | None = None, origin: str = ORIGIN, tail: str = "") -> bytes:
    root = base64.b64encode(ROOT).decode() if root is None else root
    return f"{origin}\n{size}\n{root}\n{tail}".encode()


def test_checkpoint_sizes_are_strict_decimal():
    assert note.parse_checkpoint(_text("0")).size == 0
    assert note.parse_checkpoint(_text(str(2**64 - 1))).size == 2**64 - 1
    for bad in ("", "00", "05", "+5", "-1", " 5", "5 ", "1_000", "0x5", "\u0663", "5.0", "1e3"):
        with pytest.raises(NoteError):
            note.parse_checkpoint(_text(bad))
    for bad in (str(2**64), "9" * 5000):
        with pytest.raises(NoteError):
            note.parse_checkpoint(_text(bad))


def test_checkpoint_root_hash_is_canonical_base64_of_32_bytes():
    good = base64.b64encode(ROOT).decode()
    for bad in (
        "",
        good.rstrip("="),
        good[:-2] + "1=",  # non-zero trailing bits: another spelling of other bytes
        base64.b64encode(ROOT[:31]).decode(),
        base64.b64encode(ROOT + b"\x00").decode(),
        base64.urlsafe_b64encode(bytes([0xFB] * 32)).decode(),
        " " + good,
    ):
        with pytest.raises(NoteError):
            note.parse_checkpoint(_text(root=bad))


def test_checkpoint_shape_is_strict():
    assert note.parse_checkpoint(_text(tail="a\nb c\n")).extensions == ("a", "b c")
    bad_texts = [
        _text(origin=""),
        _text(tail="\n"),  # empty extension line
        _text(tail="a\n\nb\n"),
        _text()[:-1],  # no final newline
        f"{ORIGIN}\n5\n".encode(),
        b"",
        b"\xff" + _text(),
        _text(origin="tab\there"),
        _text().replace(b"\n", b"\r\n"),
    ]
    for text in bad_texts:
        with pytest.raises(NoteError):
            note.parse_checkpoint(text)


def test_checkpoint_refuses_values_it_could_not_write():
    for args in (
        ("", 1, ROOT),
        ("two\nlines", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, 2**64, ROOT),
        (ORIGIN, 1, ROOT[:31]),
        (ORIGIN, 1, ROOT, ("",)),
        (ORIGIN, 1, ROOT, ("a\nb",)),
    ):
        with pytest.raises(NoteError):
            Checkpoint(*args)


# -- The Ed25519 primitives ----------------------------------------------------------------


def test_ed25519_round_trip_and_rejections():
    private, public = prim.ed25519_generate()
    assert len(private) == len(public) == 32
    assert prim.ed25519_public_key(private) == public
    signature = prim.ed25519_sign(private, b"message")
    assert len(signature) == 64
    assert prim.ed25519_sign(private, b"message") == signature  # deterministic
    assert prim.ed25519_verify(public, signature, b"message")
    assert not prim.ed25519_verify(public, signature, b"messagE")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not prim.ed25519_verify(public, flipped, b"message")
    _, other = prim.ed25519_generate()
    assert not prim.ed25519_verify(other, signature, b"message")


@pytest.mark.parametrize(
    ("public", "signature"),
    [
        (b"", b""),
        (bytes(31), bytes(64)),
        (bytes(33), bytes(64)),
        (bytes(32), bytes(63)),
        (bytes(32), bytes(64)),
        (b"\xff" * 32, b"\xff" * 64),  # not a curve point, not a canonical scalar
    ],
)
def test_ed25519_verify_never_raises_on_bad_input(public, signature):
    assert prim.ed25519_verify(public, signature, b"message") is False


def test_ed25519_private_key_must_be_a_seed():
    for bad in (b"", bytes(31), bytes(64)):
        with pytest.raises(ValueError):
            prim.ed25519_sign(bad, b"m")
        with pytest.raises(ValueError):
            prim.ed25519_public_key(bad)
