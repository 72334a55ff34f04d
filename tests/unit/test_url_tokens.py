"""Signed-URL tokens: known answers, round trips, every rule of verify, tampering, interop.

tests/vectors/url_tokens.json pins the bytes (Ed25519 and HMAC are deterministic) and holds
official PASETO v4.public vectors; pyseto, an independent PASETO implementation, is the
oracle in both directions. Time is always passed in; nothing here reads the clock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pyseto
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyseto.utils import pae as pyseto_pae

from reelvault.crypto.signing import ed25519_public_key
from reelvault.distribution import tokens
from reelvault.distribution.tokens import (
    ALG_ED25519,
    ALG_HMAC_SHA256,
    ALGORITHMS,
    MAX_TOKEN_LENGTH,
    Claims,
    Reason,
    SigningKey,
    TokenError,
    TokenExpired,
    VerifyingKey,
    key_id_of,
    sign,
    verify,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "url_tokens.json").read_text()
)

TENANT = "acme"
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
HMAC_SECRET = hashlib.sha256(b"reelvault test hmac secret").digest()
T0 = 1_900_000_000  # a fixed "now" for every test: 2030-03-17T17:46:40Z
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def signing_key(algorithm: str, *, kid: str = "k1", tenant: str = TENANT) -> SigningKey:
    secret = SEED if algorithm == ALG_ED25519 else HMAC_SECRET
    return SigningKey(kid, algorithm, tenant, secret)


def claims(**overrides: Any) -> Claims:
    fields: dict[str, Any] = {
        "resource": f"{TENANT}/show/720p/",
        "expires_at": T0 + 600,
        "not_before": T0 - 10,
        "issued_at": T0 - 10,
    }
    fields.update(overrides)
    return Claims(**fields)


def reason_of(token: str, key: VerifyingKey, **kwargs: Any) -> Reason:
    kwargs.setdefault("now", T0)
    with pytest.raises(TokenError) as caught:
        verify(token, key, **kwargs)
    return caught.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(params=ALGORITHMS)
def algorithm(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def key(algorithm: str) -> SigningKey:
    return signing_key(algorithm)


@pytest.fixture
def vkey(key: SigningKey) -> VerifyingKey:
    return key.verifying_key()


# --- the public surface ------------------------------------------------------------------


def test_all_is_sorted_and_importable():
    assert list(tokens.__all__) == sorted(tokens.__all__)
    for name in tokens.__all__:
        assert hasattr(tokens, name)


def test_algorithms_and_limits():
    assert ALGORITHMS == ("ed25519", "hmac-sha256")
    assert MAX_TOKEN_LENGTH == 4096


# --- round trips -------------------------------------------------------------------------


def test_round_trip(key: SigningKey, vkey: VerifyingKey):
    granted = claims(audience="edge", session_id="s-1", client_ip="203.0.113.0/24")
    token = sign(granted, key)
    assert key_id_of(token) == "k1"
    assert verify(token, vkey, now=T0, audience="edge", client_ip="203.0.113.9") == granted


def test_headers(key: SigningKey):
    header = {ALG_ED25519: "v4.public.", ALG_HMAC_SHA256: "rv1.hs256."}[key.algorithm]
    token = sign(claims(), key)
    assert token.startswith(header)
    assert token.count(".") == 3
    assert unb64(token.split(".")[3]) == b'{"kid":"k1"}'


def test_payload_is_compact_sorted_utf8_json(key: SigningKey):
    token = sign(claims(resource=f"{TENANT}/séries/夜/a.ts", session_id="s"), key)
    tag_length = 64 if key.algorithm == ALG_ED25519 else 32
    payload = unb64(token.split(".")[2])[:-tag_length]
    assert (
        payload
        == (
            '{"aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
            f'"nbf":"2030-03-17T17:46:30Z","res":"{TENANT}/séries/夜/a.ts","sid":"s"}}'
        ).encode()
    )


@settings(max_examples=60, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    segments=st.lists(
        st.text(
            st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\\%"),
            min_size=1,
            max_size=12,
        ).filter(lambda s: s not in (".", "..")),
        min_size=1,
        max_size=6,
    ),
    prefix=st.booleans(),
    start=st.integers(0, 253_402_300_798),
    data=st.data(),
)
def test_round_trip_of_arbitrary_valid_claims(algorithm, segments, prefix, start, data):
    resource = TENANT + "/" + "/".join(segments) + ("/" if prefix else "")
    expires = data.draw(st.integers(start + 1, 253_402_300_799))
    granted = Claims(
        resource=resource,
        expires_at=expires,
        not_before=start,
        issued_at=data.draw(st.integers(0, 253_402_300_799)),
        audience=data.draw(st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=8)),
        session_id=data.draw(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=128)
        ),
    )
    key = signing_key(algorithm)
    token = sign(granted, key)
    verified = verify(token, key.verifying_key(), now=start, leeway=1e12, audience=granted.audience)
    assert verified == granted


# --- the rules of verify ------------------------------------------------------------------


def test_expiry_boundary(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(expires_at=T0 + 100), key)
    assert verify(token, vkey, now=T0 + 159.999, leeway=60)
    with pytest.raises(TokenExpired) as caught:
        verify(token, vkey, now=T0 + 160, leeway=60)
    assert caught.value.reason is Reason.EXPIRED
    assert str(caught.value) == "expired"
    assert isinstance(caught.value, TokenError)
    assert verify(token, vkey, now=T0 + 99.5, leeway=0)
    with pytest.raises(TokenExpired):
        verify(token, vkey, now=T0 + 100, leeway=0)


def test_not_before_boundary(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(not_before=T0 + 100, issued_at=T0, expires_at=T0 + 1000), key)
    assert verify(token, vkey, now=T0 + 40, leeway=60)
    assert reason_of(token, vkey, now=T0 + 39.999, leeway=60) is Reason.NOT_YET_VALID
    assert verify(token, vkey, now=T0 + 100, leeway=0)
    assert reason_of(token, vkey, now=T0 + 99.999, leeway=0) is Reason.NOT_YET_VALID


def test_issued_at_boundary(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(not_before=T0, issued_at=T0 + 100, expires_at=T0 + 1000), key)
    assert verify(token, vkey, now=T0 + 40, leeway=60)
    assert reason_of(token, vkey, now=T0 + 39.999, leeway=60) is Reason.ISSUED_IN_FUTURE


def test_expired_is_told_only_for_a_token_otherwise_good_here(key: SigningKey):
    """410 invites the player to fetch a fresh URL: never say it for a token that would be
    refused anyway (another audience, address, tenant or a retired key)."""
    token = sign(claims(audience="edge", client_ip="203.0.113.0/24", expires_at=T0), key)
    late = T0 + 3600
    good = {"audience": "edge", "client_ip": "203.0.113.1", "now": late}
    with pytest.raises(TokenExpired):
        verify(token, key.verifying_key(), **good)
    assert reason_of(token, key.verifying_key(), **{**good, "audience": "x"}) is Reason.AUDIENCE
    assert reason_of(token, key.verifying_key(), **{**good, "client_ip": "1.1.1.1"}) is (
        Reason.CLIENT_IP
    )
    retired = key.verifying_key(not_after_issued=T0 - 11)
    assert reason_of(token, retired, **good) is Reason.KEY_RETIRED
    other_tenant = VerifyingKey(
        "k1", key.algorithm, "globex", key.verifying_key().material, not_after_issued=None
    )
    assert reason_of(token, other_tenant, **good) is Reason.WRONG_TENANT


def test_wrong_tenant(key: SigningKey):
    token = sign(claims(), key)
    same_key_other_tenant = VerifyingKey(
        "k1", key.algorithm, "globex", key.verifying_key().material
    )
    assert reason_of(token, same_key_other_tenant) is Reason.WRONG_TENANT


def test_sign_refuses_another_tenants_resource(key: SigningKey):
    with pytest.raises(ValueError, match="tenant"):
        sign(claims(resource="globex/show/a.ts"), key)


def test_retired_key_accepts_only_tokens_issued_before_it_retired(key: SigningKey):
    token = sign(claims(issued_at=T0 - 10), key)
    assert verify(token, key.verifying_key(not_after_issued=T0 - 10), now=T0)
    retired = key.verifying_key(not_after_issued=T0 - 11)
    assert reason_of(token, retired) is Reason.KEY_RETIRED


def test_audience(key: SigningKey, vkey: VerifyingKey):
    anyone = sign(claims(), key)
    assert verify(anyone, vkey, now=T0)
    assert verify(anyone, vkey, now=T0, audience="edge")
    bound = sign(claims(audience="edge"), key)
    assert verify(bound, vkey, now=T0, audience="edge")
    assert reason_of(bound, vkey) is Reason.AUDIENCE
    assert reason_of(bound, vkey, audience="origin") is Reason.AUDIENCE
    assert reason_of(bound, vkey, audience="") is Reason.AUDIENCE


@pytest.mark.parametrize(
    ("network", "address", "accepted"),
    [
        ("203.0.113.0/24", "203.0.113.0", True),
        ("203.0.113.0/24", "203.0.113.255", True),
        ("203.0.113.0/24", "203.0.114.0", False),
        ("203.0.113.0/24", "::ffff:203.0.113.7", True),  # how a dual-stack socket reports it
        ("203.0.113.7/32", "203.0.113.7", True),
        ("203.0.113.7/32", "203.0.113.8", False),
        ("2001:db8::/48", "2001:db8:0:ffff::1", True),
        ("2001:db8::/48", "2001:db8:1::1", False),
        ("2001:db8::/48", "203.0.113.7", False),
        ("203.0.113.0/24", "not an address", False),
        ("203.0.113.0/24", "", False),
        ("203.0.113.0/24", None, False),
    ],
)
def test_client_ip(key: SigningKey, vkey: VerifyingKey, network, address, accepted):
    token = sign(claims(client_ip=network), key)
    if accepted:
        assert verify(token, vkey, now=T0, client_ip=address).client_ip == network
    else:
        assert reason_of(token, vkey, client_ip=address) is Reason.CLIENT_IP


def test_no_client_ip_claim_accepts_any_address(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(), key)
    for address in (None, "203.0.113.1", "2001:db8::1", "garbage"):
        assert verify(token, vkey, now=T0, client_ip=address)


@pytest.mark.parametrize(("now", "leeway"), [(float("nan"), 60.0), (T0, -1.0), (T0, float("inf"))])
def test_verify_refuses_nonsense_time_arguments(key: SigningKey, vkey: VerifyingKey, now, leeway):
    with pytest.raises(ValueError):
        verify(sign(claims(), key), vkey, now=now, leeway=leeway)


# --- the key, not the token, chooses the algorithm -----------------------------------------


def test_ed25519_token_against_hmac_key_whose_secret_is_the_public_key():
    ed = signing_key(ALG_ED25519)
    token = sign(claims(), ed)
    public = ed.verifying_key().material
    confused = VerifyingKey("k1", ALG_HMAC_SHA256, TENANT, public)
    assert reason_of(token, confused) is Reason.WRONG_KEY


def test_hmac_token_made_with_the_public_key_against_the_ed25519_key():
    """The classic JWT attack: sign HMAC with the verifier's public key as the secret."""
    ed = signing_key(ALG_ED25519)
    public = ed.verifying_key().material
    forged = sign(claims(), SigningKey("k1", ALG_HMAC_SHA256, TENANT, public))
    assert reason_of(forged, ed.verifying_key()) is Reason.WRONG_KEY
    relabelled = "v4.public." + forged.removeprefix("rv1.hs256.")
    assert reason_of(relabelled, ed.verifying_key()) in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


