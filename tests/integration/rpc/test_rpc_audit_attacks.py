"""Attacks on the access audit log over a real gRPC server (security review).

Each test shows an attack defeated: some from the start, the others findings of the review
that were fixed (findings 1-6 and 12). The attacks: reading another log (tenant id
spellings, roles), releases without an event, poisoning the log with what a caller
controls, keeping a follow stream after revocation, placing events in other tenants'
logs, page tokens and numeric extremes, secrets in records and service logs, and the
unauthenticated limiter.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
import structlog
from rpc_harness import MiB, ServerThread, Stubs, Tenancy, bearer

from reelvault.app import Vault
from reelvault.audit import PLATFORM_LOG, MemoryAuditSink, StoredEvent
from reelvault.auth import Role
from reelvault.catalog.audit import AuditFilter
from reelvault.catalog.tables import AuditTreeRow, TenantRow
from reelvault.config import Settings
from reelvault.v1 import (
    apikey_pb2,
    asset_pb2,
    asset_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    tenant_pb2,
)

pytestmark = pytest.mark.db

WINDOW = {"start_time": {"seconds": 0}, "end_time": {"seconds": 2**33}}
TENANT_ROLES_BUT_AUDITOR = (Role.ADMIN, Role.INGEST, Role.RENDERER, Role.DISTRIBUTOR, Role.PRIVACY)


@pytest.fixture
def audit(channel: grpc.Channel) -> audit_pb2_grpc.AuditServiceStub:
    return audit_pb2_grpc.AuditServiceStub(channel)


@pytest.fixture
def platform_auditor(vault: Vault) -> str:
    return vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_AUDITOR)[1]


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def events(vault: Vault, log_id: str, **filters: Any) -> list[StoredEvent]:
    found: list[StoredEvent] = []
    token = ""
    while True:
        page = vault.audit_log.list_events(
            log_id,
            start_us=0,
            end_us=2**62,
            where=AuditFilter(**filters),
            page_size=1000,
            page_token=token,
        )
        found += page.events
        token = page.next_page_token
        if not token:
            return found


def wait_for_events(vault: Vault, log_id: str, count: int, **filters: Any) -> list[StoredEvent]:
    """Events recorded in the background (a cancelled stream's) trail the reply."""
    deadline = time.monotonic() + 10
    while True:
        found = events(vault, log_id, **filters)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def key_id(token: str) -> str:
    return token.split("_")[1]


def secret_of(token: str) -> str:
    """The secret part of ``rvk_<key id>_<secret>`` (which may itself hold '_')."""
    return token.split("_", 2)[2]


def upload(api: Stubs, tenant: Tenancy, data: bytes, path: str = "a.ts") -> asset_pb2.Asset:
    messages = [asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=path))]
    messages += [asset_pb2.UploadRequest(chunk=data[i : i + MiB]) for i in range(0, len(data), MiB)]
    messages.append(asset_pb2.UploadRequest(end=asset_pb2.UploadEnd()))
    return api.assets.Upload(iter(messages), metadata=tenant.md(Role.INGEST))


def audit_reads(
    audit: audit_pb2_grpc.AuditServiceStub, tenant_id: str, metadata: Any
) -> dict[str, Callable[[], Any]]:
    """One call of each AuditService read, about ``tenant_id``."""
    return {
        "ListAuditEvents": lambda: audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(tenant_id=tenant_id, **WINDOW), metadata=metadata
        ),
        "ExportAuditEvents": lambda: list(
            audit.ExportAuditEvents(
                audit_pb2.ExportAuditEventsRequest(tenant_id=tenant_id), metadata=metadata
            )
        ),
        "GetCheckpoint": lambda: audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(tenant_id=tenant_id), metadata=metadata
        ),
        "GetInclusionProof": lambda: audit.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(tenant_id=tenant_id, sequence=0, tree_size=1),
            metadata=metadata,
        ),
        "GetConsistencyProof": lambda: audit.GetConsistencyProof(
            audit_pb2.GetConsistencyProofRequest(tenant_id=tenant_id, old_size=1, new_size=1),
            metadata=metadata,
        ),
    }


