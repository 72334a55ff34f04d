"""Attacks on read grants (#10), end to end: a real server over a real SeaweedFS, the Python
client reading the stored object itself. Companion of test_rpc_direct_reads.py.

A docstring starting "Finding" marks a test that demonstrated a weakness: "(fixed)" ones
pass since the client fix beside them; the others fail until the server or the format
changes. The rest lock in an attack the code resists, or document what a grant still
allows after the policy, the KEK or the asset changed (a released key and a presigned URL
cannot be called back)."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.error import HTTPError
from urllib.parse import unquote, urlsplit

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rpc_harness import MiB, ServerThread, Tenancy, make_tenancy

from reelvault import errors
from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.catalog.tables import AssetRow
from reelvault.client import Client
from reelvault.crypto.format import FRAME_OVERHEAD, frame_aad, frame_iv, parse_header
from reelvault.crypto.message import open_with_frame_key
from reelvault.scrub import Problem, Scrubber
from reelvault.storage import S3ObjectStore

pytestmark = pytest.mark.db

F = 64 * 1024
SIZE = MiB + 2 * F + 17


@pytest.fixture
def vault(database, root_provider, clock, seaweed_store) -> Vault:
    return Vault.from_parts(database=database, root=root_provider, store=seaweed_store, clock=clock)


def _client(server: ServerThread, token: str, **kw) -> Client:
    return Client(server.address, token, environ={}, **kw)


def _renderer(server: ServerThread, tenancy: Tenancy, **kw) -> Client:
    kw.setdefault("direct_part_size", 256 * 1024)
    return _client(server, tenancy.tokens[Role.RENDERER], **kw)


@pytest.fixture
def data() -> bytes:
    return os.urandom(SIZE)


def _upload(server: ServerThread, tenancy: Tenancy, data: bytes, path: str) -> str:
    with _client(server, tenancy.tokens[Role.INGEST]) as ingest:
        return ingest.upload(data, path=path).id


def _enable(server: ServerThread, tenancy: Tenancy, on: bool = True) -> None:
    with _client(server, tenancy.tokens[Role.ADMIN]) as admin:
        assert admin.set_tenant_policy(direct_reads=on).direct_reads is on


@pytest.fixture
def asset_id(server: ServerThread, acme: Tenancy, data: bytes) -> str:
    return _upload(server, acme, data, "campaign/master.mp4")


@pytest.fixture
def enabled(server: ServerThread, acme: Tenancy) -> None:
    _enable(server, acme)


def _object_key(vault: Vault, asset_id: str) -> str:
    with vault.database.transaction(readonly=True) as session:
        return session.get(AssetRow, asset_id).object_key


def _get(store: S3ObjectStore, key: str) -> bytes:
    return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()


def _put(store: S3ObjectStore, key: str, body: bytes) -> None:
    store.client.put_object(Bucket=store.bucket, Key=key, Body=body)


def _records(vault: Vault, tenant_id: str) -> list[dict]:
    vault.audit_log.integrate_all()
    size = vault.audit_log.tree_size(tenant_id)
    return [json.loads(e.record) for e in vault.audit_log.export(tenant_id, 0, size)]


def _http_get(url: str, first: int, last: int) -> bytes:
    request = urllib.request.Request(url, headers={"Range": f"bytes={first}-{last}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


# -- who may ask -----------------------------------------------------------------------


@pytest.mark.usefixtures("enabled")
@pytest.mark.parametrize(
    "role",
    [Role.DISTRIBUTOR, Role.AUDITOR, Role.PRIVACY, Role.PLATFORM_ADMIN, Role.PLATFORM_AUDITOR],
)
def test_roles_that_may_not_read_bytes_get_no_grant(server, vault, acme, asset_id, role):
    if role in (Role.PLATFORM_ADMIN, Role.PLATFORM_AUDITOR):
        token = vault.api_keys.create(tenant_id=None, role=role)[1]
    else:
        token = acme.tokens[role]
    with _client(server, token) as caller:
        with pytest.raises(errors.PermissionDenied):
            caller.open_asset(asset_id)
        with pytest.raises(errors.PermissionDenied):
            caller.download(asset_id, read_path="direct")


@pytest.mark.usefixtures("enabled")
@pytest.mark.parametrize("role", [Role.ADMIN, Role.INGEST, Role.RENDERER])
def test_roles_that_read_through_the_vault_get_a_grant(server, acme, asset_id, data, role):
    with _client(server, acme.tokens[role], read_path="direct") as caller:
        assert len(caller.open_asset(asset_id).frame_key) == 32
        assert b"".join(caller.download(asset_id, offset=5, length=10)) == data[5:15]


@pytest.mark.parametrize(
    "role",
    [
        Role.INGEST,
        Role.RENDERER,
        Role.DISTRIBUTOR,
        Role.AUDITOR,
        Role.PRIVACY,
        Role.PLATFORM_AUDITOR,
    ],
)
def test_only_admins_set_the_policy(server, vault, acme, role):
    if role is Role.PLATFORM_AUDITOR:
        token = vault.api_keys.create(tenant_id=None, role=role)[1]
        tenant = acme.id
    else:
        token, tenant = acme.tokens[role], None
    with _client(server, token) as caller, pytest.raises(errors.PermissionDenied):
        caller.set_tenant_policy(tenant, direct_reads=True)
    assert not vault.tenant_keys.get_tenant(acme.id).direct_reads


def test_a_tenant_admin_cannot_reach_another_tenants_policy(server, vault, acme, globex):
    with _client(server, acme.tokens[Role.ADMIN]) as admin:
        for target in (globex.id, "0" * 32):  # another tenant and none look the same
            with pytest.raises(errors.NotFound) as failure:
                admin.set_tenant_policy(target, direct_reads=True)
            assert failure.value.message == "tenant not found"
        with pytest.raises(errors.InvalidArgument):
            admin.set_tenant_policy("../" + globex.id, direct_reads=True)
    assert not vault.tenant_keys.get_tenant(globex.id).direct_reads


def test_a_platform_admin_sets_a_named_tenants_policy_and_it_is_on_the_tenants_record(
    server, vault, acme
):
    token = vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1]
    with _client(server, token) as platform:
        with pytest.raises(errors.InvalidArgument):  # no tenant of its own
            platform.set_tenant_policy(direct_reads=True)
        with pytest.raises(errors.NotFound):
            platform.set_tenant_policy("0" * 32, direct_reads=True)
        assert platform.set_tenant_policy(acme.id, direct_reads=True).direct_reads
        assert platform.set_tenant_policy(acme.id).direct_reads  # unset: unchanged
    changes = [
        r["unmapped"]["reelvault"]
        for r in _records(vault, acme.id)
        if r["api"]["operation"].endswith("/SetTenantPolicy")
    ]
    assert [c.get("detail") for c in changes] == [{"direct_reads": 1}, None]


# -- tenants and assets ----------------------------------------------------------------


def test_a_grant_for_another_tenants_asset_looks_missing(server, acme, globex, data):
    _enable(server, acme)
    _enable(server, globex)
    theirs = _upload(server, globex, data, "secret.mp4")
    with _renderer(server, acme, read_path="direct") as renderer:
        with pytest.raises(errors.NotFound) as failure:
            renderer.open_asset(theirs)
        with pytest.raises(errors.NotFound):
            renderer.download(theirs)
        with pytest.raises(errors.NotFound) as missing:
            renderer.open_asset("0" * 32)
    assert failure.value.message == missing.value.message


@pytest.mark.usefixtures("enabled")
def test_another_tenants_object_swapped_in_is_refused_both_ways(
    server, vault, acme, globex, asset_id, data, seaweed_store
):
    theirs = _upload(server, globex, data, "campaign/master.mp4")  # same bytes and path
    _put(
        seaweed_store, _object_key(vault, asset_id), _get(seaweed_store, _object_key(vault, theirs))
    )
    with _renderer(server, acme) as renderer:
        for path in ("direct", "vault"):
            with pytest.raises(errors.IntegrityError):
                b"".join(renderer.download(asset_id, offset=0, length=10, read_path=path))


@pytest.mark.usefixtures("enabled")
def test_a_grant_answered_for_another_asset_is_refused(server, acme, asset_id, data, monkeypatch):
    """Finding (fixed): the client checked that the grant's header names the tenant and asset of the
    grant's own ``asset`` field, never that this is the asset it asked for; an answer for
    another asset (a server bug, a cache keyed wrongly, a proxy) was read as this one, and
    its bytes returned for ``asset_id``. Through the vault the download's header
    names the asset too; the grant is the one place the client can check, cheaply."""
    other_data = os.urandom(SIZE)
    other = _upload(server, acme, other_data, "campaign/other.mp4")
    with _renderer(server, acme, read_path="direct") as renderer:
        real_open = renderer.open_asset
        monkeypatch.setattr(renderer, "open_asset", lambda _asset_id, **kw: real_open(other, **kw))
        with pytest.raises(errors.IntegrityError):
            b"".join(renderer.download(asset_id))


@pytest.mark.usefixtures("enabled")
def test_a_grant_whose_header_names_another_asset_is_refused(server, acme, asset_id, monkeypatch):
    other = _upload(server, acme, os.urandom(SIZE), "campaign/other.mp4")
    with _renderer(server, acme, read_path="direct") as renderer:
        real_open = renderer.open_asset
        ours = real_open(asset_id)

        def mixed(_asset_id: str, **kw):  # our asset's metadata, the other's header and key
            return dataclasses.replace(real_open(other, **kw), asset=ours.asset)

        monkeypatch.setattr(renderer, "open_asset", mixed)
        with pytest.raises(errors.IntegrityError):
            renderer.download(asset_id, offset=0, length=10)


@pytest.mark.usefixtures("enabled")
def test_direct_reads_turned_off_mid_transfer_go_on_through_the_vault(
    server, vault, acme, asset_id, data, monkeypatch
):
    """Finding (fixed in the client): the URL expires mid-transfer after a tenant admin
    turned direct reads off, so the renewal is refused (FAILED_PRECONDITION); an ``auto``
    read failed with it instead of going on through the vault, which still serves."""
    with _renderer(server, acme, direct_concurrency=2) as renderer:
        real_open = renderer.open_asset
        monkeypatch.setattr(
            renderer, "open_asset", lambda a, **kw: real_open(a, **{**kw, "lifetime": 1})
        )
        stream = renderer.download(asset_id)
        first = next(stream)
        _enable(server, acme, on=False)
        time.sleep(2.5)  # the URL is expired: the next part's GET gets 403, renewal refused
        rest = b"".join(stream)
    assert first + rest == data
    operations = [r["api"]["operation"] for r in _records(vault, acme.id)]
    assert any(op.endswith("/Download") for op in operations)


# -- sizes and lifetimes ---------------------------------------------------------------


@pytest.mark.usefixtures("enabled")
@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"lifetime": -1}, errors.InvalidArgument),
        ({"lifetime": 3601}, errors.InvalidArgument),
        ({"lifetime": 2**31 - 1}, errors.InvalidArgument),
        ({"lifetime": -(2**31)}, errors.InvalidArgument),
        ({"offset": -1, "length": 10}, errors.InvalidArgument),
        ({"offset": 0, "length": 0}, errors.InvalidArgument),
        ({"offset": 0, "length": -5}, errors.InvalidArgument),
        ({"offset": 2**62, "length": 2**62}, errors.OutOfRange),
        ({"offset": 2**63 - 1, "length": 2**63 - 1}, errors.OutOfRange),
        ({"offset": SIZE, "length": 1}, errors.OutOfRange),
        ({"suffix": 0}, errors.InvalidArgument),
        ({"suffix": -1}, errors.InvalidArgument),
    ],
)
def test_bad_lifetimes_and_ranges_release_no_key(server, vault, acme, asset_id, kw, error):
    before = len(_records(vault, acme.id))
    with _renderer(server, acme) as renderer, pytest.raises(error):
        renderer.open_asset(asset_id, **kw)
    released = [
        r
        for r in _records(vault, acme.id)[before:]
        if "key_release" in (r["unmapped"]["reelvault"].get("detail") or {})
    ]
    assert released == []


@pytest.mark.usefixtures("enabled")
@pytest.mark.parametrize(
    "kw",
    [{"lifetime": 2**31}, {"lifetime": 2**63}, {"offset": 2**63, "length": 1}, {"suffix": 2**64}],
)
def test_values_no_field_can_hold_are_invalid_arguments(server, acme, asset_id, kw):
    """Finding (minor, fixed): ``open_asset`` handed values straight to protobuf, which raises a
    bare ``ValueError`` for one that does not fit (int32 lifetime, int64 range); the
    client's other calls check with ``_int_field`` and raise ``InvalidArgument``."""
    with _renderer(server, acme) as renderer, pytest.raises(errors.InvalidArgument):
        renderer.open_asset(asset_id, **kw)


