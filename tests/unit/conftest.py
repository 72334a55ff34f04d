"""Fixtures shared by unit tests: the asset domain's, and a catalog for the commands that
open it themselves (``reelvault apikey bootstrap``)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture
def catalog_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """``REELVAULT_DATABASE_URL`` naming a SQLite file in ``tmp_path`` that does not exist
    yet (the working directory too), with no other setting that could point elsewhere."""
    for name in ("REELVAULT_DATA_DIR", "REELVAULT_CONFIG", "REELVAULT_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    monkeypatch.setenv("REELVAULT_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    return url


@pytest.fixture
def catalog_path(catalog_url: str) -> Path:
    return Path(catalog_url.removeprefix("sqlite:///"))