# -- tenant confusion: defeated -------------------------------------------------------------


def test_a_tenant_auditor_reaches_no_other_log_by_any_spelling(
    audit, vault: Vault, acme: Tenancy, globex: Tenancy
):
    vault.audit_log.integrate_all()  # globex's and the platform log have trees to prove
    spellings = [
        globex.id,
        globex.id.upper(),
        acme.id.upper(),
        " " + acme.id,
        acme.id + "\n",
        acme.id + "\x00",
        "platform",
        "PLATFORM",
        "*",
        "%",
        "0" * 32,
    ]
    others_before = (events(vault, globex.id), events(vault, PLATFORM_LOG))
    for tenant_id in spellings:
        for name, call in audit_reads(audit, tenant_id, acme.md(Role.AUDITOR)).items():
            code = outcome(call)
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
                tenant_id,
                name,
                code,
            )
    # Every refused attempt is on record in the caller's own log, none in another.
    assert (events(vault, globex.id), events(vault, PLATFORM_LOG)) == others_before
    refused = events(vault, acme.id, actions=["audit.read"], outcomes=["failed"])
    assert len(refused) == len(spellings) * 5


def test_a_platform_auditor_names_a_log_only_by_a_canonical_tenant_id(
    audit, vault: Vault, acme: Tenancy, platform_auditor: str
):
    for tenant_id in (acme.id.upper(), "platform", "PLATFORM", " ", acme.id + " "):
        for name, call in audit_reads(audit, tenant_id, bearer(platform_auditor)).items():
            assert outcome(call) == grpc.StatusCode.INVALID_ARGUMENT, (tenant_id, name)


def test_nobody_but_auditors_reads_the_log(
    audit, acme: Tenancy, platform_token: str, platform_auditor: str
):
    callers = [acme.md(role) for role in TENANT_ROLES_BUT_AUDITOR] + [bearer(platform_token)]
    for metadata in callers:
        for tenant_id in ("", acme.id):
            for name, call in audit_reads(audit, tenant_id, metadata).items():
                assert outcome(call) == grpc.StatusCode.PERMISSION_DENIED, (metadata, name)
    # ...and auditors only read: they set no retention.
    for metadata in (acme.md(Role.AUDITOR), bearer(platform_auditor)):
        refused = rpc_error(
            lambda metadata=metadata: audit.SetAuditRetention(
                audit_pb2.SetAuditRetentionRequest(tenant_id=acme.id, legal_hold=False),
                metadata=metadata,
            )
        )
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_tenant_admin_sets_no_other_tenants_retention_or_hold(
    audit, vault: Vault, acme: Tenancy, globex: Tenancy, platform_token: str
):
    audit.SetAuditRetention(
        audit_pb2.SetAuditRetentionRequest(tenant_id=globex.id, legal_hold=True),
        metadata=bearer(platform_token),
    )
    for tenant_id in (globex.id, globex.id.upper()):
        refused = rpc_error(
            lambda tenant_id=tenant_id: audit.SetAuditRetention(
                audit_pb2.SetAuditRetentionRequest(
                    tenant_id=tenant_id, retention_days=1, legal_hold=False
                ),
                metadata=acme.md(),
            )
        )
        assert refused.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    with vault.database.transaction(readonly=True) as session:
        row = session.get(TenantRow, globex.id)
        assert row is not None and (row.audit_retention_days, row.legal_hold) == (None, True)
    assert not events(vault, globex.id, actors=[key_id(acme.tokens[Role.ADMIN])])


def test_a_tenant_admin_mints_no_platform_auditor_and_no_other_tenants_auditor(
    api: Stubs, acme: Tenancy, globex: Tenancy
):
    platform = rpc_error(
        lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_PLATFORM_AUDITOR),
            metadata=acme.md(),
        )
    )
    assert platform.code() == grpc.StatusCode.PERMISSION_DENIED
    other = rpc_error(
        lambda: api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(tenant_id=globex.id, role=apikey_pb2.ROLE_AUDITOR),
            metadata=acme.md(),
        )
    )
    assert other.code() == grpc.StatusCode.NOT_FOUND


