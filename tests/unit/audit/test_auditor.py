"""The Auditor: what the domain and the edges record, into which log, and when."""

from __future__ import annotations

import pytest

from reelvault.audit import (
    PLATFORM_LOG,
    Access,
    Actor,
    Auditor,
    MemoryAuditSink,
    Outcome,
    RequestInfo,
    Resource,
)
from reelvault.audit import auditor as module
from reelvault.audit.events import render
from reelvault.clock import FakeClock
from reelvault.errors import Unavailable

TENANT = "a" * 32
OTHER = "b" * 32


def _access(*, tenant: str | None = TENANT, authenticated: bool = True, peer: str = "") -> Access:
    actor = (
        Actor(key_id="0123456789abcdef", role="renderer", tenant_id=tenant, authenticated=True)
        if authenticated
        else Actor()
    )
    request = RequestInfo(
        transport="grpc",
        operation="/reelvault.v1.AssetService/Download",
        peer=peer or "ipv4:10.1.2.3:5555",
        user_agent="grpc-python/1.0",
        request_id="req-1",
    )
    return Access(actor=actor, request=request, action="asset.read")


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def auditor(sink: MemoryAuditSink, clock: FakeClock) -> Auditor:
    return Auditor(sink, clock, unauthenticated_burst=3, unauthenticated_window=60.0)


def test_release_records_what_the_domain_noted_once(auditor: Auditor, sink: MemoryAuditSink):
    access = _access()
    with auditor.bind(access):
        auditor.note(tenant_id=TENANT, resource=Resource("asset", "c" * 32, "a.ts", 10, 20))
        auditor.note(kek_version=3)
        auditor.release()
        auditor.release()  # a second release records nothing more
    auditor.conclude(access, "OK")  # the allowed event is already on record
    (event,) = sink.events
    assert (event.log_id, event.action, event.outcome, event.status) == (
        TENANT,
        "asset.read",
        Outcome.ALLOWED,
        "OK",
    )
    assert event.kek_version == 3
    assert event.resources == (Resource("asset", "c" * 32, "a.ts", 10, 20),)
    record = render(event)
    assert record["unmapped"]["reelvault"]["range"] == {"offset": 10, "length": 20}
    assert record["src_endpoint"] == {"ip": "10.1.2.3", "port": 5555}
    assert record["class_uid"] == 6005 and record["activity_id"] == 1


def test_a_failure_after_release_is_a_second_event(auditor: Auditor, sink: MemoryAuditSink):
    access = _access()
    with auditor.bind(access):
        auditor.release()
    auditor.conclude(access, "DATA_LOSS")
    assert [(e.outcome, e.status) for e in sink.events] == [
        (Outcome.ALLOWED, "OK"),
        (Outcome.FAILED, "DATA_LOSS"),
    ]


def test_conclude_records_denied_and_failed_calls(auditor: Auditor, sink: MemoryAuditSink):
    denied, failed = _access(), _access()
    auditor.conclude(denied, "PERMISSION_DENIED", denied=True)
    auditor.conclude(failed, "NOT_FOUND")
    auditor.conclude(failed, "NOT_FOUND")  # concluded once only
    assert [(e.outcome, e.status) for e in sink.events] == [
        (Outcome.DENIED, "PERMISSION_DENIED"),
        (Outcome.FAILED, "NOT_FOUND"),
    ]
    assert render(sink.events[0])["actor"]["authorizations"] == [
        {"decision": "denied", "policy": {"name": "renderer"}}
    ]


def test_events_go_to_the_touched_tenants_log(auditor: Auditor, sink: MemoryAuditSink):
    platform = Access(
        actor=Actor(key_id="f" * 16, role="platform-admin", authenticated=True),
        request=RequestInfo(transport="grpc", operation="/x/Y"),
        action="apikey.create",
    )
    with auditor.bind(platform):
        auditor.note(tenant_id=OTHER)
    auditor.conclude(platform, "OK")
    listing = Access(actor=platform.actor, request=platform.request, action="tenant.list")
    auditor.conclude(listing, "OK")
    assert [e.log_id for e in sink.events] == [OTHER, PLATFORM_LOG]


def test_fail_closed_release_raises_and_marks_nothing_released(
    auditor: Auditor, sink: MemoryAuditSink
):
    access = _access()
    sink.unavailable = True
    with auditor.bind(access), pytest.raises(Unavailable):
        auditor.release()
    assert not access.released
    sink.unavailable = False
    auditor.conclude(access, "UNAVAILABLE")
    assert [e.outcome for e in sink.events] == [Outcome.FAILED]


def test_outside_an_access_records_as_the_local_operator(auditor: Auditor, sink: MemoryAuditSink):
    auditor.note(tenant_id=TENANT)  # no access: nothing to note, no error
    auditor.release()  # nothing recorded: local code records its own command
    auditor.record("key.rotate", tenant_id=TENANT, kek_version=2)
    (event,) = sink.events
    assert event.actor.operator and event.request.transport == "local"
    assert render(event)["actor"]["app_name"] == "reelvault (local operator)"


def test_unauthenticated_attempts_are_summarised_past_the_burst(
    auditor: Auditor, sink: MemoryAuditSink, clock: FakeClock
):
    for port in range(10):  # one client, new connections: still one peer
        auditor.conclude(
            _access(authenticated=False, peer=f"ipv4:10.9.9.9:{4000 + port}"),
            "UNAUTHENTICATED",
            denied=True,
        )
    assert len(sink.events) == 3  # the burst
    assert all(e.log_id == PLATFORM_LOG and e.outcome is Outcome.DENIED for e in sink.events)
    other = _access(authenticated=False, peer="ipv4:10.8.8.8:1")
    auditor.conclude(other, "UNAUTHENTICATED", denied=True)
    assert len(sink.events) == 4  # another peer has its own burst
    clock.advance(61)
    auditor.flush_summaries()
    summary = sink.events[-1]
    assert summary.count == 7 and summary.action == "auth.unauthenticated"
    assert render(summary)["count"] == 7
    assert summary.request.peer == "ipv4:10.9.9.9"
    auditor.flush_summaries()
    assert len(sink.events) == 5  # counted once


def test_the_limiter_holds_a_bounded_number_of_peers(auditor: Auditor, sink: MemoryAuditSink):
    for n in range(module._MAX_PEERS + 50):
        peer = f"ipv4:10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}:1"
        auditor.conclude(_access(authenticated=False, peer=peer), "UNAUTHENTICATED", denied=True)
    assert len(auditor._peers) <= module._MAX_PEERS + 1
