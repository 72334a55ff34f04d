"""glibc malloc tuning for a process that moves video in megabyte buffers.

reelvault allocates and frees 1 MiB stream chunks and multi-megabyte upload parts all day.
glibc's defaults serve such blocks with ``mmap`` and hand them back with ``munmap`` (or trim
the heap), so every new buffer faults its pages in again: measured at about twice the CPU
per byte. And every thread that allocates (gRPC's worker pool, upload threads) gets an
arena of its own, up to 8 per core, each keeping its own high-water mark, which lets
resident memory climb from one transfer to the next.

:func:`tune` sets, through ``mallopt(3)``, the values below, which keep large buffers on
one heap that is reused rather than returned. It must run before the process starts
threads (the ``serve`` and ``dev`` commands call it first). A setting whose ``MALLOC_*``
environment variable is set is left alone, so an operator can override any of them the
usual glibc way. On a C library other than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Final

__all__ = ["SETTINGS", "tune"]

_MIB: Final = 1024 * 1024

# name of the environment variable -> (mallopt parameter number from malloc.h, value)
SETTINGS: Final[dict[str, tuple[int, int]]] = {
    # give freed memory back only when more than 1 GiB of the heap's top is free
    "MALLOC_TRIM_THRESHOLD_": (-1, 1024 * _MIB),
    # grow the heap in 64 MiB steps
    "MALLOC_TOP_PAD_": (-2, 64 * _MIB),
    # serve blocks below 64 MiB from the heap instead of fresh mmaps
    "MALLOC_MMAP_THRESHOLD_": (-3, 64 * _MIB),
    # one arena for every thread: a single high-water mark instead of one per thread
    "MALLOC_ARENA_MAX": (-8, 1),
}


def tune() -> dict[str, int]:
    """Apply :data:`SETTINGS` not overridden by the environment; return what was applied."""
    if platform.libc_ver()[0] != "glibc":
        return {}
    path = ctypes.util.find_library("c")
    if path is None:
        return {}
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: dict[str, int] = {}
    for name, (parameter, value) in SETTINGS.items():
        if name in os.environ:
            continue
        if mallopt(parameter, value) == 1:  # mallopt returns 1 on success
            applied[name] = value
    return applied
