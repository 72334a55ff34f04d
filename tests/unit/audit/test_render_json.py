"""``render_json`` writes the OCSF JSON of an event field by field (the audit write path's
hot spot); it must give exactly the bytes ``json.dumps(render(event))`` gives, or stored
leaves would stop matching what verifiers recompute."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelvault.audit.events import (
    _CLASSES,
    PLATFORM_LOG,
    Actor,
    AuditEvent,
    Outcome,
    RequestInfo,
    Resource,
    render,
    render_json,
)
from reelvault.auth import Role

_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(), max_size=300),
    st.sampled_from(["", "OK", "\x00", "a\x00b", "é", "\u2028", "😀", '"\\', "x" * 300]),
)
_ints = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.integers(0, 10))
_peers = st.one_of(
    _text,
    st.sampled_from(
        [
            "ipv4:127.0.0.1:5000",
            "ipv6:[::1]:5000",
            "ipv6:%5B::1%5D:5000",
            "unix:/tmp/x",
            "ipv4:1.2.3.4:abc",
            "ipv4:1.2.3.4",
            "",
            "dns:host:1",
            "ipv4:1.1.1.1:0012",
        ]
    ),
)
_ops = st.one_of(_text, st.sampled_from(["/a.B/C", "/x", "/a/b/c", "", "/" + "a" * 300 + "/b"]))


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


_events = st.builds(
    AuditEvent,
    event_id=_text,
    log_id=st.one_of(_text, st.just(PLATFORM_LOG)),
    time_us=_ints,
    action=st.one_of(st.sampled_from([*_CLASSES, "auth.unauthenticated", "other"]), _text),
    outcome=st.sampled_from(list(Outcome)),
    status=st.one_of(_text, st.just("OK")),
    actor=st.builds(
        Actor,
        key_id=_maybe(_text),
        role=st.one_of(st.none(), _text, st.sampled_from(list(Role))),
        tenant_id=_maybe(_text),
        authenticated=st.booleans(),
        operator=st.booleans(),
    ),
    request=st.builds(
        RequestInfo,
        transport=_text,
        operation=_ops,
        peer=_peers,
        user_agent=_text,
        request_id=_text,
    ),
    resources=st.lists(
        st.builds(
            Resource,
            type=_text,
            id=_maybe(_text),
            path=_maybe(_text),
            offset=_maybe(_ints),
            length=_maybe(_ints),
        ),
        max_size=3,
    ).map(tuple),
    kek_version=_maybe(_ints),
    count=_ints,
    detail=st.dictionaries(_text, st.one_of(_text, _ints), max_size=3),
)


def _reference(event: AuditEvent) -> str:
    return json.dumps(render(event), separators=(",", ":"))


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(_events)
def test_render_json_is_byte_for_byte_the_json_of_render(event: AuditEvent) -> None:
    assert render_json(event) == _reference(event)


def test_fields_of_unexpected_types_take_the_slow_path_to_the_same_bytes() -> None:
    base = AuditEvent(
        event_id="e",
        log_id="t",
        time_us=5,
        action="asset.read",
        outcome=Outcome.ALLOWED,
        status="OK",
        actor=Actor(key_id="k", role="r", tenant_id="t", authenticated=True),
        request=RequestInfo(
            transport="grpc",
            operation="/a.B/C",
            peer="ipv4:1.2.3.4:5",
            user_agent="ua",
            request_id="rid",
        ),
        resources=(Resource("asset", "a", "p", 1, 2),),
        kek_version=3,
        count=2,
        detail={"x": 1, "y": "z", "b": True},
    )
    odd = [
        {"time_us": True},
        {"time_us": 5.0},
        {"count": True},
        {"kek_version": True},
        {"kek_version": 2.0},
        {"status": Role.ADMIN},
        {"actor": Actor(key_id="k", authenticated=1)},
        {"actor": Actor(key_id=5)},
        {"actor": Actor(role=Role.ADMIN)},
        {"log_id": PLATFORM_LOG},
        {"event_id": 7},
        {"resources": (Resource("asset", "a", "p", True, 2.5),)},
    ]
    for change in odd:
        event = dataclasses.replace(base, **change)
        assert render_json(event) == _reference(event), change
