"""Viewer data in the domain: the erasure proof over everything that is left, retention
and legal holds, consent semantics across replicas, and the races between erasure and
the writes that bind data to a subject.

The erasure proof complements test_erasure_proof.py: instead of the keys a reader is meant
to use, it sweeps every row of every catalog table (whatever the schema holds today), the
keyring file and every stored object, builds every key all of that can yield (root keys,
every KEK version whatever its state, pseudonym keys, every subject key under every
subject's binding, the data keys of every object left, and anything 32-byte-shaped in the
catalog), and shows that none of it opens what was captured before the erasure: neither
with reelvault's code, nor with the official aws-encryption-sdk, nor through the vault's
own read paths once the captured rows and object are put back.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aws_encryption_sdk
import pytest
import sqlalchemy as sa
import structlog
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
from sqlalchemy import func, select

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.audit.verify import verify_export
from reelvault.catalog.audit import AuditFilter
from reelvault.catalog.tables import (
    AssetRow,
    DeletedObjectRow,
    PayloadRow,
    SubjectRow,
    TenantKeyVersionRow,
    TenantRow,
    UploadRow,
)
from reelvault.cli.audit import export_line
from reelvault.client import AuditRecord
from reelvault.clock import FakeClock
from reelvault.crypto import EncryptedDataKey, EncryptionContext, decrypt_stream, unwrap_key
from reelvault.crypto.format import parse_header
from reelvault.errors import (
    DecryptionError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    KeyUnavailable,
    NotFound,
)
from reelvault.keys.local import LocalKeyring, init_keyring
from reelvault.keys.provider import WrappedKey
from reelvault.keys.tenant import _wrapping_context, pseudonym_context, unpack_wrapped
from reelvault.objects import object_context
from reelvault.storage.memory import MemoryObjectStore

pytestmark = pytest.mark.db

VIEWER = "ada.lovelace+viewer@example.com"
OTHER = "charles.babbage@example.com"
PURPOSE = "personalization"
PAYLOAD = b'{"name": "Ada", "city": "London"}'
RENDITION = b"personalized frames for Ada " * 3000
PLAIN = b"a campaign's shared intro " * 500


# -- keys and oracles ---------------------------------------------------------------------


class _AnyName(RawMasterKeyProvider):  # type: ignore[misc]
    """The official SDK's Raw AES keyring answering every key name with one candidate."""

    provider_id = "reelvault"
    candidate: bytes

    def _get_raw_key(self, key_id: bytes | str) -> WrappingKey:
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=self.candidate,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


