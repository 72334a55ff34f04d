"""Start-up checks: what ``reelvault serve`` proves before it listens.

A service that reports SERVING over a missing bucket, a KMS key it cannot use or a
certificate that does not match its key fails later, on a caller's request, with an error
that names neither the setting nor the cause. These checks run once at start, in this
order, and each failure is one line naming the setting(s) and the cause:

* ``tls``: the certificate chain and key load and belong together; a client CA file holds
  certificates and no private key (stdlib :mod:`ssl`, which loads them as gRPC will);
* ``catalog``: reachable and at the newest migration (``serve`` migrates it first;
  ``serve --check`` never migrates, and accepts an older schema that ``serve`` would
  migrate, refusing only one this version does not know);
* ``store``: the bucket exists (HEAD bucket; it is never created here, only ``reelvault
  dev`` creates one) and the credentials may write and delete in it (a probe object under
  ``t/.probe/preflight-<random>``: inside ``t/``, where the documented IAM policy lets the
  service write, under a name no tenant prefix can take, since tenant ids are hex);
* ``key_provider``: the root key provider wraps a fresh key and unwraps it again.

``serve`` stops on the first failing round (:func:`verify`); ``serve --check`` reports every
failure (:func:`check`) beside the effective configuration (:func:`effective_settings`).
The causes named here go to the operator, never to a client.
"""

from __future__ import annotations

import dataclasses
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from reelvault.app import Vault
from reelvault.catalog import Database
from reelvault.catalog.db import (
    describe_failure,
    head_revision,
    is_known_revision,
    safe_endpoint,
    safe_url,
)
from reelvault.config import Settings
from reelvault.errors import ConfigurationError, ReelvaultError, Unavailable
from reelvault.instrument import InstrumentedKeyProvider, InstrumentedStore
from reelvault.keys.provider import RootKeyProvider
from reelvault.storage import ObjectStore, S3ObjectStore
from reelvault.storage.s3 import map_error

__all__ = [
    "CHECKS",
    "PROBE_PREFIX",
    "Failure",
    "Report",
    "check",
    "check_catalog",
    "check_key_provider",
    "check_store",
    "check_tls",
    "effective_settings",
    "open_vault",
    "verify",
]

CHECKS: Final = ("tls", "catalog", "store", "key_provider")
PROBE_PREFIX: Final = "t/.probe/preflight-"
"""Keys of the store probe: outside ``t/``, so never an asset; deleted at once."""

_MASK: Final = "********"
_DATABASE_URL: Final = "REELVAULT_DATABASE_URL"
_S3_CREDENTIALS: Final = "REELVAULT_S3_ACCESS_KEY_ID, REELVAULT_S3_SECRET_ACCESS_KEY"
# The two keys the documented KMS key policy requires of every request, with values no
# tenant KEK can have (tenant ids are 32 hex digits, versions start at 1).
_PROBE_CONTEXT: Final = {"reelvault:tenant": "preflight-probe", "reelvault:kek-version": "0"}

