"""CloudFront mode: custom-policy signed URLs and signed cookies (docs/urls.md).

In CloudFront mode the vault does not serve a rendition's segments itself. After it has
authorised a viewer, it hands out a CloudFront *custom policy* signed with a private key
whose public half sits in the distribution's trusted key group, and CloudFront's edge checks
the policy on every request, so access is enforced where the bytes are cached. One policy
covers a whole rendition through a wildcard resource, e.g.
``https://d111.cloudfront.net/v/acme/show/720p/*``; the player carries it either in the
query string of each URL or, more usefully for HLS/DASH segment lists, in cookies.

The policy (compact JSON, the exact bytes that are signed and base64-encoded)::

    {"Statement":[{"Resource":"<url or url pattern>",
                   "Condition":{"DateLessThan":{"AWS:EpochTime":<expires_at>},
                                "DateGreaterThan":{"AWS:EpochTime":<not_before>},  # optional
                                "IpAddress":{"AWS:SourceIp":"<IPv4 CIDR>"}}}]}     # optional

On the wire, each base64 value uses CloudFront's substitutions ``+`` -> ``-``, ``=`` -> ``_``,
``/`` -> ``~``::

    <url>?|&Policy=<b64 policy>&Signature=<b64 signature>&Key-Pair-Id=<id>&Hash-Algorithm=SHA256

    CloudFront-Policy=<b64 policy>         CloudFront-Signature=<b64 signature>
    CloudFront-Key-Pair-Id=<id>            CloudFront-Hash-Algorithm=SHA256

The signature is over the policy's UTF-8 bytes with SHA-256: RSASSA-PKCS1-v1_5 for an RSA
2048 key, ECDSA with a DER-encoded (r, s) for a P-256 key. Those are the only two key kinds a
CloudFront key group accepts. CloudFront assumes SHA-1 when ``Hash-Algorithm`` is absent; the
vault never issues SHA-1 and there is deliberately no way to ask for it.

The edge checks signature, resource, times and source address; it cannot revoke a policy
before ``DateLessThan``, so what the vault issues here lives exactly as long as its
``expires_at``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import string
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from botocore.signers import CloudFrontSigner

from reelvault.crypto.signing import CloudFrontPolicySigner

__all__ = ["CloudFrontKey", "custom_policy", "signed_cookies", "signed_url"]

_HASH_ALGORITHM = "SHA256"
"""The value of ``Hash-Algorithm`` / ``CloudFront-Hash-Algorithm`` on everything issued."""

_RSA_BITS = 2048
_SIGNING_PARAMETERS = frozenset({"Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm"})
_URL_CHARACTERS = frozenset(string.ascii_letters + string.digits + string.punctuation)
_KEY_PAIR_ID = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True, slots=True)
class CloudFrontKey:
    """One private key of the distribution's trusted key group.

    The PEM is parsed once, here, so that a key CloudFront would not accept fails at
    configuration time rather than as a 403 at the edge.

    Attributes:
        key_pair_id: The id CloudFront gave the public key when it was uploaded (e.g.
            ``K2JCJMDEHXQW5F``); it tells the edge which key of the group to verify with.
        private_key_pem: Unencrypted PEM (PKCS#8, PKCS#1 or SEC1) of an RSA 2048 or ECDSA
            P-256 key. Anything else raises ``ValueError``.
    """

    key_pair_id: str
    private_key_pem: bytes = field(repr=False)
    _signer: CloudFrontPolicySigner = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The id is written into URLs and cookies unescaped.
        if not _KEY_PAIR_ID.fullmatch(self.key_pair_id):
            raise ValueError("a CloudFront key pair id is letters and digits only")
        object.__setattr__(self, "_signer", CloudFrontPolicySigner(self.private_key_pem))

    @property
    def algorithm(self) -> str:
        """``"rsa"`` or ``"ecdsa-p256"``: operators must upload the matching public key."""
        return self._signer.algorithm


def custom_policy(
    resource: str,
    *,
    expires_at: int,
    not_before: int | None = None,
    client_ip: str | None = None,
) -> str:
    """The compact JSON custom policy for ``resource``; these exact bytes get signed.

    Args:
        resource: An absolute http(s) URL; ``*`` (any characters) and ``?`` (one character)
            in its path or query are CloudFront wildcards, so a rendition prefix + ``*``
            grants every segment under it. The host may not hold a wildcard: one policy must
            never reach beyond one distribution.
        expires_at: Epoch seconds; CloudFront refuses the request from this second on.
        not_before: Epoch seconds; CloudFront refuses the request before this second.
        client_ip: An IPv4 address or network (CIDR) the viewer must connect from; a bare
            address means ``/32``.

    Raises:
        ValueError: The resource is not such a URL, the times are out of order, or
            ``client_ip`` is not an IPv4 network.
    """
    _check_url(resource, name="resource", wildcards=True)
    if expires_at <= 0:
        raise ValueError("expires_at must be a positive epoch time in seconds")
    if not_before is not None and not 0 <= not_before < expires_at:
        raise ValueError("not_before must be an epoch time before expires_at")
    condition: dict[str, dict[str, int | str]] = {"DateLessThan": {"AWS:EpochTime": expires_at}}
    if not_before is not None:
        condition["DateGreaterThan"] = {"AWS:EpochTime": not_before}
    if client_ip is not None:
        condition["IpAddress"] = {"AWS:SourceIp": _ipv4_network(client_ip)}
    statement = {"Resource": resource, "Condition": condition}
    return json.dumps({"Statement": [statement]}, separators=(",", ":"))


def signed_url(
    url: str,
    key: CloudFrontKey,
    *,
    expires_at: int,
    not_before: int | None = None,
    client_ip: str | None = None,
    resource: str | None = None,
) -> str:
    """``url`` with a signed custom policy appended as CloudFront's query parameters.

    Args:
        url: The URL the viewer fetches; its own query string, if any, is kept.
        key: The signing key.
        expires_at: See :func:`custom_policy`.
        not_before: See :func:`custom_policy`.
        client_ip: See :func:`custom_policy`.
        resource: The policy's resource when it should cover more than ``url``, e.g. the
            rendition prefix + ``*`` so that the player can reuse the parameters on every
            segment. It must match ``url``. Defaults to ``url`` itself.

    Raises:
        ValueError: As :func:`custom_policy`; also when ``url`` already carries CloudFront's
            signing parameters, contains ``*``, or is not matched by ``resource``.
    """
    _check_url(url, name="url", wildcards=False)
    policy = custom_policy(
        url if resource is None else resource,
        expires_at=expires_at,
        not_before=not_before,
        client_ip=client_ip,
    )
    if resource is not None and not _matches(resource, url):
        raise ValueError("resource does not match url, so CloudFront would refuse it")
    signer = CloudFrontSigner(key.key_pair_id, key._signer.sign)
    return f"{signer.generate_presigned_url(url, policy=policy)}&Hash-Algorithm={_HASH_ALGORITHM}"


def signed_cookies(
    resource: str,
    key: CloudFrontKey,
    *,
    expires_at: int,
    not_before: int | None = None,
    client_ip: str | None = None,
) -> dict[str, str]:
    """CloudFront's signed cookies for ``resource``, as cookie name -> value.

    Only names and values: the caller sets them with ``Secure; HttpOnly``, a ``Domain`` of
    the distribution and a ``Path`` that covers the resource, and, as AWS recommends,
    without ``Expires`` or ``Max-Age`` (the policy carries the expiry).

    Args:
        resource: See :func:`custom_policy`; usually the rendition prefix + ``*``.
        key: The signing key.
        expires_at: See :func:`custom_policy`.
        not_before: See :func:`custom_policy`.
        client_ip: See :func:`custom_policy`.

    Raises:
        ValueError: As :func:`custom_policy`.
    """
    policy = custom_policy(
        resource, expires_at=expires_at, not_before=not_before, client_ip=client_ip
    ).encode()
    return {
        "CloudFront-Policy": _cloudfront_b64(policy),
        "CloudFront-Signature": _cloudfront_b64(key._signer.sign(policy)),
        "CloudFront-Key-Pair-Id": key.key_pair_id,
        "CloudFront-Hash-Algorithm": _HASH_ALGORITHM,
    }


def _cloudfront_b64(data: bytes) -> str:
    """Base64 with CloudFront's substitutions, so the value survives a query string or cookie."""
    return base64.b64encode(data).decode().translate(str.maketrans("+=/", "-_~"))


def _check_url(value: str, *, name: str, wildcards: bool) -> None:
    if not value or not _URL_CHARACTERS.issuperset(value):
        raise ValueError(f"{name} must be printable ASCII: percent-encode anything else")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an absolute http or https URL")
    if "*" in parts.netloc:
        raise ValueError(f"{name} may not hold a wildcard in its host")
    if not wildcards and "*" in value:
        raise ValueError(f"{name} is what the viewer fetches: pass a pattern as resource")
    if "#" in value:
        raise ValueError(f"{name} may not have a fragment")
    if any(k in _SIGNING_PARAMETERS for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise ValueError(f"{name} already carries CloudFront signing parameters")


def _matches(resource: str, url: str) -> bool:
    """Whether CloudFront's wildcard ``resource`` (``*`` any run, ``?`` one character) covers
    ``url``."""
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in resource)
    return re.fullmatch(pattern, url, flags=re.DOTALL) is not None


def _ipv4_network(client_ip: str) -> str:
    # CloudFront matches AWS:SourceIp against IPv4 only: AWS says not to enable IPv6 on a
    # distribution whose policies restrict by address.
    try:
        network = ipaddress.ip_network(client_ip, strict=True)
    except ValueError:
        raise ValueError(
            "client_ip must be an IPv4 address or network, e.g. 203.0.113.0/24"
        ) from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError("client_ip must be IPv4: CloudFront policies cannot match IPv6")
    return network.with_prefixlen