class _Any:
    """A reelvault KeyResolver answering every key name with one candidate key."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self.key


def sdk_decrypt(message: bytes, key: bytes) -> bytes | None:
    """The official aws-encryption-sdk's plaintext of ``message`` under ``key`` (None if
    it does not open)."""
    provider = _AnyName()
    provider.candidate = key
    for edk in parse_header(message).data_keys:
        provider.add_master_key(edk.provider_info[: -(4 + 4 + 12)].decode())
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    try:
        plaintext, _ = client.decrypt(source=message, key_provider=provider)
    except Exception:
        return None
    return bytes(plaintext)


def reelvault_decrypt(message: bytes, key: bytes, context: EncryptionContext) -> bytes | None:
    try:
        return b"".join(decrypt_stream([message], _Any(key), context))
    except DecryptionError:
        return None


def unwraps(edk: EncryptedDataKey, key: bytes, context: EncryptionContext) -> bytes | None:
    try:
        return unwrap_key(edk, _Any(key), context)
    except DecryptionError:
        return None


def subject_context(tenant_id: str, pseudonym: str) -> EncryptionContext:
    return EncryptionContext(
        {
            "reelvault:tenant": tenant_id,
            "reelvault:subject": pseudonym,
            "reelvault:kind": "subject-key",
        }
    )


# -- the catalog and the store, whole ------------------------------------------------------


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, default=str, ensure_ascii=False).encode("utf-8")


def catalog_cells(vault: Vault) -> list[tuple[str, str, Any]]:
    """(table, column, value) of every cell of every table the catalog has."""
    engine = vault.database.engine
    cells: list[tuple[str, str, Any]] = []
    with engine.connect() as connection:
        names = sa.inspect(connection).get_table_names()
        assert {"payloads", "subjects", "assets", "audit_events", "tenant_key_versions"} <= set(
            names
        )
        for name in names:
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            for row in connection.execute(sa.select(table)):
                cells.extend((name, column, value) for column, value in row._mapping.items())
    return cells


def stored_object(vault: Vault, key: str) -> bytes:
    info = vault.store.head(key)
    assert info is not None
    return vault.store.get_range(key, 0, info.size)


def stored_objects(vault: Vault) -> dict[str, bytes]:
    return {key: stored_object(vault, key) for key in vault.store.list_keys("")}


def key_shaped(value: Any) -> list[bytes]:
    """What a cell could hold as a raw 256-bit key: 32 bytes, or 32 bytes in hex or base64."""
    found: list[bytes] = []
    if isinstance(value, bytes | bytearray | memoryview) and len(value) == 32:
        found.append(bytes(value))
    if isinstance(value, str):
        for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(value + ("" if decode is bytes.fromhex else "=" * (-len(value) % 4)))
            except (ValueError, binascii.Error):
                continue
            if len(raw) == 32:
                found.append(raw)
    return found


def every_key_left(vault: Vault, keyring: Path) -> set[bytes]:
    """Every key that the keyring file, the catalog and the store can still yield."""
    document = json.loads(keyring.read_text())
    roots = {base64.b64decode(k["material"]) for k in document["keys"]}
    root = LocalKeyring.load(keyring)
    keks: set[bytes] = set()
    with vault.database.transaction(readonly=True) as session:
        for version in session.scalars(select(TenantKeyVersionRow)):
            if version.wrapped_key is not None:  # every state: a destroyed one has none
                keks.add(
                    root.unwrap(
                        WrappedKey(version.root_key_id, version.wrapped_key),
                        _wrapping_context(version.tenant_id, version.version),
                    )
                )
        pseudonym_keys = {
            root.unwrap(unpack_wrapped(row.pseudonym_key), pseudonym_context(row.id))
            for row in session.scalars(select(TenantRow))
            if row.pseudonym_key is not None
        }
        subjects = [
            (r.tenant_id, r.pseudonym, r.wrapped_key) for r in session.scalars(select(SubjectRow))
        ]
        messages = [(r.tenant_id, r.id, r.message) for r in session.scalars(select(PayloadRow))]
        assets = [
            (r.tenant_id, r.id, r.header, r.key_slot) for r in session.scalars(select(AssetRow))
        ]
    # every subject key, under every subject's binding (a row copied elsewhere included)
    subject_keys: set[bytes] = set()
    for _, _, wrapped in subjects:
        if wrapped is None:
            continue
        edk = EncryptedDataKey.parse(wrapped)
        for tenant_id, pseudonym, _ in subjects:
            for kek in keks | roots:
                key = unwraps(edk, kek, subject_context(tenant_id, pseudonym))
                if key is not None:
                    subject_keys.add(key)
    wrapping = keks | subject_keys
    # the data keys of every object left
    data_keys: set[bytes] = set()
    edks = [
        (edk, object_context(t, i, "payload"))
        for t, i, message in messages
        for edk in parse_header(message).data_keys
    ]
    for t, i, header, slot in assets:
        context = object_context(t, i, "asset")
        edks += [(edk, context) for edk in parse_header(header).data_keys]
        if slot is not None:
            edks.append((EncryptedDataKey.parse(slot), context))
    for edk, context in edks:
        for key in wrapping:
            data_key = unwraps(edk, key, context)
            if data_key is not None:
                data_keys.add(data_key)
    raw = {k for _, _, value in catalog_cells(vault) for k in key_shaped(value)}
    return roots | keks | pseudonym_keys | subject_keys | data_keys | raw


# -- a tenant with viewer data ----------------------------------------------------------


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    init_keyring(path)
    return path


def make_vault(database, keyring: Path, clock: FakeClock, store: MemoryObjectStore) -> Vault:
    return Vault.from_parts(
        database=database, root=LocalKeyring.load(keyring), store=store, clock=clock
    )


@pytest.fixture
def object_store() -> MemoryObjectStore:
    return MemoryObjectStore()


@pytest.fixture
def vault(database, keyring, clock, object_store) -> Vault:
    return make_vault(database, keyring, clock, object_store)


@pytest.fixture
def acme(vault: Vault) -> str:
    return vault.tenant_keys.create_tenant("acme").id


def upload(vault: Vault, tenant_id: str, path: str, data: bytes, subject_id: str | None = None):
    pending = vault.assets.begin_upload(tenant_id, UploadSpec(path=path, subject_id=subject_id))
    pending.write(data)
    return pending.complete()


def object_key(vault: Vault, asset_id: str) -> str:
    with vault.database.transaction(readonly=True) as session:
        return session.scalars(select(AssetRow.object_key).where(AssetRow.id == asset_id)).one()


def grant(vault: Vault, tenant_id: str, subject_id: str = VIEWER, purpose: str = PURPOSE, **kw):
    return vault.consents.record(
        tenant_id, subject_id, purpose, granted=kw.pop("granted", True), source="form", **kw
    )


def read_all(vault: Vault, tenant_id: str, asset_id: str) -> bytes:
    return b"".join(vault.assets.open_download(tenant_id, asset_id).pieces)


def audit_export(vault: Vault, tenant_id: str) -> tuple[list[bytes], bool]:
    """The tenant's log as ``reelvault audit export`` writes it, and whether it verifies."""
    vault.audit_log.integrate(tenant_id)
    checkpoint = vault.audit_log.checkpoint(tenant_id)
    lines = [
        export_line(AuditRecord(e.seq, e.record, e.leaf_hash, e.record is None))
        for e in vault.audit_log.export(tenant_id, 0, checkpoint.size)
    ]
    report = verify_export(lines, checkpoint.note, vault.audit_log.verifier_key())
    return lines, report.ok


