"""The signed-URL token: its bytes, how it is signed, and how it is checked (docs/urls.md).

A pure module: no clock, no I/O, no database. Time is a parameter; which key to use is the
caller's look-up (by :func:`key_id_of`), and so are revocation and whether the token covers
the requested asset (:meth:`Claims.covers`).

Two profiles, one layout. The key, never the token, says which one applies::

    v4.public.<base64url( payload ‖ signature )>.<base64url( footer )>     ALG_ED25519
    └─header─┘            │         └ 64 bytes: Ed25519(seed, PAE(header, payload, footer, ""))
                          │
    rv1.hs256.<base64url( payload ‖ tag )>.<base64url( footer )>           ALG_HMAC_SHA256
    └─header─┘            │         └ 32 bytes: HMAC-SHA256(secret, PAE(same four pieces))
                          │
                          └ UTF-8 JSON, exactly these members (sign() writes them so):
                            {"aud":"","exp":"2030-01-01T00:10:00Z","iat":"2030-01-01T00:00:00Z",
                             "ip":"","nbf":"2030-01-01T00:00:00Z","res":"<tenant>/<path>","sid":""}

    footer  = {"kid":"<kid>"}, byte for byte; kid is [A-Za-z0-9_-]{1,64}
    PAE(p1..pn) = LE64(n) ‖ LE64(len p1) ‖ p1 ‖ … ‖ LE64(len pn) ‖ pn   (PASETO's, top bit clear)
    base64url   = RFC 4648 §5, no padding, canonical (unused trailing bits zero)

The Ed25519 form is a standard PASETO v4.public token with an empty implicit assertion, so
any PASETO library checks it with the public key alone. PASETO has no HMAC-SHA256 profile,
and CDN edges that can only hold a shared secret usually have nothing else; ``rv1.hs256``
is PASETO's construction with HMAC-SHA256 in place of Ed25519 and its own header.

Verification, in order: length; structure and canonical base64url; header and key id
against the key; signature or tag (constant time); only then the claims, strictly; then
tenant, key retirement, audience and client address; the clock last, so that
:class:`TokenExpired` (410 at the origin) means "this token would be accepted here were it
not expired" and every other :class:`TokenError` is a 403.
"""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import json
import math
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, NoReturn

import pyseto
from pyseto import Key, KeyInterface

from reelvault.crypto.signing import ed25519_public_key

__all__ = [
    "ALGORITHMS",
    "ALG_ED25519",
    "ALG_HMAC_SHA256",
    "Claims",
    "MAX_TOKEN_LENGTH",
    "Reason",
    "SigningKey",
    "TokenError",
    "TokenExpired",
    "VerifiedTokens",
    "VerifyingKey",
    "key_id_of",
    "sign",
    "verify",
]

ALG_ED25519: Final = "ed25519"
ALG_HMAC_SHA256: Final = "hmac-sha256"
ALGORITHMS: Final = (ALG_ED25519, ALG_HMAC_SHA256)
MAX_TOKEN_LENGTH: Final = 4096

_HEADERS: Final = {ALG_ED25519: "v4.public.", ALG_HMAC_SHA256: "rv1.hs256."}
_ALGORITHM_OF_HEADER: Final = {header: alg for alg, header in _HEADERS.items()}
_TAG_LENGTHS: Final = {ALG_ED25519: 64, ALG_HMAC_SHA256: 32}
_KEY_LENGTH: Final = 32

_MAX_RESOURCE_BYTES: Final = 1100
_MAX_AUDIENCE_BYTES: Final = 256
_MAX_SESSION_ID: Final = 128
_MAX_CLIENT_IP: Final = 64
_MAX_TIME: Final = 253_402_300_799  # 9999-12-31T23:59:59Z, the last instant RFC 3339 can write

_MEMBERS: Final = frozenset({"aud", "exp", "iat", "ip", "nbf", "res", "sid"})
_KID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FOOTER: Final = re.compile(rb'\{"kid":"([A-Za-z0-9_-]{1,64})"\}')
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SESSION_ID: Final = re.compile(r"[!-~]*")  # visible ASCII: a space would be a look-alike id
# C0, DEL, C1, lone surrogates (not UTF-8), and for resources also "\" and "%": resources
# are stored decoded, so a "%" means the caller forgot to decode, or is being fooled.
_TEXT_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_RESOURCE_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\\\\%]")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
_U64_TOP_CLEAR: Final = (1 << 63) - 1


