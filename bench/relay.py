"""The raw gRPC relay: the least any Python gRPC service in front of an S3 store can cost.

    python -m bench.relay      (started by bench.service_bench; configured by environment)

One ``grpc.aio`` method, ``/bench.Relay/Get``: the request is an object key, the answer
streams that object from the store as it is, in 1 MiB messages. It is built the way
reelvault's Download is, minus everything that makes it a vault: no authentication, no
catalog lookup, no decryption, no protobuf (the messages are the object's bytes, and the
client takes them as they come). What is left is the store read in a worker thread (a
blocking read may not run on the event loop), one hop per chunk, and gRPC's framing,
flow control and copies, with the service's malloc tuning. The benchmark runs it beside
the vault, against the plaintext copy in the baseline bucket, so that the ratio of the
vault to the relay says what the vault's own work costs, and the ratio of the relay to
direct boto3 says what the second hop costs on the machine at hand.

Environment: ``RELAY_S3_ENDPOINT_URL``, ``RELAY_S3_BUCKET``, ``RELAY_S3_REGION``,
``RELAY_S3_ACCESS_KEY_ID``, ``RELAY_S3_SECRET_ACCESS_KEY``. On start it prints one JSON
line, ``{"event": "listening", "port": N}``, and serves on 127.0.0.1 until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Generator
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]

from reelvault import allocator
from reelvault.rpc.server import MAX_MESSAGE_BYTES
from reelvault.storage.s3 import S3ObjectStore

METHOD = "/bench.Relay/Get"
CHUNK = 1 << 20


def _identity(data: bytes) -> bytes:
    return data


def stub(channel: Any) -> Any:
    """The client side: ``stub(channel)(key_bytes)`` iterates the object's chunks."""
    return channel.unary_stream(
        METHOD, request_serializer=_identity, response_deserializer=_identity
    )


async def _serve(store: S3ObjectStore) -> None:
    async def get(key: bytes, context: Any) -> AsyncIterator[bytes]:
        chunks: Generator[bytes, None, None] = store.open_stream(key.decode())
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(chunks.close)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    handler = grpc.unary_stream_rpc_method_handler(
        get, request_deserializer=_identity, response_serializer=_identity
    )
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "listening", "port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(None)


def main() -> int:
    allocator.tune()  # as `reelvault serve` does
    env = os.environ
    store = S3ObjectStore(
        env["RELAY_S3_BUCKET"],
        endpoint_url=env["RELAY_S3_ENDPOINT_URL"],
        region=env.get("RELAY_S3_REGION") or None,
        access_key=env["RELAY_S3_ACCESS_KEY_ID"],
        secret_key=env["RELAY_S3_SECRET_ACCESS_KEY"],
    )
    asyncio.run(_serve(store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
