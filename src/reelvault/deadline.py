"""Bounded waits: the caller's deadline, carried to every dependency call.

The transport edge binds the call's deadline (:func:`bound`) for the call's steps; it is
a context variable, so it follows a call into the worker threads that run the domain
(``asyncio.to_thread`` and :func:`reelvault.rpc.pools.run` copy the context). Dependency
clients ask :func:`remaining` before they start an attempt, and refuse to start one that
cannot finish in time, and the catalog sends no statement once it has passed
(``catalog.db``): work for a caller who has given up stops at the next request boundary
instead of running on for minutes.

:func:`bound_botocore` applies this, and a per-operation budget, to a botocore client
(the object store, KMS): each API call (one part, one range, one key unwrap) may take at
most ``budget`` seconds across all its attempts, whatever botocore's retry policy would
do, and a retry is only started if a whole attempt (connect plus read timeout) fits in
what is left. botocore retries only what is safe to repeat: every S3 and KMS request
reelvault makes is idempotent (a part upload overwrites its part number, a delete of a
deleted key succeeds), except CreateMultipartUpload, whose duplicate is an unreferenced
multipart upload that ``reelvault gc`` aborts, and CompleteMultipartUpload, whose retry
after a lost answer finds the upload gone: the S3 store then takes the object's ETag from
a HEAD (``storage.s3``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from reelvault.errors import DeadlineExceeded, Unavailable

__all__ = ["bound", "bound_botocore", "check", "remaining"]

_deadline: ContextVar[float | None] = ContextVar("reelvault_deadline", default=None)
_CALL_STARTED: Final = "reelvault_started"


@contextmanager
def bound(deadline: float | None) -> Iterator[None]:
    """Bind ``deadline`` (on :func:`time.monotonic`; None: no deadline) for the block."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left before the bound deadline, or None without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def check() -> None:
    """Raise :class:`~reelvault.errors.DeadlineExceeded` if the bound deadline passed."""
    left = remaining()
    if left is not None and left <= 0:
        raise DeadlineExceeded()


def bound_botocore(client: Any, *, budget: float, attempt: float, name: str) -> None:
    """Give every API call of a botocore ``client`` an overall budget and make it honour
    the caller's deadline (module docstring).

    Args:
        budget: seconds one API call may take, retries included.
        attempt: the most one attempt can take (connect plus read timeout).
        name: the dependency, for the error message (``object store``, ``key provider``).
    """

    def before_call(context: Any = None, **_: Any) -> None:
        if context is not None:
            context[_CALL_STARTED] = time.monotonic()

    def before_send(request: Any = None, **_: Any) -> None:
        context = getattr(request, "context", None) or {}
        started = context.get(_CALL_STARTED)
        check()
        if started is None:
            return
        if context.get("retries", {}).get("attempt", 1) <= 1:
            return  # the first attempt always runs; its own timeouts bound it
        if time.monotonic() - started + attempt > budget:
            raise Unavailable(f"{name} unavailable")
        left = remaining()
        if left is not None and left < attempt:
            raise DeadlineExceeded()

    client.meta.events.register("before-call", before_call)
    client.meta.events.register("before-send", before_send)