@dataclass
class Captured:
    """What an adversary kept before the erasure."""

    tenant_id: str
    pseudonym: str
    payload_row: dict[str, Any]
    rendition_row: dict[str, Any]
    rendition_object: bytes
    wrapped_subject_key: bytes
    kek_rows: list[tuple[int, str, bytes]]
    subject_key: bytes
    data_keys: list[bytes]

    @property
    def payload_context(self) -> EncryptionContext:
        return object_context(self.tenant_id, self.payload_row["id"], "payload")

    @property
    def rendition_context(self) -> EncryptionContext:
        return object_context(self.tenant_id, self.rendition_row["id"], "asset")

    def edks(self) -> list[tuple[EncryptedDataKey, EncryptionContext]]:
        return [
            (edk, self.payload_context)
            for edk in parse_header(self.payload_row["message"]).data_keys
        ] + [(edk, self.rendition_context) for edk in parse_header(self.rendition_object).data_keys]


def row_dict(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in sa.inspect(row).mapper.column_attrs}


def capture(vault: Vault, tenant_id: str) -> Captured:
    payload = vault.payloads.put(tenant_id, VIEWER, purpose=PURPOSE, data=PAYLOAD)
    rendition = upload(vault, tenant_id, "ada/greeting.mp4", RENDITION, subject_id=VIEWER)
    assert rendition.subject == payload.pseudonym
    stored = stored_object(vault, object_key(vault, rendition.id))
    with vault.database.transaction(readonly=True) as session:
        payload_row = row_dict(session.get(PayloadRow, payload.id))
        rendition_row = row_dict(session.get(AssetRow, rendition.id))
        wrapped = session.get(SubjectRow, (tenant_id, payload.pseudonym)).wrapped_key
        kek_rows = [
            (r.version, r.root_key_id, r.wrapped_key)
            for r in session.scalars(
                select(TenantKeyVersionRow).where(TenantKeyVersionRow.tenant_id == tenant_id)
            )
        ]
    assert rendition_row["header"] == stored[: len(rendition_row["header"])]
    subject_key = vault.subjects.subject_key(tenant_id, VIEWER).key.key
    captured = Captured(
        tenant_id=tenant_id,
        pseudonym=payload.pseudonym,
        payload_row=payload_row,
        rendition_row=rendition_row,
        rendition_object=stored,
        wrapped_subject_key=wrapped,
        kek_rows=kek_rows,
        subject_key=subject_key,
        data_keys=[],
    )
    captured.data_keys = [unwrap_key(e, _Any(subject_key), c) for e, c in captured.edks()]
    return captured


def what_opens(captured: Captured, keys: set[bytes]) -> list[str]:
    opened = []
    for key in keys:
        if sdk_decrypt(captured.payload_row["message"], key) is not None:
            opened.append("payload (official sdk)")
        if reelvault_decrypt(captured.payload_row["message"], key, captured.payload_context):
            opened.append("payload (reelvault)")
        if sdk_decrypt(captured.rendition_object, key) is not None:
            opened.append("rendition (official sdk)")
        if reelvault_decrypt(captured.rendition_object, key, captured.rendition_context):
            opened.append("rendition (reelvault)")
        for edk, context in captured.edks():
            if unwraps(edk, key, context) is not None:
                opened.append("a wrapped data key")
    return opened


# -- 1. the erasure proof -------------------------------------------------------------------


