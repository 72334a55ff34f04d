"""Bulkheads: store-bound work runs on its own threads, behind admission control.

The domain is synchronous, so every call waits in a worker thread. Before this split, all
of them shared asyncio's default executor: a stalled object store held every thread with
pending range reads, and StatAsset or GetTenant, which only read the catalog, queued
behind them until their deadlines passed, while health still said SERVING.

Now a call that waits on the object store (an upload's parts, a download's frames, the
deletion of an object) first takes an admission slot (:mod:`reelvault.admission`), refused
at once beyond the limits, and then runs its blocking steps on the :class:`StorePool`,
which has exactly one thread per slot. Those steps therefore never queue, and never take
a thread from the default executor, where the catalog-only calls, authentication and the
audit log's writes run. However many store-bound calls are pending, the catalog-only
calls keep their threads. A slot is held until its call's last thread has finished, even
when the caller has gone (:func:`run_to_end`), so cancelled calls cannot pile work onto
the pool beyond the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from reelvault.admission import Admission, Slot

__all__ = ["StorePool", "admitted", "run", "run_to_end", "submit"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StorePool(ThreadPoolExecutor):
    """The threads of store-bound calls: one per admission slot."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(max_workers=admission.total_slots, thread_name_prefix="reelvault-store")


async def run(
    function: Callable[..., _T], *args: Any, pool: ThreadPoolExecutor | None, **kwargs: Any
) -> _T:
    """Run ``function(*args, **kwargs)`` in a worker thread of ``pool`` (None: asyncio's
    default executor), with the caller's context variables (the principal, the audit
    access, the deadline), as :func:`asyncio.to_thread` does."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


def submit(
    function: Callable[..., _T], *args: Any, pool: ThreadPoolExecutor | None
) -> asyncio.Future[_T]:
    """:func:`run`, started now and awaited later: the future of ``function(*args)`` in a
    worker thread of ``pool``, with the caller's context variables. A stream fetches its
    next chunks with it while gRPC is still sending the last ones.

    Await the future (or retrieve its exception) in every case; cancelling it does not
    stop a function that has started."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(pool, context.run, function, *args)


async def run_to_end(
    function: Callable[..., _T],
    *args: Any,
    pool: ThreadPoolExecutor | None,
    undo: Callable[[_T], object] | None = None,
) -> _T:
    """:func:`run`, for a caller that holds an admission slot: if the caller is cancelled
    while the thread runs, wait for the thread to finish before the cancellation goes on
    (so the slot stays held as long as its thread is busy), then ``undo(result)`` (in a
    worker thread: an upload begun for a caller who left is aborted)."""
    future = asyncio.ensure_future(run(function, *args, pool=pool))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            result = await asyncio.shield(future)
            if undo is not None:
                await asyncio.shield(run(undo, result, pool=pool))
        raise


def admitted(
    kind: str, tenant: Callable[[], str | None]
) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Awaitable[_T]]]:
    """Decorate a servicer coroutine (``self`` with an ``_admission``) so that it holds an
    admission slot of ``kind`` for the caller's tenant (``tenant()``) while it runs."""

    def decorate(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
        @functools.wraps(method)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            servicer: Any = args[0]
            slot: Slot = servicer._admission.acquire(kind, tenant())
            try:
                return await method(*args, **kwargs)
            finally:
                slot.release()

        return wrapper

    return decorate
