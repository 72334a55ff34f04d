"""The adversarial review of #12: the findings test_origin_http.py does not already cover
(docs/urls.md): a leaked verify-only key minting long-lived tokens, floods of made-up key
ids, a rotation seen by another issuing process, issue requests a URL cannot carry,
refused tokens probing for paths, and the HMAC secret kept out of the audit log. Each
failed on the code the review read."""

from __future__ import annotations

import base64
import json

import pytest
from origin_harness import OriginThread, target_of, upload
from sqlalchemy import event

from reelvault.app import Vault
from reelvault.audit import MemoryAuditSink
from reelvault.clock import FakeClock
from reelvault.distribution.keys import UrlSigningKeys
from reelvault.distribution.tokens import Claims, SigningKey, sign
from reelvault.errors import InvalidArgument

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