def test_after_erasure_nothing_in_the_catalog_keyring_or_store_opens_what_was_captured(
    vault: Vault, keyring: Path, acme: str
):
    globex = vault.tenant_keys.create_tenant("globex").id
    captured = capture(vault, acme)
    grant(vault, acme)
    assert vault.payloads.get(acme, captured.payload_row["id"], PURPOSE)[1] == PAYLOAD
    # what stays: another viewer of the tenant, the same viewer id at another tenant, a
    # shared asset, a second KEK version
    other = vault.payloads.put(acme, OTHER, purpose=PURPOSE, data=b'{"n": "Charles"}')
    upload(vault, acme, "charles.mp4", b"charles" * 100, subject_id=OTHER)
    same_viewer_elsewhere = vault.payloads.put(globex, VIEWER, purpose=PURPOSE, data=b"{}")
    plain = upload(vault, acme, "intro.mp4", PLAIN)
    vault.tenant_keys.rotate(acme)
    vault.lifecycle.rewrap(acme)
    # The official SDK is an oracle that can succeed: the tenant KEK opens a shared asset,
    # the subject key (and only it, not the KEK) the viewer's payload.
    kek = vault.tenant_keys.encryption_kek(acme).key
    plain_object = stored_object(vault, object_key(vault, plain.id))
    # (the asset was sealed under version 1; the rewrap moved its slot in the catalog)
    assert sdk_decrypt(plain_object, captured_kek(captured, keyring)) == PLAIN
    assert sdk_decrypt(captured.payload_row["message"], kek) is None
    assert sdk_decrypt(captured.payload_row["message"], captured.subject_key) == PAYLOAD
    # The sweep finds the subject key while it exists, so the procedure can fail.
    before = set(what_opens(captured, every_key_left(vault, keyring)))
    assert {"payload (official sdk)", "payload (reelvault)", "rendition (official sdk)"} <= before
    assert "rendition (reelvault)" in before and "a wrapped data key" in before

    erased = vault.privacy.erase(acme, VIEWER)
    assert (erased.key_destroyed, erased.payloads_deleted, erased.assets_deleted) == (True, 1, 1)

    keys = every_key_left(vault, keyring)
    assert what_opens(captured, keys) == []
    # The subject key and the data keys it wrapped are nowhere: not derivable, not stored.
    assert captured.subject_key not in keys
    assert not set(captured.data_keys) & keys
    cells = catalog_cells(vault)
    blobs = [as_bytes(value) for _, _, value in cells] + list(stored_objects(vault).values())
    secrets_ = [captured.subject_key, *captured.data_keys, captured.wrapped_subject_key]
    tails = [captured.payload_row["message"][-64:], captured.rendition_object[-64:]]
    for needle in [*secrets_, *tails]:
        assert not any(needle in blob for blob in blobs)
    assert not any(captured.rendition_row["header"] in blob for blob in blobs), (
        "the rendition's header (its wrapped data key) is still stored"
    )
    # the subject's row stays, keyless, with its pseudonym
    with vault.database.transaction(readonly=True) as session:
        subject = session.get(SubjectRow, (acme, captured.pseudonym))
        assert subject is not None and subject.pseudonym == captured.pseudonym
        assert subject.wrapped_key is None and subject.kek_version is None
        assert subject.erased_at is not None
    # everything else still reads
    assert vault.payloads.rows_of(acme, other.pseudonym).__next__()[1] == b'{"n": "Charles"}'
    assert next(vault.payloads.rows_of(globex, same_viewer_elsewhere.pseudonym))[1] == b"{}"
    assert read_all(vault, acme, plain.id) == PLAIN


def captured_kek(captured: Captured, keyring: Path) -> bytes:
    """KEK version 1 of the captured tenant, from the captured row and the keyring file."""
    version, root_key_id, wrapped = next(r for r in captured.kek_rows if r[0] == 1)
    return LocalKeyring.load(keyring).unwrap(
        WrappedKey(root_key_id, wrapped), _wrapping_context(captured.tenant_id, version)
    )


def test_after_erasure_the_vault_itself_cannot_open_the_captured_rows_put_back(
    vault: Vault, acme: str
):
    """The adversary restores the payload row, the rendition's row and its object (a
    partial backup): every read path of the vault refuses them, opaquely."""
    captured = capture(vault, acme)
    grant(vault, acme)
    key = captured.rendition_row["object_key"]
    vault.privacy.erase(acme, VIEWER)
    assert vault.store.head(key) is None
    with vault.database.transaction() as session:
        session.add(PayloadRow(**captured.payload_row))
        session.add(AssetRow(**captured.rendition_row))
    vault.store.put(key, [captured.rendition_object])
    with pytest.raises(DecryptionError) as caught:
        vault.payloads.get(acme, captured.payload_row["id"], PURPOSE)
    assert str(caught.value) == "ciphertext could not be decrypted"
    with pytest.raises(DecryptionError):
        vault.assets.open_download(acme, captured.rendition_row["id"])
    with pytest.raises(DecryptionError):
        list(vault.payloads.rows_of(acme, captured.pseudonym))
    # nor can it seal anything new for the subject
    with pytest.raises(FailedPrecondition):
        vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    with pytest.raises(FailedPrecondition):
        vault.assets.begin_upload(acme, UploadSpec(path="ada/again.mp4", subject_id=VIEWER))


