"""The gRPC edge's one table from method to domain action.

Authorization and the audit log decide on :class:`reelvault.auth.Action`; this table is
the only place gRPC method names meet them. A method missing here is denied to everyone
(the interceptor refuses it before the servicer runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from reelvault.auth import Action

__all__ = ["METHOD_ACTIONS", "action_for"]

METHOD_ACTIONS: Final[Mapping[str, Action]] = MappingProxyType(
    {
        "/reelvault.v1.TenantService/CreateTenant": Action.TENANT_CREATE,
        "/reelvault.v1.TenantService/GetTenant": Action.TENANT_READ,
        "/reelvault.v1.TenantService/ListTenants": Action.TENANT_LIST,
        "/reelvault.v1.TenantService/SetTenantPolicy": Action.TENANT_POLICY,
        "/reelvault.v1.ApiKeyService/CreateApiKey": Action.APIKEY_CREATE,
        "/reelvault.v1.ApiKeyService/ListApiKeys": Action.APIKEY_LIST,
        "/reelvault.v1.ApiKeyService/RevokeApiKey": Action.APIKEY_REVOKE,
        "/reelvault.v1.AssetService/Upload": Action.ASSET_WRITE,
        "/reelvault.v1.AssetService/Download": Action.ASSET_READ,
        "/reelvault.v1.AssetService/StatAsset": Action.ASSET_STAT,
        "/reelvault.v1.AssetService/ListAssets": Action.ASSET_LIST,
        "/reelvault.v1.AssetService/DeleteAsset": Action.ASSET_DELETE,
        "/reelvault.v1.AssetService/OpenAsset": Action.ASSET_GRANT,
        "/reelvault.v1.AuditService/ListAuditEvents": Action.AUDIT_READ,
        "/reelvault.v1.AuditService/ExportAuditEvents": Action.AUDIT_READ,
        "/reelvault.v1.AuditService/GetCheckpoint": Action.AUDIT_READ,
        "/reelvault.v1.AuditService/GetInclusionProof": Action.AUDIT_READ,
        "/reelvault.v1.AuditService/GetConsistencyProof": Action.AUDIT_READ,
        "/reelvault.v1.AuditService/SetAuditRetention": Action.AUDIT_POLICY,
        "/reelvault.v1.DistributionService/IssueUrl": Action.URL_ISSUE,
        "/reelvault.v1.DistributionService/IssueCookie": Action.URL_ISSUE,
        "/reelvault.v1.DistributionService/RevokeSession": Action.URL_REVOKE,
        "/reelvault.v1.DistributionService/RevokeAsset": Action.URL_REVOKE,
        "/reelvault.v1.DistributionService/ListSigningKeys": Action.URL_KEY_LIST,
        "/reelvault.v1.DistributionService/RotateSigningKey": Action.URL_KEY_ROTATE,
        "/reelvault.v1.PayloadService/PutPayload": Action.PAYLOAD_WRITE,
        "/reelvault.v1.PayloadService/GetPayload": Action.PAYLOAD_READ,
        "/reelvault.v1.PayloadService/ListPayloads": Action.PAYLOAD_LIST,
        "/reelvault.v1.PayloadService/DeletePayload": Action.PAYLOAD_DELETE,
        "/reelvault.v1.ConsentService/RecordConsent": Action.CONSENT_WRITE,
        "/reelvault.v1.ConsentService/GetConsent": Action.CONSENT_READ,
        "/reelvault.v1.PrivacyService/HashSubject": Action.SUBJECT_HASH,
        "/reelvault.v1.PrivacyService/EraseSubject": Action.SUBJECT_ERASE,
        "/reelvault.v1.PrivacyService/ExportSubject": Action.SUBJECT_EXPORT,
        "/reelvault.v1.PrivacyService/SetLegalHold": Action.SUBJECT_HOLD,
        "/reelvault.v1.KeyService/GetKeyStatus": Action.KEY_READ,
        "/reelvault.v1.KeyService/RotateTenantKey": Action.KEY_MANAGE,
        "/reelvault.v1.KeyService/RewrapTenant": Action.KEY_MANAGE,
        "/reelvault.v1.KeyService/DisableKeyVersion": Action.KEY_MANAGE,
        "/reelvault.v1.KeyService/EnableKeyVersion": Action.KEY_MANAGE,
        "/reelvault.v1.KeyService/SetMinDecryptionVersion": Action.KEY_MANAGE,
        "/reelvault.v1.KeyService/RewrapRootKeys": Action.KEY_ROOT,
        "/reelvault.v1.KeyService/ScheduleTenantDeletion": Action.TENANT_LIFECYCLE,
        "/reelvault.v1.KeyService/CancelTenantDeletion": Action.TENANT_LIFECYCLE,
        "/reelvault.v1.KeyService/DisableTenant": Action.TENANT_LIFECYCLE,
        "/reelvault.v1.KeyService/EnableTenant": Action.TENANT_LIFECYCLE,
        "/reelvault.v1.KeyService/RequestKeyExport": Action.KEY_EXPORT,
        "/reelvault.v1.KeyService/ApproveKeyExport": Action.KEY_EXPORT_APPROVE,
        "/reelvault.v1.KeyService/ExportTenantKeys": Action.KEY_EXPORT,
    }
)


def action_for(method: str) -> Action | None:
    """The action a full gRPC method name stands for; None for an unknown method."""
    return METHOD_ACTIONS.get(method)
