"""Admission control: a bounded number of store-bound calls, per process and per tenant.

Uploads and downloads hold memory (upload parts in flight, download chunks) and a worker
thread for as long as the object store takes, so they are admitted against limits and
refused at once beyond them, with :class:`~reelvault.errors.ResourceExhausted` and a retry
hint: never an unbounded queue, which would grow memory and latency until clients time
out (S3's ``SlowDown``, MinIO's request limits). The per-tenant limit keeps one tenant's
burst from taking every slot of a process.

Transport-free: the gRPC servicers hold a slot for a call's whole life, and the HTTP
origin will do the same for a fetch. Limits are per process; a fleet's capacity is the sum
over replicas, and a refused call may be retried on another replica.

Memory under the limits (docs/reliability.md): each upload holds at most
``(max_in_flight + 2) * part_size`` of parts (the parts in flight, the one filling, and
the copy that joins it) plus up to about 12 MiB of gRPC receive buffers and message
copies (HTTP/2 windows grow with the bandwidth-delay product), and each download about
7 MiB (the 2 MiB batch being sent, the next one fetched ahead, and the store's stream),
so a process stays within
``idle RSS + uploads * ((max_in_flight + 2) * part_size + 12 MiB) + downloads * 7 MiB``
(measured by tests/integration/rpc/test_rpc_isolation.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Final

from reelvault import metrics
from reelvault.config import Settings
from reelvault.errors import ResourceExhausted

__all__ = ["DELETE_LIMIT", "KINDS", "Admission", "Limit", "Slot"]

KINDS: Final = ("upload", "download", "delete")
"""What is admitted: every call that waits on the object store."""


@dataclass(frozen=True, slots=True)
class Limit:
    """Concurrent calls of one kind allowed in this process, and per tenant within it."""

    process: int
    tenant: int

    def __post_init__(self) -> None:
        if self.process < 1 or self.tenant < 1:
            raise ValueError("admission limits must be at least 1")


DELETE_LIMIT: Final = Limit(process=16, tenant=16)
"""Deletions wait on the store too (one request per object version); they are rare and
short, so a fixed cap that keeps them from piling up is enough."""


class Slot:
    """One admitted call; :meth:`release` (or the ``with`` block's end) frees it."""

    def __init__(self, admission: Admission, kind: str, tenant_id: str | None) -> None:
        self._admission = admission
        self._kind = kind
        self._tenant_id = tenant_id
        self._held = True

    def release(self) -> None:
        """Idempotent."""
        if self._held:
            self._held = False
            self._admission._release(self._kind, self._tenant_id)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class Admission:
    """Counts admitted calls by kind, in all and per tenant. Thread-safe.

    Args:
        limits: the :class:`Limit` of each kind in :data:`KINDS`.
        retry_after: the hint, in seconds, given with a refusal.
    """

    def __init__(self, limits: dict[str, Limit], *, retry_after: float = 1.0) -> None:
        missing = set(KINDS) - set(limits)
        if missing:
            raise ValueError(f"admission limits missing for {sorted(missing)}")
        self._limits = dict(limits)
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()
        self._by_tenant: Counter[tuple[str, str | None]] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        """The limits of ``max_uploads``, ``max_downloads`` (and their per-tenant
        settings); deletions are capped at :data:`DELETE_LIMIT`."""
        return cls(
            {
                "upload": Limit(settings.max_uploads, settings.max_uploads_per_tenant),
                "download": Limit(settings.max_downloads, settings.max_downloads_per_tenant),
                "delete": DELETE_LIMIT,
            },
            retry_after=settings.admission_retry_after,
        )

    @property
    def total_slots(self) -> int:
        """Calls that may run at once, all kinds together: the worker threads they need."""
        return sum(limit.process for limit in self._limits.values())

    def limit(self, kind: str) -> Limit:
        return self._limits[kind]

    def running(self, kind: str, tenant_id: str | None = None) -> int:
        with self._lock:
            if tenant_id is None:
                return self._running[kind]
            return self._by_tenant[(kind, tenant_id)]

    def acquire(self, kind: str, tenant_id: str | None) -> Slot:
        """Admit one call of ``kind`` for ``tenant_id``, or refuse it at once.

        Raises:
            ResourceExhausted: the process or the tenant is at its limit for ``kind``.
        """
        limit = self._limits[kind]
        with self._lock:
            if self._running[kind] >= limit.process:
                refused = "process"
            elif self._by_tenant[(kind, tenant_id)] >= limit.tenant:
                refused = "tenant"
            else:
                self._running[kind] += 1
                self._by_tenant[(kind, tenant_id)] += 1
                return Slot(self, kind, tenant_id)
        metrics.ADMISSION_REJECTIONS.labels(kind, refused).inc()
        scope = "this server" if refused == "process" else "this tenant on this server"
        raise ResourceExhausted(
            f"too many concurrent {kind}s for {scope}; retry later",
            retry_after=self._retry_after,
        )

    def _release(self, kind: str, tenant_id: str | None) -> None:
        with self._lock:
            self._running[kind] -= 1
            key = (kind, tenant_id)
            self._by_tenant[key] -= 1
            if self._by_tenant[key] <= 0:
                del self._by_tenant[key]
