"""A synchronous Python client for the reelvault gRPC API.

::

    from reelvault.client import Client

    with Client() as vault:                     # REELVAULT_ADDR, REELVAULT_TOKEN
        asset = vault.upload("master.mp4", path="campaign-42/master.mp4")
        vault.download(asset.id, "copy.mp4")
        head = b"".join(vault.download(asset.id, None, offset=0, length=1 << 20))

Callers catch one error tree: every failed call raises the :mod:`reelvault.errors` class
whose ``grpc_status`` is the status the server returned (``NotFound``, ``OutOfRange``,
``IntegrityError`` for ``DATA_LOSS``, ...), with the server's message. Statuses no class
claims (``CANCELLED``, ``UNIMPLEMENTED``, ...) raise :class:`~reelvault.errors.ReelvaultError`
itself; ``DEADLINE_EXCEEDED`` raises :class:`~reelvault.errors.Unavailable`. Local I/O
errors (a missing source file, a full disk) stay ``OSError``.

The audit log is read through the same client (auditor and platform-auditor keys):
:meth:`Client.list_audit_events` queries events by time and filters,
:meth:`Client.export_audit_events` streams the exact leaf bytes the log committed to, and
:meth:`Client.get_checkpoint` returns the signed checkpoint an export is verified against.

Transfers stream: uploads read 1 MiB at a time and downloads write each chunk as it
arrives, so memory stays flat for any file size. A download into a path is written to a
temporary file beside it and renamed on success, so a failed or tampered download never
leaves a partial file under the requested name.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self, cast

import grpc  # type: ignore[import-untyped, unused-ignore]
from grpc_health.v1 import (  # type: ignore[import-untyped, unused-ignore]
    health_pb2,
    health_pb2_grpc,
)

from reelvault import errors
from reelvault.client_privacy import PrivacyCalls
from reelvault.direct import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    Grant,
    GrantExpired,
    GrantReader,
    HttpRanges,
    ObjectMissing,
    StoreUnreachable,
)
from reelvault.v1 import (
    apikey_pb2,
    apikey_pb2_grpc,
    asset_pb2,
    asset_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    distribution_pb2,
    distribution_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)

__all__ = [
    "ADDR_ENV",
    "ApiKey",
    "Asset",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditEventPage",
    "AuditRecord",
    "AuditRetention",
    "CHUNK_SIZE",
    "Client",
    "ConsistencyProof",
    "DEFAULT_ADDR",
    "DistributionUrl",
    "DownloadStream",
    "InclusionProof",
    "MAX_MESSAGE_SIZE",
    "READ_PATHS",
    "ROLES",
    "ReadGrant",
    "SigningKey",
    "TLS_CLIENT_CERT_ENV",
    "TLS_CLIENT_KEY_ENV",
    "TLS_ENV",
    "TLS_ROOTS_ENV",
    "TOKEN_ENV",
    "TOKEN_ALGORITHMS",
    "Tenant",
    "error_from_rpc",
]

ADDR_ENV: Final = "REELVAULT_ADDR"
TOKEN_ENV: Final = "REELVAULT_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_ADDR: Final = "127.0.0.1:7400"
TLS_ENV: Final = "REELVAULT_TLS"
"""``1``/``true``: TLS with the system's trust roots (implied by the three below)."""
TLS_ROOTS_ENV: Final = "REELVAULT_TLS_ROOTS_FILE"
"""PEM CA bundle the client verifies the server with, instead of the system's."""
TLS_CLIENT_CERT_ENV: Final = "REELVAULT_TLS_CLIENT_CERT_FILE"
"""PEM certificate chain of the client, for mutual TLS (with the key below)."""
TLS_CLIENT_KEY_ENV: Final = "REELVAULT_TLS_CLIENT_KEY_FILE"
"""PEM private key of the client certificate."""
CHUNK_SIZE: Final = 1 << 20
"""Upload chunk size; the server sends download chunks of at most this size too."""
MAX_MESSAGE_SIZE: Final = 16 << 20
"""Send and receive limit of the channel, as on the server."""

ROLES: Final = (
    "platform-admin",
    "admin",
    "ingest",
    "renderer",
    "distributor",
    "auditor",
    "privacy",
    "platform-auditor",
)
"""Role names, as ``reelvault.auth.Role`` spells them (that enum's members are these strings)."""

_POLICY_RECHECK: Final = 300.0
_STORE_RECHECK: Final = 60.0
_CACHED_GRANTS: Final = 64

READ_PATHS: Final = ("auto", "direct", "vault")
"""How ``download`` reads: ``direct`` from the object store with a read grant, ``vault``
through the Download stream, ``auto`` direct where the tenant allows it and the store is
reachable, else through the vault (docs/direct-reads.md)."""

Source = str | os.PathLike[str] | IO[bytes] | bytes | bytearray | memoryview | Iterable[bytes]
Destination = str | os.PathLike[str] | IO[bytes]
Progress = Callable[[int], object]


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: datetime
    direct_reads: bool = False
    """``open_asset`` (and direct reads by ``download``) is enabled for the tenant."""


TOKEN_ALGORITHMS: Final = ("ed25519", "hmac-sha256")
"""What :meth:`Client.issue_url` and :meth:`Client.rotate_signing_key` take."""


