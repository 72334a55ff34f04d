"""The KMS client's bounded waits leave room for a retry (a review found the budget
check refused every retry, so one ThrottlingException became UNAVAILABLE)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reelvault.app import _root_provider
from reelvault.config import Settings


class _ThrottledOnce(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:  # KMS is JSON over POST
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).calls += 1
        if type(self).calls == 1:
            status, body = 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
        else:
            status, body = 200, {"KeyMetadata": {"KeyId": "k", "KeyState": "Enabled"}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def kms_endpoint() -> Iterator[str]:
    _ThrottledOnce.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ThrottledOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_throttled_kms_request_is_retried_within_the_timeout(kms_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    provider = _root_provider(
        Settings(
            root_key_provider="aws-kms",
            kms_key_id="k",
            kms_endpoint_url=kms_endpoint,
            kms_region="us-east-1",
        )
    )
    provider.probe()  # type: ignore[attr-defined]
    assert _ThrottledOnce.calls == 2
