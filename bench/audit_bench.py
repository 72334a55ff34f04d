"""The audit log: what recording every access costs, and how the log scales.

Run from the repository root (``make bench-audit`` does this)::

    .venv/bin/python -m bench.audit_bench --json bench/results/audit.json

Every part runs on each catalog backend, SQLite (a file in a temporary directory) and
PostgreSQL (a database of its own, ``--postgres-database``, created for each part and
dropped after it through a psycopg connection to ``--postgres-url``'s server; the test
suite's database ``test`` is never touched). Each part starts on a fresh, migrated catalog.

1. **StatAsset over gRPC.** Two production servers (``create_server``, each on an event
   loop of its own in a thread, with the 64 worker threads ``serve`` gives it) over the
   same catalog, object store (in memory: StatAsset never reads it) and root keyring: one
   wired as in production (``Vault.from_parts``: the catalog-backed ``AuditLog``, with
   ``audit_sequencer`` running beside it as in ``serve``), one with ``NullAuditSink``,
   which drops every event. Clients are threads of this process with a channel each, calling
   ``StatAsset`` with a distributor key, 1 at a time and 16 at once. A third contender is
   the audited server with its sequencer paused (integrated after the cell, untimed): the
   durable write alone, which splits what auditing costs between the write and the
   sequencer. Each round runs every (clients, contender) cell once, in an order rotated
   from round to round; latencies are pooled over the rounds after a discarded warm-up
   round. Reported: p50, p99, requests/s and this process's CPU per call, and the ratios
   to the no-op server. The audited server's log is checked to hold exactly one
   ``asset.stat`` event per audited call.
2. **Durable writes.** ``AuditLog.write([event])`` from 1 and from 16 threads for
   ``--write-seconds`` (events built as the Auditor builds a StatAsset event), each
   contender writing to a log of its own, and 16 threads again with the production
   sequencer (``AuditLog.run_sequencer``) running beside them. Rounds rotate the three.
   After each round without a sequencer its backlog is integrated (``AuditLog.integrate``
   until nothing is pending, each call one transaction of up to ``_INTEGRATE_BATCH``
   events): the sequencer's rate. ``AuditLog._commit`` is wrapped (by a
   subclass) to count the events each group commit carries. A fourth contender is the
   ceiling of this design on this machine: 16 threads, each handing one pre-rendered row
   (a real event's row, its id stamped in) to a minimal group committer with no reelvault
   code in the loop (``RawGroupCommitter``: as many committer threads as ``AuditLog``
   allows commits in flight, each with a raw driver connection, taking every queued row,
   ``executemany`` and commit, then waking those rows' writers). The 16-writer rate is
   reported as a ratio of it, round by round (the two run side by side in each round,
   in turns first). Between contenders the write-ahead log is checkpointed (untimed), so
   that none pays for the writes of the one before. ``--write-contenders`` picks
   contenders.
3. **Queries.** ``--events`` events of one tenant (default 1,000,000) are written with
   ``AuditRepository.add_events`` in transactions of ``--fill-batch`` rows (actors,
   assets, actions, outcomes drawn from skewed distributions; times spread over 30
   days), integrated, and then paged with ``AuditLog.list_events`` (page size 100):
   filtered on one API key and an outcome, on one asset, on a one-hour window, on an
   outcome alone and on a rare action (one event in 10,000). Each query's first page and
   a later page (``--later-page``, or the middle page of a shorter result, reached by
   page tokens) run ``--query-runs`` times, interleaved, after an untimed warm-up pass;
   p50 and p90 are reported. Queries whose filter no index of ``audit_events`` leads
   with (read from the schema) are marked so and run after the others, by themselves,
   since their scans evict the others' pages from the database's cache. Planner
   statistics are refreshed first as in service: on PostgreSQL ``VACUUM (ANALYZE)``
   (what autovacuum does), on SQLite ``AuditLog.analyze`` (what the sequencer runs).
4. **Verification and proofs** on the same log: the export (``AuditLog.export``, written
   as JSON Lines to a file), ``verify_export`` reading that file against a fresh
   checkpoint, and ``--proofs`` inclusion and consistency proofs at the full tree size
   (each checked against the checkpoint's root, or a root computed from the export).

Interleaving matters: these machines are small and shared. Nothing here asserts a timing;
a benchmark reports, and exits 0 whatever the PASS/MISS verdicts say.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import platform
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
import psycopg
import sqlalchemy
from sqlalchemy import func, make_url, select

from reelvault.app import Vault
from reelvault.assets import UploadSpec
from reelvault.audit import (
    Actor,
    AuditEvent,
    AuditLog,
    NullAuditSink,
    Outcome,
    RequestInfo,
    Resource,
    merkle,
)
from reelvault.audit.events import new_event_id
from reelvault.audit.log import _INTEGRATE_BATCH as INTEGRATE_BATCH
from reelvault.audit.log import _row as event_row  # the write path's own row, exactly
from reelvault.audit.verify import verify_export
from reelvault.auth import Role
from reelvault.catalog import Database
from reelvault.catalog.audit import AuditFilter, AuditRepository
from reelvault.catalog.tables import AuditEventRow
from reelvault.clock import SystemClock
from reelvault.config import Settings
from reelvault.keys.local import LocalKeyring
from reelvault.logging import configure_logging
from reelvault.rpc.server import (
    MAX_MESSAGE_BYTES,
    HealthServicer,
    audit_sequencer,
    create_server,
    shutdown,
)
from reelvault.storage import MemoryObjectStore
from reelvault.v1 import asset_pb2, asset_pb2_grpc

TARGET_RPC_P50_RATIO = 1.3
TARGET_WRITES_PER_S = 5000.0
TARGET_QUERY_MS = 50.0
PAGE_SIZE = 100
CLIENT_COUNTS = (1, 16)
WRITERS = 16
AUDITED, PAUSED, NOOP = "audited", "audited-paused", "noop"
RPC_CONTENDERS = (AUDITED, PAUSED, NOOP)
RPC_LABELS = {
    AUDITED: "audited (AuditLog)",
    PAUSED: "audited, sequencer paused",
    NOOP: "NullAuditSink",
}
W1, W16, W16S, RAW16 = "w1", "w16", "w16+seq", "raw16"
WRITE_LABELS = {
    W1: "1 writer",
    W16: f"{WRITERS} writers",
    W16S: f"{WRITERS} writers + sequencer",
    RAW16: f"{WRITERS} writers, raw driver",
}
WRITE_CONTENDERS = (W1, W16, W16S, RAW16)
# Every column of an audit_events row but its id, in the table's order: what the ceiling
# contender inserts (seq and leaf_hash NULL, as the write path leaves them).
_EVENTS_TABLE: Any = AuditEventRow.__table__
EVENT_COLUMNS: tuple[str, ...] = tuple(c.name for c in _EVENTS_TABLE.columns if c.name != "id")
STAT_METHOD = "/reelvault.v1.AssetService/StatAsset"
USER_AGENT = f"grpc-python/{grpc.__version__} grpc-c/48.0.0 (linux; chttp2)"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
SERVER_WORKER_THREADS = 64  # as reelvault.rpc.server.serve sets up
RESERVED_DATABASES = frozenset({"test", "postgres", "template0", "template1"})
DAY_US = 86_400 * 1_000_000

# (action, gRPC method, resource type, weight) of the synthetic log in part 3
ACTIONS: tuple[tuple[str, str, str, float], ...] = (
    ("asset.read", "/reelvault.v1.AssetService/Download", "asset", 45.0),
    ("asset.stat", STAT_METHOD, "asset", 25.0),
    ("asset.write", "/reelvault.v1.AssetService/Upload", "asset", 10.0),
    ("asset.list", "/reelvault.v1.AssetService/ListAssets", "asset-list", 8.0),
    ("tenant.read", "/reelvault.v1.TenantService/GetTenant", "tenant", 4.0),
    ("audit.read", "/reelvault.v1.AuditService/ListAuditEvents", "audit-log", 3.99),
    ("asset.delete", "/reelvault.v1.AssetService/DeleteAsset", "asset", 2.0),
    ("apikey.list", "/reelvault.v1.ApiKeyService/ListApiKeys", "tenant", 2.0),
    ("apikey.revoke", "/reelvault.v1.ApiKeyService/RevokeApiKey", "api-key", 0.01),
)
RARE_ACTION = "apikey.revoke"
OUTCOMES = ((Outcome.ALLOWED, "OK", 94.0), (Outcome.DENIED, "PERMISSION_DENIED", 4.0))
OUTCOMES += ((Outcome.FAILED, "NOT_FOUND", 2.0),)
N_ACTORS = 100
N_ASSETS = 50_000
QUERY_RANK = 9  # the 10th most active key and the 10th most touched asset are queried


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def calibrate() -> float:
    """Milliseconds a fixed pure-Python loop takes (best of 5): how fast this machine runs
    Python right now. Shared hosts drift through the day; compare runs with it."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        acc = 0
        for i in range(300_000):
            acc += i * i % 7
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def new_keyring() -> LocalKeyring:
    return LocalKeyring({1: secrets.token_bytes(32)}, 1)


