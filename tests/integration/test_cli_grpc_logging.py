"""The installed ``reelvault`` command keeps gRPC's own log lines off stderr, so a failed
call is one ``reelvault: error:`` line, as the CLI promises."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("reelvault")


@pytest.fixture
def not_tls() -> Iterator[int]:
    """A port whose listener answers a TLS handshake with plaintext (a misconfigured or
    wrong endpoint), which makes gRPC's C core log the failed handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _run(port: int, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REELVAULT_", "GRPC_"))}
    env.update(REELVAULT_ADDR=f"127.0.0.1:{port}", REELVAULT_TLS="1", **extra)
    return subprocess.run(
        [str(CLI), "asset", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_failed_tls_handshake_is_one_error_line(not_tls: int) -> None:
    result = _run(not_tls)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reelvault: error: ")


def test_an_operators_grpc_verbosity_is_kept(not_tls: int) -> None:
    # the default is only a default: debugging gRPC itself stays possible
    result = _run(not_tls, GRPC_VERBOSITY="INFO")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) > 1
