"""`reelvault audit` end to end, against a `reelvault dev` vault, as an auditor runs it.

A tenant's keys do some asset work (one of them is refused), then the tenant's auditor
finds it with `audit query` and its filters, exports the log with its checkpoint and
verifies the pair offline; an edited export fails naming the event. The module starts its
own `reelvault dev` with test_client_cli's fixture, and drives every step as a subprocess.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import test_client_cli as harness
from test_client_cli import Dev, assert_cli_error, command, raw, run

from reelvault.cli.audit import TimeSyntaxError, parse_time

pytestmark = pytest.mark.slow

dev = harness.dev  # the same module-scoped fixture: one `reelvault dev` for this module

ASSET_PATH = "campaign-7/1080p/trailer.mp4"
LINE_TIMEOUT = 20.0


NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h", NOW - timedelta(hours=1)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-02-01", datetime(2026, 2, 1, tzinfo=UTC)),
        ("2026-02-01T10:30:00Z", datetime(2026, 2, 1, 10, 30, tzinfo=UTC)),
        (
            "2026-02-01T10:30:00+02:00",
            datetime(2026, 2, 1, 10, 30, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_parse_time(text: str, expected: datetime):
    assert parse_time(text, NOW) == expected
    assert parse_time(text, NOW).tzinfo is not None


@pytest.mark.parametrize("text", ["", "yesterday", "1y", "-1h", "1.5h", "h", "99999999999w"])
def test_parse_time_refuses(text: str):
    with pytest.raises(TimeSyntaxError):
        parse_time(text, NOW)


@dataclass
class Studio:
    tenant: str
    tokens: dict[str, str]  # role -> secret
    key_ids: dict[str, str]  # role -> API key id
    asset: dict[str, Any]


@pytest.fixture(scope="module")
def studio(dev: Dev, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    """A tenant with an admin, ingest, renderer and auditor key, and some history: an
    upload, a download, a stat, and a delete the renderer is refused."""
    admin = dev.admin_token
    tenant = run(dev, "tenant", "create", "audited-studios", token=admin)["id"]
    tokens, key_ids = {}, {}
    for role in ("admin", "ingest", "renderer", "auditor"):
        created = run(dev, "apikey", "create", "--tenant", tenant, "--role", role, token=admin)
        tokens[role], key_ids[role] = created["secret"], created["api_key"]["id"]
    source = tmp_path_factory.mktemp("studio") / "trailer.mp4"
    source.write_bytes(b"frame" * 1000)
    asset = run(dev, "asset", "put", str(source), "--path", ASSET_PATH, token=tokens["ingest"])
    copy = source.with_name("copy.mp4")
    run(dev, "asset", "get", asset["id"], "-o", str(copy), token=tokens["renderer"])
    run(dev, "asset", "stat", asset["id"], token=tokens["renderer"])
    assert_cli_error(raw(dev, "asset", "rm", asset["id"], token=tokens["renderer"]), "renderer")
    return Studio(tenant, tokens, key_ids, asset)


def query(dev: Dev, studio: Studio, *filters: str) -> list[dict[str, Any]]:
    found = run(dev, "audit", "query", "--since", "1h", *filters, token=studio.tokens["auditor"])
    assert found["truncated"] is False
    events: list[dict[str, Any]] = found["events"]
    return events


def test_query_finds_the_accesses_by_actor_action_outcome_and_resource(dev: Dev, studio: Studio):
    asset_id = studio.asset["id"]
    ingest, renderer = studio.key_ids["ingest"], studio.key_ids["renderer"]
    everything = query(dev, studio)
    assert {e["log_id"] for e in everything} == {studio.tenant}
    for event in everything:  # the OCSF record comes along, as an object
        assert event["record"]["metadata"]["uid"] == event["event_id"]
        assert event["record"]["unmapped"]["reelvault"]["action"] == event["action"]
    kinds = {(e["action"], e["outcome"], e["actor_key_id"]) for e in everything}
    assert {
        ("asset.write", "allowed", ingest),
        ("asset.read", "allowed", renderer),
        ("asset.stat", "allowed", renderer),
        ("asset.delete", "denied", renderer),
    } <= kinds

    by_ingest = query(dev, studio, "--actor", ingest)
    assert by_ingest and {e["actor_key_id"] for e in by_ingest} == {ingest}
    assert "asset.write" in {e["action"] for e in by_ingest}

    reads = query(dev, studio, "--action", "asset.read")
    assert len(reads) == 1
    assert reads[0]["resource_id"] == asset_id
    assert reads[0]["record"]["resources"][0]["name"] == ASSET_PATH

    denied = query(dev, studio, "--outcome", "denied")
    assert {e["outcome"] for e in denied} == {"denied"}
    refused = [e for e in denied if e["action"] == "asset.delete"]
    assert [(e["actor_key_id"], e["status"]) for e in refused] == [(renderer, "PERMISSION_DENIED")]
    assert refused[0]["method"] == "/reelvault.v1.AssetService/DeleteAsset"

    on_the_asset = query(dev, studio, "--resource", asset_id, "--actor", renderer)
    assert {e["resource_id"] for e in on_the_asset} == {asset_id}
    assert {"asset.read", "asset.stat"} <= {e["action"] for e in on_the_asset}
    both = query(
        dev, studio, "--actor", renderer, "--action", "asset.read", "--action", "asset.stat"
    )
    assert sorted(e["action"] for e in both) == ["asset.read", "asset.stat"]
    by_method = query(
        dev, studio, "--actor", renderer, "--method", "/reelvault.v1.AssetService/StatAsset"
    )
    assert by_method == [e for e in both if e["action"] == "asset.stat"]

    table = raw(
        dev,
        "audit",
        "query",
        "--since",
        "1h",
        "--action",
        "asset.write",
        token=studio.tokens["auditor"],
    )
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["TIME", "SEQ", "ACTION", "OUTCOME", "STATUS", "ACTOR", "RESOURCE"]
    assert "asset.write" in row and ingest in row and f"asset:{asset_id}" in row

    limited = run(
        dev, "audit", "query", "--since", "1h", "--limit", "2", token=studio.tokens["auditor"]
    )
    assert len(limited["events"]) == 2 and limited["truncated"] is True


def test_export_with_its_checkpoint_verifies_offline(dev: Dev, studio: Studio, tmp_path: Path):
    auditor = studio.tokens["auditor"]
    pinned = run(dev, "audit", "checkpoint", token=auditor)["verifier_key"]
    export, note = tmp_path / "log.jsonl", tmp_path / "log.checkpoint"
    exported = run(
        dev, "audit", "export", "--out", str(export), "--checkpoint-out", str(note), token=auditor
    )
    lines = export.read_bytes().splitlines(keepends=True)
    assert exported["events"] == len(lines) == exported["checkpoint"]["size"] > 5
    assert note.read_text() == exported["checkpoint"]["note"]
    assert [json.loads(line)["metadata"]["sequence"] for line in lines] == list(range(len(lines)))

    # Offline: no address, no token.
    verified = run(
        dev, "audit", "verify", str(export), "--checkpoint", str(note), "--key", pinned, token=None
    )
    assert verified["verified"] is True
    assert verified["events"] == verified["checkpoint"]["size"] == len(lines)
    key_file = tmp_path / "audit.vkey"
    key_file.write_text(pinned + "\n")
    text = raw(
        dev,
        "audit",
        "verify",
        str(export),
        "--checkpoint",
        str(note),
        "--key",
        str(key_file),
        token=None,
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"verified: {len(lines)} events, checkpoint size {len(lines)}, ")
    assert f"log {studio.tenant}" in text.stdout
    # Every log is signed with the same key: the auditor says which one they expect.
    args = ("audit", "verify", str(export), "--checkpoint", str(note), "--key", pinned, "--log")
    assert run(dev, *args, studio.tenant, token=None)["log_id"] == studio.tenant
    assert_cli_error(raw(dev, *args, "platform", token=None), studio.tenant, "platform")

    # A later export extends the log the earlier checkpoint describes.
    later, later_note = tmp_path / "later.jsonl", tmp_path / "later.checkpoint"
    run(
        dev,
        "audit",
        "export",
        "--out",
        str(later),
        "--checkpoint-out",
        str(later_note),
        token=auditor,
    )
    assert later.read_bytes().startswith(export.read_bytes())
    consistent = run(
        dev,
        "audit",
        "verify",
        str(later),
        "--checkpoint",
        str(later_note),
        "--key",
        pinned,
        "--previous",
        str(note),
        token=None,
    )
    assert consistent["previous_checked"] is True

    # One character of one event changed: verification fails and names it.
    k = len(lines) // 2
    uid = json.loads(lines[k])["metadata"]["uid"]
    assert lines[k].count(b'"category_uid":6') == 1
    lines[k] = lines[k].replace(b'"category_uid":6', b'"category_uid":7')
    export.write_bytes(b"".join(lines))
    failed = raw(
        dev, "audit", "verify", str(export), "--checkpoint", str(note), "--key", pinned, token=None
    )
    assert_cli_error(failed, uid)
    assert len(failed.stderr.splitlines()) == 1

    wrong_key = pinned[:-4] + ("AAA=" if not pinned.endswith("AAA=") else "BBB=")
    assert_cli_error(
        raw(
            dev,
            "audit",
            "verify",
            str(later),
            "--checkpoint",
            str(later_note),
            "--key",
            wrong_key,
            token=None,
        ),
        "checkpoint",
    )


def test_checkpoint_prints_the_signed_note(dev: Dev, studio: Studio, tmp_path: Path):
    result = raw(dev, "audit", "checkpoint", token=studio.tokens["auditor"])
    assert result.returncode == 0, result.stderr
    origin, size, root, blank, signature = result.stdout.splitlines()
    assert origin.endswith(f"/{studio.tenant}")
    assert int(size) > 0 and len(root) == 44 and blank == ""
    assert signature.startswith("\u2014 ")
    assert result.stderr.startswith("verifier key: ")
    assert result.stderr.split(": ", 1)[1].split("+")[0] == signature.split()[1]

    saved = tmp_path / "cp.note"
    data = run(dev, "audit", "checkpoint", "--out", str(saved), token=studio.tokens["auditor"])
    assert saved.read_text() == data["note"] and data["size"] > int(size)

    # A platform auditor reads the platform log unless it names a tenant.
    created = run(dev, "apikey", "create", "--role", "platform-auditor", token=dev.admin_token)
    platform = run(dev, "audit", "checkpoint", token=created["secret"])
    assert platform["log_id"] == "platform" and platform["origin"].endswith("/platform")
    named = run(dev, "audit", "checkpoint", "--tenant", studio.tenant, token=created["secret"])
    assert named["log_id"] == studio.tenant


def test_keys_that_are_not_auditors_are_refused(dev: Dev, studio: Studio):
    renderer = studio.tokens["renderer"]
    assert_cli_error(raw(dev, "audit", "query", "--since", "1h", token=renderer), "renderer")
    assert_cli_error(raw(dev, "audit", "export", "--out", "x", token=renderer), "renderer")
    assert_cli_error(raw(dev, "audit", "checkpoint", token=renderer), "renderer")
    result = raw(dev, "audit", "query", "--since", "1h", token=renderer)
    assert len(result.stderr.splitlines()) == 1
    # ... and the refusals are on record, for the auditor.
    denied = query(dev, studio, "--actor", studio.key_ids["renderer"], "--action", "audit.read")
    assert {e["outcome"] for e in denied} == {"denied"} and len(denied) >= 4


def test_usage_errors(dev: Dev, studio: Studio):
    auditor = studio.tokens["auditor"]
    bad_time = raw(dev, "audit", "query", "--since", "yesterday", token=auditor)
    assert bad_time.returncode == 2 and "ISO-8601" in bad_time.stderr
    both = raw(dev, "audit", "export", "--follow", "--checkpoint-out", "c", token=auditor)
    assert both.returncode == 2
    assert_cli_error(
        raw(dev, "audit", "query", "--since", "1h", "--until", "2h", token=auditor), "--since"
    )
    assert_cli_error(raw(dev, "--json", "audit", "export", token=auditor), "--out")


def test_retention_is_set_by_admins_and_purge_runs_locally(dev: Dev, studio: Studio):
    admin = studio.tokens["admin"]
    policy = run(dev, "audit", "retention", "--days", "30", "--legal-hold", "off", token=admin)
    assert policy == {"tenant_id": studio.tenant, "retention_days": 30, "legal_hold": False}
    forever = run(dev, "audit", "retention", "--keep-forever", "--legal-hold", "on", token=admin)
    assert (forever["retention_days"], forever["legal_hold"]) == (None, True)
    assert raw(dev, "audit", "retention", "--days", "30", token=admin).returncode == 2
    assert_cli_error(
        raw(
            dev,
            "audit",
            "retention",
            "--days",
            "30",
            "--legal-hold",
            "off",
            token=studio.tokens["auditor"],
        ),
        "auditor",
    )

    env = dict(
        dev.env,
        REELVAULT_S3_ENDPOINT_URL=dev.facts["s3_endpoint_url"],
        REELVAULT_S3_BUCKET=dev.facts["s3_bucket"],
        REELVAULT_S3_REGION=dev.facts["s3_region"],
        REELVAULT_S3_ACCESS_KEY_ID=dev.facts["s3_access_key_id"],
        REELVAULT_S3_SECRET_ACCESS_KEY=dev.facts["s3_secret_access_key"],
    )
    result = subprocess.run(
        command("--json", "audit", "purge"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"purged": {}, "events": 0}  # nothing is a day old


@pytest.fixture
def follower(dev: Dev, studio: Studio) -> Iterator[tuple[subprocess.Popen[bytes], queue.Queue]]:
    env = dict(
        dev.env, REELVAULT_ADDR=dev.facts["grpc_address"], REELVAULT_TOKEN=studio.tokens["auditor"]
    )
    process = subprocess.Popen(
        command("audit", "export", "--follow"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        reader.join(10)


def test_follow_streams_new_events_until_sigterm(dev: Dev, studio: Studio, follower):
    process, lines = follower
    received: list[dict[str, Any]] = []

    def until(found: Any) -> None:
        while not any(found(record) for record in received):
            received.append(json.loads(lines.get(timeout=LINE_TIMEOUT)))

    until(lambda r: r["unmapped"]["reelvault"]["action"] == "asset.write")
    run(dev, "asset", "stat", studio.asset["id"], token=studio.tokens["ingest"])
    until(
        lambda r: (
            r["unmapped"]["reelvault"]["action"] == "asset.stat"
            and r["actor"]["user"]["uid"] == studio.key_ids["ingest"]
        )
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert process.stderr is not None and process.stderr.read() == b""
    assert [r["metadata"]["sequence"] for r in received] == list(range(len(received)))
