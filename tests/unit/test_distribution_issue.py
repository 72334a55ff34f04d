"""Issuing distribution URLs (reelvault.distribution.service): the claims a caller may set
and the limits on them, the audit record of an issuance, and CloudFront mode's URLs and
cookies, checked as CloudFront's edge would (the policy verifies under the public key)."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.audit import Access, MemoryAuditSink
from reelvault.audit.events import Actor, RequestInfo
from reelvault.distribution.cloudfront import CloudFrontKey
from reelvault.distribution.service import DistributionConfig
from reelvault.errors import FailedPrecondition, InvalidArgument, NotFound
from reelvault.storage import MemoryObjectStore

pytestmark = pytest.mark.db

EDGE = "https://d111.cloudfront.net"


@pytest.fixture
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def vault(database, root_provider, clock, sink, ec_key) -> Vault:
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Vault.from_parts(
        database=database,
        root=root_provider,
        store=MemoryObjectStore(),
        clock=clock,
        audit_sink=sink,
        distribution=DistributionConfig(
            base_url="https://origin.example.com",
            default_ttl=600,
            max_ttl=3600,
            cloudfront_key=CloudFrontKey("K2JCJMDEHXQW5F", pem),
            cloudfront_base_url=EDGE,
        ),
    )


@pytest.fixture
def tenant(vault: Vault) -> str:
    return vault.tenant_keys.create_tenant("studio").id


@pytest.fixture
def asset_id(vault: Vault, tenant: str) -> str:
    upload = vault.assets.begin_upload(tenant, UploadSpec(path="show/720p/index.m3u8"))
    upload.write(b"#EXTM3U\n")
    return upload.complete().id


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def _verified_policy(policy: str, signature: str, key: ec.EllipticCurvePrivateKey) -> dict:
    raw = _unb64(policy)
    key.public_key().verify(_unb64(signature), raw, ec.ECDSA(hashes.SHA256()))
    return json.loads(raw)


def test_a_cloudfront_url_for_a_prefix_carries_a_wildcard_policy_the_edge_verifies(
    vault: Vault, tenant: str, asset_id: str, clock, ec_key, sink: MemoryAuditSink
) -> None:
    actor = Actor(key_id="0123456789abcdef", role="distributor", tenant_id=tenant)
    request = RequestInfo(transport="grpc", operation="IssueUrl")
    access = Access(actor=actor, request=request, action="url.issue")
    with vault.auditor.bind(access):
        issued = vault.distribution.issue(
            tenant, prefix="show/720p/", ttl=900, client_ip="203.0.113.0/24", cloudfront_mode=True
        )
    url = urllib.parse.urlsplit(issued.url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{EDGE}/cf/{tenant}/show/720p/"
    query = dict(urllib.parse.parse_qsl(url.query))
    assert query["Key-Pair-Id"] == "K2JCJMDEHXQW5F"
    assert query["Hash-Algorithm"] == "SHA256"
    policy = _verified_policy(query["Policy"], query["Signature"], ec_key)
    (statement,) = policy["Statement"]
    assert statement["Resource"] == f"{EDGE}/cf/{tenant}/show/720p/*"
    assert statement["Condition"]["DateLessThan"]["AWS:EpochTime"] == int(clock.now()) + 900
    assert statement["Condition"]["IpAddress"]["AWS:SourceIp"] == "203.0.113.0/24"
    assert issued.token == ""  # the origin's own token plays no part in this mode
    # recorded as an issuance, without the signature
    (event,) = [e for e in sink.events if e.action == "url.issue"]
    assert event.detail["form"] == "cloudfront-url"
    assert query["Signature"] not in repr(event)


def test_cloudfront_cookies_for_one_asset(vault: Vault, tenant: str, asset_id: str, ec_key) -> None:
    issued = vault.distribution.issue(tenant, asset_id=asset_id, cookie=True, cloudfront_mode=True)
    cookies = dict(issued.cloudfront_cookies)
    assert cookies["CloudFront-Key-Pair-Id"] == "K2JCJMDEHXQW5F"
    policy = _verified_policy(cookies["CloudFront-Policy"], cookies["CloudFront-Signature"], ec_key)
    assert policy["Statement"][0]["Resource"] == f"{EDGE}/cf/{tenant}/show/720p/index.m3u8"


@pytest.mark.parametrize(
    "options",
    [
        {"audience": "cdn-a"},  # CloudFront policies have no audience
        {"session_id": "s-1"},  # ...nor a session
        {"client_ip": "2001:db8::/48"},  # ...nor IPv6 conditions
    ],
)
def test_what_cloudfront_cannot_express_is_invalid_argument(
    vault: Vault, tenant: str, options: dict[str, str]
) -> None:
    with pytest.raises(InvalidArgument):
        vault.distribution.issue(tenant, prefix="show/", cloudfront_mode=True, **options)  # type: ignore[arg-type]


def test_cloudfront_mode_unconfigured_is_failed_precondition(
    database, root_provider, clock, tenant: str
) -> None:
    plain = Vault.from_parts(
        database=database, root=root_provider, store=MemoryObjectStore(), clock=clock
    )
    with pytest.raises(FailedPrecondition, match="CloudFront mode is not configured"):
        plain.distribution.issue(tenant, prefix="show/", cloudfront_mode=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix": "show/", "ttl": 3601}, "ttl must be 1 to 3600"),
        ({"prefix": "show/", "ttl": -5}, "ttl must be"),
        ({"prefix": "show/", "not_before": 10**10}, "not_before"),
        ({"prefix": "show/../x/"}, "prefix"),
        ({"prefix": "show//"}, "prefix"),
        ({"prefix": "show/", "session_id": "has space"}, "session id"),
        ({"prefix": "show/", "client_ip": "not-an-ip"}, "client IP"),
        ({}, "either an asset id or a path prefix"),
    ],
)
def test_issue_limits_are_clear_errors(
    vault: Vault, tenant: str, options: dict, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        vault.distribution.issue(tenant, **options)


def test_another_tenants_asset_looks_missing(vault: Vault, tenant: str, asset_id: str) -> None:
    other = vault.tenant_keys.create_tenant("rival").id
    with pytest.raises(NotFound):
        vault.distribution.issue(other, asset_id=asset_id)
    with pytest.raises(NotFound):
        vault.distribution.revoke_asset(other, asset_id)


def test_a_cookie_names_its_directory_and_is_secure_over_https(
    vault: Vault, tenant: str, asset_id: str
) -> None:
    issued = vault.distribution.issue(tenant, asset_id=asset_id, ttl=120, cookie=True)
    attributes = issued.cookie.split("; ")
    assert attributes[0] == f"rv_token={issued.token}"
    assert f"Path=/v/{tenant}/show/720p/" in attributes
    assert {"Max-Age=120", "HttpOnly", "SameSite=None", "Secure"} <= set(attributes)
    assert issued.url == f"https://origin.example.com/v/{tenant}/show/720p/"
