"""A real reelvault gRPC server for the tests, and synchronous clients to call it.

The server is the production one (:func:`reelvault.rpc.create_server`: interceptors,
servicers, health, reflection, TLS) on port 0, running on its own event loop in a
background thread, so the tests stay plain synchronous pytest functions using the
generated sync stubs. The fixtures that build it are in this directory's conftest.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from sqlalchemy import func, select

from reelvault.app import Vault
from reelvault.auth import PLATFORM_ROLES, Role
from reelvault.catalog.tables import UploadRow
from reelvault.config import Settings
from reelvault.rpc.server import MAX_MESSAGE_BYTES, HealthServicer, create_server, shutdown
from reelvault.v1 import (
    apikey_pb2_grpc,
    asset_pb2_grpc,
    key_pb2_grpc,
    privacy_pb2_grpc,
    tenant_pb2_grpc,
)

MiB = 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class ServerThread:
    """The gRPC server on an event loop of its own, in a daemon thread."""

    def __init__(self, vault: Vault, settings: Settings) -> None:
        self.vault = vault
        self.settings = settings
        self.health: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stopped = False
        try:
            self.server, self.port = self.run(self._start())
        except BaseException:
            self._close_loop()
            raise

    async def _start(self) -> tuple[Any, int]:
        self.health = HealthServicer()
        server, port = await create_server(self.vault, self.settings, health_servicer=self.health)
        await server.start()
        return server, port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return self.submit(coroutine).result(timeout)

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def shutdown(self, grace: float | None) -> concurrent.futures.Future[Any]:
        """Start the production drain (health NOT_SERVING, stop accepting, grace)."""
        self._stopped = True
        return self.submit(shutdown(self.server, self.health, grace))

    def close(self) -> None:
        if not self._stopped:
            self.shutdown(None).result(30)
        self._close_loop()

    def _close_loop(self) -> None:
        self.submit(self._loop.shutdown_default_executor()).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)


@dataclass
class Stubs:
    """The generated sync stubs over one channel."""

    channel: grpc.Channel

    def __post_init__(self) -> None:
        self.tenants = tenant_pb2_grpc.TenantServiceStub(self.channel)
        self.keys = apikey_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.assets = asset_pb2_grpc.AssetServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.payloads = privacy_pb2_grpc.PayloadServiceStub(self.channel)
        self.consent = privacy_pb2_grpc.ConsentServiceStub(self.channel)
        self.privacy = privacy_pb2_grpc.PrivacyServiceStub(self.channel)
        self.tenant_keys = key_pb2_grpc.KeyServiceStub(self.channel)


def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra)


@dataclass
class Tenancy:
    """A tenant with one key per tenant role, made through the domain (bootstrap)."""

    id: str
    tokens: dict[Role, str]

    def md(self, role: Role = Role.ADMIN, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return bearer(self.tokens[role], *extra)


def make_tenancy(vault: Vault, name: str) -> Tenancy:
    tenant = vault.tenant_keys.create_tenant(name)
    tokens = {
        role: vault.api_keys.create(tenant_id=tenant.id, role=role)[1]
        for role in Role
        if role not in PLATFORM_ROLES
    }
    return Tenancy(tenant.id, tokens)


def wait_for(collect: Callable[[], list[Any]], *, count: int, timeout: float = 10.0) -> list[Any]:
    """Poll ``collect`` until it returns ``count`` items (bounded), for effects that
    trail a reply, such as the access log line written after the status is sent."""
    deadline = time.monotonic() + timeout
    while True:
        items = collect()
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.01)


def leftovers(vault: Vault, tenant: Tenancy) -> tuple[int, int, int]:
    """Objects, unfinished multipart uploads and upload rows of the tenant."""
    prefix = f"t/{tenant.id}/"
    objects = len(list(vault.store.list_keys(prefix)))
    multipart = sum(1 for u in vault.store.list_multipart_uploads() if u.key.startswith(prefix))
    with vault.database.transaction(readonly=True) as session:
        rows = session.scalar(
            select(func.count()).select_from(UploadRow).where(UploadRow.tenant_id == tenant.id)
        )
    return objects, multipart, rows or 0


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded")
