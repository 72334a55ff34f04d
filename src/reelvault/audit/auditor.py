"""The one component through which the domain records accesses.

Each transport edge opens an :class:`Access` for a request (who, from where, which
:class:`~reelvault.auth.Action`) with :meth:`Auditor.access`; the domain, which alone knows
the asset, its path, the byte range and the KEK version, adds them with :meth:`Auditor.note`
and calls :meth:`Auditor.release` right before it releases anything (the first byte of a
download, a key). The edge then calls :meth:`Auditor.conclude` with the answer's status
before it sends that answer: an access the domain did not record yet is recorded there
(a unary answer is still unsent then), and a failure after the release is recorded as a
second event. Every method that records blocks until the event is durable and raises
:class:`~reelvault.errors.Unavailable` if it cannot be: the caller releases nothing then
(fail closed).

The current access travels in a context variable, which ``asyncio.to_thread`` carries into
the worker thread that runs the domain. Domain code called with no access open (a local
operator command such as ``reelvault gc``, a test) records as the local operator.

Unauthenticated attempts go to the platform log through a per-peer limiter: past
``unauthenticated_burst`` events per peer (an IPv4 address, an IPv6 /64) per window, or
1,000 per window from all peers together, they are counted, and each peer's count is
recorded as one summary event, so a flood of bad tokens cannot grow the log without bound.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Final, Protocol
from urllib.parse import unquote

from reelvault.audit.events import (
    PLATFORM_LOG,
    Actor,
    AuditEvent,
    Outcome,
    RequestInfo,
    Resource,
    new_event_id,
)
from reelvault.clock import Clock
from reelvault.errors import Unavailable

__all__ = ["Access", "AuditSink", "Auditor", "MemoryAuditSink", "NullAuditSink"]

_OPERATOR: Final = Actor(operator=True)
_LOCAL: Final = RequestInfo()
_MAX_PEERS: Final = 10_000  # limiter entries; beyond, peers share one counter
_MAX_UNAUTHENTICATED: Final = 1_000  # individual events per window, all peers together
_OVERFLOW_PEER: Final = "*"


class AuditSink(Protocol):
    """Where events go. ``write`` returns once every event is durable.

    Raises:
        Unavailable: the events could not be made durable; none of them may be relied on.
    """

    def write(self, events: Sequence[AuditEvent]) -> None: ...


class MemoryAuditSink:
    """Keeps events in a list, for tests; ``unavailable`` makes every write fail."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.unavailable = False
        self._lock = threading.Lock()

    def write(self, events: Sequence[AuditEvent]) -> None:
        if self.unavailable:
            raise Unavailable("audit log unavailable")
        with self._lock:
            self.events.extend(events)


class NullAuditSink:
    """Drops every event. Only for benchmarks that measure what auditing costs."""

    def write(self, events: Sequence[AuditEvent]) -> None:
        return None


@dataclass
class Access:
    """One request as the audit log sees it, filled in as the request goes."""

    actor: Actor
    request: RequestInfo
    action: str
    tenant_id: str | None = None  # the tenant whose data is touched, once known
    resources: list[Resource] = field(default_factory=list)
    kek_version: int | None = None
    detail: dict[str, str | int] = field(default_factory=dict)
    released: bool = False  # an allowed event is durable
    concluded: bool = False


_current: ContextVar[Access | None] = ContextVar("reelvault_access", default=None)