# -- findings: what a caller can make the log hold, or where ------------------------------------


def test_a_listing_prefix_cannot_poison_the_log(api: Stubs, audit, vault: Vault, acme: Tenancy):
    poison = "\x01" * (3 * MiB)  # a distributor's key is enough
    refused = rpc_error(
        lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(prefix=poison), metadata=acme.md(Role.DISTRIBUTOR)
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The tenant's auditor can no longer export the log (RESOURCE_EXHAUSTED: the record
    # is larger than any message), so it cannot verify it; nor list the time window.
    auditor = acme.md(Role.AUDITOR)
    checkpoint = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor)
    export = audit_pb2.ExportAuditEventsRequest(to_sequence=checkpoint.size)
    assert outcome(lambda: list(audit.ExportAuditEvents(export, metadata=auditor))) == (
        grpc.StatusCode.OK
    )
    listing = audit_pb2.ListAuditEventsRequest(**WINDOW)
    assert outcome(lambda: audit.ListAuditEvents(listing, metadata=auditor)) == (grpc.StatusCode.OK)
    largest = max(len(e.record or b"") for e in events(vault, acme.id))
    assert largest < 64 * 1024, f"an audit record of {largest} bytes"


def test_a_revoked_auditor_key_stops_receiving_followed_events(
    api: Stubs, audit, vault: Vault, acme: Tenancy
):
    info, token = vault.api_keys.create(tenant_id=acme.id, role=Role.AUDITOR)
    stream = audit.ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(follow=True), metadata=bearer(token), timeout=15
    )
    next(stream)  # the stream is open and authenticated
    api.keys.RevokeApiKey(apikey_pb2.RevokeApiKeyRequest(api_key_id=info.id), metadata=acme.md())
    refused = rpc_error(
        lambda: api.keys.ListApiKeys(apikey_pb2.ListApiKeysRequest(), metadata=bearer(token))
    )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED  # revoked everywhere else
    time.sleep(1.5)  # a few of the stream's polls
    upload(api, acme, b"after the revocation", path="secret-project/cut-3.mp4")
    leaked: list[str] = []
    try:
        for record in stream:
            reelvault = json.loads(record.record)["unmapped"]["reelvault"]
            leaked.append(reelvault["action"])
            if reelvault["action"] == "asset.write":
                break
    except grpc.RpcError as error:
        assert error.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ), error
    finally:
        stream.cancel()
    assert "asset.write" not in leaked, leaked


def test_an_attempt_on_another_tenants_key_is_recorded_in_the_callers_log(
    api: Stubs, vault: Vault, acme: Tenancy, globex: Tenancy
):
    globex_before = len(events(vault, globex.id))
    theirs = key_id(globex.tokens[Role.RENDERER])
    nobodys = secrets.token_hex(8)
    for target in (theirs, nobodys):
        refused = rpc_error(
            lambda target=target: api.keys.RevokeApiKey(
                apikey_pb2.RevokeApiKeyRequest(api_key_id=target),
                metadata=acme.md(Role.ADMIN, ("user-agent", "text of acme's choosing")),
            )
        )
        assert refused.code() == grpc.StatusCode.NOT_FOUND  # the same answer: good
    # The caller's own log has both attempts; in it, an existing key of another tenant
    # must look like a missing one, as it does in the answer.
    mine = events(vault, acme.id, actions=["apikey.revoke"])
    assert len(mine) == 2, [(e.status, e.resource_id) for e in mine]
    # Nothing of acme's attempt is written into globex's log.
    assert len(events(vault, globex.id)) == globex_before