@dataclass(frozen=True, slots=True)
class DistributionUrl:
    """An issued distribution URL or cookie (docs/urls.md).

    Attributes:
        url: where to fetch: the asset; for a prefix, the rendition's directory (append a
            segment's path); for a cookie, the directory it covers. A bearer credential.
        token: the token alone ("" in CloudFront mode). A bearer credential.
        set_cookie: for a cookie, the whole ``Set-Cookie`` value.
        cloudfront_cookies: CloudFront mode's cookies, name -> value.
    """

    url: str = field(repr=False)
    token: str = field(repr=False)
    expires_at: datetime
    key_id: str
    resource: str
    set_cookie: str = field(default="", repr=False)
    cloudfront_cookies: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A tenant's distribution token key; ``public_key`` is Ed25519's (empty for HMAC)."""

    key_id: str
    algorithm: str
    state: str
    public_key: bytes
    created_at: datetime
    state_changed_at: datetime
    verify_until: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key's public description; the secret is returned only by ``create_api_key``.

    Attributes:
        tenant_id: ``None`` for platform-admin keys.
        role: one of :data:`ROLES`.
        revoked_at: ``None`` while the key is valid.
        last_used_at: the last successful call, to within a minute; ``None`` if never used.
    """

    id: str
    tenant_id: str | None
    role: str
    description: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Asset:
    """A stored asset. ``size`` and ``sha256`` describe the plaintext; ``kek_version`` is
    the tenant KEK version its data key is wrapped under now (a rewrap raises it)."""

    id: str
    tenant_id: str
    path: str
    content_type: str
    labels: Mapping[str, str] = field(hash=False)
    size: int
    sha256: bytes
    etag: str
    created_at: datetime
    kek_version: int = 0
    subject: str = ""
    """A personalized rendition's subject (pseudonym); empty for other assets."""


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """A read grant (``open_asset``): what reading the stored object directly takes.

    Attributes:
        header: the stored header, byte for byte.
        frame_key: the key of this object's frames. Secret: keep it in memory only.
        object_size: the stored object's size in bytes.
        url: a presigned GET of the stored object (a bearer credential: never log it).
        expires_at: when the URL stops working.
        offset, length: the range the audit event records.
    """

    asset: Asset
    header: bytes
    frame_key: bytes = field(repr=False)
    object_size: int
    url: str = field(repr=False)
    expires_at: datetime
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event of an audit log, as ``list_audit_events`` finds it.

    Attributes:
        log_id: the tenant id, or ``platform`` for the platform log.
        sequence: the position in the log; ``None`` until the log integrates the event.
        outcome: ``allowed``, ``denied`` or ``failed``.
        status: the gRPC status name of the answer the access got.
        method: the gRPC method (or HTTP route) called.
        record: the OCSF JSON record (the exact leaf bytes once integrated); ``None``
            once the retention policy purged it.
    """

    event_id: str
    log_id: str
    sequence: int | None
    time: datetime
    action: str
    outcome: str
    status: str
    method: str
    actor_key_id: str | None
    resource_type: str | None
    resource_id: str | None
    record: bytes | None


@dataclass(frozen=True, slots=True)
class AuditEventPage:
    """``next_page_token`` is empty on the last page."""

    events: tuple[AuditEvent, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One exported event: the Merkle leaf at ``sequence``.

    Attributes:
        record: the leaf bytes (OCSF JSON); ``None`` once purged.
        leaf_hash: SHA-256(0x00 || record); the server sends it for purged events, so
            the tree can still be recomputed without the record.
    """

    sequence: int
    record: bytes | None
    leaf_hash: bytes
    purged: bool


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """A signed checkpoint of one log.

    Attributes:
        note: the C2SP signed note (origin, size, base64 root hash, signature line).
        verifier_key: the key the note is signed with. Pin it once, out of band: a key
            fetched together with a checkpoint proves nothing about that checkpoint.
    """

    log_id: str
    origin: str
    size: int
    root_hash: bytes
    note: str
    verifier_key: str


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """RFC 9162 inclusion proof of the leaf at ``sequence`` in the tree of ``tree_size``."""

    sequence: int
    tree_size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """RFC 9162 proof that the tree of ``old_size`` is a prefix of that of ``new_size``."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AuditRetention:
    """``retention_days`` ``None``: event bodies are kept forever."""

    tenant_id: str
    retention_days: int | None
    legal_hold: bool


# --- errors ----------------------------------------------------------------------------


def _classes_by_status() -> dict[str, type[errors.ReelvaultError]]:
    """For each gRPC status, the most general class of the error tree that maps to it.

    A class whose parent maps to the same status (``KeyUnavailable`` under
    ``FailedPrecondition``, ``DecryptionError`` under ``IntegrityError``) only refines it,
    and the wire carries no more than the status, so the parent is what a client can know.
    """
    found: dict[str, type[errors.ReelvaultError]] = {}
    pending: builtins.list[type[errors.ReelvaultError]] = [errors.ReelvaultError]
    while pending:
        cls = pending.pop(0)
        found.setdefault(cls.grpc_status, cls)
        # Only the tree drawn in reelvault.errors: the mapping must not depend on which
        # other modules happen to be imported.
        pending.extend(c for c in cls.__subclasses__() if c.__module__ == errors.__name__)
    return found


_CLASSES: Final = _classes_by_status()
_UNCLAIMED: Final[dict[str, type[errors.ReelvaultError]]] = {
    "DEADLINE_EXCEEDED": errors.Unavailable
}


def error_from_rpc(exc: grpc.RpcError, *, sent_token: bool = True) -> errors.ReelvaultError:
    """The :mod:`reelvault.errors` exception for a failed call, keeping its message.

    Args:
        exc: what grpc raised; its status and details are read.
        sent_token: whether the call carried a token; if not, an ``UNAUTHENTICATED``
            message says how to give one.
    """
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    name: str = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or None
    cls = _CLASSES.get(name) or _UNCLAIMED.get(name) or errors.ReelvaultError
    if cls is errors.ReelvaultError and name != "INTERNAL":
        details = f"{name.lower()}: {details or 'no details'}"
    if name == "UNAUTHENTICATED" and not sent_token:
        details = f"{details or cls.default_message}; no API key was sent: set {TOKEN_ENV}"
    if cls is errors.ResourceExhausted:
        return errors.ResourceExhausted(details, retry_after=_retry_after(exc))
    return cls(details)


def _retry_after(exc: grpc.RpcError) -> float:
    """The server's ``retry-after`` hint (seconds) of a RESOURCE_EXHAUSTED answer; 1 s if
    it sent none or an unreadable one."""
    trailing = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    for key, value in trailing or ():
        if key == "retry-after":
            try:
                return max(0.0, min(float(value), 3600.0))
            except (TypeError, ValueError):
                break
    return 1.0


# --- the client ------------------------------------------------------------------------


def _tls_from_environment(
    environ: Mapping[str, str],
) -> tuple[bool, bytes | None, tuple[bytes, bytes] | None]:
    """``(tls, root_certificates, client_cert)`` as the ``REELVAULT_TLS*`` variables say."""
    flag = environ.get(TLS_ENV, "").strip().lower()
    if flag not in _TRUE | _FALSE:
        raise errors.ConfigurationError(f"{TLS_ENV} must be 1 or 0 (true or false)")
    roots_file = environ.get(TLS_ROOTS_ENV) or None
    cert_file = environ.get(TLS_CLIENT_CERT_ENV) or None
    key_file = environ.get(TLS_CLIENT_KEY_ENV) or None
    if (cert_file is None) != (key_file is None):
        raise errors.ConfigurationError(
            f"set both {TLS_CLIENT_CERT_ENV} and {TLS_CLIENT_KEY_ENV}, or neither"
        )
    roots = _read_pem(roots_file, TLS_ROOTS_ENV, certificates=True) if roots_file else None
    client_cert = (
        (
            _read_pem(cert_file, TLS_CLIENT_CERT_ENV, certificates=True),
            _read_pem(key_file, TLS_CLIENT_KEY_ENV),
        )
        if cert_file and key_file
        else None
    )
    return flag in _TRUE, roots, client_cert


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})


def _read_pem(path: str, variable: str, *, certificates: bool = False) -> bytes:
    """The PEM file ``path``; with ``certificates``, one that holds certificates and no
    private key (gRPC's C core would otherwise fail the first call with log lines of its
    own and a "failed to create security handshaker")."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise errors.ConfigurationError(
            f"{variable}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    if b"-----BEGIN " not in data:
        raise errors.ConfigurationError(f"{variable}: {path} is not a PEM file")
    if certificates and b"PRIVATE KEY-----" in data:
        raise errors.ConfigurationError(
            f"{variable}: {path} holds a private key; it must hold only certificates"
        )
    if certificates and b"-----BEGIN CERTIFICATE-----" not in data:
        raise errors.ConfigurationError(f"{variable}: {path} holds no PEM certificate")
    return data


