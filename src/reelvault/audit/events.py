"""What one audit event says, and the exact bytes the log commits to.

An :class:`AuditEvent` is built by the domain (through :class:`~reelvault.audit.Auditor`)
from what each layer knows: the edge knows the caller and the request (:class:`Actor`,
:class:`RequestInfo`), the domain the resource, the byte range, the key version and the
outcome. It is rendered once, at record time, as an OCSF 1.3 JSON object
(:func:`render`); the sequencer adds the position in the tenant's log and the hash of the
previous leaf (:func:`seal_record`), and those canonical bytes are the Merkle leaf:
exports hand out exactly these bytes, one per line, so anyone can hash them.

Canonical JSON here means ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`` of values that are only objects, arrays, strings, integers, booleans
and null (never floats): reproducible, but a verifier never needs to reproduce it, since
it hashes the bytes it was given.

Nothing secret enters an event: no token, no key material, no payload byte. Viewer
identifiers will only ever appear as keyed pseudonyms.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring_ascii
from typing import Any, Final
from urllib.parse import unquote

__all__ = [
    "OCSF_VERSION",
    "PLATFORM_LOG",
    "Actor",
    "AuditEvent",
    "Outcome",
    "RequestInfo",
    "Resource",
    "canonical_json",
    "cap",
    "new_event_id",
    "render",
    "render_json",
    "seal_record",
]

OCSF_VERSION: Final = "1.3.0"
PLATFORM_LOG: Final = "platform"
"""The log of events that belong to no tenant: platform keys acting on the platform, and
unauthenticated attempts."""

_API_ACTIVITY: Final = (6003, "API Activity")
_DATASTORE_ACTIVITY: Final = (6005, "Datastore Activity")

# action -> (class, activity id, activity name). Datastore Activity (6005) where the
# action touches stored data (assets, the audit log itself), API Activity (6003) for the
# control plane. Activity ids are OCSF 1.3's.
_CLASSES: Final[Mapping[str, tuple[tuple[int, str], int, str]]] = {
    "tenant.create": (_API_ACTIVITY, 1, "Create"),
    "tenant.read": (_API_ACTIVITY, 2, "Read"),
    "tenant.list": (_API_ACTIVITY, 2, "Read"),
    "apikey.create": (_API_ACTIVITY, 1, "Create"),
    "apikey.list": (_API_ACTIVITY, 2, "Read"),
    "apikey.revoke": (_API_ACTIVITY, 3, "Update"),
    "asset.write": (_DATASTORE_ACTIVITY, 5, "Write"),
    "asset.read": (_DATASTORE_ACTIVITY, 1, "Read"),
    "asset.stat": (_DATASTORE_ACTIVITY, 1, "Read"),
    "asset.list": (_DATASTORE_ACTIVITY, 8, "List"),
    "asset.delete": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "asset.fetch": (_DATASTORE_ACTIVITY, 1, "Read"),
    "url.issue": (_API_ACTIVITY, 1, "Create"),
    "url.revoke": (_API_ACTIVITY, 3, "Update"),
    "url.key-list": (_API_ACTIVITY, 2, "Read"),
    "url.key-rotate": (_API_ACTIVITY, 1, "Create"),
    "audit.read": (_DATASTORE_ACTIVITY, 4, "Query"),
    "audit.policy": (_API_ACTIVITY, 3, "Update"),
    "key.create": (_API_ACTIVITY, 1, "Create"),
    "key.rotate": (_API_ACTIVITY, 1, "Create"),
    "key.disable": (_API_ACTIVITY, 3, "Update"),
    "key.enable": (_API_ACTIVITY, 3, "Update"),
    "key.schedule-deletion": (_API_ACTIVITY, 3, "Update"),
    "key.cancel-deletion": (_API_ACTIVITY, 3, "Update"),
    "key.destroy": (_API_ACTIVITY, 4, "Delete"),
    "key.set-min-decryption-version": (_API_ACTIVITY, 3, "Update"),
    "audit.purge": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "asset.gc": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "asset.scrub": (_DATASTORE_ACTIVITY, 1, "Read"),
    "payload.write": (_DATASTORE_ACTIVITY, 5, "Write"),
    "payload.read": (_DATASTORE_ACTIVITY, 1, "Read"),
    "payload.list": (_DATASTORE_ACTIVITY, 8, "List"),
    "payload.delete": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "payload.purge": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "consent.write": (_API_ACTIVITY, 1, "Create"),
    "consent.read": (_API_ACTIVITY, 2, "Read"),
    "subject.hash": (_API_ACTIVITY, 2, "Read"),
    "subject.erase": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "subject.erased": (_DATASTORE_ACTIVITY, 7, "Delete"),
    "subject.export": (_DATASTORE_ACTIVITY, 1, "Read"),
    "subject.hold": (_API_ACTIVITY, 3, "Update"),
    "key.read": (_API_ACTIVITY, 2, "Read"),
    "key.manage": (_API_ACTIVITY, 3, "Update"),
    "key.rewrap": (_API_ACTIVITY, 3, "Update"),
    "key.root": (_API_ACTIVITY, 3, "Update"),
    "key.rewrap-root": (_API_ACTIVITY, 3, "Update"),
    "key.export": (_API_ACTIVITY, 2, "Read"),
    "key.export-approve": (_API_ACTIVITY, 3, "Update"),
    "tenant.lifecycle": (_API_ACTIVITY, 3, "Update"),
    "tenant.disable": (_API_ACTIVITY, 3, "Update"),
    "tenant.enable": (_API_ACTIVITY, 3, "Update"),
    "tenant.schedule-deletion": (_API_ACTIVITY, 3, "Update"),
    "tenant.cancel-deletion": (_API_ACTIVITY, 3, "Update"),
    "tenant.destroy": (_API_ACTIVITY, 4, "Delete"),
}


class Outcome(StrEnum):
    """allowed: the access happened (or is happening); denied: authentication or
    authorization refused it; failed: it was allowed but did not succeed."""

    ALLOWED = "allowed"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked. ``key_id`` None: no key was presented or it did not authenticate
    (``authenticated`` False), or the domain was called by a local operator command."""

    key_id: str | None = None
    role: str | None = None
    tenant_id: str | None = None
    authenticated: bool = False
    operator: bool = False  # a local command (``reelvault gc``), not a network caller


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Where the request came from, as the transport saw it."""

    transport: str = "local"  # grpc, http, local
    operation: str = ""  # the gRPC method or HTTP route
    peer: str = ""
    user_agent: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Resource:
    """What was touched. ``offset``/``length``: the byte range of a read."""

    type: str
    id: str | None = None
    path: str | None = None
    offset: int | None = None
    length: int | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One access, as the domain saw it.

    Attributes:
        log_id: the tenant whose log holds it, or :data:`PLATFORM_LOG`.
        time_us: microseconds since the epoch.
        status: the gRPC status name of the answer (``OK``, ``NOT_FOUND``, ...).
        kek_version: the tenant KEK version involved, never key material.
        count: for a summary event, how many attempts it stands for.
    """

    event_id: str
    log_id: str
    time_us: int
    action: str
    outcome: Outcome
    status: str
    actor: Actor
    request: RequestInfo
    resources: tuple[Resource, ...] = ()
    kek_version: int | None = None
    count: int = 1
    detail: Mapping[str, str | int] = field(default_factory=dict)