def test_after_erasure_the_audit_log_verifies_and_names_the_pseudonym_only(vault: Vault, acme: str):
    with structlog.testing.capture_logs() as logs:
        captured = capture(vault, acme)
        grant(vault, acme)
        vault.payloads.get(acme, captured.payload_row["id"], PURPOSE)
        vault.payloads.list(acme, VIEWER)
        vault.privacy.hash_subject(acme, VIEWER)
        b"".join(vault.privacy.export(acme, VIEWER))
        vault.privacy.set_legal_hold(acme, VIEWER, True)
        vault.privacy.set_legal_hold(acme, VIEWER, False)
        vault.privacy.erase(acme, VIEWER)
    lines, verified = audit_export(vault, acme)
    assert verified
    raw = VIEWER.encode()
    assert not any(raw in line for line in lines)
    assert not any(VIEWER in json.dumps(entry, default=str) for entry in logs)
    records = [json.loads(line) for line in lines]
    erased = [r for r in records if b'"subject.erased"' in canonical(r)]
    assert erased and all(captured.pseudonym.encode() in canonical(r) for r in erased)
    # (the events of each call are the RPC layer's: test_rpc_privacy_attacks.py checks them)
    # and no column of any table holds the raw viewer id, in any of its spellings
    needles = {raw, VIEWER.lower().encode(), VIEWER.encode("utf-16-le"), raw.hex().encode()}
    for table, column, value in catalog_cells(vault):
        blob = as_bytes(value)
        assert not any(n in blob for n in needles), (table, column)


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


# -- races between erasure and the writes that bind data to a subject ---------------------


def test_a_payload_whose_subject_is_erased_while_it_is_sealed_never_lands(
    vault: Vault, acme: str, monkeypatch: pytest.MonkeyPatch
):
    """The subject key is read, then the erasure commits (another request, another
    replica), then the payload's row would commit: it must not, or a keyless payload of an
    erased subject would outlive the erasure (listed, exported, counted)."""
    vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    real = vault.subjects.subject_key

    def then_erase(tenant_id: str, subject_id: str):
        bound = real(tenant_id, subject_id)
        eraser = threading.Thread(target=vault.privacy.erase, args=(acme, VIEWER))
        eraser.start()
        eraser.join(30)
        return bound

    monkeypatch.setattr(vault.subjects, "subject_key", then_erase)
    with pytest.raises(FailedPrecondition):
        vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=PAYLOAD)
    with vault.database.transaction(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(PayloadRow)) == 0


def test_a_rendition_upload_spanning_an_erasure_never_commits(vault: Vault, acme: str):
    pending = vault.assets.begin_upload(acme, UploadSpec(path="ada/late.mp4", subject_id=VIEWER))
    pending.write(RENDITION)
    vault.privacy.erase(acme, VIEWER)
    with pytest.raises(FailedPrecondition):
        pending.complete()
    with vault.database.transaction(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(AssetRow)) == 0
        assert session.scalar(select(func.count()).select_from(UploadRow)) == 0
    assert list(vault.store.list_keys("t/")) == []
    # a shared upload of the same tenant still commits
    assert read_all(vault, acme, upload(vault, acme, "intro.mp4", PLAIN).id) == PLAIN


# -- 3. retention and legal holds ---------------------------------------------------------


def purge_events(vault: Vault, tenant_id: str) -> list[Any]:
    page = vault.audit_log.list_events(
        tenant_id, start_us=0, end_us=2**62, where=AuditFilter(actions=["payload.purge"])
    )
    return page.events


def test_an_expired_payload_is_not_found_then_purged_and_the_purge_is_audited(
    vault: Vault, acme: str, clock: FakeClock
):
    grant(vault, acme)
    short = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"short", ttl_seconds=60)
    kept = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"kept")
    assert short.expires_at == short.created_at + timedelta(seconds=60)
    clock.advance(59)
    assert vault.payloads.get(acme, short.id, PURPOSE)[1] == b"short"
    clock.advance(1)
    with pytest.raises(NotFound):
        vault.payloads.get(acme, short.id, PURPOSE)
    assert [p.id for p in vault.payloads.list(acme, VIEWER)[0]] == [kept.id]
    assert purge_events(vault, acme) == []
    assert vault.payloads.purge_expired() == {acme: 1}
    with vault.database.transaction(readonly=True) as session:
        assert session.get(PayloadRow, short.id) is None
        assert session.get(PayloadRow, kept.id) is not None
    (event,) = purge_events(vault, acme)
    assert event.action == "payload.purge"
    assert vault.payloads.purge_expired() == {}
    assert vault.payloads.get(acme, kept.id, PURPOSE)[1] == b"kept"


@pytest.mark.parametrize("ttl", [0, -1, 10 * 365 * 24 * 3600 + 1, 2**62])
def test_a_ttl_out_of_range_is_refused_and_nothing_is_stored(vault: Vault, acme: str, ttl: int):
    with pytest.raises(InvalidArgument):
        vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}", ttl_seconds=ttl)
    with vault.database.transaction(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(PayloadRow)) == 0