class Reason(StrEnum):
    """Why a token was refused: fixed words, safe in a log line and an audit record.

    An enum rather than free text so that callers branch on a member, never on a message.
    The last three are for the caller, which owns key look-up, revocation and coverage.
    """

    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported version"
    WRONG_KEY = "wrong key"
    BAD_SIGNATURE = "bad signature"
    WRONG_TENANT = "wrong tenant"
    KEY_RETIRED = "issued after key retired"
    AUDIENCE = "audience"
    CLIENT_IP = "client ip"
    ISSUED_IN_FUTURE = "issued in future"
    NOT_YET_VALID = "not yet valid"
    EXPIRED = "expired"
    LIFETIME = "lifetime beyond the maximum"
    UNKNOWN_KEY = "unknown key"
    REVOKED = "revoked"
    NOT_COVERED = "not covered"


class TokenError(Exception):
    """A token that must not be honoured (the origin answers 403).

    ``str()`` is the reason alone: never the token, its claims or any key material, because
    the message ends up in logs that far more people read than hold keys.

    Attributes:
        reason: which check refused the token.
        claims: the token's claims when its signature verified before the refusal (the
            caller records who it was: the session, in the tenant's log); else None.
    """

    reason: Reason
    claims: Claims | None

    def __init__(self, reason: Reason, claims: Claims | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.claims = claims


class TokenExpired(TokenError):
    """A token that was good but whose time has passed, leeway included (the origin: 410).

    Raised only after every other check passed, so a player may fetch a fresh URL for it.
    """

    claims: Claims

    def __init__(self, claims: Claims, reason: Reason = Reason.EXPIRED) -> None:
        # the claims let a caller check what the token covers before it answers "expired"
        # (never "expired" for a path the token never reached)
        super().__init__(reason, claims)


@dataclass(frozen=True, slots=True)
class Claims:
    """What a token grants; validated on construction, so an invalid one cannot exist.

    Signing and verifying share this one set of rules: a token that :func:`sign` writes is
    one that :func:`verify` can accept, and a parsed token is held to what a signer may say.

    Attributes:
        resource: ``<tenant id>/<asset path>`` for one asset, or ``<tenant id>/<prefix>/``
            (ending in "/") for every asset under the prefix, such as all the segments of an
            HLS rendition. Decoded text; no empty, "." or ".." segment, no "\\" or "%".
        expires_at: unix seconds; the token is refused from this instant (plus leeway).
        not_before: unix seconds; earlier than ``expires_at``.
        issued_at: unix seconds.
        audience: who may present it (e.g. a CDN or an origin name); "" for any.
        session_id: the viewing session, for revocation by session; "" for none.
        client_ip: "" for any client, else a network in canonical form with its length,
            such as ``203.0.113.0/24`` or ``2001:db8::/48`` (host bits must be zero).
    """

    resource: str
    expires_at: int
    not_before: int
    issued_at: int
    audience: str = ""
    session_id: str = ""
    client_ip: str = ""

    def __post_init__(self) -> None:
        problem = _resource_problem(self.resource)
        if problem is not None:
            raise ValueError(f"resource: {problem}")
        for name in ("expires_at", "not_before", "issued_at"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int (unix seconds)")
            if not 0 <= value <= _MAX_TIME:
                raise ValueError(f"{name} out of range (1970 to 9999)")
        if self.expires_at <= self.not_before:
            raise ValueError("expires_at must be after not_before")
        if not isinstance(self.audience, str) or _TEXT_FORBIDDEN.search(self.audience):
            raise ValueError("audience must be text without control characters")
        if len(self.audience.encode()) > _MAX_AUDIENCE_BYTES:
            raise ValueError(f"audience longer than {_MAX_AUDIENCE_BYTES} bytes")
        if not isinstance(self.session_id, str) or not _SESSION_ID.fullmatch(self.session_id):
            raise ValueError("session_id must be visible ASCII")
        if len(self.session_id) > _MAX_SESSION_ID:
            raise ValueError(f"session_id longer than {_MAX_SESSION_ID} characters")
        if not isinstance(self.client_ip, str):
            raise ValueError("client_ip must be a string")
        if self.client_ip:
            _check_network(self.client_ip)

    @property
    def tenant_id(self) -> str:
        """The first segment of the resource: the tenant whose key must have signed it."""
        return self.resource.partition("/")[0]

    @property
    def is_prefix(self) -> bool:
        """Whether the token covers every asset under a prefix rather than one asset."""
        return self.resource.endswith("/")

    def covers(self, resource: str) -> bool:
        """Whether a request for the asset at ``resource`` is within this grant.

        Segment-exact: ``acme/show/720p/`` covers ``acme/show/720p/seg1.ts`` but neither
        ``acme/show/720p-x/seg1.ts`` nor ``acme/show/720p``. A requested path that is not a
        valid asset path (a "..", an empty segment, a "%") is covered by nothing, so a
        traversal that a later layer might resolve cannot slip under a prefix.
        """
        if resource != self.resource and not (
            self.is_prefix and resource.startswith(self.resource)
        ):
            return False
        return not resource.endswith("/") and _resource_problem(resource) is None


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key that issues tokens for one tenant.

    The pyseto key object is built once here and kept: for Ed25519, building one costs
    nearly as much as a signature (docs/urls.md), so it is not redone per token.

    Attributes:
        kid: the id written into every token's footer, ``[A-Za-z0-9_-]{1,64}``.
        algorithm: :data:`ALG_ED25519` or :data:`ALG_HMAC_SHA256`.
        tenant_id: the only tenant whose resources this key may sign.
        secret: 32 bytes: the Ed25519 private seed (RFC 8032), or the HMAC secret.
    """

    kid: str
    algorithm: str
    tenant_id: str
    secret: bytes = field(repr=False)
    _pyseto: KeyInterface | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_key(self.kid, self.algorithm, self.tenant_id, self.secret, "secret")
        if self.algorithm == ALG_ED25519:
            object.__setattr__(self, "_pyseto", Key.from_asymmetric_key_params(4, d=self.secret))

    def verifying_key(self, *, not_after_issued: int | None = None) -> VerifyingKey:
        """The key that checks this key's tokens: the public key, or the same HMAC secret."""
        material = ed25519_public_key(self.secret) if self.algorithm == ALG_ED25519 else self.secret
        return VerifyingKey(
            self.kid, self.algorithm, self.tenant_id, material, not_after_issued=not_after_issued
        )


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A key that checks tokens; what an origin holds (for Ed25519, nothing secret).

    Attributes:
        kid: the id that a token's footer must name.
        algorithm: :data:`ALG_ED25519` or :data:`ALG_HMAC_SHA256`; the only source of the
            algorithm, so a token cannot choose how it is checked.
        tenant_id: tokens must be for this tenant's resources.
        material: 32 bytes: the Ed25519 public key, or the HMAC secret.
        not_after_issued: for a key taken out of signing but still verifying during the
            overlap: only tokens issued at or before this unix second are accepted, so a
            leaked retired key cannot mint fresh ones. None while the key still signs.
    """

    kid: str
    algorithm: str
    tenant_id: str
    material: bytes = field(repr=False)
    not_after_issued: int | None = None
    _pyseto: KeyInterface | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_key(self.kid, self.algorithm, self.tenant_id, self.material, "material")
        if self.not_after_issued is not None and (
            not isinstance(self.not_after_issued, int) or isinstance(self.not_after_issued, bool)
        ):
            raise ValueError("not_after_issued must be an int (unix seconds) or None")
        if self.algorithm == ALG_ED25519:
            object.__setattr__(self, "_pyseto", Key.from_asymmetric_key_params(4, x=self.material))


def sign(claims: Claims, key: SigningKey) -> str:
    """The token granting ``claims``, signed with ``key``.

    Raises:
        ValueError: the claims are for another tenant than the key's, or the token would
            be longer than :data:`MAX_TOKEN_LENGTH` (which :func:`verify` would refuse).
    """
    if claims.tenant_id != key.tenant_id:
        raise ValueError("claims are for another tenant than the signing key's")
    token = _seal(key, _serialize(claims), _footer(key.kid))
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"the token would exceed {MAX_TOKEN_LENGTH} characters")
    return token


def key_id_of(token: str) -> str:
    """The key id that an untrusted token names, after a strict check of its structure.

    For the caller's key look-up only: nothing is authenticated yet, and the key that the
    id selects (never the token) decides the algorithm.

    Raises:
        TokenError: the token is not well formed, or is of a version reelvault does not use.
    """
    return _split(token)[3]


def verify(
    token: str,
    key: VerifyingKey,
    *,
    now: float,
    leeway: float = 60.0,
    audience: str | None = None,
    client_ip: str | None = None,
    max_lifetime: int | None = None,
) -> Claims:
    """The claims of ``token`` if it was made with ``key`` and may be honoured at ``now``.

    Args:
        token: untrusted, as it came in the URL.
        key: the key that :func:`key_id_of` named, found by the caller.
        now: unix seconds; a parameter so that tests and replays need no clock.
        leeway: seconds of clock skew allowed between issuer and verifier, both ways.
        audience: who is checking; must equal the token's audience if it names one.
        client_ip: the requesting address; must be in the token's network if it names one.
        max_lifetime: the longest life an issuer may give a token, and the furthest ahead
            its not-before may lie; a token beyond either is refused whoever signed it (a
            leaked verify-only key cannot mint a token that outlives its overlap).

    Raises:
        TokenExpired: the token is otherwise valid here but past ``expires_at + leeway``.
        TokenError: any other reason to refuse it; ``reason`` says which.
        ValueError: ``now`` or ``leeway`` is not a finite number, or leeway is negative.
    """
    if not (math.isfinite(now) and math.isfinite(leeway)) or leeway < 0:
        raise ValueError("now and leeway must be finite, and leeway not negative")
    algorithm, body, footer, kid = _split(token)
    if algorithm != key.algorithm or kid != key.kid:
        raise TokenError(Reason.WRONG_KEY)
    claims = _parse_claims(_open(key, body, footer))
    if claims.tenant_id != key.tenant_id:
        raise TokenError(Reason.WRONG_TENANT, claims)
    if key.not_after_issued is not None and claims.issued_at > key.not_after_issued:
        raise TokenError(Reason.KEY_RETIRED, claims)
    if max_lifetime is not None and (
        claims.expires_at - claims.not_before > max_lifetime
        or claims.not_before - claims.issued_at > max_lifetime
    ):
        raise TokenError(Reason.LIFETIME, claims)
    if claims.audience and claims.audience != audience:
        raise TokenError(Reason.AUDIENCE, claims)
    if claims.client_ip and not _address_in(client_ip, claims.client_ip):
        raise TokenError(Reason.CLIENT_IP, claims)
    _check_times(claims, now, leeway)
    return claims


def _check_times(claims: Claims, now: float, leeway: float) -> None:
    """The clock's checks, last (so that "expired" means nothing else was wrong)."""
    if claims.issued_at > now + leeway:
        raise TokenError(Reason.ISSUED_IN_FUTURE, claims)
    if claims.not_before > now + leeway:
        raise TokenError(Reason.NOT_YET_VALID, claims)
    if claims.expires_at + leeway <= now:
        raise TokenExpired(claims)


# token, id of the key, audience, client address, maximum lifetime
_Memo = tuple[str, int, str | None, str | None, int | None]


class VerifiedTokens:
    """:func:`verify` with a bounded memory of tokens that passed: a player sends the same
    token for every segment of a rendition, and its signature and claims need checking
    once per key. A remembered token is still checked against the clock on every use;
    it is remembered per key object, so a key that changes (rotated to verify-only,
    retired: a new :class:`VerifyingKey` from the key store) is checked afresh. Refused
    tokens are never remembered.

    Args:
        size: tokens remembered (least recently used forgotten first).
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._passed: OrderedDict[_Memo, tuple[VerifyingKey, Claims]] = OrderedDict()
        self._lock = threading.Lock()

    def verify(
        self,
        token: str,
        key: VerifyingKey,
        *,
        now: float,
        leeway: float = 60.0,
        audience: str | None = None,
        client_ip: str | None = None,
        max_lifetime: int | None = None,
    ) -> Claims:
        """As :func:`verify`."""
        memo = (token, id(key), audience, client_ip, max_lifetime)
        with self._lock:
            hit = self._passed.get(memo)
            if hit is not None:
                self._passed.move_to_end(memo)
        if hit is not None and hit[0] is key:
            _check_times(hit[1], now, leeway)
            return hit[1]
        claims = verify(
            token,
            key,
            now=now,
            leeway=leeway,
            audience=audience,
            client_ip=client_ip,
            max_lifetime=max_lifetime,
        )
        with self._lock:
            self._passed[memo] = (key, claims)
            if len(self._passed) > self._size:
                self._passed.popitem(last=False)
        return claims


def _split(token: str) -> tuple[str, bytes, bytes, str]:
    """(algorithm, payload ‖ tag, footer, kid) of a well-formed token; nothing is trusted."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(Reason.MALFORMED)
    parts = token.split(".")
    if len(parts) < 3:
        raise TokenError(Reason.MALFORMED)
    algorithm = _ALGORITHM_OF_HEADER.get(f"{parts[0]}.{parts[1]}.")
    if algorithm is None:
        raise TokenError(Reason.UNSUPPORTED_VERSION)
    if len(parts) != 4:
        raise TokenError(Reason.MALFORMED)
    body = _b64decode(parts[2])
    footer = _b64decode(parts[3])
    if len(body) <= _TAG_LENGTHS[algorithm]:
        raise TokenError(Reason.MALFORMED)
    match = _FOOTER.fullmatch(footer)
    if match is None:
        raise TokenError(Reason.MALFORMED)
    return algorithm, body, footer, match.group(1).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url: the alphabet only, no padding, and the one encoding of its bytes.

    Canonical because a token must have exactly one spelling: otherwise the same grant has
    many URLs (cache keys, revocation lists and audit records would disagree) and a flipped
    unused bit would go unnoticed.
    """
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(Reason.MALFORMED)
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(data) != text:
        raise TokenError(Reason.MALFORMED)
    return data


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pae(pieces: list[bytes]) -> bytes:
    """PASETO's pre-authentication encoding: unambiguous, so no two inputs sign alike."""
    out = [struct.pack("<Q", len(pieces) & _U64_TOP_CLEAR)]
    for piece in pieces:
        out.append(struct.pack("<Q", len(piece) & _U64_TOP_CLEAR))
        out.append(piece)
    return b"".join(out)


def _footer(kid: str) -> bytes:
    return b'{"kid":"' + kid.encode("ascii") + b'"}'


def _seal(key: SigningKey, payload: bytes, footer: bytes) -> str:
    """The token over exact payload and footer bytes; also how the vectors are checked."""
    header = _HEADERS[key.algorithm]
    if key._pyseto is not None:
        tag = key._pyseto.sign(payload, footer, b"")
    else:
        tag = _hs256(key.secret, payload, footer)
    return f"{header}{_b64encode(payload + tag)}.{_b64encode(footer)}"


def _open(key: VerifyingKey, body: bytes, footer: bytes) -> bytes:
    """The payload, once its signature or tag has checked out under ``key``."""
    if key._pyseto is not None:
        try:
            return bytes(key._pyseto.verify(body, footer, b""))
        except (pyseto.VerifyError, ValueError):
            raise TokenError(Reason.BAD_SIGNATURE) from None
    payload, tag = body[:-32], body[-32:]
    if not hmac.compare_digest(tag, _hs256(key.material, payload, footer)):
        raise TokenError(Reason.BAD_SIGNATURE)
    return payload


def _hs256(secret: bytes, payload: bytes, footer: bytes) -> bytes:
    message = _pae([_HEADERS[ALG_HMAC_SHA256].encode("ascii"), payload, footer, b""])
    return hmac.digest(secret, message, "sha256")


def _serialize(claims: Claims) -> bytes:
    """Compact JSON, members sorted, UTF-8 as is: one spelling per grant, and short."""
    members = {
        "aud": claims.audience,
        "exp": _format_time(claims.expires_at),
        "iat": _format_time(claims.issued_at),
        "ip": claims.client_ip,
        "nbf": _format_time(claims.not_before),
        "res": claims.resource,
        "sid": claims.session_id,
    }
    return json.dumps(members, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _parse_claims(payload: bytes) -> Claims:
    """Strict: exactly the seven members, each a string of its form; anything else refused.

    Any JSON spelling is accepted (the signature covers the exact bytes, and other PASETO
    libraries write spaces), but no duplicate member, number, NaN or nesting survives.
    """
    try:
        members = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_int=_no_numbers,
            parse_float=_no_numbers,
            parse_constant=_no_numbers,
        )
        if not isinstance(members, dict) or members.keys() != _MEMBERS:
            raise TokenError(Reason.MALFORMED)
        if not all(isinstance(value, str) for value in members.values()):
            raise TokenError(Reason.MALFORMED)
        return Claims(
            resource=members["res"],
            expires_at=_parse_time(members["exp"]),
            not_before=_parse_time(members["nbf"]),
            issued_at=_parse_time(members["iat"]),
            audience=members["aud"],
            session_id=members["sid"],
            client_ip=members["ip"],
        )
    except (ValueError, RecursionError):
        raise TokenError(Reason.MALFORMED) from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member")
    return members


def _no_numbers(_text: str) -> NoReturn:
    raise ValueError("numbers are not claims")


def _format_time(seconds: int) -> str:
    t = _EPOCH + seconds * _SECOND
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def _parse_time(text: str) -> int:
    """Unix seconds of ``YYYY-MM-DDTHH:MM:SSZ``: the one RFC 3339 form :func:`sign` writes.

    Standard PASETO libraries read it as a registered DateTime claim, so they enforce
    ``exp`` and ``nbf`` too; one form only, so no offset or fraction needs interpreting.
    """
    if _TIME.fullmatch(text) is None:
        raise ValueError("not a UTC timestamp of the form YYYY-MM-DDTHH:MM:SSZ")
    return int(datetime.fromisoformat(text).timestamp())  # ValueError for a 30 February


def _segment_problem(segment: str) -> str | None:
    if segment in ("", ".", ".."):
        return "an empty, '.' or '..' segment"
    return None


def _resource_problem(resource: object) -> str | None:
    """What makes ``resource`` unacceptable as an asset path or prefix; None if nothing."""
    if not isinstance(resource, str):
        return "not a string"
    if _RESOURCE_FORBIDDEN.search(resource):
        return "a control character, a lone surrogate, '\\' or '%'"
    if len(resource.encode("utf-8")) > _MAX_RESOURCE_BYTES:
        return f"longer than {_MAX_RESOURCE_BYTES} bytes"
    segments = resource.split("/")
    if resource.endswith("/"):
        segments.pop()
    if len(segments) < 2:
        return "needs a tenant id and an asset path or prefix under it"
    for segment in segments:
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


def _check_network(text: str) -> None:
    if len(text) > _MAX_CLIENT_IP:
        raise ValueError(f"client_ip longer than {_MAX_CLIENT_IP} characters")
    network = _network(text)  # ValueError if host bits are set
    if str(network) != text:
        raise ValueError(f"client_ip must be written {str(network)!r}")


@functools.lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parsed once per distinct network: parsing costs more than the rest of the claims."""
    return ipaddress.ip_network(text, strict=True)


def _address_in(address: str | None, network: str) -> bool:
    """Whether the client address is in the network; an IPv4-mapped IPv6 address counts
    as its IPv4 address, which is how a dual-stack listener reports IPv4 clients."""
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in _network(network)


def _check_key(kid: str, algorithm: str, tenant_id: str, material: bytes, what: str) -> None:
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError("kid must be 1 to 64 characters of [A-Za-z0-9_-]")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}")
    if (
        not isinstance(tenant_id, str)
        or "/" in tenant_id
        or _segment_problem(tenant_id) is not None
        or _RESOURCE_FORBIDDEN.search(tenant_id)
    ):
        raise ValueError("tenant_id must be one path segment")
    if not isinstance(material, bytes) or len(material) != _KEY_LENGTH:
        raise ValueError(f"{what} must be {_KEY_LENGTH} bytes")
