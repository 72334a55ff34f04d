"""Tenant KEKs: lifecycle, state enforcement, identity binding and the cache."""

from __future__ import annotations

import dataclasses
import re
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from fakes import FakeRootKeyProvider

from reelvault import errors
from reelvault.catalog import Database, TenantKeyVersionRow, TenantRepository
from reelvault.clock import FakeClock
from reelvault.crypto.names import kek_key_name
from reelvault.keys.provider import WrappedKey
from reelvault.keys.tenant import Kek, KekState, KekVersion, TenantKeys

pytestmark = pytest.mark.db

ACTIVE = KekState.ACTIVE
DECRYPT_ONLY = KekState.DECRYPT_ONLY
DISABLED = KekState.DISABLED
PENDING = KekState.PENDING_DELETION
DESTROYED = KekState.DESTROYED

UNKNOWN_TENANT = "0" * 32
DAY = 86_400.0
TTL = 60.0  # the cache TTL of the tenant_keys fixture


def _new_tenant(keys: TenantKeys) -> str:
    return keys.create_tenant(f"tenant {secrets.token_hex(4)}").id


def _states(keys: TenantKeys, tenant_id: str) -> dict[int, KekState]:
    return {v.version: v.state for v in keys.list_versions(tenant_id)}


def _row(database: Database, tenant_id: str, version: int) -> TenantKeyVersionRow:
    with database.transaction(readonly=True) as session:
        return TenantRepository(session).key_version(tenant_id, version)


def _version_in(keys: TenantKeys, clock: FakeClock, state: KekState) -> tuple[str, int]:
    """A tenant with version 2 active and version 1 brought to ``state`` (or 2 if active).

    Version 1 was rotated out a cache TTL ago, so it may be retired; a pending deletion
    is due.
    """
    tenant_id = _new_tenant(keys)
    keys.rotate(tenant_id)
    clock.advance(TTL)
    if state is ACTIVE:
        return tenant_id, 2
    if state is not DECRYPT_ONLY:
        keys.disable(tenant_id, 1)
    if state in (PENDING, DESTROYED):
        keys.schedule_deletion(tenant_id, 1, TTL)
        clock.advance(TTL)
    if state is DESTROYED:
        keys.destroy(tenant_id, 1)
    assert _states(keys, tenant_id)[1] is state
    return tenant_id, 1


# -- tenants -------------------------------------------------------------------------


def test_create_tenant_makes_version_one_active(tenant_keys: TenantKeys, clock: FakeClock) -> None:
    tenant = tenant_keys.create_tenant("Acme Studios")

    assert re.fullmatch(r"[0-9a-f]{32}", tenant.id)
    assert tenant.name == "Acme Studios"
    assert tenant.created_at == datetime.fromtimestamp(clock.now(), UTC)
    assert tenant.min_decryption_version == 1
    assert tenant_keys.get_tenant(tenant.id) == tenant
    [version] = tenant_keys.list_versions(tenant.id)
    assert (version.version, version.state, version.root_key_id) == (1, ACTIVE, "fake:1")
    assert version.name == kek_key_name(tenant.id, 1)
    assert version.deletion_due_at is None
    assert version.destroyed_at is None


def test_tenants_are_listed_by_name(tenant_keys: TenantKeys) -> None:
    b, a = tenant_keys.create_tenant("beta"), tenant_keys.create_tenant("alpha")
    assert tenant_keys.list_tenants() == [a, b]


