"""Viewer data and its protection: subjects, consent, payloads, erasure and export
(docs/privacy.md). Domain code: no transport, only ``reelvault.errors`` raised."""

from reelvault.privacy.consent import ConsentDecision, Consents, check_purpose
from reelvault.privacy.operations import Erasure, Privacy
from reelvault.privacy.payloads import DEFAULT_MAX_PAYLOAD, PayloadInfo, Payloads
from reelvault.privacy.subjects import SubjectInfo, Subjects

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "ConsentDecision",
    "Consents",
    "Erasure",
    "PayloadInfo",
    "Payloads",
    "Privacy",
    "SubjectInfo",
    "Subjects",
    "check_purpose",
]
