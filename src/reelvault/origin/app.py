"""The HTTP origin CDNs and players fetch from: an ASGI app (Starlette, on uvicorn) over
the same :class:`~reelvault.app.Vault` as the gRPC service (docs/urls.md).

One request, in order:

1. CloudFront mode (``cloudfront_origin_secret`` set): the request must carry the secret
   in ``X-Reelvault-Origin-Secret`` (compared in constant time), else 403.
2. The target is read strictly (:mod:`reelvault.origin.paths`); a refusal is 403.
3. The token (path, query or cookie) is verified with the key its key id names, at the
   current time with the configured leeway, for this origin's audience and the client's
   address: 410 if it expired, 403 for anything else. A ``/cf/`` target skips this: the
   edge checked CloudFront's signature and the secret proves the request came through it.
4. The token must cover ``<tenant>/<path>``; the asset must exist (404); no revocation
   cut-off may cover the token (403); the token's principal must be allowed
   ``asset.fetch`` (the permission table the gRPC edge uses).
5. ``Range`` and ``If-Range`` select the bytes; the domain opens the asset, checks what it
   can before anything is sent, and records the fetch (with the session id, never the
   token) durably. If that write fails the answer is 503 and nothing is sent.
6. The plaintext is streamed frame by frame, with an exact ``Content-Length``.

Every refusal is recorded too: with the key's tenant once the token's signature verified
(expired, wrong audience, revoked, ...), else in the platform log through the auditor's
per-peer limiter (made-up tokens cannot flood the log). Errors carry ``Cache-Control:
no-store``; successful answers are cacheable no longer than the token lives.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any, Final

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from reelvault.app import Vault
from reelvault.assets import MAX_CHUNK, AssetInfo
from reelvault.audit import Access, Auditor, Resource
from reelvault.audit.events import Actor, RequestInfo
from reelvault.auth import Action, Principal, Role, authorize
from reelvault.distribution.service import COOKIE_NAME
from reelvault.distribution.tokens import (
    Claims,
    Reason,
    TokenError,
    TokenExpired,
    VerifiedTokens,
    key_id_of,
)
from reelvault.errors import IntegrityError, NotFound, ReelvaultError, Unavailable
from reelvault.origin.paths import BadTarget, Target, parse_target
from reelvault.ranges import RangeNotSatisfiable, parse_range_header, resolve

__all__ = ["ORIGIN_SECRET_HEADER", "ROUTE_ACTIONS", "OriginConfig", "create_app"]

ROUTE_ACTIONS: Final[Mapping[str, Action]] = MappingProxyType(
    {"GET": Action.ASSET_FETCH, "HEAD": Action.ASSET_FETCH}
)
"""The HTTP edge's table from method to domain action (the gRPC edge's is
``reelvault.rpc.actions.METHOD_ACTIONS``); any other method is refused (405)."""

ORIGIN_SECRET_HEADER: Final = "x-reelvault-origin-secret"  # noqa: S105 (a header name)
MAX_HEADER_BYTES: Final = 16 * 1024
_EXPOSED: Final = "Content-Range, Content-Length, Accept-Ranges, ETag, Content-Type"
_log = structlog.get_logger("reelvault.origin")
# Refusals decided before the signature was checked: nothing proves who sent the token.
_BEFORE_SIGNATURE: Final = frozenset(
    {Reason.MALFORMED, Reason.UNSUPPORTED_VERSION, Reason.WRONG_KEY, Reason.BAD_SIGNATURE}
)


@dataclass(frozen=True, slots=True)
class OriginConfig:
    """What the origin reads from the settings (``origin_*``, ``url_leeway``)."""

    leeway: float = 60.0
    audience: str | None = None
    public_cache: bool = False
    cors_origin: str = "*"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cloudfront_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Any) -> OriginConfig:
        proxies = tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in (settings.origin_trusted_proxies or "").split(",")
            if part.strip()
        )
        return cls(
            leeway=settings.url_leeway,
            audience=settings.origin_audience,
            public_cache=settings.origin_public_cache,
            cors_origin=settings.origin_cors_origin,
            trusted_proxies=proxies,
            cloudfront_secret=settings.cloudfront_origin_secret,
        )


class _Refused(Exception):
    """A request answered with ``status`` and no body but a short reason."""

    def __init__(self, status: int, grpc_status: str, reason: str, **headers: str) -> None:
        super().__init__(reason)
        self.status = status
        self.grpc_status = grpc_status
        self.reason = reason
        self.headers = headers


@dataclass
class _Fetch:
    """What step 5 hands to the response: the asset, the range, the plaintext."""

    asset: AssetInfo
    status: int
    start: int
    count: int
    claims: Claims | None
    chunks: Iterator[bytes] | None
    via_cookie: bool = False  # the URL alone carries no credential: never publicly cacheable
    # Read in the same worker-thread hop as the checks: the first chunk, and the whole
    # body of a range up to one chunk (a segment, a seek), so most answers cost one hop.
    prefetched: tuple[bytes, ...] = ()
    exhausted: bool = False


class _Origin:
    def __init__(self, vault: Vault, config: OriginConfig) -> None:
        self._vault = vault
        self._auditor: Auditor = vault.auditor
        self._config = config
        self._distribution = vault.distribution
        self._now = vault.clock.now
        self._tokens = VerifiedTokens()  # a player's token: checked once per key, per worker

    # -- the ASGI endpoint ----------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        method = request.method
        if method == "OPTIONS":
            return self._preflight()
        if method not in ROUTE_ACTIONS:
            return self._error(405, "method not allowed", Allow="GET, HEAD, OPTIONS")
        path = request.scope.get("path", "")
        if path == "/healthz":
            return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})
        access = Access(
            actor=Actor(),
            request=RequestInfo(
                transport="http",
                operation=f"{method} /{_route_of(path)}",
                peer=_peer(request),
                user_agent="".join(
                    c for c in request.headers.get("user-agent", "")[:256] if c.isprintable()
                ),
                request_id=secrets.token_hex(16),
            ),
            action=ROUTE_ACTIONS[method].value,
        )
        try:
            fetch = await anyio.to_thread.run_sync(self._prepare, request, access)
        except _Refused as refused:
            return self._error(refused.status, refused.reason, **refused.headers)
        return self._answer(request, access, fetch)

    # -- steps 1 to 5, in a worker thread ---------------------------------------------------

    def _prepare(self, request: Request, access: Access) -> _Fetch:
        with self._auditor.bind(access):
            try:
                return self._checked(request, access)
            except _Refused as refused:
                self._conclude(access, refused)
                raise
            except ReelvaultError as exc:
                failure = _Refused(
                    exc.http_status,
                    exc.grpc_status,
                    "unavailable" if isinstance(exc, Unavailable) else _public(exc),
                )
                if isinstance(exc, IntegrityError):
                    _log.error("origin integrity failure", reason=getattr(exc, "reason", None))
                self._conclude(access, failure)
                raise failure from None

    def _conclude(self, access: Access, refused: _Refused) -> None:
        access.detail.setdefault("http_status", refused.status)
        access.detail.setdefault("reason", refused.reason)
        try:
            self._auditor.conclude(
                access, refused.grpc_status, denied=refused.grpc_status == "PERMISSION_DENIED"
            )
        except Unavailable:
            # Fail closed: an unrecorded refusal is answered as unavailable, like a fetch.
            refused.status, refused.reason, refused.headers = 503, "unavailable", {}

    def _checked(self, request: Request, access: Access) -> _Fetch:
        headers = request.headers
        if sum(len(k) + len(v) for k, v in headers.items()) > MAX_HEADER_BYTES:
            raise _Refused(431, "INVALID_ARGUMENT", "headers too large")
        secret = self._config.cloudfront_secret
        if secret is not None and not hmac.compare_digest(
            headers.get(ORIGIN_SECRET_HEADER, "").encode(), secret.encode()
        ):
            raise _Refused(403, "PERMISSION_DENIED", "not through the edge")
        try:
            target = parse_target(
                request.scope.get("raw_path") or b"/", request.scope["query_string"]
            )
        except BadTarget as exc:
            raise _Refused(403, "PERMISSION_DENIED", exc.reason) from None
        if target.route == "cf":
            if secret is None:
                raise _Refused(403, "PERMISSION_DENIED", "CloudFront mode is off")
            claims = None
            access.actor = Actor(
                key_id="cloudfront",
                role="cloudfront-edge",
                tenant_id=target.tenant_id,
                authenticated=True,
            )
            principal = Principal(
                key_id="cloudfront", tenant_id=target.tenant_id, role=Role.DISTRIBUTOR
            )
        else:
            claims, principal = self._verified(request, target, access)
        authorize(principal, ROUTE_ACTIONS[request.method])
        return self._open(request, target, claims)

    def _verified(
        self, request: Request, target: Target, access: Access
    ) -> tuple[Claims, Principal]:
        """Steps 3 and 4 up to the asset: the token verified, covering this path, and not
        revoked, checked in an order that tells a holder nothing about paths it does not
        cover (revocation before the asset lookup; "expired" only where the token reached)."""
        token = target.token
        if token is None:
            token = request.cookies.get(COOKIE_NAME)
            if token is None:
                raise _Refused(403, "PERMISSION_DENIED", "no token")
        try:
            kid = key_id_of(token)
        except TokenError as exc:
            raise _Refused(403, "PERMISSION_DENIED", exc.reason) from None
        key = self._distribution.keys.verifying_key(kid)
        if key is None:
            raise _Refused(403, "PERMISSION_DENIED", Reason.UNKNOWN_KEY)
        expired = False
        try:
            claims = self._tokens.verify(
                token,
                key,
                now=self._now(),
                leeway=self._config.leeway,
                audience=self._config.audience,
                client_ip=self._client_ip(request),
                max_lifetime=self._distribution.max_ttl,
            )
        except TokenExpired as exc:
            claims, expired = exc.claims, True
        except TokenError as exc:
            if exc.reason not in _BEFORE_SIGNATURE:
                # the signature held (the reasons after it): the tenant's log records it,
                # with the token's session where the claims were read
                self._identify(access, key.kid, key.tenant_id, exc.claims)
            raise _Refused(403, "PERMISSION_DENIED", exc.reason) from None
        self._identify(access, key.kid, key.tenant_id, claims)
        if claims.tenant_id != target.tenant_id or not claims.covers(target.resource):
            if claims.tenant_id == target.tenant_id:
                # what was asked for, so the tenant's log says which path the token missed
                access.resources.append(Resource("asset", None, target.path))
            raise _Refused(403, "PERMISSION_DENIED", Reason.NOT_COVERED)
        try:
            self._distribution.check_revoked(claims, target.path)
        except TokenError as exc:
            raise _Refused(403, "PERMISSION_DENIED", exc.reason) from None
        if expired:
            raise _Refused(410, "PERMISSION_DENIED", Reason.EXPIRED)
        principal = Principal(key_id=key.kid, tenant_id=key.tenant_id, role=Role.DISTRIBUTOR)
        return claims, principal

    @staticmethod
    def _identify(access: Access, kid: str, tenant_id: str, claims: Claims | None) -> None:
        access.actor = Actor(key_id=kid, role="url", tenant_id=tenant_id, authenticated=True)
        access.tenant_id = tenant_id
        if claims is not None and claims.session_id:
            access.detail["session"] = claims.session_id

    def _open(self, request: Request, target: Target, claims: Claims | None) -> _Fetch:
        """Step 5: one catalog read of the asset, the range chosen from it by HTTP's rules,
        and (for GET) the download opened, which records the fetch before any byte."""
        headers = request.headers
        chosen: dict[str, int] = {}

        def select_range(asset: AssetInfo) -> tuple[int, int] | None:
            if_range = headers.get("if-range")
            try:
                if if_range is not None and if_range.strip() != asset.etag:  # no secret
                    selected = parse_range_header(None)  # a changed (or weakly named) asset
                else:
                    selected = parse_range_header(headers.get("range"))
                start, count = resolve(selected, asset.size)
            except RangeNotSatisfiable:
                raise _Refused(
                    416,
                    "OUT_OF_RANGE",
                    "range not satisfiable",
                    **{"Content-Range": f"bytes */{asset.size}"},
                ) from None
            # any satisfiable Range is answered 206, even one spanning the asset (bytes=0-),
            # as nginx, S3 and CloudFront do and as some players expect
            chosen.update(status=200 if selected.whole else 206, start=start, count=count)
            return None if request.method == "HEAD" else (start, count)

        asset, download = self._vault.assets.open_by_path(
            target.tenant_id, target.path, select_range
        )
        chunks = None if download is None else download.chunks  # may be taken once
        fetch = _Fetch(
            asset,
            chosen["status"],
            chosen["start"],
            chosen["count"],
            claims,
            chunks,
            _via_cookie(target),
        )
        if chunks is None:  # HEAD: the headers are what is released
            self._auditor.note(detail={"method": "HEAD"})
            self._auditor.release()
            return fetch
        # The first chunk is read here, so a store or integrity failure before any byte
        # is an error status rather than a cut connection; a body of one chunk is read
        # to its end (its end checks included) in the same hop.
        prefetched: list[bytes] = []
        got = 0
        while got < fetch.count or not prefetched:
            piece = next(chunks, None)
            if piece is None:
                fetch.exhausted = True
                break
            prefetched.append(piece)
            got += len(piece)
            if got >= MAX_CHUNK:
                break
        else:
            tail = next(chunks, None)  # the end checks run here; nothing is expected
            if tail is None:
                fetch.exhausted = True
            else:
                prefetched.append(tail)
        fetch.prefetched = tuple(prefetched)
        return fetch

    # -- step 6 ---------------------------------------------------------------------------

    def _answer(self, request: Request, access: Access, fetch: _Fetch) -> Response:
        asset = fetch.asset
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": asset.etag,
            "Last-Modified": format_datetime(asset.created_at, usegmt=True),
            "Content-Length": str(fetch.count),
            "Cache-Control": self._cache_control(fetch.claims, private=fetch.via_cookie),
            "Access-Control-Allow-Origin": self._config.cors_origin,
            "Access-Control-Expose-Headers": _EXPOSED,
            "X-Request-Id": access.request.request_id,
        }
        if fetch.status == 206:
            end = fetch.start + fetch.count - 1
            headers["Content-Range"] = f"bytes {fetch.start}-{end}/{asset.size}"
        if fetch.chunks is None:
            return Response(
                status_code=fetch.status, headers=headers, media_type=asset.content_type
            )
        # a Content-Length given here is kept (never chunked); HEAD never reaches this
        return StreamingResponse(
            self._body(access, fetch),
            status_code=fetch.status,
            headers=headers,
            media_type=asset.content_type,
        )

    async def _body(self, access: Access, fetch: _Fetch) -> AsyncIterator[bytes]:
        chunks = fetch.chunks
        assert chunks is not None
        done = fetch.exhausted
        try:
            for piece in fetch.prefetched:
                yield piece
            while not done:
                chunk = await anyio.to_thread.run_sync(_next_chunk, chunks)
                if chunk is None:
                    done = True
                    return
                yield chunk
        except ReelvaultError as exc:
            # Headers are gone: the connection is cut short of Content-Length, which every
            # client and CDN treats as a failed fetch; the failure is recorded.
            _log.warning("origin stream failed", error=type(exc).__name__)
            with contextlib.suppress(Unavailable):
                await anyio.to_thread.run_sync(self._auditor.conclude, access, exc.grpc_status)
            raise
        finally:
            if not done:
                close = getattr(chunks, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await anyio.to_thread.run_sync(close)

    def _cache_control(self, claims: Claims | None, *, private: bool) -> str:
        if claims is None:  # CloudFront mode: the edge enforces; let it cache briefly
            return "private, max-age=0" if not self._config.public_cache else "public, max-age=60"
        remaining = max(0, int(claims.expires_at - self._now()))
        scope = "public" if self._config.public_cache and not private else "private"
        return f"{scope}, max-age={remaining}"

    def _client_ip(self, request: Request) -> str | None:
        client = request.client
        if client is None:
            return None
        address = client.host
        proxies = self._config.trusted_proxies
        if not proxies:
            return address
        # Walk X-Forwarded-For from the right, past every trusted proxy.
        # every X-Forwarded-For line, in order: a proxy may add a line rather than append
        lines = request.headers.getlist("x-forwarded-for")
        chain = [p.strip() for line in lines for p in line.split(",")]
        for hop in [address, *reversed(chain)]:
            try:
                ip = ipaddress.ip_address(hop)
            except ValueError:
                return None
            if not any(ip in net for net in proxies):
                return str(ip)
        return None

    def _preflight(self) -> Response:
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": self._config.cors_origin,
                "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": "Range, If-Range",
                "Access-Control-Max-Age": "600",
                "Cache-Control": "no-store",
            },
        )

    def _error(self, status: int, reason: str, **extra: str) -> Response:
        headers = {
            "Cache-Control": "no-store",
            "Access-Control-Allow-Origin": self._config.cors_origin,
            **extra,
        }
        return PlainTextResponse(f"{status} {reason}\n", status_code=status, headers=headers)


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


def _route_of(path: str) -> str:
    """The first path segment, for the audit record's operation (bounded: a route name)."""
    first = path[1:].split("/", 1)[0] if path.startswith("/") else ""
    return first if first in ("t", "v", "cf") else "-"


