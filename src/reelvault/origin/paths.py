"""The origin's strict reading of a request target: which route, which tenant and path,
which token. Pure; its one exception, :class:`BadTarget`, becomes a 403 at the edge.

Routes (docs/urls.md)::

    /t/<token>/<tenant>/<path>      the token in the path (HLS/DASH: relative URLs keep it)
    /v/<tenant>/<path>?token=<token>
    /v/<tenant>/<path>              with the token in the rv_token cookie
    /cf/<tenant>/<path>             CloudFront mode: the edge checked the signed URL

The target is read from the raw, still percent-encoded path, so what is refused is what
the client sent, whatever a proxy or the server would have normalised: a path over
:data:`MAX_TARGET` bytes, non-ASCII bytes, an empty, ``.`` or ``..`` segment (also
encoded), an encoded slash or backslash (``%2F``, ``%5C``), an encoded control, a
malformed escape, double encoding (an escape whose decoding is itself an escape,
``%252F``), a segment that is not UTF-8, and a query naming any parameter twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from reelvault.crypto.names import valid_tenant_id

__all__ = ["MAX_TARGET", "BadTarget", "Target", "parse_target"]

MAX_TARGET: Final = 8192
"""Bytes of path and query together; a token is at most 4 KiB and a path 1 KiB (x3
encoded)."""
_MAX_PARAMS: Final = 32
_TOKEN_CHARS: Final = re.compile(r"[A-Za-z0-9._-]{1,4096}")
_ESCAPE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")
_ROUTES: Final = frozenset({"t", "v", "cf"})


class BadTarget(ValueError):
    """A request target the origin refuses; ``reason`` is short, fixed and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """What a request asks for. ``token`` is None when it must come from the cookie."""

    route: str  # "t", "v" or "cf"
    tenant_id: str
    path: str
    token: str | None

    @property
    def resource(self) -> str:
        return f"{self.tenant_id}/{self.path}"


def parse_target(raw_path: bytes, query: bytes) -> Target:
    """Read a request target strictly (module docstring).

    Raises:
        BadTarget: anything the module docstring lists, an unknown route, a missing or
            malformed tenant, path or token.
    """
    if len(raw_path) + len(query) > MAX_TARGET:
        raise BadTarget("target too long")
    if not raw_path.isascii() or not query.isascii():
        raise BadTarget("non-ASCII target")
    if not raw_path.startswith(b"/"):
        raise BadTarget("not an absolute path")
    parts = raw_path[1:].split(b"/")
    route = parts[0].decode()
    if route not in _ROUTES:
        raise BadTarget("unknown route")
    token: str | None = None
    rest = parts[1:]
    if route == "t":
        if not rest:
            raise BadTarget("no token")
        text = rest[0].decode()
        if _TOKEN_CHARS.fullmatch(text) is None:
            raise BadTarget("malformed token")
        token, rest = text, rest[1:]
    if len(rest) < 2:
        raise BadTarget("no tenant or path")
    segments = [_segment(raw) for raw in rest]
    tenant_id = segments[0]
    if not valid_tenant_id(tenant_id):
        raise BadTarget("malformed tenant")
    params = _query(query)
    if "token" in params:
        if route == "t":
            raise BadTarget("two tokens")
        text = params["token"]
        if _TOKEN_CHARS.fullmatch(text) is None:
            raise BadTarget("malformed token")
        token = text
    return Target(route=route, tenant_id=tenant_id, path="/".join(segments[1:]), token=token)


def _segment(raw: bytes) -> str:
    if not raw:
        raise BadTarget("empty segment")
    if b"%" in raw:
        escapes = raw.count(b"%")
        found = _ESCAPE.findall(raw)
        if len(found) != escapes:
            raise BadTarget("malformed escape")
        for hex_digits in found:
            value = int(hex_digits, 16)
            if value in (0x2F, 0x5C):
                raise BadTarget("encoded slash")
            if value < 0x20 or value == 0x7F:
                raise BadTarget("encoded control")
        decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
        if _ESCAPE.search(decoded):
            raise BadTarget("double encoding")
    else:
        decoded = raw
    if b"\\" in decoded:
        raise BadTarget("backslash")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("not UTF-8") from None
    if text in (".", ".."):
        raise BadTarget("dot segment")
    if not text.isprintable():
        raise BadTarget("control character")
    return text


def _query(query: bytes) -> dict[str, str]:
    params: dict[str, str] = {}
    if not query:
        return params
    pairs = query.split(b"&")
    if len(pairs) > _MAX_PARAMS:
        raise BadTarget("too many parameters")
    for pair in pairs:
        if not pair:
            continue
        name, _, value = pair.decode().partition("=")
        if name in params:
            raise BadTarget("duplicate parameter")
        params[name] = value
    return params
