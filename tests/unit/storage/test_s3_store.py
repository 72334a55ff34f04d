"""The S3 backend on moto: the shared suite, error translation and client settings.

moto serves ranged GETs by reading whole objects, so these tests check correctness only;
tests/integration/storage runs the same suite against a real SeaweedFS.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from moto import mock_aws

from reelvault.errors import (
    ConfigurationError,
    NotFound,
    OutOfRange,
    ReelvaultError,
    Unavailable,
)
from reelvault.storage import S3ObjectStore
from reelvault.storage.conformance import S3ObjectStoreConformance, payload
from reelvault.storage.s3 import map_error

MIB = 1024 * 1024
BUCKET = "reelvault-unit"


@pytest.fixture
def moto_client() -> Iterator[object]:
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


class TestMotoConformance(S3ObjectStoreConformance):
    @pytest.fixture
    def store(self, moto_client) -> S3ObjectStore:
        store = S3ObjectStore(BUCKET, client=moto_client, part_size=5 * MIB, max_in_flight=3)
        store.ensure_bucket()
        return store


@pytest.fixture
def store(moto_client) -> S3ObjectStore:
    store = S3ObjectStore(BUCKET, client=moto_client, part_size=5 * MIB)
    store.ensure_bucket()
    return store


def test_delete_removes_every_version_and_delete_marker(store):
    store.client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    store.put("asset", [b"v1"])
    store.put("asset", [b"v2"])
    store.client.delete_object(Bucket=BUCKET, Key="asset")  # a delete marker on top
    store.put("asset", [b"v3"])
    store.put("asset-2", [b"a neighbour sharing the prefix"])
    store.delete("asset")
    listed = store.client.list_object_versions(Bucket=BUCKET, Prefix="asset")
    left = [v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])]
    assert left == ["asset-2"]
    store.delete("asset")  # idempotent on a versioned bucket too
    assert store.get_range("asset-2", 0, 1) == b"a"


def test_ensure_bucket_is_idempotent(store):
    store.ensure_bucket()
    assert BUCKET in [b["Name"] for b in store.client.list_buckets()["Buckets"]]


def test_ensure_bucket_outside_us_east_1():
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        S3ObjectStore("reelvault-eu", client=client, part_size=5 * MIB).ensure_bucket()
        location = client.get_bucket_location(Bucket="reelvault-eu")
        assert location["LocationConstraint"] == "eu-west-1"


def test_a_missing_bucket_is_a_configuration_error(moto_client):
    store = S3ObjectStore("no-such-bucket", client=moto_client, part_size=5 * MIB)
    with pytest.raises(ConfigurationError):
        store.get_range("k", 0, 1)
    with pytest.raises(ConfigurationError):
        store.put("k", [b"x"])


def test_store_built_from_settings_talks_to_s3():
    with mock_aws():
        store = S3ObjectStore(
            BUCKET, region="us-east-1", access_key="testing", secret_key="testing"
        )
        store.ensure_bucket()
        store.put("k", [payload(100)])
        assert store.get_range("k", 99, 1) == payload(100)[99:]


def client_error(code: str, status: int, message: str = "AWS says: secret detail") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client_error("NoSuchKey", 404), NotFound),
        (client_error("404", 404), NotFound),
        (client_error("NoSuchUpload", 404), NotFound),
        (client_error("InvalidRange", 416), OutOfRange),
        (client_error("SomethingNew", 416), OutOfRange),
        (client_error("SlowDown", 503), Unavailable),
        (client_error("InternalError", 500), Unavailable),
        (client_error("Unknown5xx", 502), Unavailable),
        (client_error("TooManyRequests", 429), Unavailable),
        (client_error("ExpiredToken", 400), Unavailable),
        (client_error("AccessDenied", 403), ConfigurationError),
        (client_error("SignatureDoesNotMatch", 403), ConfigurationError),
        (client_error("NoSuchBucket", 404), ConfigurationError),
        (client_error("MalformedXML", 400), ReelvaultError),
        (EndpointConnectionError(endpoint_url="http://store"), Unavailable),
        (ConnectTimeoutError(endpoint_url="http://store"), Unavailable),
        (ReadTimeoutError(endpoint_url="http://store"), Unavailable),
        (ResponseStreamingError(error="reset"), Unavailable),
        (IncompleteReadError(actual_bytes=1, expected_bytes=2), Unavailable),
        (NoCredentialsError(), ConfigurationError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__,
)
def test_errors_are_mapped_by_code_and_type(error, expected):
    mapped = map_error(error)
    assert type(mapped) is expected
    assert "AWS says" not in str(mapped)
    assert "http://store" not in str(mapped)


def test_message_text_is_never_used_for_mapping():
    # The same words in a message, under a code we do not know, change nothing.
    assert type(map_error(client_error("Weird", 400, "NoSuchKey InvalidRange"))) is ReelvaultError


def test_the_caller_sees_our_message_and_logs_keep_the_cause(store):
    with pytest.raises(NotFound) as caught:
        store.get_range("missing", 0, 1)
    assert str(caught.value) == "not found"
    assert isinstance(caught.value.__cause__, ClientError)


def test_an_unreachable_store_is_unavailable():
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(connect_timeout=1, retries={"mode": "standard", "total_max_attempts": 1}),
    )
    store = S3ObjectStore(BUCKET, client=client, part_size=5 * MIB)
    with pytest.raises(Unavailable):
        store.get_range("k", 0, 1)
    with pytest.raises(Unavailable):
        store.put("k", [b"x"])
    with pytest.raises(Unavailable):
        list(store.list_keys())


def test_client_settings_for_a_third_party_endpoint():
    store = S3ObjectStore(
        BUCKET,
        endpoint_url="http://127.0.0.1:8333",
        access_key="a",
        secret_key="b",
        part_size=8 * MIB,
        max_in_flight=6,
    )
    config = store.client.meta.config
    assert store.client.meta.region_name == "us-east-1"
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert config.max_pool_connections >= store.max_in_flight
    assert (config.connect_timeout, config.read_timeout) == (3.0, 10.0)
    assert config.request_checksum_calculation == "when_required"


def test_client_settings_for_aws():
    store = S3ObjectStore(BUCKET, region="eu-west-1", access_key="a", secret_key="b")
    assert store.client.meta.region_name == "eu-west-1"
    assert not store.client.meta.config.s3
    assert (store.part_size, store.max_in_flight) == (8 * MIB, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"part_size": 5 * MIB - 1},
        {"max_in_flight": 0},
        {"access_key": "only-half"},
        {"secret_key": "only-half"},
    ],
)
def test_bad_settings_fail_at_construction(kwargs):
    with pytest.raises(ConfigurationError):
        S3ObjectStore(BUCKET, endpoint_url="http://127.0.0.1:8333", **kwargs)
    with pytest.raises(ConfigurationError):
        S3ObjectStore("", endpoint_url="http://127.0.0.1:8333")


def test_delete_on_a_store_without_the_version_api(store):
    class NotImplementedAnswer:
        status_code = 501

    def refuse(**_):
        return NotImplementedAnswer(), {"Error": {"Code": "NotImplemented"}}

    store.client.meta.events.register(
        "before-call.s3.ListObjectVersions", refuse, unique_id="no-versions"
    )
    store.put("k", [b"x"])
    store.delete("k")
    assert store.head("k") is None
    store.delete("k")


def test_a_completed_multipart_upload_completed_again_gives_its_etag():
    """What botocore's retry of a CompleteMultipartUpload whose answer was lost meets: the
    upload is gone (NoSuchUpload), the object is there. The sink answers with the object's
    ETag instead of NOT_FOUND (review finding: the client heard NOT_FOUND, the object was
    orphaned), unless the object there is not the size the parts add up to."""
    from reelvault.storage.base import CompletedPart  # noqa: PLC0415
    from reelvault.storage.s3 import _S3Sink  # noqa: PLC0415

    class Client:
        def complete_multipart_upload(self, **_: object) -> dict:
            raise ClientError(
                {"Error": {"Code": "NoSuchUpload"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                "CompleteMultipartUpload",
            )

        def head_object(self, **_: object) -> dict:
            return {"ContentLength": 5 * MIB + 4, "ETag": '"abc-2"'}

    sink = _S3Sink(Client(), BUCKET)  # type: ignore[arg-type]
    parts = [CompletedPart(1, "e1", 5 * MIB), CompletedPart(2, "e2", 4)]
    assert sink.complete_multipart("t/x/retried", "U1", parts) == "abc-2"
    with pytest.raises(NotFound):  # another size: not this upload's object
        sink.complete_multipart("t/x/retried", "U1", parts[:1])