def _via_cookie(target: Target) -> bool:
    return target.route == "v" and target.token is None


def _public(exc: ReelvaultError) -> str:
    if isinstance(exc, NotFound):
        return "not found"
    if isinstance(exc, IntegrityError):
        return "the stored object failed an integrity check"
    return exc.grpc_status.lower().replace("_", " ")


def _peer(request: Request) -> str:
    client = request.client
    if client is None:
        return ""
    host = client.host
    return f"ipv6:[{host}]:{client.port}" if ":" in host else f"ipv4:{host}:{client.port}"


class OriginApp:
    """The ASGI application: every HTTP request goes to the origin's one handler. There
    is no router, so a target that matches no route (``*``, ``/x``) is refused and audited
    like any other bad target rather than answered by a framework's unaudited 404.

    Attributes:
        lifespan_context: entered for the server's lifespan (a worker closes its vault
            when it leaves).
    """

    def __init__(self, origin: _Origin) -> None:
        self._origin = origin
        self.lifespan_context: Callable[[OriginApp], AbstractAsyncContextManager[None]] = (
            _no_lifespan
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here: the server closes the connection
        response = await self._origin.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        async with self.lifespan_context(self):
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


@contextlib.asynccontextmanager
async def _no_lifespan(_: OriginApp) -> AsyncIterator[None]:
    yield


def create_app(vault: Vault, config: OriginConfig | None = None) -> OriginApp:
    """The origin over ``vault``. The caller owns the vault (closes it)."""
    return OriginApp(_Origin(vault, config or OriginConfig()))