def _connection_hint(details: str, *, tls: bool, client_cert: bool) -> str | None:
    """What to set when a channel could not connect, or None if the reason is not a TLS
    mismatch (a refused connection, a DNS failure say it themselves).

    gRPC reports a failed handshake only as text in the status details ("failed to
    connect to all addresses; last error: ..."), so this is the one place that reads
    them. A server that rejects a handshake closes the socket without a reason: a
    plaintext client to a TLS server and a TLS client without the certificate a mutual-TLS
    server requires both see "Socket closed".
    """
    if "failed to connect to all addresses" not in details:
        return None
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"the server's certificate is not trusted: set {TLS_ROOTS_ENV} to the CA bundle "
            "that signed it (and check that it names the host of "
            f"{ADDR_ENV})"
        )
    if "WRONG_VERSION_NUMBER" in details:
        return (
            f"the server does not speak TLS: unset {TLS_ENV}, {TLS_ROOTS_ENV} and "
            f"{TLS_CLIENT_CERT_ENV}, or enable TLS on the server"
        )
    if "Socket closed" not in details:
        return None
    if not tls:
        return (
            f"the server closed the connection; if it serves TLS, set {TLS_ENV}=1 "
            f"(or {TLS_ROOTS_ENV} for a private CA)"
        )
    if not client_cert:
        return (
            "the server closed the TLS handshake; if it requires mutual TLS, set "
            f"{TLS_CLIENT_CERT_ENV} and {TLS_CLIENT_KEY_ENV}"
        )
    return (
        f"the server closed the TLS handshake; it may not trust the certificate in "
        f"{TLS_CLIENT_CERT_ENV} (signed by another CA than its client CA?)"
    )


