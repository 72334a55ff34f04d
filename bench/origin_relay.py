"""The bare HTTP relay: the least any Python origin in front of an S3 store can cost.

    python -m bench.origin_relay      (started by bench.origin_bench; configured by environment)

One route, ``GET /o/<object key>``: that stored object as it is, whole or the one
``bytes=`` range a ``Range`` header asks for (206 with ``Content-Range``), with an exact
``Content-Length``. It runs the way ``reelvault origin`` runs (``reelvault.origin.server``):
a Starlette app on uvicorn with httptools and uvloop, ``RELAY_WORKERS`` worker processes
on one socket that the parent binds with :func:`~reelvault.origin.server.bind` and hands
to uvicorn, and the same ``uvicorn.Config`` flags (``UVICORN_OPTIONS``). It reads the
store as the origin does: :meth:`~reelvault.storage.S3ObjectStore.open_stream` (one GET,
ranged when asked) in a worker thread, then each 1 MiB chunk fetched in a worker thread
through
``anyio.to_thread``. What it leaves out is everything that makes the origin an origin: no
token, no catalog, no decryption, no audit record. The benchmark points it at the
origin's own stored (ciphertext) object, so that the ratio of the origin to the relay
says what the origin's own work costs on the machine at hand.

An object's size (for a whole answer's ``Content-Length`` and to resolve ranges) comes
from one HEAD per key and worker, kept: an origin knows sizes from its catalog. The
malloc settings are the process's as started (``reelvault origin`` applies none), so any
``MALLOC_*`` experiment the benchmark passes reaches both alike.

Environment: ``RELAY_S3_ENDPOINT_URL``, ``RELAY_S3_BUCKET``, ``RELAY_S3_REGION``,
``RELAY_S3_ACCESS_KEY_ID``, ``RELAY_S3_SECRET_ACCESS_KEY``, ``RELAY_WORKERS`` (default 2).
On start it prints one JSON line, ``{"event": "listening", "port": N}``, and serves on
127.0.0.1 until SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.supervisors import Multiprocess

from reelvault.origin.server import UVICORN_OPTIONS, bind
from reelvault.ranges import RangeNotSatisfiable, parse_range_header, resolve
from reelvault.storage.s3 import S3ObjectStore

__all__ = ["app_from_environment", "main"]


def _store() -> S3ObjectStore:
    env = os.environ
    return S3ObjectStore(
        env["RELAY_S3_BUCKET"],
        endpoint_url=env["RELAY_S3_ENDPOINT_URL"],
        region=env.get("RELAY_S3_REGION") or None,
        access_key=env["RELAY_S3_ACCESS_KEY_ID"],
        secret_key=env["RELAY_S3_SECRET_ACCESS_KEY"],
    )


def app_from_environment() -> Starlette:
    """The factory each worker process calls (as the origin's does)."""
    store = _store()
    sizes: dict[str, int] = {}

    def size_of(key: str) -> int | None:
        if key not in sizes:
            info = store.head(key)
            if info is None:
                return None
            sizes[key] = info.size
        return sizes[key]

    def open_object(key: str, range_header: str | None) -> tuple[int, int, int, Iterator[bytes]]:
        size = size_of(key)
        if size is None:
            raise KeyError(key)
        selected = parse_range_header(range_header)
        start, count = resolve(selected, size)
        whole = start == 0 and count == size
        chunks = store.open_stream(key) if whole else store.open_stream(key, start, count)
        return size, start, count, chunks

    async def body(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
        done = False
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(next, chunks, None)
                if chunk is None:
                    done = True
                    return
                yield chunk
        finally:
            if not done:
                close = getattr(chunks, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await anyio.to_thread.run_sync(close)

    async def get(request: Request) -> Response:
        key = request.path_params["key"]
        try:
            size, start, count, chunks = await anyio.to_thread.run_sync(
                open_object, key, request.headers.get("range")
            )
        except KeyError:
            return PlainTextResponse("404 not found\n", status_code=404)
        except RangeNotSatisfiable:
            return PlainTextResponse(
                "416 range not satisfiable\n",
                status_code=416,
                headers={"Content-Range": f"bytes */{size_of(key)}"},
            )
        headers = {"Accept-Ranges": "bytes", "Content-Length": str(count)}
        status = 200
        if count != size:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
        return StreamingResponse(
            body(chunks),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.client.close()

    return Starlette(routes=[Route("/o/{key:path}", get, methods=["GET"])], lifespan=lifespan)


def main() -> int:
    workers = int(os.environ.get("RELAY_WORKERS", "2"))
    sock = bind("127.0.0.1", 0)
    print(json.dumps({"event": "listening", "port": sock.getsockname()[1]}), flush=True)
    # reelvault.origin.server.run's configuration, flag for flag
    config = uvicorn.Config(
        "bench.origin_relay:app_from_environment",
        factory=True,
        fd=sock.fileno(),
        workers=workers,
        loop="uvloop",
        lifespan="on",
        **UVICORN_OPTIONS,  # the origin's own, so that only the app differs
    )
    if workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