def test_another_key_with_the_same_id(key: SigningKey):
    token = sign(claims(), key)
    other_secret = bytes(32) if key.algorithm == ALG_HMAC_SHA256 else ed25519_public_key(bytes(32))
    impostor = VerifyingKey("k1", key.algorithm, TENANT, other_secret)
    assert reason_of(token, impostor) is Reason.BAD_SIGNATURE


def test_key_id_must_match(key: SigningKey):
    token = sign(claims(), key)
    renamed = signing_key(key.algorithm, kid="k2").verifying_key()
    assert reason_of(token, renamed) is Reason.WRONG_KEY


def test_signature_is_checked_before_the_claims_are_parsed(key: SigningKey, vkey: VerifyingKey):
    garbage = tokens._seal(key, b"\xff not json {", b'{"kid":"k1"}')
    assert reason_of(garbage, vkey) is Reason.MALFORMED
    head, version, body, footer = garbage.split(".")
    raw = unb64(body)
    broken = f"{head}.{version}.{b64(raw[:-1] + bytes([raw[-1] ^ 0x80]))}.{footer}"
    assert reason_of(broken, vkey) is Reason.BAD_SIGNATURE


# --- tampering ---------------------------------------------------------------------------


def test_every_character_replaced_is_refused(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(audience="edge", client_ip="203.0.113.0/24"), key)
    for i, char in enumerate(token):
        if char == ".":
            replacements = "A_"
        else:
            replacements = B64_ALPHABET[(B64_ALPHABET.index(char) + 1) % 64] + "."
        for replacement in replacements:
            tampered = token[:i] + replacement + token[i + 1 :]
            with pytest.raises(TokenError):
                verify(tampered, vkey, now=T0, audience="edge", client_ip="203.0.113.1")