class Auditor:
    """Builds events and hands them to the sink (module docstring).

    Args:
        sink: where events become durable.
        clock: event times.
        unauthenticated_burst: individual unauthenticated events per peer per window.
        unauthenticated_window: the limiter's window, in seconds.
    """

    def __init__(
        self,
        sink: AuditSink,
        clock: Clock,
        *,
        unauthenticated_burst: int = 10,
        unauthenticated_window: float = 60.0,
    ) -> None:
        self.sink = sink
        self._clock = clock
        self._burst = unauthenticated_burst
        self._window = unauthenticated_window
        self._limiter_lock = threading.Lock()
        # peer -> [window start, events recorded in the window, attempts suppressed]
        self._peers: OrderedDict[str, list[float]] = OrderedDict()
        # A global cap on individual events, whatever the number of peers.
        self._window_start = clock.now()
        self._window_events = 0

    # -- for the edges ----------------------------------------------------------------

    @staticmethod
    @contextmanager
    def bind(access: Access) -> Iterator[Access]:
        """Make ``access`` the current one for the block. An edge binds it around each
        step of the request it runs (a stream's steps may run in different tasks)."""
        token = _current.set(access)
        try:
            yield access
        finally:
            _current.reset(token)

    def conclude(self, access: Access, status: str, *, denied: bool = False) -> None:
        """Record how the request ended, unless that is already on record.

        Args:
            status: the gRPC status name of the answer (``OK`` included).
            denied: authentication or authorization refused the request.

        Raises:
            Unavailable: the event could not be made durable (for an ``OK`` answer: the
                edge must not send it).
        """
        if access.concluded:
            return
        access.concluded = True
        if access.released and status == "OK":
            return  # the allowed event is on record
        if denied:
            outcome = Outcome.DENIED
        elif status == "OK":
            outcome = Outcome.ALLOWED
        else:
            outcome = Outcome.FAILED
        event = self._event(access, outcome, status)
        if not access.actor.authenticated and not access.actor.operator:
            self._record_unauthenticated(event)
            return
        self.sink.write([event])

    # -- for the domain ---------------------------------------------------------------

    def note(
        self,
        *,
        tenant_id: str | None = None,
        resource: Resource | None = None,
        kek_version: int | None = None,
        detail: dict[str, str | int] | None = None,
    ) -> None:
        """Add what the domain knows to the current access (no-op outside one)."""
        current = _current.get()
        if current is None:
            return
        if tenant_id is not None:
            current.tenant_id = tenant_id
        if resource is not None:
            # A later, more precise note of the same resource (a range) replaces the first.
            current.resources = [
                r for r in current.resources if (r.type, r.id) != (resource.type, resource.id)
            ]
            current.resources.append(resource)
        if kek_version is not None:
            current.kek_version = kek_version
        if detail:
            current.detail.update(detail)

    def release(self) -> None:
        """Record the current access as allowed, durably, before the caller releases
        anything. Outside an access it records nothing (the caller is local code whose
        own command records what it does).

        Raises:
            Unavailable: not durable; release nothing.
        """
        current = _current.get()
        if current is None or current.released:
            return
        self.sink.write([self._event(current, Outcome.ALLOWED, "OK")])
        current.released = True

    def record(
        self,
        action: str,
        *,
        tenant_id: str | None,
        resources: Sequence[Resource] = (),
        kek_version: int | None = None,
        outcome: Outcome = Outcome.ALLOWED,
        status: str = "OK",
        detail: dict[str, str | int] | None = None,
    ) -> None:
        """Record one event of its own (a key operation inside a request, a local
        operator's command), with the current access's actor and request if any."""
        current = _current.get()
        actor = current.actor if current is not None else _OPERATOR
        request = current.request if current is not None else _LOCAL
        self.sink.write(
            [
                AuditEvent(
                    event_id=new_event_id(),
                    log_id=tenant_id or PLATFORM_LOG,
                    time_us=self._now_us(),
                    action=action,
                    outcome=outcome,
                    status=status,
                    actor=actor,
                    request=request,
                    resources=tuple(resources),
                    kek_version=kek_version,
                    detail=detail or {},
                )
            ]
        )

    def flush_summaries(self) -> None:
        """Record the counts of suppressed unauthenticated attempts whose window ended
        (called periodically by the service; the next attempt from a peer does it too)."""
        now = self._clock.now()
        due: list[tuple[str, int]] = []
        with self._limiter_lock:
            for peer, state in list(self._peers.items()):
                if now - state[0] >= self._window:
                    if state[2]:
                        due.append((peer, int(state[2])))
                    del self._peers[peer]
        for peer, count in due:
            self.sink.write([self._summary(peer, count)])

    # -- internals --------------------------------------------------------------------

    def _event(self, access: Access, outcome: Outcome, status: str) -> AuditEvent:
        return AuditEvent(
            event_id=new_event_id(),
            log_id=access.tenant_id or access.actor.tenant_id or PLATFORM_LOG,
            time_us=self._now_us(),
            action=access.action,
            outcome=outcome,
            status=status,
            actor=access.actor,
            request=access.request,
            resources=tuple(access.resources),
            kek_version=access.kek_version,
            detail=dict(access.detail),
        )

    def _record_unauthenticated(self, event: AuditEvent) -> None:
        peer = _peer_host(event.request.peer)
        now = self._clock.now()
        summary: AuditEvent | None = None
        with self._limiter_lock:
            state = self._peers.get(peer)
            if state is None and len(self._peers) >= _MAX_PEERS:
                peer = _OVERFLOW_PEER
                state = self._peers.get(peer)
            if state is not None and now - state[0] >= self._window:
                if state[2]:
                    summary = self._summary(peer, int(state[2]))
                state = None
            if state is None:
                state = [now, 0.0, 0.0]
                self._peers[peer] = state
            self._peers.move_to_end(peer)
            if now - self._window_start >= self._window:
                self._window_start, self._window_events = now, 0
            allowed = state[1] < self._burst and self._window_events < _MAX_UNAUTHENTICATED
            if allowed:
                state[1] += 1
                self._window_events += 1
            else:
                state[2] += 1
        events = ([summary] if summary is not None else []) + ([event] if allowed else [])
        if events:
            self.sink.write(events)

    def _summary(self, peer: str, count: int) -> AuditEvent:
        return AuditEvent(
            event_id=new_event_id(),
            log_id=PLATFORM_LOG,
            time_us=self._now_us(),
            action="auth.unauthenticated",
            outcome=Outcome.DENIED,
            status="UNAUTHENTICATED",
            actor=Actor(),
            request=replace(_LOCAL, transport="-", peer=peer),
            count=count,
            detail={"suppressed": count, "window_seconds": int(self._window)},
        )

    def _now_us(self) -> int:
        return int(self._clock.now() * 1_000_000)


def _peer_host(peer: str) -> str:
    """The peer the limiter counts: the address without its port (a client opening new
    connections is still one peer), and for IPv6 its /64 (one host usually holds a whole
    /64, and must not get a burst per address)."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return "ipv4:" + rest.rpartition(":")[0]
    if kind == "ipv6" and rest.startswith("[") and "]" in rest:
        try:
            address = ipaddress.IPv6Address(rest[1 : rest.index("]")].split("%")[0])
        except ValueError:
            return peer[:64]
        return f"ipv6:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return peer[:64]
