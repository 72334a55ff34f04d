"""The AWS KMS root key provider, against moto and against stubbed KMS errors."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from reelvault import errors
from reelvault.keys.kms import KmsRootKeyProvider
from reelvault.keys.provider import RootKeyProvider, WrappedKey

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

REGION = "us-east-1"
TENANT_A = "0123456789abcdef0123456789abcdef"
TENANT_B = "fedcba9876543210fedcba9876543210"
CONTEXT = {"reelvault:tenant": TENANT_A, "reelvault:kek-version": "1"}
# What an AWS error message can look like: it must never reach a caller.
LEAKY_MESSAGE = "arn:aws:kms:us-east-1:111122223333:key/secret-internal-detail is bad"
# moto's blob: 36-byte key id, 12-byte IV, 16-byte tag, then the ciphertext. Flipping a
# byte of the key id makes moto look for another key (AccessDenied), so the tamper test
# targets the cryptographic part, as a database corruption of real KMS blobs would.
MOTO_KEY_ID_LEN = 36


@pytest.fixture(autouse=True)
def fake_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let a test reach real AWS with whatever credentials the machine has."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def kms() -> Iterator[KMSClient]:
    with mock_aws():
        yield boto3.client("kms", region_name=REGION)


def new_key(kms: KMSClient) -> str:
    return kms.create_key(Description="reelvault root")["KeyMetadata"]["Arn"]


def key_id_of(arn: str) -> str:
    # moto's DisableKey and ScheduleKeyDeletion want the bare key id.
    return arn.rsplit("/", 1)[1]


@functools.cache
def shared_session() -> boto3.session.Session:
    # Building a session costs ~0.2 s (endpoint and service models); share one.
    return boto3.session.Session()


def offline_client(session: boto3.session.Session | None = None) -> KMSClient:
    """A client that cannot reach anything: for stubbed responses and dead endpoints."""
    return (session or shared_session()).client(
        "kms",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:1",
        config=Config(connect_timeout=0.2, read_timeout=0.2, retries={"total_max_attempts": 1}),
    )


# --- against moto ---------------------------------------------------------------------


def test_round_trip(kms: KMSClient) -> None:
    arn = new_key(kms)
    provider: RootKeyProvider = KmsRootKeyProvider(kms, arn)
    key, wrapped = provider.generate_key(CONTEXT)

    assert len(key) == 32
    assert wrapped.root_key_id == arn
    assert key not in wrapped.ciphertext
    assert provider.unwrap(wrapped, CONTEXT) == key


def test_root_key_id_is_the_arn_even_when_configured_by_alias(kms: KMSClient) -> None:
    arn = new_key(kms)
    kms.create_alias(AliasName="alias/reelvault-root", TargetKeyId=arn)
    provider = KmsRootKeyProvider(kms, "alias/reelvault-root")
    key, wrapped = provider.generate_key(CONTEXT)
    assert wrapped.root_key_id == arn
    assert provider.unwrap(wrapped, CONTEXT) == key


@pytest.mark.parametrize(
    "other_context",
    [
        {**CONTEXT, "reelvault:tenant": TENANT_B},
        {**CONTEXT, "reelvault:kek-version": "2"},
        {**CONTEXT, "extra": "x"},
        {},
    ],
)
def test_wrong_context_fails(kms: KMSClient, other_context: dict[str, str]) -> None:
    provider = KmsRootKeyProvider(kms, new_key(kms))
    _, wrapped = provider.generate_key(CONTEXT)
    with pytest.raises(errors.DecryptionError):
        provider.unwrap(wrapped, other_context)
    with pytest.raises(errors.DecryptionError):
        provider.rewrap(wrapped, other_context)


def test_tampered_blob_fails(kms: KMSClient) -> None:
    provider = KmsRootKeyProvider(kms, new_key(kms))
    _, wrapped = provider.generate_key(CONTEXT)
    for index in range(MOTO_KEY_ID_LEN, len(wrapped.ciphertext)):
        tampered = bytearray(wrapped.ciphertext)
        tampered[index] ^= 0x01
        with pytest.raises(errors.DecryptionError):
            provider.unwrap(WrappedKey(wrapped.root_key_id, bytes(tampered)), CONTEXT)


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x00", b"x" * 6145],
    ids=["empty", "one-byte", "over-kms-limit"],
)
def test_malformed_blobs_fail_as_decryption_errors(kms: KMSClient, blob: bytes) -> None:
    arn = new_key(kms)
    provider = KmsRootKeyProvider(kms, arn)
    with pytest.raises(errors.DecryptionError):
        provider.unwrap(WrappedKey(arn, blob), CONTEXT)
    with pytest.raises(errors.DecryptionError):
        provider.rewrap(WrappedKey(arn, blob), CONTEXT)


def test_a_kms_ciphertext_that_is_not_a_32_byte_key_fails(kms: KMSClient) -> None:
    arn = new_key(kms)
    blob = kms.encrypt(KeyId=arn, Plaintext=b"sixteen byte key", EncryptionContext=CONTEXT)
    with pytest.raises(errors.DecryptionError):
        KmsRootKeyProvider(kms, arn).unwrap(WrappedKey(arn, blob["CiphertextBlob"]), CONTEXT)


def test_rewrap_moves_a_key_to_a_second_kms_key(kms: KMSClient) -> None:
    old_arn, new_arn = new_key(kms), new_key(kms)
    key, wrapped = KmsRootKeyProvider(kms, old_arn).generate_key(CONTEXT)

    migrating = KmsRootKeyProvider(kms, new_arn, previous_key_ids=[old_arn])
    assert migrating.unwrap(wrapped, CONTEXT) == key  # old keys readable during migration
    rewrapped = migrating.rewrap(wrapped, CONTEXT)

    assert rewrapped.root_key_id == new_arn
    assert rewrapped.ciphertext != wrapped.ciphertext
    assert KmsRootKeyProvider(kms, new_arn).unwrap(rewrapped, CONTEXT) == key


def test_only_configured_kms_keys_may_unwrap(kms: KMSClient) -> None:
    """A blob under a KMS key the provider was not given (say one planted in the database
    under a key an attacker controls) must not unwrap, even if KMS could decrypt it.

    Real KMS answers IncorrectKeyException (DecryptionError, see the stubbed tests); moto
    answers AccessDeniedException instead, which maps to KeyUnavailable. Either way the
    caller gets no key. (moto ignores ReEncrypt's SourceKeyId, so the same pin on rewrap
    is checked on the request parameters below.)
    """
    foreign_arn, our_arn = new_key(kms), new_key(kms)
    _, planted = KmsRootKeyProvider(kms, foreign_arn).generate_key(CONTEXT)
    with pytest.raises(errors.KeyUnavailable):
        KmsRootKeyProvider(kms, our_arn).unwrap(planted, CONTEXT)


def test_unknown_kms_key_is_key_unavailable(kms: KMSClient) -> None:
    provider = KmsRootKeyProvider(kms, "alias/does-not-exist")
    with pytest.raises(errors.KeyUnavailable) as raised:
        provider.generate_key(CONTEXT)
    assert "does-not-exist" not in str(raised.value)


def test_moto_keeps_using_disabled_and_pending_deletion_keys(kms: KMSClient) -> None:
    """Documents a moto gap (DESIGN.md section 2): real KMS refuses a disabled key with
    DisabledException and a key pending deletion with KMSInvalidStateException (both
    KeyUnavailable, checked with stubbed responses below), but moto keeps serving them.
    So no test may rely on moto to stop a key: reelvault enforces tenant key states itself.
    """
    disabled, pending = new_key(kms), new_key(kms)
    provider = KmsRootKeyProvider(kms, disabled)
    key, wrapped = provider.generate_key(CONTEXT)
    kms.disable_key(KeyId=key_id_of(disabled))
    assert provider.unwrap(wrapped, CONTEXT) == key
    provider.generate_key(CONTEXT)

    provider = KmsRootKeyProvider(kms, pending)
    key, wrapped = provider.generate_key(CONTEXT)
    kms.schedule_key_deletion(KeyId=key_id_of(pending), PendingWindowInDays=7)
    assert provider.unwrap(wrapped, CONTEXT) == key


def test_repr_names_the_key_only(kms: KMSClient) -> None:
    arn = new_key(kms)
    assert repr(KmsRootKeyProvider(kms, arn)) == f"KmsRootKeyProvider(key_id={arn!r})"


def test_a_key_id_is_required(kms: KMSClient) -> None:
    with pytest.raises(ValueError, match="KMS key id"):
        KmsRootKeyProvider(kms, "")


# --- error mapping, with stubbed KMS responses -------------------------------------------

WRAPPED = WrappedKey("arn:aws:kms:us-east-1:111122223333:key/k", b"\x01" * 96)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("InvalidCiphertextException", 400, errors.DecryptionError),
        ("IncorrectKeyException", 400, errors.DecryptionError),
        ("DisabledException", 400, errors.KeyUnavailable),
        ("KMSInvalidStateException", 400, errors.KeyUnavailable),
        ("NotFoundException", 400, errors.KeyUnavailable),
        ("AccessDeniedException", 400, errors.KeyUnavailable),
        ("ThrottlingException", 400, errors.Unavailable),
        ("KMSInternalException", 500, errors.Unavailable),
        ("DependencyTimeoutException", 503, errors.Unavailable),
        ("KeyUnavailableException", 500, errors.Unavailable),
        ("SomeFutureServerError", 503, errors.Unavailable),
        ("UnrecognizedClientException", 400, errors.ConfigurationError),
        ("InvalidKeyUsageException", 400, errors.ConfigurationError),
    ],
)
@pytest.mark.parametrize("operation", ["generate_data_key", "decrypt", "re_encrypt"])
def test_kms_error_codes_map_to_reelvault_errors(
    operation: str, code: str, status: int, expected: type[errors.ReelvaultError]
) -> None:
    client = offline_client()
    provider = KmsRootKeyProvider(client, "alias/root")
    calls: dict[str, Callable[[], object]] = {
        "generate_data_key": lambda: provider.generate_key(CONTEXT),
        "decrypt": lambda: provider.unwrap(WRAPPED, CONTEXT),
        "re_encrypt": lambda: provider.rewrap(WRAPPED, CONTEXT),
    }
    with Stubber(client) as stubber:
        stubber.add_client_error(
            operation,
            service_error_code=code,
            service_message=LEAKY_MESSAGE,
            http_status_code=status,
        )
        with pytest.raises(expected) as raised:
            calls[operation]()
    assert type(raised.value) is expected
    assert LEAKY_MESSAGE not in str(raised.value)
    assert "111122223333" not in str(raised.value)
    # Kept for server-side logs, not shown to callers.
    assert isinstance(raised.value.__cause__, ClientError)


def test_unknown_client_errors_are_internal_and_opaque() -> None:
    client = offline_client()
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "decrypt", service_error_code="ValidationException", service_message=LEAKY_MESSAGE
        )
        with pytest.raises(errors.ReelvaultError) as raised:
            KmsRootKeyProvider(client, "alias/root").unwrap(WRAPPED, CONTEXT)
    assert type(raised.value) is errors.ReelvaultError
    assert raised.value.grpc_status == "INTERNAL"
    assert LEAKY_MESSAGE not in str(raised.value)


def test_decrypt_pins_the_configured_key_and_sends_the_context() -> None:
    client = offline_client()
    with Stubber(client) as stubber:
        stubber.add_response(
            "decrypt",
            {"KeyId": WRAPPED.root_key_id, "Plaintext": b"k" * 32},
            {"CiphertextBlob": WRAPPED.ciphertext, "EncryptionContext": CONTEXT, "KeyId": "k1"},
        )
        stubber.add_response(
            "decrypt",
            {"KeyId": WRAPPED.root_key_id, "Plaintext": b"k" * 32},
            {
                "CiphertextBlob": WRAPPED.ciphertext,
                "EncryptionContext": CONTEXT,
                "KeyId": WRAPPED.root_key_id,
            },
        )
        assert KmsRootKeyProvider(client, "k1").unwrap(WRAPPED, CONTEXT) == b"k" * 32
        previous = KmsRootKeyProvider(client, "k2", previous_key_ids=[WRAPPED.root_key_id])
        assert previous.unwrap(WRAPPED, CONTEXT) == b"k" * 32
        stubber.assert_no_pending_responses()


def test_rewrap_pins_the_source_key_and_targets_the_configured_key() -> None:
    client = offline_client()
    response = {"KeyId": "arn:new", "SourceKeyId": "arn:old", "CiphertextBlob": b"n" * 96}
    expected = {
        "CiphertextBlob": WRAPPED.ciphertext,
        "SourceEncryptionContext": CONTEXT,
        "DestinationKeyId": "alias/new",
        "DestinationEncryptionContext": CONTEXT,
    }
    with Stubber(client) as stubber:
        stubber.add_response("re_encrypt", response, {**expected, "SourceKeyId": "alias/new"})
        stubber.add_response(
            "re_encrypt", response, {**expected, "SourceKeyId": WRAPPED.root_key_id}
        )
        rewrapped = KmsRootKeyProvider(client, "alias/new").rewrap(WRAPPED, CONTEXT)
        assert rewrapped == WrappedKey("arn:new", b"n" * 96)
        migrating = KmsRootKeyProvider(client, "alias/new", previous_key_ids=[WRAPPED.root_key_id])
        migrating.rewrap(WRAPPED, CONTEXT)
        stubber.assert_no_pending_responses()


# --- KMS out of reach ---------------------------------------------------------------------


def test_unreachable_endpoint_is_unavailable() -> None:
    provider = KmsRootKeyProvider(offline_client(), "alias/root")
    with pytest.raises(errors.Unavailable) as raised:
        provider.unwrap(WRAPPED, CONTEXT)
    assert "127.0.0.1" not in str(raised.value)
    with pytest.raises(errors.Unavailable):
        provider.generate_key(CONTEXT)


def test_an_endpoint_that_never_answers_is_unavailable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # the kernel accepts the connection; nobody ever replies
        port = server.getsockname()[1]
        client = shared_session().client(
            "kms",
            region_name=REGION,
            endpoint_url=f"http://127.0.0.1:{port}",
            config=Config(connect_timeout=0.2, read_timeout=0.2, retries={"total_max_attempts": 1}),
        )
        with pytest.raises(errors.Unavailable):
            KmsRootKeyProvider(client, "alias/root").unwrap(WRAPPED, CONTEXT)


def test_missing_credentials_are_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    # A fresh session: a shared one would still hold the credentials it resolved earlier.
    client = offline_client(boto3.session.Session())
    with pytest.raises(errors.ConfigurationError):
        KmsRootKeyProvider(client, "alias/root").generate_key(CONTEXT)
