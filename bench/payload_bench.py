"""Personalization payloads: the RPCs against a trivial one, the crypto against the official
SDK, where the bytes live, and how fast a KEK rotation moves every wrapped key.

Run from the repository root (``make bench-payloads`` does this)::

    .venv/bin/python -m bench.payload_bench --json bench/results/payloads.json

Every part runs on each catalog backend given (``--backends``; SQLite, a file in a temporary
directory, by default; PostgreSQL with ``--backends sqlite,postgresql``: a database of its
own, ``--postgres-database``, created for each part and dropped after it on the server of
``--postgres-url``, as in ``bench.audit_bench``). Each part starts on a fresh, migrated catalog.

1. **The RPCs.** One production server (``create_server`` on an event loop of its own, with
   the 64 worker threads ``serve`` gives it, as in ``bench.audit_bench``) over the catalog,
   wired as in production (``Vault.from_parts``: API-key authentication, the catalog-backed
   ``AuditLog`` with ``audit_sequencer`` running beside it; the in-memory object store,
   which no call here touches). One tenant with an ingest, a renderer and a privacy key.
   ``--subjects`` viewers have consented to ``personalization`` (``RecordConsent``) and
   each has one 1 KiB JSON payload (``PutPayload``). Contenders, each a unary call over
   the same channel with a bearer token:

   - ``HashSubject`` (privacy key): **the trivial RPC**, the baseline of every ratio.
     Beyond what every call does (authentication, which reads the API key's row, and one
     durable audit event) it computes one HMAC with the tenant's cached pseudonym key: no
     catalog statement of its own.
   - ``GetTenant`` (the renderer key): a second reference, one catalog read (the tenant
     row) on top of the same; its audit event is written by the interceptor after the
     servicer, in a second worker-thread hop.
   - ``GetPayload`` (renderer): the payload's row and the consent check in one read
     transaction, the subject's row (its wrapped key), unwrap, open the sealed message.
   - ``PutPayload`` (ingest): the subject's row, unwrap, seal, an insert transaction.

   Clients are threads of this process with a channel each, 1 at a time (the target) and
   ``--concurrency`` at once. Each round runs every (clients, contender) cell once, in an
   order rotated from round to round; latencies are pooled over the rounds after a
   discarded warm-up round. Beside the RPCs, in the same rounds, the domain calls alone in
   this process (``Privacy.hash_subject``, ``TenantKeys.get_tenant``, ``Payloads.get``,
   ``Payloads.put``: no gRPC, no authentication, no audit event, which is recorded only
   inside a request) and one ``AuditLog.write([event])``: what the RPCs' time is made of.
   At the end the log is checked to hold exactly one event per call of each method.
2. **The crypto, in process.** The same 1 KiB payload: reelvault's ``seal_message`` and
   ``open_message`` (under a subject key, as ``Payloads`` does) against the official
   aws-encryption-sdk's one-shot ``encrypt`` and ``decrypt`` (suite 0x0478, frame length
   65536, a ``RawMasterKey`` with provider id ``reelvault`` holding the same subject key,
   the same encryption context). Rounds rotate the four. Checked first: the SDK decrypts
   reelvault's sealed payload.
3. **Where the bytes live.** A payload sealed at ``--sizes`` (1 KiB, 64 KiB, 1 MiB), stored
   and read back three ways: as a catalog row holding the whole message (``PayloadRow``,
   what ``Payloads`` does: an ORM insert in a write transaction, a select by id and tenant in
   a read transaction); as the same row without the message (the metadata row an object
   store design would still need); and as an object in SeaweedFS (``weed mini``, the real S3
   server, started by ``reelvault.storage.seaweed.SeaweedServer``) through the vault's own
   store client (``S3ObjectStore.put``, a single PUT; ``open_stream``, a GET read whole).
   Reads pick stored rows and objects at random. Rounds rotate the contenders.
4. **Rewrap.** ``--assets`` asset rows (100,000) are inserted straight into the catalog
   (SQLAlchemy bulk inserts of 10,000 rows per transaction): each has a header sealed under
   KEK version 1 by ``Sealer`` (a real data key, wrapped for the asset's own encryption
   context), a unique path and object key, and no stored object. ``--subject-keys`` subject
   rows (10,000) get a random subject key wrapped under version 1 as ``Subjects`` wraps
   them. Then ``TenantKeys.rotate`` and ``TenantLifecycle.rewrap`` (what ``reelvault key
   rewrap`` and ``RewrapTenant`` run: ``SealedObjects.rewrap_tenant`` over
   ``Subjects.rewrap_batch`` and ``Assets.rewrap_batch``, 500 keys per batch, each key in
   a transaction of its own), timed. The catalog's transactions are timed on the way
   (``Database.transaction`` wrapped on this instance): batch reads, per-key writes, and
   the rest (unwrap and rewrap, Python). Beside it, ``rewrap_data_key`` alone on 2,000 of the
   same headers in memory, and after it the same UPDATE on 2,000 rows, one transaction
   per key, three ways taking turns: ``Database.transaction`` with an ORM session (as the
   rewrap), SQLAlchemy Core (``engine.begin()``), and the raw driver (``sqlite3`` /
   psycopg; the floor: statement and commit). Afterwards: nothing is left under version 1,
   and a sample of rewrapped slots opens with version 2 alone.

Interleaving matters: these machines are small and shared. Nothing here asserts a timing;
a benchmark reports, and exits 0 whatever the PASS/MISS verdicts say.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy import func, insert, make_url, select, update

from bench.audit_bench import (
    CHANNEL_OPTIONS,
    RESERVED_DATABASES,
    Backend,
    Sequencer,
    ServerThread,
    calibrate,
    cpu_now,
    environment,
    new_keyring,
    pct,
    stat_event,
)
from reelvault.app import Vault
from reelvault.assets import asset_context
from reelvault.auth import Role
from reelvault.catalog import Database
from reelvault.catalog.tables import AssetRow, AuditEventRow, PayloadRow, SubjectRow
from reelvault.clock import SystemClock
from reelvault.config import Settings
from reelvault.crypto import (
    KIND_PAYLOAD,
    EncryptedDataKey,
    EncryptionContext,
    Sealer,
    open_header,
    open_message,
    rewrap_data_key,
    seal_message,
    wrap_key,
)
from reelvault.crypto.format import parse_header
from reelvault.crypto.message import PROVIDER_ID
from reelvault.crypto.names import subject_key_name
from reelvault.logging import configure_logging
from reelvault.objects import RewrapProgress, object_context
from reelvault.privacy.subjects import _key_context as subject_key_context
from reelvault.storage import MemoryObjectStore
from reelvault.storage.seaweed import SeaweedServer, find_weed
from reelvault.v1 import privacy_pb2, privacy_pb2_grpc, tenant_pb2, tenant_pb2_grpc

KIB = 1024
MIB = 1024 * KIB
TARGET_P50_RATIO = 1.5
PURPOSE = "personalization"
HASH, TENANT, GET, PUT = "hash", "tenant", "get", "put"
RPC_CONTENDERS = (HASH, TENANT, GET, PUT)
RPC_LABELS = {
    HASH: "HashSubject (trivial)",
    TENANT: "GetTenant",
    GET: "GetPayload",
    PUT: "PutPayload",
}
RPC_ACTIONS = {
    HASH: "subject.hash",
    TENANT: "tenant.read",
    GET: "payload.read",
    PUT: "payload.write",
}
D_HASH, D_TENANT, D_GET, D_PUT, D_AUDIT = "d-hash", "d-tenant", "d-get", "d-put", "d-audit"
DOMAIN_CONTENDERS = (D_HASH, D_TENANT, D_GET, D_PUT, D_AUDIT)
DOMAIN_LABELS = {
    D_HASH: "Privacy.hash_subject",
    D_TENANT: "TenantKeys.get_tenant",
    D_GET: "Payloads.get",
    D_PUT: "Payloads.put",
    D_AUDIT: "AuditLog.write([event])",
}
RV_SEAL, RV_OPEN, SDK_ENC, SDK_DEC = "rv-seal", "rv-open", "sdk-encrypt", "sdk-decrypt"
CRYPTO_CONTENDERS = (RV_SEAL, RV_OPEN, SDK_ENC, SDK_DEC)
CRYPTO_LABELS = {
    RV_SEAL: "reelvault seal_message",
    RV_OPEN: "reelvault open_message",
    SDK_ENC: "aws-encryption-sdk encrypt",
    SDK_DEC: "aws-encryption-sdk decrypt",
}
ROW, META, S3 = "row", "meta", "s3"
STORE_CONTENDERS = (ROW, META, S3)
STORE_LABELS = {
    ROW: "catalog row with the message",
    META: "catalog row, metadata only",
    S3: "SeaweedFS object (S3)",
}
BUCKET = "payload-bench"
SDK_FRAME = 65536
REWRAP_BATCH = 500  # SealedObjects.rewrap_tenant's default, which TenantLifecycle uses
FILL_BATCH = 10_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def json_payload(size: int, seed: int = 0) -> bytes:
    """A JSON document of exactly ``size`` bytes, as a renderer's personalization data."""
    rng = random.Random(seed)
    doc: dict[str, Any] = {
        "viewer": {"name": "Ada Lovelace", "locale": "en-GB", "tier": "premium"},
        "greeting": "Welcome back, Ada",
        "preferences": {"genres": ["documentary", "drama", "sci-fi"], "subtitles": True},
        "recent": [f"{rng.getrandbits(64):016x}" for _ in range(4)],
        "pad": "",
    }
    base = len(json.dumps(doc, separators=(",", ":")).encode())
    if base > size:
        raise ValueError(f"a payload of {size} bytes is too small for the document")
    doc["pad"] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(size - base))
    data = json.dumps(doc, separators=(",", ":")).encode()
    assert len(data) == size
    return data


