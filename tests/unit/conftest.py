"""Fixtures shared by the unit tests of the asset domain."""

from __future__ import annotations

import pytest

from reelvault.assets import Assets
from reelvault.storage import MemoryObjectStore

MiB = 1024 * 1024


@pytest.fixture
def store() -> MemoryObjectStore:
    """An in-memory store with S3's smallest part size, two parts in flight."""
    return MemoryObjectStore(part_size=5 * MiB, max_in_flight=2)


@pytest.fixture
def assets(database, tenant_keys, store, clock) -> Assets:
    return Assets(database, tenant_keys, store, clock)


@pytest.fixture
def tenant(tenant_keys) -> str:
    return tenant_keys.create_tenant("acme").id