@pytest.mark.usefixtures("enabled")
def test_a_huge_suffix_is_the_whole_asset_and_an_empty_asset_reads(server, acme, asset_id, data):
    empty = _upload(server, acme, b"", "empty.mp4")
    with _renderer(server, acme, read_path="direct") as renderer:
        grant = renderer.open_asset(asset_id, suffix=2**63 - 1)
        assert (grant.offset, grant.length) == (0, SIZE)
        assert b"".join(renderer.download(asset_id, suffix=2**63 - 1)) == data
        assert b"".join(renderer.download(empty)) == b""
        with pytest.raises(errors.OutOfRange):
            renderer.download(empty, suffix=1)


# -- tampering -------------------------------------------------------------------------


@pytest.mark.usefixtures("enabled")
def test_a_tampered_frame_never_falls_back_to_the_vault(
    server, vault, acme, asset_id, seaweed_store
):
    key = _object_key(vault, asset_id)
    body = bytearray(_get(seaweed_store, key))
    header_length = len(parse_header(bytes(body)).serialize())
    body[header_length + 3 * (F + FRAME_OVERHEAD) + 99] ^= 0x40
    _put(seaweed_store, key, bytes(body))
    before = len(_records(vault, acme.id))
    with _renderer(server, acme) as renderer, pytest.raises(errors.IntegrityError):  # auto
        b"".join(renderer.download(asset_id))
    operations = [r["api"]["operation"] for r in _records(vault, acme.id)[before:]]
    assert not any(op.endswith("/Download") for op in operations), operations


