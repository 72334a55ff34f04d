"""Issuing, revoking and checking distribution tokens: the domain behind
``DistributionService`` and the HTTP origin (docs/urls.md).

A token covers one asset (its resource is ``<tenant>/<path>``) or a prefix of paths
(``<tenant>/<prefix>/``, every segment of an HLS or DASH rendition). It is carried three
ways, all checked by the same :meth:`Distribution.check`:

- in the path: ``/t/<token>/<tenant>/<path>`` (relative segment URLs in a playlist keep it);
- in the query: ``/v/<tenant>/<path>?token=<token>``;
- in a cookie scoped to ``/v/<tenant>/<prefix>/`` (browsers; :data:`COOKIE_NAME`).

Revocation is a cut-off, not a list of tokens: every token of a session, or reaching an
asset, issued at or before the moment of revocation stops working
(``url_revocations``). Origins read cut-offs through a per-process cache refreshed at
most every ``revocation_refresh`` seconds, which bounds how long a revoked token may
still be served by one worker.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import or_, select

from reelvault.assets import Assets
from reelvault.audit import Auditor, Resource
from reelvault.catalog import Database
from reelvault.catalog.tables import UrlRevocationRow
from reelvault.clock import Clock
from reelvault.distribution import cloudfront
from reelvault.distribution.keys import UrlSigningKeys
from reelvault.distribution.tokens import ALG_ED25519, Claims, Reason, TokenError, sign
from reelvault.errors import FailedPrecondition, InvalidArgument

__all__ = [
    "COOKIE_NAME",
    "Distribution",
    "DistributionConfig",
    "Issued",
    "quote_path",
]

COOKIE_NAME: Final = "rv_token"
MAX_SESSION_ID: Final = 128
MAX_AUDIENCE: Final = 256
_SESSION: Final = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True, slots=True)
class DistributionConfig:
    """The settings distribution reads (``url_*``, ``origin_base_url``, CloudFront)."""

    base_url: str = "http://127.0.0.1:7480"
    default_ttl: int = 3600
    max_ttl: int = 86400
    leeway: float = 60.0
    revocation_refresh: float = 1.0
    cloudfront_key: cloudfront.CloudFrontKey | None = None
    cloudfront_base_url: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    """One issued URL or cookie.

    Attributes:
        token: the bearer token (a secret for its lifetime: never logged).
        url: where to fetch: the asset, or for a prefix the rendition's directory (append
            a segment's path). For a cookie: the directory the cookie covers.
        cookie: for a cookie, the whole ``Set-Cookie`` value; else "".
        cloudfront_cookies: CloudFront mode's three cookies, name -> value.
    """

    token: str
    url: str
    claims: Claims
    kid: str
    cookie: str = ""
    cloudfront_cookies: tuple[tuple[str, str], ...] = ()


def quote_path(path: str) -> str:
    """A tenant path as it appears in an origin URL: each segment percent-encoded (so a
    ``%`` or ``?`` in a name stays data), slashes kept."""
    return "/".join(urllib.parse.quote(segment, safe="") for segment in path.split("/"))


class Distribution:
    """Issues and revokes tokens; checks a verified token's coverage and revocation.

    Args:
        config: the origin's address as players reach it, lifetimes, how long a
            revocation cut-off read from the catalog may be reused, CloudFront mode.
    """

    def __init__(
        self,
        database: Database,
        keys: UrlSigningKeys,
        assets: Assets,
        clock: Clock,
        *,
        auditor: Auditor,
        config: DistributionConfig,
    ) -> None:
        self._db = database
        self.keys = keys
        self._assets = assets
        self._clock = clock
        self._audit = auditor
        self.config = config
        self._base = config.base_url.rstrip("/")
        self._default_ttl = config.default_ttl
        self._max_ttl = config.max_ttl
        self._refresh = config.revocation_refresh
        self._cloudfront_key = config.cloudfront_key
        self._cloudfront_base = (config.cloudfront_base_url or "").rstrip("/")
        self._cutoffs: dict[tuple[str, str, str], tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    @property
    def max_ttl(self) -> int:
        return self._max_ttl

    # -- issuing --------------------------------------------------------------------------

    def issue(
        self,
        tenant_id: str,
        *,
        asset_id: str = "",
        prefix: str = "",
        ttl: int | None = None,
        not_before: int | None = None,
        audience: str = "",
        client_ip: str = "",
        session_id: str = "",
        algorithm: str = ALG_ED25519,
        cookie: bool = False,
        cloudfront_mode: bool = False,
    ) -> Issued:
        """Sign a token for one asset (``asset_id``) or a prefix (``prefix``), and record
        the issuance (``url.issue``: the resource, lifetime, session and key id; never the
        token) durably before it is returned.

        Raises:
            InvalidArgument: both or neither of asset and prefix, a TTL outside 1 to the
                maximum, a not-before further ahead than the maximum TTL, a malformed
                audience, session id or client IP prefix.
            NotFound: the asset (another tenant's looks the same).
            FailedPrecondition: CloudFront mode asked for but not configured.
        """
        self._audit.note(tenant_id=tenant_id)
        now = int(self._clock.now())
        ttl = self._default_ttl if ttl is None or ttl == 0 else ttl
        if not 1 <= ttl <= self._max_ttl:
            raise InvalidArgument(
                f"ttl must be 1 to {self._max_ttl} seconds (REELVAULT_URL_MAX_TTL)"
            )
        start = not_before if not_before else now
        if start < now - 3600 or start > now + self._max_ttl:
            raise InvalidArgument(
                "not_before must be within the last hour or at most the maximum TTL ahead"
            )
        if len(audience.encode("utf-8", "surrogatepass")) > MAX_AUDIENCE or not (
            audience.isprintable()
        ):
            raise InvalidArgument(f"audience must be at most {MAX_AUDIENCE} bytes, printable")
        if session_id and _SESSION.fullmatch(session_id) is None:
            raise InvalidArgument("session id must be 1 to 128 visible ASCII characters")
        network = _network(client_ip) if client_ip else ""
        if bool(asset_id) == bool(prefix):
            raise InvalidArgument("give either an asset id or a path prefix")
        if asset_id:
            info = self._assets.lookup(tenant_id, asset_id)
            resource = f"{tenant_id}/{info.path}"
            self._audit.note(resource=Resource("asset", info.id, info.path))
        else:
            resource = f"{tenant_id}/{_check_prefix(prefix)}"
            self._audit.note(resource=Resource("asset-prefix", None, resource.partition("/")[2]))
        try:
            claims = Claims(
                resource=resource,
                expires_at=start + ttl,
                not_before=start,
                issued_at=now,
                audience=audience,
                session_id=session_id,
                client_ip=network,
            )
        except ValueError:
            # an asset path uploads allow but URLs cannot carry ('%', '\\')
            raise InvalidArgument(
                "this asset's path cannot be carried in a distribution URL "
                "(it holds '%' or a backslash): rename the asset"
            ) from None
        if cloudfront_mode:
            return self._issue_cloudfront(claims, cookie=cookie)
        key = self.keys.signing_key(tenant_id, algorithm)
        token = sign(claims, key)
        path = quote_path(resource)
        detail: dict[str, str | int] = {
            "kid": key.kid,
            "ttl_s": ttl,
            "form": "cookie" if cookie else "url",
        }
        if session_id:
            detail["session"] = session_id
        self._audit.note(detail=detail)
        self._audit.release()
        if cookie:
            directory = path if claims.is_prefix else path.rpartition("/")[0] + "/"
            attributes = [
                f"{COOKIE_NAME}={token}",
                f"Path=/v/{directory}",
                f"Max-Age={max(0, claims.expires_at - now)}",
                "HttpOnly",
            ]
            # Cross-site players need SameSite=None, which browsers accept only with Secure
            # (https); over plain http (development) Lax is what a browser keeps.
            if self._base.startswith("https:"):
                attributes += ["SameSite=None", "Secure"]
            else:
                attributes.append("SameSite=Lax")
            return Issued(
                token=token,
                url=f"{self._base}/v/{directory}",
                claims=claims,
                kid=key.kid,
                cookie="; ".join(attributes),
            )
        return Issued(token=token, url=f"{self._base}/t/{token}/{path}", claims=claims, kid=key.kid)

    def _issue_cloudfront(self, claims: Claims, *, cookie: bool) -> Issued:
        key = self._cloudfront_key
        if key is None:
            raise FailedPrecondition(
                "CloudFront mode is not configured (REELVAULT_CLOUDFRONT_KEY_PAIR_ID, "
                "REELVAULT_CLOUDFRONT_PRIVATE_KEY_FILE, REELVAULT_CLOUDFRONT_BASE_URL)"
            )
        if claims.audience or claims.session_id:
            raise InvalidArgument(
                "CloudFront policies carry no audience or session id: leave them empty"
            )
        url = f"{self._cloudfront_base}/cf/{quote_path(claims.resource)}"
        resource = url + "*" if claims.is_prefix else url
        window = {
            "expires_at": claims.expires_at,
            "not_before": claims.not_before if claims.not_before > claims.issued_at else None,
            "client_ip": claims.client_ip or None,
        }
        cookies: dict[str, str] = {}
        signed = ""
        try:
            if cookie:
                cookies = cloudfront.signed_cookies(resource, key, **window)  # type: ignore[arg-type]
            else:
                signed = cloudfront.signed_url(url, key, resource=resource, **window)  # type: ignore[arg-type]
        except ValueError as exc:  # e.g. an IPv6 client network: CloudFront policies take IPv4
            raise InvalidArgument(f"CloudFront cannot express this URL: {exc}") from None
        self._audit.note(
            detail={
                "kid": key.key_pair_id,
                "ttl_s": claims.expires_at - claims.not_before,
                "form": "cloudfront-cookie" if cookie else "cloudfront-url",
            }
        )
        self._audit.release()  # recorded, durably, before the URL leaves
        if cookie:
            return Issued(
                token="",
                url=url,
                claims=claims,
                kid=key.key_pair_id,
                cloudfront_cookies=tuple(sorted(cookies.items())),
            )
        return Issued(token="", url=signed, claims=claims, kid=key.key_pair_id)

    # -- revocation -----------------------------------------------------------------------

    def revoke_session(self, tenant_id: str, session_id: str) -> datetime:
        """Every token of this session issued until now stops working. Audited."""
        self._audit.note(tenant_id=tenant_id)
        if _SESSION.fullmatch(session_id) is None:
            raise InvalidArgument("session id must be 1 to 128 visible ASCII characters")
        self._audit.note(detail={"session": session_id})
        return self._revoke(tenant_id, "session", session_id)

    def revoke_asset(self, tenant_id: str, asset_id: str) -> datetime:
        """Every token reaching this asset issued until now stops working. Audited.

        The cut-off is kept by path, as tokens address assets: an asset deleted and
        uploaded again at the same path is still out of reach of the revoked tokens."""
        info = self._assets.lookup(tenant_id, asset_id)
        self._audit.note(tenant_id=tenant_id, resource=Resource("asset", info.id, info.path))
        return self._revoke(tenant_id, "asset", _path_subject(info.path))

    def _revoke(self, tenant_id: str, kind: str, subject: str) -> datetime:
        now = datetime.fromtimestamp(self._clock.now(), UTC)
        # Recorded first: a revocation nobody can prove happened is worth little, and a
        # failed audit write leaves the tokens working rather than silently revoked.
        self._audit.release()
        with self._db.transaction() as session:
            row = session.get(UrlRevocationRow, (tenant_id, kind, subject))
            if row is None:
                session.add(
                    UrlRevocationRow(
                        tenant_id=tenant_id, kind=kind, subject=subject, cutoff=now, revoked_at=now
                    )
                )
            else:
                row.cutoff = max(row.cutoff, now)
                row.revoked_at = now
        with self._lock:
            self._cutoffs.pop((tenant_id, kind, subject), None)
        return now

    # -- checking (the origin) ------------------------------------------------------------

    def check_revoked(self, claims: Claims, path: str) -> None:
        """Raises TokenError(REVOKED) if a cut-off covers this token for the asset at
        ``path`` (the tenant path, without the tenant), or for its session."""
        tenant = claims.tenant_id
        subjects = [("asset", _path_subject(path))]
        if claims.session_id:
            subjects.append(("session", claims.session_id))
        for _kind, cutoff in self._cutoffs_for(tenant, subjects):
            if cutoff is not None and claims.issued_at <= cutoff:
                raise TokenError(Reason.REVOKED)

    def _cutoffs_for(
        self, tenant_id: str, subjects: Sequence[tuple[str, str]]
    ) -> list[tuple[str, int | None]]:
        now = self._clock.monotonic()
        found: dict[tuple[str, str], int | None] = {}
        missing: list[tuple[str, str]] = []
        for kind, subject in subjects:
            cached = self._cutoffs.get((tenant_id, kind, subject))
            if cached is not None and now - cached[0] < self._refresh:
                found[(kind, subject)] = cached[1]
            else:
                missing.append((kind, subject))
        if missing:
            with self._db.transaction(readonly=True) as session:
                rows = session.execute(
                    select(
                        UrlRevocationRow.kind, UrlRevocationRow.subject, UrlRevocationRow.cutoff
                    ).where(
                        UrlRevocationRow.tenant_id == tenant_id,
                        or_(
                            *(
                                (UrlRevocationRow.kind == kind)
                                & (UrlRevocationRow.subject == subject)
                                for kind, subject in missing
                            )
                        ),
                    )
                ).all()
            loaded = {(kind, subject): int(cutoff.timestamp()) for kind, subject, cutoff in rows}
            with self._lock:
                if len(self._cutoffs) > 100_000:
                    self._cutoffs.clear()
                for item in missing:
                    value = loaded.get(item)
                    found[item] = value
                    self._cutoffs[(tenant_id, *item)] = (now, value)
        return [(kind, found[(kind, subject)]) for kind, subject in subjects]


def _path_subject(path: str) -> str:
    """``url_revocations.subject`` of an asset path: its SHA-256 (a path may be 1 KiB)."""
    return "path:" + hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()


def _check_prefix(prefix: str) -> str:
    if not prefix.endswith("/"):
        prefix += "/"
    segments = prefix[:-1].split("/")
    if len(prefix.encode("utf-8", "surrogatepass")) > 1024 or any(
        s in ("", ".", "..") or not s.isprintable() or "%" in s or "\\" in s for s in segments
    ):
        raise InvalidArgument(
            "prefix must be path segments without empty, '.' or '..' parts, controls, '%' or '\\'"
        )
    return prefix


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise InvalidArgument("client IP prefix must be an address or a CIDR network") from None
