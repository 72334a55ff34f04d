"""``reelvault url``: signed distribution URLs and cookies, their revocation and the
tenant's signing keys, through the service (docs/urls.md)."""

from __future__ import annotations

import argparse
import base64
import re
from datetime import UTC, datetime
from typing import Any, Final

from reelvault import errors
from reelvault.cli import _common
from reelvault.cli._common import Groups, Output, table, when
from reelvault.client import ADDR_ENV, TOKEN_ALGORITHMS, TOKEN_ENV, Client, DistributionUrl

__all__ = ["add_commands"]

_ASSET_ID: Final = re.compile(r"[0-9a-f]{32}")


def add_commands(groups: Groups, common: argparse.ArgumentParser) -> None:
    url = groups.add_parser(
        "url",
        help="signed distribution URLs for the HTTP origin (distributor, tenant admin)",
        description=(
            f"Distribution URLs, through the service at ${ADDR_ENV} with the key in ${TOKEN_ENV}."
        ),
    )
    commands = url.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sign = commands.add_parser(
        "sign",
        parents=[common],
        help="print a signed URL for an asset (id or path) or a path prefix (ending in /)",
    )
    sign.add_argument(
        "target",
        metavar="ASSET_OR_PREFIX",
        help="an asset id, an asset path, or a path prefix ending in / (a whole rendition)",
    )
    sign.add_argument("--ttl", type=int, default=0, help="seconds (default: the service's)")
    sign.add_argument("--not-before", metavar="ISO8601", help="valid from (default: now)")
    sign.add_argument("--session", default="", help="session id, for revoke --session")
    sign.add_argument("--audience", default="", help="only origins of this audience accept it")
    sign.add_argument("--client-ip", default="", help="an address or CIDR the viewer must use")
    sign.add_argument(
        "--algorithm", choices=TOKEN_ALGORITHMS, default="ed25519", help="token signature"
    )
    sign.add_argument("--cookie", action="store_true", help="print a Set-Cookie value instead")
    sign.add_argument(
        "--cloudfront", action="store_true", help="a CloudFront signed URL or cookies instead"
    )
    sign.set_defaults(handler=_sign)
    revoke = commands.add_parser(
        "revoke", parents=[common], help="stop tokens of a session or for an asset"
    )
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--session", help="tokens of this session issued until now")
    what.add_argument("--asset", metavar="ID", help="tokens reaching this asset issued until now")
    revoke.set_defaults(handler=_revoke)
    keys = commands.add_parser("keys", parents=[common], help="list the tenant's signing keys")
    keys.set_defaults(handler=_keys)
    rotate = commands.add_parser(
        "rotate-key", parents=[common], help="create the next signing key (the old one verifies)"
    )
    rotate.add_argument("--algorithm", choices=TOKEN_ALGORITHMS, default="ed25519")
    rotate.add_argument(
        "--retire-previous",
        action="store_true",
        help="the current key stops verifying at once (it leaked): its tokens stop working",
    )
    rotate.set_defaults(handler=_rotate)


def _sign(args: argparse.Namespace) -> Output:
    not_before = None
    if args.not_before:
        try:
            not_before = datetime.fromisoformat(args.not_before)
        except ValueError:
            raise errors.InvalidArgument("--not-before must be an ISO 8601 time") from None
        if not_before.tzinfo is None:
            not_before = not_before.replace(tzinfo=UTC)
    with _common.client() as client:
        asset_id, prefix = _target(client, args.target)
        issued = client.issue_url(
            asset_id=asset_id,
            prefix=prefix,
            ttl=args.ttl,
            not_before=not_before,
            audience=args.audience,
            client_ip=args.client_ip,
            session_id=args.session,
            algorithm=args.algorithm,
            cookie=args.cookie,
            cloudfront=args.cloudfront,
        )
    return Output(data=_issued_data(issued), text=_issued_text(issued, cookie=args.cookie))


def _target(client: Client, target: str) -> tuple[str, str]:
    if _ASSET_ID.fullmatch(target):
        return target, ""
    if target.endswith("/"):
        return "", target
    # the exact path sorts first among the paths it prefixes
    first = next(iter(client.list(prefix=target, page_size=1)), None)
    if first is None or first.path != target:
        raise errors.InvalidArgument(f"no asset at path {target!r} (a prefix ends in /)")
    return first.id, ""


def _issued_data(issued: DistributionUrl) -> dict[str, Any]:
    return {
        "url": issued.url,
        "token": issued.token,
        "expires_at": issued.expires_at.isoformat(),
        "key_id": issued.key_id,
        "resource": issued.resource,
        "set_cookie": issued.set_cookie,
        "cloudfront_cookies": dict(issued.cloudfront_cookies),
    }


def _issued_text(issued: DistributionUrl, *, cookie: bool) -> str:
    if issued.cloudfront_cookies:
        return "\n".join(f"{k}={v}" for k, v in issued.cloudfront_cookies.items())
    if cookie:
        return f"Set-Cookie: {issued.set_cookie}\n{issued.url}"
    return issued.url


def _revoke(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        if args.session is not None:
            cutoff = client.revoke_session(args.session)
            what = f"session {args.session}"
        else:
            cutoff = client.revoke_asset_urls(args.asset)
            what = f"asset {args.asset}"
    return Output(
        data={"revoked": what, "cutoff": cutoff.isoformat()},
        text=f"revoked {what}: tokens issued until {when(cutoff)} no longer work",
    )


def _keys(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        keys = client.list_signing_keys()
    rows = [
        (
            k.key_id,
            k.algorithm,
            k.state,
            when(k.created_at),
            when(k.verify_until) if k.verify_until else "-",
            _b64(k.public_key) or "-",
        )
        for k in keys
    ]
    return Output(
        data={
            "keys": [
                {
                    "key_id": k.key_id,
                    "algorithm": k.algorithm,
                    "state": k.state,
                    "public_key": _b64(k.public_key),
                    "created_at": k.created_at.isoformat(),
                    "verify_until": k.verify_until.isoformat() if k.verify_until else None,
                }
                for k in keys
            ]
        },
        text=table(
            ("KEY ID", "ALGORITHM", "STATE", "CREATED", "VERIFY UNTIL", "PUBLIC KEY"),
            rows,
            empty="no signing keys (the first URL creates one)",
        ),
    )


def _rotate(args: argparse.Namespace) -> Output:
    with _common.client() as client:
        key, secret = client.rotate_signing_key(
            args.algorithm, retire_previous=args.retire_previous
        )
    text = f"new {key.algorithm} signing key {key.key_id}"
    if secret:
        text += f"\nHMAC secret (shown once; give it to the edge): {_b64(secret)}"
    return Output(
        data={"key_id": key.key_id, "algorithm": key.algorithm, "hmac_secret": _b64(secret)},
        text=text,
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") if raw else ""
