"""`reelvault apikey bootstrap` under attack and careless use: symlinks, directories and
odd paths at --out, permissive umasks, broken catalog URLs, hostile descriptions, and
failures halfway. Comments marked "Found in review" name the flaw each such test caught."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reelvault.auth import ApiKeyInfo, ApiKeys, Principal, Role, authorize
from reelvault.catalog import Database
from reelvault.cli import apikey as apikey_commands
from reelvault.cli import main
from reelvault.clock import SystemClock
from reelvault.errors import PermissionDenied, Unauthenticated
from reelvault.rpc.actions import METHOD_ACTIONS

TOKEN = re.compile(r"rvk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")
ERROR_PREFIX = "reelvault: error: "
ANNOUNCEMENT = "reelvault apikey bootstrap: catalog "


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at every level, so a secret logged at DEBUG anywhere is caught."""
    caplog.set_level(logging.DEBUG)
    return caplog


def one_error_line(err: str) -> str:
    """The single ``reelvault: error: ...`` line scripts and people read; fails on anything
    else (a traceback, several lines, nothing). The line naming the deployment acted on
    comes first and is not an error."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(ANNOUNCEMENT)]
    assert len(lines) == 1, err
    assert lines[0].startswith(ERROR_PREFIX), err
    return lines[0]


def platform_keys(catalog_path: Path) -> list[ApiKeyInfo]:
    """The platform-admin keys in the catalog; none when the catalog was never created
    (opening it here would create it, hiding whether the command did)."""
    if not catalog_path.exists():
        return []
    database = Database(f"sqlite:///{catalog_path}")
    try:
        return ApiKeys(database, SystemClock()).list(None)
    finally:
        database.dispose()


def principal(url: str, token: str) -> Principal:
    database = Database(url)
    try:
        return ApiKeys(database, SystemClock()).authenticate(token)
    finally:
        database.dispose()


def bootstrap_json(*extra: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["apikey", "bootstrap", "--json", *extra]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


# -- --out: symlinks, directories, missing and read-only places ----------------------------


@pytest.mark.parametrize("target", ["existing", "missing", "dangling"])
def test_a_symlink_at_out_is_refused_and_never_followed(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    """A link planted at the path (by another user of a shared directory, say) must not
    redirect the secret to a file the attacker can read, nor clobber the file it names."""
    victim = {
        "existing": tmp_path / "victim.txt",
        "missing": tmp_path / "planted.txt",
        "dangling": tmp_path / "nowhere" / "planted.txt",
    }[target]
    if target == "existing":
        victim.write_text("keep me\n")
    link = tmp_path / "admin.token"
    link.symlink_to(victim)

    assert main(["apikey", "bootstrap", "--out", str(link)]) == 1
    assert "File exists" in one_error_line(capsys.readouterr().err)
    assert link.is_symlink()
    assert os.readlink(link) == str(victim)
    if target == "existing":
        assert victim.read_text() == "keep me\n"
    else:
        assert not victim.exists()
    assert not catalog_path.exists()  # refused before the catalog was touched: no key


def test_a_directory_at_out_is_refused_and_left_alone(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out secrets`` where secrets is a directory must not write into it or remove it."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    assert main(["apikey", "bootstrap", "--out", str(directory)]) == 1
    one_error_line(capsys.readouterr().err)
    assert directory.is_dir()
    assert list(directory.iterdir()) == []
    assert not catalog_path.exists()


def test_a_missing_directory_fails_before_any_key_exists(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in the directory must not create it, nor a key whose secret went nowhere."""
    out = tmp_path / "no-such-dir" / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No such file or directory" in line
    assert str(out) in line
    assert not out.parent.exists()
    assert not catalog_path.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_fails_before_any_key_exists(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key is made when its secret cannot be stored."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["apikey", "bootstrap", "--out", str(locked / "admin.token")]) == 1
        assert "Permission denied" in one_error_line(capsys.readouterr().err)
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []
    assert not catalog_path.exists()


def test_a_trailing_slash_is_not_turned_into_a_file(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--out /run/secrets/`` names a directory; the operator does not expect a regular
    file called ``secrets`` holding the key."""
    # Found in review: --out is parsed with type=Path, which drops the trailing "/", so
    # `--out newdir/` silently creates the regular file "newdir" (exit 0) instead of
    # failing like open("newdir/", O_CREAT) does (EISDIR).
    assert main(["apikey", "bootstrap", "--out", f"{tmp_path / 'newdir'}/"]) == 1
    one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "newdir").exists()
    assert platform_keys(catalog_path) == []


def test_out_at_the_catalog_file_does_not_destroy_the_catalog(
    catalog_url: str, catalog_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new deployment has no catalog yet, so ``--out`` naming the catalog's path passes
    the O_EXCL check; the command must still refuse instead of reporting success."""
    # Found in review: the empty --out file is opened as the (new) SQLite catalog, migrated, and
    # then its first bytes are overwritten with the secret: exit 0, the catalog is
    # corrupt ("file is not a database") and the "secret file" is 80 KiB of garbage.
    assert main(["apikey", "bootstrap", "--out", str(catalog_path)]) == 1
    one_error_line(capsys.readouterr().err)


# -- mode ----------------------------------------------------------------------------------


@pytest.fixture(params=[0o000, 0o002, 0o022])
def permissive_umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_the_secret_file_is_0600_whatever_the_umask(
    catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A umask of 0 or 002 (common in shared or container setups) must not make the
    platform-admin secret group- or world-readable."""
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 0
    capsys.readouterr()
    assert stat.S_ISREG(out.lstat().st_mode)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


# -- where the secret goes -------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_with_out_the_secret_is_only_in_the_file(
    catalog_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    all_logs: pytest.LogCaptureFixture,
    as_json: bool,
) -> None:
    """Terminals, CI logs and shell history keep stdout and stderr; with --out the secret
    must appear in neither, nor in log records, with or without --json."""
    out = tmp_path / "admin.token"
    flags = ["--json"] if as_json else []
    assert main(["apikey", "bootstrap", "--out", str(out), *flags]) == 0
    printed = capsys.readouterr()
    content = out.read_text()
    assert TOKEN.fullmatch(content.removesuffix("\n"))
    assert content.count("\n") == 1  # exactly one line: `$(cat admin.token)` just works
    token = content.strip()
    for channel in (printed.out, printed.err, all_logs.text):
        assert token not in channel
        assert TOKEN.search(channel) is None  # nor any other token
    if as_json:
        data = json.loads(printed.out)
        assert "secret" not in data
        assert data["secret_file"] == str(out)
        assert data["api_key"]["id"] == token[4:20]
    assert principal(catalog_url, token).role is Role.PLATFORM_ADMIN


def test_without_out_the_secret_is_printed_once_to_stdout_only(
    catalog_url: str, capsys: pytest.CaptureFixture[str], all_logs: pytest.LogCaptureFixture
) -> None:
    """Printed once, on stdout (so `> file` captures it), never on stderr or in logs."""
    assert main(["apikey", "bootstrap"]) == 0
    printed = capsys.readouterr()
    tokens = TOKEN.findall(printed.out)
    assert len(tokens) == 1
    assert printed.out.count(tokens[0]) == 1
    assert TOKEN.search(printed.err) is None
    assert TOKEN.search(all_logs.text) is None
    assert principal(catalog_url, tokens[0]).role is Role.PLATFORM_ADMIN


# -- failures after the file exists ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # a directory where the SQLite file should be
        ("sqlite:///{tmp}/a-directory", "catalog database unavailable"),
        # a regular file where the catalog's directory should be
        ("sqlite:///{tmp}/a-file/catalog.sqlite3", "File exists"),
        # nothing listens on port 1
        (
            "postgresql+psycopg://admin:hunter2-db-pass@127.0.0.1:1/vault?connect_timeout=3",
            "catalog database unavailable",
        ),
        # not a backend reelvault supports
        ("mysql://admin:hunter2-db-pass@127.0.0.1/vault", "unsupported catalog database"),
    ],
)
def test_a_catalog_failure_removes_the_new_file_and_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
    catalog_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    url: str,
    expected: str,
) -> None:
    """The file is made before the key; when the catalog then fails, an empty file left
    behind would block the retry (never overwritten) and look like a secret."""
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("REELVAULT_DATABASE_URL", url.format(tmp=tmp_path))
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert expected in line
    assert "hunter2-db-pass" not in line  # the database password is not echoed
    assert not out.exists()


def test_an_unknown_database_driver_is_a_clear_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    catalog_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A mistyped driver (``postgresql+pyscopg``) is a configuration error like any other."""
    # Found in review: Settings only checks the URL's syntax; Database() -> create_engine raises
    # sqlalchemy.exc.NoSuchModuleError, which is neither a ReelvaultError nor an OSError,
    # so main() lets it escape: a traceback instead of exit 1 and one error line.
    monkeypatch.setenv(
        "REELVAULT_DATABASE_URL", "postgresql+pyscopg://admin:hunter2-db-pass@127.0.0.1/vault"
    )
    out = tmp_path / "admin.token"
    try:
        code = main(["apikey", "bootstrap", "--out", str(out)])
    except Exception as exc:  # what the operator sees as a traceback
        pytest.fail(f"traceback instead of an error line: {type(exc).__name__}: {exc}")
    assert code == 1
    assert "hunter2-db-pass" not in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_catalog_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    catalog_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    url: str,
) -> None:
    """A key in a catalog that vanishes when the command exits authenticates nowhere;
    reporting success hands the operator a secret that does not work."""
    # Found in review: exit 0 and "created platform-admin API key ...": the key lived in an
    # in-memory SQLite database that was discarded by database.dispose().
    monkeypatch.setenv("REELVAULT_DATABASE_URL", url)
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 1
    one_error_line(capsys.readouterr().err)
    assert not out.exists()


class _FullDisk:
    """A file whose write fails as on a full disk (ENOSPC), closing the real file."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.close()

    def write(self, _text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_leaves_no_usable_key_behind(
    monkeypatch: pytest.MonkeyPatch,
    catalog_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """If the secret cannot be written, nobody holds it: a platform-admin key that stays
    valid is an unaccounted-for credential with full platform rights."""

    # Found in review: the key is committed before the secret is written; when the write fails
    # the file is removed but the key stays valid in the catalog. Fix: revoke it (or
    # create it in a transaction that commits only after the write succeeded).
    def full_disk_open(*args: Any, **kwargs: Any) -> _FullDisk:
        return _FullDisk(open(*args, **kwargs))  # _FullDisk closes it

    monkeypatch.setattr(apikey_commands, "open", full_disk_open, raising=False)
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in one_error_line(err)
    assert TOKEN.search(err) is None
    assert not out.exists()
    assert [key.id for key in platform_keys(catalog_path) if key.revoked_at is None] == []


# -- descriptions ----------------------------------------------------------------------------


@pytest.mark.parametrize("description", ["", "x" * 256, "ops on-call: café ✓ 東京"])
def test_descriptions_within_the_limits_are_stored_exactly(
    catalog_path: Path, capsys: pytest.CaptureFixture[str], description: str
) -> None:
    """Empty, maximal and non-ASCII printable descriptions are all what ApiKeys accepts;
    the command must not narrow or alter them."""
    data = bootstrap_json("--description", description, capsys=capsys)
    assert data["api_key"]["description"] == description
    keys = platform_keys(catalog_path)
    assert [key.description for key in keys] == [description]


@pytest.mark.parametrize(
    "description",
    ["x" * 257, "line one\nline two", "tab\there", "\x1b[2Jclear", "abc\u202eevil", "nul\x00"],
)
def test_bad_descriptions_fail_clearly_and_leave_no_file_and_no_key(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], description: str
) -> None:
    """Control characters would forge lines in ``apikey ls`` and in logs; the error must be
    the clear InvalidArgument, and no file or key may be left from the attempt."""
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out), "--description", description]) == 1
    printed = capsys.readouterr()
    line = one_error_line(printed.err)
    assert "at most 256 printable characters" in line
    assert description not in line  # not echoed back to the terminal
    assert printed.out == ""
    assert not out.exists()
    assert platform_keys(catalog_path) == []


def test_a_bad_description_does_not_touch_the_catalog(
    catalog_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage mistake must have no side effect: it should not create (or migrate the
    schema of) the production catalog, just as a taken --out path does not."""
    # Found in review: the description is only checked inside ApiKeys.create, after the catalog
    # was created and migrated; a typo against a not-yet-upgraded production database
    # upgrades its schema under the running (older) replicas.
    out = tmp_path / "admin.token"
    assert main(["apikey", "bootstrap", "--out", str(out), "--description", "a\nb"]) == 1
    one_error_line(capsys.readouterr().err)
    assert not catalog_path.exists()


# -- the key itself --------------------------------------------------------------------------


def test_the_key_is_a_platform_admin_of_no_tenant_with_exactly_its_rights(
    catalog_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first key must be able to create tenants and keys, and (separation of duties)
    still not read any tenant's assets."""
    data = bootstrap_json(capsys=capsys)
    caller = principal(catalog_url, data["secret"])
    assert caller.role is Role.PLATFORM_ADMIN
    assert caller.tenant_id is None
    assert caller.key_id == data["api_key"]["id"]
    for method in (
        "/reelvault.v1.TenantService/CreateTenant",
        "/reelvault.v1.ApiKeyService/CreateApiKey",
    ):
        authorize(caller, METHOD_ACTIONS[method])
    asset_methods = [m for m in METHOD_ACTIONS if m.startswith("/reelvault.v1.AssetService/")]
    assert asset_methods
    for method in asset_methods:
        with pytest.raises(PermissionDenied):
            authorize(caller, METHOD_ACTIONS[method])


def test_bootstrap_into_a_live_catalog_leaves_existing_keys_alone(
    catalog_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-running bootstrap (say, after losing the first secret) migrates a catalog that is
    already current; it must neither revoke nor replace the keys in it, and revoking either
    key afterwards must not affect the other."""
    database = Database(catalog_url)
    try:
        database.migrate()
        keys = ApiKeys(database, SystemClock())
        _, old_token = keys.create(tenant_id=None, role=Role.PLATFORM_ADMIN, description="old")

        new_token = bootstrap_json(capsys=capsys)["secret"]
        old, new = keys.authenticate(old_token), keys.authenticate(new_token)
        assert old.key_id != new.key_id
        assert [key.description for key in keys.list(None)] == [
            "old",
            "bootstrap platform admin",
        ]

        keys.revoke(old.key_id)
        with pytest.raises(Unauthenticated):
            keys.authenticate(old_token)
        assert keys.authenticate(new_token).role is Role.PLATFORM_ADMIN
        keys.revoke(new.key_id)
        with pytest.raises(Unauthenticated):
            keys.authenticate(new_token)
    finally:
        database.dispose()