def new_event_id() -> str:
    """128 random bits, as ``secrets.token_hex(16)``, which reads them from
    ``os.urandom`` too, through three Python calls more (once per event)."""
    return os.urandom(16).hex()


def canonical_json(value: Any) -> bytes:
    """The one serialization of event JSON (module docstring)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def render(event: AuditEvent) -> dict[str, Any]:
    """The event as an OCSF object, before the log assigns its sequence number.
    (:func:`render_json` writes the same object as JSON, field by field: change both.)"""
    (class_uid, class_name), activity_id, activity_name = _CLASSES.get(
        event.action, (_API_ACTIVITY, 99, "Other")
    )
    success = event.outcome is Outcome.ALLOWED and event.status == "OK"
    ocsf: dict[str, Any] = {
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_name": "Application Activity",
        "category_uid": 6,
        "class_name": class_name,
        "class_uid": class_uid,
        "type_uid": class_uid * 100 + activity_id,
        "time": event.time_us // 1000,
        "severity_id": 1 if event.outcome is not Outcome.DENIED else 3,
        "status": "Success" if success else "Failure",
        "status_id": 1 if success else 2,
        "status_code": event.status,
        "metadata": {
            "log_name": event.log_id,
            "product": {"name": "reelvault", "vendor_name": "reelvault"},
            "uid": event.event_id,
            "version": OCSF_VERSION,
        },
        "actor": _actor(event.actor, event.outcome),
        "api": _api(event.request, event.status),
        "resources": [_resource(resource) for resource in event.resources],
        "unmapped": {"reelvault": _unmapped(event)},
    }
    if event.count > 1:
        ocsf["count"] = event.count
    if event.log_id != PLATFORM_LOG:
        ocsf["metadata"]["tenant_uid"] = event.log_id
    endpoint = _endpoint(cap(event.request.peer, MAX_FIELD))
    if endpoint:
        ocsf["src_endpoint"] = endpoint
    if event.request.user_agent:
        ocsf["http_request"] = {"user_agent": cap(event.request.user_agent, MAX_FIELD)}
    return ocsf


def render_json(event: AuditEvent) -> str:
    """``json.dumps(render(event), separators=(",", ":"))``, byte for byte, in about a
    third of the time: the write path renders every event it makes durable, and this is
    a measurable share of its CPU per event (bench/audit_bench.py).

    Written out field by field in :func:`render`'s order, with each string escaped by
    the function ``json.dumps`` itself uses (``ensure_ascii``), and the parts that are
    rare or free-form (``detail``, a byte range) encoded by ``json`` itself. A field of
    an unexpected type (anything but the declared ``str``, ``int`` and ``bool``) takes
    the slow path, ``render`` and ``json``, so the bytes are the same whatever comes in.
    Any change to :func:`render` must be made here too.
    """
    try:
        text = _render_json(event)
    except TypeError:  # a string field that is not a string
        text = None
    return text if text is not None else _COMPACT.encode(render(event))


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"))
_quote: Final = encode_basestring_ascii


def _class_head(class_uid: int, class_name: str, activity_id: int, activity_name: str) -> str:
    """The constant head of an event of one action, up to ``"time":``."""
    head = _COMPACT.encode(
        {
            "activity_id": activity_id,
            "activity_name": activity_name,
            "category_name": "Application Activity",
            "category_uid": 6,
            "class_name": class_name,
            "class_uid": class_uid,
            "type_uid": class_uid * 100 + activity_id,
        }
    )
    return head[:-1] + ',"time":'


_HEADS: Final = {
    action: _class_head(class_uid, class_name, activity_id, activity_name)
    for action, ((class_uid, class_name), activity_id, activity_name) in _CLASSES.items()
}
_OTHER_HEAD: Final = _class_head(*_API_ACTIVITY, 99, "Other")
_PRODUCT: Final = ',"product":{"name":"reelvault","vendor_name":"reelvault"},"uid":'
_VERSION: Final = f',"version":{_quote(OCSF_VERSION)}'


def _render_json(event: AuditEvent) -> str | None:
    """:func:`render_json`'s fast path; None for a field of an unexpected type."""
    outcome, actor, request = event.outcome, event.actor, event.request
    time_us, count, kek_version = event.time_us, event.count, event.kek_version
    if (
        type(outcome) is not Outcome
        or type(time_us) is not int
        or type(count) is not int
        or (kek_version is not None and type(kek_version) is not int)
        or type(actor.authenticated) is not bool
    ):
        return None
    status, log_id = event.status, event.log_id
    success = outcome is Outcome.ALLOWED and status == "OK"
    denied = outcome is Outcome.DENIED
    parts = [
        _HEADS.get(event.action, _OTHER_HEAD),
        str(time_us // 1000),
        ',"severity_id":3' if denied else ',"severity_id":1',
        ',"status":"Success","status_id":1' if success else ',"status":"Failure","status_id":2',
        ',"status_code":',
        _quote(status),
        ',"metadata":{"log_name":',
        _quote(log_id),
        _PRODUCT,
        _quote(event.event_id),
        _VERSION,
        ',"tenant_uid":' + _quote(log_id) if log_id != PLATFORM_LOG else "",
        '},"actor":',
        _actor_json(actor, denied),
        ',"api":',
        _api_json(request, status),
        ',"resources":[',
        ",".join([_resource_json(resource) for resource in event.resources]),
        '],"unmapped":{"reelvault":',
    ]
    parts.append(_unmapped_json(event, outcome, kek_version))
    parts.append("}")
    if count > 1:
        parts.append(f',"count":{count}')
    endpoint = _endpoint(cap(request.peer, MAX_FIELD))
    if endpoint:
        parts.append(',"src_endpoint":')
        parts.append(_COMPACT.encode(endpoint) if len(endpoint) != 2 else _ip_port_json(endpoint))
    if request.user_agent:
        parts.append(',"http_request":{"user_agent":')
        parts.append(_quote(cap(request.user_agent, MAX_FIELD)))
        parts.append("}")
    parts.append("}")
    return "".join(parts)


def _actor_json(actor: Actor, denied: bool) -> str:
    """``_actor`` as JSON."""
    parts = []
    if actor.operator:
        parts.append('"app_name":"reelvault (local operator)"')
    if actor.key_id is not None:
        user = '"user":{"uid":' + _quote(actor.key_id) + ',"type":"API key"'
        if actor.tenant_id is not None:
            user += ',"account":{"uid":' + _quote(actor.tenant_id) + "}"
        parts.append(user + "}")
    authorization = '"authorizations":[{"decision":' + ('"denied"' if denied else '"allowed"')
    if actor.role is not None:
        authorization += ',"policy":{"name":' + _quote(actor.role) + "}"
    parts.append(authorization + "}]")
    return "{" + ",".join(parts) + "}"


def _api_json(request: RequestInfo, status: str) -> str:
    """``_api`` as JSON."""
    operation = cap(request.operation, MAX_FIELD)
    text = '{"operation":' + _quote(operation or "-")
    if operation.startswith("/") and operation.count("/") == 2:
        text += ',"service":{"name":' + _quote(operation.split("/")[1]) + "}"
    if request.request_id:
        text += ',"request":{"uid":' + _quote(cap(request.request_id, MAX_FIELD)) + "}"
    code = ',"response":{"code":0,"error":' if status == "OK" else ',"response":{"code":1,"error":'
    return text + code + _quote(status) + "}}"


def _resource_json(resource: Resource) -> str:
    """``_resource`` as JSON."""
    text = '{"type":' + _quote(cap(resource.type, MAX_ID))
    if resource.id is not None:
        text += ',"uid":' + _quote(cap(resource.id, MAX_ID))
    if resource.path is not None:
        text += ',"name":' + _quote(cap(resource.path, MAX_NAME))
    return text + "}"


def _unmapped_json(event: AuditEvent, outcome: Outcome, kek_version: int | None) -> str:
    """``_unmapped`` as JSON (``outcome`` and ``kek_version`` checked by the caller)."""
    text = (
        '{"action":'
        + _quote(event.action)
        + (',"authenticated":true' if event.actor.authenticated else ',"authenticated":false')
        + ',"outcome":'
        + _quote(outcome.value)
        + ',"transport":'
        + _quote(event.request.transport)
    )
    if kek_version is not None:
        text += f',"kek_version":{kek_version}'
    for r in event.resources:
        if r.offset is not None and r.length is not None:
            text += ',"range":' + _COMPACT.encode({"offset": r.offset, "length": r.length})
            break
    if event.detail:
        text += ',"detail":' + _COMPACT.encode(dict(event.detail))
    return text + "}"


def _ip_port_json(endpoint: Mapping[str, Any]) -> str:
    """``{"ip": host, "port": port}`` from ``_endpoint`` as JSON."""
    return '{"ip":' + _quote(endpoint["ip"]) + ',"port":' + str(endpoint["port"]) + "}"


def seal_record(rendered: Mapping[str, Any], sequence: int, previous_leaf_hash: bytes) -> bytes:
    """The leaf bytes: the rendered event with its place in the log. ``previous`` chains
    each leaf to the one before it, so a verifier can name an edited event (docs/audit.md)."""
    record = dict(rendered)
    metadata = dict(record["metadata"])
    metadata["sequence"] = sequence
    record["metadata"] = metadata
    unmapped = {key: dict(value) for key, value in record["unmapped"].items()}
    unmapped["reelvault"]["previous"] = previous_leaf_hash.hex()
    record["unmapped"] = unmapped
    return canonical_json(record)


def _actor(actor: Actor, outcome: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if actor.operator:
        result["app_name"] = "reelvault (local operator)"
    if actor.key_id is not None:
        user: dict[str, Any] = {"uid": actor.key_id, "type": "API key"}
        if actor.tenant_id is not None:
            user["account"] = {"uid": actor.tenant_id}
        result["user"] = user
    decision = "denied" if outcome is Outcome.DENIED else "allowed"
    authorization: dict[str, Any] = {"decision": decision}
    if actor.role is not None:
        authorization["policy"] = {"name": actor.role}
    result["authorizations"] = [authorization]
    return result


def _api(request: RequestInfo, status: str) -> dict[str, Any]:
    operation = cap(request.operation, MAX_FIELD)
    api: dict[str, Any] = {"operation": operation or "-"}
    if operation.startswith("/") and operation.count("/") == 2:
        api["service"] = {"name": operation.split("/")[1]}
    if request.request_id:
        api["request"] = {"uid": cap(request.request_id, MAX_FIELD)}
    api["response"] = {"code": 0 if status == "OK" else 1, "error": status}
    return api


def cap(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, without NULs: no caller-supplied string may make
    an event too large to store, list or export, or unstorable (PostgreSQL text refuses NUL)."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


MAX_ID: Final = 64
MAX_NAME: Final = 1024
MAX_FIELD: Final = 256


def _resource(resource: Resource) -> dict[str, Any]:
    result: dict[str, Any] = {"type": cap(resource.type, MAX_ID)}
    if resource.id is not None:
        result["uid"] = cap(resource.id, MAX_ID)
    if resource.path is not None:
        result["name"] = cap(resource.path, MAX_NAME)
    return result


def _unmapped(event: AuditEvent) -> dict[str, Any]:
    unmapped: dict[str, Any] = {
        "action": event.action,
        "authenticated": event.actor.authenticated,
        "outcome": event.outcome.value,
        "transport": event.request.transport,
    }
    if event.kek_version is not None:
        unmapped["kek_version"] = event.kek_version
    ranges = [
        {"offset": r.offset, "length": r.length}
        for r in event.resources
        if r.offset is not None and r.length is not None
    ]
    if ranges:
        unmapped["range"] = ranges[0]
    if event.detail:
        unmapped["detail"] = dict(event.detail)
    return unmapped


def _endpoint(peer: str) -> dict[str, Any]:
    """gRPC peers look like ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000`` (newer grpcio
    percent-encodes the brackets: ``ipv6:%5B::1%5D:5000``) or ``unix:...``."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4" and rest.count(":") == 1:
        host, _, port = rest.partition(":")
    elif kind == "ipv6" and rest.startswith("[") and "]:" in rest:
        host, _, port = rest[1:].partition("]:")
    elif kind in ("", "unix") or not rest:
        return {"name": peer} if peer else {}
    else:
        return {"name": peer}
    try:
        return {"ip": host, "port": int(port)}
    except ValueError:
        return {"ip": host}
