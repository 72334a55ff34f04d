"""Traces of real calls (reelvault.tracing): one server span per call, with the store, the
catalog and the root key provider as its children, across the worker threads the domain
runs in; streamed uploads and downloads intact under tracing; nothing secret in a span.

Spans go to an in-memory exporter, installed as ``serve`` installs the OTLP one."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from rpc_harness import CHANNEL_OPTIONS, MiB, Stubs, Tenancy, bearer, wait_for
from serve_process import Process, serve_environment

from reelvault import tracing
from reelvault.app import Vault
from reelvault.auth import ApiKeys, Role
from reelvault.clock import SystemClock
from reelvault.config import Settings
from reelvault.keys import init_keyring
from reelvault.storage.seaweed import SeaweedServer
from reelvault.v1 import apikey_pb2, asset_pb2, tenant_pb2

pytestmark = pytest.mark.db

UPLOAD = "reelvault.v1.AssetService/Upload"
DOWNLOAD = "reelvault.v1.AssetService/Download"
PATH = "secret-campaign/launch-reel.ts"
MISSING = "0" * 32  # a well-formed asset id that no asset has


@pytest.fixture
def vault(database, root_provider, clock, memory_store) -> Vault:
    """Instrumented as Vault.from_settings instruments a production vault."""
    return Vault.from_parts(
        database=database, root=root_provider, store=memory_store, clock=clock, instrumented=True
    )


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing._installed(provider):
        yield exporter
    provider.shutdown()


def upload_requests(data: bytes, chunk: int = MiB) -> Iterator[asset_pb2.UploadRequest]:
    yield asset_pb2.UploadRequest(metadata=asset_pb2.AssetMetadata(path=PATH))
    for at in range(0, len(data), chunk):
        yield asset_pb2.UploadRequest(chunk=data[at : at + chunk])
    yield asset_pb2.UploadRequest(end=asset_pb2.UploadEnd())


def server_spans(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """The server spans of calls to ``name``, once ``count`` have ended (a span ends as
    the handler returns, which can be just after the client has its answer)."""
    return wait_for(
        lambda: [
            s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER and s.name == name
        ],
        count=count,
    )


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def operations(spans: list[ReadableSpan], dependency: str) -> set[str]:
    return {
        str(s.attributes[tracing.OPERATION])
        for s in spans
        if s.attributes and s.attributes.get(tracing.DEPENDENCY) == dependency
    }


def upload(api: Stubs, tenant: Tenancy, data: bytes, request_id: str) -> asset_pb2.Asset:
    metadata = tenant.md(Role.INGEST, ("x-request-id", request_id))
    return api.assets.Upload(upload_requests(data), metadata=metadata)


def download(api: Stubs, tenant: Tenancy, asset_id: str, request_id: str) -> bytes:
    metadata = tenant.md(Role.RENDERER, ("x-request-id", request_id))
    responses = api.assets.Download(asset_pb2.DownloadRequest(asset_id=asset_id), metadata=metadata)
    return b"".join(r.chunk for r in responses if r.WhichOneof("payload") == "chunk")


def test_an_upload_is_one_server_span_with_store_catalog_and_key_provider_children(
    api: Stubs, acme: Tenancy, vault: Vault, exporter: InMemorySpanExporter
):
    vault.tenant_keys.clear_cache()  # so that the upload asks the root key provider
    data = os.urandom(3 * MiB + 5)  # several parts of the store's 256 KiB
    asset = upload(api, acme, data, "upload-1")
    assert asset.size == len(data)

    (span,) = server_spans(exporter, UPLOAD)
    assert span.attributes is not None
    assert span.attributes[tracing.REQUEST_ID] == "upload-1"
    assert span.attributes[tracing.TENANT_ID] == acme.id
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert span.status.status_code == StatusCode.UNSET
    below = children(exporter, span)
    assert {"begin", "upload", "upload_complete"} <= operations(below, "store")
    assert "unwrap" in operations(below, "key_provider")
    assert {"select", "insert"} <= operations(below, "catalog")
    (whole,) = [s for s in below if s.name == "store upload"]
    assert whole.attributes is not None
    assert int(str(whole.attributes[tracing.BYTES])) > len(data)  # ciphertext: framed, tagged
    assert all(s.context is not None and s.context.trace_id == span.context.trace_id for s in below)


def test_a_streamed_download_is_byte_identical_and_traced(
    api: Stubs, acme: Tenancy, vault: Vault, exporter: InMemorySpanExporter
):
    data = os.urandom(6 * MiB + 17)
    asset = upload(api, acme, data, "upload-2")
    vault.tenant_keys.clear_cache()  # so that the download asks the root key provider

    assert download(api, acme, asset.id, "download-2") == data

    (span,) = server_spans(exporter, DOWNLOAD)
    assert span.attributes is not None
    assert span.attributes[tracing.REQUEST_ID] == "download-2"
    assert span.status.status_code == StatusCode.UNSET
    below = children(exporter, span)
    assert "select" in operations(below, "catalog")
    assert "unwrap" in operations(below, "key_provider")
    store = operations(below, "store")
    assert store, "the download read the store outside its trace"
    read = [
        int(str(s.attributes[tracing.BYTES]))
        for s in below
        if s.attributes
        and s.attributes.get(tracing.DEPENDENCY) == "store"
        and tracing.BYTES in s.attributes
    ]
    assert sum(read) > len(data)  # every byte of the object came through a traced read


def test_a_failed_call_sets_the_span_status(
    api: Stubs, acme: Tenancy, exporter: InMemorySpanExporter
):
    with pytest.raises(grpc.RpcError) as caught:
        download(api, acme, MISSING, "missing-1")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    (span,) = server_spans(exporter, DOWNLOAD)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "NOT_FOUND"
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert span.attributes[tracing.REQUEST_ID] == "missing-1"


def test_no_span_carries_a_path_token_object_key_or_key_material(
    api: Stubs, acme: Tenancy, vault: Vault, root_provider, exporter: InMemorySpanExporter
):
    vault.tenant_keys.clear_cache()
    data = os.urandom(MiB + 3)
    asset = upload(api, acme, data, "upload-3")
    vault.tenant_keys.clear_cache()
    assert download(api, acme, asset.id, "download-3") == data
    spans = [*server_spans(exporter, UPLOAD), *server_spans(exporter, DOWNLOAD)]
    assert len(spans) == 2

    secrets: list[bytes] = [PATH.encode(), f"t/{acme.id}/".encode()]
    secrets += [token.encode() for token in acme.tokens.values()]
    for wrapped, (key, _) in root_provider._keys.items():
        for material in (key, wrapped):
            secrets += [material, material.hex().encode(), base64.b64encode(material)]
    for span in exporter.get_finished_spans():
        texts = [span.name, span.status.description or ""]
        for value in (span.attributes or {}).values():
            values = value if isinstance(value, tuple) else (value,)
            for item in values:
                assert not isinstance(item, bytes), f"{span.name}: bytes in an attribute"
                texts.append(str(item))
        texts += [event.name for event in span.events]
        for text in texts:
            for secret in secrets:
                assert secret not in text.encode(), f"{span.name}: {text!r} leaks"


def test_a_callers_trace_continues_on_the_server(
    api: Stubs, acme: Tenancy, exporter: InMemorySpanExporter
):
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = f"00-{trace_id}-{parent_id}-01"
    with pytest.raises(grpc.RpcError):
        api.assets.Download(
            asset_pb2.DownloadRequest(asset_id=MISSING),
            metadata=acme.md(Role.RENDERER, ("traceparent", traceparent)),
        ).next()

    (span,) = server_spans(exporter, DOWNLOAD)
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == trace_id
    assert f"{span.parent.span_id:016x}" == parent_id


def test_work_outside_calls_is_not_traced(
    acme: Tenancy, vault: Vault, exporter: InMemorySpanExporter
):
    """Background work (probes, the audit sequencer) would otherwise send a stream of
    root spans of its own."""
    vault.tenant_keys.clear_cache()
    vault.tenant_keys.encryption_kek(acme.id)  # the catalog and the key provider
    assert list(vault.store.list_keys("t/")) == []
    assert exporter.get_finished_spans() == ()


def test_calls_are_not_traced_unless_tracing_is_on(api: Stubs, acme: Tenancy):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # made, never installed
    upload(api, acme, b"frames", "upload-4")
    assert exporter.get_finished_spans() == ()


def test_serve_traces_only_when_an_endpoint_is_set():
    async def states() -> list[bool]:
        seen = []
        async with tracing.exporting(Settings()):
            seen.append(tracing._tracer is not None)
        # Nothing listens there; with no span to send, the exporter never connects.
        async with tracing.exporting(Settings(tracing_endpoint="http://127.0.0.1:9")):
            seen.append(tracing._tracer is not None)
        seen.append(tracing._tracer is not None)
        return seen

    assert asyncio.run(states()) == [False, True, False]


# -- serve, exporting to a collector ---------------------------------------------------


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector that keeps the spans it is sent."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.service_names: set[str] = set()
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.service_names.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield collector, port
    finally:
        server.stop(None)


def test_serve_sends_the_traces_of_an_upload_and_a_download_before_it_exits(
    database, seaweed: SeaweedServer, tmp_path: Path, collector
):
    sink, collector_port = collector
    keyring = tmp_path / "keyring.json"
    init_keyring(keyring)
    environment = serve_environment(
        database, seaweed, keyring, tmp_path / "data", "reelvault-tracing"
    )
    environment["REELVAULT_TRACING_ENDPOINT"] = f"http://127.0.0.1:{collector_port}"
    environment["REELVAULT_TRACING_SERVICE_NAME"] = "vault-test"
    process = Process(environment)
    try:
        port = process.wait_for_event("listening")["port"]
        platform = bearer(
            ApiKeys(database, SystemClock()).create(tenant_id=None, role=Role.PLATFORM_ADMIN)[1]
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            api = Stubs(channel)
            tenant = api.tenants.CreateTenant(
                tenant_pb2.CreateTenantRequest(name="traced"), metadata=platform
            )
            token = api.keys.CreateApiKey(
                apikey_pb2.CreateApiKeyRequest(tenant_id=tenant.id, role=apikey_pb2.ROLE_INGEST),
                metadata=platform,
            ).secret
            data = os.urandom(6 * MiB + 5)  # two S3 parts of 5 MiB
            asset = api.assets.Upload(
                upload_requests(data), metadata=bearer(token, ("x-request-id", "serve-up"))
            )
            responses = api.assets.Download(
                asset_pb2.DownloadRequest(asset_id=asset.id),
                metadata=bearer(token, ("x-request-id", "serve-down")),
            )
            assert b"".join(r.chunk for r in responses if r.chunk) == data
        # The batch is sent every 5 s; the spans arrive now only if serve flushes at exit.
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(30) == 0
    finally:
        process.stop()

    assert sink.service_names == {"vault-test"}
    by_id = {span.span_id: span for span in sink.spans}
    calls = {}
    for span in sink.spans:
        attributes = {a.key: a.value.string_value for a in span.attributes}
        if span.kind == trace_pb2.Span.SPAN_KIND_SERVER:
            calls[attributes.get(tracing.REQUEST_ID)] = span
    for request_id, name in (("serve-up", UPLOAD), ("serve-down", DOWNLOAD)):
        call = calls[request_id]
        assert call.name == name
        below = [s for s in sink.spans if s.parent_span_id == call.span_id]
        dependencies = {
            a.value.string_value for s in below for a in s.attributes if a.key == tracing.DEPENDENCY
        }
        assert {"store", "catalog"} <= dependencies, name
    assert any(span.name.startswith("key_provider ") for span in sink.spans)
    orphans = [s for s in sink.spans if s.parent_span_id and s.parent_span_id not in by_id]
    assert orphans == []
    assert not [line for line in process.lines if line["level"] in ("warning", "error")]
    everything = b"".join(span.SerializeToString() for span in sink.spans)
    assert PATH.encode() not in everything
    assert token.split("_", 2)[2].encode() not in everything
