"""The one error tree of reelvault.

Every error a caller can see is a :class:`ReelvaultError`. Each class knows the gRPC
status and the HTTP code it maps to, so the transport edges (gRPC interceptors, the HTTP
origin) translate by class, never by matching message strings::

    ReelvaultError                      INTERNAL            500
    ├── InvalidArgument                 INVALID_ARGUMENT    400
    │   └── OutOfRange                  OUT_OF_RANGE        416
    ├── NotFound                        NOT_FOUND           404
    ├── AlreadyExists                   ALREADY_EXISTS      409
    ├── FailedPrecondition              FAILED_PRECONDITION 409
    │   └── KeyUnavailable              FAILED_PRECONDITION 409
    ├── PermissionDenied                PERMISSION_DENIED   403
    ├── Unauthenticated                 UNAUTHENTICATED     401
    ├── Unavailable                     UNAVAILABLE         503
    │   └── DeadlineExceeded            DEADLINE_EXCEEDED   504
    ├── ResourceExhausted               RESOURCE_EXHAUSTED  503 (+ Retry-After)
    ├── ConfigurationError              INTERNAL            500
    └── IntegrityError                  DATA_LOSS           500
        └── DecryptionError             DATA_LOSS           500

``DecryptionError`` is deliberately opaque: whether a tag, a header field, the wrapped
data key or the encryption context was wrong, callers see the same message. Telling them
which check failed would help an attacker probe the format; the internal reason is kept on
the exception (``reason``) for server-side logs only and is never put in ``str()``.

Messages never contain key material, tokens or plaintext. Constructing an error with a
secret in its message is a bug; pass identifiers, not values.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyExists",
    "ConfigurationError",
    "DeadlineExceeded",
    "DecryptionError",
    "FailedPrecondition",
    "IntegrityError",
    "InvalidArgument",
    "KeyUnavailable",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ReelvaultError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class ReelvaultError(Exception):
    """Base of every error reelvault raises on purpose.

    Attributes:
        grpc_status: name of the ``grpc.StatusCode`` member the gRPC edge returns. A
            name rather than the enum keeps this module free of a grpc import, so the
            library layers (crypto, keys, catalog) stay usable without a server.
        http_status: the status code the HTTP origin returns.
    """

    grpc_status: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidArgument(ReelvaultError):
    grpc_status = "INVALID_ARGUMENT"
    http_status = 400
    default_message = "invalid argument"


class OutOfRange(InvalidArgument):
    """A byte range or page position outside what exists."""

    grpc_status = "OUT_OF_RANGE"
    http_status = 416
    default_message = "range not satisfiable"


class NotFound(ReelvaultError):
    """Missing, or belonging to another tenant: the two are indistinguishable."""

    grpc_status = "NOT_FOUND"
    http_status = 404
    default_message = "not found"


class AlreadyExists(ReelvaultError):
    grpc_status = "ALREADY_EXISTS"
    http_status = 409
    default_message = "already exists"


class FailedPrecondition(ReelvaultError):
    grpc_status = "FAILED_PRECONDITION"
    http_status = 409
    default_message = "operation not allowed in the current state"


class KeyUnavailable(FailedPrecondition):
    """A key exists but its state forbids the operation (disabled, destroyed, below the
    tenant's minimum decryption version, ...)."""

    default_message = "key is not available for this operation"


class PermissionDenied(ReelvaultError):
    grpc_status = "PERMISSION_DENIED"
    http_status = 403
    default_message = "permission denied"


class Unauthenticated(ReelvaultError):
    grpc_status = "UNAUTHENTICATED"
    http_status = 401
    default_message = "authentication required"


class Unavailable(ReelvaultError):
    """A dependency (database, object store, key provider) cannot be reached right now."""

    grpc_status = "UNAVAILABLE"
    http_status = 503
    default_message = "service unavailable"


class DeadlineExceeded(Unavailable):
    """The caller's deadline passed before the work could finish; the work stopped at
    the next dependency call (``reelvault.deadline``). A kind of :class:`Unavailable`:
    the answer did not come in time, and a retry with more time may succeed."""

    grpc_status = "DEADLINE_EXCEEDED"
    http_status = 504
    default_message = "deadline exceeded"


class ResourceExhausted(ReelvaultError):
    """Admission control refused the call: too many of its kind are running (in this
    process or for this tenant). Nothing was started; retry after ``retry_after`` seconds.

    The gRPC edge sends the hint as ``retry-after`` trailing metadata (seconds, like
    HTTP's header); the HTTP origin as a ``Retry-After`` header with a 503 (S3's
    ``SlowDown`` convention: a CDN retries a 503, while a 429 is often passed through).
    """

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 503
    default_message = "too many concurrent calls; retry later"

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(ReelvaultError):
    """Settings, keyring files or environment that the service cannot start with."""

    default_message = "invalid configuration"


class IntegrityError(ReelvaultError):
    """Stored data failed a check: it was corrupted or tampered with."""

    grpc_status = "DATA_LOSS"
    http_status = 500
    default_message = "stored data failed an integrity check"


class DecryptionError(IntegrityError):
    """Ciphertext could not be authenticated. Opaque on purpose (see module docstring)."""

    default_message = "ciphertext could not be decrypted"

    def __init__(self, reason: str = "unspecified") -> None:
        super().__init__()
        # Internal diagnostics for server logs; never part of str(self).
        self.reason = reason