def test_a_tenant_that_does_not_exist_has_no_log(
    api: Stubs, audit, vault: Vault, platform_token: str, platform_auditor: str
):
    ghost = secrets.token_hex(16)
    missing = rpc_error(
        lambda: api.tenants.GetTenant(
            tenant_pb2.GetTenantRequest(tenant_id=ghost), metadata=bearer(platform_token)
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    refused = rpc_error(
        lambda: audit.SetAuditRetention(
            audit_pb2.SetAuditRetentionRequest(tenant_id=ghost, legal_hold=False),
            metadata=bearer(platform_token),
        )
    )
    assert refused.code() == grpc.StatusCode.NOT_FOUND
    phantom = outcome(
        lambda: audit.GetCheckpoint(
            audit_pb2.GetCheckpointRequest(tenant_id=ghost), metadata=bearer(platform_auditor)
        )
    )
    vault.audit_log.integrate_all()
    assert events(vault, ghost) == []
    with vault.database.transaction(readonly=True) as session:
        assert session.get(AuditTreeRow, ghost) is None
    platform = events(vault, PLATFORM_LOG, actions=["tenant.read", "audit.policy"])
    assert {e.action for e in platform} == {"tenant.read", "audit.policy"}
    assert phantom == grpc.StatusCode.NOT_FOUND


def test_a_refused_request_cannot_fail_the_audit_write_of_others(
    api: Stubs, vault: Vault, acme: Tenancy, globex: Tenancy, monkeypatch: pytest.MonkeyPatch
):
    asset = upload(api, acme, b"acme's", path="a.ts")
    log = vault.audit_log
    commit = log._commit
    gate, holding = threading.Event(), threading.Event()

    def first_commit_waits(rows: list[dict[str, Any]]) -> None:
        if not holding.is_set():
            holding.set()
            gate.wait(10)
        commit(rows)

    # Hold the group commit on an unrelated event, so that the next two events, globex's
    # refused call and acme's download, queue up and are committed as one batch.
    monkeypatch.setattr(log, "_commit", first_commit_waits)
    blocker = threading.Thread(target=lambda: vault.auditor.record("asset.gc", tenant_id=None))
    blocker.start()
    assert holding.wait(10)
    codes: dict[str, grpc.StatusCode] = {}

    def attack() -> None:
        codes["globex"] = outcome(
            lambda: api.assets.DeleteAsset(
                asset_pb2.DeleteAssetRequest(asset_id="\x00" * 32),
                metadata=globex.md(Role.RENDERER),  # may not delete: refused
            )
        )

    def victim() -> None:
        codes["acme"] = outcome(
            lambda: list(
                api.assets.Download(
                    asset_pb2.DownloadRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER)
                )
            )
        )

    callers = [threading.Thread(target=attack), threading.Thread(target=victim)]
    for thread in callers:
        thread.start()
    deadline = time.monotonic() + 10
    while len(getattr(log, "_queue", ())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.set()
    for thread in [blocker, *callers]:
        thread.join(20)
    assert codes == {"globex": grpc.StatusCode.PERMISSION_DENIED, "acme": grpc.StatusCode.OK}
    (refused,) = events(vault, globex.id, actions=["asset.delete"])
    assert refused.resource_id is None or re.fullmatch(r"[0-9a-f]{32}", refused.resource_id)


def _token(log_id: str, start_us: int, end_us: int, time_us: int, row_id: int) -> str:
    """A page token as the service makes them: the query's key, then a position. The key
    is a plain hash of the query, so a caller can make a token for any position."""
    query = json.dumps([log_id, start_us, end_us, [[], [], [], [], []]], separators=(",", ":"))
    raw = hashlib.sha256(query.encode()).digest()[:12]
    raw += time_us.to_bytes(8, "big", signed=True) + row_id.to_bytes(8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "case",
    ["huge-end", "huge-negative-start", "huge-both", "token-row-2^64-1", "token-row-2^63"],
)
def test_numeric_extremes_of_a_listing_are_invalid_arguments_not_internal(
    audit, acme: Tenancy, case: str
):
    seconds = {
        "huge-end": (0, 2**62),
        "huge-negative-start": (-(2**62), 0),
        "huge-both": (2**62, 2**62 + 1),
    }
    if case in seconds:
        start, end = seconds[case]
        request = audit_pb2.ListAuditEventsRequest(
            start_time={"seconds": start}, end_time={"seconds": end}
        )
    else:
        row = 2**64 - 1 if case == "token-row-2^64-1" else 2**63
        request = audit_pb2.ListAuditEventsRequest(
            start_time={"seconds": 0},
            end_time={"seconds": 10**9},
            page_token=_token(acme.id, 0, 10**15, 0, row),
        )
    code = outcome(lambda: audit.ListAuditEvents(request, metadata=acme.md(Role.AUDITOR)))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code


# -- retention: defeated (fixed during the review) -------------------------------------------


def test_the_retention_event_says_what_was_set(audit, vault: Vault, acme: Tenancy):
    """Lifting a legal hold or cutting retention to a day shows in the log as such (the
    tenant row only keeps the latest values)."""
    audit.SetAuditRetention(
        audit_pb2.SetAuditRetentionRequest(retention_days=1, legal_hold=False),
        metadata=acme.md(),
    )
    (event,) = events(vault, acme.id, actions=["audit.policy"])
    detail = json.loads(event.record or b"{}")["unmapped"]["reelvault"].get("detail", {})
    assert detail.get("retention_days") == 1 and detail.get("legal_hold") in (False, 0)


# -- page tokens and proofs: defeated -------------------------------------------------------------


def test_a_page_token_is_bound_to_its_log_and_query(
    audit, api: Stubs, acme: Tenancy, globex: Tenancy, platform_auditor: str
):
    for n in range(3):
        upload(api, acme, b"x", path=f"{n}.ts")
        upload(api, globex, b"y", path=f"{n}.ts")
    first = audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(page_size=1, **WINDOW), metadata=acme.md(Role.AUDITOR)
    )
    token = first.next_page_token
    assert token
    reuses = [
        (globex.id, {}),  # the same position in another tenant's log
        (acme.id, {"actions": ["asset.write"]}),  # another filter
        (acme.id, {"end_time": {"seconds": 2**33 - 1}}),  # another range
    ]
    for tenant_id, change in reuses:
        request: dict[str, Any] = {"tenant_id": tenant_id, "page_size": 1, **WINDOW, **change}
        refused = rpc_error(
            lambda request=request: audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_token=token, **request),
                metadata=bearer(platform_auditor),
            )
        )
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A token made up for any position of another log is refused for the caller's own.
    forged = _token(globex.id, 0, 2**33 * 1_000_000, 0, 0)
    refused = rpc_error(
        lambda: audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_token=forged, **WINDOW),
            metadata=acme.md(Role.AUDITOR),
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    for size in (-1, 1001, 2**31 - 1):
        bad = rpc_error(
            lambda size=size: audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_size=size, **WINDOW),
                metadata=acme.md(Role.AUDITOR),
            )
        )
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_proof_and_export_bounds_are_invalid_arguments_never_internal(audit, acme: Tenancy):
    auditor = acme.md(Role.AUDITOR)
    size = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor).size
    assert size >= 2
    big = 2**63 - 1
    inclusion = [(-1, size), (0, -1), (0, 0), (size, size), (0, size + 1), (big, big), (-big, 1)]
    for sequence, tree_size in inclusion:
        code = outcome(
            lambda s=sequence, t=tree_size: audit.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(sequence=s, tree_size=t), metadata=auditor
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (sequence, tree_size)
    consistency = [(-1, size), (0, size), (2, 1), (1, size + 1), (big, big), (-big, -1)]
    for old, new in consistency:
        code = outcome(
            lambda o=old, n=new: audit.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(old_size=o, new_size=n), metadata=auditor
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (old, new)
    exports = {
        (-1, 0): grpc.StatusCode.INVALID_ARGUMENT,
        (0, -1): grpc.StatusCode.INVALID_ARGUMENT,
        (5, 2): grpc.StatusCode.INVALID_ARGUMENT,
        (0, big): grpc.StatusCode.INVALID_ARGUMENT,  # beyond the integrated log
        (big, 0): grpc.StatusCode.OK,  # past the end: nothing to send
        (-big, big): grpc.StatusCode.INVALID_ARGUMENT,
    }
    for (start, end), expected in exports.items():
        code = outcome(
            lambda s=start, e=end: list(
                audit.ExportAuditEvents(
                    audit_pb2.ExportAuditEventsRequest(from_sequence=s, to_sequence=e),
                    metadata=auditor,
                )
            )
        )
        assert code == expected, (start, end, code)


# -- releases without an event: defeated ----------------------------------------------------------


def test_nothing_is_answered_while_the_log_cannot_record(
    api: Stubs, audit, vault: Vault, acme: Tenancy, platform_token: str, platform_auditor: str
):
    """The methods the fail-closed test of test_rpc_audit.py leaves out, with every write
    of the log failing (and only those): each call ends UNAVAILABLE, with no answer."""
    asset = upload(api, acme, b"abc")
    empty = upload(api, acme, b"", path="empty.ts")
    vault.audit_log.integrate_all()
    auditor = acme.md(Role.AUDITOR)
    calls: dict[str, Callable[[], Any]] = {
        "ListTenants": lambda: api.tenants.ListTenants(
            tenant_pb2.ListTenantsRequest(), metadata=bearer(platform_token)
        ),
        "GetTenant": lambda: api.tenants.GetTenant(
            tenant_pb2.GetTenantRequest(tenant_id=acme.id), metadata=acme.md(Role.AUDITOR)
        ),
        "ListApiKeys": lambda: api.keys.ListApiKeys(
            apikey_pb2.ListApiKeysRequest(), metadata=acme.md()
        ),
        "ListAssets": lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(), metadata=acme.md(Role.DISTRIBUTOR)
        ),
        "Download of an empty asset": lambda: list(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=empty.id), metadata=acme.md(Role.RENDERER)
            )
        ),
        "Download of a suffix": lambda: list(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset.id, suffix_length=1),
                metadata=acme.md(Role.RENDERER),
            )
        ),
        **{
            f"{name} (tenant auditor)": call
            for name, call in audit_reads(audit, "", auditor).items()
        },
        **{
            f"{name} (platform auditor)": call
            for name, call in audit_reads(audit, "", bearer(platform_auditor)).items()
        },
        "follow": lambda: next(
            iter(
                audit.ExportAuditEvents(
                    audit_pb2.ExportAuditEventsRequest(follow=True), metadata=auditor, timeout=10
                )
            )
        ),
        "SetAuditRetention": lambda: audit.SetAuditRetention(
            audit_pb2.SetAuditRetentionRequest(retention_days=1, legal_hold=True),
            metadata=acme.md(),
        ),
    }
    failing = MemoryAuditSink()
    failing.unavailable = True
    sink, vault.auditor.sink = vault.auditor.sink, failing
    try:
        codes = {name: outcome(call) for name, call in calls.items()}
    finally:
        vault.auditor.sink = sink
    assert codes == {name: grpc.StatusCode.UNAVAILABLE for name in calls}
    with vault.database.transaction(readonly=True) as session:
        row = session.get(TenantRow, acme.id)
        assert row is not None and (row.audit_retention_days, row.legal_hold) == (None, False)