@pytest.mark.usefixtures("enabled")
def test_an_extended_object_is_refused_directly_though_the_vault_reads_it(
    server, vault, acme, asset_id, data, seaweed_store
):
    """Bytes appended after the final frame: the vault never reads them and serves the
    asset; a direct read proves the object's size (Content-Range) and refuses it. Stricter
    than the vault, never a wrong byte; documented here."""
    key = _object_key(vault, asset_id)
    _put(seaweed_store, key, _get(seaweed_store, key) + b"appended")
    with _renderer(server, acme) as renderer:
        assert b"".join(renderer.download(asset_id, read_path="vault")) == data
        with pytest.raises(errors.IntegrityError):
            renderer.download(asset_id, offset=0, length=10, read_path="direct")


@pytest.mark.usefixtures("enabled")
def test_a_released_frame_key_can_reseal_frames_and_the_scrub_catches_them(
    server, vault, acme, asset_id, data, seaweed_store
):
    """A known limit (docs/direct-reads.md, docs/threat-model.md): the frame key is the
    AES-GCM key of every frame, so whoever holds it can seal frames as well as open them.
    A grant holder who can also write the bucket can replace frames with plaintext of
    their choosing, and they authenticate, through the vault and in direct reads alike:
    a range cannot tell. The plaintext's SHA-256 recorded at upload can, and the
    integrity scrub compares it (content-mismatch)."""
    with _renderer(server, acme) as renderer:
        grant = renderer.open_asset(asset_id)
    header = open_with_frame_key(grant.header, grant.frame_key, parse_header(grant.header).context)
    message_id = header.header.message_id
    forged = b"FORGED BY A GRANT HOLDER ".ljust(F, b"!")
    sealed = AESGCM(grant.frame_key).encrypt(
        frame_iv(1), forged, frame_aad(message_id, 1, F, final=False)
    )
    frame = (1).to_bytes(4, "big") + frame_iv(1) + sealed
    assert len(frame) == F + FRAME_OVERHEAD
    key = _object_key(vault, asset_id)
    body = bytearray(_get(seaweed_store, key))
    body[len(grant.header) : len(grant.header) + len(frame)] = frame
    _put(seaweed_store, key, bytes(body))
    with _client(server, acme.tokens[Role.ADMIN]) as reader:  # the limit, as it stands
        served = b"".join(reader.download(asset_id, offset=0, length=64, read_path="vault"))
    assert served == forged[:64]
    report = Scrubber(vault.database, vault.tenant_keys, vault.store, vault.clock).run()
    assert [(f.asset_id, f.problem) for f in report.latest.findings] == [
        (asset_id, Problem.CONTENT_MISMATCH)
    ]


