"""Root keys held by AWS KMS.

Tenant KEKs are KMS data keys: ``GenerateDataKey`` returns a fresh AES-256 key and the
same key encrypted under a KMS key, with the caller's encryption context bound into the
ciphertext. KMS stores nothing per wrapped key; the ciphertext blob (in the database) and
the KMS key together recover it, and the KMS key never leaves KMS.

The provider only ever asks KMS to decrypt under a KMS key it was configured with
(``KeyId`` on ``Decrypt``, ``SourceKeyId`` on ``ReEncrypt``). Without that pin, a wrapped
key planted in the database under a KMS key someone else controls would unwrap to a KEK
they know, and new data would be encrypted under it.

Moving to another KMS key: configure the new key as ``key_id`` and the old key's ARN in
``previous_key_ids``, rewrap every tenant KEK, then drop the old ARN.

Errors are mapped by AWS error code, never by message, and AWS messages (which can carry
ARNs, account ids and request details) never reach callers; the original exception stays
chained as ``__cause__`` for server-side logs.

KMS key states are not reelvault's tenant key states: reelvault enforces those itself.
Note that moto's KMS mock decrypts with a disabled or pending-deletion key, where real
KMS answers ``DisabledException`` / ``KMSInvalidStateException``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import structlog
from botocore import exceptions as aws

from reelvault import errors
from reelvault.crypto._primitives import KEY_LEN
from reelvault.keys.provider import WrappedKey

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

__all__ = ["KmsRootKeyProvider"]

# KMS accepts ciphertext blobs of 1..6144 bytes; anything else is malformed, and checking
# here turns it into the same DecryptionError as a bad tag instead of a parameter error.
_MAX_CIPHERTEXT: Final = 6144

_DECRYPTION_FAILED: Final = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
# The KMS key exists (or existed) but will not serve us now; an operator has to act. An
# access denial belongs here too: to a caller it is the same as a disabled key.
_KEY_UNAVAILABLE: Final = frozenset(
    {
        "AccessDeniedException",
        "DisabledException",
        "KMSInvalidStateException",
        "NotFoundException",
    }
)
_TRANSIENT: Final = frozenset(
    {
        "DependencyTimeoutException",
        "KMSInternalException",
        "KeyUnavailableException",  # custom key store (CloudHSM / external) unreachable
        "LimitExceededException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
_log = structlog.get_logger("reelvault.keys")

_MISCONFIGURED: Final = frozenset(
    {
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "InvalidKeyUsageException",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "UnrecognizedClientException",
    }
)


class KmsRootKeyProvider:
    """A :class:`~reelvault.keys.provider.RootKeyProvider` backed by AWS KMS.

    The client is built by the caller, so region, credentials, ``endpoint_url`` (for a
    KMS-compatible service or a local mock), timeouts and retries are the caller's choice;
    the provider adds none of its own.
    """

    __slots__ = ("_client", "_key_id", "_previous_key_ids")

    def __init__(
        self, client: KMSClient, key_id: str, *, previous_key_ids: Iterable[str] = ()
    ) -> None:
        """Pin the provider to the KMS keys it may use.

        Args:
            client: a boto3 KMS client.
            key_id: the KMS key new keys are wrapped under (key id, ARN or alias).
            previous_key_ids: ARNs of KMS keys that may still unwrap, matched against
                ``WrappedKey.root_key_id``; used while rewrapping onto ``key_id``.
        """
        if not key_id:
            raise ValueError("a KMS key id is required")
        self._client = client
        self._key_id = key_id
        self._previous_key_ids = frozenset(previous_key_ids)

    def probe(self) -> None:
        """Readiness: the key exists, is enabled and this caller may see it
        (``kms:DescribeKey``); costs no key material and no data-key quota.

        Raises:
            Unavailable, ConfigurationError, KeyUnavailable: as the other calls would.
        """
        with _kms_errors():
            response = self._client.describe_key(KeyId=self._key_id)
        if response["KeyMetadata"].get("KeyState") != "Enabled":
            raise errors.KeyUnavailable("the KMS key is not enabled")

    def generate_key(self, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        with _kms_errors():
            response = self._client.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=dict(context)
            )
        wrapped = WrappedKey(root_key_id=response["KeyId"], ciphertext=response["CiphertextBlob"])
        return response["Plaintext"], wrapped

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        _check_ciphertext(wrapped)
        with _kms_errors():
            response = self._client.decrypt(
                CiphertextBlob=wrapped.ciphertext,
                EncryptionContext=dict(context),
                KeyId=self._source_key_id(wrapped),
            )
        key = response["Plaintext"]
        if len(key) != KEY_LEN:
            # A valid KMS ciphertext of something that is not a reelvault key.
            raise errors.DecryptionError("unwrapped key has the wrong length")
        return key

    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        _check_ciphertext(wrapped)
        with _kms_errors():
            response = self._client.re_encrypt(
                CiphertextBlob=wrapped.ciphertext,
                SourceEncryptionContext=dict(context),
                SourceKeyId=self._source_key_id(wrapped),
                DestinationKeyId=self._key_id,
                DestinationEncryptionContext=dict(context),
            )
        return WrappedKey(root_key_id=response["KeyId"], ciphertext=response["CiphertextBlob"])

    def _source_key_id(self, wrapped: WrappedKey) -> str:
        if wrapped.root_key_id in self._previous_key_ids:
            return wrapped.root_key_id
        return self._key_id

    def __repr__(self) -> str:
        return f"KmsRootKeyProvider(key_id={self._key_id!r})"


def _check_ciphertext(wrapped: WrappedKey) -> None:
    if not 1 <= len(wrapped.ciphertext) <= _MAX_CIPHERTEXT:
        raise errors.DecryptionError("wrapped key has an impossible length")


@contextmanager
def _kms_errors() -> Iterator[None]:
    """Translate botocore exceptions into the reelvault error tree."""
    try:
        yield
    except aws.ClientError as exc:
        raise _from_client_error(exc) from exc
    except (aws.ConnectionError, aws.HTTPClientError) as exc:
        # Connection refused, DNS, TLS, connect and read timeouts, dropped connections.
        _log.warning("AWS KMS request failed", cause=type(exc).__name__)
        raise errors.Unavailable("the key provider (AWS KMS) cannot be reached") from exc
    except (
        aws.CredentialRetrievalError,
        aws.NoCredentialsError,
        aws.NoRegionError,
        aws.PartialCredentialsError,
    ) as exc:
        _log.warning("AWS KMS request failed", cause=type(exc).__name__)
        raise errors.ConfigurationError(
            "AWS credentials or region for the key provider are not configured"
        ) from exc
    except aws.BotoCoreError as exc:
        _log.warning("AWS KMS request failed", cause=type(exc).__name__)
        raise errors.ReelvaultError("the key provider request failed") from exc


def _from_client_error(exc: aws.ClientError) -> errors.ReelvaultError:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    # The operator's record of why: the AWS code and status, never AWS's message (it can
    # carry ARNs and account ids that are not the caller's business either way).
    _log.warning(
        "AWS KMS request failed",
        operation=exc.operation_name,
        aws_error_code=code or None,
        http_status=status or None,
    )
    if code in _DECRYPTION_FAILED:
        return errors.DecryptionError(code)
    if code in _KEY_UNAVAILABLE:
        return errors.KeyUnavailable("the root key in AWS KMS is not available")
    if code in _TRANSIENT or status >= 500 or status == 429:
        return errors.Unavailable("the key provider (AWS KMS) is unavailable; retry later")
    if code in _MISCONFIGURED:
        return errors.ConfigurationError(
            "AWS KMS rejected the service's credentials or key configuration"
        )
    return errors.ReelvaultError("the key provider request failed")