def test_a_download_cancelled_after_its_header_or_of_an_empty_asset_is_on_record(
    api: Stubs, vault: Vault, acme: Tenancy
):
    big = upload(api, acme, secrets.token_bytes(3 * MiB), path="big.ts")
    empty = upload(api, acme, b"", path="empty.ts")
    renderer = acme.md(Role.RENDERER)
    stream = api.assets.Download(asset_pb2.DownloadRequest(asset_id=big.id), metadata=renderer)
    assert next(stream).WhichOneof("payload") == "header"
    stream.cancel()
    messages = list(
        api.assets.Download(asset_pb2.DownloadRequest(asset_id=empty.id), metadata=renderer)
    )
    assert [m.WhichOneof("payload") for m in messages] == ["header"]
    reads = wait_for_events(vault, acme.id, 3, actions=["asset.read"])
    by_asset = {(e.resource_id, e.outcome, e.status) for e in reads}
    assert (big.id, "allowed", "OK") in by_asset
    assert (big.id, "failed", "CANCELLED") in by_asset
    assert (empty.id, "allowed", "OK") in by_asset


def test_a_malformed_request_body_does_not_suppress_the_event(
    channel: grpc.Channel, vault: Vault, acme: Tenancy
):
    """Bytes that are no protobuf message are refused after authentication, and the
    refusal is on record like any other failure."""
    methods = {
        "/reelvault.v1.AuditService/ListAuditEvents": b"\x0a\xff\xff\xff",  # a cut string
        "/reelvault.v1.AuditService/GetCheckpoint": b"\x0a\x02\xc3\x28",  # bad UTF-8
    }
    for method, body in methods.items():
        call = channel.unary_unary(
            method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw
        )
        refused = rpc_error(lambda call=call, body=body: call(body, metadata=acme.md(Role.AUDITOR)))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    recorded = events(vault, acme.id, methods=list(methods), outcomes=["failed"])
    assert {(e.method, e.status) for e in recorded} == {
        (method, "INVALID_ARGUMENT") for method in methods
    }