def summary(lat: Sequence[float], rounds: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Pooled percentiles (ms); ops/s and CPU per op as medians over the rounds."""
    return {
        "count": len(lat),
        "p50_ms": pct(lat, 50) * 1e3,
        "p90_ms": pct(lat, 90) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "max_ms": max(lat) * 1e3,
        "ops": statistics.median(r["ops"] for r in rounds),
        "cpu_ms_per_op": statistics.median(r["cpu_ms_per_op"] for r in rounds),
        "rounds": list(rounds),
    }


def run_threads(
    fn: Callable[[int, int], object], clients: int, total: int
) -> tuple[list[float], float, float]:
    """``total`` calls of ``fn(client, k)`` from ``clients`` threads at once (one thread:
    this one): per-call latencies (s), the wall time, and this process's CPU seconds."""
    per_client = max(1, total // clients)
    perf = time.perf_counter
    if clients == 1:
        out: list[float] = []
        gc.collect()
        c0 = cpu_now()
        t0 = perf()
        for k in range(per_client):
            s = perf()
            fn(0, k)
            out.append(perf() - s)
        return out, perf() - t0, cpu_now() - c0
    results: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        mine = results[i]
        barrier.wait()
        try:
            for k in range(per_client):
                s = perf()
                fn(i, k)
                mine.append(perf() - s)
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
    return [x for r in results for x in r], wall, cpu


def rotated(cells: Sequence[Any], rnd: int) -> list[Any]:
    k = rnd % len(cells)
    return list(cells[k:]) + list(cells[:k])


# --- 1. the RPCs -----------------------------------------------------------------------


@dataclass
class Clients:
    """One channel and set of stubs per client thread; calls counted per method."""

    channels: list[Any]
    payloads: list[Any]
    consent: list[Any]
    privacy: list[Any]
    tenants: list[Any]
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RPC_CONTENDERS, 0))

    @classmethod
    def connect(cls, address: str, n: int) -> Clients:
        channels = [grpc.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(n)]
        return cls(
            channels,
            [privacy_pb2_grpc.PayloadServiceStub(ch) for ch in channels],
            [privacy_pb2_grpc.ConsentServiceStub(ch) for ch in channels],
            [privacy_pb2_grpc.PrivacyServiceStub(ch) for ch in channels],
            [tenant_pb2_grpc.TenantServiceStub(ch) for ch in channels],
        )

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


