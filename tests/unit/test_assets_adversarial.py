"""Attacks on the asset domain (``reelvault.assets``) and the catalog under it: listing
prefixes and page tokens, hostile paths and labels, misuse of an upload object, and a
catalog writer who moves headers, object keys, sizes or tenants between rows.

Several began as findings of an adversarial review and pin their fixes. The catalog
backend matters for some of them (SQLite's LIKE folds ASCII case and limits pattern length;
PostgreSQL refuses NUL in text), so the suite runs on both (``REELVAULT_TEST_DATABASE_URL``).
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from asset_helpers import get, listed, put
from sqlalchemy import select

from reelvault import errors
from reelvault.assets import MAX_CHUNK, MAX_LABELS, Assets, UploadSpec
from reelvault.catalog.tables import AssetRow

pytestmark = pytest.mark.db

ON_POSTGRES = bool(os.environ.get("REELVAULT_TEST_DATABASE_URL"))
ON_SQLITE = not ON_POSTGRES
F = 64 * 1024


def token(obj: object) -> str:
    """A page token in the service's own encoding (base64url of JSON), forged."""
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


# -- listing: prefixes are literal ----------------------------------------------------

# Every character LIKE treats specially on either backend (SQLAlchemy's autoescape uses
# "/" as its escape character), in every position.
WILDCARD_PATHS = [
    "a%b",
    "a%",
    "axb",
    "a_b",
    "a_",
    "a\\b",
    "a\\%",
    "a\\\\x",
    "a/b",
    "a/%/c",
    "a/_/c",
    "a/x/b",
    "%",
    "_",
    "\\",
    "[a]",
    "[a]x",
    "b*",
    "b?x",
    "é/x",
]


def test_listing_prefixes_are_literal_strings_not_like_patterns(assets, tenant):
    for path in WILDCARD_PATHS:
        put(assets, tenant, b"x", path)
    prefixes = {p[:i] for p in WILDCARD_PATHS for i in range(1, len(p) + 1)}
    prefixes |= {"%%", "_%", "a%_", "a\\_", "a/%", "a//", "[", "*", "?", "e"}
    for prefix in sorted(prefixes):
        expected = sorted(p for p in WILDCARD_PATHS if p.startswith(prefix))
        # sorted: the catalog orders by its collation, which need not be Python's
        assert sorted(listed(assets, tenant, prefix)) == expected, prefix


def test_listing_prefixes_are_case_sensitive(assets, tenant):
    for path in ["Campaign/a", "campaign/b", "CAMPAIGN/c", "campaign-x"]:
        put(assets, tenant, b"x", path)
    assert listed(assets, tenant, "campaign/") == ["campaign/b"]
    assert listed(assets, tenant, "Campaign/") == ["Campaign/a"]
    assert listed(assets, tenant, "CAMP") == ["CAMPAIGN/c"]


def test_a_prefix_longer_than_any_path_is_not_an_outage(assets, tenant):
    put(assets, tenant, b"x", "a/b")
    for prefix in ["a" * 1025, "a" * 60_000]:
        try:
            page, next_token = assets.list(tenant, prefix=prefix)
        except errors.InvalidArgument:
            continue
        assert (page, next_token) == ([], "")


@pytest.mark.parametrize("where", ["prefix", "page token"])
def test_a_nul_in_a_listing_is_refused_or_matches_nothing(assets, tenant, where):
    put(assets, tenant, b"x", "a/b")
    kwargs = {"prefix": "a\0"} if where == "prefix" else {"page_token": token({"a": "\0", "p": ""})}
    try:
        page, _ = assets.list(tenant, **kwargs)
    except errors.InvalidArgument:
        return
    # Only a ReelvaultError may escape; a NUL sorts before every path.
    assert [a.path for a in page] == ([] if where == "prefix" else ["a/b"])


# -- page tokens -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        token([1, 2]),
        token("a"),
        token(None),
        token({"a": 5, "p": ""}),
        token({"a": ["x"], "p": ""}),
        token({"a": "x"}),
        token({"p": ""}),
        token({"a": "x", "p": "other/"}),
        token({"a": "x", "p": None}),
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        "%%%",
        "a",
        "=" * 8,
        "A" * 100_000,
    ],
)
def test_forged_page_tokens_are_invalid_arguments(assets, tenant, forged):
    put(assets, tenant, b"x", "a/b")
    with pytest.raises(errors.InvalidArgument) as caught:
        assets.list(tenant, page_token=forged)
    assert type(caught.value) is errors.InvalidArgument


@pytest.mark.parametrize("nesting", ["[", '{"a":'])
def test_a_deeply_nested_page_token_is_an_invalid_argument(assets, tenant, nesting):
    forged = base64.urlsafe_b64encode((nesting * 100_000).encode()).decode()
    with pytest.raises(errors.InvalidArgument):
        assets.list(tenant, page_token=forged)


