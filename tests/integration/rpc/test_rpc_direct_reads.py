"""Direct reads through read grants (#10), end to end: a real server over a real SeaweedFS,
the Python client fetching the stored object itself with presigned ranged GETs.

What a renderer depends on: the bytes are the asset's, whole and in ranges; the grant is
refused unless the tenant enables it; every grant is an audited key release; a tampered,
truncated or swapped stored object fails exactly as through the vault, before any wrong
byte; an expired URL is renewed; an unreachable store falls back to the vault."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from rpc_harness import MiB, ServerThread, Tenancy, make_tenancy

from reelvault import errors
from reelvault.app import Vault
from reelvault.audit.events import Outcome
from reelvault.auth import Role
from reelvault.catalog.tables import AssetRow
from reelvault.client import Client
from reelvault.crypto import message
from reelvault.crypto.format import parse_header
from reelvault.crypto.message import open_with_frame_key
from reelvault.crypto.names import kek_key_name
from reelvault.storage import S3ObjectStore
from reelvault.storage.seaweed import SeaweedServer

pytestmark = pytest.mark.db

F = 64 * 1024
SIZE = 2 * MiB + 3 * F + 17  # several parts of a small part size, a short final frame


@pytest.fixture
def vault(database, root_provider, clock, seaweed_store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=seaweed_store, clock=clock)


def _client(server: ServerThread, token: str, **kw) -> Client:
    return Client(server.address, token, environ={}, **kw)


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def asset_id(server: ServerThread, acme: Tenancy, data: bytes) -> str:
    with _client(server, acme.tokens[Role.INGEST]) as ingest:
        return ingest.upload(data, path="campaign/master.mp4").id


@pytest.fixture
def enabled(server: ServerThread, acme: Tenancy) -> None:
    with _client(server, acme.tokens[Role.ADMIN]) as admin:
        assert admin.set_tenant_policy(direct_reads=True).direct_reads


def _renderer(server: ServerThread, acme: Tenancy, **kw) -> Client:
    # small parts: a 2 MiB asset is still several parallel ranged GETs
    kw.setdefault("direct_part_size", 256 * 1024)
    return _client(server, acme.tokens[Role.RENDERER], **kw)


def _grant_events(vault: Vault, tenant_id: str) -> list[dict]:
    vault.audit_log.integrate_all()
    size = vault.audit_log.tree_size(tenant_id)
    records = [json.loads(e.record) for e in vault.audit_log.export(tenant_id, 0, size)]
    return [r for r in records if r["api"]["operation"].endswith("/OpenAsset")]


def test_without_the_policy_a_grant_is_refused_and_auto_reads_through_the_vault(
    server, acme, asset_id, data
):
    with _renderer(server, acme) as renderer:
        with pytest.raises(errors.FailedPrecondition, match="direct reads are off"):
            renderer.open_asset(asset_id)
        with pytest.raises(errors.FailedPrecondition):
            renderer.download(asset_id, read_path="direct")
        assert b"".join(renderer.download(asset_id)) == data  # auto: through the vault


def test_a_tenant_admin_switches_direct_reads_and_other_roles_cannot(server, acme, globex):
    renderer = _client(server, acme.tokens[Role.RENDERER])
    with renderer, pytest.raises(errors.PermissionDenied):
        renderer.set_tenant_policy(direct_reads=True)
    with _client(server, acme.tokens[Role.ADMIN]) as admin:
        with pytest.raises(errors.NotFound):  # another tenant looks missing
            admin.set_tenant_policy(globex.id, direct_reads=True)
        assert admin.set_tenant_policy(direct_reads=True).direct_reads
        assert admin.get_tenant(acme.id).direct_reads
        assert not admin.set_tenant_policy(direct_reads=False).direct_reads


@pytest.mark.usefixtures("enabled")
def test_direct_download_whole_and_ranges(server, acme, asset_id, data, vault, seaweed_store):
    with _renderer(server, acme, read_path="direct") as renderer:
        stream = renderer.download(asset_id)
        assert (stream.offset, stream.length, stream.asset.size) == (0, SIZE, SIZE)
        body = b"".join(stream)
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        for offset, length in [(0, 1), (F - 1, 2), (F, F), (SIZE - 17, 17), (12345, MiB + 3)]:
            assert (
                b"".join(renderer.download(asset_id, offset=offset, length=length))
                == (data[offset : offset + length])
            )
        assert b"".join(renderer.download(asset_id, suffix=100)) == data[-100:]
        assert b"".join(renderer.download(asset_id, offset=SIZE - 5)) == data[-5:]
        with pytest.raises(errors.OutOfRange):
            renderer.download(asset_id, offset=SIZE - 1, length=2)
    # one grant served every read above (cached), and it is on record as a key release
    events = _grant_events(vault, acme.id)
    assert len(events) == 1
    event = events[0]
    ours = event["unmapped"]["reelvault"]
    assert (ours["action"], ours["outcome"]) == ("asset.grant", Outcome.ALLOWED.value)
    assert event["actor"]["authorizations"][0]["policy"]["name"] == "renderer"
    assert event["resources"][0]["uid"] == asset_id
    assert ours["detail"] == {"key_release": "frame_key", "grant_lifetime_s": 300}
    assert ours["kek_version"] == 1
    text = json.dumps(event)
    grant = _client(server, acme.tokens[Role.RENDERER]).open_asset(asset_id)
    assert grant.frame_key.hex() not in text and "X-Amz-Signature" not in text


@pytest.mark.usefixtures("enabled")
def test_the_grant_releases_one_object_key_and_nothing_that_unwraps(
    server, acme, asset_id, vault, clock
):
    with _renderer(server, acme) as renderer:
        grant = renderer.open_asset(asset_id, offset=10, length=20, lifetime=60)
    assert (grant.offset, grant.length) == (10, 20)
    assert grant.expires_at - datetime.fromtimestamp(clock.now(), UTC) == timedelta(seconds=60)
    header = parse_header(grant.header)
    # the key is the header's content key (its tag authenticates under it) ...
    opened = open_with_frame_key(grant.header, grant.frame_key, header.context)
    assert opened.header.message_id == header.message_id
    # ... and neither the KEK nor the data key
    resolver = vault.tenant_keys.resolver(acme.id)
    kek = resolver.wrapping_key(kek_key_name(acme.id, 1))
    _, data_key = message._open(header, resolver, header.context)
    assert kek is not None and grant.frame_key not in (kek, data_key)
    ours = _grant_events(vault, acme.id)[-1]["unmapped"]["reelvault"]
    assert ours["range"] == {"offset": 10, "length": 20}
    assert ours["detail"]["grant_lifetime_s"] == 60


@pytest.mark.usefixtures("enabled")
def test_a_lifetime_beyond_the_maximum_is_refused(server, acme, asset_id):
    renderer = _renderer(server, acme)
    with renderer, pytest.raises(errors.InvalidArgument, match="1 to 3600"):
        renderer.open_asset(asset_id, lifetime=3601)


def _tamper(store: S3ObjectStore, key: str, offset: int) -> None:
    body = bytearray(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())
    body[offset] ^= 1
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(body))


def _object_key(vault: Vault, asset_id: str) -> str:
    with vault.database.transaction(readonly=True) as session:
        return session.get(AssetRow, asset_id).object_key


@pytest.mark.usefixtures("enabled")
@pytest.mark.parametrize("where", ["header", "frame", "final"])
def test_a_tampered_object_fails_as_through_the_vault(
    server, acme, asset_id, vault, seaweed_store, where
):
    key = _object_key(vault, asset_id)
    header_length = len(_client(server, acme.tokens[Role.RENDERER]).open_asset(asset_id).header)
    offset = {"header": 40, "frame": header_length + F + 100, "final": -3}[where]
    size = seaweed_store.head(key).size
    _tamper(seaweed_store, key, offset % size)
    with _renderer(server, acme) as renderer:
        with pytest.raises(errors.IntegrityError) as direct:
            b"".join(renderer.download(asset_id, read_path="direct"))
        with pytest.raises(errors.IntegrityError) as through:
            b"".join(renderer.download(asset_id, read_path="vault"))
    assert type(direct.value) is type(through.value) is errors.IntegrityError
    assert direct.value.message == through.value.message


@pytest.mark.usefixtures("enabled")
def test_no_wrong_byte_is_returned_before_a_tampered_frame(
    server, acme, asset_id, vault, seaweed_store, data
):
    key = _object_key(vault, asset_id)
    header_length = len(_client(server, acme.tokens[Role.RENDERER]).open_asset(asset_id).header)
    _tamper(seaweed_store, key, header_length + 5 * (F + 32) + 7)  # in frame 6
    received = bytearray()
    renderer = _renderer(server, acme, read_path="direct")
    with renderer, pytest.raises(errors.IntegrityError):
        for piece in renderer.download(asset_id):
            received += piece
    assert len(received) <= 5 * F
    assert bytes(received) == data[: len(received)]


@pytest.mark.usefixtures("enabled")
def test_a_swapped_or_truncated_object_is_refused(
    server, acme, asset_id, vault, seaweed_store, data
):
    with _client(server, acme.tokens[Role.INGEST]) as ingest:
        other = ingest.upload(data, path="campaign/copy.mp4").id  # same bytes, other key
    key, other_key = _object_key(vault, asset_id), _object_key(vault, other)
    s3 = seaweed_store.client
    body = s3.get_object(Bucket=seaweed_store.bucket, Key=other_key)["Body"].read()
    s3.put_object(Bucket=seaweed_store.bucket, Key=key, Body=body)  # swapped
    renderer = _renderer(server, acme, read_path="direct")
    with renderer, pytest.raises(errors.IntegrityError):
        renderer.download(asset_id, offset=0, length=10)
    original = s3.get_object(Bucket=seaweed_store.bucket, Key=other_key)["Body"].read()
    s3.put_object(Bucket=seaweed_store.bucket, Key=other_key, Body=original[:-1])  # truncated
    renderer = _renderer(server, acme, read_path="direct")
    with renderer, pytest.raises(errors.IntegrityError):
        renderer.download(other, offset=0, length=10)


@pytest.mark.usefixtures("enabled")
def test_an_expired_url_is_renewed_mid_transfer(server, acme, asset_id, data, vault, monkeypatch):
    grants = []
    with _renderer(server, acme, read_path="direct", direct_concurrency=2) as renderer:
        real_open = renderer.open_asset

        def short_lived(asset_id: str, **kw):
            grant = real_open(asset_id, **{**kw, "lifetime": 1})
            grants.append(grant)
            return grant

        monkeypatch.setattr(renderer, "open_asset", short_lived)
        stream = renderer.download(asset_id)
        first = next(stream)
        time.sleep(2.5)  # the URL is now expired: the next part's GET is refused with 403
        rest = b"".join(stream)
    assert first + rest == data
    assert len(grants) >= 2  # renewed
    assert len(_grant_events(vault, acme.id)) == len(grants)  # each renewal is audited


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_store_vault(database, root_provider, clock, seaweed: SeaweedServer) -> Vault:
    """The vault reaches SeaweedFS; the URLs it signs name an address nobody listens on."""
    inner = seaweed.object_store("reelvault-rpc", part_size=5 * MiB, max_in_flight=2)
    store = S3ObjectStore(
        inner.bucket,
        client=inner.client,
        public_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        access_key="x",
        secret_key="y",
    )
    return Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)


def test_an_unreachable_store_falls_back_to_the_vault(
    database, root_provider, clock, unreachable_store_vault, settings, data
):
    vault = unreachable_store_vault
    server = ServerThread(vault, settings)
    try:
        acme = make_tenancy(vault, "acme")
        with _client(server, acme.tokens[Role.ADMIN]) as admin:
            admin.set_tenant_policy(direct_reads=True)
        with _client(server, acme.tokens[Role.INGEST]) as ingest:
            asset_id = ingest.upload(data, path="m.mp4").id
        with _renderer(server, acme) as renderer:
            assert b"".join(renderer.download(asset_id)) == data  # auto: fell back
            assert b"".join(renderer.download(asset_id, offset=5, length=10)) == data[5:15]
            with pytest.raises(errors.Unavailable, match="cannot be reached"):
                renderer.download(asset_id, read_path="direct")
    finally:
        server.close()


@pytest.mark.usefixtures("enabled")
def test_one_stream_reads_a_span_with_one_get_and_still_checks_every_frame(
    server, acme, asset_id, data, vault, seaweed_store
):
    with _renderer(server, acme, read_path="direct", direct_concurrency=1) as renderer:
        assert b"".join(renderer.download(asset_id)) == data
        assert (
            b"".join(renderer.download(asset_id, offset=F + 3, length=MiB))
            == (data[F + 3 : F + 3 + MiB])
        )
        header_length = len(renderer.open_asset(asset_id).header)
    _tamper(seaweed_store, _object_key(vault, asset_id), header_length + 20 * (F + 32) + 5)
    received = bytearray()
    renderer = _renderer(server, acme, read_path="direct", direct_concurrency=1)
    with renderer, pytest.raises(errors.IntegrityError):
        for piece in renderer.download(asset_id):
            received += piece
    assert len(received) <= 20 * F and bytes(received) == data[: len(received)]
