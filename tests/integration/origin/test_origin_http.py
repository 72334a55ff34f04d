"""The HTTP origin as a CDN and a player see it (issue #12, "Deliver 3 and 7"): byte ranges
checked against Python slicing, the headers caches and players rely on, every refusal with
its documented status and its audit event, and failing closed when the audit log is down.

The origin runs on uvicorn over a real SeaweedFS; requests go through ``http.client``, which
sends the target exactly as written (no normalisation of ``..`` or escapes). Time moves only
through the fake clock.
"""

from __future__ import annotations

import http.client
import ipaddress
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from origin_harness import Answer, OriginThread, target_of, upload

from reelvault.app import Vault
from reelvault.assets import AssetInfo
from reelvault.audit import MemoryAuditSink
from reelvault.audit.events import PLATFORM_LOG, AuditEvent, Outcome, render_json
from reelvault.clock import FakeClock
from reelvault.distribution.tokens import Claims, sign
from reelvault.origin.app import OriginConfig

pytestmark = pytest.mark.db

F = 64 * 1024  # the frame length of a stored asset
SIZE = 3 * F + 1234  # three whole frames and a partial one
MAX_TTL = 86400  # the vault fixture's url max_ttl
LEEWAY = 60
# verify_until of a key taken out of signing: 2 x max_ttl + leeway after the rotation
OVERLAP = 2 * MAX_TTL + LEEWAY
# headers that differ between two answers to the same request
PER_ANSWER = frozenset({"date", "x-request-id"})


def payload(size: int, seed: int = 12) -> bytes:
    return random.Random(seed).randbytes(size)


# -- fixtures -------------------------------------------------------------------------------