# -- replay: what a grant still allows -------------------------------------------------


@pytest.mark.usefixtures("enabled")
def test_after_the_policy_is_turned_off_old_grants_work_until_they_expire(
    server, vault, acme, asset_id, data
):
    """Documented: turning direct reads off stops new grants at once; a URL already
    presigned serves the ciphertext until it expires (grant_max_lifetime bounds how long,
    up to 7 days if so configured) and a released frame key opens it forever. A client's
    cached reader keeps reading directly while its grant is fresh, without a new audit
    event."""
    with _renderer(server, acme) as renderer:
        grant = renderer.open_asset(asset_id)
        assert b"".join(renderer.download(asset_id, offset=0, length=10)) == data[:10]  # cached
        _enable(server, acme, on=False)
        with pytest.raises(errors.FailedPrecondition):
            renderer.open_asset(asset_id)
        before = len(_records(vault, acme.id))
        # the cached reader: still direct, no grant asked for, nothing recorded
        assert b"".join(renderer.download(asset_id, offset=F, length=10)) == data[F : F + 10]
        after = _records(vault, acme.id)[before:]
        assert [r["api"]["operation"] for r in after] == []
    stored = _http_get(grant.url, 0, len(grant.header) - 1)
    assert stored == grant.header


@pytest.mark.usefixtures("enabled")
def test_after_the_kek_is_disabled_a_released_key_still_opens_the_object(
    server, vault, acme, asset_id, data
):
    """Documented: disabling (or destroying) the KEK stops new grants and vault reads; a
    frame key already released, with the ciphertext, still decrypts. Crypto-shredding
    does not reach keys that left the vault."""
    with _renderer(server, acme) as renderer:
        grant = renderer.open_asset(asset_id)
    vault.tenant_keys.rotate(acme.id)
    vault.tenant_keys.disable(acme.id, 1)
    vault.tenant_keys.clear_cache()
    with _renderer(server, acme) as renderer:
        # KeyUnavailable on the server; FAILED_PRECONDITION is all the wire carries
        with pytest.raises(errors.FailedPrecondition):
            renderer.open_asset(asset_id)
        with pytest.raises(errors.FailedPrecondition):
            renderer.download(asset_id, read_path="vault")
        with pytest.raises(errors.FailedPrecondition):  # auto: refused, fell back, refused
            renderer.download(asset_id)
    header = open_with_frame_key(grant.header, grant.frame_key, parse_header(grant.header).context)
    frame = _http_get(grant.url, len(grant.header), len(grant.header) + F + FRAME_OVERHEAD - 1)
    assert header.open_regular(1, memoryview(frame)) == data[:F]


