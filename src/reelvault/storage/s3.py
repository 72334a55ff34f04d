"""The object store on S3 and S3-compatible services, through boto3.

``endpoint_url`` selects the service: left unset it is AWS S3; set, it is MinIO, Ceph RGW,
Cloudflare R2, SeaweedFS or any other store speaking the S3 API. For those, addressing is
path-style (``http://host/bucket/key``), since few of them serve virtual-host buckets
without DNS set up for it, and request checksums are only sent where the API requires
them, since several of them reject the CRC headers newer botocore adds by default. The
content needs no checksum of ours: it is ciphertext the crypto layer authenticates.

Errors are translated by botocore exception type and S3 error code, never by message text,
and the store's own messages are kept out of ours (they stay on ``__cause__`` for server
logs). In particular, a missing object is ``NotFound``, an unsatisfiable range is
``OutOfRange``, and connection failures, timeouts, throttling and 5xx answers are
``Unavailable`` once botocore's retries (standard mode) have given up, which happens
within ``operation_timeout`` per request (:mod:`reelvault.deadline`).

Permissions: grant ``s3:ListBucket`` besides the object actions. Without it, S3 answers a
GET of a missing key with 403 instead of 404, and it would surface as a configuration
error rather than ``NotFound``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from reelvault.deadline import bound_botocore
from reelvault.errors import (
    ConfigurationError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ReelvaultError,
    Unavailable,
)
from reelvault.storage.base import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    STREAM_CHUNK_SIZE,
    BufferedUpload,
    BytesLike,
    CompletedPart,
    MultipartUploadInfo,
    ObjectInfo,
    check_key,
    check_range,
    write_all,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

__all__ = ["S3ObjectStore", "map_error"]

_NOT_FOUND: Final = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchVersion", "NoSuchUpload"})
_OUT_OF_RANGE: Final = frozenset({"InvalidRange", "416"})
_UNAVAILABLE: Final = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "ExpiredToken",
        "TokenRefreshRequired",
    }
)
_MISCONFIGURED: Final = frozenset(
    {
        "NoSuchBucket",
        "InvalidBucketName",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "403",
    }
)
_VERSIONS_UNSUPPORTED: Final = frozenset({"NotImplemented", "MethodNotAllowed", "501", "405"})
_BUCKET_MISSING: Final = frozenset({"NoSuchBucket", "404", "NotFound"})
_MAX_PRESIGN_LIFETIME: Final = 7 * 24 * 3600  # SigV4's limit

_log = structlog.get_logger("reelvault.storage")


def map_error(exc: BotoCoreError | ClientError) -> ReelvaultError:
    """Translate a botocore failure into the error tree, by type and error code only.

    The returned error's message is ours; the caller chains ``exc`` as its cause so the
    store's own text reaches server logs but never a client. Every failure but a missing
    object or range is logged at warning for the operator: the operation, the S3 error
    code and HTTP status, or the botocore exception's type; never the store's message.
    """
    mapped = _classify(exc)
    if not isinstance(mapped, NotFound | OutOfRange):
        if isinstance(exc, ClientError):
            _log.warning(
                "object store request failed",
                operation=exc.operation_name,
                aws_error_code=_error_code(exc) or None,
                http_status=exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
                error=type(mapped).__name__,
            )
        else:
            _log.warning(
                "object store request failed",
                cause=type(exc).__name__,
                error=type(mapped).__name__,
            )
    return mapped


def _classify(exc: BotoCoreError | ClientError) -> ReelvaultError:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND:
            return NotFound()
        if code in _OUT_OF_RANGE or status == 416:
            return OutOfRange()
        if code in _MISCONFIGURED:
            return ConfigurationError("object store rejected the bucket or the credentials")
        if code in _UNAVAILABLE or status >= 500 or status == 429:
            return Unavailable("object store unavailable")
        return ReelvaultError("object store request failed")
    if isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return Unavailable("object store unavailable")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return ConfigurationError("no usable object store credentials")
    return ReelvaultError("object store request failed")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise map_error(exc) from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unquote(etag: str) -> str:
    return etag.strip('"')


class S3ObjectStore:
    """An :class:`~reelvault.storage.base.ObjectStore` over one S3 bucket.

    Args:
        bucket: the bucket holding reelvault's objects (and nothing else, so garbage
            collection can treat every unfinished upload in it as its own).
        endpoint_url: an S3-compatible service; ``None`` for AWS.
        region: signing region. Defaults to boto3's resolution for AWS and to
            ``us-east-1`` for other endpoints, which accept any region.
        access_key: with ``secret_key``, static credentials; both ``None`` uses boto3's
            default chain (environment, profile, instance role).
        secret_key: see ``access_key``.
        part_size: bytes per part, at least 5 MiB (S3's minimum for all parts but the
            last; checked here so a bad setting fails at start, not on a large upload).
        max_in_flight: parts one upload sends at once. Memory per upload is about
            ``(max_in_flight + 1) * part_size``.
        connect_timeout: seconds to open a connection.
        read_timeout: seconds to wait for the next bytes of an answer (or to send the
            next bytes of a part).
        max_attempts: attempts per request, the first included (botocore's standard
            retry mode, for throttling, 5xx answers and connection errors).
        operation_timeout: seconds one request (one part, one range, one delete) may
            take across all its attempts; a retry that could not finish within it is not
            started, and the caller gets ``Unavailable`` (:mod:`reelvault.deadline`).
            The caller's deadline, where one is bound, stops retries earlier.
        client: a ready boto3 S3 client (tests, custom sessions); the endpoint, region,
            credential, timeout and retry arguments are then unused.
        public_endpoint_url: the endpoint readers of presigned URLs reach the store at,
            when it differs from ``endpoint_url`` (a cluster-internal name for the vault,
            a public one for renderers). SigV4 signs the host, so the URL is signed for
            this one. ``None``: the same endpoint as the vault's.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
        operation_timeout: float = 30.0,
        client: S3Client | None = None,
        public_endpoint_url: str | None = None,
    ) -> None:
        if not bucket:
            raise ConfigurationError("object store bucket is not set")
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError("object store part size must be at least 5 MiB")
        if max_in_flight < 1:
            raise ConfigurationError("object store parts in flight must be at least 1")
        if (access_key is None) != (secret_key is None):
            raise ConfigurationError("give both the object store access key and secret key")
        if min(connect_timeout, read_timeout, operation_timeout) <= 0 or max_attempts < 1:
            raise ConfigurationError("object store timeouts and attempts must be positive")
        self._bucket = bucket
        self._part_size = part_size
        self._max_in_flight = max_in_flight
        if client is None:
            client = _make_client(
                endpoint_url=endpoint_url,
                region=region,
                access_key=access_key,
                secret_key=secret_key,
                max_in_flight=max_in_flight,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_attempts=max_attempts,
            )
            bound_botocore(
                client,
                budget=operation_timeout,
                attempt=connect_timeout + read_timeout,
                name="object store",
            )
        self._client = client
        self._sink = _S3Sink(client, bucket)
        self._presigner = client
        if public_endpoint_url is not None:
            # Presigning is local: this client never sends a request.
            self._presigner = _make_client(
                endpoint_url=public_endpoint_url,
                region=region if region is not None else client.meta.region_name,
                access_key=access_key,
                secret_key=secret_key,
                max_in_flight=1,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_attempts=1,
            )

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def client(self) -> S3Client:
        """The boto3 client, for tests that hook its events."""
        return self._client

    @property
    def part_size(self) -> int:
        return self._part_size

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist; for development and tests, where the
        store starts empty. Production buckets are provisioned with their policies."""
        with _translated():
            try:
                self._client.head_bucket(Bucket=self._bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in _BUCKET_MISSING:
                    raise
            region = self._client.meta.region_name
            try:
                if region and region != "us-east-1":
                    self._client.create_bucket(
                        Bucket=self._bucket,
                        CreateBucketConfiguration={
                            "LocationConstraint": cast("BucketLocationConstraintType", region)
                        },
                    )
                else:
                    self._client.create_bucket(Bucket=self._bucket)
            except ClientError as exc:
                if _error_code(exc) != "BucketAlreadyOwnedByYou":
                    raise

    def presign_get(self, key: str, lifetime: int) -> str:
        check_key(key)
        if not 1 <= lifetime <= _MAX_PRESIGN_LIFETIME:
            raise InvalidArgument(f"a presigned URL lives 1 to {_MAX_PRESIGN_LIFETIME} seconds")
        with _translated():
            url: str = self._presigner.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": key},
                ExpiresIn=lifetime,
            )
        return url

    def begin(self, key: str) -> BufferedUpload:
        return BufferedUpload(
            self._sink, key, part_size=self._part_size, max_in_flight=self._max_in_flight
        )

    def put(self, key: str, chunks: Iterable[BytesLike]) -> ObjectInfo:
        return write_all(self.begin(key), chunks)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        check_range(offset, length)
        with _translated():
            response = self._client.get_object(
                Bucket=self._bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            body = response["Body"]
            try:
                _check_served(response, offset, length)
                return body.read()
            finally:
                body.close()

    def open_stream(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> Generator[bytes, None, None]:
        check_key(key)
        check_range(offset, length)
        with _translated():
            if offset == 0 and length is None:
                # No Range header: "bytes=0-" is unsatisfiable on an empty object.
                response = self._client.get_object(Bucket=self._bucket, Key=key)
            else:
                end = "" if length is None else str(offset + length - 1)
                response = self._client.get_object(
                    Bucket=self._bucket, Key=key, Range=f"bytes={offset}-{end}"
                )
            body = response["Body"]
            try:
                if offset or length is not None:
                    _check_served(response, offset, length)
            except BaseException:
                body.close()
                raise
        return _stream(body)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        with _translated():
            try:
                response = self._client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if isinstance(_classify(exc), NotFound):  # logged by _translated otherwise
                    return None
                raise
        return ObjectInfo(key=key, size=response["ContentLength"], etag=_unquote(response["ETag"]))

    def delete(self, key: str) -> None:
        check_key(key)
        with _translated():
            try:
                versions: list[str] | None = list(self._version_ids(key))
            except ClientError as exc:
                if _error_code(exc) not in _VERSIONS_UNSUPPORTED:
                    raise
                versions = None  # a store without the version API keeps no versions
            if versions:
                # Unversioned buckets list their objects under the version id "null".
                for version_id in versions:
                    self._client.delete_object(Bucket=self._bucket, Key=key, VersionId=version_id)
            elif versions is None or self.head(key) is not None:
                # A plain DELETE only where needed: in a versioned bucket it would add a
                # delete marker even for a key that has no versions at all.
                self._client.delete_object(Bucket=self._bucket, Key=key)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self._bucket, Prefix=prefix))
        while True:
            with _translated():
                page = next(pages, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield item["Key"]

    def list_multipart_uploads(
        self, *, older_than: float | None = None
    ) -> Iterator[MultipartUploadInfo]:
        paginator = self._client.get_paginator("list_multipart_uploads")
        pages = iter(paginator.paginate(Bucket=self._bucket))
        while True:
            with _translated():
                page = next(pages, None)
            if page is None:
                return
            for item in page.get("Uploads", []):
                initiated = item["Initiated"].timestamp()
                if older_than is None or initiated < older_than:
                    yield MultipartUploadInfo(
                        key=item["Key"], upload_id=item["UploadId"], initiated=initiated
                    )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._sink.abort_multipart(key, upload_id)

    def _version_ids(self, key: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=key):
            entries: list[Any] = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            for entry in entries:
                if entry.get("Key") == key and entry.get("VersionId"):
                    yield str(entry["VersionId"])


def _make_client(
    *,
    endpoint_url: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    max_in_flight: int,
    connect_timeout: float,
    read_timeout: float,
    max_attempts: int,
) -> S3Client:
    third_party = endpoint_url is not None
    if third_party and region is None:
        region = "us-east-1"
    config = Config(
        signature_version="s3v4",
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # Parts in flight for a few concurrent uploads, plus the readers beside them.
        max_pool_connections=max(10, 4 * max_in_flight),
        tcp_keepalive=True,
        s3={"addressing_style": "path"} if third_party else {},
        request_checksum_calculation="when_required" if third_party else "when_supported",
        response_checksum_validation="when_required" if third_party else "when_supported",
    )
    # A session per store: boto3's default session is not safe to share across threads.
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _check_served(response: GetObjectOutputTypeDef, offset: int, length: int | None) -> None:
    """Refuse an answer that is not the requested range.

    A range reaching past the end is served short by S3 (206 with fewer bytes), which is
    ``OutOfRange`` here; a store that ignored the Range header would hand back the wrong
    bytes, which must not pass as the right ones.
    """
    served = response.get("ContentRange", "")
    if not served.startswith(f"bytes {offset}-"):
        raise ReelvaultError("object store ignored the requested range")
    if length is not None and response["ContentLength"] != length:
        raise OutOfRange()


def _stream(body: StreamingBody) -> Generator[bytes, None, None]:
    chunks = body.iter_chunks(STREAM_CHUNK_SIZE)
    try:
        while True:
            with _translated():
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk
    finally:
        body.close()


class _S3Sink:
    """The single S3 requests BufferedUpload drives. The client is thread-safe."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    def put_object(self, key: str, data: bytes) -> ObjectInfo:
        with _translated():
            response = self._client.put_object(Bucket=self._bucket, Key=key, Body=data)
        return ObjectInfo(key=key, size=len(data), etag=_unquote(response["ETag"]))

    def create_multipart(self, key: str) -> str:
        with _translated():
            response = self._client.create_multipart_upload(Bucket=self._bucket, Key=key)
        return response["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        with _translated():
            response = self._client.upload_part(
                Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        return response["ETag"]

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> str:
        with _translated():
            try:
                response = self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
                    },
                )
            except ClientError as exc:
                # Completing is not idempotent: when an attempt completed but its answer was
                # lost, botocore's retry finds the upload gone (NoSuchUpload). The object
                # is then there, under this upload's own fresh key: take its ETag.
                if _error_code(exc) != "NoSuchUpload":
                    raise
                head = self._client.head_object(Bucket=self._bucket, Key=key)
                expected = sum(p.size for p in parts)
                if head["ContentLength"] != expected:
                    raise
                return _unquote(head["ETag"])
        return _unquote(response["ETag"])

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with _translated():
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
            except ClientError as exc:
                if not isinstance(_classify(exc), NotFound):
                    raise
