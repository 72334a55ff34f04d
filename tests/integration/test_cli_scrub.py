"""`reelvault scrub` end to end against a real SeaweedFS: it finds a corrupted stored header.

Assets are written through the domain with the same settings the command reads (a SQLite
catalog and a keyring in a temporary directory, a bucket of the session's SeaweedFS); then
one byte of one stored object's header is flipped behind reelvault's back, over S3, while
the catalog's copy stays intact. Each step is a `reelvault ... --json scrub` subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from reelvault.app import Vault
from reelvault.assets import MAX_CHUNK, AssetInfo, UploadSpec
from reelvault.catalog.tables import AssetRow
from reelvault.config import Settings
from reelvault.keys.local import init_keyring
from reelvault.storage.seaweed import SeaweedServer

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).with_name("reelvault")
TIMEOUT = 120.0


def command(*argv: str) -> list[str]:
    if CLI.exists():
        return [str(CLI), *argv]
    code = "import sys; from reelvault.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, *argv]


@pytest.fixture
def env(seaweed: SeaweedServer, tmp_path: Path) -> dict[str, str]:
    """The settings of one vault on SeaweedFS, as the command's environment."""
    bucket = f"scrub-{uuid.uuid4().hex[:12]}"
    seaweed.object_store(bucket)  # creates the bucket
    init_keyring(tmp_path / "keyring.json")
    settings = {
        "REELVAULT_DATA_DIR": str(tmp_path),
        "REELVAULT_S3_ENDPOINT_URL": seaweed.endpoint_url,
        "REELVAULT_S3_REGION": seaweed.region,
        "REELVAULT_S3_BUCKET": bucket,
        "REELVAULT_S3_ACCESS_KEY_ID": seaweed.access_key,
        "REELVAULT_S3_SECRET_ACCESS_KEY": seaweed.secret_key,
        "REELVAULT_LOG_FORMAT": "json",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("REELVAULT_")}
    return base | settings


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        data_dir=Path(env["REELVAULT_DATA_DIR"]),
        s3_endpoint_url=env["REELVAULT_S3_ENDPOINT_URL"],
        s3_region=env["REELVAULT_S3_REGION"],
        s3_bucket=env["REELVAULT_S3_BUCKET"],
        s3_access_key_id=env["REELVAULT_S3_ACCESS_KEY_ID"],
        s3_secret_access_key=env["REELVAULT_S3_SECRET_ACCESS_KEY"],
    )


def upload(vault: Vault, tenant: str, path: str, data: bytes) -> AssetInfo:
    upload = vault.assets.begin_upload(tenant, UploadSpec(path=path))
    for i in range(0, len(data), MAX_CHUNK):
        upload.write(data[i : i + MAX_CHUNK])
    return upload.complete()


def scrub(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        command("--json", "scrub", *args),
        env=env,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    stderr = done.stderr.decode()
    try:
        data = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"exit {done.returncode}, no JSON: {done.stdout!r}\n{stderr[-3000:]}")
    return done.returncode, data, stderr


def test_scrub_finds_a_corrupted_stored_header(env: dict[str, str]):
    vault = Vault.from_settings(settings_of(env))
    try:
        tenant = vault.tenant_keys.create_tenant("scrubbed-studios").id
        intact = upload(vault, tenant, "intact.mp4", os.urandom(3 * 1024 * 1024 + 5))
        damaged = upload(vault, tenant, "damaged.mp4", os.urandom(200_000))
        [key] = [k for k in vault.store.list_keys(f"t/{tenant}/") if _owner(vault, k) == damaged.id]
        original = vault.store.get_range(key, 0, vault.store.head(key).size)
        corrupted = bytearray(original)
        corrupted[57] ^= 0x80  # inside the header; the catalog's copy stays as it was
        vault.store.put(key, [bytes(corrupted)])
    finally:
        vault.close()

    code, data, stderr = scrub(env, "--rate", "64MiB/s")

    assert code == 3, stderr[-3000:]
    found = data["pass"]
    assert found["complete"] and found["assets_checked"] == 2 and found["damaged"] == 1
    [finding] = found["findings"]
    assert finding["asset_id"] == damaged.id and finding["asset_id"] != intact.id
    assert (finding["tenant_id"], finding["object_key"]) == (tenant, key)
    assert (finding["result"], finding["problem"]) == ("damaged", "header-mismatch")
    assert finding["byte_offset"] == 57
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = {line["event"] for line in lines}
    assert {"scrub pass started", "scrub found a damaged asset", "scrub pass complete"} <= events

    # the verdict stays in the catalog
    code, report, _ = scrub(env, "--report")
    assert code == 3 and report["pass"]["findings"] == found["findings"]

    # once the object is repaired, the next pass finds nothing
    vault = Vault.from_settings(settings_of(env))
    try:
        vault.store.put(key, [original])
    finally:
        vault.close()
    code, again, _ = scrub(env)
    assert code == 0
    assert again["pass"]["number"] == found["number"] + 1
    assert again["pass"]["damaged"] == 0 and again["pass"]["findings"] == []


def _owner(vault: Vault, key: str) -> str:
    with vault.database.transaction(readonly=True) as session:
        return session.scalar(select(AssetRow.id).where(AssetRow.object_key == key)) or ""
