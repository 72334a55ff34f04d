"""The gRPC edge: servicers that translate, interceptors that do the cross-cutting work,
and the server factory. See :mod:`reelvault.rpc.server` to run one."""

from reelvault.rpc.interceptors import DeadlineExceeded, VaultInterceptor, current_principal
from reelvault.rpc.server import MAX_MESSAGE_BYTES, SERVICE_NAMES, create_server, serve, shutdown

__all__ = [
    "DeadlineExceeded",
    "MAX_MESSAGE_BYTES",
    "SERVICE_NAMES",
    "VaultInterceptor",
    "create_server",
    "current_principal",
    "serve",
    "shutdown",
]
