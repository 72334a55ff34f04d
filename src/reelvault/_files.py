"""Files that hold secrets or metadata (keyrings, API key secrets, dev credentials, the
SQLite catalog, logs), and the lock files that keep two processes off one directory.

One rule for creating them, in one place: never through a symbolic link (``O_NOFOLLOW``: a
link planted at the path is refused, whether or not its target exists), readable and
writable by the owner alone (mode 0600, which a umask can only narrow; directories 0700),
and not inherited by child processes (``O_CLOEXEC``). A secret is only ever written to a
new file (``O_EXCL``: an existing file is never overwritten) or swapped in whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from typing import Final

__all__ = [
    "NEW_PRIVATE_FILE",
    "append_private",
    "create_private",
    "ensure_private",
    "lock_holder",
    "replace_private",
    "try_lock",
]

NEW_PRIVATE_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""``os.open`` flags for a new secret file."""

_PRIVATE: Final = 0o600


def create_private(path: str | os.PathLike[str]) -> int:
    """Create ``path`` as described above and return its descriptor, open for writing.

    Raises:
        FileExistsError: something (a file, a directory, a link) is already there.
        OSError: the file cannot be created.
    """
    return os.open(path, NEW_PRIVATE_FILE, _PRIVATE)


def ensure_private(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty (mode 0600; a missing directory 0700) unless something is there.

    For files another library creates with the umask's mode (SQLite makes its database
    0644 under the usual umask, and gives its ``-wal`` and ``-shm`` files the database's
    mode): created first, they keep ours. An existing file is left as it is.

    Raises:
        OSError: the file cannot be created.
    """
    Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(create_private(path))


def append_private(path: str | os.PathLike[str]) -> int:
    """Open the log ``path`` for appending, creating it (mode 0600) if missing; its
    descriptor. An existing log is narrowed to 0600: an older version made it 0644."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, _PRIVATE)
    try:
        os.fchmod(fd, _PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a new file moved over it, so a
    reader sees the old content or the new, never half of it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        with open(create_private(temporary), "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def try_lock(path: str | os.PathLike[str]) -> int | None:
    """Take an exclusive lock on ``path`` and record this process's id in it.

    The lock is a ``flock`` on the file (created mode 0600 if missing), held while the
    returned descriptor is open. Closing it releases the lock, and so does the process
    ending in any way, ``kill -9`` included, so a lock is never stale (the file stays
    behind, harmless). Any other open of the file is refused, in this process too.

    Returns:
        The descriptor holding the lock; None when someone else holds it
        (:func:`lock_holder` says who).

    Raises:
        OSError: the file cannot be created or opened.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _PRIVATE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(path: str | os.PathLike[str]) -> int | None:
    """The process id the holder of the lock ``path`` recorded; None if unknown."""
    try:
        return int(Path(path).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