def test_a_legal_hold_keeps_expired_payloads_and_blocks_erasure_until_released(
    vault: Vault, acme: str, clock: FakeClock
):
    held = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"held", ttl_seconds=10)
    free = vault.payloads.put(acme, OTHER, purpose=PURPOSE, data=b"free", ttl_seconds=10)
    status = vault.privacy.set_legal_hold(acme, VIEWER, True)
    assert status.legal_hold and status.pseudonym == held.pseudonym
    clock.advance(3600)
    # only the held subject's payload stays
    assert vault.payloads.purge_expired() == {acme: 1}
    with vault.database.transaction(readonly=True) as session:
        assert session.get(PayloadRow, held.id) is not None
        assert session.get(PayloadRow, free.id) is None
    with pytest.raises(FailedPrecondition):
        vault.privacy.erase(acme, VIEWER)
    with vault.database.transaction(readonly=True) as session:
        subject = session.get(SubjectRow, (acme, held.pseudonym))
        assert subject.wrapped_key is not None and subject.erased_at is None
    # a held subject's data is still exported whole (expired, not yet purged)
    document = json.loads(b"".join(vault.privacy.export(acme, VIEWER)))
    assert document["legal_hold"] is True
    assert [p["id"] for p in document["payloads"]] == [held.id]
    assert vault.privacy.set_legal_hold(acme, VIEWER, False).legal_hold is False
    assert vault.payloads.purge_expired() == {acme: 1}
    erased = vault.privacy.erase(acme, VIEWER)
    assert erased.key_destroyed and erased.payloads_deleted == 0


def test_a_hold_set_between_the_check_and_the_shred_still_wins(
    vault: Vault, acme: str, monkeypatch: pytest.MonkeyPatch
):
    vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    real = vault.subjects.info

    def then_hold(tenant_id: str, pseudonym: str):
        info = real(tenant_id, pseudonym)
        vault.subjects.set_legal_hold(acme, VIEWER, True)
        return info

    monkeypatch.setattr(vault.subjects, "info", then_hold)
    with pytest.raises(FailedPrecondition):
        vault.privacy.erase(acme, VIEWER)
    with vault.database.transaction(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(PayloadRow)) == 1


# -- 4. consent ---------------------------------------------------------------------------


def now_of(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock.now(), UTC)


def readable(vault: Vault, tenant_id: str, payload_id: str) -> bool:
    try:
        vault.payloads.get(tenant_id, payload_id, PURPOSE)
    except FailedPrecondition:
        return False
    return True


def test_the_latest_effective_time_wins_not_the_latest_recorded(
    vault: Vault, acme: str, clock: FakeClock
):
    payload = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    assert not readable(vault, acme, payload.id)  # no decision: no
    now = now_of(clock)
    grant(vault, acme, effective_at=now - timedelta(hours=1))
    assert readable(vault, acme, payload.id)
    # a withdrawal collected offline two hours ago, recorded now: older, so it loses
    grant(vault, acme, granted=False, effective_at=now - timedelta(hours=2))
    assert readable(vault, acme, payload.id)
    # another purpose's withdrawal changes nothing here
    grant(vault, acme, purpose="marketing", granted=False)
    assert readable(vault, acme, payload.id)
    clock.advance(1)
    grant(vault, acme, granted=False)
    assert not readable(vault, acme, payload.id)
    # ties: the one recorded last
    grant(vault, acme, granted=True, effective_at=now_of(clock))
    assert readable(vault, acme, payload.id)
    _, history = vault.consents.history(acme, VIEWER, PURPOSE)
    assert [(d.granted, d.effective_at) for d in history] == [
        (False, now - timedelta(hours=2)),
        (True, now - timedelta(hours=1)),
        (False, now + timedelta(seconds=1)),
        (True, now + timedelta(seconds=1)),
    ]
    assert all(d.subject == payload.pseudonym and d.source == "form" for d in history)
    _, everything = vault.consents.history(acme, VIEWER)
    assert len(everything) == 5 and {d.purpose for d in everything} == {PURPOSE, "marketing"}


def test_a_decision_in_the_future_is_refused(vault: Vault, acme: str, clock: FakeClock):
    for later in (timedelta(minutes=5, seconds=1), timedelta(days=365)):
        with pytest.raises(InvalidArgument):
            grant(vault, acme, effective_at=now_of(clock) + later)
    assert vault.consents.history(acme, VIEWER)[1] == []


def test_a_grant_dated_ahead_within_the_skew_cannot_outlive_a_withdrawal(
    vault: Vault, acme: str, clock: FakeClock
):
    """Clock skew lets a decision be dated a few minutes ahead. Were it stored so, it
    would be 'the latest' for those minutes and a withdrawal recorded right after would
    not take effect: reads would go on despite it."""
    payload = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    ahead = grant(vault, acme, effective_at=now_of(clock) + timedelta(minutes=4))
    assert ahead.effective_at <= now_of(clock)
    assert readable(vault, acme, payload.id)
    clock.advance(1)
    grant(vault, acme, granted=False)
    assert not readable(vault, acme, payload.id)


