"""Signed checkpoints: C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures,
carrying a C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint) as their text.

A checkpoint in this format can be checked by any witness or monitor that speaks the
transparency-log ecosystem's formats (Go's golang.org/x/mod/sumdb/note, sigsum, the
transparency-dev witness), so the audit log's promises can be audited without our code.
A signed checkpoint, as UTF-8 text::

    example.com/reelvault/audit              origin: one non-empty line
    20852163                                 tree size: ASCII decimal, no leading zeros
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=    root hash: std base64, padded, 32 bytes
    [extension line ...]                     optional, each non-empty
                                             blank line: the last one ends the text
    — example.com/reelvault/audit Az3grlgt...=      one line per signature

The note text (what is signed, and what :func:`open_note` returns) is everything up to and
including the newline before the last blank line. A signature line is an em dash (U+2014),
a space, the key name, a space, and base64 of::

    0    4     key id       SHA-256(key name || 0x0A || 0x01 || public key)[:4]
    4    64    Ed25519 signature of the note text (RFC 8032)

A verifier key, which clients configure out of band, names the key and carries it::

    <key name>+<hex(key id), 8 lowercase digits>+<base64(0x01 || 32-byte public key)>

Key names are non-empty and contain neither Unicode spaces nor "+". Notes are UTF-8 with no
control characters other than newline. Signature lines from keys other than the one asked
for are ignored, as the spec requires, so that witnesses can cosign and logs can rotate
keys; a line that claims the asked-for key but does not verify rejects the whole note.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from reelvault.audit.merkle import HASH_LEN
from reelvault.crypto import signing as prim

__all__ = [
    "Checkpoint",
    "MAX_NOTE_LEN",
    "MAX_SIGNATURES",
    "NoteError",
    "encode_verifier_key",
    "key_id",
    "open_note",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_note",
]

MAX_NOTE_LEN: Final = 1 << 20
"""Notes come from the network; larger ones are refused before they are parsed."""
MAX_SIGNATURES: Final = 100
"""The spec asks verifiers to cap signatures (and to accept at least 16)."""

_ED25519: Final = b"\x01"  # signature type byte, c2sp.org/signed-note
_SIG_PREFIX: Final = "\u2014 "
_MAX_TREE_SIZE: Final = (1 << 64) - 1  # other implementations parse the size as uint64
_DECIMAL: Final = re.compile(r"0|[1-9][0-9]{0,19}")
_KEY_ID_HEX: Final = re.compile(r"[0-9a-f]{8}")
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f]")


class NoteError(ValueError):
    """A note, checkpoint or verifier key that is malformed or not signed by the given key."""


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: padded, nothing outside the alphabet, one spelling per value.

    Lenient decoding would let two texts carry the same bytes; strictness costs nothing
    against writers that follow RFC 4648, as every known implementation does.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _is_line(text: str) -> bool:
    """Whether ``text`` can be one line of a note: no newline or other control character."""
    if any(ch < " " for ch in text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form
        return False
    return True


def _check_name(name: str) -> None:
    if not name or "+" in name or any(ch.isspace() for ch in name) or not _is_line(name):
        raise NoteError(f"invalid key name {name!r}: needs no spaces, '+' or control chars")


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("note is not valid UTF-8") from None
    if _CONTROL.search(text):
        raise NoteError("note contains a control character other than newline")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: the note text a log signs, c2sp.org/tlog-checkpoint.

    Validated on construction, so that :meth:`body` always gives text that
    :func:`parse_checkpoint` (and other implementations) accept.

    Raises:
        NoteError: on an empty or multi-line origin, a size outside 0..2**64-1, a root hash
            that is not 32 bytes, or an empty or multi-line extension.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or not _is_line(self.origin):
            raise NoteError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError(f"checkpoint size {self.size} is out of range")
        if len(self.root_hash) != HASH_LEN:
            raise NoteError(f"checkpoint root hash must be {HASH_LEN} bytes")
        if not all(ext and _is_line(ext) for ext in self.extensions):
            raise NoteError("checkpoint extension lines must be non-empty single lines")

    def body(self) -> bytes:
        """The note text: origin, size, root hash and extensions, each ending in newline."""
        lines = (self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions)
        return "".join(line + "\n" for line in lines).encode("utf-8")


def parse_checkpoint(body: bytes) -> Checkpoint:
    """The checkpoint in a note text, parsed strictly: one spelling per checkpoint.

    Every checkpoint has exactly one valid text, so two witnesses comparing bytes and two
    comparing parsed values always agree.

    Raises:
        NoteError: on anything but the tlog-checkpoint format: fewer than three lines, a
            size with a sign, spaces or leading zeros, a root hash that is not canonical
            base64 of 32 bytes, an empty line, or text that is not UTF-8 ending in newline.
    """
    text = _decode(body)
    if not text.endswith("\n"):
        raise NoteError("checkpoint must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs origin, size and root hash lines")
    origin, size_text, hash_text, *extensions = lines
    if not _DECIMAL.fullmatch(size_text):
        raise NoteError("checkpoint size must be decimal digits without leading zeros")
    root_hash = _b64decode(hash_text, "checkpoint root hash")
    return Checkpoint(origin, int(size_text), root_hash, tuple(extensions))


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4].

    Binding the name and the signature type means the same key under another name, or
    another algorithm's key with the same bytes, gets a different id.

    Raises:
        NoteError: if the name is invalid or the key is not 32 bytes.
    """
    _check_name(name)
    if len(public_key) != prim.ED25519_KEY_LEN:
        raise NoteError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519 + public_key).digest()[:4]