_log = structlog.get_logger("reelvault.preflight")


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed check: which (:data:`CHECKS`, or ``configuration``) and its error, whose
    message is the one line shown to the operator."""

    check: str
    error: ReelvaultError

    @property
    def line(self) -> str:
        return f"{self.check}: {self.error.message}"


@dataclass(frozen=True, slots=True)
class Report:
    """What ``serve --check`` found: the checks that ran, and those of them that failed
    (a failure to open the vault at all is reported as ``catalog`` or ``configuration``,
    and only ``tls`` runs beside it)."""

    ran: tuple[str, ...]
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def outcome(self) -> dict[str, str]:
        """Each check's result: ``ok``, ``not run`` or the failure's line."""
        failed = {failure.check: failure.error.message for failure in self.failures}
        outcome = {name: "ok" if name in self.ran else "not run" for name in CHECKS}
        return outcome | failed


def open_vault(settings: Settings, *, migrate: bool = True) -> Vault:
    """:meth:`Vault.from_settings`, with a catalog failure's cause in the error's one line.

    Args:
        migrate: bring the catalog to the newest schema (``serve``); ``serve --check``
            passes False: a check must not change what it checks.

    Raises:
        ConfigurationError: as ``from_settings``; a SQLite catalog that cannot be created.
        Unavailable: the catalog cannot be reached; the message names the setting and the
            driver's reason (wrong database, user, port, refused connection), no password.
    """
    try:
        return Vault.from_settings(settings, migrate=migrate)
    except Unavailable as exc:
        cause = describe_failure(exc)
        if cause is None:
            raise
        raise Unavailable(
            f"{_DATABASE_URL} ({_hidden_url(settings.resolved_database_url)}): "
            f"catalog database unavailable: {cause}"
        ) from None
    except OSError as exc:  # the SQLite file or its directory cannot be created
        raise ConfigurationError(
            f"{_DATABASE_URL}: cannot create the catalog {exc.filename or ''}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None


def verify(vault: Vault, settings: Settings) -> None:
    """Run every check; raise for the failures, all in one line. ``serve`` calls this
    between building the vault and listening.

    Raises:
        ConfigurationError, Unavailable: the first failure's class; the message lists
            each failure (``check: setting: cause``), separated by ``; ``.
    """
    failures = _run(vault, settings)
    if failures:
        message = "; ".join(failure.line for failure in failures)
        raise type(failures[0].error)(f"start-up check failed: {message}")
    _log.info("start-up checks passed", checks=list(CHECKS))


def check(settings: Settings) -> Report:
    """``serve --check``: open the vault as ``serve`` would and run every check; nothing is
    left open. ``ok`` if the service would start."""
    try:
        vault = open_vault(settings, migrate=False)
    except ReelvaultError as exc:
        kind = "catalog" if exc.message.startswith(_DATABASE_URL) else "configuration"
        tls = _attempt("tls", lambda: check_tls(settings))
        return Report(ran=("tls",), failures=[*tls, Failure(kind, exc)])
    try:
        return Report(ran=CHECKS, failures=_run(vault, settings, migrated=False))
    finally:
        vault.close()


def check_tls(settings: Settings) -> None:
    """The server's TLS files load and match; the client CA file holds only certificates.

    Raises:
        ConfigurationError: naming the variable and the file.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return
    cert, key = settings.tls_cert_file, settings.tls_key_file
    _certificates(cert, "REELVAULT_TLS_CERT_FILE")
    _readable(key, "REELVAULT_TLS_KEY_FILE")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password: an encrypted key fails here instead of prompting on a tty.
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigurationError(
                f"REELVAULT_TLS_CERT_FILE, REELVAULT_TLS_KEY_FILE: the certificate in {cert} "
                f"does not match the private key in {key}"
            ) from None
        raise ConfigurationError(
            f"REELVAULT_TLS_KEY_FILE: {key} holds no usable unencrypted private key "
            f"for the certificate in {cert} ({exc.reason or exc.library or 'unreadable'})"
        ) from None
    if settings.tls_client_ca_file is not None:
        _certificates(settings.tls_client_ca_file, "REELVAULT_TLS_CLIENT_CA_FILE", roots=True)


def check_catalog(database: Database, *, migrates: bool = True) -> None:
    """The catalog answers and is at the newest migration this reelvault ships.

    Raises:
        Unavailable: it cannot be reached (with the driver's reason).
        ConfigurationError: it is at another revision (a newer reelvault migrated it).
    """
    try:
        current = database.schema_revision()
    except Unavailable as exc:
        cause = describe_failure(exc) or exc.message
        raise Unavailable(f"{_DATABASE_URL}: catalog database unavailable: {cause}") from None
    head = head_revision()
    if current == head:
        return
    if current is not None and not is_known_revision(current):
        raise ConfigurationError(
            f"{_DATABASE_URL}: the catalog is at schema revision {current}, unknown to this "
            f"reelvault (newest {head}): was it migrated by a newer version?"
        )
    if not migrates:
        return  # an older schema (or none yet): `serve` migrates it when it starts
    raise ConfigurationError(
        f"{_DATABASE_URL}: the catalog is at schema revision {current or 'none'}, "
        f"expected {head} after migrating"
    )