def test_a_withdrawal_blocks_reads_at_once_on_another_replica(
    database, keyring: Path, clock: FakeClock, object_store: MemoryObjectStore
):
    first = make_vault(database, keyring, clock, object_store)
    second = make_vault(database, keyring, clock, object_store)
    acme = first.tenant_keys.create_tenant("acme").id
    payload = first.payloads.put(acme, VIEWER, purpose=PURPOSE, data=PAYLOAD)
    grant(first, acme)
    for _ in range(3):  # warm whatever the second replica caches
        assert second.payloads.get(acme, payload.id, PURPOSE)[1] == PAYLOAD
    grant(first, acme, granted=False)  # no clock movement: no cache may expire meanwhile
    with pytest.raises(FailedPrecondition):
        second.payloads.get(acme, payload.id, PURPOSE)
    grant(first, acme, granted=True)
    assert second.payloads.get(acme, payload.id, PURPOSE)[1] == PAYLOAD
    # an erasure on the first replica is in force on the second at once
    rendition = upload(second, acme, "ada.mp4", RENDITION, subject_id=VIEWER)
    first.privacy.erase(acme, VIEWER)
    with pytest.raises(NotFound):
        second.payloads.get(acme, payload.id, PURPOSE)
    with pytest.raises(NotFound):
        second.assets.open_download(acme, rendition.id)
    with pytest.raises(FailedPrecondition):
        second.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    # consent history survives the erasure, in order, on either replica
    _, history = second.consents.history(acme, VIEWER)
    assert [d.granted for d in history] == [True, False, True]
    assert [d.recorded_at for d in history] == sorted(d.recorded_at for d in history)


def test_a_subject_key_is_never_served_from_a_cache_after_erasure(
    vault: Vault, acme: str, clock: FakeClock
):
    """Within the KEK cache's TTL (no clock movement), the erased subject's resolver
    yields nothing: the subject key is read from its row on every use."""
    payload = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=PAYLOAD)
    resolver = vault.subjects.resolver(acme, payload.pseudonym)
    with vault.database.transaction(readonly=True) as session:
        message = session.get(PayloadRow, payload.id).message
    context = object_context(acme, payload.id, "payload")
    assert b"".join(decrypt_stream([message], resolver, context)) == PAYLOAD
    vault.privacy.erase(acme, VIEWER)
    with pytest.raises(DecryptionError):
        b"".join(decrypt_stream([message], resolver, context))


# -- the subject key's binding --------------------------------------------------------------


def test_a_subject_key_row_copied_to_another_subject_or_tenant_does_not_unwrap(
    vault: Vault, acme: str
):
    globex = vault.tenant_keys.create_tenant("globex").id
    ada = vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=PAYLOAD)
    charles = vault.payloads.put(acme, OTHER, purpose=PURPOSE, data=b"{}")
    elsewhere = vault.payloads.put(globex, VIEWER, purpose=PURPOSE, data=b"{}")
    grant(vault, acme, OTHER)
    grant(vault, globex)
    with vault.database.transaction() as session:
        wrapped = session.get(SubjectRow, (acme, ada.pseudonym)).wrapped_key
        session.get(SubjectRow, (acme, charles.pseudonym)).wrapped_key = wrapped
        session.get(SubjectRow, (globex, elsewhere.pseudonym)).wrapped_key = wrapped
    for tenant_id, subject_id, payload_id in (
        (acme, OTHER, charles.id),
        (globex, VIEWER, elsewhere.id),
    ):
        with pytest.raises((DecryptionError, KeyUnavailable)):
            vault.payloads.get(tenant_id, payload_id, PURPOSE)
        with pytest.raises((DecryptionError, KeyUnavailable)):
            vault.payloads.put(tenant_id, subject_id, purpose=PURPOSE, data=b"{}")
    # the subject whose key it is still reads
    grant(vault, acme)
    assert vault.payloads.get(acme, ada.id, PURPOSE)[1] == PAYLOAD


def test_a_rendition_relabelled_to_another_subject_or_to_none_does_not_open(
    vault: Vault, acme: str
):
    vault.payloads.put(acme, OTHER, purpose=PURPOSE, data=b"{}")
    charles = vault.subjects.pseudonym(acme, OTHER)
    rendition = upload(vault, acme, "ada.mp4", RENDITION, subject_id=VIEWER)
    for relabel in (charles, None):
        with vault.database.transaction() as session:
            session.get(AssetRow, rendition.id).subject = relabel
        with pytest.raises((IntegrityError, KeyUnavailable)):
            read_all(vault, acme, rendition.id)


