"""CloudFront custom-policy signed URLs and cookies, checked the way CloudFront's edge does.

The oracle: undo CloudFront's base64 substitutions, read the policy JSON, and verify the
signature over the policy bytes with the public key, using the hash that the
``Hash-Algorithm`` value names (SHA-1 when absent, as at the edge): RSASSA-PKCS1-v1_5 for RSA,
DER-encoded ECDSA for P-256. No network.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from reelvault.distribution.cloudfront import (
    CloudFrontKey,
    custom_policy,
    signed_cookies,
    signed_url,
)

DIST = "https://d111.cloudfront.net"
RENDITION = f"{DIST}/v/acme/show/720p/"
SEGMENT = f"{RENDITION}seg-00001.ts"
EXPIRES = 1_900_000_000
NOT_BEFORE = 1_899_999_000
KEY_ID = "K2JCJMDEHXQW5F"
SIGNING_PARAMETERS = ["Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm"]
COOKIE_NAMES = [
    "CloudFront-Policy",
    "CloudFront-Signature",
    "CloudFront-Key-Pair-Id",
    "CloudFront-Hash-Algorithm",
]


def _pem(private_key: PrivateKeyTypes, fmt: serialization.PrivateFormat) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


@dataclass(frozen=True)
class Signing:
    key: CloudFrontKey
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey


_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_EC = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(
    params=[
        ("rsa", _RSA, serialization.PrivateFormat.PKCS8),
        ("rsa", _RSA, serialization.PrivateFormat.TraditionalOpenSSL),
        ("ecdsa-p256", _EC, serialization.PrivateFormat.PKCS8),
        ("ecdsa-p256", _EC, serialization.PrivateFormat.TraditionalOpenSSL),
    ],
    ids=["rsa-pkcs8", "rsa-pkcs1", "p256-pkcs8", "p256-sec1"],
)
def signing(request: pytest.FixtureRequest) -> Signing:
    algorithm, private_key, fmt = request.param
    key = CloudFrontKey(KEY_ID, _pem(private_key, fmt))
    assert key.algorithm == algorithm
    return Signing(key, private_key.public_key())


def cf_b64decode(value: str) -> bytes:
    assert not set(value) & set("+/="), "not URL-safe"
    return base64.b64decode(value.translate(str.maketrans("-_~", "+=/")), validate=True)


def edge_verify(signing: Signing, policy: bytes, signature: bytes, hash_name: str | None) -> None:
    """What CloudFront does with a request: raises InvalidSignature if it would refuse it."""
    digest = hashes.SHA256() if hash_name == "SHA256" else hashes.SHA1()
    public = signing.public_key
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, policy, padding.PKCS1v15(), digest)
    else:
        public.verify(signature, policy, ec.ECDSA(digest))


def split_signed(signed: str, url: str) -> dict[str, str]:
    """The four parameters appended to ``url``, checking that nothing else changed."""
    separator = "&" if "?" in url else "?"
    assert signed.startswith(url + separator)
    pairs = [p.split("=", 1) for p in signed[len(url) + 1 :].split("&")]
    assert [name for name, _ in pairs] == SIGNING_PARAMETERS
    return dict(pairs)


def expected_policy(resource: str, condition: str) -> bytes:
    return f'{{"Statement":[{{"Resource":"{resource}","Condition":{{{condition}}}}}]}}'.encode()


# -- signed URLs -------------------------------------------------------------------------


def test_signed_url_carries_a_policy_the_edge_accepts(signing: Signing) -> None:
    signed = signed_url(SEGMENT, signing.key, expires_at=EXPIRES, resource=RENDITION + "*")

    params = split_signed(signed, SEGMENT)
    policy = cf_b64decode(params["Policy"])
    assert policy == expected_policy(
        RENDITION + "*", f'"DateLessThan":{{"AWS:EpochTime":{EXPIRES}}}'
    )
    assert params["Key-Pair-Id"] == KEY_ID
    assert params["Hash-Algorithm"] == "SHA256"
    edge_verify(signing, policy, cf_b64decode(params["Signature"]), params["Hash-Algorithm"])


def test_conditions_appear_only_when_asked(signing: Signing) -> None:
    signed = signed_url(
        SEGMENT,
        signing.key,
        expires_at=EXPIRES,
        not_before=NOT_BEFORE,
        client_ip="203.0.113.0/24",
        resource=RENDITION + "*",
    )

    params = split_signed(signed, SEGMENT)
    policy = cf_b64decode(params["Policy"])
    assert policy == expected_policy(
        RENDITION + "*",
        f'"DateLessThan":{{"AWS:EpochTime":{EXPIRES}}},'
        f'"DateGreaterThan":{{"AWS:EpochTime":{NOT_BEFORE}}},'
        '"IpAddress":{"AWS:SourceIp":"203.0.113.0/24"}',
    )
    edge_verify(signing, policy, cf_b64decode(params["Signature"]), "SHA256")


def test_signature_is_sha256_as_the_url_says_not_cloudfronts_sha1_default(
    signing: Signing,
) -> None:
    params = split_signed(signed_url(SEGMENT, signing.key, expires_at=EXPIRES), SEGMENT)

    with pytest.raises(InvalidSignature):
        edge_verify(
            signing, cf_b64decode(params["Policy"]), cf_b64decode(params["Signature"]), None
        )


@pytest.mark.parametrize(
    "forged",
    [
        lambda p: p.replace(b"/v/acme/", b"/v/other/"),  # another tenant's rendition
        lambda p: p.replace(b"/720p/", b"/1080p/"),  # another rendition
        lambda p: p.replace(str(EXPIRES).encode(), str(EXPIRES + 86_400).encode()),
        lambda p: p.replace(b"/32", b"/0"),  # widen the address range
    ],
    ids=["tenant", "rendition", "expiry", "address"],
)
def test_a_rewritten_policy_is_refused(signing: Signing, forged: Callable[[bytes], bytes]) -> None:
    signed = signed_url(
        SEGMENT, signing.key, expires_at=EXPIRES, client_ip="198.51.100.7", resource=RENDITION + "*"
    )
    params = split_signed(signed, SEGMENT)
    policy = cf_b64decode(params["Policy"])
    assert forged(policy) != policy

    with pytest.raises(InvalidSignature):
        edge_verify(signing, forged(policy), cf_b64decode(params["Signature"]), "SHA256")


def test_url_with_a_query_string_keeps_it_and_the_policy_covers_it(signing: Signing) -> None:
    url = f"{RENDITION}seg-00001.ts?session=abc&cmcd=br%3D3000"

    signed = signed_url(url, signing.key, expires_at=EXPIRES)

    params = split_signed(signed, url)
    policy = cf_b64decode(params["Policy"])
    assert json.loads(policy)["Statement"][0]["Resource"] == url
    edge_verify(signing, policy, cf_b64decode(params["Signature"]), "SHA256")


def test_resource_defaults_to_the_url(signing: Signing) -> None:
    params = split_signed(signed_url(SEGMENT, signing.key, expires_at=EXPIRES), SEGMENT)

    assert json.loads(cf_b64decode(params["Policy"]))["Statement"][0]["Resource"] == SEGMENT


@pytest.mark.parametrize(
    "resource",
    [RENDITION + "*", f"{DIST}/v/acme/*", f"{RENDITION}seg-0000?.ts", f"{DIST}/*/720p/*"],
)
def test_wildcard_resource_covering_the_url_is_signed(signing: Signing, resource: str) -> None:
    signed = signed_url(SEGMENT, signing.key, expires_at=EXPIRES, resource=resource)

    params = split_signed(signed, SEGMENT)
    policy = cf_b64decode(params["Policy"])
    assert json.loads(policy)["Statement"][0]["Resource"] == resource
    edge_verify(signing, policy, cf_b64decode(params["Signature"]), "SHA256")


@pytest.mark.parametrize(
    "resource",
    [
        f"{DIST}/v/other/show/720p/*",
        f"{RENDITION}seg-0000?.m4s",
        "https://d222.cloudfront.net/v/acme/show/720p/*",
        RENDITION,
    ],
)
def test_resource_that_does_not_cover_the_url_is_refused(signing: Signing, resource: str) -> None:
    with pytest.raises(ValueError, match="does not match"):
        signed_url(SEGMENT, signing.key, expires_at=EXPIRES, resource=resource)


# -- signed cookies ----------------------------------------------------------------------


def test_cookies_carry_the_same_policy_and_a_valid_signature(signing: Signing) -> None:
    cookies = signed_cookies(
        RENDITION + "*", signing.key, expires_at=EXPIRES, client_ip="198.51.100.7"
    )

    assert list(cookies) == COOKIE_NAMES
    assert cookies["CloudFront-Key-Pair-Id"] == KEY_ID
    assert cookies["CloudFront-Hash-Algorithm"] == "SHA256"
    policy = cf_b64decode(cookies["CloudFront-Policy"])
    assert policy == expected_policy(
        RENDITION + "*",
        f'"DateLessThan":{{"AWS:EpochTime":{EXPIRES}}},"IpAddress":{{"AWS:SourceIp":"198.51.100.7/32"}}',
    )
    edge_verify(signing, policy, cf_b64decode(cookies["CloudFront-Signature"]), "SHA256")
    params = split_signed(
        signed_url(
            SEGMENT,
            signing.key,
            expires_at=EXPIRES,
            client_ip="198.51.100.7",
            resource=RENDITION + "*",
        ),
        SEGMENT,
    )
    assert params["Policy"] == cookies["CloudFront-Policy"]


def test_custom_policy_is_exactly_what_gets_signed() -> None:
    policy = custom_policy(
        RENDITION + "*", expires_at=EXPIRES, not_before=NOT_BEFORE, client_ip="10.1.0.0/16"
    )

    assert policy.encode() == expected_policy(
        RENDITION + "*",
        f'"DateLessThan":{{"AWS:EpochTime":{EXPIRES}}},'
        f'"DateGreaterThan":{{"AWS:EpochTime":{NOT_BEFORE}}},'
        '"IpAddress":{"AWS:SourceIp":"10.1.0.0/16"}',
    )


# -- bad inputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"expires_at": NOT_BEFORE, "not_before": NOT_BEFORE}, "not_before"),
        ({"expires_at": NOT_BEFORE, "not_before": EXPIRES}, "not_before"),
        ({"expires_at": EXPIRES, "not_before": -1}, "not_before"),
        ({"expires_at": 0}, "expires_at"),
        ({"expires_at": EXPIRES, "client_ip": "not-an-address"}, "client_ip"),
        ({"expires_at": EXPIRES, "client_ip": "203.0.113.7/24"}, "client_ip"),
        ({"expires_at": EXPIRES, "client_ip": "203.0.113.0/33"}, "client_ip"),
        ({"expires_at": EXPIRES, "client_ip": "2001:db8::/32"}, "IPv4"),
    ],
    ids=[
        "empty-window",
        "reversed-window",
        "negative-not-before",
        "no-expiry",
        "not-an-address",
        "host-bits-set",
        "prefix-too-long",
        "ipv6",
    ],
)
def test_bad_times_and_addresses_are_refused(
    signing: Signing, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        custom_policy(RENDITION + "*", **kwargs)
    with pytest.raises(ValueError, match=match):
        signed_cookies(RENDITION + "*", signing.key, **kwargs)
    with pytest.raises(ValueError, match=match):
        signed_url(SEGMENT, signing.key, resource=RENDITION + "*", **kwargs)


@pytest.mark.parametrize(
    "resource",
    [
        "",
        "*",
        "/v/acme/show/720p/*",
        "d111.cloudfront.net/v/acme/*",
        "ftp://d111.cloudfront.net/v/acme/*",
        "http*://d111.cloudfront.net/v/acme/*",
        "https://*.cloudfront.net/v/acme/*",
        "https://*/v/acme/*",
        f"{RENDITION}caf\u00e9/*",
        f"{RENDITION}a b/*",
        f"{RENDITION}*#frag",
        f"{RENDITION}*?Signature=x",
    ],
)
def test_bad_resources_are_refused(signing: Signing, resource: str) -> None:
    with pytest.raises(ValueError, match="resource"):
        custom_policy(resource, expires_at=EXPIRES)
    with pytest.raises(ValueError, match="resource"):
        signed_cookies(resource, signing.key, expires_at=EXPIRES)


@pytest.mark.parametrize(
    "url",
    [
        RENDITION + "*",
        "/v/acme/show/720p/seg-00001.ts",
        f"{SEGMENT}?Policy=x",
        f"{SEGMENT}?a=1&Key-Pair-Id=K1",
        f"{SEGMENT}?Expires=1",
        f"{SEGMENT}?Hash-Algorithm=SHA1",
        f"{SEGMENT}#t=10",
        f"{RENDITION}s\u00e9g.ts",
    ],
)
def test_bad_urls_are_refused(signing: Signing, url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        signed_url(url, signing.key, expires_at=EXPIRES)


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "private_key",
    [
        pytest.param(lambda: dsa.generate_private_key(key_size=2048), id="dsa"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256K1()), id="secp256k1"),
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), id="rsa1024"),
        pytest.param(lambda: rsa.generate_private_key(65537, 3072), id="rsa3072"),
    ],
)
def test_keys_cloudfront_does_not_accept_are_refused(
    private_key: Callable[[], PrivateKeyTypes],
) -> None:
    pem = _pem(private_key(), serialization.PrivateFormat.PKCS8)

    with pytest.raises(ValueError, match="RSA 2048 or ECDSA P-256"):
        CloudFrontKey(KEY_ID, pem)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a key",
        _RSA.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        _RSA.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    ],
    ids=["empty", "garbage", "public-key", "encrypted"],
)
def test_unreadable_pem_is_refused(pem: bytes) -> None:
    with pytest.raises(ValueError, match="unencrypted PEM private key"):
        CloudFrontKey(KEY_ID, pem)


@pytest.mark.parametrize("key_pair_id", ["", "K2JC&Policy=x", "K2JC;", "K2 JC"])
def test_key_pair_ids_that_would_break_a_url_or_cookie_are_refused(key_pair_id: str) -> None:
    with pytest.raises(ValueError, match="key pair id"):
        CloudFrontKey(key_pair_id, _pem(_EC, serialization.PrivateFormat.PKCS8))


def test_the_private_key_stays_out_of_repr(signing: Signing) -> None:
    text = repr(signing.key)

    assert KEY_ID in text
    assert "PRIVATE" not in text
    assert "_signer" not in text
