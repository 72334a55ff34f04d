"""Service settings, read in one place.

Every setting has a name, a type, a default and a line of help, declared once on
:class:`Settings`. Values come from, highest precedence first:

1. ``REELVAULT_*`` environment variables (``REELVAULT_GRPC_PORT=7401``);
2. a TOML file named by ``--config`` or ``REELVAULT_CONFIG``, whose top-level keys are the
   setting names (``grpc_port = 7401``);
3. the defaults.

Nothing else in reelvault reads the environment for service settings, so
``reelvault serve --help`` (:meth:`Settings.describe`) is the complete list. A bad value
fails at start with a :class:`~reelvault.errors.ConfigurationError` naming the variable or
file key, never later on the first request that needs it.

Secrets (the S3 secret key, a password inside ``database_url``) are never printed:
:meth:`Settings.__repr__` and :meth:`Settings.describe` mask them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from reelvault.errors import ConfigurationError

__all__ = [
    "CONFIG_FILE_ENV",
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ROOT_KEY_PROVIDERS",
    "Settings",
]

ENV_PREFIX: Final = "REELVAULT_"
CONFIG_FILE_ENV: Final = "REELVAULT_CONFIG"
ROOT_KEY_PROVIDERS: Final = ("local", "aws-kms")
LOG_FORMATS: Final = ("console", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

_MIB: Final = 1024 * 1024
_MIN_PART_SIZE: Final = 5 * _MIB  # S3's floor for every part but the last
_MAX_PART_SIZE: Final = 512 * _MIB  # x10 growth stays within S3's 5 GiB per part
_SIZE_SUFFIXES: Final = {"kib": 1024, "mib": _MIB, "gib": 1024 * _MIB}
_MASK: Final = "********"

# A parser turns a raw value (a string from the environment, or a TOML value) into the
# setting's type, or raises ValueError with a short description of what is expected.
_Parser = Callable[[object], Any]


def _meta(
    help_text: str,
    parse: _Parser,
    *,
    env: str | None = None,
    secret: bool = False,
    shown_default: str | None = None,
) -> dict[str, Any]:
    """A setting's description, kept in its dataclass field's metadata.

    Args:
        help_text: one line for ``reelvault serve --help``.
        parse: turns a raw value into the setting's type (ValueError if it cannot).
        env: the variable's name where it is not ``REELVAULT_`` + the upper-cased field name
            (kept for names that predate this module, such as ``REELVAULT_KEYRING``).
        secret: never printed.
        shown_default: how ``--help`` shows a default derived from other settings.
    """
    return {
        "help": help_text,
        "parse": parse,
        "env": env,
        "secret": secret,
        "shown_default": shown_default,
    }


# -- parsers -------------------------------------------------------------------------------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_text(value: object) -> str | None:
    text = _text(value).strip()
    return text or None


def _path(value: object) -> Path:
    text = _text(value).strip()
    if not text:
        raise ValueError("expected a path")
    return Path(text).expanduser()


def _optional_path(value: object) -> Path | None:
    text = _text(value).strip()
    return Path(text).expanduser() if text else None


def _integer(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    text = _text(value).strip()
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError("expected an integer") from None


def _optional_port(value: object) -> int | None:
    """A TCP port, 0 for a free one, or None (empty): the listener is off."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    port = _integer(value)
    if not 0 <= port <= 65535:
        raise ValueError("expected a port in 0..65535, or nothing (off)")
    return port


def _seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        try:
            seconds = float(_text(value).strip().removesuffix("s"))
        except ValueError:
            raise ValueError("expected a number of seconds") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError("expected a finite number of seconds >= 0")
    return seconds


