"""Direct reads: a client reads an asset's stored object straight from the object store
with a read grant (``AssetService.OpenAsset``) and decrypts it itself.

A grant carries the stored header, the frame key of this one object and a presigned GET
URL (docs/direct-reads.md). Before a byte of plaintext is trusted, :class:`GrantReader`

1. authenticates the grant's header under its frame key and checks that its encryption
   context names this tenant and asset (a grant for another object is refused);
2. fetches the stored header and requires it to be the grant's, byte for byte (a swapped
   or rewritten object fails here, as it does through the vault);
3. fetches and authenticates the final frame at the offset the catalog's size implies,
   and requires the store's object size (``Content-Range``) to be the catalog's, so the
   size is proven, not claimed.

Ranges are then fetched with parallel ranged GETs of whole frames (``concurrency`` parts of
``part_size`` bytes in flight at most, so memory stays at about ``concurrency *
part_size`` whatever the asset's size) and every frame is authenticated before its bytes
are yielded. A URL that expires mid-transfer is renewed through ``renew`` (a new grant for
the same object: its header must be the same bytes).

HTTP goes through the standard library's ``http.client`` (see :class:`HttpRanges` for why
not urllib3).
"""

from __future__ import annotations

import http.client
import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from reelvault.crypto import KIND_ASSET, EncryptionContext, RandomAccessReader
from reelvault.crypto.format import FRAME_OVERHEAD
from reelvault.crypto.message import open_with_frame_key
from reelvault.errors import DecryptionError, IntegrityError, OutOfRange

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "Grant",
    "GrantExpired",
    "GrantReader",
    "HttpRanges",
    "ObjectMissing",
    "StoreUnreachable",
]

DEFAULT_CONCURRENCY: Final = 4
DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024
STREAM_CHUNK: Final = 1024 * 1024
"""Bytes per read of a single-stream GET."""
RENEW_MARGIN: Final = 30.0
"""Seconds before its expiry a grant is renewed rather than used for a new request."""

# bounded: int() refuses (ValueError) a hostile header's thousands of digits
_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")


class StoreUnreachable(Exception):
    """The object store could not be reached or refused the URL for a reason other than
    its expiry: the caller falls back to reading through the vault."""


class GrantExpired(Exception):
    """The store refused the URL because it expired: renew the grant."""


class ObjectMissing(IntegrityError):
    """The store has no object at the URL (HTTP 404): lost or deleted by someone with
    write access to the store, or the asset was deleted after the grant was issued (the
    caller asks the vault which: only the first is data loss)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A read grant as the client holds it (the fields of ``ReadGrant``)."""

    tenant_id: str
    asset_id: str
    size: int
    header: bytes
    frame_key: bytes = field(repr=False)
    object_size: int
    url: str = field(repr=False)
    expires_at: float
    """Seconds since the epoch (the server's clock)."""


