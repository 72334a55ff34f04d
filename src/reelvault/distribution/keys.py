"""Each tenant's keys for distribution tokens, and the key lifecycle.

A key moves ``signing`` -> ``verify`` -> ``retired``. At most one key per tenant and
algorithm signs (a partial unique index); :meth:`UrlSigningKeys.rotate` creates the next
one and moves the old one to ``verify``, where it verifies only tokens issued before it
left ``signing`` until ``verify_until``: the longest a token it signed can live
(``2 x url_max_ttl``: a not-before at most one maximum TTL ahead, then at most one maximum
TTL of life) plus the clock-skew leeway. Past that it retires and its secret is dropped
from the catalog (``run_retirement``, in every service process). Someone holding a
verify-only key could still write an old ``iat`` into a token; the origin refuses any
token whose life or not-before lead exceeds the maximum TTL, so such a token cannot
outlive the overlap, and a leaked key is retired at once with ``rotate(...,
retire_previous=True)``.

Secrets (the Ed25519 seed, or the HMAC secret) are 32 random bytes from the root key
provider's ``generate_key``, stored wrapped by it, bound to the tenant and the key id.
Origins need only Ed25519 public keys; an HMAC key's secret must be shared with the edge
that checks it, so :meth:`UrlSigningKeys.rotate` returns it, once, to its caller.

The signing key is read from the catalog on every issuance (only its unwrapped secret is
cached), so a rotation is seen at once by every process that issues. Verifying keys come
from a per-process snapshot of all of them, reloaded after :data:`KEY_CACHE_TTL` seconds or,
for an unknown key id, at most once per :data:`MISS_INTERVAL` (a flood of made-up key ids
costs one query per second in all, not one per request or per id).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import select, update

from reelvault.audit import Auditor
from reelvault.catalog import Database
from reelvault.catalog.tables import TenantRow, UrlSigningKeyRow
from reelvault.clock import Clock
from reelvault.crypto.signing import ed25519_public_key
from reelvault.distribution.tokens import (
    ALG_ED25519,
    ALG_HMAC_SHA256,
    ALGORITHMS,
    SigningKey,
    VerifyingKey,
)
from reelvault.errors import InvalidArgument, KeyUnavailable
from reelvault.keys import RootKeyProvider, WrappedKey

__all__ = ["KEY_CACHE_TTL", "KeyInfo", "UrlSigningKeys"]

KEY_CACHE_TTL: Final = 30.0
MISS_INTERVAL: Final = 1.0
_log = structlog.get_logger("reelvault.distribution.keys")
_CONTEXT: Final = {"purpose": "reelvault url signing key"}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A signing key as operators and edges see it: never its secret."""

    kid: str
    tenant_id: str
    algorithm: str
    state: str
    public_key: bytes | None
    created_at: datetime
    state_changed_at: datetime
    verify_until: datetime | None


def _info(row: UrlSigningKeyRow) -> KeyInfo:
    return KeyInfo(
        kid=row.kid,
        tenant_id=row.tenant_id,
        algorithm=row.algorithm,
        state=row.state,
        public_key=row.public_key,
        created_at=row.created_at,
        state_changed_at=row.state_changed_at,
        verify_until=row.verify_until,
    )


