"""The adversarial review of #12, one test per finding (docs/urls.md): leaked and rotated
keys, revocation that survives a re-upload, forged forwarding headers, floods of made-up
key ids, cookies under a public cache, and answers that must not tell a refused token which
paths exist. Each failed on the code the review read."""

from __future__ import annotations

import base64
import json
import random

import pytest
from origin_harness import OriginThread, target_of, upload
from sqlalchemy import event

from reelvault.app import Vault
from reelvault.audit import MemoryAuditSink
from reelvault.audit.events import PLATFORM_LOG
from reelvault.clock import FakeClock
from reelvault.distribution.keys import UrlSigningKeys
from reelvault.distribution.tokens import Claims, SigningKey, sign
from reelvault.errors import InvalidArgument
from reelvault.origin.app import OriginConfig

pytestmark = pytest.mark.db

MAX_TTL = 86400


def leaked_key(vault: Vault, tenant: str) -> SigningKey:
    """The tenant's current Ed25519 signing key, secret included, as a thief would hold it."""
    return vault.distribution.keys.signing_key(tenant)


def test_a_leaked_rotated_key_cannot_mint_a_token_beyond_the_maximum_lifetime(
    vault: Vault, origin: OriginThread, tenant: str, clock: FakeClock
) -> None:
    info = upload(vault, tenant, "show/ep1.mp4", b"x" * 1000)
    old = leaked_key(vault, tenant)
    rotated_at = int(clock.now())
    clock.advance(5)
    vault.distribution.keys.rotate(tenant)
    path = f"{tenant}/show/"
    # backdated to the rotation, living far longer than any issuer may give
    forged = Claims(
        resource=path, expires_at=rotated_at + 10 * MAX_TTL, not_before=rotated_at,
        issued_at=rotated_at,
    )  # fmt: skip
    answer = origin.fetch(f"/t/{sign(forged, old)}/{tenant}/show/ep1.mp4")
    assert answer.status == 403
    assert b"lifetime" in answer.body
    # within the bounds, the old key still verifies during the overlap...
    bounded = Claims(
        resource=path, expires_at=rotated_at + MAX_TTL, not_before=rotated_at,
        issued_at=rotated_at,
    )  # fmt: skip
    token = sign(bounded, old)
    assert origin.fetch(f"/t/{token}/{tenant}/show/ep1.mp4").status == 200
    # ...until the leak is answered by retiring it at once
    vault.distribution.keys.rotate(tenant, retire_previous=True)
    clock.advance(31)  # the origin's key snapshot is refreshed
    assert origin.fetch(f"/t/{token}/{tenant}/show/ep1.mp4").status == 403
    assert info.size == 1000


def test_retire_previous_drops_the_secret_and_refuses_every_token_of_the_key(
    vault: Vault, origin: OriginThread, tenant: str, clock: FakeClock
) -> None:
    info = upload(vault, tenant, "show/ep1.mp4", b"y" * 100)
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600)
    assert origin.fetch(target_of(issued.url)).status == 200
    new, _ = vault.distribution.keys.rotate(tenant, retire_previous=True)
    states = {k.kid: k.state for k in vault.distribution.keys.list(tenant)}
    assert states == {issued.kid: "retired", new.kid: "signing"}
    clock.advance(31)
    answer = origin.fetch(target_of(issued.url))
    assert answer.status == 403
    assert b"unknown key" in answer.body


def test_asset_revocation_survives_a_reupload_at_the_same_path(
    vault: Vault, origin: OriginThread, tenant: str, clock: FakeClock
) -> None:
    first = upload(vault, tenant, "show/ep1.mp4", b"old content")
    issued = vault.distribution.issue(tenant, asset_id=first.id, ttl=600)
    vault.distribution.revoke_asset(tenant, first.id)
    assert origin.fetch(target_of(issued.url)).status == 403
    vault.assets.delete(tenant, first.id)
    second = upload(vault, tenant, "show/ep1.mp4", b"NEW CONTENT")
    assert second.id != first.id
    answer = origin.fetch(target_of(issued.url))
    assert answer.status == 403
    assert b"NEW" not in answer.body
    clock.advance(2)  # a token issued after the revocation works
    fresh = vault.distribution.issue(tenant, asset_id=second.id, ttl=600)
    assert origin.fetch(target_of(fresh.url)).body == b"NEW CONTENT"


@pytest.fixture
def origin_config() -> OriginConfig:
    import ipaddress  # noqa: PLC0415 - local to this fixture

    return OriginConfig(leeway=60, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))


def test_a_forged_forwarded_for_line_before_the_proxys_own_is_not_believed(
    vault: Vault, origin: OriginThread, tenant: str
) -> None:
    info = upload(vault, tenant, "show/ep1.mp4", b"z" * 10)
    target = target_of(
        vault.distribution.issue(tenant, asset_id=info.id, ttl=600, client_ip="203.0.113.0/24").url
    )
    # http.client sends both lines: the client's forged one first, the proxy's own after
    connection_headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "198.51.100.1")]
    import http.client  # noqa: PLC0415 - needs repeated headers, which fetch() cannot send

    conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in connection_headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        assert response.status == 403  # the client is 198.51.100.1, outside the token's /24
    finally:
        conn.close()
    # one proxy hop naming a client inside the network is believed
    inside = origin.fetch(target, headers={"X-Forwarded-For": "203.0.113.9"})
    assert inside.status == 200