def test_every_bit_of_payload_tag_and_footer_flipped_is_refused(
    key: SigningKey, vkey: VerifyingKey
):
    token = sign(claims(audience="edge"), key)
    head, version, body, footer = token.split(".")
    for part in (2, 3):
        raw = unb64(body if part == 2 else footer)
        for i in range(len(raw)):
            for bit in range(8):
                flipped = b64(raw[:i] + bytes([raw[i] ^ (1 << bit)]) + raw[i + 1 :])
                parts = [head, version, body, footer]
                parts[part] = flipped
                with pytest.raises(TokenError):
                    verify(".".join(parts), vkey, now=T0, audience="edge")


def test_every_truncation_is_refused(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(), key)
    for length in range(len(token)):
        with pytest.raises(TokenError):
            verify(token[:length], vkey, now=T0)


def test_extensions_are_refused(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(), key)
    for suffix in ("A", "AA", ".", ".e30", "=", "\n", " "):
        assert reason_of(token + suffix, vkey) is Reason.MALFORMED
    head, version, body, footer = token.split(".")
    assert reason_of(f"{head}.{version}.{body}A.{footer}", vkey) in (
        Reason.MALFORMED,
        Reason.BAD_SIGNATURE,
    )


def test_swapped_parts_are_refused(key: SigningKey, vkey: VerifyingKey):
    head, version, body, footer = sign(claims(), key).split(".")
    for parts in ([head, version, footer, body], [version, head, body, footer]):
        with pytest.raises(TokenError):
            verify(".".join(parts), vkey, now=T0)


