"""Files that hold secrets (keyrings, API key secrets, dev credentials).

One rule for creating them, in one place: only a new file (``O_EXCL``: an existing file is
never overwritten), never through a symbolic link (``O_NOFOLLOW``: a link planted at the
path is refused, whether or not its target exists), readable and writable by the owner
alone (mode 0600, which a umask can only narrow), and not inherited by child processes.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["NEW_PRIVATE_FILE", "create_private"]

NEW_PRIVATE_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""``os.open`` flags for a new secret file."""


def create_private(path: str | os.PathLike[str]) -> int:
    """Create ``path`` as described above and return its descriptor, open for writing.

    Raises:
        FileExistsError: something (a file, a directory, a link) is already there.
        OSError: the file cannot be created.
    """
    return os.open(path, NEW_PRIVATE_FILE, 0o600)