def bench_rpc(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    with backend.fresh() as url:
        clock = SystemClock()
        db = Database(url)
        db.migrate()
        server: ServerThread | None = None
        clients: Clients | None = None
        sequencer: Sequencer | None = None
        try:
            settings = Settings(grpc_host="127.0.0.1", grpc_port=0, shutdown_grace=1.0)
            vault = Vault.from_parts(
                database=db, root=new_keyring(), store=MemoryObjectStore(), clock=clock
            )
            tenant = vault.tenant_keys.create_tenant("payload-bench")
            tokens = {
                role: vault.api_keys.create(tenant_id=tenant.id, role=role)[1]
                for role in (Role.INGEST, Role.RENDERER, Role.PRIVACY)
            }
            md = {role: (("authorization", f"Bearer {t}"),) for role, t in tokens.items()}
            server = ServerThread(vault, settings)
            sequencer = Sequencer(server, settings)
            sequencer.start()
            n_clients = max(1, args.concurrency)
            clients = Clients.connect(server.address, n_clients)
            data = json_payload(args.payload_bytes)
            viewers = [f"viewer-{i:05d}@example.com" for i in range(args.subjects)]
            payload_ids: list[str] = []
            consents = 0
            for viewer in viewers:  # consent, then one payload each, through the service
                clients.consent[0].RecordConsent(
                    privacy_pb2.RecordConsentRequest(
                        subject_id=viewer, purpose=PURPOSE, granted=True, source="signup-form"
                    ),
                    metadata=md[Role.INGEST],
                )
                consents += 1
                reply = clients.payloads[0].PutPayload(
                    privacy_pb2.PutPayloadRequest(subject_id=viewer, purpose=PURPOSE, data=data),
                    metadata=md[Role.INGEST],
                )
                clients.calls[PUT] += 1
                payload_ids.append(reply.id)
            n = len(viewers)
            tenant_request = tenant_pb2.GetTenantRequest(tenant_id=tenant.id)
            hash_requests = [privacy_pb2.HashSubjectRequest(subject_id=v) for v in viewers]
            get_requests = [
                privacy_pb2.GetPayloadRequest(id=p, purpose=PURPOSE) for p in payload_ids
            ]
            put_requests = [
                privacy_pb2.PutPayloadRequest(subject_id=v, purpose=PURPOSE, data=data)
                for v in viewers
            ]
            pseudonyms = [vault.subjects.pseudonym(tenant.id, v) for v in viewers]

            def call_hash(i: int, k: int) -> None:
                reply = clients.privacy[i].HashSubject(
                    hash_requests[(i * 7919 + k) % n], metadata=md[Role.PRIVACY], timeout=30
                )
                if reply.subject != pseudonyms[(i * 7919 + k) % n]:
                    raise AssertionError("HashSubject gave another pseudonym")

            def call_tenant(i: int, k: int) -> None:
                reply = clients.tenants[i].GetTenant(
                    tenant_request, metadata=md[Role.RENDERER], timeout=30
                )
                if reply.id != tenant.id:
                    raise AssertionError("GetTenant answered for another tenant")

            def call_get(i: int, k: int) -> None:
                reply = clients.payloads[i].GetPayload(
                    get_requests[(i * 7919 + k) % n], metadata=md[Role.RENDERER], timeout=30
                )
                if reply.data != data:
                    raise AssertionError("GetPayload returned other bytes")

            def call_put(i: int, k: int) -> None:
                reply = clients.payloads[i].PutPayload(
                    put_requests[(i * 7919 + k) % n], metadata=md[Role.INGEST], timeout=30
                )
                if reply.size != len(data):
                    raise AssertionError("PutPayload stored another size")

            def dom_hash(i: int, k: int) -> None:
                vault.privacy.hash_subject(tenant.id, viewers[k % n])

            def dom_tenant(i: int, k: int) -> None:
                vault.tenant_keys.get_tenant(tenant.id)

            def dom_get(i: int, k: int) -> None:
                if vault.payloads.get(tenant.id, payload_ids[k % n], PURPOSE)[1] != data:
                    raise AssertionError("Payloads.get returned other bytes")

            def dom_put(i: int, k: int) -> None:
                vault.payloads.put(tenant.id, viewers[k % n], purpose=PURPOSE, data=data)

            audit_key, audit_asset = secrets.token_hex(8), secrets.token_hex(16)

            def dom_audit(i: int, k: int) -> None:
                vault.audit_log.write([stat_event(tenant.id, audit_key, audit_asset, clock)])

            rpc_fns = {HASH: call_hash, TENANT: call_tenant, GET: call_get, PUT: call_put}
            dom_fns = {
                D_HASH: dom_hash,
                D_TENANT: dom_tenant,
                D_GET: dom_get,
                D_PUT: dom_put,
                D_AUDIT: dom_audit,
            }
            counts = sorted({1, n_clients})
            cells: list[tuple[int, str]] = [(c, who) for c in counts for who in RPC_CONTENDERS]
            if args.domain:
                cells += [(1, who) for who in DOMAIN_CONTENDERS]
            samples: dict[tuple[int, str], list[float]] = {cell: [] for cell in cells}
            rounds: dict[tuple[int, str], list[dict[str, float]]] = {cell: [] for cell in cells}
            for rnd in range(args.warmup + args.rounds):
                warm = rnd < args.warmup
                tag = "warm-up" if warm else f"run {rnd - args.warmup + 1}/{args.rounds}"
                for c, who in rotated(cells, rnd):
                    fn = rpc_fns.get(who) or dom_fns[who]
                    lat, wall, cpu = run_threads(fn, c, args.calls)
                    if who in rpc_fns:
                        clients.calls[who] += len(lat)
                    label = RPC_LABELS.get(who) or DOMAIN_LABELS[who]
                    log(
                        f"  {backend.name:<10} {tag:<9} x{c:<2} {label:<24} "
                        f"p50 {pct(lat, 50) * 1e3:6.2f} ms  p99 {pct(lat, 99) * 1e3:7.2f} ms  "
                        f"{len(lat) / wall:6.0f} ops/s  cpu {cpu / len(lat) * 1e3:5.2f} ms/op"
                    )
                    if not warm:
                        samples[(c, who)].extend(lat)
                        rounds[(c, who)].append(
                            {
                                "p50_ms": pct(lat, 50) * 1e3,
                                "p99_ms": pct(lat, 99) * 1e3,
                                "ops": len(lat) / wall,
                                "cpu_ms_per_op": cpu / len(lat) * 1e3,
                            }
                        )
            sequencer.stop()
            sequencer = None
            vault.audit_log.integrate_all()
            recorded = {who: _count_events(db, tenant.id, RPC_ACTIONS[who]) for who in RPC_ACTIONS}
            for who, calls in clients.calls.items():
                if recorded[who] != calls:
                    raise AssertionError(
                        f"{RPC_LABELS[who]}: {calls} calls answered but {recorded[who]} "
                        f"{RPC_ACTIONS[who]} events in the log"
                    )
            consent_events = _count_events(db, tenant.id, "consent.write")
            if consent_events != consents:
                raise AssertionError("the log does not hold one consent.write per call")
            # Where a domain call's time goes: its catalog transactions (commit included)
            # and the rest, with nothing else running (the sequencer is stopped, the
            # server idle).
            breakdown = []
            if args.domain:
                timed = TimedTransactions(db)
                try:
                    for who in (D_HASH, D_TENANT, D_GET, D_PUT):
                        timed.reset()
                        timed.on = True
                        lat, wall, _ = run_threads(dom_fns[who], 1, args.calls)
                        timed.on = False
                        calls = len(lat)
                        breakdown.append(
                            {
                                "contender": who,
                                "label": DOMAIN_LABELS[who],
                                "calls": calls,
                                "ms_per_call": wall / calls * 1e3,
                                "read_transactions_per_call": timed.reads / calls,
                                "write_transactions_per_call": timed.writes / calls,
                                "transaction_ms_per_call": (timed.read_s + timed.write_s)
                                / calls
                                * 1e3,
                                "rest_ms_per_call": (wall - timed.read_s - timed.write_s)
                                / calls
                                * 1e3,
                            }
                        )
                finally:
                    timed.restore()
            rows = []
            for c in counts:
                base = samples[(c, HASH)]
                for who in RPC_CONTENDERS:
                    lat = samples[(c, who)]
                    row = {
                        "clients": c,
                        "contender": who,
                        "label": RPC_LABELS[who],
                        **summary(lat, rounds[(c, who)]),
                        "p50_ratio": pct(lat, 50) / pct(base, 50),
                        "p99_ratio": pct(lat, 99) / pct(base, 99),
                        "p50_ratio_to_get_tenant": pct(lat, 50) / pct(samples[(c, TENANT)], 50),
                        "p50_ratio_rounds": [
                            x["p50_ms"] / y["p50_ms"]
                            for x, y in zip(rounds[(c, who)], rounds[(c, HASH)], strict=True)
                        ],
                    }
                    rows.append(row)
            domain = []
            if args.domain:
                for who in DOMAIN_CONTENDERS:
                    domain.append(
                        {
                            "contender": who,
                            "label": DOMAIN_LABELS[who],
                            **summary(samples[(1, who)], rounds[(1, who)]),
                        }
                    )
            return {
                "rows": rows,
                "domain": domain,
                "domain_breakdown": breakdown,
                "calls": dict(clients.calls),
                "events_recorded": recorded,
                "payload_bytes": len(data),
                "sealed_bytes": _sealed_size(db, payload_ids[0]),
                "subjects": n,
            }
        finally:
            if sequencer is not None:
                sequencer.stop()
            if clients is not None:
                clients.close()
            if server is not None:
                server.close()
            db.dispose()


def _count_events(db: Database, log_id: str, action: str) -> int:
    query = select(func.count()).select_from(AuditEventRow)
    query = query.where(AuditEventRow.log_id == log_id, AuditEventRow.action == action)
    with db.transaction(readonly=True) as session:
        return int(session.scalar(query) or 0)


def _sealed_size(db: Database, payload_id: str) -> int:
    with db.transaction(readonly=True) as session:
        message = session.scalar(select(PayloadRow.message).where(PayloadRow.id == payload_id))
    return len(message or b"")


# --- 2. the crypto -----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """A subject key in plaintext (``reelvault.crypto.WrappingKey``)."""

    name: str
    key: bytes


class OneKey:
    """A ``KeyResolver`` holding one key."""

    def __init__(self, key: Key) -> None:
        self._key = key

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self._key.key if key_name == self._key.name else None


class Sdk:
    """The official SDK's one-shot API, as an outside party would configure it for a
    reelvault message (tests/unit/crypto/conftest.py): a raw AES master key with provider
    id ``reelvault``, suite 0x0478, commitment required on both sides."""

    def __init__(self, key: Key, context: EncryptionContext) -> None:
        import aws_encryption_sdk  # noqa: PLC0415 - a dev dependency, imported where used
        from aws_encryption_sdk.identifiers import (  # noqa: PLC0415
            Algorithm,
            CommitmentPolicy,
            EncryptionKeyType,
            WrappingAlgorithm,
        )
        from aws_encryption_sdk.internal.crypto.wrapping_keys import (  # noqa: PLC0415
            WrappingKey,
        )
        from aws_encryption_sdk.key_providers.raw import RawMasterKey  # noqa: PLC0415

        self.version = aws_encryption_sdk.__version__
        self.client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        self.algorithm = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
        self.master_key = RawMasterKey(
            provider_id=PROVIDER_ID,
            key_id=key.name.encode(),
            wrapping_key=WrappingKey(
                wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                wrapping_key=key.key,
                wrapping_key_type=EncryptionKeyType.SYMMETRIC,
            ),
        )
        self.context = dict(context)

    def encrypt(self, data: bytes) -> bytes:
        ciphertext, _ = self.client.encrypt(
            source=data,
            key_provider=self.master_key,
            encryption_context=self.context,
            algorithm=self.algorithm,
            frame_length=SDK_FRAME,
        )
        return bytes(ciphertext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        plaintext, header = self.client.decrypt(source=ciphertext, key_provider=self.master_key)
        if dict(header.encryption_context) != self.context:
            raise AssertionError("the SDK returned another encryption context")
        return bytes(plaintext)


def bench_crypto(args: argparse.Namespace) -> dict[str, Any]:
    tenant_id, pseudonym, payload_id = (secrets.token_hex(16) for _ in range(3))
    key = Key(subject_key_name(tenant_id, pseudonym), secrets.token_bytes(32))
    resolver = OneKey(key)
    context = object_context(tenant_id, payload_id, KIND_PAYLOAD)
    data = json_payload(args.payload_bytes)
    sdk = Sdk(key, context)
    sealed = seal_message(key, context, data)
    theirs = sdk.encrypt(data)
    if sdk.decrypt(sealed) != data:  # the official SDK reads a sealed payload
        raise AssertionError("the SDK does not decrypt reelvault's sealed payload")
    if open_message(sealed, resolver, context) != data or sdk.decrypt(theirs) != data:
        raise AssertionError("a round trip lost the payload")

    fns: dict[str, Callable[[int, int], object]] = {
        RV_SEAL: lambda i, k: seal_message(key, context, data),
        RV_OPEN: lambda i, k: open_message(sealed, resolver, context),
        SDK_ENC: lambda i, k: sdk.encrypt(data),
        SDK_DEC: lambda i, k: sdk.decrypt(theirs),
    }
    samples: dict[str, list[float]] = {who: [] for who in CRYPTO_CONTENDERS}
    rounds: dict[str, list[dict[str, float]]] = {who: [] for who in CRYPTO_CONTENDERS}
    for rnd in range(args.warmup + args.rounds):
        warm = rnd < args.warmup
        for who in rotated(CRYPTO_CONTENDERS, rnd):
            fn = fns[who]
            lat, wall, cpu = run_threads(fn, 1, args.crypto_ops)
            if not warm:
                samples[who].extend(lat)
                rounds[who].append(
                    {
                        "p50_ms": pct(lat, 50) * 1e3,
                        "ops": len(lat) / wall,
                        "cpu_ms_per_op": cpu / len(lat) * 1e3,
                    }
                )
    base = {RV_SEAL: SDK_ENC, RV_OPEN: SDK_DEC, SDK_ENC: SDK_ENC, SDK_DEC: SDK_DEC}
    rows = []
    for who in CRYPTO_CONTENDERS:
        row = {"contender": who, "label": CRYPTO_LABELS[who], **summary(samples[who], rounds[who])}
        row["us_p50"] = row["p50_ms"] * 1e3
        row["speedup_vs_sdk"] = pct(samples[base[who]], 50) / pct(samples[who], 50)
        rows.append(row)
    log(
        "  crypto: "
        + ", ".join(f"{CRYPTO_LABELS[r['contender']]} {r['us_p50']:.1f} us" for r in rows)
    )
    return {
        "rows": rows,
        "payload_bytes": len(data),
        "sealed_bytes": len(sealed),
        "sdk_bytes": len(theirs),
        "sdk_version": sdk.version,
        "sdk_decrypts_reelvault": True,
    }


# --- 3. where the bytes live -----------------------------------------------------------


def bench_storage(
    backend: Backend, seaweed: SeaweedServer, args: argparse.Namespace
) -> dict[str, Any]:
    with backend.fresh() as url:
        clock = SystemClock()
        db = Database(url)
        db.migrate()
        try:
            vault = Vault.from_parts(
                database=db, root=new_keyring(), store=MemoryObjectStore(), clock=clock
            )
            tenant_id = vault.tenant_keys.create_tenant("payload-storage-bench").id
            store = seaweed.object_store(f"{BUCKET}-{backend.name}")
            pseudonym = secrets.token_hex(16)
            key = Key(subject_key_name(tenant_id, pseudonym), secrets.token_bytes(32))
            results = []
            for size in args.sizes:
                messages = [
                    seal_message(
                        key,
                        object_context(tenant_id, secrets.token_hex(16), KIND_PAYLOAD),
                        json_payload(size, seed=j),
                    )
                    for j in range(4)
                ]
                ops = max(10, round(args.storage_ops / max(1.0, size / KIB) ** 0.5))
                results.append(
                    _storage_size(
                        backend, db, store, tenant_id, pseudonym, size, messages, ops, args
                    )
                )
            return {"sizes": results, "bucket": store.bucket}
        finally:
            db.dispose()


def _storage_size(
    backend: Backend,
    db: Database,
    store: Any,
    tenant_id: str,
    pseudonym: str,
    size: int,
    messages: list[bytes],
    ops: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    stored: dict[str, list[str]] = {who: [] for who in STORE_CONTENDERS}
    rng = random.Random(size)
    now = datetime.now(UTC)

    def row(payload_id: str, message: bytes) -> PayloadRow:
        return PayloadRow(
            id=payload_id,
            tenant_id=tenant_id,
            pseudonym=pseudonym,
            purpose=PURPOSE,
            content_type="application/json",
            labels={},
            size=size,
            message=message,
            created_at=now,
            expires_at=None,
        )

    def put_row(k: int, who: str, message: bytes) -> None:
        payload_id = secrets.token_hex(16)
        with db.transaction() as session:  # as Payloads.put
            session.add(row(payload_id, message))
            session.flush()
        stored[who].append(payload_id)

    def get_row(k: int, who: str) -> bytes:
        payload_id = rng.choice(stored[who])
        with db.transaction(readonly=True) as session:  # as Payloads.get
            found = session.scalar(
                select(PayloadRow).where(
                    PayloadRow.id == payload_id, PayloadRow.tenant_id == tenant_id
                )
            )
            if found is None:
                raise AssertionError("a stored row is missing")
            return found.message

    def put_s3(k: int) -> None:
        object_key = f"t/{tenant_id}/{secrets.token_hex(16)}"
        store.put(object_key, [messages[k % len(messages)]])
        stored[S3].append(object_key)

    def get_s3(k: int) -> bytes:
        return b"".join(store.open_stream(rng.choice(stored[S3])))

    writes: dict[str, Callable[[int, int], None]] = {
        ROW: lambda i, k: put_row(k, ROW, messages[k % len(messages)]),
        META: lambda i, k: put_row(k, META, b""),
        S3: lambda i, k: put_s3(k),
    }

    def check(got: bytes, want: int) -> None:
        if len(got) != want:
            raise AssertionError("a read returned another size")

    sealed_len = len(messages[0])
    reads: dict[str, Callable[[int, int], None]] = {
        ROW: lambda i, k: check(get_row(k, ROW), sealed_len),
        META: lambda i, k: check(get_row(k, META), 0),
        S3: lambda i, k: check(get_s3(k), sealed_len),
    }
    cells = [(op, who) for op in ("write", "read") for who in STORE_CONTENDERS]
    samples: dict[tuple[str, str], list[float]] = {cell: [] for cell in cells}
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {cell: [] for cell in cells}
    for rnd in range(args.warmup + args.storage_rounds):
        warm = rnd < args.warmup
        # writes first in every round, so that reads always have something to pick from;
        # each half rotated on its own
        order = rotated(cells[:3], rnd) + rotated(cells[3:], rnd)
        this_round: dict[tuple[str, str], float] = {}
        for op, who in order:
            fn = (writes if op == "write" else reads)[who]
            lat, wall, cpu = run_threads(fn, 1, ops)
            this_round[(op, who)] = pct(lat, 50)
            if not warm:
                samples[(op, who)].extend(lat)
                rounds[(op, who)].append(
                    {
                        "p50_ms": pct(lat, 50) * 1e3,
                        "ops": len(lat) / wall,
                        "cpu_ms_per_op": cpu / len(lat) * 1e3,
                    }
                )
        log(
            f"  {backend.name:<10} {_size(size):>7} {'warm-up' if warm else f'run {rnd}'}: "
            + ", ".join(f"{op} {who} {this_round[(op, who)] * 1e3:.2f} ms" for op, who in cells)
        )
    rows = []
    for op, who in cells:
        lat = samples[(op, who)]
        r = {
            "op": op,
            "contender": who,
            "label": STORE_LABELS[who],
            **summary(lat, rounds[(op, who)]),
        }
        r["p50_ratio_to_row"] = pct(lat, 50) / pct(samples[(op, ROW)], 50)
        rows.append(r)
    design = {}
    for op in ("write", "read"):
        # the object store design: its metadata row and the object, one after the other
        meta, s3, whole = (pct(samples[(op, w)], 50) for w in (META, S3, ROW))
        design[op] = {
            "catalog_ms": whole * 1e3,
            "object_store_ms": (meta + s3) * 1e3,
            "ratio": (meta + s3) / whole,
        }
    return {
        "size": size,
        "sealed_bytes": sealed_len,
        "ops_per_cell": ops,
        "rows": rows,
        "design": design,
    }


# --- 4. rewrap -----------------------------------------------------------------------------


class TimedTransactions:
    """Wraps one Database's ``transaction`` (on the instance) to add up the time spent
    inside read and write transactions, commit included."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.inner = db.transaction
        self.read_s = self.write_s = 0.0
        self.reads = self.writes = 0
        self.on = False

        @contextlib.contextmanager
        def transaction(*, readonly: bool = False) -> Iterator[Any]:
            if not self.on:
                with self.inner(readonly=readonly) as session:
                    yield session
                return
            t0 = time.perf_counter()
            try:
                with self.inner(readonly=readonly) as session:
                    yield session
            finally:
                spent = time.perf_counter() - t0
                if readonly:
                    self.read_s += spent
                    self.reads += 1
                else:
                    self.write_s += spent
                    self.writes += 1

        db.transaction = transaction  # type: ignore[method-assign]

    def reset(self) -> None:
        self.read_s = self.write_s = 0.0
        self.reads = self.writes = 0

    def restore(self) -> None:
        self.db.transaction = self.inner  # type: ignore[method-assign]


class V2Only:
    """A resolver that knows only the new KEK version: a slot that opens with it alone was
    rewrapped."""

    def __init__(self, name: str, key: bytes) -> None:
        self._name, self._key = name, key

    def wrapping_key(self, key_name: str) -> bytes | None:
        return self._key if key_name == self._name else None


def bench_rewrap(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    with backend.fresh() as url:
        clock = SystemClock()
        db = Database(url)
        db.migrate()
        try:
            vault = Vault.from_parts(
                database=db, root=new_keyring(), store=MemoryObjectStore(), clock=clock
            )
            tenant_id = vault.tenant_keys.create_tenant("rewrap-bench").id
            kek1 = vault.tenant_keys.encryption_kek(tenant_id)
            now = datetime.now(UTC)
            empty = hashlib.sha256(b"").digest()

            t0 = time.perf_counter()
            seal_s = insert_s = 0.0
            headers: list[tuple[str, bytes]] = []
            done = 0
            while done < args.assets:
                k = min(FILL_BATCH, args.assets - done)
                s0 = time.perf_counter()
                rows = []
                for j in range(done, done + k):
                    asset_id = secrets.token_hex(16)
                    header = Sealer(kek1, asset_context(tenant_id, asset_id)).header
                    if len(headers) < args.sample:
                        headers.append((asset_id, header))
                    rows.append(
                        {
                            "id": asset_id,
                            "tenant_id": tenant_id,
                            "path": f"bench/rewrap/{j:07d}.mov",
                            "content_type": "video/quicktime",
                            "labels": {},
                            "size": 0,
                            "sha256": empty,
                            "object_key": f"t/{tenant_id}/{secrets.token_hex(16)}",
                            "header": header,
                            "key_slot": None,
                            "kek_version": kek1.version,
                            "created_at": now,
                            "subject": None,
                        }
                    )
                s1 = time.perf_counter()
                with db.transaction() as session:
                    session.execute(insert(AssetRow), rows)
                insert_s += time.perf_counter() - s1
                seal_s += s1 - s0
                done += k
            done = 0
            while done < args.subject_keys:
                k = min(FILL_BATCH, args.subject_keys - done)
                rows = []
                for _ in range(k):
                    pseudonym = secrets.token_hex(16)
                    wrapped = wrap_key(
                        kek1, secrets.token_bytes(32), subject_key_context(tenant_id, pseudonym)
                    )
                    rows.append(
                        {
                            "tenant_id": tenant_id,
                            "pseudonym": pseudonym,
                            "wrapped_key": wrapped.serialize(),
                            "kek_version": kek1.version,
                            "created_at": now,
                            "erased_at": None,
                            "legal_hold": False,
                        }
                    )
                with db.transaction() as session:
                    session.execute(insert(SubjectRow), rows)
                done += k
            fill_s = time.perf_counter() - t0
            log(
                f"  {backend.name:<10} filled {args.assets:,} assets and {args.subject_keys:,} "
                f"subject keys in {fill_s:.1f} s (sealing {seal_s:.1f} s, inserts {insert_s:.1f} s)"
            )

            version = vault.tenant_keys.rotate(tenant_id)
            kek2 = vault.tenant_keys.encryption_kek(tenant_id)
            pending = vault.lifecycle.status(tenant_id).keys_to_rewrap
            if pending != {"asset": args.assets, "subject": args.subject_keys}:
                raise AssertionError(f"keys to rewrap before: {pending}")

            # rewrap_data_key alone, in memory, on the same kind of header (KEK v1 -> v2)
            resolver = vault.tenant_keys.resolver(tenant_id)
            s0 = time.perf_counter()
            for asset_id, header in headers:
                rewrap_data_key(header, resolver, asset_context(tenant_id, asset_id), kek2)
            crypto_us = (time.perf_counter() - s0) / max(1, len(headers)) * 1e6

            timed = TimedTransactions(db)
            steps: list[dict[str, Any]] = []
            last = [time.perf_counter(), 0]
            started = time.perf_counter()

            def progress(step: RewrapProgress) -> None:
                t = time.perf_counter()
                steps.append(
                    {"kind": step.kind, "moved": step.moved, "done": step.done, "t": t - started}
                )
                if step.moved - last[1] >= 10_000 or step.done:
                    rate = (step.moved - last[1]) / max(1e-9, t - last[0])
                    log(
                        f"  {backend.name:<10} rewrap {step.kind:<8} {step.moved:>8,} moved "
                        f"({t - started:6.1f} s, {rate:6.0f} keys/s lately)"
                    )
                    last[0], last[1] = t, step.moved
                if step.done:
                    last[0], last[1] = t, 0

            gc.collect()
            c0 = cpu_now()
            timed.on = True
            started = time.perf_counter()
            last[0] = started
            moved = vault.lifecycle.rewrap(tenant_id, progress=progress)
            total_s = time.perf_counter() - started
            timed.on = False
            cpu_s = cpu_now() - c0
            timed.restore()

            if moved != {"subject": args.subject_keys, "asset": args.assets}:
                raise AssertionError(f"rewrap moved {moved}")
            left = vault.lifecycle.status(tenant_id).keys_to_rewrap
            if any(left.values()):
                raise AssertionError(f"keys left under an older version: {left}")
            only_v2 = V2Only(kek2.name, kek2.key)
            with db.transaction(readonly=True) as session:
                sample = list(
                    session.execute(
                        select(AssetRow.id, AssetRow.header, AssetRow.key_slot)
                        .where(AssetRow.tenant_id == tenant_id)
                        .order_by(func.random())
                        .limit(20)
                    )
                )
            for asset_id, header, slot in sample:
                if slot is None:
                    raise AssertionError("an asset has no key slot after the rewrap")
                open_header(
                    parse_header(header),
                    only_v2,
                    asset_context(tenant_id, asset_id),
                    data_keys=[EncryptedDataKey.parse(slot)],
                )

            # the floor: the same UPDATE through the raw driver, with freshly rewrapped
            # (valid, different) slots for some of the rows, one commit each
            with db.transaction(readonly=True) as session:
                picked = list(
                    session.execute(
                        select(AssetRow.id, AssetRow.header, AssetRow.kek_version)
                        .where(AssetRow.tenant_id == tenant_id)
                        .order_by(AssetRow.id)
                        .limit(args.sample)
                    )
                )
            fresh = [
                (
                    asset_id,
                    rewrap_data_key(
                        header, resolver, asset_context(tenant_id, asset_id), kek2
                    ).serialize(),
                    version,
                )
                for asset_id, header, version in picked
            ]
            floor_ms = write_floor(backend, db, url, fresh)

            per_kind = {}
            for kind in ("subject", "asset"):
                seconds = [s["t"] for s in steps if s["kind"] == kind][-1] - per_kind_begin(
                    steps, kind
                )
                per_kind[kind] = {
                    "keys": moved[kind],
                    "seconds": seconds,
                    "keys_per_s": moved[kind] / seconds if seconds else float("nan"),
                }
            asset_steps = [s for s in steps if s["kind"] == "asset"]
            batch_rates = []
            prev_t, prev_n = per_kind_begin(steps, "asset"), 0
            for s in asset_steps:
                if s["moved"] > prev_n:
                    batch_rates.append((s["moved"] - prev_n) / (s["t"] - prev_t))
                prev_t, prev_n = s["t"], s["moved"]
            keys = args.assets + args.subject_keys
            other_s = total_s - timed.read_s - timed.write_s
            result = {
                "assets": args.assets,
                "subject_keys": args.subject_keys,
                "new_version": version,
                "fill_seconds": fill_s,
                "fill_seal_seconds": seal_s,
                "fill_insert_seconds": insert_s,
                "seconds": total_s,
                "keys_per_s": keys / total_s,
                "cpu_seconds": cpu_s,
                "per_kind": per_kind,
                "asset_batch_keys_per_s": {
                    "first": batch_rates[0] if batch_rates else None,
                    "median": statistics.median(batch_rates) if batch_rates else None,
                    "last": batch_rates[-1] if batch_rates else None,
                },
                "breakdown": {
                    "read_transactions": timed.reads,
                    "read_seconds": timed.read_s,
                    "write_transactions": timed.writes,
                    "write_seconds": timed.write_s,
                    "write_ms_per_key": timed.write_s / max(1, timed.writes) * 1e3,
                    "other_seconds": other_s,
                    "other_ms_per_key": other_s / keys * 1e3,
                    "update_ms_per_key": floor_ms,
                    "rewrap_data_key_us_alone": crypto_us,
                    "rewrap_data_key_sample": len(headers),
                },
                "checked_slots": len(sample),
                "steps": steps,
            }
            log(
                f"  {backend.name:<10} rewrap of {keys:,} keys: {total_s:.1f} s, "
                f"{keys / total_s:,.0f} keys/s; write transactions {timed.write_s:.1f} s, "
                f"batch reads {timed.read_s:.1f} s, the rest {other_s:.1f} s"
            )
            return result
        finally:
            db.dispose()


def write_floor(
    backend: Backend, db: Database, url: str, rows: list[tuple[str, bytes, int]]
) -> dict[str, float]:
    """Milliseconds per key of the rewrap's UPDATE, one transaction per key, three ways
    taking turns key by key: through ``Database.transaction`` and an ORM session (what
    ``Assets.rewrap_batch`` does), through ``Database.engine.begin()`` (SQLAlchemy Core, no
    session), and through the raw driver (the floor: statement and commit alone). ``rows``
    are (asset id, a new slot, its version); the slots must differ from the stored ones
    (SQLite skips writing an identical row, and a commit with nothing to write does not
    sync)."""
    sql = "UPDATE assets SET key_slot = {0}, kek_version = {0} WHERE id = {0} AND kek_version = {0}"
    perf = time.perf_counter
    spent = {"orm": 0.0, "core": 0.0, "raw": 0.0}
    counts = dict.fromkeys(spent, 0)

    def statement(asset_id: str, slot: bytes, version: int) -> Any:
        return (
            update(AssetRow)
            .where(AssetRow.id == asset_id, AssetRow.kek_version == version)
            .values(key_slot=slot, kek_version=version)
        )

    def orm(asset_id: str, slot: bytes, version: int) -> int:
        with db.transaction() as session:
            return int(session.execute(statement(asset_id, slot, version)).rowcount)  # type: ignore[attr-defined]

    def core(asset_id: str, slot: bytes, version: int) -> int:
        with db.engine.begin() as conn:
            return int(conn.execute(statement(asset_id, slot, version)).rowcount)

    if backend.name == "sqlite":
        # as reelvault.catalog.db sets SQLite up: WAL, synchronous FULL (the default),
        # BEGIN IMMEDIATE for a write
        raw_conn: Any = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        raw_conn.execute("PRAGMA busy_timeout=5000")
        raw_conn.execute("PRAGMA journal_mode=WAL")
        update_sql = sql.format("?")

        def raw(asset_id: str, slot: bytes, version: int) -> int:
            raw_conn.execute("BEGIN IMMEDIATE")
            moved = raw_conn.execute(update_sql, (slot, version, asset_id, version)).rowcount
            raw_conn.execute("COMMIT")
            return int(moved)

    else:
        raw_conn = backend.direct(url)  # autocommit: each statement commits
        update_sql = sql.format("%s")

        def raw(asset_id: str, slot: bytes, version: int) -> int:
            return int(raw_conn.execute(update_sql, (slot, version, asset_id, version)).rowcount)

    ways: dict[str, Callable[[str, bytes, int], int]] = {"orm": orm, "core": core, "raw": raw}
    names = list(ways)
    try:
        for k, (asset_id, slot, version) in enumerate(rows):
            name = names[(k + k // len(names)) % len(names)]  # turns, first place rotating
            t0 = perf()
            moved = ways[name](asset_id, slot, version)
            spent[name] += perf() - t0
            counts[name] += 1
            if moved != 1:
                raise AssertionError("an UPDATE missed its row")
    finally:
        raw_conn.close()
    return {name: spent[name] / max(1, counts[name]) * 1e3 for name in names}


def per_kind_begin(steps: list[dict[str, Any]], kind: str) -> float:
    """When ``kind`` started: the time of the step before its first (0 if none)."""
    for i, s in enumerate(steps):
        if s["kind"] == kind:
            return steps[i - 1]["t"] if i else 0.0
    return 0.0


# --- environment and report ------------------------------------------------------------


def print_environment(env: dict[str, Any]) -> None:
    print("reelvault personalization payload benchmark")
    print(f"  python        {env['python']}  ({env['platform']})")
    print(f"  cpu           {env['cpu']}  x{env['cpu_count']}")
    print(f"  load average  {' '.join(f'{x:.2f}' for x in env['loadavg_start'])} (at start)")
    print(
        f"  calibration   {env['calibration_ms_start']:.1f} ms (fixed Python loop; lower: faster)"
    )
    print(f"  grpcio {env['grpcio']}  SQLAlchemy {env['sqlalchemy']}  psycopg {env['psycopg']}")
    print(f"  aws-encryption-sdk {env['aws_encryption_sdk']}  SeaweedFS {env['seaweedfs']}")
    for name, info in env["backends"].items():
        print(f"  {name:<13} {' '.join(f'{k}={v}' for k, v in info.items())}")
    print(f"  git           {env['git_commit']}")
    print()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(
    results: dict[str, dict[str, Any]], crypto: dict[str, Any] | None, args: argparse.Namespace
) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    if any("rpc" in r for r in results.values()):
        first = next(r["rpc"] for r in results.values() if "rpc" in r)
        print(
            f"1. payload RPCs vs HashSubject (the trivial RPC), same server, auth and audit; "
            f"{first['payload_bytes']:,} B JSON ({first['sealed_bytes']:,} B sealed); "
            f"{args.rounds} interleaved rounds of {args.calls} calls per cell"
        )
        head = (
            f"{'backend':<11}{'clients':>7}  {'RPC':<22}{'p50':>9} {'x trivial':>9} "
            f"{'p99':>10} {'x trivial':>9} {'ops/s':>7} {'CPU ms/op':>10}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            for row in res.get("rpc", {}).get("rows", []):
                print(
                    f"{name:<11}{row['clients']:>7}  {row['label']:<22}"
                    f"{row['p50_ms']:>6.2f} ms {row['p50_ratio']:>8.2f}x "
                    f"{row['p99_ms']:>7.2f} ms {row['p99_ratio']:>8.2f}x {row['ops']:>7.0f} "
                    f"{row['cpu_ms_per_op']:>10.2f}"
                )
                if row["contender"] in (GET, PUT) and row["clients"] == 1:
                    targets.append(
                        {
                            "name": f"{name}: {row['label']} p50 <= {TARGET_P50_RATIO}x "
                            "HashSubject (1 client)",
                            "measured": f"{row['p50_ratio']:.2f}x (rounds "
                            + ", ".join(f"{x:.2f}" for x in row["p50_ratio_rounds"])
                            + ")",
                            "ok": row["p50_ratio"] <= TARGET_P50_RATIO,
                        }
                    )
            domain = res.get("rpc", {}).get("domain")
            if domain:
                print(
                    f"{name:<11}in process (no gRPC, no authentication, no audit event), p50: "
                    + ", ".join(f"{d['label']} {_ms(d['p50_ms'])}" for d in domain)
                )
            for d in res.get("rpc", {}).get("domain_breakdown", []):
                print(
                    f"{name:<11}  {d['label']:<22} {_ms(d['ms_per_call'])} per call: "
                    f"{d['read_transactions_per_call']:.0f} read + "
                    f"{d['write_transactions_per_call']:.0f} write transactions "
                    f"{_ms(d['transaction_ms_per_call'])}, the rest {_ms(d['rest_ms_per_call'])}"
                )
        print("ops/s: median over rounds; CPU: this process (clients, server, sequencer) per call.")
        print()

    if crypto:
        print(
            f"2. {crypto['payload_bytes']:,} B payload in process: reelvault vs the official "
            f"aws-encryption-sdk {crypto['sdk_version']} (one-shot API, suite 0x0478); "
            f"sealed {crypto['sealed_bytes']} B, SDK message {crypto['sdk_bytes']} B"
        )
        head = f"{'operation':<30}{'p50':>10} {'p99':>10} {'ops/s':>8} {'x SDK speed':>12}"
        print(head)
        print("-" * len(head))
        for row in crypto["rows"]:
            print(
                f"{row['label']:<30}{row['p50_ms'] * 1e3:>7.1f} us {row['p99_ms'] * 1e3:>7.1f} us "
                f"{row['ops']:>8.0f} {row['speedup_vs_sdk']:>11.1f}x"
            )
        print("the SDK decrypts reelvault's sealed payload: checked before timing")
        print()

    if any("storage" in r for r in results.values()):
        print(
            f"3. a sealed payload in the catalog vs in SeaweedFS, {args.storage_rounds} "
            "interleaved rounds (p50 of pooled latencies)"
        )
        head = (
            f"{'backend':<11}{'size':>8}  {'op':<6}{'catalog row':>12} {'metadata row':>13} "
            f"{'S3 object':>10} {'S3 x row':>9} {'meta+S3 x row':>14}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            for size in res.get("storage", {}).get("sizes", []):
                by = {(r["op"], r["contender"]): r for r in size["rows"]}
                for op in ("write", "read"):
                    print(
                        f"{name:<11}{_size(size['size']):>8}  {op:<6}"
                        f"{by[(op, ROW)]['p50_ms']:>9.2f} ms {by[(op, META)]['p50_ms']:>10.2f} ms "
                        f"{by[(op, S3)]['p50_ms']:>7.2f} ms "
                        f"{by[(op, S3)]['p50_ratio_to_row']:>8.2f}x "
                        f"{size['design'][op]['ratio']:>13.2f}x"
                    )
        print(
            "write: ORM insert + commit (catalog), one PUT (S3ObjectStore.put); read: select by "
            "id and tenant (catalog), one GET read whole (open_stream). meta+S3: what a payload "
            "in the object store would cost (its metadata row, then the object)."
        )
        print()

    if any("rewrap" in r for r in results.values()):
        print("4. rewrap after TenantKeys.rotate (TenantLifecycle.rewrap, 500 keys per batch)")
        head = (
            f"{'backend':<11}{'asset keys':>11} {'subject keys':>13} {'total':>9} "
            f"{'keys/s':>7} {'asset/s':>8} {'subject/s':>10} {'write txn/key':>14} "
            f"{'batch reads':>12} {'rest/key':>9}"
        )
        print(head)
        print("-" * len(head))
        for name, res in results.items():
            rw = res.get("rewrap")
            if not rw:
                continue
            b = rw["breakdown"]
            print(
                f"{name:<11}{rw['assets']:>11,} {rw['subject_keys']:>13,} {rw['seconds']:>7.1f} s "
                f"{rw['keys_per_s']:>7.0f} {rw['per_kind']['asset']['keys_per_s']:>8.0f} "
                f"{rw['per_kind']['subject']['keys_per_s']:>10.0f} "
                f"{b['write_ms_per_key']:>11.2f} ms {b['read_seconds']:>10.1f} s "
                f"{b['other_ms_per_key']:>6.2f} ms"
            )
            rates = rw["asset_batch_keys_per_s"]
            print(
                f"{name:<11}asset batches: {rates['first']:.0f} keys/s first, "
                f"{rates['median']:.0f} median, {rates['last']:.0f} last; rewrap_data_key "
                f"alone {b['rewrap_data_key_us_alone']:.0f} us/key; "
                f"fill {rw['fill_seconds']:.0f} s "
                f"(not timed); {rw['checked_slots']} slots checked against version 2 alone"
            )
            u = b["update_ms_per_key"]
            print(
                f"{name:<11}the UPDATE alone, one transaction per key, taking turns: "
                f"Database.transaction + ORM session {u['orm']:.2f} ms, SQLAlchemy Core "
                f"{u['core']:.2f} ms, raw driver {u['raw']:.2f} ms"
            )
        print(
            "write txn: each key's own UPDATE transaction, commit included; batch reads: the "
            "500-key SELECTs; rest: unwrap and rewrap, Python."
        )
        print()

    print("targets")
    for t in targets:
        t["verdict"] = verdict(t["ok"])
        print(f"  {t['verdict']}  {t['name']:<62} measured {t['measured']}")
    print()
    return targets


def _ms(ms: float) -> str:
    return f"{ms * 1e3:.0f} us" if ms < 0.1 else f"{ms:.2f} ms"


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB" if n >= KIB else f"{n} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.payload_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, postgresql")
    parser.add_argument(
        "--parts",
        default="rpc,crypto,storage,rewrap",
        help="comma-separated: rpc,crypto,storage,rewrap",
    )
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
    parser.add_argument("--payload-bytes", type=int, default=KIB, help="the JSON payload")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds first")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds, parts 1 and 2")
    parser.add_argument("--calls", type=int, default=300, help="calls per cell and round, part 1")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="clients at once besides 1 (1: only 1)"
    )
    parser.add_argument("--subjects", type=int, default=64, help="viewers with a payload each")
    parser.add_argument(
        "--no-domain", dest="domain", action="store_false", help="skip the in-process calls"
    )
    parser.add_argument(
        "--crypto-ops", type=int, default=500, help="ops per cell and round, part 2"
    )
    parser.add_argument(
        "--sizes", default="1024,65536,1048576", help="payload sizes in bytes, part 3"
    )
    parser.add_argument("--storage-rounds", type=int, default=5, help="timed rounds, part 3")
    parser.add_argument(
        "--storage-ops",
        type=int,
        default=200,
        help="ops per cell and round at 1 KiB, part 3 (divided by sqrt(size in KiB), at least 10)",
    )
    parser.add_argument("--assets", type=int, default=100_000, help="asset keys to rewrap")
    parser.add_argument("--subject-keys", type=int, default=10_000, help="subject keys to rewrap")
    parser.add_argument(
        "--sample", type=int, default=2000, help="headers rewrapped alone in memory, part 4"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not set(backends) <= {"sqlite", "postgresql"} or not backends:
        parser.error("--backends takes sqlite and/or postgresql")
    if not set(parts) <= {"rpc", "crypto", "storage", "rewrap"} or not parts:
        parser.error("--parts takes rpc, crypto, storage and/or rewrap")
    if args.postgres_database in RESERVED_DATABASES:
        parser.error(f"--postgres-database must not be {args.postgres_database!r}")
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if min(args.sizes) < 512 or max(args.sizes) > 4 * MIB:
        parser.error("--sizes are 512 bytes to 4 MiB")
    if args.rounds < 1 or args.storage_rounds < 1 or args.warmup < 0 or args.calls < 8:
        parser.error("rounds >= 1, warmup >= 0, calls >= 8")
    if args.assets < 1 or args.subject_keys < 1 or args.subjects < 1 or args.concurrency < 1:
        parser.error("assets, subject keys, subjects and concurrency are at least 1")
    configure_logging("warning", "json")  # no per-call access log lines on stderr

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup: keep ignoring SIGHUP
            signal.signal(signum, interrupt)

    root = Path(tempfile.mkdtemp(prefix="rv-payload-bench-"))
    objs = [
        Backend(
            name,
            root,
            admin_url=args.postgres_url if name == "postgresql" else "",
            database=args.postgres_database if name == "postgresql" else "",
        )
        for name in backends
    ]
    seaweed: SeaweedServer | None = None
    try:
        env = environment(objs)
        import aws_encryption_sdk  # noqa: PLC0415

        env["aws_encryption_sdk"] = aws_encryption_sdk.__version__
        env["seaweedfs"] = _weed_version()
        print_environment(env)
        results: dict[str, dict[str, Any]] = {b.name: {} for b in objs}
        crypto: dict[str, Any] | None = None
        started = time.perf_counter()
        for part in ("rpc", "crypto", "storage", "rewrap"):
            if part not in parts:
                continue
            if part == "crypto":
                log("crypto ...")
                crypto = bench_crypto(args)
                continue
            if part == "storage" and seaweed is None:
                seaweed = SeaweedServer(root / "seaweedfs").start()
            for backend in objs:
                log(f"{part} on {backend.name} ...")
                t0 = time.perf_counter()
                if part == "rpc":
                    out = bench_rpc(backend, args)
                elif part == "storage":
                    assert seaweed is not None
                    out = bench_storage(backend, seaweed, args)
                else:
                    out = bench_rewrap(backend, args)
                out["wall_seconds"] = time.perf_counter() - t0
                out["calibration_ms_after"] = calibrate()
                results[backend.name][part] = out
        targets = report(results, crypto, args)
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
            config["target_p50_ratio"] = TARGET_P50_RATIO
            result = {
                "environment": env,
                "config": config,
                "results": results,
                "crypto": crypto,
                "targets": targets,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        return 0
    finally:
        if seaweed is not None:
            with contextlib.suppress(Exception):
                seaweed.stop()
        for backend in objs:
            with contextlib.suppress(Exception):
                backend.drop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _weed_version() -> str:
    try:
        out = subprocess.run(
            [str(find_weed()), "version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    return words[2] if len(words) > 2 else out.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
