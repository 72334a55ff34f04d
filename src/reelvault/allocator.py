"""glibc malloc tuning for a process that moves video in megabyte buffers.

reelvault allocates and frees 1 MiB stream chunks and multi-megabyte upload parts all day.
glibc's defaults serve such blocks with ``mmap`` and hand them back with ``munmap`` (or trim
the heap), so every new buffer faults its pages in again: measured at about twice the CPU
per byte. And every thread that allocates (gRPC's worker pool, upload threads) gets an
arena of its own, up to 8 per core, each keeping its own high-water mark, which lets
resident memory climb from one transfer to the next.

:func:`tune` sets, through ``mallopt(3)``, the values below, which keep large buffers on
one heap that is reused rather than returned. It must run before the process starts
threads (the ``serve`` and ``dev`` commands call it first). A setting the operator chose
is left alone: its ``MALLOC_*`` environment variable is set, or ``GLIBC_TUNABLES`` names
its ``glibc.malloc.*`` tunable. On a C library other than glibc (musl, macOS) it does
nothing. :func:`applied` tells what the last call set, for the service's start-up log.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final, NamedTuple

__all__ = ["SETTINGS", "Setting", "applied", "tune"]

_MIB: Final = 1024 * 1024


class Setting(NamedTuple):
    parameter: int  # the M_* constant of malloc.h
    value: int
    tunable: str  # its name in GLIBC_TUNABLES


# name of the environment variable -> what mallopt is asked
SETTINGS: Final[dict[str, Setting]] = {
    # give freed memory back only when more than 1 GiB of the heap's top is free
    "MALLOC_TRIM_THRESHOLD_": Setting(-1, 1024 * _MIB, "glibc.malloc.trim_threshold"),
    # grow the heap in 64 MiB steps
    "MALLOC_TOP_PAD_": Setting(-2, 64 * _MIB, "glibc.malloc.top_pad"),
    # serve blocks below 32 MiB (every chunk, frame and default-size part) from the heap;
    # 32 MiB is the most any 64-bit glibc accepts (larger values fail on older ones)
    "MALLOC_MMAP_THRESHOLD_": Setting(-3, 32 * _MIB, "glibc.malloc.mmap_threshold"),
    # one arena for every thread: a single high-water mark instead of one per thread
    "MALLOC_ARENA_MAX": Setting(-8, 1, "glibc.malloc.arena_max"),
}

_applied: dict[str, int] = {}


def tune() -> dict[str, int]:
    """Apply :data:`SETTINGS` the operator did not set; return what was applied."""
    _applied.clear()
    if platform.libc_ver()[0] != "glibc":
        return {}
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already uses
    except (OSError, AttributeError):
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    chosen = {part.split("=", 1)[0] for part in tunables.split(":") if part}
    for name, setting in SETTINGS.items():
        if name in os.environ or setting.tunable in chosen:
            continue
        if mallopt(setting.parameter, setting.value) == 1:  # mallopt returns 1 on success
            _applied[name] = setting.value
    return dict(_applied)


def applied() -> dict[str, int]:
    """What the last :func:`tune` set (empty if it was not called, or set nothing)."""
    return dict(_applied)
