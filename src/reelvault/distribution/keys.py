"""Each tenant's keys for distribution tokens, and the key lifecycle.

A key moves ``signing`` -> ``verify`` -> ``retired``. At most one key per tenant and
algorithm signs (a partial unique index); :meth:`UrlSigningKeys.rotate` creates the next
one and moves the old one to ``verify``, where it verifies only tokens issued before it
left ``signing`` (so a leaked old key cannot mint new tokens that pass) until
``verify_until``: the longest a token it signed can live (``2 x url_max_ttl``: a
not-before at most one maximum TTL ahead, then at most one maximum TTL of life) plus the
clock-skew leeway. Past that it retires and its secret is dropped from the catalog.

Secrets (the Ed25519 seed, or the HMAC secret) are 32 random bytes from the root key
provider's ``generate_key``, stored wrapped by it, bound to the tenant and the key id.
Origins need only Ed25519 public keys; an HMAC key's secret must be shared with the edge
that checks it, so :meth:`UrlSigningKeys.rotate` returns it, once, to its caller.

Verifying keys are cached per process for :data:`KEY_CACHE_TTL` seconds; an unknown key id
is looked up at most once per :data:`MISS_INTERVAL` (a flood of made-up key ids costs one
query per second, not one per request).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select, update

from reelvault.audit import Auditor
from reelvault.catalog import Database
from reelvault.catalog.tables import UrlSigningKeyRow
from reelvault.clock import Clock
from reelvault.crypto.signing import ed25519_public_key
from reelvault.distribution.tokens import (
    ALG_ED25519,
    ALG_HMAC_SHA256,
    ALGORITHMS,
    SigningKey,
    VerifyingKey,
)
from reelvault.errors import InvalidArgument
from reelvault.keys import RootKeyProvider, WrappedKey

__all__ = ["KEY_CACHE_TTL", "KeyInfo", "UrlSigningKeys"]

KEY_CACHE_TTL: Final = 30.0
MISS_INTERVAL: Final = 1.0
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
        self._signers: dict[tuple[str, str], tuple[float, SigningKey]] = {}
        self._verifiers: dict[str, tuple[float, VerifyingKey | None]] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    # -- lifecycle ------------------------------------------------------------------------

    def rotate(self, tenant_id: str, algorithm: str = ALG_ED25519) -> tuple[KeyInfo, bytes | None]:
        """Create the tenant's next signing key for ``algorithm``; the current one, if any,
        moves to ``verify``. Audited (``url.key-rotate``).

        Returns:
            The new key, and for an HMAC key its secret (shown once: the edge needs it).
        """
        self._check_algorithm(algorithm)
        now = self._now()
        kid = secrets.token_urlsafe(12)
        context = _CONTEXT | {"tenant": tenant_id, "kid": kid}
        secret, wrapped = self._root.generate_key(context)
        public = ed25519_public_key(secret) if algorithm == ALG_ED25519 else None
        with self._db.transaction() as session:
            previous = session.scalars(
                select(UrlSigningKeyRow).where(
                    UrlSigningKeyRow.tenant_id == tenant_id,
                    UrlSigningKeyRow.algorithm == algorithm,
                    UrlSigningKeyRow.state == "signing",
                )
            ).all()
            for row in previous:
                row.state = "verify"
                row.state_changed_at = now
                row.verify_until = now + self._overlap
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
        self._audit.record(
            "url.key-rotate",
            tenant_id=tenant_id,
            detail={"kid": kid, "algorithm": algorithm},
        )
        with self._lock:
            self._signers.pop((tenant_id, algorithm), None)
            for old in previous:
                self._verifiers.pop(old.kid, None)
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
        if count:
            with self._lock:
                self._verifiers.clear()
        return int(count or 0)

    # -- use ------------------------------------------------------------------------------

    def signing_key(self, tenant_id: str, algorithm: str = ALG_ED25519) -> SigningKey:
        """The tenant's current signing key. An Ed25519 key is created on first use; an
        HMAC key only by :meth:`rotate` (its secret has to reach the edge first).

        Raises:
            InvalidArgument: no HMAC key exists yet, or an unknown algorithm.
        """
        self._check_algorithm(algorithm)
        cached = self._signers.get((tenant_id, algorithm))
        if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_TTL:
            return cached[1]
        row = self._signing_row(tenant_id, algorithm)
        if row is None:
            if algorithm != ALG_ED25519:
                raise InvalidArgument(
                    "this tenant has no HMAC signing key: create one with RotateSigningKey"
                )
            self.rotate(tenant_id, algorithm)
            row = self._signing_row(tenant_id, algorithm)
            assert row is not None
        assert row.wrapped_secret is not None  # a signing key holds its secret (CHECK)
        secret = self._root.unwrap(
            WrappedKey(row.root_key_id, row.wrapped_secret),
            _CONTEXT | {"tenant": tenant_id, "kid": row.kid},
        )
        key = SigningKey(kid=row.kid, algorithm=algorithm, tenant_id=tenant_id, secret=secret)
        with self._lock:
            self._signers[(tenant_id, algorithm)] = (time.monotonic(), key)
        return key

    def verifying_key(self, kid: str) -> VerifyingKey | None:
        """The key that verifies tokens naming ``kid``, or None (unknown or retired)."""
        now = time.monotonic()
        cached = self._verifiers.get(kid)
        if cached is not None:
            age = now - cached[0]
            if (cached[1] is not None and age < KEY_CACHE_TTL) or (
                cached[1] is None and age < MISS_INTERVAL
            ):
                return cached[1]
        key = self._load_verifying(kid)
        with self._lock:
            if len(self._verifiers) > 10_000:  # made-up key ids must not grow it forever
                self._verifiers.clear()
            self._verifiers[kid] = (now, key)
        return key

    def _load_verifying(self, kid: str) -> VerifyingKey | None:
        with self._db.transaction(readonly=True) as session:
            row = session.get(UrlSigningKeyRow, kid)
            if row is None or row.state == "retired":
                return None
            session.expunge(row)
        if (
            row.state == "verify"
            and row.verify_until is not None
            and row.verify_until <= self._now()
        ):
            return None  # past its overlap; retire_expired drops the secret
        if row.algorithm == ALG_ED25519:
            assert row.public_key is not None
            material = row.public_key
        else:
            assert row.wrapped_secret is not None
            material = self._root.unwrap(
                WrappedKey(row.root_key_id, row.wrapped_secret),
                _CONTEXT | {"tenant": row.tenant_id, "kid": row.kid},
            )
        issued_until = int(row.state_changed_at.timestamp()) if row.state == "verify" else None
        return VerifyingKey(
            kid=row.kid,
            algorithm=row.algorithm,
            tenant_id=row.tenant_id,
            material=material,
            not_after_issued=issued_until,
        )

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
