"""The access audit log: every access recorded before release, tamper-evident, queryable.

The domain records through one :class:`Auditor` (``auditor``), whose events become durable
in the catalog through :class:`AuditLog` (``log``: group commit, then a sequencer that
integrates them into each tenant's RFC 6962 Merkle tree, ``merkle``), signed checkpoints
(``note``: C2SP signed notes), and the offline verifier (``verify``). docs/audit.md
describes the event schema and the verification procedure byte by byte.
"""

from reelvault.audit.auditor import Access, Auditor, AuditSink, MemoryAuditSink, NullAuditSink
from reelvault.audit.events import (
    PLATFORM_LOG,
    Actor,
    AuditEvent,
    Outcome,
    RequestInfo,
    Resource,
)
from reelvault.audit.log import AuditLog, CheckpointInfo, EventPage, StoredEvent
from reelvault.audit.reader import AuditReader, RetentionPolicy

__all__ = [
    "Access",
    "Actor",
    "AuditEvent",
    "AuditLog",
    "AuditReader",
    "AuditSink",
    "Auditor",
    "CheckpointInfo",
    "EventPage",
    "MemoryAuditSink",
    "NullAuditSink",
    "Outcome",
    "PLATFORM_LOG",
    "RequestInfo",
    "Resource",
    "RetentionPolicy",
    "StoredEvent",
]