# -- injection and secrets: defeated --------------------------------------------------------------


def test_hostile_strings_leave_one_line_ascii_records_and_break_no_write(
    api: Stubs, audit, vault: Vault, acme: Tenancy, platform_token: str
):
    """What a caller controls (user agent, request id, path, prefix, tenant name) at its
    longest and strangest: every call is answered and recorded (PostgreSQL enforces the
    column sizes), and every record stays one line of canonical ASCII JSON."""
    # gRPC metadata values are printable ASCII (the client library refuses the rest).
    hostile_agent = 'x"},"injected":{"a":"\\u0000\\n' + "~" * 10_000
    hostile_id = '"},"injected":"' + "r" * 200
    long_path = "/".join(["\u00e9" * 100] * 5)  # 1,004 bytes of UTF-8
    metadata = (("user-agent", hostile_agent), ("x-request-id", hostile_id))
    asset = upload(api, acme, b"x", path=long_path)
    api.assets.StatAsset(
        asset_pb2.StatAssetRequest(asset_id=asset.id), metadata=acme.md(Role.RENDERER, *metadata)
    )
    refused = rpc_error(
        lambda: api.assets.ListAssets(
            asset_pb2.ListAssetsRequest(prefix='a"\n}{\u2028'),
            metadata=acme.md(Role.DISTRIBUTOR, *metadata),
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    api.tenants.CreateTenant(
        tenant_pb2.CreateTenantRequest(name='"},{' + "\u00e9" * 124),
        metadata=bearer(platform_token, *metadata),
    )
    rpc_error(
        lambda: api.assets.StatAsset(
            asset_pb2.StatAssetRequest(asset_id="f" * 32), metadata=bearer("rvk_" + "x" * 5000)
        )
    )
    checkpoint = audit.GetCheckpoint(
        audit_pb2.GetCheckpointRequest(), metadata=acme.md(Role.AUDITOR)
    )
    lines = [
        r.record
        for r in audit.ExportAuditEvents(
            audit_pb2.ExportAuditEventsRequest(to_sequence=checkpoint.size),
            metadata=acme.md(Role.AUDITOR),
        )
    ]
    vault.audit_log.integrate_all()
    every = lines + [e.record or b"" for e in events(vault, PLATFORM_LOG)]
    for line in every:
        assert re.fullmatch(rb"[\x20-\x7e]+", line), line[:200]
        record = json.loads(line)
        assert "injected" not in record
        agent = record.get("http_request", {}).get("user_agent", "")
        assert len(agent) <= 256 and agent.isprintable()
        request_id = record["api"].get("request", {}).get("uid", "")
        assert re.fullmatch(r"[A-Za-z0-9._:-]{0,128}", request_id)
    stat = [json.loads(x) for x in lines if b'"asset.stat"' in x]
    assert any(r["resources"][0].get("name") == long_path for r in stat)


def test_no_secret_reaches_an_audit_record_or_a_service_log_line(
    api: Stubs, audit, vault: Vault, acme: Tenancy, platform_token: str
):
    data = b"PAYLOAD-" + secrets.token_hex(32).encode()
    with structlog.testing.capture_logs() as logs:
        asset = upload(api, acme, data, path="p.ts")
        created = api.keys.CreateApiKey(
            apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_RENDERER), metadata=acme.md()
        )
        list(
            api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset.id), metadata=bearer(created.secret)
            )
        )
        forged = created.secret[:-5] + (
            "AAAAA" if not created.secret.endswith("AAAAA") else "BBBBA"
        )
        for token in (forged, created.secret + "x", "Bearer " + created.secret):
            rpc_error(
                lambda token=token: api.assets.ListAssets(
                    asset_pb2.ListAssetsRequest(), metadata=bearer(token)
                )
            )
        # A failing audit write logs its exception chain: it must carry no secret either.
        with vault.database.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_away"))
        try:
            for call in (
                lambda: api.keys.CreateApiKey(
                    apikey_pb2.CreateApiKeyRequest(role=apikey_pb2.ROLE_RENDERER),
                    metadata=acme.md(),
                ),
                lambda: list(
                    api.assets.Download(
                        asset_pb2.DownloadRequest(asset_id=asset.id),
                        metadata=bearer(created.secret),
                    )
                ),
            ):
                assert outcome(call) == grpc.StatusCode.UNAVAILABLE
        finally:
            with vault.database.engine.begin() as connection:
                connection.execute(sa.text("ALTER TABLE audit_events_away RENAME TO audit_events"))
        time.sleep(0.2)  # the access log line trails the reply
    text = []
    for entry in logs:
        text.append(repr(entry))
        error = entry.get("exc_info")
        if isinstance(error, BaseException):
            text.append("".join(traceback.format_exception(error)))
    logged = "\n".join(text)
    vault.audit_log.integrate_all()
    with vault.database.transaction(readonly=True) as session:
        bodies = "".join(session.scalars(sa.text("SELECT body FROM audit_events")))
    secret_parts = [secret_of(t) for t in (*acme.tokens.values(), platform_token)]
    secret_parts += [secret_of(created.secret), secret_of(forged)]
    for part in secret_parts:
        assert part not in logged and part not in bodies
    assert data.decode() not in logged and data.decode() not in bodies


# -- the unauthenticated limiter over IPv6 --------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def ipv6_server(vault: Vault) -> Iterator[ServerThread]:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    thread = ServerThread(vault, Settings(grpc_host="::1", grpc_port=0, shutdown_grace=5.0))
    try:
        yield thread
    finally:
        thread.close()


def test_an_ipv6_client_reconnecting_gets_one_burst(ipv6_server: ServerThread, vault: Vault):
    attempts = 25
    for _ in range(attempts):
        # A fresh channel with its own subchannel pool: a new connection, a new port.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"[::1]:{ipv6_server.port}", options=options) as channel:
            stub = asset_pb2_grpc.AssetServiceStub(channel)
            rpc_error(
                lambda stub=stub: stub.StatAsset(
                    asset_pb2.StatAssetRequest(asset_id="0" * 32), metadata=bearer("rvk_nope")
                )
            )
    recorded = events(vault, PLATFORM_LOG, outcomes=["denied"])
    peers = [json.loads(e.record or b"{}").get("src_endpoint") for e in recorded[:3]]
    assert len(recorded) <= 10, (len(recorded), peers)