class _SettlingOrigin(OriginThread):
    """The harness's origin, stopped as soon as it answers 500: the server thread then logs
    the traceback, and CPython 3.11's AST constructor is not thread-safe (gh-106905), so
    pytest parsing source to report the failure at the same moment may die with an
    INTERNALERROR ("AST constructor recursion depth mismatch") that ends the whole run."""

    def fetch(
        self, target: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> Answer:
        answer = super().fetch(target, method=method, headers=headers)
        if answer.status == 500:
            self.close()  # joins the server thread: its logging is done
        return answer


@pytest.fixture
def origin(
    vault: Vault, origin_config: OriginConfig, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OriginThread]:
    # Production runs uvicorn with proxy_headers=False (origin/server.py), so only
    # OriginConfig.trusted_proxies decides who the client is; the harness leaves uvicorn's
    # default, which believes X-Forwarded-For from 127.0.0.1. Trust nobody at that layer.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")
    thread = _SettlingOrigin(vault, origin_config)
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def episode(vault: Vault, tenant: str) -> tuple[AssetInfo, bytes]:
    """``show/ep1.mp4``: a little over two frames."""
    data = payload(2 * F + 99)
    return upload(vault, tenant, "show/ep1.mp4", data, content_type="video/mp4"), data


@pytest.fixture
def other_tenant(vault: Vault) -> str:
    return vault.tenant_keys.create_tenant("another studio").id


# -- helpers --------------------------------------------------------------------------------


def url_for(vault: Vault, tenant: str, info: AssetInfo, **options: object) -> str:
    """The request target of a fresh path token for one asset (10 minutes by default)."""
    options.setdefault("ttl", 600)
    return target_of(vault.distribution.issue(tenant, asset_id=info.id, **options).url)  # type: ignore[arg-type]


def fetches(sink: MemoryAuditSink) -> list[AuditEvent]:
    return [event for event in sink.events if event.action == "asset.fetch"]


def last_fetch(sink: MemoryAuditSink) -> AuditEvent:
    events = fetches(sink)
    assert events, "no asset.fetch event was recorded"
    return events[-1]


def assert_refused(answer: Answer, status: int, data: bytes | None = None) -> None:
    """An error answer: its status, never cacheable, and none of the asset's bytes."""
    assert answer.status == status, answer
    assert answer.header("cache-control") == "no-store", answer.headers
    assert answer.header("etag") is None
    if data is not None:
        assert len(answer.body) < 100, answer.body
        assert data[:16] not in answer.body


def assert_audited(
    sink: MemoryAuditSink,
    *,
    status: int,
    reason: str,
    log_id: str,
    outcome: Outcome = Outcome.DENIED,
) -> AuditEvent:
    """The refusal's audit event: in ``log_id`` (a tenant's once the signature verified,
    else the platform's, unauthenticated), with the reason and the HTTP status."""
    event = last_fetch(sink)
    assert event.outcome is outcome, event
    assert event.detail["reason"] == reason, event
    assert event.detail["http_status"] == status, event
    assert event.log_id == log_id, event
    assert event.actor.authenticated is (log_id != PLATFORM_LOG), event
    assert event.request.transport == "http"
    return event


def tamper(token: str) -> str:
    """The token with one character of its signature changed (canonical base64url still,
    so the signature check, not the parser, refuses it)."""
    header_v, header_p, body, footer = token.split(".")
    at = len(body) - 8  # inside the last 64 bytes: the signature
    flipped = "A" if body[at] != "A" else "B"
    return f"{header_v}.{header_p}.{body[:at]}{flipped}{body[at + 1 :]}.{footer}"


# -- 1. byte ranges against Python slicing ----------------------------------------------------


@pytest.fixture
def frames(vault: Vault, tenant: str) -> tuple[str, bytes]:
    """An asset of several frames and a partial one, and a URL for it (one upload for all
    hypothesis examples: the fixture runs once per test)."""
    data = payload(SIZE, seed=3)
    info = upload(vault, tenant, "show/frames.mp4", data, content_type="video/mp4")
    return url_for(vault, tenant, info, ttl=3600), data


_POINTS = st.one_of(
    st.integers(0, SIZE - 1),
    st.sampled_from([0, 1, F - 1, F, F + 1, 2 * F - 1, 2 * F, 3 * F - 1, 3 * F, SIZE - 1]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(form=st.sampled_from(["a-b", "a-", "-n"]), a=_POINTS, span=st.integers(0, SIZE + 1000))
@example(form="a-b", a=F - 1, span=0)  # the last byte of the first frame
@example(form="a-b", a=F - 1, span=1)  # across the first frame boundary
@example(form="a-b", a=F, span=0)  # the first byte of the second frame
@example(form="a-b", a=F + 1, span=F)  # inside the second frame into the third
@example(form="a-b", a=F - 1, span=2 * F + 2)  # three frames touched
@example(form="a-", a=SIZE - 1, span=0)  # the last byte
@example(form="a-b", a=SIZE - 1, span=0)
@example(form="-n", a=0, span=1)  # the last byte, as a suffix
@example(form="a-b", a=SIZE - 10, span=1000)  # an end past the size is clamped
@example(form="-n", a=0, span=1235)  # the partial frame and one byte before it
@example(form="-n", a=0, span=SIZE + 5)  # a suffix longer than the asset: all of it
@example(form="a-b", a=0, span=SIZE - 1)  # the whole asset as a range
def test_ranges_match_python_slicing(
    origin: OriginThread, frames: tuple[str, bytes], form: str, a: int, span: int
) -> None:
    target, data = frames
    if form == "a-b":
        header, start, stop = f"bytes={a}-{a + span}", a, min(a + span + 1, SIZE)
    elif form == "a-":
        header, start, stop = f"bytes={a}-", a, SIZE
    else:
        n = max(1, span)
        header, start, stop = f"bytes=-{n}", max(0, SIZE - n), SIZE
    answer = origin.fetch(target, headers={"Range": header})
    assert answer.body == data[start:stop]
    assert answer.header("content-length") == str(stop - start)
    assert answer.header("transfer-encoding") is None
    assert answer.header("accept-ranges") == "bytes"
    # every satisfiable range is a 206, one that spans the asset (bytes=0-) too, as
    # nginx, S3 and CloudFront answer and as players that probe with bytes=0- expect
    assert answer.status == 206, answer.status
    assert answer.header("content-range") == f"bytes {start}-{stop - 1}/{SIZE}"


def test_whole_asset_has_exact_length_and_is_not_chunked(
    origin: OriginThread, frames: tuple[str, bytes]
) -> None:
    target, data = frames
    answer = origin.fetch(target)
    assert answer.status == 200
    assert answer.body == data
    assert answer.header("content-length") == str(SIZE)
    assert answer.header("transfer-encoding") is None
    assert answer.header("content-type") == "video/mp4"
    assert answer.header("content-range") is None


# -- 2. what caches and players rely on ---------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={2 * F + 99}-",  # starts at the size
        f"bytes={2 * F + 99}-{3 * F}",
        f"bytes={10 * F}-{10 * F + 5}",
        "bytes=-0",  # a suffix of no bytes (once a 500)
    ],
)
def test_unsatisfiable_range_is_416_with_the_size(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    header: str,
) -> None:
    info, data = episode
    answer = origin.fetch(url_for(vault, tenant, info), headers={"Range": header})
    assert_refused(answer, 416, data)
    assert answer.header("content-range") == f"bytes */{info.size}"
    assert_audited(
        audit_sink,
        status=416,
        reason="range not satisfiable",
        log_id=tenant,
        outcome=Outcome.FAILED,
    )


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-",
        "bytes=0-0",
        "bytes=-1",
        "bytes=5-9",
        "bytes=-0",
    ],
)
def test_any_range_of_an_empty_asset_is_416(
    vault: Vault, origin: OriginThread, tenant: str, header: str
) -> None:
    info = upload(vault, tenant, "show/empty.ts", b"")
    target = url_for(vault, tenant, info)
    answer = origin.fetch(target, headers={"Range": header})
    assert_refused(answer, 416)
    assert answer.header("content-range") == "bytes */0"
    whole = origin.fetch(target)
    assert (whole.status, whole.body, whole.header("content-length")) == (200, b"", "0")


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,5-9",  # several ranges: no multipart, the whole body
        "bytes=0-1, 5-9",
        "bytes=abc",
        "bytes=9-5",  # the end before the start
        "bytes=--1",
        "bytes=",
        "bytes 0-5",
        "items=0-5",
        "bytes=" + "9" * 25 + "-",  # beyond int64
        "bytes=0-" + "1" * 2000,  # longer than the origin parses
    ],
)
def test_several_or_malformed_ranges_get_the_whole_body(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes], header: str
) -> None:
    info, data = episode
    answer = origin.fetch(url_for(vault, tenant, info), headers={"Range": header})
    assert answer.status == 200, answer.headers
    assert answer.body == data
    assert answer.header("content-length") == str(len(data))
    assert answer.header("content-range") is None


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        (None, 206),  # the asset's own ETag
        ('"0123456789abcdef0123456789abcdef"', 200),  # another version: all of it
        ("W/{etag}", 200),  # a weak validator never matches If-Range
        ("Fri, 15 Jan 2027 08:00:00 GMT", 200),  # a date: only strong ETags are honoured
        ("\u00e9tag", 200),  # a Latin-1 byte (once a 500): not the ETag, so all of it
    ],
)
def test_if_range_honours_only_the_current_strong_etag(
    vault: Vault,
    origin: OriginThread,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    if_range: str | None,
    status: int,
) -> None:
    info, data = episode
    value = info.etag if if_range is None else if_range.format(etag=info.etag)
    answer = origin.fetch(
        url_for(vault, tenant, info), headers={"Range": "bytes=100-199", "If-Range": value}
    )
    assert answer.status == status, answer.headers
    if status == 206:
        assert answer.body == data[100:200]
        assert answer.header("content-range") == f"bytes 100-199/{len(data)}"
    else:
        assert answer.body == data
        assert answer.header("content-range") is None
        assert answer.header("content-length") == str(len(data))


