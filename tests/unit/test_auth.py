"""API keys, authentication without oracles, roles, tenant scope, the permission table and
the gRPC method -> action table."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import importlib
import pathlib
import pkgutil
import re
import secrets
import sqlite3
import string
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session
from structlog.testing import capture_logs

import reelvault.auth
import reelvault.v1
from reelvault import errors
from reelvault.auth import (
    LAST_USE_INTERVAL,
    PERMISSIONS,
    PLATFORM_ROLES,
    Action,
    ApiKeyInfo,
    ApiKeys,
    Principal,
    Role,
    authorize,
    require_can_create_key,
    require_tenant_access,
)
from reelvault.catalog import API_KEY_ROLES, ApiKeyRow, Database
from reelvault.clock import FakeClock
from reelvault.keys.tenant import TenantKeys
from reelvault.origin.app import ROUTE_ACTIONS
from reelvault.rpc.actions import METHOD_ACTIONS, action_for

API_DOC = pathlib.Path(__file__).parents[2] / "docs" / "api.md"
TOKEN = re.compile(r"rvk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")
TENANT_ROLES = [role for role in Role if role not in PLATFORM_ROLES]
UNKNOWN_TENANT = "0" * 32
TENANT_A = "a" * 32
TENANT_B = "b" * 32


@pytest.fixture
def api_keys(database: Database, clock: FakeClock) -> ApiKeys:
    # Last uses are written when a test calls flush_last_use(), not by a thread.
    return ApiKeys(database, clock, background_writes=False)


@pytest.fixture
def tenant_id(tenant_keys: TenantKeys) -> str:
    return tenant_keys.create_tenant("acme").id


@pytest.fixture
def other_tenant_id(tenant_keys: TenantKeys) -> str:
    return tenant_keys.create_tenant("globex").id


# rvk_ + 16 hex digits + _: the secret itself may contain "_" (base64url), so no split.
_SECRET_AT = 21


def _key_id(token: str) -> str:
    return token[4:20]


def _secret(token: str) -> str:
    return token[_SECRET_AT:]


def _with_secret(token: str, secret: str) -> str:
    return token[:_SECRET_AT] + secret


def _random_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _unauthenticated(api_keys: ApiKeys, token: object) -> errors.Unauthenticated:
    with pytest.raises(errors.Unauthenticated) as info:
        api_keys.authenticate(token)  # type: ignore[arg-type]
    return info.value


def _raw_rows(database: Database) -> list[tuple[object, ...]]:
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT * FROM api_keys"))]


# -- the stored role values ------------------------------------------------------------


def test_roles_match_the_stored_values() -> None:
    assert tuple(role.value for role in Role) == API_KEY_ROLES
    assert API_KEY_ROLES == (
        "platform-admin",
        "admin",
        "ingest",
        "renderer",
        "distributor",
        "auditor",
        "privacy",
        "platform-auditor",
    )


def test_the_platform_roles_are_the_admin_and_the_auditor() -> None:
    assert {Role.PLATFORM_ADMIN, Role.PLATFORM_AUDITOR} == PLATFORM_ROLES
    assert TENANT_ROLES == [
        Role.ADMIN,
        Role.INGEST,
        Role.RENDERER,
        Role.DISTRIBUTOR,
        Role.AUDITOR,
        Role.PRIVACY,
    ]


def test_public_surface_is_sorted_and_importable() -> None:
    module = importlib.import_module("reelvault.auth")
    assert list(module.__all__) == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


# -- create, authenticate, revoke, list ------------------------------------------------


@pytest.mark.db
@pytest.mark.parametrize("role", TENANT_ROLES)
def test_a_tenant_key_authenticates_as_its_tenant_and_role(
    api_keys: ApiKeys, clock: FakeClock, tenant_id: str, role: Role
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=role, description="render farm")

    assert TOKEN.fullmatch(token)
    assert _key_id(token) == info.id
    assert info == ApiKeyInfo(
        id=info.id,
        tenant_id=tenant_id,
        role=role,
        description="render farm",
        created_at=datetime.fromtimestamp(clock.now(), UTC),
        revoked_at=None,
        last_used_at=None,
    )
    principal = api_keys.authenticate(token)
    assert principal == Principal(key_id=info.id, tenant_id=tenant_id, role=role)
    assert principal.role is role
    assert not principal.is_platform_admin
    assert not principal.is_platform
    api_keys.flush_last_use()
    assert api_keys.get(info.id) == dataclasses.replace(info, last_used_at=info.created_at)


@pytest.mark.db
@pytest.mark.parametrize("role", sorted(PLATFORM_ROLES))
def test_a_platform_key_belongs_to_no_tenant(api_keys: ApiKeys, role: Role) -> None:
    info, token = api_keys.create(tenant_id=None, role=role)
    assert info.tenant_id is None
    assert info.description == ""
    principal = api_keys.authenticate(token)
    assert principal == Principal(info.id, None, role)
    assert principal.is_platform
    assert principal.is_platform_admin == (role is Role.PLATFORM_ADMIN)


@pytest.mark.db
def test_every_key_gets_its_own_id_and_secret(api_keys: ApiKeys, tenant_id: str) -> None:
    tokens = [api_keys.create(tenant_id=tenant_id, role=Role.INGEST)[1] for _ in range(20)]
    assert len({_key_id(token) for token in tokens}) == 20
    assert len({_secret(token) for token in tokens}) == 20


@pytest.mark.db
def test_platform_keys_have_no_tenant_and_other_keys_need_one(
    api_keys: ApiKeys, database: Database, tenant_id: str
) -> None:
    for role in PLATFORM_ROLES:
        with pytest.raises(errors.InvalidArgument):
            api_keys.create(tenant_id=tenant_id, role=role)
    for role in TENANT_ROLES:
        with pytest.raises(errors.InvalidArgument):
            api_keys.create(tenant_id=None, role=role)
    assert _raw_rows(database) == []


@pytest.mark.db
@pytest.mark.parametrize(
    ("tenant", "error"),
    [
        (UNKNOWN_TENANT, errors.NotFound),
        ("A" * 32, errors.InvalidArgument),
        ("not a tenant id", errors.InvalidArgument),
        ("", errors.InvalidArgument),
    ],
)
def test_keys_for_a_missing_tenant_are_not_found_and_malformed_ids_invalid(
    api_keys: ApiKeys, tenant: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        api_keys.create(tenant_id=tenant, role=Role.ADMIN)


@pytest.mark.db
def test_unknown_roles_are_invalid(api_keys: ApiKeys, tenant_id: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        api_keys.create(tenant_id=tenant_id, role="root")  # type: ignore[arg-type]


@pytest.mark.db
@pytest.mark.parametrize("description", ["", "x" * 256, "Ingest — café 🎬 (prod)"])
def test_descriptions_of_printable_characters_round_trip(
    api_keys: ApiKeys, tenant_id: str, description: str
) -> None:
    info, _ = api_keys.create(tenant_id=tenant_id, role=Role.INGEST, description=description)
    assert info.description == description
    assert api_keys.get(info.id).description == description


@pytest.mark.db
@pytest.mark.parametrize(
    "description",
    ["x" * 257, "line\nbreak", "nul\x00", "tab\t", "bidi \u202e override", "\x1b[31mred"],
)
def test_long_or_unprintable_descriptions_are_invalid(
    api_keys: ApiKeys, tenant_id: str, description: str
) -> None:
    with pytest.raises(errors.InvalidArgument):
        api_keys.create(tenant_id=tenant_id, role=Role.INGEST, description=description)


@pytest.mark.db
def test_a_revoked_key_no_longer_authenticates(
    api_keys: ApiKeys, clock: FakeClock, tenant_id: str
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.RENDERER)
    api_keys.authenticate(token)
    api_keys.flush_last_use()
    clock.advance(10)

    revoked = api_keys.revoke(info.id)

    assert revoked.revoked_at == datetime.fromtimestamp(clock.now(), UTC)
    assert revoked == dataclasses.replace(
        info, revoked_at=revoked.revoked_at, last_used_at=info.created_at
    )
    _unauthenticated(api_keys, token)


# -- last use ----------------------------------------------------------------------------


def _last_used(api_keys: ApiKeys, key_id: str) -> datetime | None:
    """The stored last use, once the uses noted so far are written."""
    api_keys.flush_last_use()
    return api_keys.get(key_id).last_used_at


@pytest.mark.db
def test_last_use_is_recorded_at_most_once_a_minute(
    api_keys: ApiKeys, clock: FakeClock, tenant_id: str
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    assert info.last_used_at is None

    api_keys.authenticate(token)
    first = datetime.fromtimestamp(clock.now(), UTC)
    assert _last_used(api_keys, info.id) == first

    clock.advance(LAST_USE_INTERVAL - 1)
    api_keys.authenticate(token)
    assert _last_used(api_keys, info.id) == first

    clock.advance(1)
    api_keys.authenticate(token)
    assert _last_used(api_keys, info.id) == datetime.fromtimestamp(clock.now(), UTC)


@pytest.mark.db
def test_another_replica_does_not_rewrite_a_fresh_last_use(
    database: Database, api_keys: ApiKeys, clock: FakeClock, tenant_id: str
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    api_keys.authenticate(token)
    first = _last_used(api_keys, info.id)
    replica = ApiKeys(database, clock, background_writes=False)

    clock.advance(30)
    replica.authenticate(token)
    assert _last_used(replica, info.id) == first

    clock.advance(LAST_USE_INTERVAL)
    replica.authenticate(token)
    assert _last_used(replica, info.id) == datetime.fromtimestamp(clock.now(), UTC)


@pytest.mark.db
def test_failed_authentication_records_no_use(
    api_keys: ApiKeys, clock: FakeClock, tenant_id: str
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    _unauthenticated(api_keys, _with_secret(token, _random_secret()))
    assert _last_used(api_keys, info.id) is None

    api_keys.revoke(info.id)
    _unauthenticated(api_keys, token)
    assert _last_used(api_keys, info.id) is None


@pytest.mark.db
def test_a_catalog_that_refuses_the_write_does_not_fail_authentication(
    database: Database, api_keys: ApiKeys, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    transaction = database.transaction

    @contextlib.contextmanager
    def reads_only(*, readonly: bool = False) -> Iterator[Session]:
        if not readonly:
            raise errors.Unavailable("catalog database unavailable")
        with transaction(readonly=True) as session:
            yield session

    monkeypatch.setattr(database, "transaction", reads_only)
    assert api_keys.authenticate(token).key_id == info.id
    api_keys.flush_last_use()  # the refused write: logged, not raised
    monkeypatch.undo()
    assert _last_used(api_keys, info.id) is None


@pytest.mark.db
def test_a_read_only_catalog_does_not_fail_authentication_and_is_logged_once(
    database: Database,
    api_keys: ApiKeys,
    clock: FakeClock,
    tenant_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What PostgreSQL says on a standby or with default_transaction_read_only.
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    transaction = database.transaction

    @contextlib.contextmanager
    def read_only(*, readonly: bool = False) -> Iterator[Session]:
        with transaction(readonly=readonly) as session:
            if not readonly:
                raise sa.exc.InternalError(
                    "UPDATE api_keys ...",
                    {},
                    Exception("cannot execute UPDATE in a read-only transaction"),
                )
            yield session

    monkeypatch.setattr(reelvault.auth, "_log", structlog.get_logger("reelvault.auth"))
    monkeypatch.setattr(database, "transaction", read_only)
    with capture_logs() as logs:
        assert api_keys.authenticate(token).key_id == info.id
        api_keys.flush_last_use()
        clock.advance(LAST_USE_INTERVAL)
        assert api_keys.authenticate(token).key_id == info.id
        api_keys.flush_last_use()
    monkeypatch.undo()
    assert _last_used(api_keys, info.id) is None
    noted = [line for line in logs if line["event"] == "api key last use not recorded"]
    assert [line["log_level"] for line in noted] == ["warning", "debug"]
    assert noted[0]["cause"] == "cannot execute UPDATE in a read-only transaction"

    clock.advance(LAST_USE_INTERVAL)  # writable again: the next use is written
    api_keys.authenticate(token)
    assert _last_used(api_keys, info.id) == datetime.fromtimestamp(clock.now(), UTC)


@pytest.mark.db
def test_a_read_only_sqlite_catalog_does_not_fail_authentication(
    database: Database, clock: FakeClock, tenant_id: str, tmp_path: pathlib.Path
) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("a read-only file is SQLite's")
    info, token = ApiKeys(database, clock).create(tenant_id=tenant_id, role=Role.INGEST)
    read_only = Database(f"sqlite:///file:{tmp_path / 'catalog.sqlite3'}?mode=ro&uri=true")
    try:
        keys = ApiKeys(read_only, clock, background_writes=False)
        assert keys.authenticate(token).key_id == info.id
        keys.flush_last_use()  # refused by SQLite: not raised
        assert keys.get(info.id).last_used_at is None
    finally:
        read_only.dispose()


@pytest.mark.db
def test_a_locked_sqlite_catalog_does_not_delay_authentication(
    database: Database, clock: FakeClock, tenant_id: str, tmp_path: pathlib.Path
) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("SQLite's write lock")
    info, token = ApiKeys(database, clock).create(tenant_id=tenant_id, role=Role.INGEST)
    path = tmp_path / "catalog.sqlite3"
    slow = Database(f"sqlite:///{path}", busy_timeout=2.0)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        keys = ApiKeys(slow, clock)  # the background writer waits for the lock, not us
        writer.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        started = time.monotonic()
        for _ in range(3):
            assert keys.authenticate(token).key_id == info.id
            clock.advance(LAST_USE_INTERVAL)
        assert time.monotonic() - started < 1.0
        writer.execute("ROLLBACK")
        keys.authenticate(token)
        deadline = time.monotonic() + 10
        while keys.get(info.id).last_used_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keys.get(info.id).last_used_at is not None
    finally:
        writer.close()
        slow.dispose()


@pytest.mark.db
def test_last_use_is_written_in_the_background(
    database: Database, clock: FakeClock, tenant_id: str
) -> None:
    keys = ApiKeys(database, clock)
    info, token = keys.create(tenant_id=tenant_id, role=Role.INGEST)
    keys.authenticate(token)
    deadline = time.monotonic() + 10
    while keys.get(info.id).last_used_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keys.get(info.id).last_used_at == datetime.fromtimestamp(clock.now(), UTC)


@pytest.mark.db
def test_revoking_is_idempotent_and_keeps_the_first_time(
    api_keys: ApiKeys, clock: FakeClock, tenant_id: str
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    first = api_keys.revoke(info.id)
    clock.advance(3600)
    assert api_keys.revoke(info.id) == first
    assert api_keys.get(info.id) == first
    _unauthenticated(api_keys, token)


@pytest.mark.db
def test_revoking_one_key_leaves_the_others(api_keys: ApiKeys, tenant_id: str) -> None:
    revoked, revoked_token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    kept, kept_token = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    api_keys.revoke(revoked.id)
    _unauthenticated(api_keys, revoked_token)
    assert api_keys.authenticate(kept_token).key_id == kept.id


@pytest.mark.db
@pytest.mark.parametrize(
    ("key_id", "error"),
    [("0" * 16, errors.NotFound)]
    + [(bad, errors.InvalidArgument) for bad in ["A" * 16, "x", "", "0" * 17, "0" * 32]],
)
def test_unknown_keys_are_not_found_and_malformed_ids_invalid(
    api_keys: ApiKeys, key_id: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        api_keys.get(key_id)
    with pytest.raises(error):
        api_keys.revoke(key_id)


@pytest.mark.db
def test_listing_is_per_tenant_oldest_first_and_includes_revoked_keys(
    api_keys: ApiKeys, clock: FakeClock, tenant_id: str, other_tenant_id: str
) -> None:
    first, _ = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    clock.advance(1)
    platform, _ = api_keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)
    other, _ = api_keys.create(tenant_id=other_tenant_id, role=Role.ADMIN)
    clock.advance(1)
    second, _ = api_keys.create(tenant_id=tenant_id, role=Role.INGEST)
    revoked = api_keys.revoke(first.id)

    assert api_keys.list(tenant_id) == [revoked, second]
    assert api_keys.list(other_tenant_id) == [other]
    assert api_keys.list(None) == [platform]


@pytest.mark.db
@pytest.mark.parametrize(
    ("missing", "error"), [(UNKNOWN_TENANT, errors.NotFound), ("nope", errors.InvalidArgument)]
)
def test_listing_a_missing_tenant_is_not_found(
    api_keys: ApiKeys, missing: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        api_keys.list(missing)


@pytest.mark.db
def test_a_tenant_with_no_keys_lists_none(api_keys: ApiKeys, tenant_id: str) -> None:
    assert api_keys.list(tenant_id) == []
    assert api_keys.list(None) == []


# -- authentication failures: one answer, no oracle --------------------------------------


def _malformed(token: str) -> list[object]:
    """Tokens that are not of the form rvk_<16 hex>_<43 canonical base64url characters>."""
    key_id, secret = _key_id(token), _secret(token)
    return [
        "",
        "rvk_",
        "rvk__",
        f"Bearer {token}",
        f" {token}",
        f"{token} ",
        f"{token}\n",
        f"{token}\x00",
        f"{token}A",
        token[:-1],
        f"RVK_{key_id}_{secret}",
        f"rvk-{key_id}-{secret}",
        f"rvk_{key_id}{secret}",
        f"rvk_{'F' * 16}_{secret}",  # upper-case hex
        f"rvk_{key_id[:-1]}_{secret}A",  # right length, short id
        f"rvk_{key_id}0_{secret[:-1]}",  # right length, long id
        f"rvk_{key_id}_{secret}=",  # padding
        f"rvk_{key_id}_{secret[:-2]}+/",  # standard, not URL-safe, alphabet
        f"rvk_{key_id}_{secret[:-1]}B",  # non-canonical last character (low bits set)
        f"rvk_{key_id}_{secret[:-1]}\u0660",  # a non-ASCII digit
        "rvk_" + "\u0661" * 16 + "_" + secret,
        f"rvk_{key_id}_{base64.urlsafe_b64encode(secrets.token_bytes(33)).decode()}",
        "rvk_" + "0" * 16 + "_" + "A" * 10_000,
        token.encode(),
        None,
        42,
    ]


@pytest.mark.db
def test_malformed_tokens_are_unauthenticated(api_keys: ApiKeys, tenant_id: str) -> None:
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    for bad in _malformed(token):
        _unauthenticated(api_keys, bad)
    api_keys.authenticate(token)


@pytest.mark.db
def test_a_wrong_secret_is_unauthenticated(api_keys: ApiKeys, tenant_id: str) -> None:
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    _unauthenticated(api_keys, _with_secret(token, _random_secret()))


@pytest.mark.db
def test_another_keys_secret_does_not_authenticate(api_keys: ApiKeys, tenant_id: str) -> None:
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.RENDERER)
    _, other = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    _unauthenticated(api_keys, _with_secret(token, _secret(other)))
    _unauthenticated(api_keys, _with_secret(other, _secret(token)))


@pytest.mark.db
def test_every_single_character_change_is_unauthenticated(
    api_keys: ApiKeys, tenant_id: str
) -> None:
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    for position, char in enumerate(token):
        replacement = "0" if char != "0" else "1"
        _unauthenticated(api_keys, token[:position] + replacement + token[position + 1 :])


@pytest.mark.db
def test_an_unknown_key_id_is_unauthenticated(api_keys: ApiKeys, tenant_id: str) -> None:
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    _unauthenticated(api_keys, f"rvk_{secrets.token_hex(8)}_{_secret(token)}")


@pytest.mark.db
def test_an_unknown_key_id_costs_a_hash_comparison_too(
    api_keys: ApiKeys, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # looked up by auth at each call
    _unauthenticated(api_keys, f"rvk_{secrets.token_hex(8)}_{_random_secret()}")
    _unauthenticated(api_keys, _with_secret(token, _random_secret()))
    api_keys.authenticate(token)
    assert len(compared) == 3
    assert all(len(a) == len(b) == 32 for a, b in compared)


@pytest.mark.db
def test_every_failure_gives_the_same_answer(api_keys: ApiKeys, tenant_id: str) -> None:
    revoked, revoked_token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    api_keys.revoke(revoked.id)
    _, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    failures = [
        _unauthenticated(api_keys, "rvk_nonsense"),
        _unauthenticated(api_keys, f"rvk_{secrets.token_hex(8)}_{_secret(token)}"),
        _unauthenticated(api_keys, _with_secret(token, _random_secret())),
        _unauthenticated(api_keys, revoked_token),
        *(_unauthenticated(api_keys, bad) for bad in _malformed(token)),
    ]
    assert {type(error) for error in failures} == {errors.Unauthenticated}
    assert len({str(error) for error in failures}) == 1
    assert len({error.args for error in failures}) == 1
    for error in failures:
        assert error.__cause__ is None
        assert error.__suppress_context__ or error.__context__ is None
        assert revoked.id not in str(error)
        assert _secret(token) not in str(error)


# -- the secret stays secret -------------------------------------------------------------


@pytest.mark.db
def test_only_the_sha256_of_the_secret_is_stored(
    api_keys: ApiKeys, database: Database, tenant_id: str
) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN, description="ci")
    secret = _secret(token)
    raw = base64.urlsafe_b64decode(secret + "=")
    forms = [token.encode(), secret.encode(), raw, raw.hex().encode()]

    [row] = _raw_rows(database)
    for value in row:
        as_bytes = value if isinstance(value, bytes) else str(value).encode()
        for form in forms:
            assert form not in as_bytes
    with database.transaction(readonly=True) as session:
        stored = session.get(ApiKeyRow, info.id)
        assert stored is not None
        assert stored.secret_hash == hashlib.sha256(secret.encode()).digest()

    if database.dialect_name == "sqlite":  # the whole file, WAL included
        path = pathlib.Path(str(database.engine.url.database))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        for content in (p.read_bytes() for p in files):
            for form in forms:
                assert form not in content


@pytest.mark.db
def test_no_returned_object_shows_the_secret_or_its_hash(api_keys: ApiKeys, tenant_id: str) -> None:
    info, token = api_keys.create(tenant_id=tenant_id, role=Role.ADMIN)
    secret = _secret(token)
    digest = hashlib.sha256(secret.encode()).digest()
    shown = [
        info,
        api_keys.authenticate(token),
        api_keys.get(info.id),
        *api_keys.list(tenant_id),
        api_keys.revoke(info.id),
        api_keys,
    ]
    for obj in shown:
        for text in (repr(obj), str(obj)):
            assert secret not in text
            assert digest.hex() not in text
            assert repr(digest) not in text
    assert {field.name for field in dataclasses.fields(ApiKeyInfo)} == {
        "id",
        "tenant_id",
        "role",
        "description",
        "created_at",
        "revoked_at",
        "last_used_at",
    }


# -- schema invariants -------------------------------------------------------------------


def _row(**overrides: object) -> ApiKeyRow:
    values: dict[str, object] = {
        "id": secrets.token_hex(8),
        "tenant_id": None,
        "role": "platform-admin",
        "secret_hash": bytes(32),
        "description": "",
        "created_at": datetime(2027, 1, 15, tzinfo=UTC),
    }
    values.update(overrides)
    return ApiKeyRow(**values)


@pytest.mark.db
@pytest.mark.parametrize(
    "overrides",
    [
        {"role": "root"},
        {"role": "platform-admin", "tenant_id": "tenant"},
        {"role": "platform-auditor", "tenant_id": "tenant"},
        {"role": "admin", "tenant_id": None},
        {"role": "auditor", "tenant_id": None},
        {"secret_hash": bytes(31)},
        {"secret_hash": bytes(33)},
        {"role": "admin", "tenant_id": UNKNOWN_TENANT},
    ],
    ids=[
        "role",
        "platform-admin-with-tenant",
        "platform-auditor-with-tenant",
        "tenant-role-without",
        "tenant-auditor-without",
        "short-hash",
        "long-hash",
        "fk",
    ],
)
def test_the_schema_refuses_invalid_keys(
    database: Database, tenant_id: str, overrides: dict[str, object]
) -> None:
    if overrides.get("tenant_id") == "tenant":
        overrides = {**overrides, "tenant_id": tenant_id}
    with pytest.raises(SqlIntegrityError), database.transaction() as session:
        session.add(_row(**overrides))


@pytest.mark.db
def test_the_schema_accepts_every_role_with_the_right_scope(
    database: Database, tenant_id: str
) -> None:
    with database.transaction() as session:
        for role in API_KEY_ROLES:
            platform = Role(role) in PLATFORM_ROLES
            session.add(_row(role=role, tenant_id=None if platform else tenant_id))


# -- authorization -----------------------------------------------------------------------


def _rpc_methods() -> set[str]:
    """Every method of every service in the generated reelvault.v1 descriptors."""
    modules = sorted(
        module.name
        for module in pkgutil.iter_modules(reelvault.v1.__path__)
        if module.name.endswith("_pb2")
    )
    assert {
        "apikey_pb2",
        "asset_pb2",
        "audit_pb2",
        "distribution_pb2",
        "key_pb2",
        "privacy_pb2",
        "tenant_pb2",
    } <= set(modules)
    methods: set[str] = set()
    for name in modules:
        module = importlib.import_module(f"reelvault.v1.{name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name.startswith("reelvault.v1."), service.full_name
            methods.update(f"/{service.full_name}/{method.name}" for method in service.methods)
    return methods


def test_every_rpc_has_an_action_and_nothing_else_does() -> None:
    methods = _rpc_methods()
    assert len(methods) == 49
    assert set(METHOD_ACTIONS) == methods
    for method, action in METHOD_ACTIONS.items():
        assert isinstance(action, Action), method
        assert action_for(method) is action


def test_every_action_is_used_and_has_a_permission_entry() -> None:
    # Each action is reached through some edge: a gRPC method or an origin route.
    assert set(METHOD_ACTIONS.values()) | set(ROUTE_ACTIONS.values()) == set(Action)
    assert set(PERMISSIONS) == set(Action)
    for action, roles in PERMISSIONS.items():
        assert isinstance(action, Action)
        assert roles, action
        assert all(isinstance(role, Role) for role in roles)


def test_the_tables_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        PERMISSIONS[Action.ASSET_WRITE] = frozenset(Role)  # type: ignore[index]
    with pytest.raises(TypeError):
        METHOD_ACTIONS["/reelvault.v1.AssetService/Nope"] = Action.ASSET_READ  # type: ignore[index]


def _principal(role: Role, tenant_id: str | None = TENANT_A) -> Principal:
    return Principal("0123456789abcdef", None if role in PLATFORM_ROLES else tenant_id, role)


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", list(Role))
def test_authorize_follows_the_table(action: Action, role: Role) -> None:
    if role in PERMISSIONS[action]:
        authorize(_principal(role), action)
    else:
        with pytest.raises(errors.PermissionDenied):
            authorize(_principal(role), action)


ASSET_ACTIONS = [action for action in Action if action.value.startswith("asset.")]


def test_asset_methods_are_asset_actions() -> None:
    assert len(ASSET_ACTIONS) == 7
    assert {
        action
        for method, action in METHOD_ACTIONS.items()
        if method.startswith("/reelvault.v1.AssetService/")
    } | set(ROUTE_ACTIONS.values()) == set(ASSET_ACTIONS)


@pytest.mark.parametrize("action", ASSET_ACTIONS)
@pytest.mark.parametrize("role", sorted(PLATFORM_ROLES))
def test_platform_keys_do_not_touch_assets(action: Action, role: Role) -> None:
    with pytest.raises(errors.PermissionDenied):
        authorize(_principal(role), action)


def test_the_suggested_role_split() -> None:
    def allowed(method: str) -> set[str]:
        return {role.value for role in PERMISSIONS[METHOD_ACTIONS[f"/reelvault.v1.{method}"]]}

    assert allowed("TenantService/CreateTenant") == {"platform-admin"}
    assert allowed("TenantService/ListTenants") == {"platform-admin"}
    assert allowed("TenantService/GetTenant") == set(API_KEY_ROLES) - {"platform-auditor"}
    for method in ("CreateApiKey", "ListApiKeys", "RevokeApiKey"):
        assert allowed(f"ApiKeyService/{method}") == {"platform-admin", "admin"}
    assert allowed("AssetService/Upload") == {"admin", "ingest"}
    assert allowed("AssetService/DeleteAsset") == {"admin", "ingest"}
    assert allowed("AssetService/Download") == {"admin", "ingest", "renderer"}
    assert allowed("AssetService/OpenAsset") == {"admin", "ingest", "renderer"}
    assert allowed("TenantService/SetTenantPolicy") == {"platform-admin", "admin"}
    for method in ("StatAsset", "ListAssets"):
        assert allowed(f"AssetService/{method}") == {"admin", "ingest", "renderer", "distributor"}
    for method in (
        "ListAuditEvents",
        "ExportAuditEvents",
        "GetCheckpoint",
        "GetInclusionProof",
        "GetConsistencyProof",
    ):
        assert allowed(f"AuditService/{method}") == {"auditor", "platform-auditor"}
    assert allowed("AuditService/SetAuditRetention") == {"platform-admin", "admin"}
    for method in (
        "IssueUrl",
        "IssueCookie",
        "RevokeSession",
        "RevokeAsset",
        "ListSigningKeys",
        "RotateSigningKey",
    ):
        assert allowed(f"DistributionService/{method}") == {"admin", "distributor"}
    # a signed URL carries its issuer's authority to fetch, and nothing more
    assert {r.value for r in PERMISSIONS[ROUTE_ACTIONS["GET"]]} == {"admin", "distributor"}


def test_auditors_read_the_log_and_nothing_else() -> None:
    for role in (Role.AUDITOR, Role.PLATFORM_AUDITOR):
        may = {action for action, roles in PERMISSIONS.items() if role in roles}
        expected = {Action.AUDIT_READ}
        if role is Role.AUDITOR:  # a tenant role reads its own tenant record
            expected.add(Action.TENANT_READ)
            # and turns a viewer id into the pseudonym the log knows it by
            expected.add(Action.SUBJECT_HASH)
        assert may == expected, role
    assert PERMISSIONS[Action.AUDIT_READ] == {Role.AUDITOR, Role.PLATFORM_AUDITOR}


@pytest.mark.parametrize(
    "method",
    [
        "",
        "/",
        "/reelvault.v1.AssetService/Nope",
        "/reelvault.v1.assetservice/upload",
        "/reelvault.v1.AssetService/Upload/",
        "reelvault.v1.AssetService/Upload",
        "/reelvault.v2.TenantService/CreateTenant",
        "/reelvault.v1.AuditService/DeleteAuditEvents",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ],
)
def test_unknown_methods_have_no_action(method: str) -> None:
    assert method not in METHOD_ACTIONS
    assert action_for(method) is None


@pytest.mark.parametrize("role", list(Role))
def test_an_action_missing_from_the_table_is_denied_to_everyone(role: Role) -> None:
    for action in ("", "asset.nope", "ASSET.WRITE", "/reelvault.v1.AssetService/Upload"):
        with pytest.raises(errors.PermissionDenied):
            authorize(_principal(role), action)  # type: ignore[arg-type]


def test_tenant_principals_reach_only_their_own_tenant() -> None:
    for role in TENANT_ROLES:
        principal = _principal(role, TENANT_A)
        require_tenant_access(principal, TENANT_A)
        for elsewhere in (TENANT_B, None, "", UNKNOWN_TENANT):
            with pytest.raises(errors.NotFound):
                require_tenant_access(principal, elsewhere)


@pytest.mark.parametrize("role", sorted(PLATFORM_ROLES))
def test_platform_keys_reach_every_tenant_and_the_platform(role: Role) -> None:
    for tenant in (TENANT_A, TENANT_B, None):
        require_tenant_access(_principal(role), tenant)


def test_tenant_admins_create_tenant_keys_for_their_own_tenant_only() -> None:
    admin = _principal(Role.ADMIN, TENANT_A)
    for role in TENANT_ROLES:
        require_can_create_key(admin, tenant_id=TENANT_A, role=role)
        with pytest.raises(errors.NotFound):
            require_can_create_key(admin, tenant_id=TENANT_B, role=role)
    for tenant in (None, TENANT_A, TENANT_B):
        for role in PLATFORM_ROLES:
            with pytest.raises(errors.PermissionDenied, match="only platform admins"):
                require_can_create_key(admin, tenant_id=tenant, role=role)


def test_platform_admins_create_any_key() -> None:
    platform = _principal(Role.PLATFORM_ADMIN)
    for role in PLATFORM_ROLES:
        require_can_create_key(platform, tenant_id=None, role=role)
    for role in TENANT_ROLES:
        require_can_create_key(platform, tenant_id=TENANT_B, role=role)


def test_platform_auditors_create_no_keys() -> None:
    auditor = _principal(Role.PLATFORM_AUDITOR)
    for role in PLATFORM_ROLES:
        with pytest.raises(errors.PermissionDenied, match="only platform admins"):
            require_can_create_key(auditor, tenant_id=None, role=role)
    for action in (Action.APIKEY_CREATE, Action.APIKEY_LIST, Action.APIKEY_REVOKE):
        with pytest.raises(errors.PermissionDenied):
            authorize(auditor, action)


# -- the documented tables ---------------------------------------------------------------


def _markdown_table(lines: list[str], header: str) -> list[list[str]]:
    """The body rows of the table under ``header`` (its first line), as cells."""

    def cells(line: str) -> list[str]:
        assert line.startswith("|") and line.endswith("|"), line
        return [cell.strip() for cell in line[1:-1].split("|")]

    starts = [i for i, line in enumerate(lines) if line.replace(" ", "") == header.replace(" ", "")]
    assert len(starts) == 1, header
    start = starts[0]
    columns = len(cells(lines[start]))
    assert set(cells(lines[start + 1])) == {"---"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = cells(line)
        assert len(row) == columns, line
        rows.append(row)
    return rows


def _code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`") and cell.count("`") == 2, cell
    return cell.strip("`")


def _documented_permissions() -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """Parse docs/api.md: (the roles described, action -> roles, method -> action)."""
    text = API_DOC.read_text(encoding="utf-8")
    section = text.split("## Authentication and permissions", 1)[1]
    lines = [line.strip() for line in section.splitlines()]

    roles = [_code(role) for role, _ in _markdown_table(lines, "| role | purpose |")]
    permissions: dict[str, list[str]] = {}
    for action, allowed in _markdown_table(lines, "| action | roles |"):
        assert _code(action) not in permissions, action
        permissions[_code(action)] = [_code(role) for role in allowed.split(", ")]
    methods: dict[str, str] = {}
    for method, action in _markdown_table(lines, "| method | action |"):
        assert _code(method) not in methods, method
        methods[_code(method)] = _code(action)
    return roles, permissions, methods


def test_the_documented_permission_tables_are_the_code() -> None:
    roles, permissions, methods = _documented_permissions()
    assert roles == [role.value for role in Role]
    order = {role.value: i for i, role in enumerate(Role)}
    for action, allowed in permissions.items():
        assert allowed == sorted(allowed, key=order.__getitem__), action  # in Role order
    assert {action: set(allowed) for action, allowed in permissions.items()} == {
        action.value: {role.value for role in allowed} for action, allowed in PERMISSIONS.items()
    }
    assert list(permissions) == [action.value for action in PERMISSIONS]
    assert methods == {method: action.value for method, action in METHOD_ACTIONS.items()}
    assert list(methods) == list(METHOD_ACTIONS)


def test_the_documented_token_example_has_the_documented_shape() -> None:
    text = API_DOC.read_text(encoding="utf-8")
    assert "authorization: Bearer rvk_<key id>_<secret>" in text
    assert reelvault.auth.TOKEN_PREFIX == "rvk_"


def test_the_token_alphabet_is_url_safe_base64() -> None:
    # The strict parser's last-character set: the base64url digits whose low 2 bits are 0.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    canonical = "".join(c for i, c in enumerate(alphabet) if i % 4 == 0)
    assert canonical == "AEIMQUYcgkosw048"
    for _ in range(200):
        assert _random_secret()[-1] in canonical