def encode_verifier_key(name: str, public_key: bytes) -> str:
    """The verifier key string ``name+hex(key id)+base64(0x01 || public key)``.

    Raises:
        NoteError: if the name is invalid or the key is not 32 bytes.
    """
    kid = key_id(name, public_key)
    return f"{name}+{kid.hex()}+{_b64encode(_ED25519 + public_key)}"


def parse_verifier_key(vkey: str) -> tuple[str, bytes]:
    """The key name and 32-byte Ed25519 public key of a verifier key string.

    Raises:
        NoteError: if the string is malformed, names another signature type, or its key
            id does not match its name and key (a typo, caught before any note is read).
    """
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError("a verifier key is name+keyid+key")
    name, kid_hex, key_b64 = parts
    _check_name(name)
    if not _KEY_ID_HEX.fullmatch(kid_hex):
        raise NoteError("verifier key id must be 8 lowercase hex digits")
    key = _b64decode(key_b64, "verifier key")
    if key[:1] != _ED25519:
        raise NoteError("verifier key is not an Ed25519 key (signature type 0x01)")
    public_key = key[1:]
    if key_id(name, public_key).hex() != kid_hex:
        raise NoteError("verifier key id does not match its name and key")
    return name, public_key


def sign_note(body: bytes, name: str, private_raw: bytes) -> str:
    """The signed note: ``body``, a blank line, and one Ed25519 signature line by ``name``.

    Raises:
        NoteError: if the body is not valid note text (UTF-8 ending in newline, no control
            characters but newline) or the name is invalid.
        ValueError: if the private key is not a 32-byte Ed25519 seed.
    """
    text = _decode(body)
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    _check_name(name)
    kid = key_id(name, prim.ed25519_public_key(private_raw))
    signature = prim.ed25519_sign(private_raw, body)
    return f"{text}\n{_SIG_PREFIX}{name} {_b64encode(kid + signature)}\n"


def open_note(note: str | bytes, verifier_key: str) -> bytes:
    """The note text, once a signature by the key of ``verifier_key`` verifies.

    Signature lines of other keys (other names, or the same name with another key id) are
    ignored. Every line of the given key must verify, not just one: a bad signature from a
    trusted key means something is wrong, and the spec asks clients to reject the note.

    Raises:
        NoteError: if the verifier key or the note is malformed, the note is over
            :data:`MAX_NOTE_LEN` bytes or has more than :data:`MAX_SIGNATURES` signature
            lines, a signature of the key does not verify, or none is present.
    """
    name, public_key = parse_verifier_key(verifier_key)
    kid = key_id(name, public_key)
    if isinstance(note, str):
        if len(note) > MAX_NOTE_LEN:
            raise NoteError(f"note is over {MAX_NOTE_LEN} bytes")
        try:
            raw = note.encode("utf-8")
        except UnicodeEncodeError:
            raise NoteError("note is not valid UTF-8") from None
    else:
        raw = bytes(note)
    if len(raw) > MAX_NOTE_LEN:
        raise NoteError(f"note is over {MAX_NOTE_LEN} bytes")
    _decode(raw)
    split = raw.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    body, signatures = raw[: split + 1], raw[split + 2 :].decode("utf-8")
    if not signatures.endswith("\n"):
        raise NoteError("note signatures must end with a newline")
    lines = signatures[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    verified = False
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("note signature line must start with an em dash and a space")
        sig_name, _, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        _check_name(sig_name)
        blob = _b64decode(sig_b64, "note signature")
        if len(blob) < 5:
            raise NoteError("note signature is too short")
        if sig_name != name or blob[:4] != kid:
            continue
        if not prim.ed25519_verify(public_key, blob[4:], body):
            raise NoteError(f"invalid signature for key {name}+{kid.hex()}")
        verified = True
    if not verified:
        raise NoteError(f"note has no signature from key {name}+{kid.hex()}")
    return body