@pytest.mark.parametrize("header", [None, "bytes=100-199", f"bytes={F - 5}-", "bytes=-10"])
def test_head_answers_the_headers_of_get_without_a_body(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes], header: str
) -> None:
    info, _ = episode
    target = url_for(vault, tenant, info)
    headers = {"Range": header} if header else {}
    got = origin.fetch(target, headers=headers)
    head = origin.fetch(target, method="HEAD", headers=headers)
    assert head.status == got.status
    assert head.body == b""
    assert head.header("content-length") == str(len(got.body))
    assert {k: v for k, v in head.headers.items() if k not in PER_ANSWER} == {
        k: v for k, v in got.headers.items() if k not in PER_ANSWER
    }


def test_strong_etag_is_stable_across_kek_rotation_and_rewrap(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, data = episode
    target = url_for(vault, tenant, info, ttl=3600)
    before = origin.fetch(target)
    etag = before.header("etag")
    assert etag is not None
    assert etag.startswith('"') and etag.endswith('"'), "a strong ETag, not W/"
    assert etag == info.etag

    vault.tenant_keys.rotate(tenant)
    assert vault.assets.rewrap_keys(tenant) >= 1
    assert vault.assets.lookup(tenant, info.id).kek_version > info.kek_version

    after = origin.fetch(target)
    assert (after.status, after.body, after.header("etag")) == (200, data, etag)
    # a CDN resuming a partial object with the ETag it cached still gets the range
    resumed = origin.fetch(target, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert (resumed.status, resumed.body) == (206, data[10:20])


def test_private_cache_lifetime_is_what_the_token_has_left(
    vault: Vault,
    origin: OriginThread,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, _ = episode
    target = url_for(vault, tenant, info, ttl=600)
    assert origin.fetch(target).header("cache-control") == "private, max-age=600"
    clock.advance(100)
    assert origin.fetch(target).header("cache-control") == "private, max-age=500"
    ranged = origin.fetch(target, headers={"Range": "bytes=0-9"})
    assert ranged.header("cache-control") == "private, max-age=500"
    clock.advance(499)
    assert origin.fetch(target).header("cache-control") == "private, max-age=1"


@pytest.mark.parametrize("origin_config", [OriginConfig(leeway=60, public_cache=True)])
def test_public_cache_when_configured(
    vault: Vault,
    origin: OriginThread,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, _ = episode
    target = url_for(vault, tenant, info, ttl=900)
    assert origin.fetch(target).header("cache-control") == "public, max-age=900"
    clock.advance(300)
    assert origin.fetch(target).header("cache-control") == "public, max-age=600"
    # a cookie's URL carries no credential: a shared cache must never hold its answer
    cookie = vault.distribution.issue(tenant, prefix="show/", ttl=900, cookie=True).token
    answer = origin.fetch(f"/v/{tenant}/show/ep1.mp4", headers={"Cookie": f"rv_token={cookie}"})
    assert (answer.status, answer.header("cache-control")) == (200, "private, max-age=900")


def test_cors_headers_let_a_browser_player_read_ranges(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, _ = episode
    answer = origin.fetch(
        url_for(vault, tenant, info),
        headers={"Range": "bytes=0-99", "Origin": "https://player.example"},
    )
    assert answer.status == 206
    assert answer.header("access-control-allow-origin") == "*"
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"content-range", "content-length", "accept-ranges", "etag"} <= exposed


def test_cors_preflight_is_204(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, _ = episode
    answer = origin.fetch(
        url_for(vault, tenant, info),
        method="OPTIONS",
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert answer.status == 204
    assert answer.body == b""
    assert answer.header("access-control-allow-origin") == "*"
    methods = {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "HEAD"} <= methods
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"range", "if-range"} <= allowed


# -- 3. every refusal: its status and its audit event --------------------------------------------


def test_expired_token_is_410_and_just_inside_the_leeway_is_served(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    target = url_for(vault, tenant, info, ttl=600)
    clock.advance(600 + LEEWAY - 1)
    inside = origin.fetch(target)
    assert (inside.status, inside.body) == (200, data)
    assert inside.header("cache-control") == "private, max-age=0"
    clock.advance(1)  # exactly expires_at + leeway: expired
    assert_refused(origin.fetch(target), 410, data)
    assert_audited(audit_sink, status=410, reason="expired", log_id=tenant)


def test_not_yet_valid_token_is_403(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    start = int(clock.now()) + 3600
    target = url_for(vault, tenant, info, ttl=600, not_before=start)
    assert_refused(origin.fetch(target), 403, data)
    assert_audited(audit_sink, status=403, reason="not yet valid", log_id=tenant)
    clock.advance(3600 - LEEWAY)  # within the leeway of not_before
    assert origin.fetch(target).status == 200


def test_tampered_token_is_403_in_the_platform_log(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600)
    bad = tamper(issued.token)
    assert bad != issued.token
    assert_refused(origin.fetch(target_of(issued.url).replace(issued.token, bad)), 403, data)
    assert_audited(audit_sink, status=403, reason="bad signature", log_id=PLATFORM_LOG)


def test_prefix_token_does_not_reach_a_sibling_rendition(
    vault: Vault, origin: OriginThread, audit_sink: MemoryAuditSink, tenant: str
) -> None:
    data = payload(1000)
    upload(vault, tenant, "show/720p/seg.ts", data)
    upload(vault, tenant, "show/1080p/seg.ts", data)
    upload(vault, tenant, "show/720p-x/seg.ts", data)
    issued = vault.distribution.issue(tenant, prefix="show/720p/", ttl=600)
    base = f"/t/{issued.token}/{tenant}"
    assert origin.fetch(f"{base}/show/720p/seg.ts").status == 200
    for path in ("show/1080p/seg.ts", "show/720p-x/seg.ts"):
        assert_refused(origin.fetch(f"{base}/{path}"), 403, data)
        assert_audited(audit_sink, status=403, reason="not covered", log_id=tenant)


@pytest.mark.parametrize("origin_config", [OriginConfig(leeway=60, audience="cdn-a")])
@pytest.mark.parametrize(("audience", "status"), [("cdn-b", 403), ("cdn-a", 200), ("", 200)])
def test_token_audience_must_name_this_origin(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    audience: str,
    status: int,
) -> None:
    info, data = episode
    answer = origin.fetch(url_for(vault, tenant, info, audience=audience))
    if status == 200:
        assert (answer.status, answer.body) == (200, data)
        return
    assert_refused(answer, status, data)
    assert_audited(audit_sink, status=403, reason="audience", log_id=tenant)


@pytest.mark.parametrize(
    ("network", "status"), [("203.0.113.0/24", 403), ("127.0.0.0/8", 200), ("127.0.0.1", 200)]
)
def test_token_client_network_must_hold_the_client(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    network: str,
    status: int,
) -> None:
    info, data = episode
    answer = origin.fetch(url_for(vault, tenant, info, client_ip=network))
    if status == 200:
        assert (answer.status, answer.body) == (200, data)
        return
    assert_refused(answer, status, data)
    assert_audited(audit_sink, status=403, reason="client ip", log_id=tenant)


@pytest.mark.parametrize(
    "origin_config",
    [OriginConfig(leeway=60, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))],
)
@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        ("203.0.113.7", 200),  # the CDN edge (a trusted proxy) names the viewer
        ("198.51.100.1, 203.0.113.7", 200),  # the rightmost untrusted hop is the viewer
        ("203.0.113.7, 198.51.100.1", 403),  # a viewer cannot prepend an address
        ("127.0.0.2", 403),  # nothing but trusted proxies: no client address
        ("not-an-address", 403),
        (None, 403),  # the proxy's own address is not the viewer's
    ],
)
def test_client_network_behind_a_trusted_proxy(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    forwarded: str | None,
    status: int,
) -> None:
    info, data = episode
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    answer = origin.fetch(url_for(vault, tenant, info, client_ip="203.0.113.0/24"), headers=headers)
    if status == 200:
        assert (answer.status, answer.body) == (200, data)
        return
    assert_refused(answer, status, data)
    assert_audited(audit_sink, status=403, reason="client ip", log_id=tenant)


def test_forwarded_for_is_ignored_without_trusted_proxies(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, data = episode
    target = url_for(vault, tenant, info, client_ip="203.0.113.0/24")
    assert_refused(origin.fetch(target, headers={"X-Forwarded-For": "203.0.113.7"}), 403, data)


def test_revoked_session_is_403_and_a_later_token_of_it_works(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    target = url_for(vault, tenant, info, session_id="sess-7")
    other = url_for(vault, tenant, info, session_id="sess-8")
    assert origin.fetch(target).status == 200
    vault.distribution.revoke_session(tenant, "sess-7")
    assert_refused(origin.fetch(target), 403, data)
    event = assert_audited(audit_sink, status=403, reason="revoked", log_id=tenant)
    assert event.detail["session"] == "sess-7"
    assert origin.fetch(other).status == 200, "another session is untouched"
    clock.advance(2)
    fresh = url_for(vault, tenant, info, session_id="sess-7")
    assert (origin.fetch(fresh).status, origin.fetch(target).status) == (200, 403)


def test_revoked_asset_is_403_and_other_assets_are_served(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    ep2_data = payload(5000, seed=2)
    ep2 = upload(vault, tenant, "show/ep2.mp4", ep2_data)
    one = url_for(vault, tenant, info)
    prefix = target_of(vault.distribution.issue(tenant, prefix="show/", ttl=600).url)
    vault.distribution.revoke_asset(tenant, info.id)
    for target in (one, prefix + "ep1.mp4"):
        assert_refused(origin.fetch(target), 403, data)
        assert_audited(audit_sink, status=403, reason="revoked", log_id=tenant)
    for target in (url_for(vault, tenant, ep2), prefix + "ep2.mp4"):
        answer = origin.fetch(target)
        assert (answer.status, answer.body) == (200, ep2_data)


def test_token_of_a_rotated_key_works_during_the_overlap_only(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    old = url_for(vault, tenant, info, ttl=MAX_TTL)
    assert origin.fetch(old).status == 200  # the origin now holds the old key
    vault.distribution.keys.rotate(tenant)
    clock.advance(1)  # past MISS_INTERVAL: see test_both_keys_are_served_right_after_a_rotation
    assert origin.fetch(old).status == 200, "issued before the rotation: still served"
    new = url_for(vault, tenant, info, ttl=MAX_TTL)
    assert origin.fetch(new).status == 200
    clock.advance(OVERLAP - 1)  # the old key's verify_until; no retirement job has run
    assert_refused(origin.fetch(old), 403, data)
    assert_audited(audit_sink, status=403, reason="unknown key", log_id=PLATFORM_LOG)
    assert origin.fetch(new).status == 410, "the new key's token merely expired"


def test_both_keys_are_served_right_after_a_rotation(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, _ = episode
    old = url_for(vault, tenant, info)
    assert origin.fetch(old).status == 200  # the origin has read its keys
    vault.distribution.keys.rotate(tenant)
    new = url_for(vault, tenant, info)
    assert [origin.fetch(old).status, origin.fetch(new).status] == [200, 200]


def test_leaked_key_retired_at_once_is_refused(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    old = url_for(vault, tenant, info)
    assert origin.fetch(old).status == 200
    vault.distribution.keys.rotate(tenant, retire_previous=True)
    assert_refused(origin.fetch(old), 403, data)
    assert_audited(audit_sink, status=403, reason="unknown key", log_id=PLATFORM_LOG)
    clock.advance(1)
    answer = origin.fetch(url_for(vault, tenant, info))
    assert (answer.status, answer.body) == (200, data)


def test_token_living_longer_than_the_maximum_ttl_is_403(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    """What someone holding a signing key could mint (issue() refuses such lifetimes)."""
    info, data = episode
    key = vault.distribution.keys.signing_key(tenant)
    now = int(clock.now())
    for not_before, expires_at in [
        (now, now + MAX_TTL + 1),  # a life beyond the maximum
        (now + MAX_TTL + 1, now + MAX_TTL + 600),  # a not-before further ahead than it
    ]:
        claims = Claims(f"{tenant}/{info.path}", expires_at, not_before, now, "", "s-9", "")
        answer = origin.fetch(f"/t/{sign(claims, key)}/{tenant}/{info.path}")
        assert_refused(answer, 403, data)
        assert_audited(audit_sink, status=403, reason="lifetime beyond the maximum", log_id=tenant)
    claims = Claims(f"{tenant}/{info.path}", now + MAX_TTL, now, now, "", "s-9", "")
    assert origin.fetch(f"/t/{sign(claims, key)}/{tenant}/{info.path}").status == 200


def test_hmac_token_round_trip_and_refused_once_its_key_retired(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    first, secret = vault.distribution.keys.rotate(tenant, "hmac-sha256")
    assert secret is not None and len(secret) == 32
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600, algorithm="hmac-sha256")
    assert issued.token.startswith("rv1.hs256.")
    answer = origin.fetch(target_of(issued.url))
    assert (answer.status, answer.body) == (200, data)

    vault.distribution.keys.rotate(tenant, "hmac-sha256")
    clock.advance(OVERLAP)
    states = {key.kid: key.state for key in vault.distribution.keys.list(tenant)}
    assert states[first.kid] == "retired"
    assert_refused(origin.fetch(target_of(issued.url)), 403, data)
    assert_audited(audit_sink, status=403, reason="unknown key", log_id=PLATFORM_LOG)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("show/../secret.mp4", "dot segment"),
        ("show/%2e%2e/secret.mp4", "dot segment"),
        ("show/%2E%2e/secret.mp4", "dot segment"),
        ("show/./../secret.mp4", "dot segment"),
        ("show%2F..%2Fsecret.mp4", "encoded slash"),
        ("show/..%2Fsecret.mp4", "encoded slash"),
        ("show/%252e%252e/secret.mp4", "double encoding"),
        ("show%252F..%252Fsecret.mp4", "double encoding"),
        ("show/..\\secret.mp4", "backslash"),
        ("show/..%5Csecret.mp4", "encoded slash"),
        ("show//secret.mp4", "empty segment"),
    ],
)
def test_path_traversal_is_403(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    path: str,
    reason: str,
) -> None:
    secret = payload(3000, seed=9)
    upload(vault, tenant, "secret.mp4", secret)
    upload(vault, tenant, "show/ep1.mp4", payload(100))
    issued = vault.distribution.issue(tenant, prefix="show/", ttl=600)
    assert origin.fetch(f"/t/{issued.token}/{tenant}/show/ep1.mp4").status == 200
    answer = origin.fetch(f"/t/{issued.token}/{tenant}/{path}")
    assert_refused(answer, 403, secret)
    assert_audited(audit_sink, status=403, reason=reason, log_id=PLATFORM_LOG)


def test_oversized_headers_are_refused_without_the_asset(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    answer = origin.fetch(url_for(vault, tenant, info), headers={"X-Padding": "a" * 20 * 1024})
    assert_refused(answer, 431, data)  # docs/urls.md: headers over 16 KiB
    assert_audited(
        audit_sink,
        status=431,
        reason="headers too large",
        log_id=PLATFORM_LOG,
        outcome=Outcome.FAILED,
    )
    assert not [e for e in fetches(audit_sink) if e.outcome is Outcome.ALLOWED]


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ("/v/{tenant}/show/ep1.mp4?token={token}&token={token}", "duplicate parameter"),
        ("/t/{token}/{tenant}/show/ep1.mp4?token={token}", "two tokens"),
    ],
)
def test_two_tokens_in_one_request_are_403(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    form: str,
    reason: str,
) -> None:
    info, data = episode
    token = vault.distribution.issue(tenant, asset_id=info.id, ttl=600).token
    assert_refused(origin.fetch(form.format(tenant=tenant, token=token)), 403, data)
    assert_audited(audit_sink, status=403, reason=reason, log_id=PLATFORM_LOG)


def test_token_of_one_tenant_does_not_open_another_tenants_path(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    other_tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    theirs = payload(4000, seed=77)
    upload(vault, other_tenant, "show/ep1.mp4", theirs)  # the same path, another tenant
    token = vault.distribution.issue(tenant, prefix="show/", ttl=600).token
    assert origin.fetch(f"/t/{token}/{tenant}/show/ep1.mp4").status == 200
    for target in (
        f"/t/{token}/{other_tenant}/show/ep1.mp4",
        f"/v/{other_tenant}/show/ep1.mp4?token={token}",
    ):
        assert_refused(origin.fetch(target), 403, theirs)
        assert_audited(audit_sink, status=403, reason="not covered", log_id=tenant)


def test_missing_asset_under_a_covered_prefix_is_404(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    prefix_url = target_of(vault.distribution.issue(tenant, prefix="show/", ttl=600).url)
    assert_refused(origin.fetch(prefix_url + "ep9.mp4"), 404)
    assert_audited(
        audit_sink, status=404, reason="not found", log_id=tenant, outcome=Outcome.FAILED
    )


def test_cookie_token_on_the_v_route(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600, cookie=True)
    attributes = dict(
        part.partition("=")[::2] for part in (p.strip() for p in issued.cookie.split(";"))
    )
    assert attributes["rv_token"] == issued.token
    assert attributes["Path"] == f"/v/{tenant}/show/"
    assert target_of(issued.url) == f"/v/{tenant}/show/"
    target = f"/v/{tenant}/show/ep1.mp4"
    answer = origin.fetch(target, headers={"Cookie": f"rv_token={issued.token}"})
    assert (answer.status, answer.body) == (200, data)
    assert_refused(origin.fetch(target), 403, data)  # no cookie, no token
    assert_audited(audit_sink, status=403, reason="no token", log_id=PLATFORM_LOG)


def test_query_token_on_the_v_route(
    vault: Vault, origin: OriginThread, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, data = episode
    token = vault.distribution.issue(tenant, asset_id=info.id, ttl=600).token
    answer = origin.fetch(f"/v/{tenant}/show/ep1.mp4?token={token}")
    assert (answer.status, answer.body) == (200, data)
    ranged = origin.fetch(f"/v/{tenant}/show/ep1.mp4?token={token}", headers={"Range": "bytes=7-8"})
    assert (ranged.status, ranged.body) == (206, data[7:9])


def test_prefix_url_serves_a_segment_appended_to_it(
    vault: Vault, origin: OriginThread, tenant: str
) -> None:
    segments = {name: payload(700 + i, seed=i) for i, name in enumerate(["init.mp4", "seg1.m4s"])}
    for name, data in segments.items():
        upload(vault, tenant, f"show/720p/{name}", data)
    issued = vault.distribution.issue(tenant, prefix="show/720p", ttl=600)
    assert issued.url == f"http://origin.test/t/{issued.token}/{tenant}/show/720p/"
    for name, data in segments.items():
        answer = origin.fetch(target_of(issued.url) + name)
        assert (answer.status, answer.body) == (200, data)


@pytest.mark.parametrize(
    "path", ["show/my ep#1?.mp4", "show/\u00e9pisode.mp4", "show/a+b;c=d&e~.mp4", "show/'x'(1).ts"]
)
def test_issued_url_of_an_awkward_name_is_served(
    vault: Vault, origin: OriginThread, tenant: str, path: str
) -> None:
    data = payload(333)
    info = upload(vault, tenant, path, data)
    answer = origin.fetch(url_for(vault, tenant, info))
    assert (answer.status, answer.body) == (200, data)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/", "unknown route"),
        ("/favicon.ico", "unknown route"),
        ("/x/{tenant}/show/ep1.mp4", "unknown route"),
        ("/t", "no token"),
        ("/v/{tenant}", "no tenant or path"),
        ("/t/not!a!token/{tenant}/show/ep1.mp4", "malformed token"),
        ("/v/NOT-A-TENANT/show/ep1.mp4?token=x", "malformed tenant"),
    ],
)
def test_a_target_matching_no_route_is_refused_and_audited(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    target: str,
    reason: str,
) -> None:
    _, data = episode
    answer = origin.fetch(target.format(tenant=tenant))
    assert_refused(answer, 403, data)
    assert answer.body == f"403 {reason}\n".encode()
    assert_audited(audit_sink, status=403, reason=reason, log_id=PLATFORM_LOG)


@pytest.mark.parametrize("origin_config", [OriginConfig(leeway=60, audience="cdn-a")])
@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("expired", 410),
        ("not covered", 403),
        ("revoked", 403),
        ("audience", 403),
        ("client ip", 403),
        ("not yet valid", 403),
    ],
)
def test_refusal_after_the_signature_names_key_and_session(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    case: str,
    status: int,
) -> None:
    """docs/urls.md: such refusals are in the tenant's log "with the key id and session id"
    (a session refused for its client network is how a leaked URL shows up)."""
    info, data = episode
    options: dict[str, object] = {"audience": "cdn-a", "session_id": "sess-1", "ttl": 600}
    if case == "audience":
        options["audience"] = "cdn-b"
    elif case == "client ip":
        options["client_ip"] = "203.0.113.0/24"
    elif case == "not yet valid":
        options["not_before"] = int(clock.now()) + 3600
    issued = vault.distribution.issue(tenant, asset_id=info.id, **options)  # type: ignore[arg-type]
    target = target_of(issued.url)
    if case == "expired":
        clock.advance(600 + LEEWAY)
    elif case == "not covered":
        target = target.replace("/show/ep1.mp4", "/show/ep2.mp4")
    elif case == "revoked":
        vault.distribution.revoke_session(tenant, "sess-1")
    answer = origin.fetch(target)
    assert_refused(answer, status, data)
    assert answer.body == f"{status} {case}\n".encode()
    event = assert_audited(audit_sink, status=status, reason=case, log_id=tenant)
    assert event.actor.key_id == issued.kid
    assert event.detail.get("session") == "sess-1"


def test_expired_is_said_only_where_the_token_would_be_served(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    upload(vault, tenant, "show/ep2.mp4", payload(10))
    target = url_for(vault, tenant, info, ttl=600, session_id="sess-3")
    clock.advance(600 + LEEWAY)
    for elsewhere in ("/show/ep2.mp4", "/show/nothing-here.mp4"):
        assert_refused(origin.fetch(target.replace("/show/ep1.mp4", elsewhere)), 403, data)
        assert_audited(audit_sink, status=403, reason="not covered", log_id=tenant)
    vault.distribution.revoke_session(tenant, "sess-3")
    assert_refused(origin.fetch(target), 403, data)
    assert_audited(audit_sink, status=403, reason="revoked", log_id=tenant)


def test_asset_revocation_survives_delete_and_upload_at_the_same_path(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, _ = episode
    old = url_for(vault, tenant, info)
    vault.distribution.revoke_asset(tenant, info.id)
    vault.assets.delete(tenant, info.id)
    again = payload(4321, seed=5)
    replacement = upload(vault, tenant, info.path, again)
    assert replacement.id != info.id
    assert_refused(origin.fetch(old), 403, again)
    assert_audited(audit_sink, status=403, reason="revoked", log_id=tenant)
    clock.advance(1)  # cut-offs are whole seconds
    answer = origin.fetch(url_for(vault, tenant, replacement))
    assert (answer.status, answer.body) == (200, again)


def fetch_lines(origin: OriginThread, target: str, lines: list[tuple[str, str]]) -> Answer:
    """A GET with header lines as given, repeated names included (``fetch`` takes a dict)."""
    connection = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in lines:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


@pytest.mark.parametrize(
    "origin_config",
    [OriginConfig(leeway=60, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))],
)
@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["198.51.100.1", "203.0.113.7"], 200),  # a proxy that adds a line of its own
        (["203.0.113.7", "198.51.100.1"], 403),  # the last line names the viewer
        (["203.0.113.7", "127.0.0.9"], 200),  # past a trusted hop in another line
    ],
)
def test_every_forwarded_for_line_is_read_in_order(
    vault: Vault,
    origin: OriginThread,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    lines: list[str],
    status: int,
) -> None:
    info, _ = episode
    target = url_for(vault, tenant, info, client_ip="203.0.113.0/24")
    answer = fetch_lines(origin, target, [("X-Forwarded-For", line) for line in lines])
    assert answer.status == status, answer.headers


EDGE_SECRET = "edge-secret-0123456789"


@pytest.mark.parametrize("origin_config", [OriginConfig(leeway=60, cloudfront_secret=EDGE_SECRET)])
def test_cloudfront_mode_needs_the_origin_secret(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, data = episode
    edge = {"X-Reelvault-Origin-Secret": EDGE_SECRET}
    cf = f"/cf/{tenant}/{info.path}"
    assert_refused(origin.fetch(cf), 403, data)
    assert_audited(audit_sink, status=403, reason="not through the edge", log_id=PLATFORM_LOG)
    wrong = {"X-Reelvault-Origin-Secret": EDGE_SECRET[:-1] + "x"}
    assert_refused(origin.fetch(url_for(vault, tenant, info), headers=wrong), 403, data)
    answer = origin.fetch(cf, headers=edge)
    assert (answer.status, answer.body) == (200, data)
    assert answer.header("cache-control") == "private, max-age=0"
    event = last_fetch(audit_sink)
    assert (event.log_id, event.actor.key_id, event.outcome) == (
        tenant,
        "cloudfront",
        Outcome.ALLOWED,
    )
    ranged = origin.fetch(url_for(vault, tenant, info), headers={**edge, "Range": "bytes=1-2"})
    assert (ranged.status, ranged.body) == (206, data[1:3])


def test_cloudfront_route_is_closed_when_the_mode_is_off(
    origin: OriginThread, audit_sink: MemoryAuditSink, tenant: str, episode: tuple[AssetInfo, bytes]
) -> None:
    info, data = episode
    answer = origin.fetch(
        f"/cf/{tenant}/{info.path}", headers={"X-Reelvault-Origin-Secret": "anything"}
    )
    assert_refused(answer, 403, data)
    assert_audited(audit_sink, status=403, reason="CloudFront mode is off", log_id=PLATFORM_LOG)


# -- 4. the token stays out of the audit log ------------------------------------------------------


def test_audit_events_name_the_session_never_the_token(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
) -> None:
    info, _ = episode
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600, session_id="sess-42")
    target = target_of(issued.url)
    cookie = vault.distribution.issue(tenant, prefix="show/", ttl=600, cookie=True)
    tampered = tamper(issued.token)
    assert origin.fetch(target).status == 200
    assert origin.fetch(target, headers={"Range": "bytes=0-9"}).status == 206
    assert origin.fetch(target, method="HEAD").status == 200
    assert origin.fetch(target.replace(issued.token, tampered)).status == 403
    assert (
        origin.fetch(
            f"/v/{tenant}/show/ep1.mp4", headers={"Cookie": f"rv_token={cookie.token}"}
        ).status
        == 200
    )
    clock.advance(600 + LEEWAY)
    assert origin.fetch(target).status == 410

    secrets = {
        issued.token,
        issued.token.split(".")[2][-86:],  # the signature's base64url
        tampered,
        cookie.token,
        cookie.token.split(".")[2][-86:],
    }
    assert len(audit_sink.events) >= 7
    for event in audit_sink.events:
        rendered = f"{event!r}\n{render_json(event)}"
        for secret in secrets:
            assert secret not in rendered, event
    allowed = [e for e in fetches(audit_sink) if e.outcome is Outcome.ALLOWED]
    assert len(allowed) == 4
    assert [e.detail.get("session") for e in allowed] == ["sess-42", "sess-42", "sess-42", None]
    assert all(e.log_id == tenant for e in allowed)


# -- 5. fail closed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "expire"),
    [
        ("GET", {}, False),
        ("GET", {"Range": "bytes=100-"}, False),
        ("HEAD", {}, False),
        ("GET", {}, True),  # an unrecorded refusal is not answered as one either
    ],
)
def test_no_audit_log_no_bytes(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    method: str,
    headers: dict[str, str],
    expire: bool,
) -> None:
    info, data = episode
    target = url_for(vault, tenant, info)
    if expire:
        clock.advance(3600)
    audit_sink.unavailable = True
    answer = origin.fetch(target, method=method, headers=headers)
    assert_refused(answer, 503, data)
    assert answer.body in (b"503 unavailable\n", b"")  # HEAD: no body
    assert answer.header("content-range") is None
    assert answer.header("content-length") != str(len(data))
    audit_sink.unavailable = False
    if not expire:
        assert origin.fetch(target, method=method, headers=headers).status in (200, 206)


# -- 6. errors are never cached -----------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404, 410, 416, 503])
def test_every_error_is_no_store(
    vault: Vault,
    origin: OriginThread,
    audit_sink: MemoryAuditSink,
    clock: FakeClock,
    tenant: str,
    episode: tuple[AssetInfo, bytes],
    status: int,
) -> None:
    info, data = episode
    target, headers = url_for(vault, tenant, info), {}
    if status == 403:
        target = target.replace("/show/ep1.mp4", "/show/ep2.mp4")
    elif status == 404:
        target = target_of(vault.distribution.issue(tenant, prefix="show/", ttl=600).url) + "x.ts"
    elif status == 410:
        clock.advance(3600)
    elif status == 416:
        headers = {"Range": f"bytes={len(data)}-"}
    else:
        audit_sink.unavailable = True
    answer = origin.fetch(target, headers=headers)
    assert_refused(answer, status, data)
    assert answer.header("access-control-allow-origin") == "*"
    head = origin.fetch(target, method="HEAD", headers=headers)
    assert (head.status, head.header("cache-control"), head.body) == (status, "no-store", b"")
