"""Bounded waits on the object store: a store that accepts connections and never answers
(what a stalled or SIGSTOPped server looks like from here) gives ``Unavailable`` after a
bounded number of attempts, and a call whose deadline has passed makes no request at all.

The "store" is a listening socket that counts connections and never replies.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from reelvault import deadline
from reelvault.errors import DeadlineExceeded, Unavailable
from reelvault.storage import S3ObjectStore
from reelvault.storage.base import BufferedUpload


class SilentServer:
    """Accepts connections, reads what arrives, never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(0.5)
            try:
                if connection.recv(65536):
                    self.requests += 1
            except OSError:
                pass
            self._held.append(connection)  # open, silent

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self._listener.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _store(port: int, **kwargs: float) -> S3ObjectStore:
    return S3ObjectStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_silent_store_gives_unavailable_within_the_operation_budget(silent):
    store = _store(
        silent.port,
        connect_timeout=0.2,
        read_timeout=0.3,
        max_attempts=10,
        operation_timeout=1.0,
    )
    with pytest.raises(Unavailable):
        store.get_range("t/x/object", 0, 100)
    # botocore alone would make 10 attempts of 0.3 s each plus backoff; the budget stops
    # starting attempts that could not finish within 1 s (each may take 0.5 s)
    assert 1 <= silent.requests <= 2


def test_a_passed_deadline_sends_nothing(silent):
    store = _store(silent.port, read_timeout=5.0)
    with deadline.bound(time.monotonic() - 1), pytest.raises(DeadlineExceeded):
        store.get_range("t/x/object", 0, 100)
    assert silent.requests == 0


def test_a_deadline_stops_retries_before_the_budget(silent):
    store = _store(
        silent.port, connect_timeout=0.2, read_timeout=0.3, max_attempts=10, operation_timeout=60
    )
    with deadline.bound(time.monotonic() + 0.4), pytest.raises(DeadlineExceeded):
        store.get_range("t/x/object", 0, 100)
    assert silent.requests <= 2


def test_a_failing_upload_still_aborts_under_a_passed_deadline_and_answers_in_bounded_time(
    silent,
):
    """A part that fails (here: the store never answers) aborts the multipart upload even
    though the caller's deadline has passed meanwhile (cleanup is never deadline-bound),
    and the failure reaches the caller after at most FAILURE_ABORT_BUDGET more seconds
    however long the abort takes (it goes on in the background)."""

    class Sink:
        """Multipart calls of a store whose parts fail and whose abort hangs."""

        def __init__(self) -> None:
            self.aborts: list[str] = []

        def create_multipart(self, key: str) -> str:
            return "U1"

        def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
            raise Unavailable("object store unavailable")

        def abort_multipart(self, key: str, upload_id: str) -> None:
            deadline.check()  # as bound_botocore does before sending
            self.aborts.append(upload_id)
            time.sleep(30)  # a stalled store

        def put_object(self, key, data):  # pragma: no cover - not reached
            raise AssertionError

        def complete_multipart(self, key, upload_id, parts):  # pragma: no cover
            raise AssertionError

    sink = Sink()
    upload = BufferedUpload(sink, "t/x/o", part_size=5, max_in_flight=1)
    with deadline.bound(time.monotonic() - 1), pytest.raises(Unavailable) as failed:
        upload.write(b"0123456789ab")
        upload.write(b"more")
    assert sink.aborts == ["U1"]  # sent, deadline or not
    assert "aborting the upload also failed: TimeoutError" in str(failed.value.__notes__)