def test_non_canonical_base64url(key: SigningKey, vkey: VerifyingKey):
    """Unused trailing bits set decode to the same bytes in lenient decoders: refused."""
    for aud in ("", "x", "xy"):
        token = sign(claims(audience=aud), key)
        head, version, body, footer = token.split(".")
        if len(body) % 4:
            break
    unused = {2: 0b1111, 3: 0b11}[len(body) % 4]
    last = B64_ALPHABET.index(body[-1])
    assert last & unused == 0
    twin = body[:-1] + B64_ALPHABET[last | 1]
    assert unb64(twin) == unb64(body)  # the same bytes: only the spelling differs
    assert reason_of(f"{head}.{version}.{twin}.{footer}", vkey, audience=aud) is (Reason.MALFORMED)
    padded = body + "=" * (-len(body) % 4)
    assert reason_of(f"{head}.{version}.{padded}.{footer}", vkey) is Reason.MALFORMED


def test_standard_base64_alphabet_is_refused(key: SigningKey, vkey: VerifyingKey):
    head, version, body, footer = sign(claims(), key).split(".")
    swapped = body.translate(str.maketrans("-_", "+/"))
    if swapped != body:
        assert reason_of(f"{head}.{version}.{swapped}.{footer}", vkey) is Reason.MALFORMED


@pytest.mark.parametrize(
    "payload",
    [
        '{"aud":"","aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":""}',
        '{"aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":"","res":"acme/b.ts"}',
        '{"aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":"","jti":"x"}',
        '{"exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":""}',
        '{"aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":1}',
        '{"aud":false,"exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":""}',
        '{"aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
        '"nbf":"2030-03-17T17:46:30Z","res":["acme/a.ts"],"sid":""}',
        "[" * 2000 + "]" * 2000,
        '{"a":' * 900 + "1" + "}" * 900,
        "",
        "null",
        '"acme/a.ts"',
    ],
    ids=lambda p: p[:24],
)
def test_claims_are_parsed_strictly(key: SigningKey, vkey: VerifyingKey, payload: str):
    token = tokens._seal(key, payload.encode(), b'{"kid":"k1"}')
    assert reason_of(token, vkey) is Reason.MALFORMED


def test_payload_that_is_not_utf8_is_refused(key: SigningKey, vkey: VerifyingKey):
    good = '{"aud":"","exp":"2030-03-17T17:56:40Z","iat":"2030-03-17T17:46:30Z","ip":"",'
    good += '"nbf":"2030-03-17T17:46:30Z","res":"acme/a.ts","sid":""}'
    assert verify(tokens._seal(key, good.encode(), b'{"kid":"k1"}'), vkey, now=T0)
    for encoded in (good.encode("utf-16"), good.encode("utf-32"), b"\xef\xbb\xbf" + good.encode()):
        assert reason_of(tokens._seal(key, encoded, b'{"kid":"k1"}'), vkey) is Reason.MALFORMED


@pytest.mark.parametrize(
    "footer",
    [b"", b"{}", b'{"kid": "k1"}', b'{"kid":"k1","wpk":"x"}', b'{"kid":"k1"}\n', b'{"kid":"k/1"}'],
)
def test_footer_must_be_exactly_the_kid(key: SigningKey, vkey: VerifyingKey, footer: bytes):
    token = tokens._seal(key, b"{}", footer)
    with pytest.raises(TokenError) as caught:
        key_id_of(token)
    assert caught.value.reason is Reason.MALFORMED
    assert reason_of(token, vkey) is Reason.MALFORMED


def test_oversize_token_is_refused_before_parsing(vkey: VerifyingKey):
    header = "v4.public." if vkey.algorithm == ALG_ED25519 else "rv1.hs256."
    huge = header + "A" * MAX_TOKEN_LENGTH + ".eyJraWQiOiJrMSJ9"
    assert reason_of(huge, vkey) is Reason.MALFORMED
    with pytest.raises(TokenError):
        key_id_of("x" * (MAX_TOKEN_LENGTH + 1))


def test_a_token_at_the_length_limit_verifies_and_sign_will_not_exceed_it(key: SigningKey):
    # '"' is escaped as '\"', so a resource of quotes nearly doubles in the payload.
    fits = claims(resource=TENANT + "/" + "a" * 1095)
    assert len(sign(fits, key)) <= MAX_TOKEN_LENGTH
    too_big = claims(resource=TENANT + "/" + '"' * 1095, audience='"' * 256, session_id='"' * 128)
    with pytest.raises(ValueError, match=str(MAX_TOKEN_LENGTH)):
        sign(too_big, key)


