"""Settings: one place, environment over file over defaults, clear errors, no secrets shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reelvault.config import Settings
from reelvault.errors import ConfigurationError

MiB = 1024 * 1024


def test_defaults():
    settings = Settings.load({})
    assert settings == Settings()
    assert settings.data_dir == Path(".reelvault")
    assert settings.resolved_database_url == "sqlite:///.reelvault/catalog.sqlite3"
    assert settings.resolved_keyring_path == Path(".reelvault/keyring.json")
    assert settings.root_key_provider == "local"
    assert settings.s3_bucket == "reelvault"
    assert settings.s3_part_size == 8 * MiB
    assert settings.s3_max_in_flight == 4
    assert (settings.grpc_host, settings.grpc_port) == ("127.0.0.1", 7400)
    assert settings.key_cache_ttl == 60.0
    assert settings.shutdown_grace == 30.0
    assert (settings.log_level, settings.log_format) == ("info", "console")
    assert not settings.tls_enabled
    assert settings.reflection


def test_derived_defaults_follow_the_data_dir():
    settings = Settings.load({"REELVAULT_DATA_DIR": "/var/lib/reelvault"})
    assert settings.resolved_database_url == "sqlite:////var/lib/reelvault/catalog.sqlite3"
    assert settings.resolved_keyring_path == Path("/var/lib/reelvault/keyring.json")
    explicit = Settings.load(
        {
            "REELVAULT_DATA_DIR": "/var/lib/reelvault",
            "REELVAULT_DATABASE_URL": "postgresql+psycopg://rv@db/rv",
            "REELVAULT_KEYRING": "/etc/reelvault/keyring.json",
        }
    )
    assert explicit.resolved_database_url == "postgresql+psycopg://rv@db/rv"
    assert explicit.resolved_keyring_path == Path("/etc/reelvault/keyring.json")
    # replace() keeps derived values derived
    moved = dataclasses.replace(settings, data_dir=Path("/srv"))
    assert moved.resolved_keyring_path == Path("/srv/keyring.json")


def test_every_setting_is_read_from_the_environment():
    env = {
        "REELVAULT_DATA_DIR": "/d",
        "REELVAULT_DATABASE_URL": "sqlite:////d/x.sqlite3",
        "REELVAULT_ROOT_KEY_PROVIDER": "AWS-KMS",
        "REELVAULT_KEYRING": "/k.json",
        "REELVAULT_KMS_KEY_ID": "alias/reelvault",
        "REELVAULT_KMS_REGION": "eu-west-1",
        "REELVAULT_KMS_ENDPOINT_URL": "http://127.0.0.1:4566",
        "REELVAULT_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
        "REELVAULT_S3_BUCKET": "videos",
        "REELVAULT_S3_REGION": "us-east-1",
        "REELVAULT_S3_ACCESS_KEY_ID": "AKID",
        "REELVAULT_S3_SECRET_ACCESS_KEY": "s3cr3t",
        "REELVAULT_S3_PART_SIZE": "8MiB",
        "REELVAULT_S3_MAX_IN_FLIGHT": "2",
        "REELVAULT_S3_CONNECT_TIMEOUT": "1",
        "REELVAULT_S3_READ_TIMEOUT": "4s",
        "REELVAULT_S3_MAX_ATTEMPTS": "2",
        "REELVAULT_S3_OPERATION_TIMEOUT": "12",
        "REELVAULT_S3_PUBLIC_ENDPOINT_URL": "https://s3.example.com",
        "REELVAULT_GRANT_LIFETIME": "120",
        "REELVAULT_GRANT_MAX_LIFETIME": "900",
        "REELVAULT_URL_DEFAULT_TTL": "600",
        "REELVAULT_URL_MAX_TTL": "7200",
        "REELVAULT_URL_LEEWAY": "30",
        "REELVAULT_PAYLOAD_MAX_BYTES": "64KiB",
        "REELVAULT_PRIVACY_INTERVAL": "60",
        "REELVAULT_ORIGIN_BASE_URL": "https://origin.example.com",
        "REELVAULT_ORIGIN_HOST": "0.0.0.0",
        "REELVAULT_ORIGIN_PORT": "8080",
        "REELVAULT_ORIGIN_WORKERS": "4",
        "REELVAULT_ORIGIN_AUDIENCE": "cdn.example.com",
        "REELVAULT_ORIGIN_PUBLIC_CACHE": "on",
        "REELVAULT_ORIGIN_CORS_ORIGIN": "https://player.example.com",
        "REELVAULT_ORIGIN_TRUSTED_PROXIES": "10.0.0.0/8",
        "REELVAULT_ORIGIN_REVOCATION_REFRESH": "2",
        "REELVAULT_CLOUDFRONT_KEY_PAIR_ID": "K2JCJMDEHXQW5F",
        "REELVAULT_CLOUDFRONT_PRIVATE_KEY_FILE": "/cf/key.pem",
        "REELVAULT_CLOUDFRONT_BASE_URL": "https://d1.cloudfront.net",
        "REELVAULT_CLOUDFRONT_ORIGIN_SECRET": "edge-secret-0123456789",
        "REELVAULT_CATALOG_TIMEOUT": "7",
        "REELVAULT_KMS_TIMEOUT": "6",
        "REELVAULT_MAX_UPLOADS": "5",
        "REELVAULT_MAX_UPLOADS_PER_TENANT": "3",
        "REELVAULT_MAX_DOWNLOADS": "50",
        "REELVAULT_MAX_DOWNLOADS_PER_TENANT": "20",
        "REELVAULT_ADMISSION_RETRY_AFTER": "3",
        "REELVAULT_UPLOAD_IDLE_TIMEOUT": "45",
        "REELVAULT_READINESS_INTERVAL": "2",
        "REELVAULT_GRPC_HOST": "0.0.0.0",
        "REELVAULT_GRPC_PORT": "0",
        "REELVAULT_TLS_CERT_FILE": "/tls/cert.pem",
        "REELVAULT_TLS_KEY_FILE": "/tls/key.pem",
        "REELVAULT_TLS_CLIENT_CA_FILE": "/tls/ca.pem",
        "REELVAULT_REFLECTION": "off",
        "REELVAULT_KEY_CACHE_TTL": "0",
        "REELVAULT_AUDIT_ORIGIN": "vault.example.com/audit",
        "REELVAULT_AUDIT_KEY_NAME": "vault-audit",
        "REELVAULT_AUDIT_INTEGRATE_INTERVAL": "0.25",
        "REELVAULT_AUDIT_CHECKPOINT_INTERVAL": "30s",
        "REELVAULT_SCRUB_INTERVAL": "86400",
        "REELVAULT_SCRUB_RATE": "8MiB",
        "REELVAULT_METRICS_HOST": "0.0.0.0",
        "REELVAULT_METRICS_PORT": "9400",
        "REELVAULT_TRACING_ENDPOINT": "https://otel.example.com:4317",
        "REELVAULT_TRACING_SERVICE_NAME": "vault-eu",
        "REELVAULT_TRACING_SAMPLE_RATIO": "0.25",
        "REELVAULT_SHUTDOWN_GRACE": "2.5",
        "REELVAULT_LOG_LEVEL": "DEBUG",
        "REELVAULT_LOG_FORMAT": "json",
    }
    settings = Settings.load(env)
    assert [variable for variable, _, _ in Settings.describe()] == list(env)
    assert settings == Settings(
        data_dir=Path("/d"),
        database_url="sqlite:////d/x.sqlite3",
        root_key_provider="aws-kms",
        keyring_path=Path("/k.json"),
        kms_key_id="alias/reelvault",
        kms_region="eu-west-1",
        kms_endpoint_url="http://127.0.0.1:4566",
        s3_endpoint_url="http://127.0.0.1:8333",
        s3_bucket="videos",
        s3_region="us-east-1",
        s3_access_key_id="AKID",
        s3_secret_access_key="s3cr3t",
        s3_part_size=8 * MiB,
        s3_max_in_flight=2,
        s3_connect_timeout=1.0,
        s3_read_timeout=4.0,
        s3_max_attempts=2,
        s3_operation_timeout=12.0,
        s3_public_endpoint_url="https://s3.example.com",
        grant_lifetime=120,
        grant_max_lifetime=900,
        url_default_ttl=600,
        url_max_ttl=7200,
        url_leeway=30.0,
        payload_max_bytes=64 * 1024,
        privacy_interval=60.0,
        origin_base_url="https://origin.example.com",
        origin_host="0.0.0.0",
        origin_port=8080,
        origin_workers=4,
        origin_audience="cdn.example.com",
        origin_public_cache=True,
        origin_cors_origin="https://player.example.com",
        origin_trusted_proxies="10.0.0.0/8",
        origin_revocation_refresh=2.0,
        cloudfront_key_pair_id="K2JCJMDEHXQW5F",
        cloudfront_private_key_file=Path("/cf/key.pem"),
        cloudfront_base_url="https://d1.cloudfront.net",
        cloudfront_origin_secret="edge-secret-0123456789",
        catalog_timeout=7.0,
        kms_timeout=6.0,
        max_uploads=5,
        max_uploads_per_tenant=3,
        max_downloads=50,
        max_downloads_per_tenant=20,
        admission_retry_after=3.0,
        upload_idle_timeout=45.0,
        readiness_interval=2.0,
        grpc_host="0.0.0.0",
        grpc_port=0,
        tls_cert_file=Path("/tls/cert.pem"),
        tls_key_file=Path("/tls/key.pem"),
        tls_client_ca_file=Path("/tls/ca.pem"),
        reflection=False,
        key_cache_ttl=0.0,
        audit_origin="vault.example.com/audit",
        audit_key_name="vault-audit",
        audit_integrate_interval=0.25,
        audit_checkpoint_interval=30.0,
        scrub_interval=86400.0,
        scrub_rate=8 * MiB,
        metrics_host="0.0.0.0",
        metrics_port=9400,
        tracing_endpoint="https://otel.example.com:4317",
        tracing_service_name="vault-eu",
        tracing_sample_ratio=0.25,
        shutdown_grace=2.5,
        log_level="debug",
        log_format="json",
    )
    assert settings.tls_enabled


def test_a_file_is_read_and_the_environment_overrides_it(tmp_path):
    config = tmp_path / "reelvault.toml"
    config.write_text(
        'data_dir = "/from/file"\ngrpc_port = 7500\ns3_part_size = 6291456\n'
        'shutdown_grace = 10\nlog_format = "json"\n'
    )
    settings = Settings.load({"REELVAULT_GRPC_PORT": "7600"}, config_file=config)
    assert settings.data_dir == Path("/from/file")
    assert settings.grpc_port == 7600
    assert settings.s3_part_size == 6 * MiB
    assert settings.shutdown_grace == 10.0
    assert settings.log_format == "json"
    # REELVAULT_CONFIG names the file when --config does not
    assert Settings.load({"REELVAULT_CONFIG": str(config)}).grpc_port == 7500


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REELVAULT_GRPC_PORT": "seventy"}, "REELVAULT_GRPC_PORT"),
        ({"REELVAULT_GRPC_PORT": "70000"}, "REELVAULT_GRPC_PORT"),
        ({"REELVAULT_GRPC_PORT": "-1"}, "REELVAULT_GRPC_PORT"),
        ({"REELVAULT_S3_PART_SIZE": "1MiB"}, "REELVAULT_S3_PART_SIZE"),
        ({"REELVAULT_S3_PART_SIZE": "lots"}, "REELVAULT_S3_PART_SIZE"),
        ({"REELVAULT_S3_MAX_IN_FLIGHT": "0"}, "REELVAULT_S3_MAX_IN_FLIGHT"),
        ({"REELVAULT_KEY_CACHE_TTL": "-1"}, "REELVAULT_KEY_CACHE_TTL"),
        ({"REELVAULT_KEY_CACHE_TTL": "nan"}, "REELVAULT_KEY_CACHE_TTL"),
        ({"REELVAULT_SHUTDOWN_GRACE": "inf"}, "REELVAULT_SHUTDOWN_GRACE"),
        ({"REELVAULT_ROOT_KEY_PROVIDER": "vault"}, "REELVAULT_ROOT_KEY_PROVIDER"),
        ({"REELVAULT_ROOT_KEY_PROVIDER": "aws-kms"}, "REELVAULT_KMS_KEY_ID"),
        ({"REELVAULT_LOG_LEVEL": "loud"}, "REELVAULT_LOG_LEVEL"),
        ({"REELVAULT_LOG_FORMAT": "xml"}, "REELVAULT_LOG_FORMAT"),
        ({"REELVAULT_S3_BUCKET": ""}, "REELVAULT_S3_BUCKET"),
        ({"REELVAULT_DATA_DIR": " "}, "REELVAULT_DATA_DIR"),
        ({"REELVAULT_DATABASE_URL": "not a url"}, "REELVAULT_DATABASE_URL"),
        ({"REELVAULT_S3_ACCESS_KEY_ID": "AKID"}, "REELVAULT_S3_SECRET_ACCESS_KEY"),
        ({"REELVAULT_TLS_CERT_FILE": "/c.pem"}, "REELVAULT_TLS_KEY_FILE"),
        ({"REELVAULT_TLS_CLIENT_CA_FILE": "/ca.pem"}, "REELVAULT_TLS_CLIENT_CA_FILE"),
        ({"REELVAULT_TRACING_ENDPOINT": "otel:4317"}, "REELVAULT_TRACING_ENDPOINT"),
        ({"REELVAULT_TRACING_ENDPOINT": "grpc://otel:4317"}, "REELVAULT_TRACING_ENDPOINT"),
        ({"REELVAULT_TRACING_ENDPOINT": "http://otel:port"}, "REELVAULT_TRACING_ENDPOINT"),
        ({"REELVAULT_TRACING_SAMPLE_RATIO": "1.5"}, "REELVAULT_TRACING_SAMPLE_RATIO"),
        ({"REELVAULT_TRACING_SAMPLE_RATIO": "nan"}, "REELVAULT_TRACING_SAMPLE_RATIO"),
        ({"REELVAULT_TRACING_SERVICE_NAME": " "}, "REELVAULT_TRACING_SERVICE_NAME"),
        ({"REELVAULT_REFLECTION": "maybe"}, "REELVAULT_REFLECTION"),
        ({"REELVAULT_URL_MAX_TTL": "30"}, "REELVAULT_URL_MAX_TTL"),
        ({"REELVAULT_URL_DEFAULT_TTL": "90000"}, "REELVAULT_URL_DEFAULT_TTL"),
        ({"REELVAULT_URL_LEEWAY": "3600"}, "REELVAULT_URL_LEEWAY"),
        ({"REELVAULT_ORIGIN_WORKERS": "0"}, "REELVAULT_ORIGIN_WORKERS"),
        ({"REELVAULT_ORIGIN_PORT": "70000"}, "REELVAULT_ORIGIN_PORT"),
        ({"REELVAULT_ORIGIN_BASE_URL": "origin.example.com"}, "REELVAULT_ORIGIN_BASE_URL"),
        ({"REELVAULT_ORIGIN_TRUSTED_PROXIES": "bogus"}, "REELVAULT_ORIGIN_TRUSTED_PROXIES"),
        ({"REELVAULT_ORIGIN_TRUSTED_PROXIES": "10.0.0.0/8,x"}, "REELVAULT_ORIGIN_TRUSTED_PROXIES"),
        ({"REELVAULT_CLOUDFRONT_ORIGIN_SECRET": "short"}, "REELVAULT_CLOUDFRONT_ORIGIN_SECRET"),
        ({"REELVAULT_CLOUDFRONT_KEY_PAIR_ID": "K1"}, "REELVAULT_CLOUDFRONT_KEY_PAIR_ID"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(env)
    assert caught.value.message.startswith(variable), caught.value.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("grpc_port = true\n", "grpc_port in config file"),
        ('grpc_port = "x"\n', "grpc_port in config file"),
        ("no_such_setting = 1\n", "unknown setting 'no_such_setting'"),
        ("grpc_port = \n", "not valid TOML"),
    ],
)
def test_bad_files_are_configuration_errors(tmp_path, content, fragment):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(ConfigurationError, match=fragment):
        Settings.load({}, config_file=config)


def test_a_missing_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        Settings.load({"REELVAULT_CONFIG": str(tmp_path / "missing.toml")})


def test_settings_built_in_code_are_checked_too():
    with pytest.raises(ConfigurationError, match="REELVAULT_GRPC_PORT"):
        Settings(grpc_port=99999)
    assert Settings(log_level="WARNING").log_level == "warning"  # type: ignore[arg-type]


def test_secrets_are_never_shown():
    settings = Settings.load(
        {
            "REELVAULT_S3_ACCESS_KEY_ID": "AKID",
            "REELVAULT_S3_SECRET_ACCESS_KEY": "very-secret-key",
            "REELVAULT_DATABASE_URL": "postgresql+psycopg://rv:db-password@db/rv",
        }
    )
    shown = repr(settings) + str(settings) + repr(Settings.describe())
    assert "very-secret-key" not in shown
    assert "db-password" not in shown
    assert "AKID" in repr(settings)
    with pytest.raises(ConfigurationError) as caught:  # a secret without its key id
        Settings.load({"REELVAULT_S3_SECRET_ACCESS_KEY": "very-secret-key"})
    assert "REELVAULT_S3_ACCESS_KEY_ID" in caught.value.message
    assert "very-secret-key" not in caught.value.message


def test_describe_lists_every_setting_with_a_default_and_help():
    rows = Settings.describe()
    assert len(rows) == len(dataclasses.fields(Settings))
    for variable, default, help_text in rows:
        assert variable.startswith("REELVAULT_")
        assert isinstance(default, str)
        assert help_text and "\n" not in help_text
    described = {variable: default for variable, default, _ in rows}
    assert described["REELVAULT_GRPC_PORT"] == "7400"
    assert described["REELVAULT_DATABASE_URL"] == "sqlite:///<data_dir>/catalog.sqlite3"
    assert described["REELVAULT_KEYRING"] == "<data_dir>/keyring.json"
    assert described["REELVAULT_S3_SECRET_ACCESS_KEY"] == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("on", True), (" True ", True), ("0", False), ("off", False), ("no", False)],
)
def test_reflection_reads_the_usual_spellings_of_a_switch(raw, expected):
    assert Settings.load({"REELVAULT_REFLECTION": raw}).reflection is expected


def test_reflection_in_a_file_is_a_toml_boolean(tmp_path):
    config = tmp_path / "reelvault.toml"
    config.write_text("reflection = false\n")
    assert Settings.load({}, config_file=config).reflection is False
    config.write_text("reflection = 0\n")
    with pytest.raises(ConfigurationError) as caught:
        Settings.load({}, config_file=config)
    assert caught.value.message.startswith("reflection in config file")
