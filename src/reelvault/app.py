"""The component graph of one service process.

:class:`Vault` holds one of each domain component, wired together: the catalog database,
the tenant keys (over a root key provider), the API keys, the object store and the assets.
Every access is recorded through the one :class:`~reelvault.audit.Auditor`, which each
domain component is given. The transport edges (the gRPC server, later the HTTP origin)
take a ``Vault`` and nothing else, so a test builds the same graph from fakes with
:meth:`Vault.from_parts` and exercises the real servicers and interceptors over it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError

from reelvault.assets import DEFAULT_GRANT_LIFETIME, DEFAULT_GRANT_MAX_LIFETIME, Assets
from reelvault.audit import AuditLog, Auditor, AuditReader, AuditSink
from reelvault.auth import ApiKeys
from reelvault.catalog import Database
from reelvault.clock import Clock, SystemClock
from reelvault.config import Settings
from reelvault.deadline import bound_botocore
from reelvault.distribution.cloudfront import CloudFrontKey
from reelvault.distribution.keys import UrlSigningKeys
from reelvault.distribution.service import Distribution, DistributionConfig
from reelvault.errors import ConfigurationError
from reelvault.instrument import InstrumentedKeyProvider, InstrumentedStore, instrument_catalog
from reelvault.keys import KmsRootKeyProvider, LocalKeyring, RootKeyProvider, TenantKeys
from reelvault.lifecycle import TenantLifecycle
from reelvault.objects import SealedObjects
from reelvault.privacy import DEFAULT_MAX_PAYLOAD, Consents, Payloads, Privacy, Subjects
from reelvault.storage import ObjectStore, S3ObjectStore

__all__ = ["Vault", "distribution_config"]


@dataclass(frozen=True, slots=True)
class Vault:
    """One of each component; build with :meth:`from_settings` or :meth:`from_parts`."""

    database: Database
    root: RootKeyProvider
    tenant_keys: TenantKeys
    api_keys: ApiKeys
    store: ObjectStore
    assets: Assets
    clock: Clock
    auditor: Auditor
    audit_log: AuditLog
    audit: AuditReader
    distribution: Distribution
    objects: SealedObjects
    subjects: Subjects
    consents: Consents
    payloads: Payloads
    privacy: Privacy
    lifecycle: TenantLifecycle

    @classmethod
    def from_parts(
        cls,
        *,
        database: Database,
        root: RootKeyProvider,
        store: ObjectStore,
        clock: Clock,
        key_cache_ttl: float = 60.0,
        audit_sink: AuditSink | None = None,
        audit_origin: str = "reelvault.local/audit",
        audit_key_name: str = "reelvault-audit",
        instrumented: bool = False,
        grant_lifetime: int = DEFAULT_GRANT_LIFETIME,
        grant_max_lifetime: int = DEFAULT_GRANT_MAX_LIFETIME,
        distribution: DistributionConfig | None = None,
        payload_max_bytes: int = DEFAULT_MAX_PAYLOAD,
        byok: Callable[[str], RootKeyProvider] | None = None,
    ) -> Self:
        """Wire the domain over given parts (tests: fakes). The database must be migrated.

        Args:
            audit_sink: where audit events go; the catalog's audit log by default (a
                benchmark swaps in a no-op to measure what auditing costs).
            instrumented: measure (and trace) the catalog, the root key provider and the
                store (:mod:`reelvault.instrument`), as every service process does.
        """
        if instrumented:  # measured for the metrics endpoint and traced
            instrument_catalog(database)
            root, store = InstrumentedKeyProvider(root), InstrumentedStore(store)
        audit_log = AuditLog(
            database, root, clock, origin_prefix=audit_origin, key_name=audit_key_name
        )
        auditor = Auditor(audit_log if audit_sink is None else audit_sink, clock)
        tenant_keys = TenantKeys(
            database, root, clock, cache_ttl=key_cache_ttl, auditor=auditor, byok=byok
        )
        objects = SealedObjects(database, store, clock, auditor=auditor)
        subjects = Subjects(database, tenant_keys, clock, cache_ttl=key_cache_ttl)
        objects.register(key_slots=subjects)
        assets = Assets(
            database,
            tenant_keys,
            store,
            clock,
            auditor=auditor,
            grant_lifetime=grant_lifetime,
            grant_max_lifetime=grant_max_lifetime,
            objects=objects,
            subjects=subjects,
        )
        consents = Consents(database, subjects, clock, auditor=auditor)
        payloads = Payloads(database, subjects, clock, auditor=auditor, max_size=payload_max_bytes)
        config = distribution or DistributionConfig()
        url_keys = UrlSigningKeys(
            database, root, clock, auditor=auditor, max_ttl=config.max_ttl, leeway=config.leeway
        )
        return cls(
            database=database,
            root=root,
            tenant_keys=tenant_keys,
            api_keys=ApiKeys(database, clock, auditor=auditor),
            store=store,
            assets=assets,
            clock=clock,
            auditor=auditor,
            audit_log=audit_log,
            audit=AuditReader(database, audit_log, auditor),
            distribution=Distribution(
                database, url_keys, assets, clock, auditor=auditor, config=config
            ),
            objects=objects,
            subjects=subjects,
            consents=consents,
            payloads=payloads,
            privacy=Privacy(
                database=database,
                subjects=subjects,
                consents=consents,
                payloads=payloads,
                assets=assets,
                audit_log=audit_log,
                clock=clock,
                auditor=auditor,
            ),
            lifecycle=TenantLifecycle(
                database, tenant_keys, subjects, assets, clock, auditor=auditor
            ),
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> Self:
        """Open the catalog (migrating it to the newest schema), the root key provider and
        the object store named by ``settings``, each measured for the metrics endpoint
        (:mod:`reelvault.instrument`).

        Raises:
            ConfigurationError: a keyring file that is missing or unsafe, a bad store
                setting, missing AWS credentials or region.
            Unavailable: the catalog cannot be reached.
        """
        database = Database(settings.resolved_database_url, timeout=settings.catalog_timeout)
        try:
            if migrate:  # serve --check looks, and never changes what it checks
                database.migrate()
            return cls.from_parts(
                database=database,
                root=_root_provider(settings),
                store=S3ObjectStore(
                    settings.s3_bucket,
                    endpoint_url=settings.s3_endpoint_url,
                    region=settings.s3_region,
                    access_key=settings.s3_access_key_id,
                    secret_key=settings.s3_secret_access_key,
                    part_size=settings.s3_part_size,
                    max_in_flight=settings.s3_max_in_flight,
                    connect_timeout=settings.s3_connect_timeout,
                    read_timeout=settings.s3_read_timeout,
                    max_attempts=settings.s3_max_attempts,
                    operation_timeout=settings.s3_operation_timeout,
                    public_endpoint_url=settings.s3_public_endpoint_url,
                ),
                clock=SystemClock(),
                key_cache_ttl=settings.key_cache_ttl,
                audit_origin=settings.audit_origin,
                audit_key_name=settings.audit_key_name,
                instrumented=True,
                grant_lifetime=settings.grant_lifetime,
                grant_max_lifetime=settings.grant_max_lifetime,
                distribution=distribution_config(settings),
                payload_max_bytes=settings.payload_max_bytes,
                byok=_byok(settings),
            )
        except BaseException:
            database.dispose()
            raise

    def close(self) -> None:
        """Write what is pending (API keys' last use), then release connections: the
        catalog's pool and the object store's HTTP client."""
        with contextlib.suppress(Exception):  # best effort at shutdown
            self.api_keys.flush_last_use()
        self.database.dispose()
        store = self.store.inner if isinstance(self.store, InstrumentedStore) else self.store
        if isinstance(store, S3ObjectStore):
            with contextlib.suppress(Exception):  # best effort at shutdown
                store.client.close()


def distribution_config(settings: Settings) -> DistributionConfig:
    """What distribution reads from the settings; loads the CloudFront key if configured.

    Raises:
        ConfigurationError: the CloudFront key file cannot be read or is not an RSA or
            EC P-256 private key.
    """
    key = None
    if settings.cloudfront_private_key_file is not None:
        assert settings.cloudfront_key_pair_id is not None  # Settings requires both
        path = settings.cloudfront_private_key_file
        try:
            key = CloudFrontKey(settings.cloudfront_key_pair_id, path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"REELVAULT_CLOUDFRONT_PRIVATE_KEY_FILE: cannot use {path}: {type(exc).__name__}"
            ) from None
    return DistributionConfig(
        base_url=settings.origin_base_url,
        default_ttl=settings.url_default_ttl,
        max_ttl=settings.url_max_ttl,
        leeway=settings.url_leeway,
        revocation_refresh=settings.origin_revocation_refresh,
        cloudfront_key=key,
        cloudfront_base_url=settings.cloudfront_base_url,
    )


def _byok(settings: Settings) -> Callable[[str], RootKeyProvider] | None:
    """Bring your own key: a provider over a tenant's own KMS key, by ARN, sharing one
    KMS client; None without KMS settings (then BYOK tenants are refused)."""
    if settings.root_key_provider != "aws-kms" and not settings.kms_region:
        return None
    client = _kms_client(settings)
    providers: dict[str, RootKeyProvider] = {}

    def provider(arn: str) -> RootKeyProvider:
        if arn not in providers:
            providers[arn] = KmsRootKeyProvider(client, arn)
        return providers[arn]

    return provider


def _root_provider(settings: Settings) -> RootKeyProvider:
    if settings.root_key_provider == "aws-kms":
        assert settings.kms_key_id is not None  # Settings requires it for aws-kms
        return KmsRootKeyProvider(_kms_client(settings), settings.kms_key_id)
    return LocalKeyring.load(settings.resolved_keyring_path)


def _kms_client(settings: Settings) -> Any:
    """One bounded KMS client (the root key provider's, and BYOK tenants' keys)."""
    # Each attempt gets half the budget, so a throttled or failed first attempt
    # leaves room for a retry within kms_timeout.
    connect = min(2.0, settings.kms_timeout / 5)
    read = settings.kms_timeout / 2 - connect
    try:
        client = boto3.client(
            "kms",
            region_name=settings.kms_region,
            endpoint_url=settings.kms_endpoint_url,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": 3},
                connect_timeout=connect,
                read_timeout=read,
            ),
        )
        bound_botocore(
            client,
            budget=settings.kms_timeout,
            attempt=connect + read,
            name="key provider",
        )
    except BotoCoreError as exc:  # no region, a malformed endpoint URL, ...
        raise ConfigurationError(
            f"cannot create the AWS KMS client (REELVAULT_KMS_REGION, "
            f"REELVAULT_KMS_ENDPOINT_URL): {exc}"
        ) from None
    return client