@pytest.mark.parametrize(
    "token",
    [
        "v4.local.AAAA.eyJraWQiOiJrMSJ9",
        "v4.local.AAAA",
        "v3.public.AAAA.eyJraWQiOiJrMSJ9",
        "v2.public.AAAA.eyJraWQiOiJrMSJ9",
        "v1.local.AAAA.eyJraWQiOiJrMSJ9",
        "v5.public.AAAA.eyJraWQiOiJrMSJ9",
        "V4.public.AAAA.eyJraWQiOiJrMSJ9",
        "rv1.hs512.AAAA.eyJraWQiOiJrMSJ9",
        "rv2.hs256.AAAA.eyJraWQiOiJrMSJ9",
        "eyJhbGciOiJIUzI1NiJ9.e30.AAAA",  # a JWT
    ],
)
def test_unknown_versions(vkey: VerifyingKey, token: str):
    with pytest.raises(TokenError) as caught:
        key_id_of(token)
    assert caught.value.reason is Reason.UNSUPPORTED_VERSION
    assert reason_of(token, vkey) is Reason.UNSUPPORTED_VERSION


@pytest.mark.parametrize("token", ["", ".", "v4", "v4.public", "v4.public.", "a.b.c.d.e"])
def test_structure(token: str):
    with pytest.raises(TokenError):
        key_id_of(token)


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.text(alphabet=B64_ALPHABET + ".=+/v4publicrv1hs256", max_size=300),
        st.builds(
            lambda head, body, footer: f"{head}{body}.{footer}",
            st.sampled_from(["v4.public.", "rv1.hs256.", "v4.local.", ""]),
            st.binary(max_size=200).map(b64),
            st.sampled_from(["eyJraWQiOiJrMSJ9", "e30", ""]),
        ),
    ),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_arbitrary_text_only_ever_raises_token_error(text: str, algorithm: str):
    vkey = signing_key(algorithm).verifying_key()
    with pytest.raises(TokenError):
        verify(text, vkey, now=T0, audience="edge", client_ip="203.0.113.1")
    with contextlib.suppress(TokenError):
        assert key_id_of(text) == "k1"


@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    position=st.integers(0, 10_000),
    cut=st.integers(0, 8),
    insert=st.text(max_size=4),
)
def test_arbitrary_edits_of_a_token_never_yield_claims(algorithm, position, cut, insert):
    key = signing_key(algorithm)
    token = sign(claims(), key)
    position %= len(token) + 1
    edited = token[:position] + insert + token[position + cut :]
    if edited == token:
        return
    with pytest.raises(TokenError):
        verify(edited, key.verifying_key(), now=T0)


# --- errors never carry secrets -----------------------------------------------------------


def test_errors_say_only_the_reason(key: SigningKey, vkey: VerifyingKey):
    token = sign(claims(audience="edge", session_id="secret-session"), key)
    head, version, body, footer = token.split(".")
    raw = unb64(body)
    cases = [
        token[:-3],
        f"{head}.{version}.{b64(raw[:-1] + bytes([raw[-1] ^ 1]))}.{footer}",
        token,  # wrong audience
        tokens._seal(key, b'{"res": "secret-session" ', b'{"kid":"k1"}'),  # JSON error inside
    ]
    for case in cases:
        with pytest.raises(TokenError) as caught:
            verify(case, vkey, now=T0, audience="other")
        error = caught.value
        assert str(error) in {r.value for r in Reason}
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__  # no chained details
        for secret in (body[:40], "secret-session", key.secret.hex(), vkey.material.hex()):
            assert secret not in str(error) and secret not in repr(error)


def test_reasons_are_fixed_words():
    assert {r.value for r in Reason} >= {
        "malformed",
        "unsupported version",
        "unknown key",
        "bad signature",
        "wrong tenant",
        "audience",
        "client ip",
        "not yet valid",
        "issued after key retired",
        "expired",
    }
    assert str(TokenError(Reason.AUDIENCE)) == "audience"


def test_keys_do_not_show_their_secrets(key: SigningKey, vkey: VerifyingKey):
    assert key.secret.hex() not in repr(key) and repr(key.secret) not in repr(key)
    if key.algorithm == ALG_HMAC_SHA256:
        assert repr(vkey.material) not in repr(vkey)


# --- claims and keys validate themselves ----------------------------------------------------


@pytest.mark.parametrize(
    "resource",
    [
        "",
        "acme",
        "acme/",
        "/acme/a.ts",
        "acme//a.ts",
        "acme/show//",
        "acme/./a.ts",
        "acme/../globex/a.ts",
        "acme/show/..",
        "acme/a\\b.ts",
        "acme/a%2Fb.ts",
        "acme/a\x00.ts",
        "acme/a\n.ts",
        "acme/a\x7f.ts",
        "acme/a\x85.ts",
        "acme/a\ud800.ts",
        "acme/" + "a" * 1096,
        "acme/" + "é" * 548,
    ],
)
def test_invalid_resources(resource: str):
    with pytest.raises(ValueError, match="resource"):
        claims(resource=resource)


