"""No password is ever shown: not in the user part of a database URL, not in one of its
query parameters, not in the user part of an S3, KMS or tracing endpoint; and a database
URL with an unencoded ``@`` in its password is refused without being echoed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from botocore.exceptions import ClientError
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from reelvault import preflight, tracing
from reelvault.catalog import Database, db
from reelvault.catalog.db import describe_failure, safe_endpoint, safe_url
from reelvault.cli import main
from reelvault.cli._common import describe_target
from reelvault.config import Settings
from reelvault.errors import ConfigurationError, Unavailable

SECRET = "hunter2-db-pass"
ENDPOINT_SECRET = "s3-endpoint-pass"
Logs = list[MutableMapping[str, Any]]

# (database URL, what is shown): the password in the user part, in query parameters of
# any case and of names holding "password", and percent-encoded specials.
URLS = [
    (
        f"postgresql+psycopg://rv:{SECRET}@db.example/reelvault",
        "postgresql+psycopg://rv:***@db.example/reelvault",
    ),
    (
        f"postgresql+psycopg://rv@db.example/reelvault?password={SECRET}",
        "postgresql+psycopg://rv@db.example/reelvault?password=***",
    ),
    (
        f"postgresql+psycopg:///reelvault?host=db&user=rv&password={SECRET}",
        "postgresql+psycopg:///reelvault?host=db&password=***&user=rv",
    ),
    (
        f"postgresql+psycopg://rv@db.example/reelvault?sslmode=require&PASSWORD={SECRET}%20x&x=1",
        "postgresql+psycopg://rv@db.example/reelvault?PASSWORD=***&sslmode=require&x=1",
    ),
    (
        f"postgresql+psycopg://rv@db.example/reelvault?sslpassword={SECRET}",
        "postgresql+psycopg://rv@db.example/reelvault?sslpassword=***",
    ),
    (
        f"postgresql+psycopg://rv:first-{SECRET}@db.example/reelvault?password={SECRET}",
        "postgresql+psycopg://rv:***@db.example/reelvault?password=***",
    ),
    (
        f"postgresql+psycopg://rv:{SECRET}%40%3A%2F%3F%23%25@db.example:5432/reelvault",
        "postgresql+psycopg://rv:***@db.example:5432/reelvault",
    ),
]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Logs]:
    """What the catalog and tracing modules log (fresh logger proxies: another test may
    have configured logging, which caches loggers)."""
    with capture_logs() as captured:
        for module, name in ((db, "catalog"), (tracing, "tracing")):
            monkeypatch.setattr(module, "_log", structlog.get_logger(f"reelvault.{name}"))
        yield captured


# -- the shared masking ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_safe_url_masks_every_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown
    assert safe_url(make_url(url)) == shown
    assert SECRET not in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        (
            f"https://AKIA:{ENDPOINT_SECRET}@minio.example:9000/",
            "https://AKIA:***@minio.example:9000/",
        ),
        (f"http://{ENDPOINT_SECRET}@otel:4317", "http://***@otel:4317"),
        (f"http://u:{ENDPOINT_SECRET}/x@host", "http://u:***@host"),
        (f"http://u:a@{ENDPOINT_SECRET}@host", "http://u:***@host"),
        (f"https://kms.example/?password={ENDPOINT_SECRET}", "https://kms.example/?password=***"),
    ],
)
def test_safe_endpoint_masks_the_user_part_of_any_url(url: str, shown: str) -> None:
    assert safe_endpoint(url) == shown


def test_what_does_not_parse_has_its_user_part_masked() -> None:
    assert SECRET not in safe_url(f"rv:{SECRET}@db.example/reelvault")
    assert SECRET not in safe_url(f"postgresql+psycopg://rv:{SECRET[:4]}@{SECRET[4:]}@db/x")


def test_the_drivers_reason_never_carries_a_password_or_a_url_user_part() -> None:
    failure = OperationalError(
        "SELECT 1",
        {},
        Exception(
            f'connection to "postgresql://rv:{SECRET}@db/x" failed: sslpassword={SECRET} '
            f"password = '{SECRET}'"
        ),
    )
    described = describe_failure(failure)
    assert described is not None
    assert SECRET not in described
    assert "postgresql://rv:***@db/x" in described


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_settings_repr_and_shown_url_mask_every_password(url: str, shown: str) -> None:
    settings = Settings(database_url=url)
    assert settings.database_url == url  # the service still connects with it
    assert settings.shown_database_url == shown
    assert f"database_url={shown!r}" in repr(settings)
    assert SECRET not in repr(settings)


def test_percent_encoded_specials_reach_the_driver_decoded() -> None:
    settings = Settings(database_url=URLS[-1][0])
    assert make_url(settings.resolved_database_url).password == f"{SECRET}@:/?#%"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://rv:p@{SECRET}@db.example/reelvault",
        f"postgresql+psycopg://rv@{SECRET}@db.example/reelvault",
        f"postgresql+psycopg://rv:{SECRET}@@db.example/reelvault",
    ],
)
def test_an_unencoded_at_in_the_password_is_refused_without_echoing_the_url(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_url=url)
    assert caught.value.message.startswith("REELVAULT_DATABASE_URL: ")
    assert "percent-encode" in caught.value.message
    assert SECRET not in caught.value.message
    assert "db.example" not in caught.value.message
    with pytest.raises(ConfigurationError) as loaded:
        Settings.load({"REELVAULT_DATABASE_URL": url})
    assert SECRET not in loaded.value.message


def test_an_at_elsewhere_is_no_password() -> None:
    # In a query value or a SQLite path an @ is not in the user part.
    Settings(database_url="postgresql+psycopg://rv@db.example/x?application_name=a@b")
    Settings(database_url="sqlite:////var/lib/me@host/catalog.sqlite3")


# -- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_describe_target_masks_the_catalogs_and_the_endpoints_passwords(
    url: str, shown: str
) -> None:
    settings = Settings(
        database_url=url, s3_endpoint_url=f"http://AKIA:{ENDPOINT_SECRET}@127.0.0.1:9000"
    )
    described = describe_target(settings)
    assert f"catalog {shown}," in described
    assert "at http://AKIA:***@127.0.0.1:9000," in described
    assert SECRET not in described
    assert ENDPOINT_SECRET not in described


# -- the catalog ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://rv:{SECRET}@127.0.0.1:1/x",
        f"postgresql+psycopg://rv@127.0.0.1:1/x?password={SECRET}",
        f"postgresql+psycopg:///x?host=127.0.0.1&port=1&user=rv&password={SECRET}",
    ],
)
def test_database_repr_and_its_warning_mask_the_password(url: str, logs: Logs) -> None:
    database = Database(url, timeout=2)
    try:
        assert SECRET not in repr(database)
        assert repr(database) == f"Database({safe_url(url)!r})"
        with (
            pytest.raises(Unavailable) as caught,
            database.transaction(readonly=True) as session,
        ):
            session.execute(text("SELECT 1"))
    finally:
        database.dispose()
    assert caught.value.message == "catalog database unavailable"
    warnings = [line for line in logs if line["event"] == "catalog database unavailable"]
    assert len(warnings) == 1
    assert warnings[0]["database"] == safe_url(url)
    assert "***" in str(warnings[0]["database"])
    assert SECRET not in repr(logs)


# -- serve --check and preflight -------------------------------------------------------------


def test_serve_check_shows_no_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("REELVAULT_CONFIG", "REELVAULT_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    keyring = tmp_path / "keyring.json"
    assert main(["keyring", "init", "--path", str(keyring)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("REELVAULT_KEYRING", str(keyring))
    monkeypatch.setenv(
        "REELVAULT_DATABASE_URL",
        f"postgresql+psycopg://rv:{SECRET}@127.0.0.1:1/x?sslmode=disable&password={SECRET}",
    )
    monkeypatch.setenv("REELVAULT_CATALOG_TIMEOUT", "2")
    monkeypatch.setenv("REELVAULT_S3_ENDPOINT_URL", f"http://AKIA:{ENDPOINT_SECRET}@127.0.0.1:9")
    monkeypatch.setenv("REELVAULT_TRACING_ENDPOINT", f"http://otel:{ENDPOINT_SECRET}@127.0.0.1:9")
    assert main(["serve", "--check", "--json"]) != 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err
    assert ENDPOINT_SECRET not in printed.out + printed.err
    shown = json.loads(printed.out)["settings"]
    assert shown["REELVAULT_DATABASE_URL"] == (
        "postgresql+psycopg://rv:***@127.0.0.1:1/x?password=***&sslmode=disable"
    )
    assert shown["REELVAULT_S3_ENDPOINT_URL"] == "http://AKIA:***@127.0.0.1:9"
    assert shown["REELVAULT_TRACING_ENDPOINT"] == "http://otel:***@127.0.0.1:9"
    assert "catalog: REELVAULT_DATABASE_URL" in printed.err  # the check ran, and failed


def test_preflight_masks_the_catalogs_and_the_endpoints_passwords() -> None:
    settings = Settings(
        database_url=f"postgresql+psycopg://rv@db/x?password={SECRET}",
        s3_endpoint_url=f"http://AKIA:{ENDPOINT_SECRET}@127.0.0.1:9",
        kms_endpoint_url=f"http://AKIA:{ENDPOINT_SECRET}@127.0.0.1:10",
    )
    assert preflight._hidden_url(settings.resolved_database_url) == safe_url(
        settings.resolved_database_url
    )
    rows = dict(preflight.effective_settings(settings))
    assert rows["REELVAULT_DATABASE_URL"] == "postgresql+psycopg://rv@db/x?password=***"
    assert rows["REELVAULT_KMS_ENDPOINT_URL"] == "http://AKIA:***@127.0.0.1:10"
    assert SECRET not in repr(rows)
    assert ENDPOINT_SECRET not in repr(rows)
    refused = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "HeadBucket")
    error = preflight._store_error(refused, settings, "HeadBucket")
    assert "http://AKIA:***@127.0.0.1:9" in error.message
    assert ENDPOINT_SECRET not in error.message


# -- tracing ----------------------------------------------------------------------------------


def test_the_tracing_line_masks_the_endpoints_password(logs: Logs) -> None:
    pytest.importorskip("opentelemetry.sdk")
    settings = Settings(tracing_endpoint=f"http://otel:{ENDPOINT_SECRET}@127.0.0.1:9")

    async def run() -> None:
        async with tracing.exporting(settings):
            pass

    asyncio.run(run())
    lines = [line for line in logs if line["event"] == "tracing"]
    assert lines[0]["endpoint"] == "http://otel:***@127.0.0.1:9"
    assert ENDPOINT_SECRET not in repr(logs)
