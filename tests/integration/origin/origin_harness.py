"""A real origin for the tests: the production ASGI app (:func:`reelvault.origin.app.create_app`)
on uvicorn with httptools, on a free port, in a background thread; and a plain
``http.client`` fetch, so what the tests see is what any HTTP client sees."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.origin.app import OriginConfig, create_app
from reelvault.origin.server import UVICORN_OPTIONS, bind


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class OriginThread:
    """The origin over ``vault`` on 127.0.0.1:<free port> until :meth:`close`."""

    def __init__(self, vault: Vault, config: OriginConfig | None = None) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        app = create_app(vault, config or OriginConfig())
        self.server = uvicorn.Server(
            uvicorn.Config(app, loop="asyncio", lifespan="off", **UVICORN_OPTIONS)
        )
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the origin did not start")
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fetch(
        self, target: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
        finally:
            connection.close()
        if answer.status == 500:
            # Stop the server so its traceback is logged before pytest reports: CPython
            # 3.11's AST constructor is not thread-safe (gh-106905), and a report parsing
            # source while the server thread logs can end the run with an INTERNALERROR.
            self.close()
        return answer

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def target_of(url: str) -> str:
    """The request target (path and query) of an absolute URL the vault issued."""
    rest = url.split("://", 1)[1]
    return "/" + rest.split("/", 1)[1]


def upload(vault: Vault, tenant_id: str, path: str, data: bytes, **spec: Any) -> Any:
    upload = vault.assets.begin_upload(tenant_id, UploadSpec(path=path, **spec))
    for at in range(0, len(data), 1 << 20):
        upload.write(data[at : at + (1 << 20)])
    return upload.complete()