class HttpRanges:
    """Ranged GETs of presigned URLs over a small pool of keep-alive connections
    (thread-safe).

    ``http.client`` from the standard library, not urllib3 (which boto3 brings): reading
    a body with ``readinto`` straight into the part's buffer cost a quarter of the CPU of
    urllib3's ``readinto`` here, and ran 1.6x as fast on one stream (a probe against
    SeaweedFS, 8 MiB ranges: 674 vs 427 MB/s; docs/direct-reads.md).

    Args:
        concurrency: idle connections kept per host (the reader's ranged GETs in flight).
        connect_timeout: seconds to open a connection.
        read_timeout: seconds the store may stay silent while answering.
    """

    def __init__(
        self,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
    ) -> None:
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._max_idle = max(1, concurrency)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout

    def fetch(self, url: str, start: int, length: int, object_size: int) -> bytearray:
        """Exactly ``length`` bytes of the object at ``start``.

        Raises:
            GrantExpired: the store refused the URL as expired (HTTP 403 naming expiry).
            StoreUnreachable: connection failures (a body that breaks off too), 5xx (after
                one retry), other refusals.
            IntegrityError: the object is missing (404: :class:`ObjectMissing`), shorter
                than the catalog says (416) or another size (``Content-Range``), or the
                answer is not the range asked for.
        """
        host, port, target, key = _request_target(url)
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        for attempt in range(2):  # a dropped keep-alive connection or a 5xx: once more
            # the retry on a new connection: the idle ones may all have been closed by the
            # store meanwhile (its keep-alive timeout), and one attempt on each would fail
            connection = self._take(key, host, port, fresh=attempt > 0)
            reusable = False
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
                status = response.status
                if status == 206:
                    data = _read_exactly(response, start, length, object_size)
                    reusable = not response.will_close
                    return data
                refusal = _refusal(status, response.read(4096))
                if refusal is None and attempt == 0:
                    continue
                raise refusal or StoreUnreachable(f"HTTP {status}")
            except (OSError, http.client.HTTPException) as exc:
                if attempt:
                    raise StoreUnreachable(type(exc).__name__) from None
            finally:
                if reusable:
                    self._give_back(key, connection)
                else:
                    connection.close()
        raise StoreUnreachable("the store did not answer")

    def stream(
        self, url: str, start: int, length: int, object_size: int, *, chunk: int = STREAM_CHUNK
    ) -> Generator[bytearray, None, None]:
        """``length`` bytes of the object at ``start`` from one GET, in chunks of ``chunk``
        bytes (the last may be shorter), read as they arrive: one request for a whole
        span, so a single stream pays one time-to-first-byte, not one per part.

        The request is sent, and its answer checked, at the first ``next()``. Raises as
        :meth:`fetch`; a body that breaks off raises :class:`StoreUnreachable` (no retry:
        the caller has the chunks before it). Closing the iterator early drops the
        connection.
        """
        host, port, target, key = _request_target(url)
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        response: http.client.HTTPResponse | None = None
        connection: http.client.HTTPConnection | None = None
        for attempt in range(2):
            connection = self._take(key, host, port, fresh=attempt > 0)
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if attempt:
                    raise StoreUnreachable(type(exc).__name__) from None
                continue
            if response.status == 206:
                break
            try:
                body = response.read(4096)
            except (OSError, http.client.HTTPException):
                body = b""
            connection.close()
            refusal = _refusal(response.status, body)
            if refusal is None and attempt == 0:
                continue
            raise refusal or StoreUnreachable(f"HTTP {response.status}")
        assert response is not None and connection is not None
        reusable = False
        try:
            _check_served(response, start, length, object_size)
            done = 0
            while done < length:
                buf = bytearray(min(chunk, length - done))
                _fill(response, buf)
                done += len(buf)
                yield buf
            _finish(response)
            reusable = not response.will_close
        except (OSError, http.client.HTTPException) as exc:
            raise StoreUnreachable(type(exc).__name__) from None
        finally:
            if reusable:
                self._give_back(key, connection)
            else:
                connection.close()

    def _take(
        self, key: tuple[str, str], host: str, port: int | None, *, fresh: bool = False
    ) -> http.client.HTTPConnection:
        if not fresh:
            with self._lock:
                idle = self._idle.get(key)
                if idle:
                    return idle.pop()
        kind = http.client.HTTPSConnection if key[0] == "https" else http.client.HTTPConnection
        connection = kind(host, port, timeout=self._connect_timeout)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise StoreUnreachable(type(exc).__name__) from None
        assert connection.sock is not None
        connection.sock.settimeout(self._read_timeout)
        return connection

    def _give_back(self, key: tuple[str, str], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._max_idle:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _request_target(url: str) -> tuple[str, int | None, str, tuple[str, str]]:
    """A grant URL's host and port, its request target (path and query), its pool key."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreUnreachable("the grant's URL is not an HTTP URL")
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    return parts.hostname, parts.port, target, (parts.scheme, parts.netloc)


def _refusal(status: int, body: bytes) -> Exception | None:
    """What an answer other than 206 means; None for a 5xx, worth one retry (the caller
    raises ``StoreUnreachable`` if it was the retry)."""
    if status == 403 and b"expired" in body.lower():
        return GrantExpired()
    if status == 404:
        return ObjectMissing("the stored object is missing or truncated")
    if status == 416:
        return IntegrityError("the stored object is missing or truncated")
    if status >= 500:
        return None
    return StoreUnreachable(f"HTTP {status}")


def _check_served(response: http.client.HTTPResponse, start: int, length: int, total: int) -> None:
    served = _CONTENT_RANGE.fullmatch(response.getheader("Content-Range") or "")
    if served is None or (int(served[1]), int(served[2])) != (start, start + length - 1):
        raise IntegrityError("the store did not serve the requested range")
    if int(served[3]) != total:
        raise IntegrityError("the stored object is not the size the vault recorded")


def _fill(response: http.client.HTTPResponse, buf: bytearray) -> None:
    """Read exactly ``len(buf)`` bytes of the body into ``buf``."""
    view = memoryview(buf)
    pos, length = 0, len(buf)
    while pos < length:
        n = response.readinto(view[pos:])
        if not n:
            if response.length == 0:  # all its own Content-Length announced: a lie
                raise IntegrityError("the store sent less than the requested range")
            # the body broke off (http.client's readinto returns 0 at a premature end
            # rather than raise): a transfer failure, not a truncated object, whose size
            # Content-Range proved
            raise http.client.IncompleteRead(b"", length - pos)
        pos += n


def _finish(response: http.client.HTTPResponse) -> None:
    if response.read(1):
        raise IntegrityError("the store sent more than the requested range")


def _read_exactly(
    response: http.client.HTTPResponse, start: int, length: int, total: int
) -> bytearray:
    _check_served(response, start, length, total)
    buf = bytearray(length)
    _fill(response, buf)
    _finish(response)
    return buf


class GrantReader:
    """Decrypt ranges of one asset from its stored object under a read grant.

    Args:
        grant: the grant; verified here (module docstring, steps 1 to 3), so a bad
            grant or a tampered object raises before a reader exists.
        http: the fetcher (shared by a client's readers).
        renew: returns a fresh grant for the same asset, called when the URL expires.
        concurrency: ranged GETs in flight per range.
        part_size: bytes per ranged GET (rounded down to whole frames).
        clock: seconds since the epoch (tests pass their own).

    Raises:
        IntegrityError: the grant or the stored object fails a check.
        GrantExpired, StoreUnreachable: as :meth:`HttpRanges.fetch`.
    """

    def __init__(
        self,
        grant: Grant,
        http: HttpRanges,
        renew: Callable[[], Grant],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        part_size: int = DEFAULT_PART_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if concurrency < 1 or part_size < 1:
            raise ValueError("concurrency and part size must be positive")
        self._grant = grant
        self._http = http
        self._renew = renew
        self._concurrency = concurrency
        self._clock = clock
        self._lock = threading.Lock()
        context = EncryptionContext.for_object(
            tenant_id=grant.tenant_id, object_id=grant.asset_id, kind=KIND_ASSET
        )
        try:
            opened = open_with_frame_key(grant.header, grant.frame_key, context)
        except DecryptionError:
            raise IntegrityError("the read grant does not open this asset") from None
        self._step = opened.frame_length + FRAME_OVERHEAD
        self._part = max(1, part_size // self._step) * self._step
        stored = self._read_at(0, len(grant.header))
        if stored != grant.header:
            raise DecryptionError("stored header differs from the grant's")
        # Fetches and authenticates the final frame at the offset the size implies.
        self._reader = RandomAccessReader(
            self._read_at, grant.object_size, None, None, opened=opened
        )
        if self._reader.plaintext_size != grant.size:
            raise DecryptionError("the stored object's size differs from the grant's")

    @property
    def size(self) -> int:
        return self._grant.size

    @property
    def fresh(self) -> bool:
        """The grant is not about to expire (a new request may start with it)."""
        return self._clock() < self._grant.expires_at - RENEW_MARGIN

    def iter_range(self, start: int, length: int) -> Iterator[bytes]:
        """Plaintext ``[start, start + length)``, frame by frame, every frame authenticated.

        Raises:
            OutOfRange: the range is not within the asset (before anything is fetched).
            IntegrityError, StoreUnreachable: while iterating.
        """
        if start < 0 or length < 0 or start + length > self.size:
            raise OutOfRange("range outside the asset")
        return self._reader.stream_range(start, length, self._parallel)

    # -- fetching ------------------------------------------------------------------------

    def _read_at(self, start: int, length: int) -> bytearray:
        for attempt in range(2):
            grant = self._grant
            try:
                return self._http.fetch(grant.url, start, length, grant.object_size)
            except GrantExpired:
                if attempt:
                    raise
                self._renewed(grant)
        raise AssertionError("unreachable")

    def _stream(self, offset: int, length: int) -> Iterator[bytearray]:
        for attempt in range(2):
            grant = self._grant
            chunks = self._http.stream(
                grant.url, offset, length, grant.object_size, chunk=min(self._part, STREAM_CHUNK)
            )
            try:
                first = next(chunks)
            except GrantExpired:
                if attempt:
                    raise
                self._renewed(grant)
                continue
            try:
                yield first
                yield from chunks
            finally:
                chunks.close()  # an abandoned read drops its connection now
            return

    def _renewed(self, expired: Grant) -> None:
        with self._lock:
            if self._grant is not expired:
                return  # another part renewed it already
            fresh = self._renew()
            if (fresh.header, fresh.frame_key, fresh.object_size) != (
                expired.header,
                expired.frame_key,
                expired.object_size,
            ):
                raise DecryptionError("a renewed grant names another object")
            self._grant = fresh

    def _parallel(self, offset: int, length: int) -> Iterator[bytearray]:
        """The stored bytes ``[offset, offset + length)`` in order, fetched as parts of
        whole frames with up to ``concurrency`` ranged GETs in flight."""
        end = offset + length
        if length <= self._part:  # one GET: no thread to start
            yield self._read_at(offset, length)
            return
        if self._concurrency == 1:  # one stream: one GET for the whole span
            yield from self._stream(offset, length)
            return
        starts = iter(range(offset, end, self._part))
        pending: deque[Future[bytearray]] = deque()
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="reelvault-direct") as pool:
            try:
                for first in itertools.islice(starts, self._concurrency):
                    pending.append(pool.submit(self._read_at, first, min(self._part, end - first)))
                while pending:
                    data = pending.popleft().result()
                    after = next(starts, None)
                    if after is not None:
                        pending.append(
                            pool.submit(self._read_at, after, min(self._part, end - after))
                        )
                    yield data
            finally:
                for future in pending:
                    future.cancel()
