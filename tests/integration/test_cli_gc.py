"""`reelvault gc` end to end against a real SeaweedFS (issue #11): a dry run lists what a
run deletes and deletes nothing; objects the catalog has no record of are reported and kept;
the command refuses the dev defaults in an empty directory and works with a config file.

The vault is written through the domain with the same settings the command reads (a SQLite
catalog and a keyring in a temporary directory, a bucket of the session's SeaweedFS); each
step is a `reelvault gc` subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.catalog.tables import AssetRow, DeletedObjectRow
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


def run(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*argv),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@dataclass
class Deployment:
    settings: Settings
    config: Path
    bare_env: dict[str, str]  # no REELVAULT_* at all


@pytest.fixture
def deployment(seaweed: SeaweedServer, tmp_path: Path) -> Deployment:
    """One vault on SeaweedFS, its settings in a config file (as a CronJob would have)."""
    bucket = f"gc-{uuid.uuid4().hex[:12]}"
    seaweed.object_store(bucket)  # creates the bucket
    data = tmp_path / "data"
    data.mkdir()
    init_keyring(data / "keyring.json")
    settings = Settings(
        data_dir=data,
        s3_endpoint_url=seaweed.endpoint_url,
        s3_region=seaweed.region,
        s3_bucket=bucket,
        s3_access_key_id=seaweed.access_key,
        s3_secret_access_key=seaweed.secret_key,
    )
    config = tmp_path / "reelvault.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        f'database_url = "sqlite:///{data / "catalog.sqlite3"}"\n'
        f's3_endpoint_url = "{seaweed.endpoint_url}"\n'
        f's3_region = "{seaweed.region}"\n'
        f's3_bucket = "{bucket}"\n'
        f's3_access_key_id = "{seaweed.access_key}"\n'
        f's3_secret_access_key = "{seaweed.secret_key}"\n'
    )
    config.chmod(0o600)
    bare = {k: v for k, v in os.environ.items() if not k.startswith("REELVAULT_")}
    return Deployment(settings, config, bare)


@pytest.fixture
def vault(deployment: Deployment) -> Iterator[Vault]:
    vault = Vault.from_settings(deployment.settings)
    try:
        yield vault
    finally:
        vault.close()


def put(vault: Vault, tenant: str, path: str) -> str:
    """Upload a small asset; its object key."""
    upload = vault.assets.begin_upload(tenant, UploadSpec(path=path))
    upload.write(os.urandom(5000))
    info = upload.complete()
    with vault.database.transaction(readonly=True) as session:
        key = session.scalar(select(AssetRow.object_key).where(AssetRow.id == info.id))
    assert key is not None
    return key


def test_dry_run_lists_then_a_run_deletes_only_known_garbage(
    deployment: Deployment, vault: Vault, tmp_path: Path
):
    tenant = vault.tenant_keys.create_tenant("gc-studios").id
    kept = put(vault, tenant, "kept.mp4")
    # an asset the catalog has no record of: a restored, older catalog sees every newer
    # asset so (its row is gone without a trace)
    unknown = put(vault, tenant, "newer.mp4")
    with vault.database.transaction() as session:
        session.execute(delete(AssetRow).where(AssetRow.object_key == unknown))
    # a deleted asset whose object the store kept (its delete failed): recorded garbage
    garbage = put(vault, tenant, "deleted.mp4")
    with vault.database.transaction() as session:
        session.execute(delete(AssetRow).where(AssetRow.object_key == garbage))
        # recorded long enough ago: gc keeps a record younger than its threshold
        session.add(
            DeletedObjectRow(object_key=garbage, deleted_at=datetime.now(UTC) - timedelta(hours=2))
        )
    stored = {kept, unknown, garbage}

    dry = run(
        deployment.bare_env, "--json", "gc", "--dry-run", "--config", str(deployment.config),
        cwd=tmp_path,
    )  # fmt: skip

    assert dry.returncode == 0, dry.stderr
    data = json.loads(dry.stdout)
    assert data["dry_run"] is True
    assert data["keys"]["objects"] == [garbage]
    assert data["keys"]["unknown_objects"] == [unknown]
    assert (data["deleted_objects"], data["unknown_objects"]) == (1, 1)
    assert set(vault.store.list_keys("t/")) == stored  # nothing deleted
    assert dry.stderr.startswith(
        f"reelvault gc --dry-run: catalog sqlite:///{deployment.settings.data_dir}/"
        f"catalog.sqlite3, bucket {deployment.settings.s3_bucket} at "
        f"{deployment.settings.s3_endpoint_url}, root keys local keyring "
    )
    assert deployment.settings.s3_secret_access_key not in dry.stderr + dry.stdout

    text = run(deployment.bare_env, "gc", "--config", str(deployment.config), cwd=tmp_path)

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert (
        lines[0] == "removed 0 stale upload(s), aborted 0 multipart upload(s), deleted 1 object(s)"
    )
    assert lines[1].startswith("unknown to the catalog: 1 object(s), 0 multipart upload(s) (kept;")
    assert lines[1].endswith(f"e.g. {unknown}")
    assert set(vault.store.list_keys("t/")) == {kept, unknown}
    with vault.database.transaction(readonly=True) as session:
        assert list(session.scalars(select(DeletedObjectRow.object_key))) == []

    forced = run(
        deployment.bare_env, "--json", "gc", "--delete-unknown", "--config",
        str(deployment.config), cwd=tmp_path,
    )  # fmt: skip

    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["keys"]["objects"] == [unknown]
    assert set(vault.store.list_keys("t/")) == {kept}


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_refuses_the_dev_defaults_in_an_empty_directory(
    deployment: Deployment, tmp_path: Path, dry_run: list[str]
):
    empty = tmp_path / "empty"
    empty.mkdir()

    done = run(deployment.bare_env, "gc", *dry_run, cwd=empty)

    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("reelvault: error: gc")
    assert "would act on the dev defaults (sqlite:///.reelvault/catalog.sqlite3" in line
    assert "REELVAULT_DATABASE_URL" in line and "--dev" in line
    assert list(empty.iterdir()) == []  # no catalog created


def test_the_data_directory_in_the_environment_is_enough(deployment: Deployment, tmp_path: Path):
    settings = deployment.settings
    env = deployment.bare_env | {
        "REELVAULT_DATA_DIR": str(settings.data_dir),
        "REELVAULT_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        "REELVAULT_S3_REGION": str(settings.s3_region),
        "REELVAULT_S3_BUCKET": settings.s3_bucket,
        "REELVAULT_S3_ACCESS_KEY_ID": str(settings.s3_access_key_id),
        "REELVAULT_S3_SECRET_ACCESS_KEY": str(settings.s3_secret_access_key),
    }
    done = run(env, "--json", "gc", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["unknown_objects"] == 0
