from __future__ import annotations

import pytest
from origin_harness import OriginThread, target_of, upload

from reelvault.app import Vault

pytestmark = pytest.mark.db


def test_smoke(vault: Vault, origin: OriginThread, tenant: str) -> None:
    data = bytes(range(256)) * 4096
    info = upload(vault, tenant, "show/ep1.mp4", data, content_type="video/mp4")
    issued = vault.distribution.issue(tenant, asset_id=info.id, ttl=600, session_id="s1")
    answer = origin.fetch(target_of(issued.url))
    assert answer.status == 200, answer
    assert answer.body == data
    answer = origin.fetch(target_of(issued.url), headers={"Range": "bytes=100-199"})
    assert answer.status == 206
    assert answer.body == data[100:200]
    print(answer.headers)
