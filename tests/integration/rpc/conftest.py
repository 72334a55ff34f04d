"""Fixtures for the gRPC tests: a real server (see rpc_harness.py) over the ``database``
fixture (SQLite, or PostgreSQL with ``REELVAULT_TEST_DATABASE_URL``), the fake root key
provider, and an object store that is in-memory by default, or SeaweedFS as well for the
tests that ask for ``store`` (parametrized over both)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from rpc_harness import MiB, ServerThread, Stubs, Tenancy, make_tenancy

from reelvault.app import Vault
from reelvault.auth import Role
from reelvault.config import Settings
from reelvault.storage import MemoryObjectStore, ObjectStore, S3ObjectStore
from reelvault.storage.seaweed import SeaweedServer

# -- stores ----------------------------------------------------------------------------


@pytest.fixture
def memory_store() -> MemoryObjectStore:
    # Small parts, so that multi-MiB uploads really are multipart uploads.
    return MemoryObjectStore(part_size=256 * 1024, max_in_flight=2)


@pytest.fixture(scope="session")
def seaweed_store(seaweed: SeaweedServer) -> S3ObjectStore:
    return seaweed.object_store("reelvault-rpc", part_size=5 * MiB, max_in_flight=2)


@pytest.fixture(params=["memory", "seaweed"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Parametrized over the in-memory store and a real SeaweedFS."""
    name = "memory_store" if request.param == "memory" else "seaweed_store"
    store: ObjectStore = request.getfixturevalue(name)
    return store


# -- the server ------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return Settings(grpc_port=0, shutdown_grace=5.0)


@pytest.fixture
def vault(database, root_provider, clock, memory_store) -> Vault:
    """Over the in-memory store; modules testing storage override ``vault`` with ``store``."""
    return Vault.from_parts(database=database, root=root_provider, store=memory_store, clock=clock)


@pytest.fixture
def server(vault: Vault, settings: Settings) -> Iterator[ServerThread]:
    thread = ServerThread(vault, settings)
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with server.channel() as channel:
        yield channel


@pytest.fixture
def api(channel: grpc.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture
def platform_token(vault: Vault) -> str:
    return vault.api_keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1]


@pytest.fixture
def acme(vault: Vault) -> Tenancy:
    return make_tenancy(vault, "acme")


@pytest.fixture
def globex(vault: Vault) -> Tenancy:
    return make_tenancy(vault, "globex")