def test_duplicate_tenant_name_already_exists(tenant_keys: TenantKeys) -> None:
    tenant_keys.create_tenant("acme")
    with pytest.raises(errors.AlreadyExists):
        tenant_keys.create_tenant("acme")
    assert [t.name for t in tenant_keys.list_tenants()] == ["acme"]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        "tab\there",
        "new\nline",
        "nul\x00",
        "del\x7f",
        "rtl\u202eoverride",
        "nbsp\xa0",
    ],
)
def test_bad_tenant_names_are_invalid(tenant_keys: TenantKeys, name: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        tenant_keys.create_tenant(name)
    assert tenant_keys.list_tenants() == []


@pytest.mark.parametrize("name", ["a", "x" * 128, "Studio Ünïcødé 東京 #1"])
def test_good_tenant_names(tenant_keys: TenantKeys, name: str) -> None:
    assert tenant_keys.create_tenant(name).name == name


def test_tenant_is_not_created_when_the_root_provider_fails(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider
) -> None:
    root_provider.unavailable = True
    with pytest.raises(errors.Unavailable):
        tenant_keys.create_tenant("acme")
    assert tenant_keys.list_tenants() == []


@pytest.mark.parametrize(
    ("tenant_id", "error"),
    [(UNKNOWN_TENANT, errors.NotFound)]
    + [(bad, errors.InvalidArgument) for bad in ["not-an-id", "A" * 32, ""]],
)
def test_unknown_tenants_are_not_found_and_malformed_ids_invalid(
    tenant_keys: TenantKeys, tenant_id: str, error: type[Exception]
) -> None:
    for call in (
        tenant_keys.get_tenant,
        tenant_keys.list_versions,
        tenant_keys.rotate,
        tenant_keys.encryption_kek,
        lambda t: tenant_keys.decryption_kek(t, 1),
        lambda t: tenant_keys.set_min_decryption_version(t, 1),
    ):
        with pytest.raises(error):
            call(tenant_id)


# -- rotation ------------------------------------------------------------------------


def test_rotate_activates_a_new_version_and_demotes_the_old_one(tenant_keys: TenantKeys) -> None:
    tenant_id = _new_tenant(tenant_keys)
    first = tenant_keys.encryption_kek(tenant_id)

    assert tenant_keys.rotate(tenant_id) == 2
    assert _states(tenant_keys, tenant_id) == {1: DECRYPT_ONLY, 2: ACTIVE}
    second = tenant_keys.encryption_kek(tenant_id)
    assert (second.version, second.name) == (2, kek_key_name(tenant_id, 2))
    assert second.key != first.key
    assert tenant_keys.decryption_kek(tenant_id, 1) == first

    assert tenant_keys.rotate(tenant_id) == 3
    assert _states(tenant_keys, tenant_id) == {1: DECRYPT_ONLY, 2: DECRYPT_ONLY, 3: ACTIVE}


def test_rotate_after_disabling_the_active_version(tenant_keys: TenantKeys) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    tenant_keys.disable(tenant_id, 2)
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.encryption_kek(tenant_id)

    assert tenant_keys.rotate(tenant_id) == 3
    assert _states(tenant_keys, tenant_id) == {1: DECRYPT_ONLY, 2: DISABLED, 3: ACTIVE}
    assert tenant_keys.encryption_kek(tenant_id).version == 3


def test_concurrent_rotations_all_succeed_with_distinct_versions(
    tenant_keys: TenantKeys,
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = list(pool.map(lambda _: tenant_keys.rotate(tenant_id), range(12)))

    assert sorted(versions) == list(range(2, 14))
    states = _states(tenant_keys, tenant_id)
    assert [v for v, s in states.items() if s is ACTIVE] == [13]
    assert tenant_keys.encryption_kek(tenant_id).version == 13
    for version in range(1, 14):  # each row's key unwraps under its own version's context
        tenant_keys.clear_cache()
        assert tenant_keys.decryption_kek(tenant_id, version).version == version


# -- state transitions ---------------------------------------------------------------

LEGAL: dict[str, dict[KekState, KekState]] = {
    "disable": {ACTIVE: DISABLED, DECRYPT_ONLY: DISABLED},
    "enable": {DISABLED: DECRYPT_ONLY},
    "schedule_deletion": {DECRYPT_ONLY: PENDING, DISABLED: PENDING},
    "cancel_deletion": {PENDING: DISABLED},
    "destroy": {PENDING: DESTROYED},
}


def _operation(keys: TenantKeys, name: str) -> Callable[[str, int], object]:
    if name == "schedule_deletion":
        return lambda tenant_id, version: keys.schedule_deletion(tenant_id, version, TTL)
    method: Callable[[str, int], object] = getattr(keys, name)
    return method


@pytest.mark.parametrize("start", list(KekState))
@pytest.mark.parametrize("operation", list(LEGAL))
def test_every_transition(
    tenant_keys: TenantKeys, clock: FakeClock, operation: str, start: KekState
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, start)
    before = tenant_keys.list_versions(tenant_id)
    expected = LEGAL[operation].get(start)

    if expected is None:
        with pytest.raises(errors.FailedPrecondition) as failure:
            _operation(tenant_keys, operation)(tenant_id, version)
        assert failure.type is errors.FailedPrecondition
        assert tenant_keys.list_versions(tenant_id) == before
    else:
        changed = _operation(tenant_keys, operation)(tenant_id, version)
        assert changed == tenant_keys.list_versions(tenant_id)[version - 1]
        assert _states(tenant_keys, tenant_id)[version] is expected


@pytest.mark.parametrize("operation", list(LEGAL))
@pytest.mark.parametrize("version", [0, -1, 3, 10**12])
def test_unknown_versions_are_not_found(
    tenant_keys: TenantKeys, operation: str, version: int
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    with pytest.raises(errors.NotFound):
        _operation(tenant_keys, operation)(tenant_id, version)
    with pytest.raises(errors.NotFound):
        _operation(tenant_keys, operation)(UNKNOWN_TENANT, 1)


def test_state_changes_record_when_they_happened(tenant_keys: TenantKeys, clock: FakeClock) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    clock.advance(3600)
    disabled = tenant_keys.disable(tenant_id, 1)
    assert disabled.state_changed_at == datetime.fromtimestamp(clock.now(), UTC)
    assert disabled.created_at == disabled.state_changed_at - timedelta(hours=1)


def test_the_active_version_cannot_be_scheduled_for_deletion(tenant_keys: TenantKeys) -> None:
    tenant_id = _new_tenant(tenant_keys)
    with pytest.raises(errors.FailedPrecondition):
        tenant_keys.schedule_deletion(tenant_id, 1, DAY)
    assert _states(tenant_keys, tenant_id) == {1: ACTIVE}


@pytest.mark.parametrize("period", [-1.0, float("nan"), float("inf"), 1e300])
def test_waiting_period_must_be_a_sane_number(
    tenant_keys: TenantKeys, clock: FakeClock, period: float
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, DISABLED)
    with pytest.raises(errors.InvalidArgument):
        tenant_keys.schedule_deletion(tenant_id, version, period)
    assert _states(tenant_keys, tenant_id)[version] is DISABLED


def test_destroy_waits_for_the_deletion_date_then_erases_the_material(
    tenant_keys: TenantKeys, database: Database, clock: FakeClock
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, DECRYPT_ONLY)
    scheduled = tenant_keys.schedule_deletion(tenant_id, version, 7 * DAY)
    due = datetime.fromtimestamp(clock.now(), UTC) + timedelta(days=7)
    assert scheduled.deletion_due_at == due
    assert _row(database, tenant_id, version).wrapped_key is not None

    clock.advance(7 * DAY - 1)
    with pytest.raises(errors.FailedPrecondition):
        tenant_keys.destroy(tenant_id, version)
    assert _states(tenant_keys, tenant_id)[version] is PENDING

    clock.advance(1)
    destroyed = tenant_keys.destroy(tenant_id, version)
    assert destroyed.state is DESTROYED
    assert destroyed.destroyed_at == due
    assert destroyed.deletion_due_at == due
    row = _row(database, tenant_id, version)
    assert row.wrapped_key is None
    assert row.root_key_id == "fake:1"
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.decryption_kek(tenant_id, version)


def test_cancelled_deletion_comes_back_disabled_and_can_be_enabled(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, DECRYPT_ONLY)
    kek = tenant_keys.decryption_kek(tenant_id, version)
    tenant_keys.schedule_deletion(tenant_id, version, DAY)

    cancelled = tenant_keys.cancel_deletion(tenant_id, version)
    assert (cancelled.state, cancelled.deletion_due_at) == (DISABLED, None)
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.decryption_kek(tenant_id, version)

    assert tenant_keys.enable(tenant_id, version).state is DECRYPT_ONLY
    assert tenant_keys.decryption_kek(tenant_id, version) == kek


# -- what each state allows ----------------------------------------------------------


@pytest.mark.parametrize("state", list(KekState))
def test_decryption_is_allowed_only_for_active_and_decrypt_only(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider, clock: FakeClock, state: KekState
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, state)
    tenant_keys.clear_cache()
    if state in (ACTIVE, DECRYPT_ONLY):
        kek = tenant_keys.decryption_kek(tenant_id, version)
        assert (kek.name, kek.version, len(kek.key)) == (
            kek_key_name(tenant_id, version),
            version,
            32,
        )
    else:
        calls = root_provider.unwrap_calls
        with pytest.raises(errors.KeyUnavailable):
            tenant_keys.decryption_kek(tenant_id, version)
        assert root_provider.unwrap_calls == calls


def test_disabled_version_is_refused_although_the_root_provider_would_unwrap_it(
    tenant_keys: TenantKeys,
    root_provider: FakeRootKeyProvider,
    database: Database,
    clock: FakeClock,
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, DECRYPT_ONLY)
    key = tenant_keys.decryption_kek(tenant_id, version).key
    tenant_keys.disable(tenant_id, version)

    row = _row(database, tenant_id, version)
    assert row.wrapped_key is not None
    context = {"reelvault:tenant": tenant_id, "reelvault:kek-version": str(version)}
    assert root_provider.unwrap(WrappedKey(row.root_key_id, row.wrapped_key), context) == key

    calls = root_provider.unwrap_calls
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.decryption_kek(tenant_id, version)
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.resolver(tenant_id).wrapping_key(kek_key_name(tenant_id, version))
    assert root_provider.unwrap_calls == calls


def test_min_decryption_version(tenant_keys: TenantKeys, clock: FakeClock) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    tenant_keys.rotate(tenant_id)
    clock.advance(TTL)
    v1 = tenant_keys.decryption_kek(tenant_id, 1)

    assert tenant_keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    assert tenant_keys.get_tenant(tenant_id).min_decryption_version == 2
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.decryption_kek(tenant_id, 1)
    assert tenant_keys.decryption_kek(tenant_id, 2).version == 2
    assert tenant_keys.encryption_kek(tenant_id).version == 3

    # It can go down again, as in Vault; the state still has to allow decryption.
    tenant_keys.set_min_decryption_version(tenant_id, 1)
    assert tenant_keys.decryption_kek(tenant_id, 1) == v1


def test_min_decryption_version_is_bounded_by_the_current_version(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    tenant_keys.rotate(tenant_id)
    clock.advance(TTL)
    with pytest.raises(errors.InvalidArgument):
        tenant_keys.set_min_decryption_version(tenant_id, 0)
    with pytest.raises(errors.FailedPrecondition):
        tenant_keys.set_min_decryption_version(tenant_id, 4)
    # With no active version the latest version is the bound.
    tenant_keys.disable(tenant_id, 3)
    clock.advance(TTL)
    assert tenant_keys.set_min_decryption_version(tenant_id, 3).min_decryption_version == 3
    with pytest.raises(errors.FailedPrecondition):
        tenant_keys.set_min_decryption_version(tenant_id, 4)
    assert tenant_keys.get_tenant(tenant_id).min_decryption_version == 3


# -- retiring a version while another replica may still encrypt under it ---------------


def _at(clock: FakeClock, seconds: float = 0) -> str:
    moment = datetime.fromtimestamp(clock.now() + seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def replica(database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock) -> TenantKeys:
    """A second replica over the same catalog, with the same cache TTL."""
    return TenantKeys(database, root_provider, clock, cache_ttl=TTL)


def test_min_decryption_version_waits_a_cache_ttl_after_the_rotation(
    tenant_keys: TenantKeys, replica: TenantKeys, clock: FakeClock
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    assert replica.encryption_kek(tenant_id).version == 1  # replica 2 serves uploads
    rotated_at = _at(clock)
    tenant_keys.rotate(tenant_id)

    clock.advance(TTL - 0.5)
    assert replica.encryption_kek(tenant_id).version == 1  # stale, as documented
    message = (
        rf"raising the minimum decryption version to 2 is not allowed yet: KEK version 1 "
        rf"was the active version until {rotated_at}, .* cache \(60 s\) expires; allowed "
        rf"from {_at(clock, 0.5)} \(in 1 s\)"
    )
    for keys in (tenant_keys, replica):
        with pytest.raises(errors.FailedPrecondition, match=message):
            keys.set_min_decryption_version(tenant_id, 2)
    assert tenant_keys.get_tenant(tenant_id).min_decryption_version == 1

    clock.advance(0.5)  # every replica's cached v1 has expired now
    assert tenant_keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    assert replica.encryption_kek(tenant_id).version == 2


def test_each_version_a_raised_minimum_excludes_is_checked(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    clock.advance(TTL / 2)
    tenant_keys.rotate(tenant_id)  # v2 was active for half a TTL
    clock.advance(TTL / 2)

    with pytest.raises(errors.FailedPrecondition, match="KEK version 2 was the active"):
        tenant_keys.set_min_decryption_version(tenant_id, 3)
    assert tenant_keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    with pytest.raises(errors.FailedPrecondition, match="KEK version 2 was the active"):
        tenant_keys.set_min_decryption_version(tenant_id, 3)
    clock.advance(TTL / 2)
    assert tenant_keys.set_min_decryption_version(tenant_id, 3).min_decryption_version == 3


def test_lowering_the_minimum_is_never_held_back(tenant_keys: TenantKeys, clock: FakeClock) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    clock.advance(TTL)
    tenant_keys.set_min_decryption_version(tenant_id, 2)
    tenant_keys.rotate(tenant_id)
    # The way back from a mistake must stay open, whatever was rotated just now.
    assert tenant_keys.set_min_decryption_version(tenant_id, 1).min_decryption_version == 1
    assert tenant_keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    with pytest.raises(errors.FailedPrecondition):
        tenant_keys.set_min_decryption_version(tenant_id, 3)


@pytest.mark.parametrize("demotion", ["rotate", "disable"])
def test_scheduling_deletion_waits_a_cache_ttl_after_the_version_was_active(
    tenant_keys: TenantKeys, replica: TenantKeys, clock: FakeClock, demotion: str
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    replica.encryption_kek(tenant_id)
    demoted_at = _at(clock)
    if demotion == "rotate":
        tenant_keys.rotate(tenant_id)
    else:  # disabling the active version leaves the tenant with none
        tenant_keys.disable(tenant_id, 1)
    clock.advance(TTL - 1)

    message = (
        rf"scheduling it for deletion is not allowed yet: KEK version 1 was the active "
        rf"version until {demoted_at}, .* allowed from {_at(clock, 1)} \(in 1 s\)"
    )
    with pytest.raises(errors.FailedPrecondition, match=message):
        tenant_keys.schedule_deletion(tenant_id, 1, DAY)
    assert _states(tenant_keys, tenant_id)[1] is not PENDING

    clock.advance(1)
    assert tenant_keys.schedule_deletion(tenant_id, 1, DAY).state is PENDING


def test_a_later_state_change_of_a_long_retired_version_holds_nothing_up(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    """state_changed_at moves on with every change; the successor's creation bounds when
    the version stopped being active, so these are not refused."""
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    clock.advance(TTL)
    tenant_keys.disable(tenant_id, 1)
    tenant_keys.enable(tenant_id, 1)
    tenant_keys.schedule_deletion(tenant_id, 1, DAY)
    assert tenant_keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    tenant_keys.cancel_deletion(tenant_id, 1)
    assert tenant_keys.schedule_deletion(tenant_id, 1, DAY).state is PENDING


def test_a_version_disabled_while_active_counts_from_the_disable(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.disable(tenant_id, 1)  # stopped being active here, long before v2 exists
    clock.advance(TTL)
    tenant_keys.rotate(tenant_id)
    assert tenant_keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    assert tenant_keys.schedule_deletion(tenant_id, 1, TTL).state is PENDING


def test_the_waiting_period_is_at_least_the_cache_ttl(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, DISABLED)
    for period in (0, TTL - 0.001):
        with pytest.raises(errors.InvalidArgument, match=r"KEK cache TTL \(60\)"):
            tenant_keys.schedule_deletion(tenant_id, version, period)
    assert _states(tenant_keys, tenant_id)[version] is DISABLED

    scheduled = tenant_keys.schedule_deletion(tenant_id, version, TTL)
    assert scheduled.deletion_due_at == datetime.fromtimestamp(clock.now() + TTL, UTC)
    clock.advance(TTL)
    assert tenant_keys.destroy(tenant_id, version).state is DESTROYED


def test_without_a_cache_a_version_can_be_retired_at_once(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock
) -> None:
    keys = TenantKeys(database, root_provider, clock, cache_ttl=0)
    tenant_id = _new_tenant(keys)
    keys.rotate(tenant_id)
    assert keys.set_min_decryption_version(tenant_id, 2).min_decryption_version == 2
    keys.schedule_deletion(tenant_id, 1, 0)
    assert keys.destroy(tenant_id, 1).state is DESTROYED


def test_kek_repr_never_shows_the_key(tenant_keys: TenantKeys) -> None:
    kek = tenant_keys.encryption_kek(_new_tenant(tenant_keys))
    for text in (repr(kek), str(kek), f"{kek}"):
        assert kek.key.hex() not in text
        assert repr(kek.key) not in text
        assert kek.name in text
    assert {f.name for f in dataclasses.fields(KekVersion)}.isdisjoint({"key", "wrapped_key"})


# -- identity binding ----------------------------------------------------------------


def test_kek_is_wrapped_with_its_tenant_and_version_as_context(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    assert root_provider.contexts[-2:] == [
        {"reelvault:tenant": tenant_id, "reelvault:kek-version": "1"},
        {"reelvault:tenant": tenant_id, "reelvault:kek-version": "2"},
    ]


def _copy_material(database: Database, source: tuple[str, int], target: tuple[str, int]) -> None:
    with database.transaction() as session:
        repository = TenantRepository(session)
        origin = repository.key_version(*source)
        destination = repository.key_version(*target)
        destination.wrapped_key = origin.wrapped_key
        destination.root_key_id = origin.root_key_id


def test_wrapped_kek_copied_to_another_tenant_does_not_unwrap(
    tenant_keys: TenantKeys, database: Database
) -> None:
    victim, attacker = _new_tenant(tenant_keys), _new_tenant(tenant_keys)
    _copy_material(database, (victim, 1), (attacker, 1))
    tenant_keys.clear_cache()

    with pytest.raises(errors.DecryptionError):
        tenant_keys.decryption_kek(attacker, 1)
    with pytest.raises(errors.DecryptionError):
        tenant_keys.encryption_kek(attacker)
    assert len(tenant_keys.decryption_kek(victim, 1).key) == 32


def test_wrapped_kek_copied_to_another_version_does_not_unwrap(
    tenant_keys: TenantKeys, database: Database
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    _copy_material(database, (tenant_id, 1), (tenant_id, 2))
    tenant_keys.clear_cache()

    with pytest.raises(errors.DecryptionError):
        tenant_keys.decryption_kek(tenant_id, 2)


def test_tampered_wrapped_kek_does_not_unwrap(tenant_keys: TenantKeys, database: Database) -> None:
    tenant_id = _new_tenant(tenant_keys)
    with database.transaction() as session:
        row = TenantRepository(session).key_version(tenant_id, 1)
        assert row.wrapped_key is not None
        row.wrapped_key = bytes([row.wrapped_key[0] ^ 1]) + row.wrapped_key[1:]
    tenant_keys.clear_cache()
    with pytest.raises(errors.DecryptionError):
        tenant_keys.decryption_kek(tenant_id, 1)


def test_resolver_answers_only_for_its_own_tenant(tenant_keys: TenantKeys) -> None:
    tenant_id, other = _new_tenant(tenant_keys), _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    resolver = tenant_keys.resolver(tenant_id)

    for version in (1, 2):
        expected = tenant_keys.decryption_kek(tenant_id, version).key
        assert resolver.wrapping_key(kek_key_name(tenant_id, version)) == expected
    assert resolver.wrapping_key(kek_key_name(other, 1)) is None
    assert resolver.wrapping_key(kek_key_name(tenant_id, 3)) is None
    assert resolver.wrapping_key("alias/some-other-key") is None
    assert resolver.wrapping_key(f"tenant/{tenant_id}/kek/1") is None  # not fixed-width
    assert tenant_id in repr(resolver)


def test_resolver_raises_key_unavailable_for_a_forbidden_version(
    tenant_keys: TenantKeys, clock: FakeClock
) -> None:
    tenant_id, version = _version_in(tenant_keys, clock, DECRYPT_ONLY)
    tenant_keys.set_min_decryption_version(tenant_id, 2)
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.resolver(tenant_id).wrapping_key(kek_key_name(tenant_id, version))


# -- cache ---------------------------------------------------------------------------


def test_unwrapped_keks_are_cached_until_the_ttl_expires(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider, clock: FakeClock
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.clear_cache()
    calls = root_provider.unwrap_calls

    kek = tenant_keys.decryption_kek(tenant_id, 1)
    assert tenant_keys.encryption_kek(tenant_id) == kek
    clock.advance(59.9)
    assert tenant_keys.decryption_kek(tenant_id, 1) == kek
    assert root_provider.unwrap_calls == calls + 1

    clock.advance(0.1)
    assert tenant_keys.encryption_kek(tenant_id) == kek
    assert root_provider.unwrap_calls == calls + 2


def test_new_keys_are_cached_when_generated(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.encryption_kek(tenant_id)
    tenant_keys.rotate(tenant_id)
    assert tenant_keys.encryption_kek(tenant_id).version == 2
    assert root_provider.unwrap_calls == 0


def test_zero_ttl_disables_the_cache(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock
) -> None:
    keys = TenantKeys(database, root_provider, clock, cache_ttl=0)
    tenant_id = _new_tenant(keys)
    keys.encryption_kek(tenant_id)
    keys.encryption_kek(tenant_id)
    assert root_provider.unwrap_calls == 2


@pytest.mark.parametrize("ttl", [-1.0, float("nan"), float("inf")])
def test_cache_ttl_must_be_a_sane_number(
    database: Database, root_provider: FakeRootKeyProvider, clock: FakeClock, ttl: float
) -> None:
    with pytest.raises(errors.ConfigurationError):
        TenantKeys(database, root_provider, clock, cache_ttl=ttl)


@pytest.mark.parametrize(
    "change",
    [
        lambda keys, tenant_id: keys.disable(tenant_id, 1),
        lambda keys, tenant_id: keys.set_min_decryption_version(tenant_id, 2),
    ],
    ids=["disable", "min_decryption_version"],
)
def test_state_changes_take_effect_at_once_on_this_replica(
    tenant_keys: TenantKeys,
    root_provider: FakeRootKeyProvider,
    clock: FakeClock,
    change: Callable[[TenantKeys, str], object],
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    clock.advance(TTL)
    tenant_keys.decryption_kek(tenant_id, 1)  # cached
    calls = root_provider.unwrap_calls

    change(tenant_keys, tenant_id)
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.decryption_kek(tenant_id, 1)
    assert root_provider.unwrap_calls == calls


def test_disabling_the_active_version_stops_encryption_at_once(tenant_keys: TenantKeys) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.encryption_kek(tenant_id)  # cached
    tenant_keys.disable(tenant_id, 1)
    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.encryption_kek(tenant_id)


def test_other_replicas_see_a_state_change_within_the_ttl(
    tenant_keys: TenantKeys,
    database: Database,
    root_provider: FakeRootKeyProvider,
    clock: FakeClock,
) -> None:
    replica = TenantKeys(database, root_provider, clock, cache_ttl=60.0)
    tenant_id = _new_tenant(tenant_keys)
    kek = replica.decryption_kek(tenant_id, 1)

    tenant_keys.disable(tenant_id, 1)
    clock.advance(59)
    assert replica.decryption_kek(tenant_id, 1) == kek  # documented: stale until the TTL
    clock.advance(1)
    with pytest.raises(errors.KeyUnavailable):
        replica.decryption_kek(tenant_id, 1)


def test_a_read_racing_a_state_change_is_not_cached(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.rotate(tenant_id)
    tenant_keys.clear_cache()
    # The catalog said decrypt-only; the disable commits while the key is being unwrapped.

    def disable_meanwhile() -> None:
        tenant_keys.disable(tenant_id, 1)

    root_provider.on_unwrap = disable_meanwhile
    tenant_keys.decryption_kek(tenant_id, 1)

    with pytest.raises(errors.KeyUnavailable):
        tenant_keys.decryption_kek(tenant_id, 1)


def test_the_newest_version_read_as_active_is_the_encryption_key(
    tenant_keys: TenantKeys, replica: TenantKeys
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    assert replica.encryption_kek(tenant_id).version == 1
    tenant_keys.rotate(tenant_id)
    # The replica reads an object sealed under v2, and so learns that v2 is active.
    assert replica.decryption_kek(tenant_id, 2).version == 2
    assert replica.encryption_kek(tenant_id).version == 2
    assert replica.decryption_kek(tenant_id, 1).version == 1  # still cached for decryption


def test_an_older_read_arriving_last_does_not_demote_the_newer_active_version(
    tenant_keys: TenantKeys, replica: TenantKeys, root_provider: FakeRootKeyProvider
) -> None:
    tenant_id = _new_tenant(tenant_keys)

    def rotate_and_read_meanwhile() -> None:  # while the replica unwraps v1...
        tenant_keys.rotate(tenant_id)
        assert replica.encryption_kek(tenant_id).version == 2

    root_provider.on_unwrap = rotate_and_read_meanwhile
    assert replica.encryption_kek(tenant_id).version == 1  # ...read before the rotation
    assert replica.encryption_kek(tenant_id).version == 2


def test_a_rotation_overtaken_by_another_does_not_cache_its_version_as_active(
    tenant_keys: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    cache = tenant_keys._cache
    real_replace = cache.replace
    overtaken = False

    def another_rotation_commits_first(tenant: str, kek: Kek, **kwargs: object) -> None:
        nonlocal overtaken
        if not overtaken:
            overtaken = True
            assert tenant_keys.rotate(tenant) == kek.version + 1
        real_replace(tenant, kek, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "replace", another_rotation_commits_first)
    assert tenant_keys.rotate(tenant_id) == 2
    monkeypatch.undo()

    assert _states(tenant_keys, tenant_id) == {1: DECRYPT_ONLY, 2: DECRYPT_ONLY, 3: ACTIVE}
    assert tenant_keys.encryption_kek(tenant_id).version == 3


def test_the_ttl_counts_from_the_catalog_read_not_from_a_slow_unwrap(
    tenant_keys: TenantKeys, root_provider: FakeRootKeyProvider, clock: FakeClock
) -> None:
    tenant_id = _new_tenant(tenant_keys)
    tenant_keys.clear_cache()
    root_provider.on_unwrap = lambda: clock.advance(10)  # a slow root provider
    kek = tenant_keys.encryption_kek(tenant_id)
    calls = root_provider.unwrap_calls

    clock.advance(TTL - 10 - 0.1)
    assert tenant_keys.encryption_kek(tenant_id) == kek
    assert root_provider.unwrap_calls == calls
    clock.advance(0.1)
    assert tenant_keys.encryption_kek(tenant_id) == kek
    assert root_provider.unwrap_calls == calls + 1


def test_cache_is_safe_under_concurrent_use(tenant_keys: TenantKeys) -> None:
    tenant_ids = [_new_tenant(tenant_keys) for _ in range(4)]
    tenant_keys.clear_cache()
    expected = {t: tenant_keys.decryption_kek(t, 1) for t in tenant_ids}
    start = threading.Barrier(8)

    def work(worker: int) -> list[Kek]:
        start.wait()
        results = []
        for i in range(50):
            if i % 10 == 0:
                tenant_keys.clear_cache()
            results.append(tenant_keys.decryption_kek(tenant_ids[(worker + i) % 4], 1))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [kek for batch in pool.map(work, range(8)) for kek in batch]
    assert {kek.name: kek for kek in results} == {kek.name: kek for kek in expected.values()}
