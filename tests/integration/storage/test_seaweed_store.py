"""The S3 backend against a real SeaweedFS: the shared suite over HTTP, and the helper."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from reelvault.errors import ConfigurationError, Unavailable
from reelvault.storage import S3ObjectStore
from reelvault.storage.conformance import S3ObjectStoreConformance, payload
from reelvault.storage.seaweed import SeaweedServer

MIB = 1024 * 1024
BUCKET = "reelvault-it"


@pytest.fixture(scope="module")
def shared_store(seaweed: SeaweedServer) -> S3ObjectStore:
    # One client for the module: every conformance test writes under its own prefix, and
    # building a boto3 client per test would cost more than most of the tests.
    return seaweed.object_store(BUCKET, part_size=5 * MIB, max_in_flight=3)


class TestSeaweedConformance(S3ObjectStoreConformance):
    @pytest.fixture
    def store(self, shared_store: S3ObjectStore) -> S3ObjectStore:
        return shared_store


def test_parts_below_the_s3_minimum_are_refused_by_seaweedfs(seaweed):
    # Why S3ObjectStore refuses part sizes under 5 MiB: SeaweedFS enforces S3's floor.
    client = seaweed.object_store(BUCKET).client
    key = f"small-parts/{uuid.uuid4().hex}"
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    try:
        etags = [
            client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n, Body=b"x" * 100
            )["ETag"]
            for n in (1, 2)
        ]
        with pytest.raises(Exception) as caught:
            client.complete_multipart_upload(
                Bucket=BUCKET,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [
                        {"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)
                    ]
                },
            )
        assert caught.value.response["Error"]["Code"] == "EntityTooSmall"
    finally:
        client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)


def test_wrong_credentials_are_refused(seaweed):
    store = S3ObjectStore(
        BUCKET,
        endpoint_url=seaweed.endpoint_url,
        access_key=seaweed.access_key,
        secret_key="not-the-secret",
    )
    with pytest.raises(ConfigurationError):
        store.head("anything")


def test_a_range_is_one_request_with_exact_bytes(seaweed):
    store = seaweed.object_store(BUCKET, part_size=5 * MIB)
    key = f"range/{uuid.uuid4().hex}"
    data = payload(2 * 5 * MIB + 100)
    store.put(key, [data])
    requests: list[str] = []
    store.client.meta.events.register(
        "before-send.s3.GetObject",
        lambda request, **_: requests.append(request.headers["Range"].decode()),
        unique_id="count-gets",
    )
    offset = 5 * MIB - 7
    assert store.get_range(key, offset, 64 * 1024) == data[offset : offset + 64 * 1024]
    assert requests == [f"bytes={offset}-{offset + 64 * 1024 - 1}"]


def test_a_second_server_runs_beside_the_first_and_stops_cleanly(seaweed, tmp_path):
    second = SeaweedServer(tmp_path / "second")
    with second:
        pid = second.pid
        ports = second.ports
        assert ports.s3 != seaweed.ports.s3
        store = second.object_store("second-bucket", part_size=5 * MIB)
        store.put("k", [b"hello"])
        assert store.get_range("k", 1, 3) == b"ell"
        assert BUCKET not in [b["Name"] for b in store.client.list_buckets()["Buckets"]]
    assert not second.running()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited and reaped: nothing left behind
    leftover = [
        path
        for port in ports.all()
        for number in (port, port + 10_000)
        for path in Path("/tmp").glob(f"seaweedfs-*-{number}.sock")
    ]
    assert leftover == []
    with pytest.raises(Unavailable):
        _ = second.endpoint_url
    second.stop()  # idempotent


def test_objects_survive_a_restart_on_the_same_ports(tmp_path):
    server = SeaweedServer(tmp_path / "data", access_key="dev", secret_key="dev-secret")
    with server:
        first_ports = server.ports
        server.object_store("persist", part_size=5 * MIB).put("k", [b"kept"])
    with server:
        assert server.ports == first_ports
        assert server.object_store("persist", part_size=5 * MIB).get_range("k", 0, 4) == b"kept"


def test_delete_removes_every_version_on_a_versioned_bucket(seaweed):
    store = seaweed.object_store("reelvault-versioned", part_size=5 * MIB)
    store.client.put_bucket_versioning(
        Bucket=store.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    key = f"versioned/{uuid.uuid4().hex}"
    store.put(key, [b"v1"])
    store.put(key, [b"v2"])
    store.client.delete_object(Bucket=store.bucket, Key=key)  # a delete marker on top
    store.put(key, [b"v3"])
    store.put(key + "-neighbour", [b"n"])
    store.delete(key)
    listed = store.client.list_object_versions(Bucket=store.bucket, Prefix=key)
    left = [v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]
    assert left == [key + "-neighbour"]
    assert store.head(key) is None
    store.delete(key)


def test_a_server_that_cannot_start_leaves_nothing(tmp_path):
    not_weed = tmp_path / "weed"
    not_weed.write_text("#!/bin/sh\nexit 3\n")
    not_weed.chmod(0o755)
    server = SeaweedServer(tmp_path / "data", binary=not_weed, startup_timeout=5)
    with pytest.raises(Unavailable):
        server.start()
    assert not server.running()
    assert server.pid is None