def test_resource_limit_is_in_utf8_bytes():
    assert claims(resource="acme/" + "a" * 1095)
    assert claims(resource="acme/" + "é" * 547 + "a")


@pytest.mark.parametrize(
    "overrides",
    [
        {"expires_at": T0, "not_before": T0},
        {"expires_at": T0 - 1, "not_before": T0},
        {"expires_at": True},
        {"issued_at": 1.5},
        {"not_before": -1},
        {"expires_at": 253_402_300_800},
        {"audience": "a\x00"},
        {"audience": "a" * 257},
        {"session_id": "has space"},
        {"session_id": "é"},
        {"session_id": "s" * 129},
        {"client_ip": "203.0.113.7/24"},  # host bits
        {"client_ip": "203.0.113.7"},  # no length
        {"client_ip": "2001:DB8::/48"},  # not canonical
        {"client_ip": "203.0.113.0/255.255.255.0"},
        {"client_ip": "010.0.0.0/8"},
        {"client_ip": "any"},
    ],
    ids=repr,
)
def test_invalid_claims(overrides: dict[str, Any]):
    with pytest.raises(ValueError):
        claims(**overrides)


def test_claim_limits_are_inclusive():
    assert claims(audience="é" * 128, session_id="~" * 128)
    assert claims(expires_at=253_402_300_799, not_before=0, issued_at=0)


def test_time_is_written_as_rfc3339_utc():
    assert tokens._format_time(0) == "1970-01-01T00:00:00Z"
    assert tokens._format_time(253_402_300_799) == "9999-12-31T23:59:59Z"
    assert tokens._parse_time("2030-03-17T17:46:40Z") == T0


@given(st.integers(0, 253_402_300_799))
def test_time_round_trip(seconds: int):
    assert tokens._parse_time(tokens._format_time(seconds)) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "2030-03-17T17:46:40z",
        "2030-03-17t17:46:40Z",
        "2030-03-17 17:46:40Z",
        "2030-03-17T17:46:40+00:00",
        "2030-03-17T17:46:40.0Z",
        "2030-03-17T17:46:60Z",
        "2030-13-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "\uff12\uff10\uff13\uff10-03-17T17:46:40Z",  # fullwidth digits
        "+2030-03-17T17:46:40Z",
    ],
)
def test_only_one_time_form_is_read(text: str):
    with pytest.raises(ValueError):
        tokens._parse_time(text)


@pytest.mark.parametrize(
    "fields",
    [
        {"kid": ""},
        {"kid": "k" * 65},
        {"kid": "k.1"},
        {"kid": "k/1"},
        {"algorithm": "HS256"},
        {"algorithm": "none"},
        {"tenant_id": ""},
        {"tenant_id": "a/b"},
        {"tenant_id": ".."},
        {"secret": b"short"},
        {"secret": bytearray(32)},
        {"secret": bytes(33)},
    ],
    ids=repr,
)
def test_invalid_keys(fields: dict[str, Any]):
    base: dict[str, Any] = {
        "kid": "k1",
        "algorithm": ALG_HMAC_SHA256,
        "tenant_id": TENANT,
        "secret": bytes(32),
    }
    base.update(fields)
    with pytest.raises(ValueError):
        SigningKey(**base)
    material = base.pop("secret")
    with pytest.raises(ValueError):
        VerifyingKey(**base, material=material)


def test_not_after_issued_must_be_seconds():
    with pytest.raises(ValueError):
        VerifyingKey("k1", ALG_HMAC_SHA256, TENANT, bytes(32), not_after_issued=True)


def test_verifying_key_of_a_signing_key():
    ed = signing_key(ALG_ED25519).verifying_key(not_after_issued=T0)
    assert ed.material == ed25519_public_key(SEED)
    assert (ed.kid, ed.algorithm, ed.tenant_id, ed.not_after_issued) == (
        "k1",
        ALG_ED25519,
        TENANT,
        T0,
    )
    assert signing_key(ALG_HMAC_SHA256).verifying_key().material == HMAC_SECRET


def test_pyseto_keys_are_built_once_per_key(monkeypatch: pytest.MonkeyPatch):
    key = signing_key(ALG_ED25519)
    vkey = key.verifying_key()
    built: list[tuple[object, ...]] = []
    real = pyseto.Key.from_asymmetric_key_params

    def counting(*args: Any, **kwargs: Any) -> pyseto.KeyInterface:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pyseto.Key, "from_asymmetric_key_params", counting)
    for _ in range(5):
        verify(sign(claims(), key), vkey, now=T0)
    assert built == []
    signing_key(ALG_ED25519)  # the count does see a key being built
    assert len(built) == 1