# --- catalogs ------------------------------------------------------------------------


@dataclass
class Backend:
    """One catalog backend; ``fresh()`` gives a new, migrated, empty catalog per part."""

    name: str  # sqlite | postgresql
    root: Path
    admin_url: str = ""  # postgresql: the server, any database
    database: str = ""  # postgresql: ours, created and dropped
    _counter: int = 0

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str]:
        self._counter += 1
        if self.name == "sqlite":
            path = self.root / f"catalog-{self._counter}.sqlite3"
            try:
                yield f"sqlite:///{path}"
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        self._recreate()
        try:
            yield self.url()
        finally:
            self.drop()

    def url(self) -> str:
        return make_url(self.admin_url).set(database=self.database).render_as_string(False)

    def _admin(self) -> psycopg.Connection[Any]:
        url = make_url(self.admin_url).set(drivername="postgresql", database="postgres")
        return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)

    def _recreate(self) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def drop(self) -> None:
        if self.name == "postgresql":
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def direct(self, url: str) -> psycopg.Connection[Any]:
        """An autocommit psycopg connection to the part's database (PostgreSQL only)."""
        plain = make_url(url).set(drivername="postgresql")
        return psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True)

    def describe(self) -> dict[str, Any]:
        if self.name == "sqlite":
            return {"sqlite": sqlite3.sqlite_version, "synchronous": "FULL", "journal": "WAL"}
        with self._admin() as conn:
            info: dict[str, Any] = {"server": conn.execute("SHOW server_version").fetchone()[0]}
            for name in ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers"):
                info[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        info["database"] = self.database
        return info


# --- events --------------------------------------------------------------------------


def stat_event(log_id: str, key_id: str, asset_id: str, clock: SystemClock) -> AuditEvent:
    """What the Auditor records for one StatAsset call (``Auditor._event`` at release)."""
    return AuditEvent(
        event_id=new_event_id(),
        log_id=log_id,
        time_us=int(clock.now() * 1_000_000),
        action="asset.stat",
        outcome=Outcome.ALLOWED,
        status="OK",
        actor=Actor(key_id=key_id, role="distributor", tenant_id=log_id, authenticated=True),
        request=RequestInfo(
            transport="grpc",
            operation=STAT_METHOD,
            peer=f"ipv4:127.0.0.1:{random.randrange(32768, 61000)}",
            user_agent=USER_AGENT,
            request_id=secrets.token_hex(16),
        ),
        resources=(Resource("asset", asset_id, "reels/2026/trailer-final.mov"),),
    )


@dataclass
class Population:
    """The synthetic tenant of part 3: who does what to which asset, with what result."""

    log_id: str
    seed: int
    actors: list[str] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.actors = [f"{rng.getrandbits(64):016x}" for _ in range(N_ACTORS)]
        self.assets = [f"{rng.getrandbits(128):032x}" for _ in range(N_ASSETS)]

    def batches(self, n: int, size: int, start_us: int, span_us: int) -> Iterator[list[Any]]:
        """``n`` events in time order, as rows for ``add_events``, ``size`` at a time.
        Actors and assets are Zipf-distributed (rank r has weight 1/(r+1))."""
        rng = random.Random(self.seed + 1)
        actor_w = _cumulative([1 / (r + 1) for r in range(N_ACTORS)])
        asset_w = _cumulative([1 / (r + 1) for r in range(N_ASSETS)])
        action_w = _cumulative([a[3] for a in ACTIONS])
        outcome_w = _cumulative([o[2] for o in OUTCOMES])
        step = max(1, span_us // n)
        done = 0
        while done < n:
            k = min(size, n - done)
            actors = rng.choices(self.actors, cum_weights=actor_w, k=k)
            assets = rng.choices(self.assets, cum_weights=asset_w, k=k)
            actions = rng.choices(ACTIONS, cum_weights=action_w, k=k)
            outcomes = rng.choices(OUTCOMES, cum_weights=outcome_w, k=k)
            rows = []
            for j in range(k):
                i = done + j
                action, method, rtype, _ = actions[j]
                outcome, status, _ = outcomes[j]
                if rtype == "asset":
                    resource = Resource("asset", assets[j], f"reels/{assets[j][:6]}.mov")
                elif rtype == "asset-list":
                    resource = Resource("asset-list", None, "reels/")
                elif rtype == "api-key":
                    resource = Resource("api-key", actors[j])
                else:
                    resource = Resource(rtype, self.log_id)
                event = AuditEvent(
                    event_id=f"{rng.getrandbits(128):032x}",
                    log_id=self.log_id,
                    time_us=start_us + i * step + rng.randrange(step),
                    action=action,
                    outcome=outcome,
                    status=status,
                    actor=Actor(
                        key_id=actors[j],
                        role="distributor",
                        tenant_id=self.log_id,
                        authenticated=True,
                    ),
                    request=RequestInfo(
                        transport="grpc",
                        operation=method,
                        peer=f"ipv4:10.{i % 7}.{i % 11}.{i % 13}:{40000 + i % 20000}",
                        user_agent=USER_AGENT,
                        request_id=f"{rng.getrandbits(128):032x}",
                    ),
                    resources=(resource,),
                    kek_version=1 if action in ("asset.read", "asset.write") else None,
                )
                rows.append(event_row(event))
            done += k
            yield rows


def _cumulative(weights: Sequence[float]) -> list[float]:
    out, acc = [], 0.0
    for w in weights:
        acc += w
        out.append(acc)
    return out


# --- 1. StatAsset over gRPC ------------------------------------------------------------


class ServerThread:
    """The production gRPC server on an event loop of its own, in a daemon thread (as
    tests/integration/rpc/rpc_harness.py runs it), with ``serve``'s worker threads."""

    def __init__(self, vault: Vault, settings: Settings) -> None:
        self.vault = vault
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            ThreadPoolExecutor(max_workers=SERVER_WORKER_THREADS, thread_name_prefix="reelvault")
        )
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._closed = False
        self.health: Any = None
        self.server, self.port = self._run(self._start(settings))

    async def _start(self, settings: Settings) -> tuple[Any, int]:
        self.health = HealthServicer()
        server, port = await create_server(self.vault, settings, health_servicer=self.health)
        await server.start()
        return server, port

    def _run(self, coroutine: Any, timeout: float = 60.0) -> Any:
        return self.submit(coroutine).result(timeout)

    def submit(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call_soon(self, fn: Callable[[], object]) -> None:
        self._loop.call_soon_threadsafe(fn)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._run(shutdown(self.server, self.health, None), 30)
        with contextlib.suppress(Exception):
            self._run(self._loop.shutdown_default_executor(), 30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@dataclass
class RpcSide:
    """One server and its clients (one channel per client thread)."""

    name: str
    server: ServerThread
    channels: list[Any]
    stubs: list[Any]
    calls: int = 0


def run_clients(
    side: RpcSide, clients: int, total: int, asset_id: str, metadata: Sequence[tuple[str, str]]
) -> tuple[list[float], float, float]:
    """``total`` StatAsset calls from ``clients`` threads at once: per-call latencies (s),
    the wall time, and this process's CPU seconds (client and server)."""
    per_client = max(1, total // clients)
    request = asset_pb2.StatAssetRequest(asset_id=asset_id)
    results: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    perf = time.perf_counter

    def client(i: int) -> None:
        stub = side.stubs[i]
        out = results[i]
        barrier.wait()
        try:
            for _ in range(per_client):
                t0 = perf()
                reply = stub.StatAsset(request, metadata=metadata, timeout=30)
                out.append(perf() - t0)
                if reply.id != asset_id:
                    raise AssertionError("StatAsset answered for another asset")
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    gc.collect()
    c0 = cpu_now()
    barrier.wait()
    t0 = perf()
    for t in threads:
        t.join()
    wall = perf() - t0
    cpu = cpu_now() - c0
    if errors:
        raise errors[0]
    side.calls += per_client * clients
    return [x for r in results for x in r], wall, cpu


class Sequencer:
    """The audited server's sequencer exactly as ``serve`` runs it
    (``reelvault.rpc.server.audit_sequencer``, entered on the server's event loop); it can
    be paused for the contender that measures the durable write alone."""

    def __init__(self, server: ServerThread, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self._release: asyncio.Event | None = None
        self._held: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        release = asyncio.Event()

        async def hold() -> None:
            async with audit_sequencer(self.server.vault, self.settings):
                await release.wait()

        self._release = release
        self._held = self.server.submit(hold())

    def stop(self) -> None:
        if self._held is None or self._release is None:
            return
        self.server.call_soon(self._release.set)
        self._held.result(60)  # audit_sequencer joins its thread on the way out
        self._held = None


def bench_rpc(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    with backend.fresh() as url:
        root = new_keyring()
        clock = SystemClock()
        store = MemoryObjectStore()
        db_audited, db_noop = Database(url), Database(url)
        db_audited.migrate()
        servers: list[ServerThread] = []
        channels: list[Any] = []
        sequencer: Sequencer | None = None
        try:
            settings = Settings(grpc_host="127.0.0.1", grpc_port=0, shutdown_grace=1.0)
            audited = Vault.from_parts(database=db_audited, root=root, store=store, clock=clock)
            noop = Vault.from_parts(
                database=db_noop,
                root=root,
                store=store,
                clock=clock,
                audit_sink=NullAuditSink(),
            )
            tenant = audited.tenant_keys.create_tenant("audit-bench")
            _, token = audited.api_keys.create(
                tenant_id=tenant.id, role=Role.DISTRIBUTOR, description="audit benchmark"
            )
            upload = audited.assets.begin_upload(
                tenant.id, UploadSpec(path="reels/2026/trailer-final.mov")
            )
            upload.write(secrets.token_bytes(4096))
            asset_id = upload.complete().id
            sides: dict[str, RpcSide] = {}
            for vault, whos in ((audited, (AUDITED, PAUSED)), (noop, (NOOP,))):
                server = ServerThread(vault, settings)
                servers.append(server)
                chans = [
                    grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
                    for _ in range(max(CLIENT_COUNTS))
                ]
                channels.extend(chans)
                stubs = [asset_pb2_grpc.AssetServiceStub(ch) for ch in chans]
                for who in whos:
                    sides[who] = RpcSide(who, server, chans, stubs)
            sequencer = Sequencer(servers[0], settings)  # the no-op side has nothing to do
            sequencer.start()
            metadata = (("authorization", f"Bearer {token}"),)
            for who in (AUDITED, NOOP):  # connect every channel
                run_clients(
                    sides[who], max(CLIENT_COUNTS), max(CLIENT_COUNTS) * 2, asset_id, metadata
                )

            cells = [(c, who) for c in CLIENT_COUNTS for who in RPC_CONTENDERS]
            samples: dict[tuple[int, str], list[float]] = {cell: [] for cell in cells}
            rounds: dict[tuple[int, str], list[dict[str, float]]] = {cell: [] for cell in cells}
            for rnd in range(args.warmup + args.rpc_rounds):
                warm = rnd < args.warmup
                tag = "warm-up" if warm else f"run {rnd - args.warmup + 1}/{args.rpc_rounds}"
                k = rnd % len(cells)
                for clients, who in cells[k:] + cells[:k]:
                    if who == PAUSED:
                        sequencer.stop()
                    lat, wall, cpu = run_clients(
                        sides[who], clients, args.rpc_requests, asset_id, metadata
                    )
                    if who == PAUSED:  # its backlog goes now, before anything else is timed
                        audited.audit_log.integrate_all()
                        sequencer.start()
                    log(
                        f"  {backend.name:<10} {tag:<9} StatAsset x{clients:<2} "
                        f"{RPC_LABELS[who]:<26} p50 {pct(lat, 50) * 1e3:6.2f} ms  "
                        f"p99 {pct(lat, 99) * 1e3:7.2f} ms  {len(lat) / wall:5.0f} req/s  "
                        f"cpu {cpu / len(lat) * 1e3:5.2f} ms/call"
                    )
                    if not warm:
                        samples[(clients, who)].extend(lat)
                        rounds[(clients, who)].append(
                            {
                                "p50_ms": pct(lat, 50) * 1e3,
                                "p99_ms": pct(lat, 99) * 1e3,
                                "rps": len(lat) / wall,
                                "cpu_ms_per_call": cpu / len(lat) * 1e3,
                            }
                        )
            sequencer.stop()
            sequencer = None
            audited.audit_log.integrate_all()
            calls = sides[AUDITED].calls + sides[PAUSED].calls
            recorded = _count_events(db_audited, tenant.id, "asset.stat")
            if recorded != calls:
                raise AssertionError(
                    f"the audited server answered {calls} StatAsset calls but its log holds "
                    f"{recorded} asset.stat events"
                )
            if audited.audit_log.tree_size(tenant.id) < recorded:
                raise AssertionError("the sequencer left events unintegrated")
            rows = []
            for clients in CLIENT_COUNTS:
                base = samples[(clients, NOOP)]
                for who in RPC_CONTENDERS:
                    lat = samples[(clients, who)]
                    row = {
                        "clients": clients,
                        "contender": who,
                        "label": RPC_LABELS[who],
                        "calls": len(lat),
                        **_latency_summary(lat, rounds[(clients, who)]),
                    }
                    row["p50_ratio"] = pct(lat, 50) / pct(base, 50)
                    row["p99_ratio"] = pct(lat, 99) / pct(base, 99)
                    row["p50_ratio_rounds"] = [
                        x["p50_ms"] / y["p50_ms"]
                        for x, y in zip(
                            rounds[(clients, who)], rounds[(clients, NOOP)], strict=True
                        )
                    ]
                    rows.append(row)
            return {"rows": rows, "audited_calls": calls, "events_recorded": recorded}
        finally:
            if sequencer is not None:
                sequencer.stop()
            for ch in channels:
                ch.close()
            for server in servers:
                server.close()
            db_audited.dispose()
            db_noop.dispose()


def _count_events(db: Database, log_id: str, action: str) -> int:
    """Events of ``action`` in the log: one per audited call, none from the no-op side."""
    query = select(func.count()).select_from(AuditEventRow)
    query = query.where(AuditEventRow.log_id == log_id, AuditEventRow.action == action)
    with db.transaction(readonly=True) as session:
        return int(session.scalar(query) or 0)


def _latency_summary(lat: list[float], rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Pooled percentiles; req/s and CPU per call as medians over the rounds."""
    return {
        "p50_ms": pct(lat, 50) * 1e3,
        "p90_ms": pct(lat, 90) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3,
        "rps": statistics.median(r["rps"] for r in rounds),
        "cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"] for r in rounds),
        "rounds": rounds,
    }


# --- 2. durable writes -----------------------------------------------------------------


class MeteredAuditLog(AuditLog):
    """The production AuditLog, counting what each group commit carries and costs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commits: list[tuple[int, float]] = []

    def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        t0 = time.perf_counter()
        try:
            super()._commit(rows)
        finally:  # each batch's leader (list.append is atomic)
            self.commits.append((len(rows), time.perf_counter() - t0))


class RawGroupCommitter:
    """The ceiling contender (module docstring, part 2): the group commit ``AuditLog.write``
    does, with no reelvault code in the loop. Each writer appends its row and a locked
    lock (the cheapest wake-up CPython has) to the queue and blocks on the lock; each of
    ``in_flight`` committer threads, with a raw driver connection of its own, takes every
    row queued so far, inserts them with ``executemany`` in one transaction, commits, and
    releases their writers. Durable before release, as in ``AuditLog``; no per-caller
    failure isolation (nothing fails here)."""

    def __init__(self, backend: Backend, url: str, in_flight: int) -> None:
        self.commits: list[tuple[int, float]] = []
        self._backend = backend
        self._url = url
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._rows: list[tuple[Any, ...]] = []
        self._waiters: list[Any] = []
        self._stop = False
        self._error: BaseException | None = None
        names = ", ".join(EVENT_COLUMNS)
        marks = ", ".join(["?" if backend.name == "sqlite" else "%s"] * len(EVENT_COLUMNS))
        self._sql = f"INSERT INTO audit_events ({names}) VALUES ({marks})"
        self._threads = [
            threading.Thread(target=self._run, args=(self._connect(),), daemon=True)
            for _ in range(in_flight)
        ]
        for thread in self._threads:
            thread.start()

    def _connect(self) -> Any:
        if self._backend.name == "sqlite":
            # As reelvault.catalog.db sets SQLite up: WAL, synchronous FULL (the default),
            # BEGIN IMMEDIATE issued by hand.
            conn = sqlite3.connect(
                make_url(self._url).database or "", isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn
        plain = make_url(self._url).set(drivername="postgresql")
        return psycopg.connect(plain.render_as_string(hide_password=False))

    def _insert(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        if self._backend.name == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(self._sql, rows)

    def write(self, row: tuple[Any, ...]) -> None:
        """Return once ``row`` is committed."""
        waiter = threading.Lock()
        waiter.acquire()
        with self._lock:
            self._rows.append(row)
            self._waiters.append(waiter)
            self._ready.notify()
        waiter.acquire()
        if self._error is not None:
            raise self._error

    def _run(self, conn: Any) -> None:
        perf = time.perf_counter
        try:
            while True:
                with self._lock:
                    while not self._rows:
                        if self._stop:
                            return
                        self._ready.wait()
                    rows, waiters = self._rows, self._waiters
                    self._rows, self._waiters = [], []
                t0 = perf()
                try:
                    self._insert(conn, rows)
                except BaseException as exc:
                    self._error = exc
                self.commits.append((len(rows), perf() - t0))
                for waiter in waiters:
                    waiter.release()
        finally:
            conn.close()

    def writer(self, log_id: str, index: int) -> Callable[[], None]:
        """One writer thread's call: hands a pre-rendered row (a real StatAsset event's, as
        ``AuditLog.write`` would insert it) with a fresh event id stamped into its
        ``event_id`` column and its body's ``metadata.uid``."""
        clock = SystemClock()
        template = event_row(stat_event(log_id, secrets.token_hex(8), secrets.token_hex(16), clock))
        uid = template["event_id"]
        head, _, tail = template["body"].partition(f'"{uid}"')
        values = [template[name] for name in EVENT_COLUMNS]
        at_id, at_body = EVENT_COLUMNS.index("event_id"), EVENT_COLUMNS.index("body")
        prefix = f"{index:02x}{secrets.token_hex(7)}"  # 16 + 16 hex digits: 32, as event ids
        counter = iter(range(2**62))
        write = self.write

        def one() -> None:
            event_id = f"{prefix}{next(counter):016x}"
            row = values.copy()
            row[at_id] = event_id
            row[at_body] = f'{head}"{event_id}"{tail}'
            write(tuple(row))

        return one

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(30)


def write_round(
    audit: MeteredAuditLog,
    log_id: str,
    writers: int,
    seconds: float,
    sequencer: bool,
    raw: RawGroupCommitter | None = None,
) -> dict[str, Any]:
    clock = SystemClock()
    key_id = secrets.token_hex(8)
    asset_id = secrets.token_hex(16)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers + 1)
    deadline = [0.0]
    perf = time.perf_counter

    def writer(i: int) -> None:
        out = latencies[i]
        one = raw.writer(log_id, i) if raw is not None else None
        barrier.wait()
        end = deadline[0]
        try:
            if one is not None:  # the ceiling: a pre-rendered row, no reelvault code
                while (t0 := perf()) < end:
                    one()
                    out.append(perf() - t0)
                return
            while (t0 := perf()) < end:
                audit.write([stat_event(log_id, key_id, asset_id, clock)])
                out.append(perf() - t0)
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()
    seq_thread = None
    if sequencer:
        seq_thread = threading.Thread(
            target=audit.run_sequencer,
            args=(stop,),
            kwargs={"interval": Settings().audit_integrate_interval},
            daemon=True,
        )
        seq_thread.start()
    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    metered = raw if raw is not None else audit
    metered.commits.clear()
    gc.collect()
    c0 = cpu_now()
    deadline[0] = perf() + seconds
    t0 = perf()
    barrier.wait()
    for t in threads:
        t.join()
    wall = perf() - t0
    cpu = cpu_now() - c0
    commits = list(metered.commits)
    lag = 0
    if seq_thread is not None:
        stop.set()
        seq_thread.join(60)
    if errors:
        raise errors[0]
    events = sum(len(x) for x in latencies)
    size = audit.tree_size(log_id)
    if sequencer:
        lag = _pending(audit, log_id)
    lat = [x for xs in latencies for x in xs]
    return {
        "events": events,
        "seconds": wall,
        "events_per_s": events / wall,
        "call_p50_ms": pct(lat, 50) * 1e3,
        "call_p99_ms": pct(lat, 99) * 1e3,
        "commits": len(commits),
        "batch_mean": sum(n for n, _ in commits) / max(1, len(commits)),
        "batch_max": max((n for n, _ in commits), default=0),
        "commit_p50_ms": pct([s for _, s in commits], 50) * 1e3,
        "commit_share": sum(s for _, s in commits) / wall,
        "cpu_ms_per_event": cpu / max(1, events) * 1e3,
        "tree_size_at_end": size,
        "pending_at_end": lag,
    }


def _pending(audit: AuditLog, log_id: str) -> int:
    query = select(func.count()).select_from(AuditEventRow)
    query = query.where(AuditEventRow.log_id == log_id, AuditEventRow.seq.is_(None))
    with audit._db.transaction(readonly=True) as session:
        return int(session.scalar(query) or 0)


def integrate_backlog(
    audit: AuditLog, log_id: str, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Integrate everything pending in ``log_id``, batch by batch; the rate."""
    batches: list[tuple[int, float]] = []
    perf = time.perf_counter
    gc.collect()
    c0 = cpu_now()
    t0 = perf()
    total = 0
    while True:
        b0 = perf()
        done = audit.integrate(log_id)
        if done == 0:
            break
        batches.append((done, perf() - b0))
        total += done
        if progress is not None:
            progress(total)
    seconds = perf() - t0
    cpu = cpu_now() - c0
    return {
        "events": total,
        "seconds": seconds,
        "events_per_s": total / seconds if total else float("nan"),
        "batches": len(batches),
        "batch_ms_p50": pct([s for _, s in batches], 50) * 1e3,
        # does a batch cost more as the tree grows? (the first and the last ten)
        "batch_ms_first": pct([s for _, s in batches[:10]], 50) * 1e3,
        "batch_ms_last": pct([s for _, s in batches[-10:]], 50) * 1e3,
        "cpu_ms_per_event": cpu / max(1, total) * 1e3,
    }


def round_order(order: Sequence[str], rnd: int) -> list[str]:
    """The contenders of round ``rnd``: rotated from round to round, with the 16-writer
    contender and the ceiling side by side, in turns first, so that the two a ratio
    compares run within seconds of each other, each as often after the other."""
    k = rnd % len(order)
    rotated = list(order[k:]) + list(order[:k])
    if W16 in rotated and RAW16 in rotated:
        rotated.remove(RAW16)
        at = rotated.index(W16)
        rotated.insert(at + 1 if rnd % 2 == 0 else at, RAW16)
    return rotated


def settle(backend: Backend, url: str) -> None:
    """Between two contenders, untimed: the write-ahead log checkpointed, so that no
    contender pays for the writes of the one before it. (On SQLite the round after the
    sequencer's would otherwise start by checkpointing what the sequencer wrote: the
    ceiling ran at half its rate whenever it came right after that round.)"""
    if backend.name == "sqlite":
        path = make_url(url).database or ""
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with backend.direct(url) as conn:
        conn.execute("CHECKPOINT")


def bench_write(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    with backend.fresh() as url:
        db = Database(url)
        raw: RawGroupCommitter | None = None
        try:
            db.migrate()
            audit = MeteredAuditLog(db, new_keyring(), SystemClock())
            plan = {W1: (1, False), W16: (WRITERS, False), W16S: (WRITERS, True)}
            plan[RAW16] = (WRITERS, False)
            plan = {who: plan[who] for who in args.write_contenders}
            logs = {who: secrets.token_hex(16) for who in plan}
            if RAW16 in plan:  # as many commits in flight as AuditLog allows itself
                raw = RawGroupCommitter(backend, url, audit._max_in_flight)
            results: dict[str, list[dict[str, Any]]] = {who: [] for who in plan}
            integrations: dict[str, list[dict[str, Any]]] = {W1: [], W16: []}
            written = dict.fromkeys(plan, 0)
            order = list(plan)
            for rnd in range(args.warmup + args.write_rounds):
                warm = rnd < args.warmup
                tag = "warm-up" if warm else f"run {rnd - args.warmup + 1}/{args.write_rounds}"
                for who in round_order(order, rnd):
                    writers, with_seq = plan[who]
                    seconds = args.write_seconds if not warm else min(2.0, args.write_seconds)
                    m = write_round(
                        audit, logs[who], writers, seconds, with_seq, raw if who == RAW16 else None
                    )
                    written[who] += m["events"]
                    note = f"  pending at end {m['pending_at_end']}" if with_seq else ""
                    log(
                        f"  {backend.name:<10} {tag:<9} write {WRITE_LABELS[who]:<24} "
                        f"{m['events_per_s']:7.0f} events/s  batch {m['batch_mean']:5.1f}  "
                        f"commit p50 {m['commit_p50_ms']:5.2f} ms  "
                        f"cpu {m['cpu_ms_per_event']:.3f} ms/event{note}"
                    )
                    # integrate what is left (all of it, for the rounds without sequencer;
                    # the ceiling's rows too, so that no later round's sequencer sees them)
                    integ = integrate_backlog(audit, logs[who])
                    if who in integrations and integ["events"]:
                        log(
                            f"  {backend.name:<10} {tag:<9} integrate {integ['events']} "
                            f"events: {integ['events_per_s']:7.0f} events/s "
                            f"({integ['batches']} batches)"
                        )
                        if not warm:
                            integrations[who].append(integ)
                    if not warm:
                        results[who].append(m)
                    settle(backend, url)
            if raw is not None:
                raw.close()
                raw = None
            rows = []
            for who, runs in results.items():
                rows.append(
                    {
                        "contender": who,
                        "label": WRITE_LABELS[who],
                        "writers": plan[who][0],
                        "sequencer": plan[who][1],
                        "events_per_s": statistics.median(r["events_per_s"] for r in runs),
                        "events_per_s_runs": [r["events_per_s"] for r in runs],
                        "call_p50_ms": statistics.median(r["call_p50_ms"] for r in runs),
                        "call_p99_ms": statistics.median(r["call_p99_ms"] for r in runs),
                        "batch_mean": statistics.median(r["batch_mean"] for r in runs),
                        "commit_p50_ms": statistics.median(r["commit_p50_ms"] for r in runs),
                        "cpu_ms_per_event": statistics.median(r["cpu_ms_per_event"] for r in runs),
                        "pending_at_end_max": max(r["pending_at_end"] for r in runs),
                        "runs": runs,
                    }
                )
            integ_rows = {
                who: {
                    "events_per_s": statistics.median(r["events_per_s"] for r in runs),
                    "events_per_s_runs": [r["events_per_s"] for r in runs],
                    "backlog_events": [r["events"] for r in runs],
                    "batch_ms_p50": statistics.median(r["batch_ms_p50"] for r in runs),
                    "cpu_ms_per_event": statistics.median(r["cpu_ms_per_event"] for r in runs),
                }
                for who, runs in integrations.items()
                if runs
            }
            # every event written is in its log's tree
            for who, log_id in logs.items():
                if audit.tree_size(log_id) != written[who]:
                    raise AssertionError(
                        f"log {who} holds {audit.tree_size(log_id)} events, {written[who]} "
                        "were written"
                    )
            out: dict[str, Any] = {
                "rows": rows,
                "integration": integ_rows,
                "seconds": args.write_seconds,
            }
            if W16 in results and RAW16 in results:
                # rounds are paired: both contenders ran side by side in the same round,
                # so the disk's and the host's drift hits both
                paired = [
                    a["events_per_s"] / b["events_per_s"]
                    for a, b in zip(results[W16], results[RAW16], strict=True)
                ]
                reelvault = statistics.median(r["events_per_s"] for r in results[W16])
                ceiling = statistics.median(r["events_per_s"] for r in results[RAW16])
                out["ceiling"] = {
                    "events_per_s": ceiling,
                    "reelvault_events_per_s": reelvault,
                    "ratio": reelvault / ceiling,
                    "ratio_rounds": paired,
                    "ratio_rounds_median": statistics.median(paired),
                }
            return out
        finally:
            if raw is not None:
                raw.close()
            db.dispose()


# --- 3 + 4. a large log: queries, export, verification, proofs -----------------------


@dataclass(frozen=True)
class QuerySpec:
    name: str
    label: str
    where: AuditFilter
    window: tuple[int, int]
    target: bool  # the query the 50 ms target is about

    @property
    def indexed(self) -> bool:
        """Whether an index of audit_events serves the query: no filter (the time index),
        or a filter on a column some index leads with after ``log_id``."""
        used = {column for attr, column in FILTER_COLUMNS.items() if getattr(self.where, attr)}
        return not used or bool(used & indexed_columns())

    @property
    def shown(self) -> str:
        return self.label if self.indexed else f"{self.label} (no index)"


FILTER_COLUMNS = {
    "actors": "actor_key_id",
    "resources": "resource_id",
    "actions": "action",
    "outcomes": "outcome",
    "methods": "method",
}


def indexed_columns() -> set[str]:
    """Columns an index of audit_events leads with after ``log_id`` (read from the schema,
    which changes as the log does)."""
    table: Any = AuditEventRow.__table__
    leading = set()
    for index in table.indexes:
        names = [column.name for column in index.columns]
        if len(names) > 1 and names[0] == "log_id":
            leading.add(names[1])
    return leading


def bench_log(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    n = args.events
    with backend.fresh() as url:
        db = Database(url)
        try:
            db.migrate()
            audit = AuditLog(db, new_keyring(), SystemClock())
            people = Population(secrets.token_hex(16), args.seed)
            log_id = people.log_id
            now_us = int(time.time() * 1_000_000)
            start_us, span_us = now_us - 30 * DAY_US, 30 * DAY_US
            out: dict[str, Any] = {"events": n, "log_id": log_id}

            # fill: generate the next batch while the previous one is inserted
            log(f"  {backend.name:<10} writing {n} events with add_events ...")
            t0 = time.perf_counter()
            inserted = 0
            pending: Future[None] | None = None

            def insert(rows: list[Any]) -> None:
                with db.transaction() as session:
                    AuditRepository(session).add_events(rows)

            with ThreadPoolExecutor(1) as pool:
                for rows in people.batches(n, args.fill_batch, start_us, span_us):
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(insert, rows)
                    inserted += len(rows)
                    if inserted % (args.fill_batch * 20) == 0:
                        log(f"  {backend.name:<10}   {inserted} written")
                if pending is not None:
                    pending.result()
            fill_s = time.perf_counter() - t0
            out["fill"] = {"seconds": fill_s, "events_per_s": n / fill_s, "batch": args.fill_batch}
            log(f"  {backend.name:<10} written in {fill_s:.1f} s ({n / fill_s:.0f} events/s)")

            log(f"  {backend.name:<10} integrating {n} events ...")
            step = max(50_000, n // 10)
            mark = [step]

            def progress(total: int) -> None:
                if total >= mark[0]:
                    log(f"  {backend.name:<10}   {total} integrated")
                    mark[0] += step

            out["integrate"] = integrate_backlog(audit, log_id, progress)
            log(
                f"  {backend.name:<10} integrated in {out['integrate']['seconds']:.1f} s "
                f"({out['integrate']['events_per_s']:.0f} events/s)"
            )
            if audit.tree_size(log_id) != n:
                raise AssertionError("the tree does not hold every event")
            out["maintenance"] = maintain(backend, url, audit)
            out["storage"] = storage(backend, url, db)
            out["queries"] = bench_queries(audit, people, start_us, span_us, args, backend.name)
            out.update(bench_verify(audit, log_id, n, args, backend))
            return out
        finally:
            db.dispose()


def maintain(backend: Backend, url: str, audit: AuditLog) -> dict[str, Any]:
    """What keeps planner statistics in service: on PostgreSQL autovacuum (VACUUM
    ANALYZE here), on SQLite the sequencer's sampled ANALYZE (``AuditLog.analyze``)."""
    t0 = time.perf_counter()
    if backend.name != "postgresql":
        audit.analyze()
        return {"done": "AuditLog.analyze (sampled ANALYZE)", "seconds": time.perf_counter() - t0}
    with backend.direct(url) as conn:
        conn.execute("VACUUM (ANALYZE) audit_events")
        conn.execute("VACUUM (ANALYZE) audit_nodes")
    seconds = time.perf_counter() - t0
    return {"done": "VACUUM (ANALYZE) audit_events, audit_nodes", "seconds": seconds}


def storage(backend: Backend, url: str, db: Database) -> dict[str, Any]:
    if backend.name == "postgresql":
        with backend.direct(url) as conn:
            events = conn.execute("SELECT pg_total_relation_size('audit_events')").fetchone()[0]
            nodes = conn.execute("SELECT pg_total_relation_size('audit_nodes')").fetchone()[0]
        return {"audit_events_bytes": int(events), "audit_nodes_bytes": int(nodes)}
    path = Path(make_url(url).database or "")
    db.dispose()  # idle pooled connections would keep the WAL from being truncated
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = Path(f"{path}-wal")
    return {"file_bytes": path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)}


def bench_queries(
    audit: AuditLog,
    people: Population,
    start_us: int,
    span_us: int,
    args: argparse.Namespace,
    backend_name: str,
) -> dict[str, Any]:
    everything = (start_us - 1, start_us + span_us + DAY_US)
    mid = start_us + span_us // 2
    actor, asset = people.actors[QUERY_RANK], people.assets[QUERY_RANK]
    specs = [
        QuerySpec(
            "actor_outcome",
            "one API key + outcome=denied, all time",
            AuditFilter(actors=[actor], outcomes=["denied"]),
            everything,
            True,
        ),
        QuerySpec(
            "resource", "one asset, all time", AuditFilter(resources=[asset]), everything, True
        ),
        QuerySpec(
            "window", "no filter, a 1-hour window", AuditFilter(), (mid, mid + 3_600_000_000), False
        ),
        QuerySpec(
            "outcome",
            "outcome=failed only, all time",
            AuditFilter(outcomes=["failed"]),
            everything,
            False,
        ),
        QuerySpec(
            "rare_action",
            f"action={RARE_ACTION} (0.01 %), all time",
            AuditFilter(actions=[RARE_ACTION]),
            everything,
            False,
        ),
    ]
    log_id = people.log_id

    def page(spec: QuerySpec, token: str) -> Any:
        return audit.list_events(
            log_id,
            start_us=spec.window[0],
            end_us=spec.window[1],
            where=spec.where,
            page_size=PAGE_SIZE,
            page_token=token,
        )

    # The later page: page --later-page, or the middle page of a shorter result (the last
    # page would start near the end of the range, and make a scan from there look cheap).
    # Its token comes from paging there (untimed).
    plans: dict[str, dict[str, Any]] = {}
    for spec in specs:
        matches = _count_matches(audit, log_id, spec)
        pages = -(-matches // PAGE_SIZE)
        wanted = min(args.later_page, max(2, (pages + 1) // 2)) if pages > 1 else 1
        token, number = "", 1
        while number < wanted:
            nxt = page(spec, token).next_page_token
            if not nxt:
                break
            token, number = nxt, number + 1
        plans[spec.name] = {"later_token": token, "later_page": number, "matches": matches}

    samples: dict[tuple[str, str], list[float]] = {
        (s.name, which): [] for s in specs for which in ("first", "later")
    }
    perf = time.perf_counter
    # The queries an index serves run interleaved with each other; those no index serves
    # run afterwards, by themselves: their scans would evict the others' pages from the
    # database's cache (PostgreSQL's shared_buffers is 128 MB here, the table 4 GB).
    for indexed in (True, False):
        steps = [(s, w) for s in specs if s.indexed == indexed for w in ("first", "later")]
        for rnd in range(1 + args.query_runs):  # the first pass warms the cache, untimed
            k = rnd % len(steps)
            for spec, which in steps[k:] + steps[:k]:
                token = "" if which == "first" else plans[spec.name]["later_token"]
                t0 = perf()
                result = page(spec, token)
                elapsed = perf() - t0
                if rnd == 0:
                    plans[spec.name][f"{which}_count"] = len(result.events)
                    continue
                samples[(spec.name, which)].append(elapsed)
    rows = []
    for spec in specs:
        plan = plans[spec.name]
        first, later = samples[(spec.name, "first")], samples[(spec.name, "later")]
        row = {
            "query": spec.name,
            "label": spec.shown,
            "indexed": spec.indexed,
            "target": spec.target,
            "matches": plan["matches"],
            "first_events": plan["first_count"],
            "later_page": plan["later_page"],
            "later_events": plan["later_count"],
            "first_p50_ms": pct(first, 50) * 1e3,
            "first_p90_ms": pct(first, 90) * 1e3,
            "later_p50_ms": pct(later, 50) * 1e3,
            "later_p90_ms": pct(later, 90) * 1e3,
            "first_ms_runs": [x * 1e3 for x in first],
            "later_ms_runs": [x * 1e3 for x in later],
        }
        rows.append(row)
        log(
            f"  {backend_name:<10} query {spec.shown:<40} {plan['matches']:>7} matches  "
            f"first p50 {row['first_p50_ms']:8.2f} ms  page {plan['later_page']} p50 "
            f"{row['later_p50_ms']:8.2f} ms"
        )
    return {"page_size": PAGE_SIZE, "runs": args.query_runs, "rows": rows}


def _count_matches(audit: AuditLog, log_id: str, spec: QuerySpec) -> int:
    query = (
        select(func.count())
        .select_from(AuditEventRow)
        .where(
            AuditEventRow.log_id == log_id,
            AuditEventRow.time_us >= spec.window[0],
            AuditEventRow.time_us < spec.window[1],
            *spec.where.clauses(),
        )
    )
    with audit._db.transaction(readonly=True) as session:
        return int(session.scalar(query) or 0)


def bench_verify(
    audit: AuditLog, log_id: str, n: int, args: argparse.Namespace, backend: Backend
) -> dict[str, Any]:
    name = backend.name
    export_path = backend.root / f"export-{name}.jsonl"
    leaves: list[bytes] = []
    log(f"  {name:<10} exporting {n} events ...")
    gc.collect()
    t0 = time.perf_counter()
    written = 0
    with export_path.open("wb") as fh:
        for event in audit.export(log_id, 0, n):
            assert event.record is not None and event.leaf_hash is not None
            fh.write(event.record)
            fh.write(b"\n")
            leaves.append(event.leaf_hash)
            written += len(event.record) + 1
    export_s = time.perf_counter() - t0
    log(f"  {name:<10} exported in {export_s:.1f} s ({n / export_s:.0f} events/s)")

    t0 = time.perf_counter()
    checkpoint = audit.checkpoint(log_id)
    checkpoint_s = time.perf_counter() - t0
    if checkpoint.size != n:
        raise AssertionError("the checkpoint does not cover the log")

    gc.collect()
    t0 = time.perf_counter()
    with export_path.open("rb") as fh:
        report = verify_export(fh, checkpoint.note, checkpoint.verifier_key)
    verify_s = time.perf_counter() - t0
    if not report.ok or report.events != n:
        raise AssertionError(f"the export did not verify: {report.problems[:3]}")
    log(f"  {name:<10} verified in {verify_s:.1f} s ({n / verify_s:.0f} events/s)")
    t0 = time.perf_counter()
    root = merkle.root(leaves)
    root_s = time.perf_counter() - t0
    if root != checkpoint.root_hash:
        raise AssertionError("the stored leaf hashes do not fold to the checkpoint's root")
    export_path.unlink()

    rng = random.Random(args.seed + 2)
    inclusion: list[dict[str, Any]] = []
    consistency: list[dict[str, Any]] = []
    perf = time.perf_counter
    seqs = [rng.randrange(n) for _ in range(args.proofs)]
    olds = [rng.randrange(1, n) for _ in range(args.proofs)]
    for i in range(args.proofs):  # interleaved, one of each per step
        t0 = perf()
        leaf, proof = audit.inclusion_proof(log_id, seqs[i], n)
        inclusion.append({"seq": seqs[i], "hashes": len(proof), "ms": (perf() - t0) * 1e3})
        if leaf != leaves[seqs[i]] or not merkle.verify_inclusion(
            leaf, seqs[i], n, proof, checkpoint.root_hash
        ):
            raise AssertionError(f"inclusion proof of {seqs[i]} does not verify")
        t0 = perf()
        cproof = audit.consistency_proof(log_id, olds[i], n)
        consistency.append({"old_size": olds[i], "hashes": len(cproof), "ms": (perf() - t0) * 1e3})
        if i < args.check_consistency:  # a root from the export, independent of the store
            old_root = merkle.root(leaves[: olds[i]])
            if not merkle.verify_consistency(olds[i], n, old_root, checkpoint.root_hash, cproof):
                raise AssertionError(f"consistency proof {olds[i]} -> {n} does not verify")
    return {
        "export": {
            "seconds": export_s,
            "events_per_s": n / export_s,
            "bytes": written,
            "bytes_per_event": written / n,
        },
        "checkpoint_ms": checkpoint_s * 1e3,
        "verify": {
            "seconds": verify_s,
            "events_per_s": n / verify_s,
            "merkle_root_seconds": root_s,
        },
        "inclusion": _proof_summary(inclusion),
        "consistency": _proof_summary(consistency),
        "consistency_checked_against_export": min(args.check_consistency, args.proofs),
    }


def _proof_summary(proofs: list[dict[str, Any]]) -> dict[str, Any]:
    hashes = [p["hashes"] for p in proofs]
    ms = [p["ms"] for p in proofs]
    return {
        "count": len(proofs),
        "hashes_min": min(hashes),
        "hashes_median": statistics.median(hashes),
        "hashes_max": max(hashes),
        "bytes_max": max(hashes) * merkle.HASH_LEN,
        "ms_p50": pct(ms, 50),
        "ms_p90": pct(ms, 90),
        "proofs": proofs,
    }


# --- environment and report ------------------------------------------------------------


def environment(backends: list[Backend]) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
                break

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = bool(git("status", "--porcelain", "--", "src/reelvault"))
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "calibration_ms_start": calibrate(),
        "grpcio": grpc.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "backends": {b.name: b.describe() for b in backends},
        "git_commit": (git("rev-parse", "--short", "HEAD") or "unknown")
        + (" (src/reelvault modified)" if dirty else ""),
    }


def print_environment(env: dict[str, Any]) -> None:
    print("reelvault audit log benchmark")
    print(f"  python        {env['python']}  ({env['platform']})")
    print(f"  cpu           {env['cpu']}  x{env['cpu_count']}")
    print(f"  load average  {' '.join(f'{x:.2f}' for x in env['loadavg_start'])} (at start)")
    print(
        f"  calibration   {env['calibration_ms_start']:.1f} ms (fixed Python loop; lower: faster)"
    )
    print(f"  grpcio {env['grpcio']}  SQLAlchemy {env['sqlalchemy']}  psycopg {env['psycopg']}")
    for name, info in env["backends"].items():
        print(f"  {name:<13} {' '.join(f'{k}={v}' for k, v in info.items())}")
    print(f"  git           {env['git_commit']}")
    print()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def target(name: str, measured: str, ok: bool) -> None:
        targets.append({"name": name, "measured": measured, "ok": ok})

    if any("rpc" in r for r in results.values()):
        print(
            f"1. StatAsset over gRPC, {args.rpc_rounds} interleaved rounds of "
            f"{args.rpc_requests} calls per cell (latencies pooled over the rounds)"
        )
        head = (
            f"{'backend':<11}{'clients':>7}  {'server':<27}{'p50':>9} {'x no-op':>8} "
            f"{'p99':>10} {'x no-op':>8} {'req/s':>7} {'CPU ms/call':>12}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            for row in res.get("rpc", {}).get("rows", []):
                print(
                    f"{name:<11}{row['clients']:>7}  {row['label']:<27}"
                    f"{row['p50_ms']:>6.2f} ms {row['p50_ratio']:>7.2f}x "
                    f"{row['p99_ms']:>7.2f} ms {row['p99_ratio']:>7.2f}x {row['rps']:>7.0f} "
                    f"{row['cpu_ms_per_call']:>12.2f}"
                )
                if row["contender"] == AUDITED:
                    target(
                        f"{name}: StatAsset x{row['clients']} p50 audited <= "
                        f"{TARGET_RPC_P50_RATIO}x no-op",
                        f"{row['p50_ratio']:.2f}x",
                        row["p50_ratio"] <= TARGET_RPC_P50_RATIO,
                    )
        print(
            "CPU: this process (clients, both servers, the sequencer) per call; req/s: median "
            "over rounds. 'sequencer paused' is the write path alone (no target)."
        )
        print()

    if any("write" in r for r in results.values()):
        print(
            f"2. AuditLog.write([event]) for one tenant, {args.write_rounds} interleaved rounds "
            f"of {args.write_seconds:g} s (median)"
        )
        head = (
            f"{'backend':<11}{'writers':<26}{'events/s':>9} {'call p50':>10} {'call p99':>10} "
            f"{'batch':>6} {'commit p50':>11} {'CPU ms/event':>13} {'pending':>8}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            write = res.get("write")
            if not write:
                continue
            for row in write["rows"]:
                pending = str(row["pending_at_end_max"]) if row["sequencer"] else "-"
                print(
                    f"{name:<11}{row['label']:<26}{row['events_per_s']:>9.0f} "
                    f"{row['call_p50_ms']:>7.2f} ms {row['call_p99_ms']:>7.2f} ms "
                    f"{row['batch_mean']:>6.1f} {row['commit_p50_ms']:>8.2f} ms "
                    f"{row['cpu_ms_per_event']:>13.3f} {pending:>8}"
                )
                if row["contender"] == W16:
                    target(
                        f"{name}: {WRITERS} writers >= {TARGET_WRITES_PER_S:,.0f} events/s",
                        f"{row['events_per_s']:,.0f}/s",
                        row["events_per_s"] >= TARGET_WRITES_PER_S,
                    )
            ceiling = write.get("ceiling")
            if ceiling:
                rounds = ", ".join(f"{x:.2f}" for x in ceiling["ratio_rounds"])
                print(
                    f"{name:<11}{WRITERS} writers / raw driver: {ceiling['ratio']:.2f} of the "
                    f"ceiling ({ceiling['reelvault_events_per_s']:,.0f} / "
                    f"{ceiling['events_per_s']:,.0f} events/s; per round {rounds})"
                )
                if ceiling["events_per_s"] < TARGET_WRITES_PER_S:
                    print(
                        f"{'':<11}the ceiling itself is under {TARGET_WRITES_PER_S:,.0f} events/s: "
                        "out of reach here for a design where each caller waits for durability"
                    )
            for who, integ in write["integration"].items():
                print(
                    f"{name:<11}{'sequencer, ' + WRITE_LABELS[who] + ' backlog':<26}"
                    f"{integ['events_per_s']:>9.0f} (integrate, batches of <= {INTEGRATE_BATCH}: "
                    f"{integ['batch_ms_p50']:.0f} ms p50 per batch, "
                    f"{integ['cpu_ms_per_event']:.3f} CPU ms/event)"
                )
        print(
            "batch: events per group commit (mean); pending: events not yet integrated when "
            "the writers stopped (max over rounds); CPU: this process only. raw driver: the "
            "same group commit with pre-rendered rows and no reelvault code (the ceiling)."
        )
        print()

    if any("log" in r for r in results.values()):
        print(
            f"3. list_events, page size {PAGE_SIZE}, over {args.events:,} events of one "
            f"tenant (p50 and p90 of {args.query_runs} interleaved runs, warm cache)"
        )
        head = (
            f"{'backend':<11}{'query':<41}{'matches':>8} {'first p50':>10} {'p90':>9} "
            f"{'later page':>10} {'p50':>9} {'p90':>9}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            lg = res.get("log")
            if not lg:
                continue
            for row in lg["queries"]["rows"]:
                print(
                    f"{name:<11}{row['label']:<41}{row['matches']:>8} "
                    f"{row['first_p50_ms']:>7.2f} ms {row['first_p90_ms']:>6.1f} ms "
                    f"{row['later_page']:>10} {row['later_p50_ms']:>6.2f} ms "
                    f"{row['later_p90_ms']:>6.1f} ms"
                )
                if row["target"]:
                    worst = max(row["first_p50_ms"], row["later_p50_ms"])
                    target(
                        f"{name}: query '{row['label']}' p50 < {TARGET_QUERY_MS:g} ms",
                        f"{worst:.1f} ms (worse of first/later page)",
                        worst < TARGET_QUERY_MS,
                    )
        print()
        print(f"4. the log at {args.events:,} events")
        head = (
            f"{'backend':<11}{'fill/s':>8} {'integrate/s':>12} {'export/s':>9} "
            f"{'verify/s':>9} {'checkpoint':>11} {'inclusion: hashes, bytes, p50':>30} "
            f"{'consistency: hashes, bytes, p50':>32} {'bytes/event':>12}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            lg = res.get("log")
            if not lg:
                continue
            inc, con = lg["inclusion"], lg["consistency"]
            st = lg["storage"]
            stored = sum(v for v in st.values() if isinstance(v, int)) / args.events
            print(
                f"{name:<11}{lg['fill']['events_per_s']:>8.0f} "
                f"{lg['integrate']['events_per_s']:>12.0f} {lg['export']['events_per_s']:>9.0f} "
                f"{lg['verify']['events_per_s']:>9.0f} {lg['checkpoint_ms']:>8.1f} ms "
                f"{inc['hashes_min']:>6}-{inc['hashes_max']:<3} {inc['bytes_max']:>5} B "
                f"{inc['ms_p50']:>7.2f} ms {con['hashes_min']:>6}-{con['hashes_max']:<3} "
                f"{con['bytes_max']:>5} B {con['ms_p50']:>9.2f} ms {stored:>12.0f}"
            )
        print(
            "fill: add_events in transactions of "
            f"{args.fill_batch:,}; integrate: the sequencer over the whole backlog; export: "
            "AuditLog.export to a JSON Lines file; verify: verify_export of that file; bytes: "
            "the most a proof carried; bytes/event: catalog storage (events + nodes)."
        )
        print()

    print("targets")
    for t in targets:
        t["verdict"] = verdict(t["ok"])
        print(f"  {t['verdict']}  {t['name']:<62} measured {t['measured']}")
    print()
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument("--parts", default="rpc,write,log", help="comma-separated: rpc,write,log")
    parser.add_argument(
        "--postgres-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/",
        help="the PostgreSQL server (its database part is ignored)",
    )
    parser.add_argument(
        "--postgres-database",
        default=f"reelvault_bench_{os.getpid()}",
        help="created and dropped per part (default: one per process, so runs never collide)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds first")
    parser.add_argument("--rpc-rounds", type=int, default=5, help="timed rounds, part 1")
    parser.add_argument("--rpc-requests", type=int, default=400, help="calls per cell and round")
    parser.add_argument("--write-rounds", type=int, default=3, help="timed rounds, part 2")
    parser.add_argument("--write-seconds", type=float, default=5.0, help="seconds per round")
    parser.add_argument(
        "--write-contenders",
        default=",".join(WRITE_CONTENDERS),
        help=f"comma-separated, part 2: {', '.join(WRITE_CONTENDERS)} (raw16: the ceiling)",
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in parts 3 and 4")
    parser.add_argument("--fill-batch", type=int, default=10_000, help="rows per transaction")
    parser.add_argument("--query-runs", type=int, default=15, help="timed runs per query")
    parser.add_argument(
        "--later-page", type=int, default=10, help="later page to time (at most the middle one)"
    )
    parser.add_argument("--proofs", type=int, default=50, help="proofs of each kind")
    parser.add_argument(
        "--check-consistency",
        type=int,
        default=3,
        help="consistency proofs also checked against a root computed from the export",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic log")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not set(backends) <= {"sqlite", "postgresql"} or not backends:
        parser.error("--backends takes sqlite and/or postgresql")
    if not set(parts) <= {"rpc", "write", "log"} or not parts:
        parser.error("--parts takes rpc, write and/or log")
    args.write_contenders = [w.strip() for w in args.write_contenders.split(",") if w.strip()]
    if not set(args.write_contenders) <= set(WRITE_CONTENDERS) or not args.write_contenders:
        parser.error(f"--write-contenders takes {', '.join(WRITE_CONTENDERS)}")
    if args.postgres_database in RESERVED_DATABASES:
        parser.error(f"--postgres-database must not be {args.postgres_database!r}")
    if args.events < 1000 or args.rpc_rounds < 1 or args.write_rounds < 1 or args.warmup < 0:
        parser.error("events >= 1000, rounds >= 1, warmup >= 0")
    if args.rpc_requests < max(CLIENT_COUNTS) or args.query_runs < 1 or args.proofs < 1:
        parser.error(f"rpc-requests >= {max(CLIENT_COUNTS)}, query-runs >= 1, proofs >= 1")
    configure_logging("warning", "json")  # no per-call access log lines on stderr

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup: keep ignoring SIGHUP
            signal.signal(signum, interrupt)

    root = Path(tempfile.mkdtemp(prefix="rv-audit-bench-"))
    objs = [
        Backend(
            name,
            root,
            admin_url=args.postgres_url if name == "postgresql" else "",
            database=args.postgres_database if name == "postgresql" else "",
        )
        for name in backends
    ]
    try:
        env = environment(objs)
        print_environment(env)
        results: dict[str, dict[str, Any]] = {b.name: {} for b in objs}
        started = time.perf_counter()
        runners = {"rpc": bench_rpc, "write": bench_write, "log": bench_log}
        for part in ("rpc", "write", "log"):
            if part not in parts:
                continue
            for backend in objs:
                log(f"{part} on {backend.name} ...")
                t0 = time.perf_counter()
                results[backend.name][part] = runners[part](backend, args)
                results[backend.name][part]["wall_seconds"] = time.perf_counter() - t0
        targets = report(results, args)
        env["loadavg_end"] = os.getloadavg()
        env["calibration_ms_end"] = calibrate()
        print(
            f"load average at the end: {' '.join(f'{x:.2f}' for x in env['loadavg_end'])}; "
            f"calibration {env['calibration_ms_end']:.1f} ms"
        )
        print(f"total {time.perf_counter() - started:.0f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            config["page_size"] = PAGE_SIZE
            config["client_counts"] = CLIENT_COUNTS
            config["writers"] = WRITERS
            config["targets"] = {
                "rpc_p50_ratio": TARGET_RPC_P50_RATIO,
                "writes_per_s": TARGET_WRITES_PER_S,
                "query_ms": TARGET_QUERY_MS,
            }
            result = {
                "environment": env,
                "config": config,
                "results": results,
                "targets": targets,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        return 0
    finally:
        for backend in objs:
            with contextlib.suppress(Exception):
                backend.drop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