def test_deleted_objects_table_is_what_an_erasure_leaves_when_the_store_fails(
    vault: Vault, acme: str, object_store: MemoryObjectStore, monkeypatch: pytest.MonkeyPatch
):
    """(The gc side is in test_objects_kinds.py.) The catalog forgets the rendition in
    the erasure's transaction whatever the store does."""
    rendition = upload(vault, acme, "ada.mp4", RENDITION, subject_id=VIEWER)
    key = object_key(vault, rendition.id)

    def refuse(_key: str) -> None:
        raise OSError("store down")

    monkeypatch.setattr(object_store, "delete", refuse)
    erased = vault.privacy.erase(acme, VIEWER)
    assert erased.assets_deleted == 1 and erased.key_destroyed
    with vault.database.transaction(readonly=True) as session:
        assert session.get(AssetRow, rendition.id) is None
        assert session.get(DeletedObjectRow, key) is not None


# -- export ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"name": "Ada", "tags": ["a", "b"], "n": 1.5}',
        b'{"a": 1, "a": 2}',  # duplicate keys: one would be lost
        b"NaN",  # not JSON: the export would not be JSON either
        b'{"x": Infinity}',
        b"[" * 100_000 + b"]" * 100_000,  # deep enough to exhaust the parser
        b"not json at all",
        b"\xff\xfe\x00binary",
    ],
    ids=["json", "duplicate-keys", "nan", "infinity", "deep", "text", "binary"],
)
def test_the_export_holds_every_payload_faithfully_and_stays_strict_json(
    vault: Vault, acme: str, data: bytes
):
    payload = vault.payloads.put(
        acme, VIEWER, purpose=PURPOSE, data=data, content_type="application/json"
    )
    raw = b"".join(vault.privacy.export(acme, VIEWER))

    def strict(name: str) -> Any:
        raise ValueError(name)

    document = json.loads(raw, parse_constant=strict)
    (entry,) = document["payloads"]
    assert entry["id"] == payload.id and entry["size"] == len(data)
    if "data" in entry:
        assert json.loads(data) == entry["data"]
        assert data.count(b":") == json.dumps(entry["data"]).count(":")  # no key lost
    else:
        assert base64.b64decode(entry["data_base64"]) == data


def test_erasure_is_idempotent_and_audited_each_time(vault: Vault, acme: str):
    vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=b"{}")
    first = vault.privacy.erase(acme, VIEWER)
    again = vault.privacy.erase(acme, VIEWER)
    assert (first.key_destroyed, first.payloads_deleted) == (True, 1)
    assert (again.key_destroyed, again.payloads_deleted, again.assets_deleted) == (False, 0, 0)
    assert again.pseudonym == first.pseudonym
    erased = vault.audit_log.list_events(
        acme, start_us=0, end_us=2**62, where=AuditFilter(actions=["subject.erased"])
    ).events
    assert len(erased) == 2 and {e.resource_id for e in erased} == {first.pseudonym}


def test_a_withdrawal_on_a_replica_whose_clock_is_behind_still_wins(
    database, keyring: Path, clock: FakeClock, object_store: MemoryObjectStore
):
    ahead = make_vault(database, keyring, FakeClock(clock.now() + 0.05), object_store)
    behind = make_vault(database, keyring, clock, object_store)
    acme = ahead.tenant_keys.create_tenant("acme").id
    payload = ahead.payloads.put(acme, VIEWER, purpose=PURPOSE, data=PAYLOAD)
    grant(ahead, acme)
    clock.advance(0.01)  # recorded after the grant, at an earlier clock reading
    withdrawal = grant(behind, acme, granted=False)
    for replica in (ahead, behind):
        with pytest.raises(FailedPrecondition):
            replica.payloads.get(acme, payload.id, PURPOSE)
    _, history = behind.consents.history(acme, VIEWER)
    assert [d.granted for d in history] == [True, False]
    assert withdrawal.effective_at > history[0].effective_at


@pytest.mark.parametrize(
    "data",
    [b'{"nick": "\\ud800"}', b'{"big": 1e999}', b'{"long": 0.12345678901234567890123}'],
)
def test_json_the_export_cannot_hold_exactly_is_exported_as_base64(
    database, keyring: Path, clock: FakeClock, object_store: MemoryObjectStore, data: bytes
):
    vault = make_vault(database, keyring, clock, object_store)
    acme = vault.tenant_keys.create_tenant("acme").id
    vault.payloads.put(acme, VIEWER, purpose=PURPOSE, data=data)
    document = json.loads(b"".join(vault.privacy.export(acme, VIEWER)))
    (entry,) = document["payloads"]
    assert "data" not in entry
    assert base64.b64decode(entry["data_base64"]) == data