class Client(PrivacyCalls):
    """One channel to a reelvault server; safe to share between threads.

    Args:
        addr: ``host:port``; default ``$REELVAULT_ADDR``, else ``127.0.0.1:7400``.
        token: the API key (``rvk_...``); default ``$REELVAULT_TOKEN``. Sent on every call
            as ``authorization: Bearer <token>``.
        tls: use TLS. Implied by ``root_certificates`` or ``client_cert``.
        root_certificates: PEM CA bundle to verify the server with; default the system's.
        client_cert: ``(certificate chain PEM, private key PEM)`` for mutual TLS.
        timeout: deadline in seconds of each unary call. Uploads and downloads are not
            limited: they last as long as the data takes.
        environ: where ``REELVAULT_ADDR``, ``REELVAULT_TOKEN`` and, unless one of the three
            TLS arguments is given, the ``REELVAULT_TLS*`` variables (:data:`TLS_ENV` and
            the three after it) are read; the CLI is configured this way.
        read_path: how :meth:`download` reads by default, one of :data:`READ_PATHS`.
        direct_concurrency: ranged GETs in flight per direct read.
        direct_part_size: bytes per ranged GET of a direct read (whole frames).

    Raises:
        ConfigurationError: a TLS variable is malformed or names a file that cannot be
            read or is not PEM.
    """

    def __init__(
        self,
        addr: str | None = None,
        token: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
        timeout: float | None = None,
        environ: Mapping[str, str] = os.environ,
        read_path: str = "auto",
        direct_concurrency: int = DEFAULT_CONCURRENCY,
        direct_part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if read_path not in READ_PATHS:
            raise errors.InvalidArgument(f"read_path must be one of {', '.join(READ_PATHS)}")
        if direct_concurrency < 1 or direct_part_size < 1:
            raise errors.InvalidArgument("direct concurrency and part size must be positive")
        self._read_path = read_path
        self._direct_concurrency = direct_concurrency
        self._direct_part_size = direct_part_size
        self._http: HttpRanges | None = None  # made at the first direct read
        self._readers: OrderedDict[str, tuple[GrantReader, Asset]] = OrderedDict()
        self._readers_lock = threading.Lock()
        self._direct_off_until = 0.0  # monotonic: auto reads go through the vault until then
        self.addr = addr or environ.get(ADDR_ENV) or DEFAULT_ADDR
        token = token or environ.get(TOKEN_ENV) or None
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout = timeout
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
        ]
        if not tls and root_certificates is None and client_cert is None:
            tls, root_certificates, client_cert = _tls_from_environment(environ)
        self._tls = tls or root_certificates is not None or client_cert is not None
        self._client_cert = client_cert is not None
        if self._tls:
            chain, key = client_cert if client_cert is not None else (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=key, certificate_chain=chain
            )
            self._channel = grpc.secure_channel(self.addr, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.addr, options=options)
        # The generated stubs are untyped; their methods are used as Any.
        self._tenants = tenant_pb2_grpc.TenantServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._api_keys = apikey_pb2_grpc.ApiKeyServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._assets = asset_pb2_grpc.AssetServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._distribution = distribution_pb2_grpc.DistributionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        # Download again, with a response decoder that copies a chunk once (see below)
        self._download = self._channel.unary_stream(
            "/reelvault.v1.AssetService/Download",
            request_serializer=asset_pb2.DownloadRequest.SerializeToString,
            response_deserializer=decode_download_response,
        )

    def __repr__(self) -> str:  # never shows the token
        return f"Client(addr={self.addr!r})"

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel; calls in progress are cancelled."""
        self._channel.close()
        with self._readers_lock:
            self._readers.clear()  # drops the frame keys this client holds
            if self._http is not None:
                self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- tenants ------------------------------------------------------------------------

    def create_tenant(self, name: str, *, kms_key_arn: str | None = None) -> Tenant:
        """Create a tenant and its first key-encryption key (platform admin only); with
        ``kms_key_arn`` its KEKs are wrapped by the tenant's own KMS key."""
        request = tenant_pb2.CreateTenantRequest(name=name, kms_key_arn=kms_key_arn or "")
        return _tenant(self._unary(self._tenants.CreateTenant, request))

    def get_tenant(self, tenant_id: str) -> Tenant:
        reply = self._unary(
            self._tenants.GetTenant, tenant_pb2.GetTenantRequest(tenant_id=tenant_id)
        )
        return _tenant(reply)

    def list_tenants(self) -> builtins.list[Tenant]:
        reply = self._unary(self._tenants.ListTenants, tenant_pb2.ListTenantsRequest())
        return [_tenant(t) for t in reply.tenants]

    def set_tenant_policy(
        self, tenant_id: str | None = None, *, direct_reads: bool | None = None
    ) -> Tenant:
        """Change a tenant's policies (tenant admin: its own tenant, ``None``); an
        argument left ``None`` stays as it is."""
        request = tenant_pb2.SetTenantPolicyRequest(tenant_id=tenant_id or "")
        if direct_reads is not None:
            request.direct_reads = direct_reads
        return _tenant(self._unary(self._tenants.SetTenantPolicy, request))

    # -- distribution URLs ----------------------------------------------------------------

    def issue_url(
        self,
        *,
        asset_id: str = "",
        prefix: str = "",
        ttl: int = 0,
        not_before: datetime | None = None,
        audience: str = "",
        client_ip: str = "",
        session_id: str = "",
        algorithm: str = "ed25519",
        cookie: bool = False,
        cloudfront: bool = False,
    ) -> DistributionUrl:
        """A signed URL (or, with ``cookie``, a cookie) for one asset or a path prefix.

        Args:
            ttl: seconds from ``not_before`` (or now); 0 is the service's default.
            algorithm: one of :data:`TOKEN_ALGORITHMS`.
        """
        if algorithm not in TOKEN_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(TOKEN_ALGORITHMS)}")
        request = distribution_pb2.IssueRequest(
            ttl_seconds=ttl,
            audience=audience,
            client_ip_prefix=client_ip,
            session_id=session_id,
            algorithm=_ALGORITHM_TO_PROTO[algorithm],
            cloudfront=cloudfront,
        )
        if asset_id:
            request.asset_id = asset_id
        if prefix:
            request.prefix = prefix
        if not_before is not None:
            request.not_before.FromDatetime(not_before.astimezone(UTC))
        if cookie:
            reply = self._unary(self._distribution.IssueCookie, request)
            return DistributionUrl(
                url=reply.url,
                token="",
                expires_at=_time(reply.expire_time),
                key_id=reply.key_id,
                resource=reply.resource,
                set_cookie=reply.set_cookie,
                cloudfront_cookies=dict(reply.cloudfront_cookies),
            )
        reply = self._unary(self._distribution.IssueUrl, request)
        return DistributionUrl(
            url=reply.url,
            token=reply.token,
            expires_at=_time(reply.expire_time),
            key_id=reply.key_id,
            resource=reply.resource,
        )

    def revoke_session(self, session_id: str) -> datetime:
        """Tokens of this session issued until now stop working; returns the cut-off."""
        request = distribution_pb2.RevokeSessionRequest(session_id=session_id)
        return _time(self._unary(self._distribution.RevokeSession, request).cutoff_time)

    def revoke_asset_urls(self, asset_id: str) -> datetime:
        """Tokens reaching this asset issued until now stop working; returns the cut-off."""
        request = distribution_pb2.RevokeAssetRequest(asset_id=asset_id)
        return _time(self._unary(self._distribution.RevokeAsset, request).cutoff_time)

    def list_signing_keys(self) -> builtins.list[SigningKey]:
        reply = self._unary(
            self._distribution.ListSigningKeys, distribution_pb2.ListSigningKeysRequest()
        )
        return [_signing_key(k) for k in reply.keys]

    def rotate_signing_key(
        self, algorithm: str = "ed25519", *, retire_previous: bool = False
    ) -> tuple[SigningKey, bytes]:
        """A new signing key; for HMAC also its secret (shown only now). With
        ``retire_previous`` the current key stops verifying at once (a leaked key)."""
        if algorithm not in TOKEN_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(TOKEN_ALGORITHMS)}")
        request = distribution_pb2.RotateSigningKeyRequest(algorithm=_ALGORITHM_TO_PROTO[algorithm])
        reply = self._unary(self._distribution.RotateSigningKey, request)
        return _signing_key(reply.key), reply.hmac_secret

    # -- API keys -----------------------------------------------------------------------

    def create_api_key(
        self, *, role: str, tenant_id: str | None = None, description: str = ""
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it with its secret, the bearer token, shown only now.

        Args:
            role: one of :data:`ROLES`.
            tenant_id: required unless ``role`` is ``platform-admin``.
        """
        request = apikey_pb2.CreateApiKeyRequest(
            tenant_id=tenant_id or "", role=_role_to_proto(role), description=description
        )
        reply = self._unary(self._api_keys.CreateApiKey, request)
        return _api_key(reply.api_key), reply.secret

    def list_api_keys(self, tenant_id: str | None = None) -> builtins.list[ApiKey]:
        """A tenant's keys; platform admins without ``tenant_id`` see the platform keys."""
        request = apikey_pb2.ListApiKeysRequest(tenant_id=tenant_id or "")
        reply = self._unary(self._api_keys.ListApiKeys, request)
        return [_api_key(k) for k in reply.api_keys]

    def revoke_api_key(self, api_key_id: str) -> ApiKey:
        """Revoke a key (idempotent); it stops working on the next call."""
        request = apikey_pb2.RevokeApiKeyRequest(api_key_id=api_key_id)
        return _api_key(self._unary(self._api_keys.RevokeApiKey, request))

    # -- assets -------------------------------------------------------------------------

    def upload(
        self,
        source: Source,
        *,
        path: str,
        content_type: str | None = None,
        labels: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        subject_id: str | None = None,
    ) -> Asset:
        """Store ``source`` as a new asset at ``path`` and return it.

        Args:
            source: a file path, a binary file object (read from its current position),
                bytes, or an iterable of byte chunks. Files and bytes announce their size
                (``expected_size``), so a file that changes while being read is refused
                instead of stored truncated.
            path: the tenant-unique asset path; it never reaches storage.
            subject_id: a personalized rendition's viewer: its key then protects the
                asset, and erasing the viewer deletes it.
            progress: called with the total bytes sent so far after each chunk (from a
                gRPC worker thread).

        Raises:
            AlreadyExists: an asset already has this path.
            OSError: the source could not be read; nothing is stored.
        """
        with _open_source(source) as (chunks, size):
            metadata = asset_pb2.AssetMetadata(
                path=path,
                content_type=content_type or "",
                labels=dict(labels or {}),
                subject_id=subject_id or "",
            )
            if size is not None:
                metadata.expected_size = size
            requests = _UploadRequests(metadata, chunks, progress)
            future = self._assets.Upload.future(iter(requests), metadata=self._metadata)
            try:
                reply = future.result()
            except grpc.RpcError as exc:
                if requests.error is not None:
                    raise requests.error from None
                raise self._error(exc) from exc
            except BaseException:  # KeyboardInterrupt: the server must abort the upload
                future.cancel()
                raise
        return _asset(reply)

    def download(
        self,
        asset_id: str,
        dest: Destination | None = None,
        *,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
        progress: Progress | None = None,
        read_path: str | None = None,
    ) -> DownloadStream:
        """Read an asset, or a range of it.

        Without a range, the whole asset; ``offset`` with ``length``, those bytes;
        ``offset`` alone, from there to the end (``bytes=START-``); ``suffix``, the last
        ``suffix`` bytes, clamped to the size (``bytes=-N``).

        Args:
            dest: a path (written through a temporary file and renamed on success) or a
                binary file object. ``None`` returns the stream unread, to iterate.
            progress: called with the total bytes received so far after each chunk.
            read_path: this call's read path (:data:`READ_PATHS`); default the client's.
                ``direct`` and ``auto`` read the stored object with a read grant
                (``open_asset``, cached per asset while it is valid) and parallel ranged
                GETs, every frame authenticated here; ``auto`` reads through the vault
                instead when the tenant's policy refuses grants or the store cannot be
                reached (and keeps doing so for a minute), also from the middle of a
                transfer the store stopped serving.

        Returns:
            The stream, whose ``asset``, ``offset`` and ``length`` describe what it
            carries. When ``dest`` is given it has been read to the end and closed.

        Raises:
            NotFound: no such asset in the caller's tenant.
            OutOfRange: the range is not within the asset.
            IntegrityError: stored data failed authentication; nothing unauthenticated
                was written or yielded.
        """
        if suffix is not None and (offset is not None or length is not None):
            raise errors.InvalidArgument("give either suffix, or offset and length")
        if length is not None and offset is None:
            offset = 0
        path = read_path or self._read_path
        if path not in READ_PATHS:
            raise errors.InvalidArgument(f"read_path must be one of {', '.join(READ_PATHS)}")
        if path == "direct" or (path == "auto" and time.monotonic() >= self._direct_off_until):
            direct = self._direct_download(
                asset_id, offset, length, suffix, forced=path == "direct"
            )
            if direct is not None:
                if dest is not None:
                    with direct:
                        direct.save(dest, progress=progress)
                return direct
        request = asset_pb2.DownloadRequest(asset_id=asset_id)
        if suffix is not None:
            request.suffix_length = suffix
        elif offset is not None:
            if length is None:
                size = self.stat(asset_id).size
                if offset >= size:
                    raise errors.OutOfRange(f"range start {offset} is not before the size {size}")
                length = size - offset
            request.byte_range.offset = offset
            request.byte_range.length = length
        stream = DownloadStream(self._download(request, metadata=self._metadata), self)
        if dest is not None:
            with stream:
                stream.save(dest, progress=progress)
        return stream

    def open_asset(
        self,
        asset_id: str,
        *,
        offset: int | None = None,
        length: int | None = None,
        suffix: int | None = None,
        lifetime: int | None = None,
    ) -> ReadGrant:
        """A read grant for the asset (docs/direct-reads.md); the range, if given, is
        what the audit event records. ``download`` uses grants by itself; this is for
        readers of their own.

        Raises:
            FailedPrecondition: the tenant's policy does not enable direct reads.
        """
        request = asset_pb2.OpenAssetRequest(
            asset_id=asset_id, lifetime_seconds=_int_field(lifetime or 0, "lifetime", 31)
        )
        if suffix is not None:
            request.suffix_length = _int_field(suffix, "suffix length", 63)
        elif offset is not None and length is not None:
            request.byte_range.offset = _int_field(offset, "offset", 63)
            request.byte_range.length = _int_field(length, "length", 63)
        reply = self._unary(self._assets.OpenAsset, request)
        return ReadGrant(
            asset=_asset(reply.asset),
            header=reply.header,
            frame_key=reply.frame_key,
            object_size=reply.object_size,
            url=reply.url,
            expires_at=_time(reply.expire_time),
            offset=reply.offset,
            length=reply.length,
        )

    def _direct_download(
        self,
        asset_id: str,
        offset: int | None,
        length: int | None,
        suffix: int | None,
        *,
        forced: bool,
    ) -> DownloadStream | None:
        """A direct read, or None to read through the vault (``auto`` only)."""

        def missing() -> None:
            """The store has no object (404): a deleted asset is NotFound, as through the
            vault; otherwise the caller raises DATA_LOSS. The cached reader goes."""
            with self._readers_lock:
                self._readers.pop(asset_id, None)
            self.stat(asset_id)

        grant_range: dict[str, int] = {}
        if suffix is not None:
            grant_range = {"suffix": suffix}
        elif offset is not None and length is not None:
            grant_range = {"offset": offset, "length": length}
        try:
            reader, asset = self._grant_reader(asset_id, grant_range)
        except errors.FailedPrecondition:
            if forced:
                raise
            self._direct_off_until = time.monotonic() + _POLICY_RECHECK
            return None
        except (StoreUnreachable, GrantExpired) as exc:
            if forced:
                raise errors.Unavailable(_store_failure(exc)) from None
            self._direct_off_until = time.monotonic() + _STORE_RECHECK
            return None
        except ObjectMissing:
            missing()  # NotFound if the asset was deleted meanwhile
            raise
        except errors.DecryptionError as exc:  # as through the vault: opaque DATA_LOSS
            raise errors.IntegrityError(exc.message) from None
        start, count = _plaintext_range(asset.size, offset, length, suffix)

        def through_vault(at: int, n: int) -> DownloadStream | None:
            if forced:
                return None
            self._direct_off_until = time.monotonic() + _STORE_RECHECK
            return self.download(asset_id, offset=at, length=n, read_path="vault")

        return DirectStream(reader, asset, start, count, through_vault, missing=missing)

    def _grant_reader(
        self, asset_id: str, grant_range: Mapping[str, int]
    ) -> tuple[GrantReader, Asset]:
        with self._readers_lock:
            cached = self._readers.get(asset_id)
            if cached is not None and cached[0].fresh:
                self._readers.move_to_end(asset_id)
                return cached
            if self._http is None:
                self._http = HttpRanges(concurrency=self._direct_concurrency)
            http = self._http
        grant = self.open_asset(asset_id, **grant_range)
        if grant.asset.id != asset_id:  # the header check binds the grant's own asset only
            raise errors.IntegrityError("the read grant is for another asset")
        reader = GrantReader(
            _direct_grant(grant),
            http,
            lambda: _direct_grant(self.open_asset(asset_id)),
            concurrency=self._direct_concurrency,
            part_size=self._direct_part_size,
        )
        with self._readers_lock:
            self._readers[asset_id] = (reader, grant.asset)
            self._readers.move_to_end(asset_id)
            while len(self._readers) > _CACHED_GRANTS:
                self._readers.popitem(last=False)
        return reader, grant.asset

    def stat(self, asset_id: str) -> Asset:
        request = asset_pb2.StatAssetRequest(asset_id=asset_id)
        return _asset(self._unary(self._assets.StatAsset, request))

    def list(self, prefix: str = "", *, page_size: int = 0) -> Iterator[Asset]:
        """Every asset whose path starts with ``prefix``, fetching pages as it goes.

        Args:
            page_size: assets per request (1-1000); 0 lets the server choose.
        """
        token = ""
        while True:
            request = asset_pb2.ListAssetsRequest(
                prefix=prefix, page_size=page_size, page_token=token
            )
            reply = self._unary(self._assets.ListAssets, request)
            for item in reply.assets:
                yield _asset(item)
            token = reply.next_page_token
            if not token:
                return

    def delete(self, asset_id: str) -> None:
        """Delete an asset and its stored object (idempotent)."""
        request = asset_pb2.DeleteAssetRequest(asset_id=asset_id)
        self._unary(self._assets.DeleteAsset, request)

    # -- health -------------------------------------------------------------------------

    def check_health(self, service: str = "") -> str:
        """What the standard health service reports for ``service`` (empty: the server as
        a whole): ``"SERVING"``, ``"NOT_SERVING"``, ... Needs no API key.

        Raises:
            NotFound: the server knows no such service.
            Unavailable: the server cannot be reached (for a TLS mismatch, with what to set).
        """
        stub = health_pb2_grpc.HealthStub(self._channel)
        reply = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service))
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return name

    # -- the audit log ------------------------------------------------------------------

    def list_audit_events(
        self,
        *,
        start: datetime,
        end: datetime,
        tenant_id: str | None = None,
        actors: Sequence[str] = (),
        resources: Sequence[str] = (),
        actions: Sequence[str] = (),
        outcomes: Sequence[str] = (),
        methods: Sequence[str] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> AuditEventPage:
        """One page of a log's events in ``[start, end)``, oldest first.

        Filters are AND across arguments and OR within one; an empty one matches any.
        Events not yet integrated into the log are included (``sequence`` None).

        Args:
            start: inclusive; a naive datetime is UTC.
            end: exclusive; a naive datetime is UTC.
            tenant_id: platform auditors name the tenant (none: the platform log);
                tenant auditors read their own log (none or their tenant's id).
            actors: API key ids of the callers.
            resources: resource ids (an asset id, an API key id, ...).
            actions: actions such as ``asset.read``.
            outcomes: ``allowed``, ``denied``, ``failed``.
            methods: full gRPC method names, ``/reelvault.v1.AssetService/Download``.
            page_size: events per page (1-1000); 0 lets the server choose.
            page_token: the previous page's ``next_page_token``, for the same query.
        """
        request = audit_pb2.ListAuditEventsRequest(
            tenant_id=tenant_id or "",
            actor_key_ids=list(actors),
            resource_ids=list(resources),
            actions=list(actions),
            outcomes=list(outcomes),
            methods=list(methods),
            page_size=_int_field(page_size, "page size", 31),
            page_token=page_token,
        )
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        reply = self._unary(self._audit.ListAuditEvents, request)
        return AuditEventPage(
            events=tuple(_audit_event(e) for e in reply.events),
            next_page_token=reply.next_page_token,
        )

    def iter_audit_events(
        self,
        *,
        start: datetime,
        end: datetime,
        tenant_id: str | None = None,
        actors: Sequence[str] = (),
        resources: Sequence[str] = (),
        actions: Sequence[str] = (),
        outcomes: Sequence[str] = (),
        methods: Sequence[str] = (),
        page_size: int = 0,
    ) -> Iterator[AuditEvent]:
        """Every event :meth:`list_audit_events` matches, fetching pages as it goes."""
        token = ""
        while True:
            page = self.list_audit_events(
                start=start,
                end=end,
                tenant_id=tenant_id,
                actors=actors,
                resources=resources,
                actions=actions,
                outcomes=outcomes,
                methods=methods,
                page_size=page_size,
                page_token=token,
            )
            yield from page.events
            token = page.next_page_token
            if not token:
                return

    def export_audit_events(
        self,
        tenant_id: str | None = None,
        from_sequence: int = 0,
        to_sequence: int = 0,
        follow: bool = False,
    ) -> Generator[AuditRecord, None, None]:
        """A log's integrated events in sequence order, as their exact leaf bytes.

        The call starts at the first ``next()``; ``close()`` (or leaving a
        ``with contextlib.closing(...)`` block) cancels it. The stream has no deadline.

        Args:
            tenant_id: as for :meth:`list_audit_events`.
            from_sequence: the first event; resume an export from the next one.
            to_sequence: exclusive end; 0: the log's size when the export starts (with
                ``follow``: no end).
            follow: after the last event, keep streaming new ones until cancelled.
        """
        request = audit_pb2.ExportAuditEventsRequest(
            tenant_id=tenant_id or "",
            from_sequence=_int_field(from_sequence, "from_sequence", 63),
            to_sequence=_int_field(to_sequence, "to_sequence", 63),
            follow=follow,
        )
        call = self._audit.ExportAuditEvents(request, metadata=self._metadata)
        try:
            for message in call:
                yield _audit_record(message)
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        finally:
            call.cancel()  # a no-op once the stream ended

    def get_checkpoint(self, tenant_id: str | None = None) -> AuditCheckpoint:
        """The newest signed checkpoint of a log, covering every event recorded so far
        (this read included)."""
        request = audit_pb2.GetCheckpointRequest(tenant_id=tenant_id or "")
        reply = self._unary(self._audit.GetCheckpoint, request)
        return AuditCheckpoint(
            log_id=reply.log_id,
            origin=reply.origin,
            size=reply.size,
            root_hash=reply.root_hash,
            note=reply.note,
            verifier_key=reply.verifier_key,
        )

    def get_inclusion_proof(
        self, sequence: int, tree_size: int, tenant_id: str | None = None
    ) -> InclusionProof:
        """The proof that event ``sequence`` is in the tree of ``tree_size`` events."""
        request = audit_pb2.GetInclusionProofRequest(
            tenant_id=tenant_id or "",
            sequence=_int_field(sequence, "sequence", 63),
            tree_size=_int_field(tree_size, "tree size", 63),
        )
        reply = self._unary(self._audit.GetInclusionProof, request)
        return InclusionProof(
            sequence=reply.sequence,
            tree_size=reply.tree_size,
            leaf_hash=reply.leaf_hash,
            hashes=tuple(reply.hashes),
        )

    def get_consistency_proof(
        self, old_size: int, new_size: int, tenant_id: str | None = None
    ) -> ConsistencyProof:
        """The proof that the log of ``old_size`` events is a prefix of that of ``new_size``."""
        request = audit_pb2.GetConsistencyProofRequest(
            tenant_id=tenant_id or "",
            old_size=_int_field(old_size, "old size", 63),
            new_size=_int_field(new_size, "new size", 63),
        )
        reply = self._unary(self._audit.GetConsistencyProof, request)
        return ConsistencyProof(
            old_size=reply.old_size, new_size=reply.new_size, hashes=tuple(reply.hashes)
        )

    def set_audit_retention(
        self,
        tenant_id: str | None = None,
        retention_days: int | None = None,
        legal_hold: bool = False,
    ) -> AuditRetention:
        """Set how long a tenant's event bodies are kept, and its legal hold; both at
        once (admins: their own tenant; platform admins: the tenant named).

        Args:
            retention_days: 1 to 36,500; ``None`` or 0 keeps them forever.
            legal_hold: blocks every purge while set.
        """
        request = audit_pb2.SetAuditRetentionRequest(
            tenant_id=tenant_id or "",
            retention_days=_int_field(retention_days or 0, "retention days", 31),
            legal_hold=legal_hold,
        )
        reply = self._unary(self._audit.SetAuditRetention, request)
        return AuditRetention(
            tenant_id=reply.tenant_id,
            retention_days=reply.retention_days or None,
            legal_hold=reply.legal_hold,
        )

    # -- plumbing -----------------------------------------------------------------------

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: grpc.RpcError) -> errors.ReelvaultError:
        error = error_from_rpc(exc, sent_token=bool(self._metadata))
        if isinstance(error, errors.Unavailable) and isinstance(exc, grpc.Call):
            hint = _connection_hint(
                exc.details() or "", tls=self._tls, client_cert=self._client_cert
            )
            if hint is not None:
                return errors.Unavailable(f"cannot connect to {self.addr}: {hint}")
        return error


