"""Prometheus metrics: the one catalogue of what the service measures.

Every metric reelvault exports is defined here, on prometheus-client's default registry
(which also carries the process collector: RSS, CPU, open file descriptors). Components
import the metric they update; nothing else in the code base creates metrics, so
docs/operations.md can list them all from this file.

Label values are bounded sets (method names, status codes, dependency and operation
names, admission kinds): never a tenant id, asset id or path, which would grow the series
without bound and put identifiers in a monitoring system that is not access-audited.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ADMISSION_REJECTIONS",
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DEPENDENCY_DURATION",
    "DEPENDENCY_ERRORS",
    "IN_FLIGHT",
    "READY",
    "REQUESTS",
    "REQUEST_DURATION",
    "SCRUB_BYTES",
    "SCRUB_DAMAGED",
    "SCRUB_LAST_PASS",
    "SCRUB_OBJECTS",
]

_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

REQUESTS: Final = Counter(
    "reelvault_requests",
    "Calls answered, by transport method and final status code.",
    ("method", "code"),
)
REQUEST_DURATION: Final = Histogram(
    "reelvault_request_duration_seconds",
    "Time from a call's arrival to its last message, by method.",
    ("method",),
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT: Final = Gauge(
    "reelvault_requests_in_flight",
    "Calls being served right now, by method.",
    ("method",),
)
BYTES_RECEIVED: Final = Counter(
    "reelvault_received_bytes",
    "Plaintext bytes received from clients (uploads), by method.",
    ("method",),
)
BYTES_SENT: Final = Counter(
    "reelvault_sent_bytes",
    "Plaintext bytes sent to clients (downloads), by method.",
    ("method",),
)
ADMISSION_REJECTIONS: Final = Counter(
    "reelvault_admission_rejections",
    "Calls refused with RESOURCE_EXHAUSTED by admission control, by kind (upload,"
    " download) and the limit that refused them (process, tenant).",
    ("kind", "limit"),
)
DEPENDENCY_DURATION: Final = Histogram(
    "reelvault_dependency_duration_seconds",
    "Latency of calls to a dependency (store, catalog, key_provider), by operation.",
    ("dependency", "operation"),
    buckets=_LATENCY_BUCKETS,
)
DEPENDENCY_ERRORS: Final = Counter(
    "reelvault_dependency_errors",
    "Failed calls to a dependency, by operation and the error class they raised.",
    ("dependency", "operation", "error"),
)
READY: Final = Gauge(
    "reelvault_dependency_ready",
    "1 if the dependency answered its last readiness probe, else 0.",
    ("dependency",),
)
SCRUB_OBJECTS: Final = Counter(
    "reelvault_scrub_objects",
    "Stored objects the integrity scrub has checked, by result (ok, damaged).",
    ("result",),
)
SCRUB_BYTES: Final = Counter(
    "reelvault_scrub_bytes",
    "Stored (ciphertext) bytes the integrity scrub has read and authenticated.",
)
SCRUB_DAMAGED: Final = Gauge(
    "reelvault_scrub_damaged_objects",
    "Damaged objects found by the most recent complete scrub pass (or the current one"
    " so far).",
)
SCRUB_LAST_PASS: Final = Gauge(
    "reelvault_scrub_last_pass_completed_timestamp_seconds",
    "Unix time at which the last complete scrub pass finished (0: none yet).",
)