def _size(value: object) -> int:
    """Bytes, as an integer or with a binary suffix: ``16777216``, ``16MiB``, ``512 KiB``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    for suffix, factor in _SIZE_SUFFIXES.items():
        if text.endswith(suffix):
            number = text.removesuffix(suffix).strip()
            if number.isdigit():
                return int(number) * factor
            break
    if text.isdigit():
        return int(text)
    raise ValueError("expected a size in bytes, e.g. 16777216 or 16MiB")


def _optional_endpoint(value: object) -> str | None:
    """An ``http://`` or ``https://`` URL naming a host, or None (empty): off."""
    text = _optional_text(value)
    if text is None:
        return None
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        url = urllib.parse.urlsplit("")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("expected http://HOST:PORT or https://HOST:PORT, or nothing (off)")
    return text


def _fraction(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number from 0 to 1")
    try:
        number = float(value) if isinstance(value, int | float) else float(_text(value).strip())
    except ValueError:
        raise ValueError("expected a number from 0 to 1") from None
    if not 0 <= number <= 1:
        raise ValueError("expected a number from 0 to 1")
    return number


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false (1 or 0, on or off)")


def _cidrs_parse(text: str | None) -> bool:
    """Whether ``text`` is empty or comma-separated addresses or CIDR networks."""
    try:
        for part in (text or "").split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)
    except ValueError:
        return False
    return True


