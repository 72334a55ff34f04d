"""Attacks on viewer data over a real gRPC server (security review of PayloadService,
ConsentService and PrivacyService).

The attacker is another tenant probing ids, an insider editing catalog rows (moving a
sealed payload or a wrapped subject key to another tenant, subject or id), a caller
confusing purposes or forging page tokens, a client sending malformed or oversized input,
and a key of the wrong role. Nothing of it may yield another tenant's data, wrong
plaintext, an error that confirms existence, a stored byte, or the raw viewer id anywhere
(catalog, service logs, audit records).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from rpc_harness import Stubs, Tenancy, rpc_error, wait_for
from sqlalchemy import func, select

from reelvault.app import Vault
from reelvault.audit import StoredEvent
from reelvault.auth import Role
from reelvault.catalog.audit import AuditFilter
from reelvault.catalog.tables import PayloadRow, SubjectRow
from reelvault.privacy.payloads import DEFAULT_MAX_PAYLOAD, MAX_TTL
from reelvault.v1 import asset_pb2, privacy_pb2

pytestmark = pytest.mark.db

VIEWER = "ada.lovelace@example.com"
OTHER = "charles.babbage@example.com"
PURPOSE = "personalization"
DATA = b'{"name": "Ada", "secret": "s3cr3t-payload"}'
OPAQUE = "ciphertext could not be decrypted"


def put(api: Stubs, tenant: Tenancy, data: bytes = DATA, **kwargs: Any) -> privacy_pb2.Payload:
    request = privacy_pb2.PutPayloadRequest(
        subject_id=kwargs.pop("subject_id", VIEWER),
        purpose=kwargs.pop("purpose", PURPOSE),
        data=data,
        **kwargs,
    )
    return api.payloads.PutPayload(request, metadata=tenant.md(Role.INGEST))


def get(
    api: Stubs, tenant: Tenancy, payload_id: str, purpose: str = PURPOSE, role: Role = Role.RENDERER
) -> privacy_pb2.PayloadData:
    return api.payloads.GetPayload(
        privacy_pb2.GetPayloadRequest(id=payload_id, purpose=purpose), metadata=tenant.md(role)
    )


def consent(
    api: Stubs, tenant: Tenancy, granted: bool = True, subject_id: str = VIEWER, **kw: Any
) -> privacy_pb2.ConsentDecision:
    return api.consent.RecordConsent(
        privacy_pb2.RecordConsentRequest(
            subject_id=subject_id,
            purpose=kw.pop("purpose", PURPOSE),
            granted=granted,
            source="signup-form",
            **kw,
        ),
        metadata=tenant.md(Role.INGEST),
    )


def listing(
    api: Stubs, tenant: Tenancy, subject_id: str = VIEWER, **kw: Any
) -> privacy_pb2.ListPayloadsResponse:
    return api.payloads.ListPayloads(
        privacy_pb2.ListPayloadsRequest(subject_id=subject_id, **kw),
        metadata=tenant.md(Role.RENDERER),
    )


def export(api: Stubs, tenant: Tenancy, subject_id: str = VIEWER) -> dict[str, Any]:
    chunks = api.privacy.ExportSubject(
        privacy_pb2.ExportSubjectRequest(subject_id=subject_id), metadata=tenant.md(Role.PRIVACY)
    )
    document: dict[str, Any] = json.loads(b"".join(c.data for c in chunks))
    return document


def hashed(api: Stubs, tenant: Tenancy, subject_id: str = VIEWER, role: Role = Role.PRIVACY) -> str:
    reply = api.privacy.HashSubject(
        privacy_pb2.HashSubjectRequest(subject_id=subject_id), metadata=tenant.md(role)
    )
    return str(reply.subject)


def code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def count(vault: Vault, table: Any) -> int:
    with vault.database.transaction(readonly=True) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def events(vault: Vault, log_id: str, **filters: Any) -> list[StoredEvent]:
    vault.audit_log.integrate_all()
    page = vault.audit_log.list_events(
        log_id, start_us=0, end_us=2**62, where=AuditFilter(**filters), page_size=1000
    )
    return page.events


def catalog_blobs(vault: Vault) -> list[tuple[str, str, bytes]]:
    """Every cell of every catalog table, as bytes."""
    out = []
    with vault.database.engine.connect() as connection:
        for name in sa.inspect(connection).get_table_names():
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            for row in connection.execute(sa.select(table)):
                for column, value in row._mapping.items():
                    if isinstance(value, bytes | memoryview):
                        blob = bytes(value)
                    elif isinstance(value, str):
                        blob = value.encode()
                    else:
                        blob = json.dumps(value, default=str, ensure_ascii=False).encode()
                    out.append((name, column, blob))
    return out


# -- other tenants ----------------------------------------------------------------------


def test_another_tenants_payload_ids_look_exactly_like_missing_ones(
    api: Stubs, acme: Tenancy, globex: Tenancy
):
    payload = put(api, acme)
    consent(api, acme)
    consent(api, globex)  # the same viewer id, consenting at globex too
    missing = secrets.token_hex(16)
    theirs, nothing = (
        rpc_error(lambda: get(api, globex, payload.id)),
        rpc_error(lambda: get(api, globex, missing)),
    )
    assert theirs.code() == nothing.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.details() == nothing.details()
    # also with a purpose that is not the payload's: still NOT_FOUND, not FAILED_PRECONDITION
    assert code(lambda: get(api, globex, payload.id, "marketing")) == grpc.StatusCode.NOT_FOUND
    # a delete answers the same as for a missing id, and deletes nothing
    for payload_id in (payload.id, missing):
        api.payloads.DeletePayload(
            privacy_pb2.DeletePayloadRequest(id=payload_id), metadata=globex.md(Role.INGEST)
        )
    assert get(api, acme, payload.id).data == DATA
    # the same viewer id lists nothing there, under another pseudonym
    assert list(listing(api, globex).payloads) == []
    assert hashed(api, globex) != hashed(api, acme) == payload.subject


def test_exporting_a_viewer_id_gives_only_the_callers_tenants_data(
    api: Stubs, acme: Tenancy, globex: Tenancy, vault: Vault
):
    mine = put(api, acme)
    consent(api, acme)
    get(api, acme, mine.id)
    theirs = put(api, globex, data=b'{"at": "globex"}')
    document = export(api, globex)
    assert document["tenant_id"] == globex.id
    assert document["subject"] == theirs.subject != mine.subject
    assert [p["id"] for p in document["payloads"]] == [theirs.id]
    assert document["consent"] == []
    assert document["audit_events"]
    assert all(e["resource_id"] in (theirs.subject, theirs.id) for e in document["audit_events"])
    text = json.dumps(document)
    assert mine.id not in text and mine.subject not in text and "s3cr3t" not in text
    # and acme's export is acme's
    acme_document = export(api, acme)
    assert [p["id"] for p in acme_document["payloads"]] == [mine.id]
    assert theirs.id not in json.dumps(acme_document)


# -- catalog edits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "move", ["to-another-tenant", "to-another-subject", "to-another-id", "swap"]
)
def test_a_sealed_payload_moved_in_the_catalog_fails_opaquely(
    api: Stubs, acme: Tenancy, globex: Tenancy, vault: Vault, move: str
):
    """An insider with write access to the catalog (not the keys) copies a sealed payload
    where a caller may read it: the encryption context (tenant, object id, kind) and the
    key name (tenant, subject) are bound in the message, so it never opens."""
    victim = put(api, acme)
    charles = put(api, acme, b'{"name": "Charles"}', subject_id=OTHER)
    bait = put(api, globex, b"{}")  # a subject at globex with a key, and its own payload
    for tenant, who in ((acme, VIEWER), (acme, OTHER), (globex, VIEWER)):
        consent(api, tenant, subject_id=who)
    with vault.database.transaction() as session:
        row = session.get(PayloadRow, victim.id)
        assert row is not None
        columns = {c.key: getattr(row, c.key) for c in sa.inspect(row).mapper.column_attrs}
        new_id = secrets.token_hex(16)
        if move == "to-another-tenant":
            columns.update(id=new_id, tenant_id=globex.id, pseudonym=bait.subject)
        elif move == "to-another-subject":
            columns.update(id=new_id, pseudonym=charles.subject)
        elif move == "to-another-id":
            columns.update(id=new_id)
        if move == "swap":
            target, tenant = charles.id, acme
            other = session.get(PayloadRow, charles.id)
            assert other is not None
            other.message = row.message
            other.size = row.size
        else:
            target, tenant = new_id, (globex if move == "to-another-tenant" else acme)
            session.add(PayloadRow(**columns))
    error = rpc_error(lambda: get(api, tenant, target))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert error.details() == OPAQUE
    # and the export of the subject the row landed under fails rather than leak it
    who = OTHER if move in ("to-another-subject", "swap") else VIEWER
    error = rpc_error(lambda: export(api, tenant, who))
    assert error.code() == grpc.StatusCode.DATA_LOSS
    assert get(api, acme, victim.id).data == DATA  # the original is untouched


def test_a_wrapped_subject_key_copied_to_another_subject_or_tenant_is_useless(
    api: Stubs, acme: Tenancy, globex: Tenancy, vault: Vault
):
    ada = put(api, acme)
    charles = put(api, acme, b"{}", subject_id=OTHER)
    elsewhere = put(api, globex, b"{}")
    for tenant, who in ((acme, VIEWER), (acme, OTHER), (globex, VIEWER)):
        consent(api, tenant, subject_id=who)
    with vault.database.transaction() as session:
        source = session.get(SubjectRow, (acme.id, ada.subject))
        assert source is not None
        for tenant_id, pseudonym in ((acme.id, charles.subject), (globex.id, elsewhere.subject)):
            target = session.get(SubjectRow, (tenant_id, pseudonym))
            assert target is not None
            target.wrapped_key, target.kek_version = source.wrapped_key, source.kek_version
    for tenant, who, payload_id in ((acme, OTHER, charles.id), (globex, VIEWER, elsewhere.id)):
        error = rpc_error(lambda t=tenant, p=payload_id: get(api, t, p))
        assert (error.code(), error.details()) == (grpc.StatusCode.DATA_LOSS, OPAQUE)
        error = rpc_error(lambda t=tenant, w=who: put(api, t, b"{}", subject_id=w))
        assert (error.code(), error.details()) == (grpc.StatusCode.DATA_LOSS, OPAQUE)
    assert get(api, acme, ada.id).data == DATA


# -- purposes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "status"),
    [
        ("marketing", grpc.StatusCode.FAILED_PRECONDITION),
        ("personalization.extra", grpc.StatusCode.FAILED_PRECONDITION),
        ("personalizatio", grpc.StatusCode.FAILED_PRECONDITION),
        ("Personalization", grpc.StatusCode.INVALID_ARGUMENT),
        ("PERSONALIZATION", grpc.StatusCode.INVALID_ARGUMENT),
        (" personalization", grpc.StatusCode.INVALID_ARGUMENT),
        ("personalization ", grpc.StatusCode.INVALID_ARGUMENT),
        ("personalization\n", grpc.StatusCode.INVALID_ARGUMENT),
        ("personalization\t", grpc.StatusCode.INVALID_ARGUMENT),
        ("personalization\x00", grpc.StatusCode.INVALID_ARGUMENT),
        ("personalizat\u0456on", grpc.StatusCode.INVALID_ARGUMENT),  # a Cyrillic i
        ("\uff50ersonalization", grpc.StatusCode.INVALID_ARGUMENT),  # a fullwidth p
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("p" * 65, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_a_payload_is_read_for_its_own_purpose_only(
    api: Stubs, acme: Tenancy, purpose: str, status: grpc.StatusCode
):
    payload = put(api, acme)
    consent(api, acme)
    if status is grpc.StatusCode.FAILED_PRECONDITION:
        consent(api, acme, purpose=purpose)  # consent for the other purpose changes nothing
    assert code(lambda: get(api, acme, payload.id, purpose)) == status
    assert get(api, acme, payload.id).data == DATA


def test_purposes_are_case_and_space_exact_at_write_and_consent_time_too(
    api: Stubs, acme: Tenancy, vault: Vault
):
    for purpose in ("Personalization", "personalization ", "per sonalization", "-x"):
        assert code(lambda p=purpose: put(api, acme, purpose=p)) == grpc.StatusCode.INVALID_ARGUMENT
        assert code(lambda p=purpose: consent(api, acme, purpose=p)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    assert count(vault, PayloadRow) == 0


# -- page tokens ----------------------------------------------------------------------------


def token_of(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_list_page_tokens_cannot_be_forged_or_replayed_elsewhere(
    api: Stubs, acme: Tenancy, globex: Tenancy
):
    mine = sorted(put(api, acme, b"{}").id for _ in range(3))
    put(api, acme, b"{}", subject_id=OTHER)
    first = listing(api, acme, page_size=1)
    assert [p.id for p in first.payloads] == mine[:1] and first.next_page_token
    second = listing(api, acme, page_size=1, page_token=first.next_page_token)
    assert [p.id for p in second.payloads] == mine[1:2]
    charles = hashed(api, acme, OTHER)
    forged = [
        ("another subject's listing", OTHER, acme, first.next_page_token),
        ("another tenant's listing", VIEWER, globex, first.next_page_token),
        ("garbage", VIEWER, acme, "!!!not-a-token!!!"),
        ("not json", VIEWER, acme, token_of(b"\xff\xfe")),
        ("a list", VIEWER, acme, token_of([1, 2])),
        ("a number", VIEWER, acme, token_of(5)),
        ("no subject", VIEWER, acme, token_of({"after": ""})),
        ("claims another subject", VIEWER, acme, token_of({"after": "", "subject": charles})),
        (
            "after is a number",
            VIEWER,
            acme,
            token_of({"after": 5, "subject": first.payloads[0].subject}),
        ),
        (
            "after is not an id",
            VIEWER,
            acme,
            token_of({"after": "zz", "subject": first.payloads[0].subject}),
        ),
        (
            "after holds a NUL",
            VIEWER,
            acme,
            token_of({"after": "\x00", "subject": first.payloads[0].subject}),
        ),
        ("deep nesting", VIEWER, acme, token_of(b"[" * 200_000 + b"]" * 200_000)),
        ("huge", VIEWER, acme, "A" * (4 * 1024 * 1024)),
    ]
    for name, subject_id, tenant, token in forged:
        started = time.monotonic()
        status = code(lambda s=subject_id, t=tenant, k=token: listing(api, t, s, page_token=k))
        assert status == grpc.StatusCode.INVALID_ARGUMENT, name
        assert time.monotonic() - started < 5, name
    for size in (-1, 1001, 2**31 - 1):
        assert code(lambda s=size: listing(api, acme, page_size=s)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )


# -- malformed and oversized input --------------------------------------------------------


def test_an_oversized_payload_is_refused_and_nothing_is_stored(
    api: Stubs, acme: Tenancy, vault: Vault
):
    error = rpc_error(lambda: put(api, acme, b"x" * (DEFAULT_MAX_PAYLOAD + 1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert count(vault, PayloadRow) == count(vault, SubjectRow) == 0
    assert put(api, acme, b"x" * DEFAULT_MAX_PAYLOAD).size == DEFAULT_MAX_PAYLOAD


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "0" * 31,
        "0" * 33,
        "A" * 32,
        "g" * 32,
        "../" + "0" * 29,
        "0" * 31 + "\x00",
        "\u0660" * 32,
    ],
)
def test_malformed_payload_ids_are_invalid_arguments(api: Stubs, acme: Tenancy, bad_id: str):
    assert code(lambda: get(api, acme, bad_id)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code(
            lambda: api.payloads.DeletePayload(
                privacy_pb2.DeletePayloadRequest(id=bad_id), metadata=acme.md(Role.INGEST)
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


BAD_SUBJECT_IDS = [
    "",
    "x" * 257,
    "ada\x00",
    "ada\nbob",
    "ada\r",
    "\x1b[31mada",
    "ada\x7f",
    "ada\u0085",  # C1 next line
    "ada\u200b",  # zero-width space
    "ada\u202e",  # right-to-left override
    "ada\u2028",  # line separator
    "ada\ufeff",
]


def subject_calls(api: Stubs, tenant: Tenancy, subject_id: str) -> dict[str, Callable[[], Any]]:
    privacy = tenant.md(Role.PRIVACY)
    return {
        "PutPayload": lambda: put(api, tenant, subject_id=subject_id),
        "ListPayloads": lambda: listing(api, tenant, subject_id),
        "RecordConsent": lambda: consent(api, tenant, subject_id=subject_id),
        "GetConsent": lambda: api.consent.GetConsent(
            privacy_pb2.GetConsentRequest(subject_id=subject_id), metadata=privacy
        ),
        "HashSubject": lambda: hashed(api, tenant, subject_id),
        "EraseSubject": lambda: api.privacy.EraseSubject(
            privacy_pb2.EraseSubjectRequest(subject_id=subject_id), metadata=privacy
        ),
        "ExportSubject": lambda: export(api, tenant, subject_id),
        "SetLegalHold": lambda: api.privacy.SetLegalHold(
            privacy_pb2.SetLegalHoldRequest(subject_id=subject_id, hold=True), metadata=privacy
        ),
        "Upload": lambda: api.assets.Upload(
            iter(
                [
                    asset_pb2.UploadRequest(
                        metadata=asset_pb2.AssetMetadata(path="p/x.mp4", subject_id=subject_id)
                    ),
                    asset_pb2.UploadRequest(chunk=b"frames"),
                    asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()),
                ]
            ),
            metadata=tenant.md(Role.INGEST),
        ),
    }


def test_malformed_subject_ids_are_refused_by_every_rpc_and_store_nothing(
    api: Stubs, acme: Tenancy, vault: Vault
):
    for subject_id in BAD_SUBJECT_IDS:
        for name, call in subject_calls(api, acme, subject_id).items():
            if subject_id == "" and name == "Upload":
                continue  # no subject id: a shared asset (tested elsewhere)
            assert code(call) == grpc.StatusCode.INVALID_ARGUMENT, (name, subject_id)
    assert count(vault, PayloadRow) == count(vault, SubjectRow) == 0
    assert list(vault.store.list_keys("t/")) == []
    # the longest allowed id works everywhere, and all of them mean the same subject
    longest = "v" * 256
    pseudonyms = {hashed(api, acme, longest), put(api, acme, subject_id=longest).subject}
    assert len(pseudonyms) == 1


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(65)},
        {"Key": "v"},
        {"": "v"},
        {"k" * 64: "v"},
        {"k": "v" * 257},
        {"k": "v\n"},
        {"k": "\x00"},
        {"k": "\u202e"},
        {"k y": "v"},
    ],
    ids=[
        "too-many",
        "upper",
        "empty-key",
        "long-key",
        "long-value",
        "newline",
        "nul",
        "rlo",
        "space",
    ],
)
def test_label_abuse_is_refused_and_nothing_is_stored(
    api: Stubs, acme: Tenancy, vault: Vault, labels: dict[str, str]
):
    assert code(lambda: put(api, acme, labels=labels)) == grpc.StatusCode.INVALID_ARGUMENT
    assert count(vault, PayloadRow) == 0


def test_content_type_abuse_is_refused(api: Stubs, acme: Tenancy, vault: Vault):
    for content_type in ("json", "application/json\r\nX-Injected: 1", "a/b; \x00", "x" * 300):
        assert code(lambda c=content_type: put(api, acme, content_type=c)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), content_type
    assert count(vault, PayloadRow) == 0


def test_ttls_out_of_range_are_refused(api: Stubs, acme: Tenancy, vault: Vault):
    for ttl in (-1, -(2**63), MAX_TTL + 1, 2**63 - 1):
        assert code(lambda t=ttl: put(api, acme, ttl_seconds=t)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), ttl
    assert count(vault, PayloadRow) == 0
    longest = put(api, acme, ttl_seconds=MAX_TTL)
    assert longest.expire_time.seconds - longest.create_time.seconds == MAX_TTL
    assert not put(api, acme, ttl_seconds=0).HasField("expire_time")


def test_consent_times_in_the_future_or_out_of_range_are_refused(
    api: Stubs, acme: Tenancy, vault: Vault, clock
):
    now = int(clock.now())
    for seconds in (now + 301, now + 86_400 * 365, 253_402_300_800, 2**62, -(2**62)):
        when = Timestamp(seconds=seconds)
        assert code(lambda w=when: consent(api, acme, effective_time=w)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        ), seconds
    history = api.consent.GetConsent(
        privacy_pb2.GetConsentRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
    )
    assert list(history.history) == []


# -- roles ----------------------------------------------------------------------------------


def test_roles_the_payload_and_privacy_rpcs_refuse(api: Stubs, acme: Tenancy):
    payload = put(api, acme)
    consent(api, acme)
    denied = grpc.StatusCode.PERMISSION_DENIED
    request = privacy_pb2.PutPayloadRequest(subject_id=VIEWER, purpose=PURPOSE, data=b"{}")
    for role in (Role.RENDERER, Role.DISTRIBUTOR, Role.AUDITOR, Role.PRIVACY):
        assert code(lambda r=role: api.payloads.PutPayload(request, metadata=acme.md(r))) == denied
    for role in (Role.ADMIN, Role.INGEST, Role.DISTRIBUTOR, Role.AUDITOR, Role.PRIVACY):
        assert code(lambda r=role: get(api, acme, payload.id, role=r)) == denied, role
    for role in (Role.RENDERER, Role.INGEST, Role.ADMIN, Role.AUDITOR, Role.DISTRIBUTOR):
        for call in (
            lambda r=role: api.privacy.EraseSubject(
                privacy_pb2.EraseSubjectRequest(subject_id=VIEWER), metadata=acme.md(r)
            ),
            lambda r=role: list(
                api.privacy.ExportSubject(
                    privacy_pb2.ExportSubjectRequest(subject_id=VIEWER), metadata=acme.md(r)
                )
            ),
            lambda r=role: api.privacy.SetLegalHold(
                privacy_pb2.SetLegalHoldRequest(subject_id=VIEWER, hold=True), metadata=acme.md(r)
            ),
        ):
            assert code(call) == denied, role
    for role in (Role.RENDERER, Role.INGEST, Role.DISTRIBUTOR):
        assert code(lambda r=role: hashed(api, acme, role=r)) == denied, role
    # a refusal never depended on whether the payload exists: same answer for a missing id
    assert code(lambda: get(api, acme, secrets.token_hex(16), role=Role.AUDITOR)) == denied
    assert get(api, acme, payload.id).data == DATA


def test_hash_subject_is_audited_with_the_pseudonym(api: Stubs, acme: Tenancy, vault: Vault):
    pseudonyms = {hashed(api, acme, role=r) for r in (Role.PRIVACY, Role.AUDITOR, Role.ADMIN)}
    (pseudonym,) = pseudonyms
    found = wait_for(lambda: events(vault, acme.id, actions=["subject.hash"]), count=3)
    assert len(found) == 3
    assert all(e.resource_id == pseudonym and e.outcome == "allowed" for e in found), found
    assert all(e.record is not None and VIEWER.encode() not in e.record for e in found)


# -- the raw viewer id ----------------------------------------------------------------------


def test_the_raw_viewer_id_reaches_no_column_log_line_or_audit_record(
    api: Stubs, acme: Tenancy, vault: Vault
):
    with structlog.testing.capture_logs() as logs:
        payload = put(api, acme, labels={"campaign": "spring"}, ttl_seconds=3600)
        consent(api, acme)
        get(api, acme, payload.id)
        listing(api, acme)
        api.consent.GetConsent(
            privacy_pb2.GetConsentRequest(subject_id=VIEWER), metadata=acme.md(Role.RENDERER)
        )
        hashed(api, acme)
        api.assets.Upload(
            iter(
                [
                    asset_pb2.UploadRequest(
                        metadata=asset_pb2.AssetMetadata(path="p/ada.mp4", subject_id=VIEWER)
                    ),
                    asset_pb2.UploadRequest(chunk=b"frames" * 100),
                    asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()),
                ]
            ),
            metadata=acme.md(Role.INGEST),
        )
        export(api, acme)
        # failures too: refused roles, missing consent, bad input next to the id
        rpc_error(lambda: get(api, acme, payload.id, role=Role.AUDITOR))
        rpc_error(lambda: put(api, acme, purpose="Bad Purpose"))
        rpc_error(lambda: consent(api, acme, purpose="x" * 100))
        api.privacy.SetLegalHold(
            privacy_pb2.SetLegalHoldRequest(subject_id=VIEWER, hold=True),
            metadata=acme.md(Role.PRIVACY),
        )
        rpc_error(
            lambda: api.privacy.EraseSubject(
                privacy_pb2.EraseSubjectRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
            )
        )
        api.privacy.SetLegalHold(
            privacy_pb2.SetLegalHoldRequest(subject_id=VIEWER, hold=False),
            metadata=acme.md(Role.PRIVACY),
        )
        api.privacy.EraseSubject(
            privacy_pb2.EraseSubjectRequest(subject_id=VIEWER), metadata=acme.md(Role.PRIVACY)
        )
        # the access log line trails the reply: wait for the erasure's
        wait_for(lambda: [e for e in logs if "EraseSubject" in json.dumps(e, default=str)], count=2)
    assert logs
    raw = VIEWER.encode()
    for entry in logs:
        assert VIEWER not in json.dumps(entry, default=str), entry
    for table, column, blob in catalog_blobs(vault):
        assert raw not in blob and raw.hex().encode() not in blob, (table, column)
    recorded = events(vault, acme.id)
    assert len(recorded) >= 15
    for event in recorded:
        assert event.record is not None and raw not in event.record, event.action
    about = [e for e in recorded if e.record is not None and payload.subject.encode() in e.record]
    actions = {e.action for e in about}
    assert {
        "payload.write",
        "payload.read",
        "consent.write",
        "subject.hash",
        "subject.export",
        "subject.hold",
        "subject.erase",
        "subject.erased",
    } <= actions, actions