# --- covers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "requested", "covered"),
    [
        ("acme/show/720p/", "acme/show/720p/seg1.ts", True),
        ("acme/show/720p/", "acme/show/720p/sub/seg1.ts", True),
        ("acme/show/720p/", "acme/show/720p-x/seg1.ts", False),
        ("acme/show/720p/", "acme/show/720p", False),
        ("acme/show/720p/", "acme/show/720p/", False),
        ("acme/show/720p/", "acme/show/720p/../1080p/seg1.ts", False),
        ("acme/show/720p/", "acme/show/720p//seg1.ts", False),
        ("acme/show/720p/", "acme/show/720p/./seg1.ts", False),
        ("acme/show/720p/", "acme/show/720p/%2e%2e/x.ts", False),
        ("acme/show/720p/", "globex/show/720p/seg1.ts", False),
        ("acme/show/a.mp4", "acme/show/a.mp4", True),
        ("acme/show/a.mp4", "acme/show/a.mp4/x", False),
        ("acme/show/a.mp4", "acme/show/a.mp", False),
        ("acme/show/a.mp4", "acme/show/A.mp4", False),
    ],
)
def test_covers(granted: str, requested: str, covered: bool):
    assert claims(resource=granted).covers(requested) is covered


def test_tenant_and_prefix():
    assert claims(resource="acme/show/720p/").tenant_id == "acme"
    assert claims(resource="acme/show/720p/").is_prefix
    assert not claims(resource="acme/show/a.mp4").is_prefix


# --- PAE and the HMAC profile, against independent computations ----------------------------


def test_pae_known_answers_from_the_paseto_spec():
    assert tokens._pae([]) == bytes(8)
    assert tokens._pae([b""]) == b"\x01" + bytes(7) + bytes(8)
    assert tokens._pae([b"test"]) == b"\x01" + bytes(7) + b"\x04" + bytes(7) + b"test"
    pieces = [b"rv1.hs256.", b"payload", b'{"kid":"k1"}', b""]
    assert tokens._pae(pieces) == pyseto_pae(pieces)


def test_hmac_profile_is_hmac_sha256_over_pae():
    key = signing_key(ALG_HMAC_SHA256)
    _, _, body, footer = sign(claims(), key).split(".")
    raw, footer_bytes = unb64(body), unb64(footer)
    payload, tag = raw[:-32], raw[-32:]
    expected = hmac.new(
        HMAC_SECRET, pyseto_pae([b"rv1.hs256.", payload, footer_bytes, b""]), hashlib.sha256
    ).digest()
    assert tag == expected


# --- interoperability with PASETO (pyseto as the independent implementation) ---------------


def test_any_paseto_library_verifies_our_ed25519_tokens():
    key = signing_key(ALG_ED25519)
    public = pyseto.Key.from_paserk("k4.public." + b64(key.verifying_key().material))
    # pyseto reads its own clock: a validity from 1970 to 9999 holds whenever this runs.
    granted = claims(expires_at=253_402_300_000, not_before=0, issued_at=0, audience="edge")
    token = sign(granted, key)
    decoded = pyseto.decode(public, token, deserializer=json, aud="edge")
    assert decoded.payload["res"] == granted.resource
    assert decoded.footer == {"kid": "k1"}


def test_paseto_libraries_enforce_our_exp_claim():
    """exp is a registered PASETO DateTime: a standard verifier refuses an expired token
    (pyseto reads its own clock; year 2000 is in its past on any machine running this)."""
    key = signing_key(ALG_ED25519)
    public = pyseto.Key.from_paserk("k4.public." + b64(key.verifying_key().material))
    expired = sign(claims(expires_at=946_684_800, not_before=0, issued_at=0), key)
    assert pyseto.decode(public, expired).payload  # the signature itself is fine
    with pytest.raises(pyseto.VerifyError):
        pyseto.decode(public, expired, deserializer=json)


def test_we_verify_tokens_made_by_another_paseto_library():
    secret = pyseto.Key.from_paserk("k4.secret." + b64(SEED + ed25519_public_key(SEED)))
    members = {
        "res": f"{TENANT}/show/720p/",
        "exp": "2030-03-17T17:56:40Z",
        "nbf": "2030-03-17T17:46:30Z",
        "iat": "2030-03-17T17:46:30Z",
        "aud": "",
        "sid": "s-1",
        "ip": "",
    }
    token = pyseto.encode(secret, members, footer=b'{"kid":"k1"}').decode()
    assert b" " in unb64(token.split(".")[2])  # json.dumps's spacing: not our spelling
    vkey = signing_key(ALG_ED25519).verifying_key()
    assert key_id_of(token) == "k1"
    assert verify(token, vkey, now=T0) == claims(session_id="s-1")


# --- known answers ------------------------------------------------------------------------


def vector_key(algorithm: str) -> SigningKey:
    spec = VECTORS["keys"][algorithm]
    secret = spec["seed"] if algorithm == ALG_ED25519 else spec["secret"]
    return SigningKey(spec["kid"], algorithm, spec["tenant_id"], bytes.fromhex(secret))