def _choice(*choices: str) -> _Parser:
    def parse(value: object) -> str:
        text = _text(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs to start; see the module docstring for sources.

    Construct directly in tests (``Settings(data_dir=tmp_path, grpc_port=0)``); services
    use :meth:`load`. Two settings have defaults derived from ``data_dir``: read them
    through :attr:`resolved_database_url` and :attr:`resolved_keyring_path`.
    """

    data_dir: Path = field(
        default=Path(".reelvault"),
        metadata=_meta("directory for the embedded catalog and the keyring", _path),
    )
    database_url: str | None = field(
        default=None,
        metadata=_meta(
            "catalog database URL (sqlite:///... or postgresql+psycopg://...)",
            _optional_text,
            shown_default="sqlite:///<data_dir>/catalog.sqlite3",
        ),
    )
    root_key_provider: str = field(
        default="local",
        metadata=_meta(
            "root key provider: local (keyring file) or aws-kms", _choice(*ROOT_KEY_PROVIDERS)
        ),
    )
    keyring_path: Path | None = field(
        default=None,
        metadata=_meta(
            "local keyring file (root_key_provider=local)",
            _optional_path,
            env="REELVAULT_KEYRING",
            shown_default="<data_dir>/keyring.json",
        ),
    )
    kms_key_id: str | None = field(
        default=None,
        metadata=_meta("AWS KMS key id, ARN or alias (root_key_provider=aws-kms)", _optional_text),
    )
    kms_region: str | None = field(
        default=None,
        metadata=_meta("AWS region of the KMS key (default: the AWS SDK's)", _optional_text),
    )
    kms_endpoint_url: str | None = field(
        default=None, metadata=_meta("KMS endpoint for a KMS-compatible service", _optional_text)
    )
    s3_endpoint_url: str | None = field(
        default=None,
        metadata=_meta(
            "S3-compatible endpoint (SeaweedFS, MinIO, ...); unset for AWS S3", _optional_text
        ),
    )
    s3_bucket: str = field(
        default="reelvault", metadata=_meta("bucket holding the encrypted objects", _text)
    )
    s3_region: str | None = field(default=None, metadata=_meta("S3 signing region", _optional_text))
    s3_access_key_id: str | None = field(
        default=None,
        metadata=_meta("S3 access key id (unset: the AWS SDK's credential chain)", _optional_text),
    )
    s3_secret_access_key: str | None = field(
        default=None,
        metadata=_meta("S3 secret access key (never printed)", _optional_text, secret=True),
    )
    s3_part_size: int = field(
        default=8 * _MIB,
        metadata=_meta(
            "multipart part size in bytes (5 MiB..512 MiB; 8MiB form accepted); grows x2..x10 "
            "after every 1000 parts",
            _size,
        ),
    )
    s3_max_in_flight: int = field(
        default=4, metadata=_meta("parts one upload sends at once", _integer)
    )
    s3_connect_timeout: float = field(
        default=3.0, metadata=_meta("seconds to open a connection to the object store", _seconds)
    )
    s3_read_timeout: float = field(
        default=10.0,
        metadata=_meta("seconds the object store may stay silent within one request", _seconds),
    )
    s3_max_attempts: int = field(
        default=3, metadata=_meta("attempts per object store request, retries included", _integer)
    )
    s3_operation_timeout: float = field(
        default=30.0,
        metadata=_meta(
            "seconds one object store request (a part, a range) may take, retries included",
            _seconds,
        ),
    )
    s3_public_endpoint_url: str | None = field(
        default=None,
        metadata=_meta(
            "endpoint read grants' presigned URLs name, when clients reach the store at "
            "another address than the vault (default: s3_endpoint_url)",
            _optional_text,
        ),
    )
    grant_lifetime: int = field(
        default=300,
        metadata=_meta("seconds a read grant's presigned URL stays valid by default", _integer),
    )
    grant_max_lifetime: int = field(
        default=3600,
        metadata=_meta("the longest read grant lifetime a caller may ask for (seconds)", _integer),
    )
    url_default_ttl: int = field(
        default=3600,
        metadata=_meta("seconds a distribution URL or cookie lives when none is asked", _integer),
    )
    url_max_ttl: int = field(
        default=86400,
        metadata=_meta("the longest distribution URL or cookie lifetime (seconds)", _integer),
    )
    url_leeway: float = field(
        default=60.0,
        metadata=_meta("clock skew tolerated when the origin checks a token's times", _seconds),
    )
    payload_max_bytes: int = field(
        default=1024 * 1024,
        metadata=_meta("the largest personalization payload PutPayload accepts", _size),
    )
    privacy_interval: float = field(
        default=300.0,
        metadata=_meta(
            "seconds between purges of expired payloads and destructions of tenants due",
            _seconds,
        ),
    )
    origin_base_url: str = field(
        default="http://127.0.0.1:7480",
        metadata=_meta("the origin's address as CDNs and players reach it (URLs name it)", _text),
    )
    origin_host: str = field(
        default="127.0.0.1", metadata=_meta("address the HTTP origin listens on", _text)
    )
    origin_port: int = field(
        default=7480, metadata=_meta("HTTP origin port; 0 picks a free one", _integer)
    )
    origin_workers: int = field(default=2, metadata=_meta("HTTP origin worker processes", _integer))
    origin_audience: str | None = field(
        default=None,
        metadata=_meta(
            "the audience this origin accepts: tokens naming another are refused", _optional_text
        ),
    )
    origin_public_cache: bool = field(
        default=False,
        metadata=_meta(
            "answer Cache-Control public (the edge validates tokens) instead of private",
            _boolean,
        ),
    )
    origin_cors_origin: str = field(
        default="*", metadata=_meta("Access-Control-Allow-Origin of the origin's answers", _text)
    )
    origin_trusted_proxies: str | None = field(
        default=None,
        metadata=_meta(
            "comma-separated CIDRs whose X-Forwarded-For the origin believes (client IP claims)",
            _optional_text,
        ),
    )
    origin_revocation_refresh: float = field(
        default=1.0,
        metadata=_meta("seconds an origin worker may use a revocation it read", _seconds),
    )
    cloudfront_key_pair_id: str | None = field(
        default=None,
        metadata=_meta("CloudFront public key id for CloudFront-mode URLs", _optional_text),
    )
    cloudfront_private_key_file: Path | None = field(
        default=None,
        metadata=_meta("PEM private key (RSA or EC P-256) of that CloudFront key", _optional_path),
    )
    cloudfront_base_url: str | None = field(
        default=None,
        metadata=_meta(
            "the CloudFront distribution's address, e.g. https://d1.cloudfront.net",
            _optional_endpoint,
        ),
    )
    cloudfront_origin_secret: str | None = field(
        default=None,
        metadata=_meta(
            "secret the origin requires in X-Reelvault-Origin-Secret (CloudFront mode; never "
            "printed)",
            _optional_text,
            secret=True,
        ),
    )
    catalog_timeout: float = field(
        default=10.0,
        metadata=_meta(
            "seconds for a catalog connection, statement, pool wait or SQLite lock", _seconds
        ),
    )
    kms_timeout: float = field(
        default=10.0,
        metadata=_meta("seconds one AWS KMS request may take, retries included", _seconds),
    )
    max_uploads: int = field(
        default=16, metadata=_meta("concurrent uploads per process (admission control)", _integer)
    )
    max_uploads_per_tenant: int = field(
        default=4, metadata=_meta("concurrent uploads per tenant and process", _integer)
    )
    max_downloads: int = field(
        default=64, metadata=_meta("concurrent downloads per process (admission control)", _integer)
    )
    max_downloads_per_tenant: int = field(
        default=16, metadata=_meta("concurrent downloads per tenant and process", _integer)
    )
    admission_retry_after: float = field(
        default=1.0,
        metadata=_meta("retry hint, in seconds, sent with RESOURCE_EXHAUSTED", _seconds),
    )
    upload_idle_timeout: float = field(
        default=60.0,
        metadata=_meta("seconds an upload stream may send nothing before it is dropped", _seconds),
    )
    readiness_interval: float = field(
        default=5.0,
        metadata=_meta("seconds between readiness probes of the catalog, store and keys", _seconds),
    )
    grpc_host: str = field(
        default="127.0.0.1", metadata=_meta("address the gRPC server listens on", _text)
    )
    grpc_port: int = field(default=7400, metadata=_meta("gRPC port; 0 picks a free one", _integer))
    tls_cert_file: Path | None = field(
        default=None,
        metadata=_meta(
            "PEM server certificate (chain); with tls_key_file enables TLS", _optional_path
        ),
    )
    tls_key_file: Path | None = field(
        default=None, metadata=_meta("PEM private key of the certificate", _optional_path)
    )
    tls_client_ca_file: Path | None = field(
        default=None,
        metadata=_meta(
            "PEM CA bundle; when set, clients must present a certificate (mTLS)", _optional_path
        ),
    )
    reflection: bool = field(
        default=True,
        metadata=_meta(
            "serve gRPC reflection (service descriptions for grpcurl and the like)",
            _boolean,
            shown_default="on",
        ),
    )
    key_cache_ttl: float = field(
        default=60.0,
        metadata=_meta("seconds an unwrapped tenant KEK stays cached (0 disables)", _seconds),
    )
    audit_origin: str = field(
        default="reelvault.local/audit",
        metadata=_meta(
            "origin prefix of signed audit checkpoints (a log's origin is PREFIX/<log id>)", _text
        ),
    )
    audit_key_name: str = field(
        default="reelvault-audit",
        metadata=_meta("name of the audit checkpoint signing key in signed notes", _text),
    )
    audit_integrate_interval: float = field(
        default=0.5,
        metadata=_meta("seconds between audit sequencer rounds (integration lag)", _seconds),
    )
    audit_checkpoint_interval: float = field(
        default=60.0,
        metadata=_meta("seconds between signed checkpoints of a log that grew", _seconds),
    )
    scrub_interval: float = field(
        default=0.0,
        metadata=_meta(
            "seconds from the end of one integrity scrub pass to the start of the next, run"
            " inside serve (0: off)",
            _seconds,
        ),
    )
    scrub_rate: int = field(
        default=50 * _MIB,
        metadata=_meta(
            "bytes per second the integrity scrub reads (50MiB form accepted; 0: unlimited)",
            _size,
        ),
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata=_meta("address the Prometheus metrics endpoint listens on", _text),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=_meta(
            "Prometheus metrics port (GET /metrics); unset: no endpoint; 0 picks a free one",
            _optional_port,
            shown_default="off",
        ),
    )
    tracing_endpoint: str | None = field(
        default=None,
        metadata=_meta(
            "OTLP/gRPC collector traces are sent to (http://HOST:4317, or https:// for TLS);"
            " unset: no tracing",
            _optional_endpoint,
            shown_default="off",
        ),
    )
    tracing_service_name: str = field(
        default="reelvault",
        metadata=_meta("service.name of the traces this service sends", _text),
    )
    tracing_sample_ratio: float = field(
        default=1.0,
        metadata=_meta(
            "share of calls traced, 0 to 1 (a caller's sampled trace is always followed)",
            _fraction,
        ),
    )
    shutdown_grace: float = field(
        default=30.0,
        metadata=_meta("seconds in-flight calls may take to finish after SIGTERM/SIGINT", _seconds),
    )
    log_level: str = field(
        default="info", metadata=_meta("debug, info, warning or error", _choice(*LOG_LEVELS))
    )
    log_format: str = field(
        default="console",
        metadata=_meta("console (for people) or json (one object per line)", _choice(*LOG_FORMATS)),
    )

    def __post_init__(self) -> None:
        self._validate()

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
    ) -> Settings:
        """Read the settings: environment over file over defaults.

        Args:
            environ: the environment (default ``os.environ``).
            config_file: a TOML file; default ``$REELVAULT_CONFIG``, else none.

        Raises:
            ConfigurationError: an unknown key in the file, an unreadable file, or a value
                that does not parse or validate; the message names the variable or key.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if config_file is None and (named := env.get(CONFIG_FILE_ENV, "").strip()):
            config_file = named
        if config_file is not None:
            values.update(_read_file(Path(config_file)))
        for item in dataclasses.fields(cls):
            variable = _env_name(item)
            if variable in env:
                values[item.name] = _parse(item, env[variable], variable)
        try:
            return cls(**values)
        except ConfigurationError as exc:
            raise ConfigurationError(_located(exc.message, config_file)) from None

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(environment variable, default, help)`` for every setting, in declaration order,
        for ``reelvault serve --help``. Secret defaults are masked."""
        rows = []
        for item in dataclasses.fields(cls):
            meta = item.metadata
            if meta["shown_default"] is not None:
                shown = meta["shown_default"]
            elif meta["secret"] and item.default is not None:
                shown = _MASK
            else:
                shown = _show(item.default)
            rows.append((_env_name(item), shown, meta["help"]))
        return rows

    @classmethod
    def given(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
    ) -> frozenset[str]:
        """The names of the settings :meth:`load` takes from the environment or the config
        file rather than from the defaults: commands that write to a deployment refuse to
        act on a catalog nobody named (``data_dir`` and ``database_url`` both defaulted).

        Raises:
            ConfigurationError: as :meth:`load`, for an unreadable or unknown file.
        """
        env = os.environ if environ is None else environ
        if config_file is None and (named := env.get(CONFIG_FILE_ENV, "").strip()):
            config_file = named
        read = _read_file(Path(config_file)) if config_file is not None else {}
        names = set()
        for item in dataclasses.fields(cls):
            variable = _env_name(item)
            # An empty value (REELVAULT_DATABASE_URL="", database_url = "") names nothing:
            # load() reads it as unset, and the environment's wins over the file's.
            if variable in env:
                if env[variable].strip():
                    names.add(item.name)
            elif read.get(item.name) is not None:
                names.add(item.name)
        return frozenset(names)

    # -- derived values --------------------------------------------------------------------

    @property
    def shown_database_url(self) -> str:
        """:attr:`resolved_database_url` with any password masked (in the user part or a
        query parameter), for messages."""
        return _hide_password(self.resolved_database_url)

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the embedded SQLite catalog under ``data_dir``."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'catalog.sqlite3'}"

    @property
    def resolved_keyring_path(self) -> Path:
        """``keyring_path``, or ``keyring.json`` under ``data_dir``."""
        if self.keyring_path is not None:
            return self.keyring_path
        return self.data_dir / "keyring.json"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None

    def __repr__(self) -> str:
        parts = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata["secret"] and value is not None:
                shown = _MASK
            elif item.name == "database_url" and value is not None:
                shown = repr(_hide_password(value))
            else:
                shown = repr(value)
            parts.append(f"{item.name}={shown}")
        return f"Settings({', '.join(parts)})"

    # -- validation ------------------------------------------------------------------------

    def _validate(self) -> None:
        # Types first: Settings(...) built in code bypasses the parsers.
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None and item.default is None:
                continue
            try:
                parsed = item.metadata["parse"](_as_raw(value))
            except ValueError as exc:
                raise ConfigurationError(f"{_env_name(item)}: {exc}") from None
            if parsed != value:
                object.__setattr__(self, item.name, parsed)
        self._check(0 <= self.grpc_port <= 65535, "grpc_port", "must be in 0..65535")
        self._check(self.grpc_host.strip() != "", "grpc_host", "must not be empty")
        self._check(self.s3_bucket.strip() != "", "s3_bucket", "must not be empty")
        self._check(
            _MIN_PART_SIZE <= self.s3_part_size <= _MAX_PART_SIZE,
            "s3_part_size",
            "must be 5 MiB to 512 MiB (S3 allows 5 GiB parts; ours grow up to 10x)",
        )
        self._check(self.s3_max_in_flight >= 1, "s3_max_in_flight", "must be at least 1")
        self._check(self.scrub_rate >= 0, "scrub_rate", "must not be negative")
        self._check(
            self.tracing_service_name.strip() != "", "tracing_service_name", "must not be empty"
        )
        for name in ("s3_connect_timeout", "s3_read_timeout", "s3_operation_timeout"):
            self._check(getattr(self, name) > 0, name, "must be positive")
        for name in ("catalog_timeout", "kms_timeout", "readiness_interval", "upload_idle_timeout"):
            self._check(getattr(self, name) > 0, name, "must be positive")
        for name in (
            "s3_max_attempts",
            "max_uploads",
            "max_uploads_per_tenant",
            "max_downloads",
            "max_downloads_per_tenant",
        ):
            self._check(getattr(self, name) >= 1, name, "must be at least 1")
        self._check(
            1 <= self.grant_max_lifetime <= 7 * 24 * 3600,
            "grant_max_lifetime",
            "must be 1 to 604800 seconds (SigV4's limit)",
        )
        self._check(
            1 <= self.grant_lifetime <= self.grant_max_lifetime,
            "grant_lifetime",
            f"must be 1 to {_env('grant_max_lifetime')} seconds",
        )
        self._check(
            60 <= self.url_max_ttl <= 7 * 24 * 3600,
            "url_max_ttl",
            "must be 60 to 604800 seconds",
        )
        self._check(
            1 <= self.url_default_ttl <= self.url_max_ttl,
            "url_default_ttl",
            f"must be 1 to {_env('url_max_ttl')} seconds",
        )
        self._check(0 <= self.url_leeway <= 600, "url_leeway", "must be 0 to 600 seconds")
        self._check(
            1 <= self.payload_max_bytes <= 16 * 1024 * 1024,
            "payload_max_bytes",
            "must be 1 byte to 16 MiB",
        )
        self._check(
            1 <= self.privacy_interval <= 86400, "privacy_interval", "must be 1 to 86400 seconds"
        )
        self._check(0 <= self.origin_port <= 65535, "origin_port", "must be in 0..65535")
        self._check(1 <= self.origin_workers <= 64, "origin_workers", "must be 1 to 64")
        self._check(
            self.origin_revocation_refresh >= 0,
            "origin_revocation_refresh",
            "must not be negative",
        )
        self._check(
            urllib.parse.urlsplit(self.origin_base_url).scheme in ("http", "https"),
            "origin_base_url",
            "must be an http:// or https:// URL",
        )
        self._check(
            _cidrs_parse(self.origin_trusted_proxies),
            "origin_trusted_proxies",
            "must be comma-separated addresses or CIDR networks, e.g. 10.0.0.0/8,192.0.2.7",
        )
        self._check(
            self.cloudfront_origin_secret is None or len(self.cloudfront_origin_secret) >= 16,
            "cloudfront_origin_secret",
            "must be at least 16 characters (32 random bytes, encoded, are recommended)",
        )
        self._check(
            (self.cloudfront_key_pair_id is None) == (self.cloudfront_private_key_file is None)
            and (self.cloudfront_key_pair_id is None) == (self.cloudfront_base_url is None),
            "cloudfront_key_pair_id",
            f"set it, {_env('cloudfront_private_key_file')} and {_env('cloudfront_base_url')} "
            "together, or none of them",
        )
        self._check(
            (self.s3_access_key_id is None) == (self.s3_secret_access_key is None),
            "s3_secret_access_key",
            f"set both it and {_env('s3_access_key_id')}, or neither",
        )
        self._check(
            self.root_key_provider != "aws-kms" or self.kms_key_id is not None,
            "kms_key_id",
            "is required when REELVAULT_ROOT_KEY_PROVIDER is aws-kms",
        )
        self._check(
            (self.tls_cert_file is None) == (self.tls_key_file is None),
            "tls_key_file",
            f"set both it and {_env('tls_cert_file')}, or neither",
        )
        self._check(
            self.tls_client_ca_file is None or self.tls_cert_file is not None,
            "tls_client_ca_file",
            f"mutual TLS needs server TLS: set {_env('tls_cert_file')} and "
            f"{_env('tls_key_file')} too",
        )
        if self.database_url is not None:
            try:
                url = make_url(self.database_url)
            except ArgumentError:
                raise ConfigurationError(
                    f"{_env('database_url')}: not a database URL "
                    "(expected sqlite:///... or postgresql+psycopg://...)"
                ) from None
            # An unencoded @ in the password: the rest of the password becomes the host
            # (and would be shown as one). Never echo the URL here.
            self._check(
                "@" not in (url.username or "") and "@" not in (url.host or ""),
                "database_url",
                "the user or password holds an unencoded '@': percent-encode the password "
                "(@ as %40; likewise : as %3A, / as %2F, ? as %3F, # as %23, % as %25)",
            )

    @staticmethod
    def _check(condition: bool, name: str, problem: str) -> None:
        if not condition:
            raise ConfigurationError(f"{_env(name)}: {problem}")


_FIELDS: Final = {item.name: item for item in dataclasses.fields(Settings)}


def _env_name(item: dataclasses.Field[Any]) -> str:
    explicit: str | None = item.metadata["env"]
    return explicit or ENV_PREFIX + item.name.upper()


def _env(name: str) -> str:
    return _env_name(_FIELDS[name])


def _parse(item: dataclasses.Field[Any], raw: object, source: str) -> Any:
    try:
        return item.metadata["parse"](raw)
    except ValueError as exc:
        shown = _MASK if item.metadata["secret"] else repr(raw)
        raise ConfigurationError(f"{source}: {exc} (got {shown})") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigurationError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, raw in document.items():
        item = _FIELDS.get(key)
        if item is None:
            raise ConfigurationError(f"config file {path}: unknown setting {key!r}")
        values[key] = _parse(item, raw, f"{key} in config file {path}")
    return values


def _as_raw(value: object) -> object:
    # Values already of the right type re-parse to themselves; paths go back through str.
    return str(value) if isinstance(value, Path) else value


def _located(message: str, config_file: str | os.PathLike[str] | None) -> str:
    if config_file is None:
        return message
    return f"{message} (environment or config file {os.fspath(config_file)})"


def _show(value: object) -> str:
    return "" if value is None else str(value)


def _hide_password(url: str) -> str:
    from reelvault.catalog.db import safe_url  # noqa: PLC0415 - startup time

    return safe_url(url)