# the key of DownloadResponse.chunk: its field number, wire type 2 (length-delimited)
_CHUNK_KEY: Final = asset_pb2.DownloadResponse.CHUNK_FIELD_NUMBER << 3 | 2


def decode_download_response(data: bytes) -> asset_pb2.DownloadResponse | bytes:
    """Decode a ``DownloadResponse``; a message holding only a chunk becomes the chunk.

    Equivalent to ``DownloadResponse.FromString`` followed by reading ``.chunk``, with one
    copy of the chunk instead of two (parsing, then every read of the field). Anything
    but the plain chunk form (the header, unknown fields) goes through protobuf.
    """
    if len(data) > 1 and data[0] == _CHUNK_KEY:
        length, shift, pos = 0, 0, 1
        while pos < len(data) and pos <= 5:  # protobuf allows 5 bytes for a length
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if pos + length == len(data):
                    return data[pos:]
                break
    return asset_pb2.DownloadResponse.FromString(data)


class DownloadStream:
    """The plaintext chunks of a download, in order; every one has been authenticated.

    Iterate it for the chunks; ``close()`` (or leaving a ``with`` block) cancels the
    transfer if it has not ended. The header is read when the stream is created, so a
    missing asset or bad range raises there, not at the first chunk.

    Attributes:
        asset: the asset being read.
        offset: first byte of the range this stream carries.
        length: number of bytes it carries.
    """

    def __init__(self, call: Any, client: Client) -> None:
        self._call = call
        self._client = client
        self._received = 0
        self._done = False
        first = self._next_message()
        if first is None or isinstance(first, bytes) or first.WhichOneof("payload") != "header":
            self.close()
            raise errors.ReelvaultError("server sent no download header")
        self.asset = _asset(first.header.asset)
        self.offset: int = first.header.offset
        self.length: int = first.header.length

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        while not self._done:
            message = self._next_message()
            if message is None:
                self._done = True
                if self._received != self.length:
                    raise errors.IntegrityError(
                        f"download ended after {self._received} of {self.length} bytes"
                    )
                break
            if isinstance(message, bytes):
                chunk = message
            elif message.WhichOneof("payload") == "chunk":
                chunk = message.chunk  # each read of a bytes field copies: read it once
            else:
                self.close()
                raise errors.ReelvaultError("server sent a second download header")
            self._received += len(chunk)
            if self._received > self.length:
                self.close()
                raise errors.IntegrityError("download carried more bytes than announced")
            if chunk:
                return chunk
        raise StopIteration

    def _next_message(self) -> Any:
        try:
            return next(self._call)
        except StopIteration:
            return None
        except grpc.RpcError as exc:
            self._done = True
            raise self._client._error(exc) from exc

    def save(self, dest: Destination, *, progress: Progress | None = None) -> None:
        """Write the rest of the stream to ``dest``.

        Args:
            dest: a path, written through a temporary file beside it that is renamed over
                it on success and removed on failure; or a binary file object.
            progress: called with the total bytes written so far after each chunk.
        """
        if not isinstance(dest, str | os.PathLike):
            _copy(self, dest, progress)
            return
        target = Path(dest)
        # Created like any new file (mode 0666 less the umask), then renamed over the target.
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with open(fd, "wb") as file:
                _copy(self, file, progress)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Cancel the transfer if it is still running. Idempotent."""
        self._done = True
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DirectStream(DownloadStream):
    """A download read from the object store with a read grant (``Client.download``);
    the same interface as the gRPC stream. If the store stops answering mid-transfer, an
    ``auto`` read goes on through the vault from the first byte not yet returned."""

    def __init__(
        self,
        reader: GrantReader,
        asset: Asset,
        offset: int,
        length: int,
        through_vault: Callable[[int, int], DownloadStream | None],
        *,
        missing: Callable[[], None] | None = None,
    ) -> None:
        self.asset = asset
        self.offset = offset
        self.length = length
        self._received = 0
        self._done = False
        self._through_vault = through_vault
        self._missing = missing
        self._pieces: Iterator[bytes] = reader.iter_range(offset, length)
        self._vault: DownloadStream | None = None

    def __next__(self) -> bytes:
        while not self._done:
            try:
                piece = next(self._pieces)
            except StopIteration:
                self._done = True
                break
            except (StoreUnreachable, GrantExpired, errors.FailedPrecondition) as exc:
                # the store stopped answering, keeps refusing the URL as expired, or the
                # renewal was refused (direct reads turned off): the vault may still serve
                if self._vault is not None:  # the vault's own answer: not ours to switch
                    self.close()
                    raise
                self._switch(exc)
                continue
            except ObjectMissing:
                self.close()
                if self._missing is not None:
                    self._missing()  # NotFound if the asset was deleted meanwhile
                raise
            except errors.DecryptionError as exc:
                self.close()
                # as through the vault: DATA_LOSS with an opaque message
                raise errors.IntegrityError(exc.message) from None
            except BaseException:
                self.close()
                raise
            self._received += len(piece)
            if piece:
                return piece
        raise StopIteration

    def _switch(self, cause: Exception) -> None:
        _close_pieces(self._pieces)
        rest = self.length - self._received
        stream = self._through_vault(self.offset + self._received, rest) if rest else None
        if rest and stream is None:
            self._done = True
            if isinstance(cause, errors.ReelvaultError):
                raise cause  # read_path="direct": the refusal itself
            raise errors.Unavailable(_store_failure(cause, "stopped answering")) from None
        self._vault = stream
        self._pieces = iter(stream) if stream is not None else iter(())

    def close(self) -> None:
        self._done = True
        _close_pieces(self._pieces)
        if self._vault is not None:
            self._vault.close()


def _store_failure(cause: Exception, unreachable: str = "cannot be reached from here") -> str:
    if isinstance(cause, GrantExpired):  # renewed, and refused as expired again
        return "the object store refuses the read grant as expired (clocks apart?)"
    return f"the object store {unreachable}"


def _close_pieces(pieces: Iterator[bytes]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()


def _direct_grant(grant: ReadGrant) -> Grant:
    return Grant(
        tenant_id=grant.asset.tenant_id,
        asset_id=grant.asset.id,
        size=grant.asset.size,
        header=grant.header,
        frame_key=grant.frame_key,
        object_size=grant.object_size,
        url=grant.url,
        expires_at=grant.expires_at.timestamp(),
    )


def _plaintext_range(
    size: int, offset: int | None, length: int | None, suffix: int | None
) -> tuple[int, int]:
    """The server's range rules (``Assets.open_download``), applied to a grant's size."""
    if suffix is not None:
        if suffix <= 0:
            raise errors.InvalidArgument("suffix length must be positive")
        if size == 0:
            raise errors.OutOfRange("range not satisfiable for an empty asset")
        count = min(suffix, size)
        return size - count, count
    if offset is None:
        return 0, size
    if offset < 0:
        raise errors.InvalidArgument("offset must not be negative and length must be positive")
    if length is None:
        if offset >= size:
            raise errors.OutOfRange(f"range start {offset} is not before the size {size}")
        return offset, size - offset
    if length <= 0:
        raise errors.InvalidArgument("offset must not be negative and length must be positive")
    if offset + length > size:
        raise errors.OutOfRange("range outside the asset")
    return offset, length


# --- streaming helpers -----------------------------------------------------------------


class _UploadRequests:
    """The request stream of an upload: metadata, chunks, then the end message.

    It runs in a gRPC thread. If reading the source fails there, the stream ends without
    its end message, so the server commits nothing and refuses the upload; the error is
    kept, and :meth:`Client.upload` re-raises it in the caller's thread.
    """

    def __init__(
        self,
        metadata: asset_pb2.AssetMetadata,
        chunks: Iterable[bytes],
        progress: Progress | None,
    ) -> None:
        self._metadata = metadata
        self._chunks = chunks
        self._progress = progress
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[asset_pb2.UploadRequest]:
        yield asset_pb2.UploadRequest(metadata=self._metadata)
        sent = 0
        try:
            for chunk in self._chunks:
                for start in range(0, len(chunk), CHUNK_SIZE):
                    piece = chunk if len(chunk) <= CHUNK_SIZE else chunk[start : start + CHUNK_SIZE]
                    yield asset_pb2.UploadRequest(chunk=piece)
                    sent += len(piece)
                    if self._progress is not None:
                        self._progress(sent)
        except Exception as exc:  # re-raised by Client.upload in the caller's thread
            self.error = exc
            return
        yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd(size=sent))


@contextlib.contextmanager
def _open_source(source: Source) -> Iterator[tuple[Iterable[bytes], int | None]]:
    """The chunks of an upload source and its size, when it can be known up front."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            yield _read_chunks(file), _remaining_size(file)
    elif isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        pieces = (bytes(view[i : i + CHUNK_SIZE]) for i in range(0, len(view), CHUNK_SIZE))
        yield pieces, len(view)
    elif hasattr(source, "read"):
        stream = cast(IO[bytes], source)
        yield _read_chunks(stream), _remaining_size(stream)
    else:
        yield source, None