def check_store(store: ObjectStore, settings: Settings) -> None:
    """The bucket exists and the credentials may write and delete in it.

    Raises:
        ConfigurationError: the bucket is missing or the credentials are refused.
        Unavailable: the store cannot be reached.
    """
    inner = store.inner if isinstance(store, InstrumentedStore) else store
    if isinstance(inner, S3ObjectStore):
        try:
            inner.client.head_bucket(Bucket=inner.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _store_error(exc, settings, "HEAD bucket") from None
    key = PROBE_PREFIX + secrets.token_hex(8)
    try:
        store.put(key, [b"reelvault start-up probe\n"])
        store.delete(key)
    except ReelvaultError as exc:
        cause = exc.__cause__
        if isinstance(cause, BotoCoreError | ClientError):
            raise _store_error(cause, settings, f"PUT and DELETE {key}") from None
        raise type(exc)(
            f"REELVAULT_S3_BUCKET: cannot write and delete a probe object: {exc.message}"
        ) from None


def check_key_provider(root: RootKeyProvider, settings: Settings) -> None:
    """The root key provider wraps a fresh key and unwraps it to the same bytes.

    Raises:
        ConfigurationError, Unavailable, KeyUnavailable: naming the provider's settings and,
            for AWS KMS, the AWS error code.
    """
    provider = root.inner if isinstance(root, InstrumentedKeyProvider) else root
    settings_named = (
        "REELVAULT_KMS_KEY_ID, REELVAULT_KMS_REGION, REELVAULT_KMS_ENDPOINT_URL"
        if settings.root_key_provider == "aws-kms"
        else "REELVAULT_KEYRING"
    )
    try:
        plaintext, wrapped = provider.generate_key(_PROBE_CONTEXT)
        unwrapped = provider.unwrap(wrapped, _PROBE_CONTEXT)
    except ReelvaultError as exc:
        code = _aws_code(exc.__cause__)
        detail = f" (AWS error code {code})" if code else ""
        raise type(exc)(
            f"{settings_named}: the root key provider cannot wrap and unwrap a probe key: "
            f"{exc.message}{detail}"
        ) from None
    if unwrapped != plaintext:
        raise ConfigurationError(
            f"{settings_named}: the root key provider unwrapped a probe key to other bytes"
        )


def effective_settings(settings: Settings) -> list[tuple[str, str]]:
    """``(variable, value)`` for every setting as the service would run with it: derived
    defaults resolved, secrets masked, a database password hidden."""
    rows = []
    for (variable, _default, _help), item in zip(
        Settings.describe(), dataclasses.fields(Settings), strict=True
    ):
        value: object = getattr(settings, item.name)
        if item.name == "database_url":
            value = _hidden_url(settings.resolved_database_url)
        elif item.name == "keyring_path":
            value = settings.resolved_keyring_path
        elif item.metadata["secret"] and value is not None:
            value = _MASK
        elif item.name.endswith(("_endpoint_url", "_endpoint")) and isinstance(value, str):
            value = safe_endpoint(value)
        rows.append((variable, "" if value is None else str(value)))
    return rows


# -- helpers -------------------------------------------------------------------------------


def _run(vault: Vault, settings: Settings, *, migrated: bool = True) -> list[Failure]:
    checks: dict[str, Callable[[], None]] = {
        "tls": lambda: check_tls(settings),
        "catalog": lambda: check_catalog(vault.database, migrates=migrated),
        "store": lambda: check_store(vault.store, settings),
        "key_provider": lambda: check_key_provider(vault.root, settings),
    }
    return [failure for name, run in checks.items() for failure in _attempt(name, run)]


def _attempt(name: str, run: Callable[[], None]) -> list[Failure]:
    try:
        run()
    except ReelvaultError as exc:
        return [Failure(name, exc)]
    return []


def _store_error(
    exc: BotoCoreError | ClientError, settings: Settings, operation: str
) -> ReelvaultError:
    mapped = map_error(exc)
    endpoint = safe_endpoint(settings.s3_endpoint_url) if settings.s3_endpoint_url else "AWS S3"
    bucket = settings.s3_bucket
    code = _aws_code(exc)
    if code in {"NoSuchBucket", "404", "NotFound"}:
        return ConfigurationError(
            f"REELVAULT_S3_BUCKET: bucket {bucket!r} does not exist at {endpoint} "
            "(serve never creates it: create it with its policies first)"
        )
    if isinstance(mapped, ConfigurationError):
        return ConfigurationError(
            f"{_S3_CREDENTIALS}: the object store at {endpoint} refused {operation} on bucket "
            f"{bucket!r} (AWS error code {code or 'none'})"
        )
    if isinstance(mapped, Unavailable):
        reason = f"AWS error code {code}" if code else type(exc).__name__
        return Unavailable(
            f"REELVAULT_S3_ENDPOINT_URL: the object store at {endpoint} is unavailable "
            f"({operation}: {reason})"
        )
    return type(mapped)(
        f"REELVAULT_S3_BUCKET: {operation} on bucket {bucket!r} at {endpoint} failed "
        f"({f'AWS error code {code}' if code else type(exc).__name__})"
    )


def _aws_code(exc: BaseException | None) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def _readable(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _certificates(path: Path, variable: str, *, roots: bool = False) -> None:
    """At least one PEM certificate in ``path``; with ``roots``, and no private key (a CA
    bundle is public: a key in it is a key leaked to everyone who reads the bundle)."""
    data = _readable(path, variable)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigurationError(f"{variable}: {path} holds no PEM certificate")
    if roots and b"PRIVATE KEY-----" in data:
        raise ConfigurationError(
            f"{variable}: {path} holds a private key; it must hold only CA certificates"
        )
    if roots:
        try:
            ssl.create_default_context(cafile=str(path))
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"{variable}: {path} holds no loadable certificate ({exc.reason or 'unreadable'})"
            ) from None


def _hidden_url(url: str) -> str:
    return safe_url(url)