def test_a_page_token_reaches_only_the_callers_tenant(assets, tenant, tenant_keys):
    other = tenant_keys.create_tenant("globex").id
    for i in range(4):
        put(assets, tenant, b"acme", f"shared/{i}")
        put(assets, other, b"globex", f"shared/{i}")
    _, acme_token = assets.list(tenant, prefix="shared/", page_size=1)
    # Another tenant replaying (or forging) a position sees only its own assets.
    page, _ = assets.list(other, prefix="shared/", page_token=acme_token)
    assert {a.tenant_id for a in page} == {other}
    assert [a.path for a in page] == ["shared/1", "shared/2", "shared/3"]
    page, _ = assets.list(other, page_token=token({"a": "", "p": ""}))
    assert {a.tenant_id for a in page} == {other}


def test_a_forged_position_cannot_escape_the_prefix(assets, tenant):
    for path in ["a/1", "b/1", "c/1"]:
        put(assets, tenant, b"x", path)
    for after in ["", "a", "a/1", "0"]:
        page, _ = assets.list(tenant, prefix="b/", page_token=token({"a": after, "p": "b/"}))
        assert [a.path for a in page] == ["b/1"]
    page, _ = assets.list(tenant, prefix="b/", page_token=token({"a": "b/1", "p": "b/"}))
    assert page == []


# -- paths and labels ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a\0b",
        "\0",
        "a\tb",
        "a\rb",
        "a\x1bb",
        "a\x7fb",
        "a\ud800b",
        "a/",
        "..",
        "../a",
        "a/..",
        "./a",
        "é" * 513,  # 1026 bytes in 513 characters
        "\U0001f3ac" * 257,  # 1028 bytes in 257 characters
    ],
)
def test_hostile_paths_are_refused(assets, tenant, store, path):
    with pytest.raises(errors.InvalidArgument):
        assets.begin_upload(tenant, UploadSpec(path=path))
    assert list(store.list_keys()) == []


@pytest.mark.parametrize(
    "path",
    [
        "x" * 1024,
        "é" * 512,  # exactly 1024 bytes
        "\U0001f3ac/clip.mp4",
        "a\\..\\b",  # a backslash is no separator: paths never reach storage
        "a/.../b",
        "..a/b..",
        " leading and trailing ",
        "%_*?[]",
    ],
)
def test_unusual_but_valid_paths_round_trip_and_never_reach_storage(assets, tenant, store, path):
    info = put(assets, tenant, b"data", path)
    assert info.path == path
    assert assets.stat(tenant, info.id).path == path
    assert listed(assets, tenant, path) == [path]
    [key] = list(store.list_keys())
    assert key.startswith(f"t/{tenant}/") and path not in key


@pytest.mark.parametrize(
    "path",
    ["a\x85b", "a\x9b31mb", "a\u202eb", "a\u200bb", "a\ufeffb", "a\u2028b", "a\u2029b"],
    ids=["NEL", "CSI", "RLO", "ZWSP", "BOM", "LSEP", "PSEP"],
)
def test_paths_with_invisible_or_control_characters_are_refused(assets, tenant, path):
    with pytest.raises(errors.InvalidArgument):
        assets.begin_upload(tenant, UploadSpec(path=path))


@pytest.mark.parametrize(
    "labels",
    [
        {"": "v"},
        {"k" * 64: "v"},
        {"Key": "v"},
        {"k/ey": "v"},
        {"k\n": "v"},
        {"k": "v" * 257},
        {"k": "a\0b"},
        {"k": "a\nb"},
        {"k": "a\x85b"},
        {"k": "a\u202eb"},
    ],
    ids=[
        "empty key",
        "64-char key",
        "upper case",
        "slash",
        "newline key",
        "257-char value",
        "NUL value",
        "newline value",
        "C1 value",
        "bidi value",
    ],
)
def test_hostile_labels_are_refused(assets, tenant, labels):
    with pytest.raises(errors.InvalidArgument):
        assets.begin_upload(tenant, UploadSpec(path="p", labels=labels))


def test_the_largest_label_set_is_accepted_and_returned_intact(assets, tenant):
    labels = {f"k{i:02d}-{'x' * 58}": "\U0001f3ac" * 256 for i in range(MAX_LABELS)}
    info = put(assets, tenant, b"x", "p", labels=labels)
    assert dict(assets.stat(tenant, info.id).labels) == labels


# -- an upload object used out of order -----------------------------------------------


def test_a_finished_upload_refuses_more_work(assets, tenant, store):
    upload = assets.begin_upload(tenant, UploadSpec(path="done"))
    upload.write(b"abc")
    info = upload.complete()
    for again in (lambda: upload.write(b"more"), upload.complete):
        with pytest.raises(errors.FailedPrecondition):
            again()
    upload.abort()  # a late abort must not destroy the committed asset
    assert get(assets, tenant, info.id) == b"abc"
    assert len(list(store.list_keys())) == 1


