"""Fixtures for the origin tests: the origin over a Vault on the ``database`` fixture
(SQLite, or PostgreSQL with ``REELVAULT_TEST_DATABASE_URL``), the fake root key provider,
a fake clock (tests move time instead of sleeping), and a real SeaweedFS store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from origin_harness import OriginThread

from reelvault.app import Vault
from reelvault.audit import MemoryAuditSink
from reelvault.distribution.service import DistributionConfig
from reelvault.origin.app import OriginConfig
from reelvault.storage import S3ObjectStore
from reelvault.storage.seaweed import SeaweedServer

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def seaweed_store(seaweed: SeaweedServer) -> S3ObjectStore:
    return seaweed.object_store("reelvault-origin", part_size=5 * MiB, max_in_flight=2)


@pytest.fixture
def audit_sink() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture
def vault(database, root_provider, clock, seaweed_store, audit_sink) -> Vault:
    return Vault.from_parts(
        database=database,
        root=root_provider,
        store=seaweed_store,
        clock=clock,
        audit_sink=audit_sink,
        distribution=DistributionConfig(
            base_url="http://origin.test",
            default_ttl=600,
            max_ttl=86400,
            leeway=60,
            revocation_refresh=0,
        ),
    )


@pytest.fixture
def origin_config() -> OriginConfig:
    return OriginConfig(leeway=60)


@pytest.fixture
def origin(vault: Vault, origin_config: OriginConfig) -> Iterator[OriginThread]:
    thread = OriginThread(vault, origin_config)
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def tenant(vault: Vault) -> str:
    return vault.tenant_keys.create_tenant("studio").id