def test_vector_keys():
    spec = VECTORS["keys"][ALG_ED25519]
    assert vector_key(ALG_ED25519).verifying_key().material.hex() == spec["public_key"]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_known_answer(vector: dict[str, Any]):
    key = vector_key(vector["algorithm"])
    granted = Claims(**vector["claims"])
    assert sign(granted, key) == vector["token"]
    verified = verify(
        vector["token"],
        key.verifying_key(),
        now=vector["now"],
        audience=vector.get("audience"),
        client_ip=vector.get("client_ip"),
    )
    assert verified == granted
    assert verified.covers(vector["covers"])


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_known_refusal(vector: dict[str, Any]):
    key = vector_key(vector["algorithm"])
    if "payload" in vector:
        sealed = tokens._seal(key, vector["payload"].encode(), vector["footer"].encode())
        assert sealed == vector["token"]
    if vector["reason"] is None:
        assert verify(vector["token"], key.verifying_key(), now=vector["now"])
    else:
        assert (
            reason_of(vector["token"], key.verifying_key(), now=vector["now"]) == (vector["reason"])
        )


@pytest.mark.parametrize("vector", VECTORS["paseto"]["vectors"], ids=lambda v: v["name"])
def test_official_paseto_v4_public_vectors(vector: dict[str, Any]):
    """Our Ed25519 path writes PASETO's own test vectors byte for byte; their payloads are
    not reelvault claims, so verify refuses them, but only after the signature."""
    seed = bytes.fromhex(VECTORS["paseto"]["seed"])
    assert ed25519_public_key(seed).hex() == VECTORS["paseto"]["public_key"]
    if vector["footer"] and not vector["implicit_assertion"]:
        kid = json.loads(vector["footer"])["kid"]
        key = SigningKey(kid, ALG_ED25519, TENANT, seed)
        sealed = tokens._seal(key, vector["payload"].encode(), vector["footer"].encode())
        assert sealed == vector["token"]
    if vector["footer"]:
        assert key_id_of(vector["token"]) == json.loads(vector["footer"])["kid"]
        kid = key_id_of(vector["token"])
    else:
        kid = "unused"
    vkey = SigningKey(kid, ALG_ED25519, TENANT, seed).verifying_key()
    assert reason_of(vector["token"], vkey, now=T0) == vector["reason"]


# --- VerifiedTokens: a player's token checked once per key ---------------------------------


def test_a_remembered_token_is_still_checked_against_the_clock(
    key: SigningKey, vkey: VerifyingKey
) -> None:
    verified = tokens.VerifiedTokens()
    token = sign(claims(), key)
    assert verified.verify(token, vkey, now=T0) == claims()
    assert verified.verify(token, vkey, now=T0 + 300) == claims()  # remembered
    with pytest.raises(tokens.TokenExpired):
        verified.verify(token, vkey, now=T0 + 600 + 60)
    with pytest.raises(TokenError) as early:
        verified.verify(token, vkey, now=T0 - 10 - 61)
    assert early.value.reason is Reason.ISSUED_IN_FUTURE  # iat = nbf here: the first check


def test_a_changed_key_checks_a_remembered_token_afresh(key: SigningKey) -> None:
    verified = tokens.VerifiedTokens()
    token = sign(claims(issued_at=T0 - 5, not_before=T0 - 5), key)
    verified.verify(token, key.verifying_key(), now=T0)
    # the key went verify-only before the token was issued: the same token is refused now
    retired = key.verifying_key(not_after_issued=T0 - 6)
    with pytest.raises(TokenError) as refused:
        verified.verify(token, retired, now=T0)
    assert refused.value.reason is Reason.KEY_RETIRED


def test_the_audience_and_address_are_part_of_what_is_remembered(
    key: SigningKey, vkey: VerifyingKey
) -> None:
    verified = tokens.VerifiedTokens()
    token = sign(claims(audience="cdn-a", client_ip="203.0.113.0/24"), key)
    verified.verify(token, vkey, now=T0, audience="cdn-a", client_ip="203.0.113.9")
    with pytest.raises(TokenError) as other_audience:
        verified.verify(token, vkey, now=T0, audience="cdn-b", client_ip="203.0.113.9")
    assert other_audience.value.reason is Reason.AUDIENCE
    with pytest.raises(TokenError) as other_address:
        verified.verify(token, vkey, now=T0, audience="cdn-a", client_ip="198.51.100.1")
    assert other_address.value.reason is Reason.CLIENT_IP


def test_refused_tokens_are_never_remembered_and_memory_is_bounded(
    key: SigningKey, vkey: VerifyingKey
) -> None:
    verified = tokens.VerifiedTokens(size=3)
    good = sign(claims(), key)
    bad = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    for _ in range(3):
        with pytest.raises(TokenError):
            verified.verify(bad, vkey, now=T0)
    for n in range(10):
        verified.verify(sign(claims(session_id=f"s{n}"), key), vkey, now=T0)
    assert len(verified._passed) == 3