def test_made_up_key_ids_cost_at_most_one_catalog_query_a_second_in_all(
    vault: Vault, tenant: str, clock: FakeClock
) -> None:
    keys = vault.distribution.keys
    real = keys.signing_key(tenant).kid
    assert keys.verifying_key(real) is not None
    queries: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "url_signing_keys" in statement:
            queries.append(statement)

    engine = vault.database._engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        clock.advance(2)
        for n in range(500):
            assert keys.verifying_key(f"made-up-{n}") is None
        assert len(queries) <= 1
        assert keys.verifying_key(real) is not None  # real keys stay known
        clock.advance(1.5)
        for n in range(500, 20_500):
            keys.verifying_key(f"made-up-{n}")
        assert len(queries) <= 2
        assert keys.verifying_key(real) is not None
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_another_process_never_signs_with_a_key_rotated_away(
    vault: Vault, tenant: str, clock: FakeClock, audit_sink: MemoryAuditSink
) -> None:
    other = UrlSigningKeys(
        vault.database, vault.root, clock, auditor=vault.auditor, max_ttl=MAX_TTL, leeway=60
    )
    before = other.signing_key(tenant).kid
    new, _ = vault.distribution.keys.rotate(tenant)
    assert other.signing_key(tenant).kid == new.kid != before


def test_cookie_answers_stay_private_under_a_public_cache(
    vault: Vault, tenant: str, clock: FakeClock
) -> None:
    info = upload(vault, tenant, "show/ep1.mp4", b"c" * 100)
    public = OriginThread(vault, OriginConfig(leeway=60, public_cache=True))
    try:
        issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600, cookie=True)
        token = issued.cookie.split(";", 1)[0].split("=", 1)[1]
        by_cookie = public.fetch(
            f"/v/{tenant}/show/ep1.mp4", headers={"Cookie": f"rv_token={token}"}
        )
        assert by_cookie.status == 200
        assert by_cookie.header("cache-control").startswith("private")
        by_url = public.fetch(f"/v/{tenant}/show/ep1.mp4?token={token}")
        assert by_url.header("cache-control").startswith("public")
    finally:
        public.close()


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("show/100%.mp4", {}),
        ("show\\back.mp4", {}),
        ("show/ep1.mp4", {"audience": "é" * 200}),
    ],
)
def test_unrepresentable_issue_requests_are_invalid_argument(
    vault: Vault, tenant: str, path: str, options: dict[str, str]
) -> None:
    info = upload(vault, tenant, path, b"p")
    with pytest.raises(InvalidArgument):
        vault.distribution.issue(tenant, asset_id=info.id, ttl=60, **options)  # type: ignore[arg-type]


def test_a_revoked_token_learns_nothing_about_which_paths_exist(
    vault: Vault, origin: OriginThread, tenant: str, clock: FakeClock
) -> None:
    upload(vault, tenant, "show/seg1.ts", b"1")
    issued = vault.distribution.issue(tenant, prefix="show/", ttl=600, session_id="s-9")
    vault.distribution.revoke_session(tenant, "s-9")
    base = target_of(issued.url)
    existing, missing = origin.fetch(base + "seg1.ts"), origin.fetch(base + "seg2.ts")
    assert (existing.status, missing.status) == (403, 403)
    assert existing.body == missing.body


def test_an_expired_token_is_410_only_where_it_reached(
    vault: Vault, origin: OriginThread, tenant: str, clock: FakeClock
) -> None:
    upload(vault, tenant, "show/seg1.ts", b"1")
    upload(vault, tenant, "other/seg1.ts", b"1")
    issued = vault.distribution.issue(tenant, prefix="show/", ttl=60)
    clock.advance(60 + 61)
    assert origin.fetch(target_of(issued.url) + "seg1.ts").status == 410
    elsewhere = target_of(issued.url).replace("/show/", "/other/") + "seg1.ts"
    assert origin.fetch(elsewhere).status == 403


def test_targets_outside_every_route_are_refused_and_audited(
    vault: Vault, origin: OriginThread, audit_sink: MemoryAuditSink
) -> None:
    for target in ("*", "/x", "/"):
        answer = origin.fetch(target)
        assert answer.status == 403, target
        assert answer.header("cache-control") == "no-store"
    refused = [e for e in audit_sink.events if e.log_id == PLATFORM_LOG]
    assert len(refused) == 3
    assert all(e.action == "asset.fetch" and e.status == "PERMISSION_DENIED" for e in refused)


def test_a_non_ascii_if_range_is_no_500(vault: Vault, origin: OriginThread, tenant: str) -> None:
    data = random.Random(3).randbytes(5000)
    info = upload(vault, tenant, "show/ep1.mp4", data)
    target = target_of(vault.distribution.issue(tenant, asset_id=info.id, ttl=600).url)
    answer = origin.fetch(target, headers={"Range": "bytes=0-9", "If-Range": "\xe9tag"})
    assert answer.status == 200
    assert answer.body == data


def test_the_hmac_secret_reaches_no_audit_event(
    vault: Vault, tenant: str, audit_sink: MemoryAuditSink
) -> None:
    _, secret = vault.distribution.keys.rotate(tenant, "hmac-sha256")
    assert secret is not None
    spellings = [
        secret.hex(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
    ]
    for recorded in audit_sink.events:
        text = repr(recorded) + json.dumps(dict(recorded.detail))
        assert not any(s in text for s in spellings)
