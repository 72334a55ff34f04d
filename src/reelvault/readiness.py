"""Readiness: whether the catalog, the object store and the root key provider answer.

A :class:`Readiness` probes the three dependencies in the background, every ``interval``
seconds, each probe bounded by ``timeout``, and keeps the results; health checks read
the cached results, so a probe from a load balancer or Kubernetes costs nothing and never
waits on a stalled dependency. A probe still running when the next round comes (a frozen
store) counts as a failure, and no second one is started beside it.

The probes are the cheapest calls that prove a dependency serves reelvault:

* catalog: ``SELECT 1`` through the pool;
* object store: a HEAD of a key that does not exist (the answer, "not found", proves the
  endpoint, the bucket and the credentials; a missing bucket or refused credentials fail);
* root key provider: its ``probe()`` where it has one (KMS: DescribeKey, which needs
  ``kms:DescribeKey`` and fails unless the key is enabled); the local keyring is in memory
  and always ready.

:data:`NEEDS` says which dependencies each service needs; the gRPC server maps the
results onto the standard health service (``reelvault.rpc.server``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Final

import structlog
from sqlalchemy import text

from reelvault import metrics
from reelvault.catalog import Database
from reelvault.keys.provider import RootKeyProvider
from reelvault.storage import ObjectStore

__all__ = ["DEPENDENCIES", "PROBE_KEY", "Readiness"]

DEPENDENCIES: Final = ("catalog", "store", "key_provider")
PROBE_KEY: Final = "t/.probe/readiness"
"""The key the store probe asks for: never written, under ``t/`` (where the documented IAM
policy lets the service read) and under a name no tenant prefix can take."""

_log = structlog.get_logger("reelvault.readiness")


class Readiness:
    """Cached readiness of the dependencies (module docstring).

    Args:
        database, store, root: the dependencies.
        timeout: seconds one probe may take before it counts as failed.
    """

    def __init__(
        self, database: Database, store: ObjectStore, root: RootKeyProvider, *, timeout: float
    ) -> None:
        self._probes: dict[str, Callable[[], None]] = {
            "catalog": lambda: _select_one(database),
            "store": lambda: _head(store),
            "key_provider": getattr(root, "probe", None) or (lambda: None),
        }
        self._timeout = timeout
        self._ready: dict[str, bool] = dict.fromkeys(DEPENDENCIES, False)
        self._running: dict[str, asyncio.Future[None]] = {}
        self.checked_at: float | None = None

    @property
    def ready(self) -> Mapping[str, bool]:
        """The last result of each dependency's probe (False before the first)."""
        return dict(self._ready)

    def all_ready(self, needed: tuple[str, ...] = DEPENDENCIES) -> bool:
        return all(self._ready[name] for name in needed)

    async def probe(self) -> Mapping[str, bool]:
        """Probe every dependency once (concurrently), update and return the results."""
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe_one(name) for name in names))
        for name, ok in zip(names, results, strict=True):
            if ok != self._ready[name]:
                log = _log.info if ok else _log.warning
                log("dependency ready" if ok else "dependency not ready", dependency=name)
            self._ready[name] = ok
            metrics.READY.labels(name).set(1 if ok else 0)
        self.checked_at = time.monotonic()
        return self.ready

    async def _probe_one(self, name: str) -> bool:
        running = self._running.get(name)
        if running is not None and not running.done():
            return False  # the last probe is still stuck: not ready, and no pile-up
        future = asyncio.ensure_future(asyncio.to_thread(self._probes[name]))
        self._running[name] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError:
            return False
        except Exception as exc:
            _log.debug("readiness probe failed", dependency=name, error=type(exc).__name__)
            return False
        return True


def _head(store: ObjectStore) -> None:
    store.head(PROBE_KEY)


def _select_one(database: Database) -> None:
    with database.transaction(readonly=True) as session:
        session.execute(text("SELECT 1"))
