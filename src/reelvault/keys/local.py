"""Root keys kept in a local keyring file.

The keyring file is the root of every tenant key when reelvault runs without a KMS: each
tenant KEK in the database is wrapped under one of its versions. That makes the file's
backup story the vault's backup story:

* Losing the file loses every tenant key, and with them every asset and payload. Back it
  up when it is created and after every rotation.
* Keep that backup apart from database backups. The database holds only wrapped keys and
  is harmless alone; a backup holding both the database and this file is a full
  compromise of every tenant.

File format (JSON, UTF-8, mode 0600, owned by the user running reelvault)::

    {
      "format": "reelvault-keyring",
      "format_version": 1,
      "active_version": 2,
      "keys": [
        {"version": 1, "created_at": "2026-01-05T10:00:00Z", "material": "<base64, 32 bytes>"},
        {"version": 2, "created_at": "2026-04-05T10:00:00Z", "material": "<base64, 32 bytes>"}
      ]
    }

Versions are never removed: rotation adds a version and makes it active, so keys wrapped
under older versions stay readable until they are rewrapped. A running service reads the
file once at start; restart it after a rotation.

The file is refused, rather than repaired, when it is a symlink, is not owned by the
current user, or can be read or written by group or others: a key file that was exposed
should be noticed by an operator, not silently tightened.

Wrapped key layout (65 bytes)::

    offset  size  field
    0       1     format, 0x01
    1       4     root key version, uint32 BE
    5       12    nonce, random
    17      48    AES-256-GCM(root key, nonce, tenant key (32 bytes), AAD) ciphertext || tag

    AAD = b"reelvault/local-keyring/wrap\\x00" || bytes 0..4 || serialize_context(context)

The AAD binds the blob to its format, its root key version and the encryption context, so
a blob copied to another tenant's row, or relabelled with another version, fails to unwrap.
Wrapping: pick the active version, draw a nonce, seal, concatenate. Unwrapping: check the
length and format byte, look the version up, rebuild the AAD from the header and the
context the caller expects, open. Every failure is the same opaque ``DecryptionError``.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import os
import shlex
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeGuard

from reelvault import errors
from reelvault._files import create_private
from reelvault.clock import Clock, SystemClock
from reelvault.crypto._primitives import (
    KEY_LEN,
    NONCE_LEN,
    TAG_LEN,
    Aead,
    AuthenticationFailed,
    random_bytes,
)
from reelvault.crypto.context import serialize_context
from reelvault.keys.provider import WrappedKey

__all__ = [
    "KeyringInfo",
    "LocalKeyring",
    "RootKeyVersion",
    "init_keyring",
    "read_keyring_info",
    "rotate_keyring",
]

FILE_FORMAT: Final = "reelvault-keyring"
FILE_FORMAT_VERSION: Final = 1
MAX_ROOT_VERSION: Final = 0xFFFFFFFF

_BLOB_FORMAT: Final = 0x01
_HEADER = struct.Struct(">BI")
_BLOB_LEN: Final = _HEADER.size + NONCE_LEN + KEY_LEN + TAG_LEN
_AAD_LABEL: Final = b"reelvault/local-keyring/wrap\x00"

# A keyring holds a few dozen versions at most; anything this large is not a keyring.
_MAX_FILE_SIZE: Final = 1 << 20

# O_NONBLOCK: opening a FIFO planted at the path must not hang; it is then refused as
# "not a regular file". It changes nothing for regular files.
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_SYSTEM_CLOCK: Final = SystemClock()

PathArg = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class RootKeyVersion:
    """What may be shown about a root key version: never its material."""

    version: int
    created_at: str


@dataclass(frozen=True, slots=True)
class KeyringInfo:
    """The public description of a keyring file, for ``reelvault keyring show``."""

    path: str
    active_version: int
    versions: tuple[RootKeyVersion, ...]


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int
    created_at: str
    material: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Document:
    """The parsed file. Private so that key material never travels past this module."""

    active_version: int
    entries: tuple[_Entry, ...]

    def info(self, path: PathArg) -> KeyringInfo:
        return KeyringInfo(
            path=os.fspath(path),
            active_version=self.active_version,
            versions=tuple(RootKeyVersion(e.version, e.created_at) for e in self.entries),
        )

    def with_new_version(self, clock: Clock) -> _Document:
        version = max(e.version for e in self.entries) + 1
        if version > MAX_ROOT_VERSION:
            raise errors.ConfigurationError("keyring has no root key versions left")
        entry = _Entry(version, _timestamp(clock), random_bytes(KEY_LEN))
        return _Document(active_version=version, entries=(*self.entries, entry))

    def to_bytes(self) -> bytes:
        document = {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "active_version": self.active_version,
            "keys": [
                {
                    "version": e.version,
                    "created_at": e.created_at,
                    "material": base64.b64encode(e.material).decode("ascii"),
                }
                for e in self.entries
            ],
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")


class LocalKeyring:
    """A :class:`~reelvault.keys.provider.RootKeyProvider` over the versions of a keyring.

    New keys are wrapped under the active version; any version in the keyring unwraps.
    Only :class:`Aead` objects are kept, never the raw material, so nothing on this object
    can print a key.
    """

    __slots__ = ("_active_version", "_aeads")

    def __init__(self, keys: Mapping[int, bytes], active_version: int) -> None:
        """Build a keyring from root keys by version.

        Production code uses :meth:`load`; building one directly gives tests and
        throwaway development servers a provider without a file.

        Args:
            keys: 32-byte root keys by version (1 .. 2**32-1).
            active_version: the version new keys are wrapped under.
        """
        if active_version not in keys:
            raise ValueError("the active root key version is not in the keyring")
        for version in keys:
            if not 1 <= version <= MAX_ROOT_VERSION:
                raise ValueError("root key versions must fit in a uint32 and start at 1")
        self._aeads = {version: Aead(material) for version, material in keys.items()}
        self._active_version = active_version

    @classmethod
    def load(cls, path: PathArg) -> LocalKeyring:
        """Read and check a keyring file (see the module docstring for what is refused).

        Raises:
            ConfigurationError: the file is missing, unsafe or malformed.
        """
        document = _read_document(path)
        return cls({e.version: e.material for e in document.entries}, document.active_version)

    @property
    def active_version(self) -> int:
        return self._active_version

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._aeads))

    def generate_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        key = random_bytes(KEY_LEN)
        return key, self._wrap(key, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        blob = wrapped.ciphertext
        if len(blob) != _BLOB_LEN:
            raise errors.DecryptionError("wrapped key has the wrong length")
        blob_format, version = _HEADER.unpack_from(blob)
        if blob_format != _BLOB_FORMAT:
            raise errors.DecryptionError("unknown wrapped key format")
        if wrapped.root_key_id != _root_key_id(version):
            raise errors.DecryptionError("root key id does not match the wrapped key")
        aead = self._aeads.get(version)
        if aead is None:
            raise errors.DecryptionError("root key version not in this keyring")
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_LEN]
        try:
            return aead.open(nonce, blob[_HEADER.size + NONCE_LEN :], _aad(blob, context))
        except AuthenticationFailed:
            raise errors.DecryptionError("authentication failed") from None

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        return self._wrap(self.unwrap(wrapped, context), context)

    def _wrap(self, key: bytes, context: Mapping[str, str]) -> WrappedKey:
        version = self._active_version
        header = _HEADER.pack(_BLOB_FORMAT, version)
        nonce = random_bytes(NONCE_LEN)
        sealed = self._aeads[version].seal(nonce, key, _aad(header, context))
        return WrappedKey(root_key_id=_root_key_id(version), ciphertext=header + nonce + sealed)

    def __repr__(self) -> str:
        return (
            f"LocalKeyring(versions={list(self.versions)}, active_version={self._active_version})"
        )


def init_keyring(path: PathArg, *, clock: Clock = _SYSTEM_CLOCK) -> KeyringInfo:
    """Create a keyring file holding one fresh root key.

    The file is created with ``O_EXCL`` so that an existing keyring, which may be the only
    copy of every root key, is never overwritten; missing parent directories are created
    with mode 0700.

    Raises:
        AlreadyExists: something (a file, a symlink) is already at ``path``.
        ConfigurationError: the file could not be written.
    """
    path = Path(path)
    document = _Document(
        active_version=1, entries=(_Entry(1, _timestamp(clock), random_bytes(KEY_LEN)),)
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = create_private(path)
    except FileExistsError:
        raise errors.AlreadyExists(
            f"keyring file {path} already exists; refusing to overwrite it "
            f"(it may hold the only copy of the root keys)"
        ) from None
    except OSError as exc:
        raise _os_error(path, "create", exc) from None
    _write_and_close(fd, path, document)
    return document.info(path)


def rotate_keyring(path: PathArg, *, clock: Clock = _SYSTEM_CLOCK) -> KeyringInfo:
    """Add a root key version and make it active; every older version is kept.

    The new file is written beside the old one as ``<path>.new`` (created with ``O_EXCL``,
    which also keeps two rotations from running at once and losing a version) and moved
    over it with ``os.replace``, so a crash leaves either the old or the new keyring.

    Raises:
        ConfigurationError: the keyring cannot be read or written, or ``<path>.new``
            exists (a rotation is running or was interrupted).
    """
    path = Path(path)
    staging = path.with_name(path.name + ".new")
    try:
        fd = create_private(staging)
    except FileExistsError:
        raise errors.ConfigurationError(
            f"{staging} exists: another rotation is running or one was interrupted; "
            f"if none is running, check that `reelvault keyring show --path {_q(path)}` "
            f"works and remove {staging}"
        ) from None
    except OSError as exc:
        raise _os_error(staging, "create", exc) from None
    try:
        document = _read_document(path).with_new_version(clock)
    except BaseException:
        os.close(fd)
        staging.unlink()
        raise
    _write_and_close(fd, staging, document)
    try:
        os.replace(staging, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        raise _os_error(path, "replace", exc) from None
    return document.info(path)


def read_keyring_info(path: PathArg) -> KeyringInfo:
    """Versions and creation times of a keyring file, after the same checks as loading."""
    return _read_document(path).info(path)


def _read_document(path: PathArg) -> _Document:
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise errors.ConfigurationError(
            f"keyring file {path} does not exist; create it with "
            f"`reelvault keyring init --path {_q(path)}`"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.ConfigurationError(
                f"keyring file {path} is a symlink; refusing to follow it: "
                f"point reelvault at the real file"
            ) from None
        raise _os_error(path, "open", exc) from None
    try:
        # Checked on the open descriptor, so the file cannot be swapped after the check.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.ConfigurationError(f"keyring file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise errors.ConfigurationError(
                f"keyring file {path} is owned by uid {st.st_uid}, not by the user running "
                f"reelvault (uid {os.geteuid()}); run reelvault as its owner or chown it"
            )
        if st.st_mode & 0o077:
            raise errors.ConfigurationError(
                f"keyring file {path} can be accessed by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {_q(path)}`, and treat "
                f"the root keys in it as exposed if others could have read it"
            )
        with open(fd, "rb", closefd=False) as file:
            data = file.read(_MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise _os_error(path, "read", exc) from None
    finally:
        os.close(fd)
    return _parse(data, path)


def _parse(data: bytes, path: PathArg) -> _Document:
    """Parse strictly. Messages name the field at fault, never its value."""

    def malformed(detail: str) -> errors.ConfigurationError:
        return errors.ConfigurationError(f"keyring file {path} is malformed: {detail}")

    if len(data) > _MAX_FILE_SIZE:
        raise malformed("file is too large")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise malformed("not UTF-8 JSON") from None
    except ValueError:  # an integer past Python's int digit limit (sys.set_int_max_str_digits)
        raise malformed("a number has too many digits") from None
    except RecursionError:
        raise malformed("nested too deeply") from None
    if not isinstance(document, dict):
        raise malformed("not a JSON object")
    if document.get("format") != FILE_FORMAT:
        raise malformed(f'"format" is not "{FILE_FORMAT}"')
    format_version = document.get("format_version")
    if isinstance(format_version, bool) or format_version != FILE_FORMAT_VERSION:
        raise malformed(f"unsupported format_version (this reelvault reads {FILE_FORMAT_VERSION})")
    keys = document.get("keys")
    if not isinstance(keys, list) or not keys:
        raise malformed('"keys" must be a non-empty list')
    entries: list[_Entry] = []
    for index, item in enumerate(keys):
        if not isinstance(item, dict):
            raise malformed(f"keys[{index}] is not an object")
        version = item.get("version")
        if not _is_version(version):
            raise malformed(f"keys[{index}].version is not an integer in 1..{MAX_ROOT_VERSION}")
        if any(e.version == version for e in entries):
            raise malformed(f"root key version {version} appears twice")
        created_at = item.get("created_at")
        if not isinstance(created_at, str) or not _is_timestamp(created_at):
            raise malformed(f"root key version {version}: created_at is not an RFC 3339 time")
        material = _decode_material(item.get("material"))
        if material is None:
            raise malformed(f"root key version {version}: material is not 32 bytes of base64")
        entries.append(_Entry(version, created_at, material))
    active = document.get("active_version")
    if not _is_version(active) or not any(e.version == active for e in entries):
        raise malformed('"active_version" does not name a version in "keys"')
    entries.sort(key=lambda e: e.version)
    return _Document(active_version=active, entries=tuple(entries))


def _is_version(value: object) -> TypeGuard[int]:
    # bool is an int in Python; `true` is not a version.
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ROOT_VERSION


def _is_timestamp(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _decode_material(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        material = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return material if len(material) == KEY_LEN else None


def _write_and_close(fd: int, path: Path, document: _Document) -> None:
    """Write, fsync and close a file just created with O_EXCL; remove it if that fails,
    so a half-written keyring is never left where it would be loaded."""
    try:
        try:
            os.fchmod(fd, 0o600)  # exact mode whatever the umask
            data = memoryview(document.to_bytes())
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(path.parent)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise _os_error(path, "write", exc) from None


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation or rename durable, not only its contents."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(path: PathArg, action: str, exc: OSError) -> errors.ConfigurationError:
    return errors.ConfigurationError(f"cannot {action} keyring file {path}: {exc.strerror}")


def _q(path: PathArg) -> str:
    """Quote a path inside a suggested shell command, so it can be pasted as is."""
    return shlex.quote(os.fspath(path))


def _aad(header: bytes, context: Mapping[str, str]) -> bytes:
    return _AAD_LABEL + header[: _HEADER.size] + serialize_context(context)


def _root_key_id(version: int) -> str:
    return f"local:{version}"


def _timestamp(clock: Clock) -> str:
    return datetime.fromtimestamp(clock.now(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