class UrlSigningKeys:
    """The catalog's ``url_signing_keys``, over the root key provider.

    Args:
        max_ttl: the longest token lifetime (``url_max_ttl``); sets the overlap.
        leeway: the clock-skew leeway origins allow; added to the overlap.
    """

    def __init__(
        self,
        database: Database,
        root: RootKeyProvider,
        clock: Clock,
        *,
        auditor: Auditor,
        max_ttl: int,
        leeway: float,
    ) -> None:
        self._db = database
        self._root = root
        self._clock = clock
        self._audit = auditor
        self._overlap = timedelta(seconds=2 * max_ttl + leeway)
        self._lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}  # kid -> unwrapped secret (keys that sign)
        # Every key that verifies, as read at _snapshot_at (monotonic); reloaded whole when
        # older than KEY_CACHE_TTL, or on an unknown key id at most every MISS_INTERVAL.
        self._snapshot: dict[str, VerifyingKey] = {}
        self._until: dict[str, float] = {}  # kid -> verify_until (unix seconds)
        self._snapshot_at = -1e9
        self._reload_lock = threading.Lock()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    def _require_active(self, tenant_id: str) -> None:
        """A disabled, pending-deletion or destroyed tenant signs nothing (its URLs could
        not be served anyway: its keys are refused)."""
        with self._db.transaction(readonly=True) as session:
            state = session.scalar(select(TenantRow.state).where(TenantRow.id == tenant_id))
        if state is not None and state != "active":
            raise KeyUnavailable(f"the tenant is {state}")

    # -- lifecycle ------------------------------------------------------------------------

    def rotate(
        self, tenant_id: str, algorithm: str = ALG_ED25519, *, retire_previous: bool = False
    ) -> tuple[KeyInfo, bytes | None]:
        """Create the tenant's next signing key for ``algorithm``; the current one, if any,
        moves to ``verify``; with ``retire_previous`` (a leak) it and every key of the
        algorithm still verifying retire at once: every token they signed stops working
        (within :data:`KEY_CACHE_TTL` on other processes). Audited (``url.key-rotate``).

        Returns:
            The new key, and for an HMAC key its secret (shown once: the edge needs it).
        """
        self._check_algorithm(algorithm)
        self._require_active(tenant_id)
        now = self._now()
        kid = secrets.token_urlsafe(12)
        context = _CONTEXT | {"tenant": tenant_id, "kid": kid}
        secret, wrapped = self._root.generate_key(context)
        public = ed25519_public_key(secret) if algorithm == ALG_ED25519 else None
        with self._db.transaction() as session:
            # the current key; with retire_previous also every key still verifying
            states = ("signing", "verify") if retire_previous else ("signing",)
            previous = session.scalars(
                select(UrlSigningKeyRow).where(
                    UrlSigningKeyRow.tenant_id == tenant_id,
                    UrlSigningKeyRow.algorithm == algorithm,
                    UrlSigningKeyRow.state.in_(states),
                )
            ).all()
            for row in previous:
                row.state_changed_at = now
                if retire_previous:
                    row.state, row.wrapped_secret, row.verify_until = "retired", None, None
                else:
                    row.state, row.verify_until = "verify", now + self._overlap
            session.flush()
            row = UrlSigningKeyRow(
                kid=kid,
                tenant_id=tenant_id,
                algorithm=algorithm,
                state="signing",
                public_key=public,
                root_key_id=wrapped.root_key_id,
                wrapped_secret=wrapped.ciphertext,
                created_at=now,
                state_changed_at=now,
                verify_until=None,
            )
            session.add(row)
            session.flush()
            info = _info(row)
        detail: dict[str, str | int] = {"kid": kid, "algorithm": algorithm}
        if previous:
            detail["previous"] = ",".join(old.kid for old in previous)
            detail["previous_state"] = "retired" if retire_previous else "verify"
        self._audit.record("url.key-rotate", tenant_id=tenant_id, detail=detail)
        with self._lock:
            # the next lookup reloads: the old key (now verify-only or retired) and the new
            self._snapshot_at = -1e9
        return info, (secret if algorithm == ALG_HMAC_SHA256 else None)

    def list(self, tenant_id: str) -> list[KeyInfo]:
        """The tenant's keys, newest first, after retiring those past their overlap."""
        self.retire_expired(tenant_id)
        with self._db.transaction(readonly=True) as session:
            rows = session.scalars(
                select(UrlSigningKeyRow)
                .where(UrlSigningKeyRow.tenant_id == tenant_id)
                .order_by(UrlSigningKeyRow.created_at.desc(), UrlSigningKeyRow.kid)
            ).all()
            return [_info(row) for row in rows]

    def retire_expired(self, tenant_id: str | None = None) -> int:
        """Retire verify-only keys past ``verify_until`` (their secret is dropped)."""
        now = self._now()
        query = (
            update(UrlSigningKeyRow)
            .where(UrlSigningKeyRow.state == "verify", UrlSigningKeyRow.verify_until <= now)
            .values(state="retired", wrapped_secret=None, state_changed_at=now)
        )
        if tenant_id is not None:
            query = query.where(UrlSigningKeyRow.tenant_id == tenant_id)
        with self._db.transaction() as session:
            count = session.execute(query).rowcount  # type: ignore[attr-defined]
        return int(count or 0)

    def run_retirement(self, stop: threading.Event, *, interval: float = 300.0) -> None:
        """Retire keys past their overlap every ``interval`` seconds until ``stop`` (each
        service process runs it, so a secret never outlives its overlap by much)."""
        while not stop.wait(interval):
            try:
                self.retire_expired()
            except Exception:  # the next round tries again
                _log.warning("url key retirement failed", exc_info=True)

    # -- use ------------------------------------------------------------------------------

    def signing_key(self, tenant_id: str, algorithm: str = ALG_ED25519) -> SigningKey:
        """The tenant's current signing key, read from the catalog on every call (so a
        rotation by another process is seen at once; only the unwrapped secret is cached).
        An Ed25519 key is created on first use; an HMAC key only by :meth:`rotate` (its
        secret has to reach the edge first).

        Raises:
            InvalidArgument: no HMAC key exists yet, or an unknown algorithm.
        """
        self._check_algorithm(algorithm)
        self._require_active(tenant_id)
        row = self._signing_row(tenant_id, algorithm)
        if row is None:
            if algorithm != ALG_ED25519:
                raise InvalidArgument(
                    "this tenant has no HMAC signing key: create one with RotateSigningKey"
                )
            self.rotate(tenant_id, algorithm)
            row = self._signing_row(tenant_id, algorithm)
            assert row is not None
        secret = self._secrets.get(row.kid)
        if secret is None:
            assert row.wrapped_secret is not None  # a signing key holds its secret (CHECK)
            secret = self._root.unwrap(
                WrappedKey(row.root_key_id, row.wrapped_secret),
                _CONTEXT | {"tenant": tenant_id, "kid": row.kid},
            )
            with self._lock:
                if len(self._secrets) > 10_000:
                    self._secrets.clear()
                self._secrets[row.kid] = secret
        return SigningKey(kid=row.kid, algorithm=algorithm, tenant_id=tenant_id, secret=secret)

    def verifying_key(self, kid: str) -> VerifyingKey | None:
        """The key that verifies tokens naming ``kid``, or None (unknown or retired).

        Answered from a snapshot of every verifying key, reloaded whole when it is older
        than :data:`KEY_CACHE_TTL`, or when an unknown key id is asked for and the last
        reload is older than :data:`MISS_INTERVAL`: made-up key ids cost at most one
        catalog query a second together, whatever their number.
        """
        now = self._clock.monotonic()
        seen = self._snapshot_at
        key = self._snapshot.get(kid)
        if key is not None and now - seen < KEY_CACHE_TTL:
            until = self._until.get(kid)
            if until is not None and until <= self._clock.now():
                return None  # past its overlap since the snapshot was read
            return key
        if key is None and now - seen < MISS_INTERVAL:
            return None
        with self._reload_lock:
            if self._snapshot_at == seen:  # nobody reloaded while this thread waited
                self._reload(now)
        return self._snapshot.get(kid)

    def _reload(self, now: float) -> None:
        wall = self._now()
        with self._db.transaction(readonly=True) as session:
            rows = session.scalars(
                select(UrlSigningKeyRow).where(UrlSigningKeyRow.state != "retired")
            ).all()
            for row in rows:
                session.expunge(row)
        snapshot: dict[str, VerifyingKey] = {}
        until: dict[str, float] = {}
        for row in rows:
            if row.state == "verify" and row.verify_until is not None and row.verify_until <= wall:
                continue  # past its overlap; retire_expired drops the secret
            issued_until = int(row.state_changed_at.timestamp()) if row.state == "verify" else None
            previous = self._snapshot.get(row.kid)
            if previous is not None and previous.not_after_issued == issued_until:
                snapshot[row.kid] = previous  # unchanged: no second unwrap of an HMAC secret
                continue
            if row.algorithm == ALG_ED25519:
                assert row.public_key is not None
                material = row.public_key
            else:
                assert row.wrapped_secret is not None
                material = self._root.unwrap(
                    WrappedKey(row.root_key_id, row.wrapped_secret),
                    _CONTEXT | {"tenant": row.tenant_id, "kid": row.kid},
                )
            snapshot[row.kid] = VerifyingKey(
                kid=row.kid,
                algorithm=row.algorithm,
                tenant_id=row.tenant_id,
                material=material,
                not_after_issued=issued_until,
            )
        with self._lock:
            self._snapshot, self._until = snapshot, until
            self._snapshot_at = now

    def _signing_row(self, tenant_id: str, algorithm: str) -> UrlSigningKeyRow | None:
        with self._db.transaction(readonly=True) as session:
            row = session.scalar(
                select(UrlSigningKeyRow).where(
                    UrlSigningKeyRow.tenant_id == tenant_id,
                    UrlSigningKeyRow.algorithm == algorithm,
                    UrlSigningKeyRow.state == "signing",
                )
            )
            if row is not None:
                session.expunge(row)
            return row

    @staticmethod
    def _check_algorithm(algorithm: str) -> None:
        if algorithm not in ALGORITHMS:
            raise InvalidArgument(f"algorithm must be one of {', '.join(ALGORITHMS)}")