@pytest.mark.usefixtures("enabled")
def test_after_the_asset_is_deleted_its_url_serves_nothing(server, acme, asset_id):
    with _renderer(server, acme) as renderer:
        grant = renderer.open_asset(asset_id)
        renderer.download(asset_id, offset=0, length=10)  # a reader is cached
        with _client(server, acme.tokens[Role.INGEST]) as ingest:
            ingest.delete(asset_id)
        with pytest.raises(HTTPError) as gone:
            _http_get(grant.url, 0, 10)
        assert gone.value.code == 404
        with pytest.raises(errors.NotFound):
            renderer.open_asset(asset_id)
        with pytest.raises(errors.NotFound):
            renderer.download(asset_id, read_path="vault")


@pytest.mark.usefixtures("enabled")
def test_a_deleted_asset_reads_as_missing_not_as_data_loss(server, acme, asset_id):
    """Finding (minor, fixed): a client whose reader for the asset is cached read a deleted
    asset's missing object (HTTP 404) as DATA_LOSS, the status of a damaged store, where
    the vault answers NOT_FOUND. Monitoring that pages on DATA_LOSS pages for a delete."""
    with _renderer(server, acme) as renderer:
        renderer.download(asset_id, offset=0, length=10)  # a reader is cached
        with _client(server, acme.tokens[Role.INGEST]) as ingest:
            ingest.delete(asset_id)
        with pytest.raises(errors.NotFound):
            b"".join(renderer.download(asset_id, offset=0, length=10))


