"""`reelvault keyring ...` as a user runs it."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from reelvault.cli import default_keyring_path, main
from reelvault.keys.local import LocalKeyring


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The working directory is ``tmp_path``, whose ``.reelvault`` is named as the data
    directory (init and rotate refuse to write a keyring nobody named)."""
    for name in ("REELVAULT_KEYRING", "REELVAULT_CONFIG", "REELVAULT_ROOT_KEY_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REELVAULT_DATA_DIR", ".reelvault")
    monkeypatch.chdir(tmp_path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def materials(path: Path) -> list[str]:
    return [entry["material"] for entry in json.loads(path.read_text())["keys"]]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("command", ["init", "rotate"])
def test_writing_the_dev_default_keyring_needs_dev(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """Nothing names a keyring: init or rotate would silently write .reelvault/ here."""
    monkeypatch.delenv("REELVAULT_DATA_DIR")
    code, out, err = run(capsys, "keyring", command)
    assert (code, out) == (1, "")
    assert err.startswith("reelvault: error: no keyring named: set REELVAULT_KEYRING")
    assert "--dev" in err
    assert not (tmp_path / ".reelvault").exists()


def test_init_and_rotate_refuse_when_the_root_keys_are_in_kms(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REELVAULT_ROOT_KEY_PROVIDER", "aws-kms")
    monkeypatch.setenv("REELVAULT_KMS_KEY_ID", "alias/reelvault")
    for command in ("init", "rotate"):
        code, _, err = run(capsys, "keyring", command)
        assert code == 1
        assert "REELVAULT_ROOT_KEY_PROVIDER is aws-kms" in err.splitlines()[0]
    assert not (tmp_path / ".reelvault").exists()


def test_init_with_dev_uses_dot_reelvault(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REELVAULT_DATA_DIR")
    code, out, err = run(capsys, "keyring", "init", "--dev")

    path = tmp_path / ".reelvault" / "keyring.json"
    assert code == 0, err
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    assert "created keyring .reelvault/keyring.json" in out
    assert "Back this file up" in out
    assert LocalKeyring.load(path).active_version == 1


def test_reelvault_keyring_overrides_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REELVAULT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REELVAULT_KEYRING", str(tmp_path / "explicit.json"))
    assert run(capsys, "keyring", "init")[0] == 0
    assert (tmp_path / "explicit.json").exists()
    assert not (tmp_path / "data").exists()


def test_data_dir_holds_the_keyring(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REELVAULT_DATA_DIR", str(tmp_path / "data"))
    assert run(capsys, "keyring", "init")[0] == 0
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "keyring.json") == 0o600


def test_path_option_wins_over_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REELVAULT_KEYRING", str(tmp_path / "env.json"))
    assert run(capsys, "keyring", "init", "--path", str(tmp_path / "opt.json"))[0] == 0
    assert (tmp_path / "opt.json").exists()
    assert not (tmp_path / "env.json").exists()


def test_empty_environment_variables_count_as_unset() -> None:
    environ = {"REELVAULT_KEYRING": "", "REELVAULT_DATA_DIR": ""}
    assert default_keyring_path(environ) == Path(".reelvault/keyring.json")


def test_init_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, "keyring", "init")
    path = tmp_path / ".reelvault" / "keyring.json"
    before = path.read_bytes()

    code, out, err = run(capsys, "keyring", "init")

    assert code == 1
    assert out == ""
    assert err.startswith("reelvault: error: keyring file .reelvault/keyring.json already exists")
    assert "Traceback" not in err
    assert path.read_bytes() == before


def test_rotate_then_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, "keyring", "init")
    code, out, _ = run(capsys, "keyring", "rotate")
    assert code == 0
    assert "root key version 2 is active" in out
    assert mode(tmp_path / ".reelvault" / "keyring.json") == 0o600

    code, out, _ = run(capsys, "keyring", "show")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "keyring .reelvault/keyring.json"
    assert lines[1].startswith("  version 1  created ")
    assert not lines[1].endswith("(active)")
    assert lines[2].endswith("(active)")


@pytest.mark.parametrize("flag_position", ["before", "after"])
def test_json_output(capsys: pytest.CaptureFixture[str], flag_position: str) -> None:
    def json_run(*argv: str) -> Any:
        args = ["--json", *argv] if flag_position == "before" else [*argv, "--json"]
        code, out, err = run(capsys, *args)
        assert code == 0, err
        return json.loads(out)

    created = json_run("keyring", "init")
    assert created["active_version"] == 1
    rotated = json_run("keyring", "rotate")
    shown = json_run("keyring", "show")

    assert shown == rotated
    assert set(shown) == {"path", "active_version", "versions"}
    assert shown["path"] == ".reelvault/keyring.json"
    assert shown["active_version"] == 2
    assert [set(v) for v in shown["versions"]] == [{"version", "created_at", "active"}] * 2
    assert [(v["version"], v["active"]) for v in shown["versions"]] == [(1, False), (2, True)]


def test_no_key_material_in_any_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    outputs: list[str] = []
    for argv in (
        ["keyring", "init"],
        ["keyring", "rotate"],
        ["keyring", "show"],
        ["--json", "keyring", "rotate"],
        ["--json", "keyring", "show"],
        ["keyring", "init"],  # the error path
    ):
        outputs.extend(run(capsys, *argv)[1:])
    printed = "".join(outputs)
    secrets = materials(tmp_path / ".reelvault" / "keyring.json")
    assert len(secrets) == 3
    for secret in secrets:
        assert secret not in printed
        assert base64.b64decode(secret).hex() not in printed


@pytest.mark.parametrize("unsafe_mode", [0o644, 0o640])
@pytest.mark.parametrize("command", ["show", "rotate"])
def test_unsafe_permissions_are_refused_with_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, unsafe_mode: int, command: str
) -> None:
    run(capsys, "keyring", "init")
    path = tmp_path / ".reelvault" / "keyring.json"
    path.chmod(unsafe_mode)

    code, out, err = run(capsys, "keyring", command)

    assert code == 1
    assert out == ""
    assert "reelvault: error: " in err
    assert "chmod 600 .reelvault/keyring.json" in err
    assert "Traceback" not in err


def test_show_without_a_keyring_says_how_to_create_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "keyring", "show")
    assert code == 1
    assert "reelvault keyring init --path .reelvault/keyring.json" in err


def test_show_refuses_a_symlink(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run(capsys, "keyring", "init", "--path", str(tmp_path / "real.json"))
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    code, _, err = run(capsys, "keyring", "show", "--path", str(tmp_path / "link.json"))
    assert code == 1
    assert "symlink" in err


@pytest.mark.parametrize("argv", [[], ["keyring"], ["keyring", "destroy"], ["nope"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: reelvault" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keyring", "--help")
    assert code == 0
    assert "init" in out
    assert "rotate" in out
    assert "show" in out