def test_an_aborted_upload_cannot_be_completed(assets, tenant, store):
    upload = assets.begin_upload(tenant, UploadSpec(path="gone"))
    upload.write(b"abc")
    upload.abort()
    with pytest.raises(errors.FailedPrecondition):
        upload.complete()
    assert assets.list(tenant) == ([], "")
    assert list(store.list_keys()) == []


def test_an_oversized_chunk_after_good_ones_aborts_the_whole_upload(assets, tenant, store):
    upload = assets.begin_upload(tenant, UploadSpec(path="big"))
    upload.write(os.urandom(MAX_CHUNK))
    with pytest.raises(errors.InvalidArgument):
        upload.write(bytes(MAX_CHUNK + 1))
    with pytest.raises(errors.FailedPrecondition):
        upload.complete()
    assert (list(store.list_keys()), store.pending_uploads()) == ([], 0)


# -- someone who can write the catalog -------------------------------------------------


def _rows(database) -> dict[str, AssetRow]:
    with database.transaction(readonly=True) as session:
        rows = {row.id: row for row in session.scalars(select(AssetRow))}
        for row in rows.values():
            session.expunge(row)
    return rows


def _update(database, asset_id: str, **values) -> None:
    with database.transaction() as session:
        row = session.get(AssetRow, asset_id)
        for name, value in values.items():
            setattr(row, name, value)


def _swap(database, one: str, two: str, columns: list[str]) -> None:
    """Exchange ``columns`` between two rows (object keys are unique: via a placeholder)."""
    rows = _rows(database)
    _update(database, one, object_key="placeholder")
    _update(database, two, **{c: getattr(rows[one], c) for c in columns})
    _update(database, one, **{c: getattr(rows[two], c) for c in columns})
    if "object_key" not in columns:
        _update(database, one, object_key=rows[one].object_key)


def _refused(assets: Assets, tenant: str, asset_id: str, **rng) -> None:
    """The read fails as tampering (or a key it may not use): never any bytes."""
    received = b""
    with pytest.raises((errors.IntegrityError, errors.KeyUnavailable)):
        download = assets.open_download(tenant, asset_id, **rng)
        for chunk in download.chunks:
            received += chunk
    assert received == b""


def _genuine_or_refused(assets: Assets, tenant: str, asset_id: str, expected: bytes, **rng):
    """Exactly the right bytes, or DATA_LOSS after nothing but a prefix of them."""
    received = b""
    try:
        for chunk in assets.open_download(tenant, asset_id, **rng).chunks:
            received += chunk
    except errors.IntegrityError:
        assert expected.startswith(received)
    else:
        assert received == expected


@pytest.mark.parametrize("swapped", ["object_key", "header", "header+object_key"])
def test_rows_pointing_at_another_assets_ciphertext_are_refused(assets, tenant, database, swapped):
    one = put(assets, tenant, os.urandom(3 * F + 5), "one")
    two = put(assets, tenant, os.urandom(3 * F + 5), "two")
    _swap(database, one.id, two.id, swapped.split("+"))
    for asset_id in (one.id, two.id):
        _refused(assets, tenant, asset_id)
        _refused(assets, tenant, asset_id, offset=F, length=10)
        _refused(assets, tenant, asset_id, suffix=1)


@pytest.mark.parametrize("delta", [-F - 32, -1, 1, F])
def test_a_catalog_size_that_lies_is_refused(assets, tenant, database, delta):
    data = os.urandom(3 * F + 5)
    info = put(assets, tenant, data, "sized")
    _update(database, info.id, size=len(data) + delta)
    # A range reaching the end needs the final frame where the size says it is.
    _refused(assets, tenant, info.id)
    _refused(assets, tenant, info.id, suffix=1)
    # A range short of it is authenticated frame by frame: genuine bytes or nothing.
    _genuine_or_refused(assets, tenant, info.id, data[:1], offset=0, length=1)
    _genuine_or_refused(assets, tenant, info.id, data[F : F + 10], offset=F, length=10)


def test_a_row_moved_to_another_tenant_does_not_decrypt_there(
    assets, tenant, tenant_keys, database
):
    other = tenant_keys.create_tenant("globex").id
    info = put(assets, tenant, b"acme's footage", "secret")
    _update(database, info.id, tenant_id=other)
    _refused(assets, other, info.id)
    _update(database, info.id, tenant_id=tenant)
    assert get(assets, tenant, info.id) == b"acme's footage"


def test_rows_of_two_tenants_swapping_ciphertext_are_refused(assets, tenant, tenant_keys, database):
    other = tenant_keys.create_tenant("globex").id
    mine = put(assets, tenant, b"acme's footage", "secret")
    theirs = put(assets, other, b"globex's data!", "decoy")
    _swap(database, mine.id, theirs.id, ["object_key", "header"])
    _refused(assets, other, theirs.id)
    _refused(assets, tenant, mine.id)
