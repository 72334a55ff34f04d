"""Two ``reelvault serve`` processes writing one catalog's audit log under concurrent
load (PostgreSQL in CI's ``-m db`` run, SQLite otherwise): every tenant's log has no gap
and no duplicate, and every proof verifies against a checkpoint of either replica."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rpc_harness import CHANNEL_OPTIONS, bearer
from serve_process import Process, serve_environment

from reelvault.app import Vault
from reelvault.audit import merkle
from reelvault.audit.verify import verify_export
from reelvault.auth import Role
from reelvault.catalog import Database
from reelvault.clock import SystemClock
from reelvault.keys import LocalKeyring, init_keyring
from reelvault.storage import MemoryObjectStore
from reelvault.storage.seaweed import SeaweedServer
from reelvault.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)

pytestmark = pytest.mark.db

CALLS_PER_CLIENT = 40
CLIENTS = 8


@pytest.fixture
def replicas(database: Database, seaweed: SeaweedServer, tmp_path: Path) -> Iterator[list[int]]:
    keyring = tmp_path / "keyring.json"
    init_keyring(keyring)
    processes = [
        Process(
            serve_environment(
                database, seaweed, keyring, tmp_path / f"data{n}", "reelvault-replicas"
            )
        )
        for n in range(2)
    ]
    try:
        yield [p.wait_for_event("listening")["port"] for p in processes]
    finally:
        for process in processes:
            process.stop()


def test_two_replicas_leave_no_gap_or_duplicate_and_every_proof_verifies(
    replicas: list[int], database: Database, tmp_path: Path
):
    # Keys and tenants made through the domain (the same catalog and keyring).
    vault = Vault.from_parts(
        database=database,
        root=LocalKeyring.load(tmp_path / "keyring.json"),
        store=MemoryObjectStore(),
        clock=SystemClock(),
    )
    tenants = [vault.tenant_keys.create_tenant(name) for name in ("acme", "globex")]
    tokens = {
        (t.id, role): vault.api_keys.create(tenant_id=t.id, role=role)[1]
        for t in tenants
        for role in (Role.RENDERER, Role.AUDITOR)
    }
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) for port in replicas
    ]
    errors: list[BaseException] = []
    counts = dict.fromkeys((t.id for t in tenants), 0)
    lock = threading.Lock()

    def client(n: int) -> None:
        tenant = tenants[n % 2]
        metadata = bearer(tokens[(tenant.id, Role.RENDERER)])
        try:
            for i in range(CALLS_PER_CLIENT):
                channel = channels[(n + i) % 2]
                if i % 3 == 0:
                    tenant_pb2_grpc.TenantServiceStub(channel).GetTenant(
                        tenant_pb2.GetTenantRequest(tenant_id=tenant.id), metadata=metadata
                    )
                elif i % 3 == 1:
                    asset_pb2_grpc.AssetServiceStub(channel).ListAssets(
                        asset_pb2.ListAssetsRequest(), metadata=metadata
                    )
                else:  # a failed call is recorded too
                    with pytest.raises(grpc.RpcError):
                        asset_pb2_grpc.AssetServiceStub(channel).StatAsset(
                            asset_pb2.StatAssetRequest(asset_id="f" * 32), metadata=metadata
                        )
                with lock:
                    counts[tenant.id] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]

    for tenant in tenants:
        auditor = bearer(tokens[(tenant.id, Role.AUDITOR)])
        first, second = (audit_pb2_grpc.AuditServiceStub(c) for c in channels)
        checkpoint = first.GetCheckpoint(audit_pb2.GetCheckpointRequest(), metadata=auditor)
        records = list(
            second.ExportAuditEvents(
                audit_pb2.ExportAuditEventsRequest(to_sequence=checkpoint.size), metadata=auditor
            )
        )
        assert [r.sequence for r in records] == list(range(checkpoint.size))
        # the tenant's creation, every call, and the checkpoint read
        assert checkpoint.size >= counts[tenant.id] + 2
        report = verify_export(
            [r.record for r in records], checkpoint.note, checkpoint.verifier_key
        )
        assert report.ok, report.problems
        uids = [r.record for r in records]
        assert len(set(uids)) == len(uids)
        for seq in range(0, checkpoint.size, 7):
            proof = second.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(sequence=seq, tree_size=checkpoint.size),
                metadata=auditor,
            )
            assert proof.leaf_hash == merkle.leaf_hash(records[seq].record)
            assert merkle.verify_inclusion(
                proof.leaf_hash, seq, checkpoint.size, list(proof.hashes), checkpoint.root_hash
            )
    for channel in channels:
        channel.close()