# -- secrets ---------------------------------------------------------------------------


@pytest.mark.usefixtures("enabled")
def test_neither_the_key_nor_the_url_reaches_logs_audit_or_reprs(
    server, vault, acme, asset_id, capfd, caplog
):
    caplog.set_level("DEBUG")
    # as `reelvault serve` configures it (reelvault.logging): botocore's DEBUG lines
    # print the signatures of the requests it signs, presigned URLs included
    caplog.set_level("INFO", logger="botocore")
    with _renderer(server, acme) as renderer:
        grant = renderer.open_asset(asset_id, lifetime=60)
        b"".join(renderer.download(asset_id, read_path="direct"))
        with pytest.raises(errors.FailedPrecondition):
            _enable(server, acme, on=False)
            renderer.open_asset(asset_id)
    signature = urlsplit(grant.url).query.split("X-Amz-Signature=")[1].split("&")[0]
    secrets = [grant.frame_key.hex(), signature, grant.url]
    secrets.append(base64.b64encode(grant.frame_key).decode())
    out, err = capfd.readouterr()
    records = json.dumps(_records(vault, acme.id))
    text = "\n".join([out, err, caplog.text, records, repr(grant), str(grant)])
    for secret in secrets:
        assert secret not in text


@pytest.mark.usefixtures("enabled")
def test_a_refused_grant_is_audited_and_releases_nothing(server, vault, acme, asset_id):
    _enable(server, acme, on=False)
    with _renderer(server, acme) as renderer, pytest.raises(errors.FailedPrecondition):
        renderer.open_asset(asset_id)
    grants = [r for r in _records(vault, acme.id) if r["api"]["operation"].endswith("/OpenAsset")]
    assert len(grants) == 1
    ours = grants[0]["unmapped"]["reelvault"]
    assert ours["outcome"] != "allowed"
    assert "key_release" not in (ours.get("detail") or {})


