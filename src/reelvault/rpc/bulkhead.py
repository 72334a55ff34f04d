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
calls keep their threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from reelvault.admission import Admission, Slot

__all__ = ["StorePool", "admitted", "bind_pool", "run"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_pool: contextvars.ContextVar[ThreadPoolExecutor | None] = contextvars.ContextVar(
    "reelvault_store_pool", default=None
)


class StorePool(ThreadPoolExecutor):
    """The threads of store-bound calls: one per admission slot."""

    def __init__(self, admission: Admission) -> None:
        super().__init__(max_workers=admission.total_slots, thread_name_prefix="reelvault-store")


@contextmanager
def bind_pool(pool: ThreadPoolExecutor | None) -> Iterator[None]:
    """Make :func:`run` use ``pool`` within the block (None: asyncio's default)."""
    token = _pool.set(pool)
    try:
        yield
    finally:
        _pool.reset(token)


async def run(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run ``function(*args, **kwargs)`` in a worker thread of the bound pool (asyncio's
    default executor outside :func:`bind_pool`), with the caller's context variables (the
    principal, the audit access, the deadline), as :func:`asyncio.to_thread` does."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool.get(), call)


def admitted(
    kind: str, tenant: Callable[[], str | None]
) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Awaitable[_T]]]:
    """Decorate a servicer coroutine (``self`` with ``_admission`` and ``_store_pool``)
    so that it holds an admission slot of ``kind`` for the caller's tenant (``tenant()``)
    while it runs, and :func:`run` within it uses the store pool."""

    def decorate(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
        @functools.wraps(method)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            servicer: Any = args[0]
            slot: Slot = servicer._admission.acquire(kind, tenant())
            try:
                with bind_pool(servicer._store_pool):
                    return await method(*args, **kwargs)
            finally:
                slot.release()

        return wrapper

    return decorate