def _read_chunks(file: IO[bytes]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_SIZE):
        yield chunk


def _remaining_size(file: IO[bytes]) -> int | None:
    """Bytes left in a regular file from its position; ``None`` for pipes and streams."""
    try:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(st.st_size - file.tell(), 0)
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass
    try:
        if not file.seekable():
            return None
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    return max(end - here, 0)


def _copy(stream: DownloadStream, file: IO[bytes], progress: Progress | None) -> None:
    received = 0
    for chunk in stream:
        file.write(chunk)
        received += len(chunk)
        if progress is not None:
            progress(received)


# --- protobuf <-> results --------------------------------------------------------------


def _role_to_proto(role: str) -> str:
    """The enum member's name, which protobuf accepts in place of its number."""
    if role not in ROLES:
        raise errors.InvalidArgument(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    return "ROLE_" + role.upper().replace("-", "_")


def _role_from_proto(role: apikey_pb2.Role) -> str:
    try:
        name = apikey_pb2.Role.Name(role)
    except ValueError:
        return "unspecified"
    return name.removeprefix("ROLE_").lower().replace("_", "-")


def _int_field(value: int, what: str, bits: int) -> int:
    """``value`` if a signed protobuf integer of ``bits`` + 1 bits holds it; protobuf
    would raise a bare ValueError, so the caller gets the error tree's instead."""
    if not -(1 << bits) <= value < 1 << bits:
        raise errors.InvalidArgument(f"{what} {value} is out of range")
    return value


def _time(value: Any) -> datetime:
    result: datetime = value.ToDatetime(tzinfo=UTC)
    return result


_ALGORITHM_TO_PROTO: Final = {
    "ed25519": distribution_pb2.TOKEN_ALGORITHM_ED25519,
    "hmac-sha256": distribution_pb2.TOKEN_ALGORITHM_HMAC_SHA256,
}
_ALGORITHM_FROM_PROTO: Final = {value: name for name, value in _ALGORITHM_TO_PROTO.items()}


def _signing_key(message: distribution_pb2.SigningKey) -> SigningKey:
    return SigningKey(
        key_id=message.key_id,
        algorithm=_ALGORITHM_FROM_PROTO.get(message.algorithm, "unknown"),
        state=message.state,
        public_key=message.public_key,
        created_at=_time(message.create_time),
        state_changed_at=_time(message.state_change_time),
        verify_until=_time(message.verify_until) if message.HasField("verify_until") else None,
    )


def _tenant(message: tenant_pb2.Tenant) -> Tenant:
    return Tenant(
        id=message.id,
        name=message.name,
        created_at=_time(message.create_time),
        direct_reads=message.direct_reads,
    )


def _api_key(message: apikey_pb2.ApiKey) -> ApiKey:
    return ApiKey(
        id=message.id,
        tenant_id=message.tenant_id or None,
        role=_role_from_proto(message.role),
        description=message.description,
        created_at=_time(message.create_time),
        revoked_at=_time(message.revoke_time) if message.HasField("revoke_time") else None,
        last_used_at=_time(message.last_use_time) if message.HasField("last_use_time") else None,
    )


def _asset(message: asset_pb2.Asset) -> Asset:
    return Asset(
        id=message.id,
        tenant_id=message.tenant_id,
        path=message.path,
        content_type=message.content_type,
        labels=dict(message.labels),
        size=message.size,
        sha256=message.sha256,
        etag=message.etag,
        created_at=_time(message.create_time),
        kek_version=message.kek_version,
        subject=message.subject,
    )


def _audit_event(message: audit_pb2.AuditEvent) -> AuditEvent:
    return AuditEvent(
        event_id=message.event_id,
        log_id=message.log_id,
        sequence=message.sequence if message.HasField("sequence") else None,
        time=_time(message.time),
        action=message.action,
        outcome=message.outcome,
        status=message.status,
        method=message.method,
        actor_key_id=message.actor_key_id or None,
        resource_type=message.resource_type or None,
        resource_id=message.resource_id or None,
        record=message.record or None,
    )


def _audit_record(message: audit_pb2.AuditRecord) -> AuditRecord:
    return AuditRecord(
        sequence=message.sequence,
        record=None if message.purged else message.record,
        leaf_hash=message.leaf_hash,
        purged=message.purged,
    )