# -- a store behind the URL that misbehaves --------------------------------------------


class _Endpoint(http.server.BaseHTTPRequestHandler):
    """The public endpoint renderers reach: SeaweedFS's objects, answered by ``mode``."""

    protocol_version = "HTTP/1.1"
    server: _EndpointServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        server.requests += 1
        _, _bucket, key = urlsplit(self.path).path.split("/", 2)
        body = _get(server.store, unquote(key))
        status, headers = server.mode(self, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        payload = server.body
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _EndpointServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    store: S3ObjectStore
    mode: Callable[[_Endpoint, bytes], tuple[int, dict[str, str]]]
    body: bytes
    requests: int


def _expired(handler: _Endpoint, _body: bytes) -> tuple[int, dict[str, str]]:
    handler.server.body = (
        b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    )
    return 403, {}


def _ignores_range(handler: _Endpoint, body: bytes) -> tuple[int, dict[str, str]]:
    handler.server.body = body
    return 200, {}


@contextmanager
def _misbehaving_store_server(
    database, root_provider, clock, settings, seaweed_store, mode
) -> Iterator[tuple[ServerThread, Vault, _EndpointServer]]:
    endpoint = _EndpointServer(("127.0.0.1", 0), _Endpoint)
    endpoint.store, endpoint.mode, endpoint.body, endpoint.requests = seaweed_store, mode, b"", 0
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    store = S3ObjectStore(
        seaweed_store.bucket,
        client=seaweed_store.client,
        public_endpoint_url=f"http://127.0.0.1:{endpoint.server_address[1]}",
        access_key="x",
        secret_key="y",
    )
    vault = Vault.from_parts(database=database, root=root_provider, store=store, clock=clock)
    server = ServerThread(vault, settings)
    try:
        yield server, vault, endpoint
    finally:
        server.close()
        endpoint.shutdown()
        endpoint.server_close()


def test_a_store_that_ignores_range_falls_back_in_auto_and_is_unavailable_in_direct(
    database, root_provider, clock, settings, seaweed_store, data
):
    with _misbehaving_store_server(
        database, root_provider, clock, settings, seaweed_store, _ignores_range
    ) as (server, vault, endpoint):
        acme = make_tenancy(vault, "acme")
        _enable(server, acme)
        asset_id = _upload(server, acme, data, "m.mp4")
        with _renderer(server, acme) as renderer:
            assert b"".join(renderer.download(asset_id, offset=7, length=F)) == data[7 : 7 + F]
            assert endpoint.requests == 1  # one look at the store, then the vault
        with _renderer(server, acme) as renderer, pytest.raises(errors.Unavailable):
            renderer.download(asset_id, read_path="direct")


def test_a_store_that_keeps_saying_expired_falls_back_in_auto(
    database, root_provider, clock, settings, seaweed_store, data
):
    """Finding (fixed): the store refuses every URL as expired (its clock runs ahead of the vault's
    by more than the grant's lifetime; a proxy with its own clock). The grant is renewed
    once, refused again, and ``GrantExpired`` (not a ``ReelvaultError``) escaped
    ``Client.download``, in ``auto`` too, where reading through the vault is what the
    caller asked for when the store cannot be read. ``direct`` should raise an error of
    the tree (UNAVAILABLE)."""
    with _misbehaving_store_server(
        database, root_provider, clock, settings, seaweed_store, _expired
    ) as (server, vault, _endpoint):
        acme = make_tenancy(vault, "acme")
        _enable(server, acme)
        asset_id = _upload(server, acme, data, "m.mp4")
        with _renderer(server, acme) as renderer:
            assert b"".join(renderer.download(asset_id)) == data
        with _renderer(server, acme) as renderer, pytest.raises(errors.Unavailable):
            renderer.download(asset_id, read_path="direct")
