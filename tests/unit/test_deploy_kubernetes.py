"""deploy/kubernetes agrees with the service it deploys.

`make validate-deploy` checks the manifests against the Kubernetes schemas and checkov; this
checks what neither can see: that the settings are ones reelvault knows, that the probes are
commands the CLI accepts, that the memory limit covers the capacity formula for the
configured limits, and that the termination grace outlasts the drain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reelvault.cli import build_parser
from reelvault.client import ADDR_ENV, TLS_ROOTS_ENV
from reelvault.config import Settings

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
MIB = 1024 * 1024
# Idle RSS of `reelvault serve` measured by `make bench` (bench/results/service.json).
IDLE_RSS = 113 * MIB
# One `reelvault health` process (measured peak RSS), for readiness and liveness at once.
PROBE_RSS = 55 * MIB


def _documents(name: str) -> list[dict[str, Any]]:
    with (KUBERNETES / name).open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def _one(kind: str, component: str = "server") -> dict[str, Any]:
    """The one resource of ``kind`` for ``component`` (the ConfigMap is labelled server and
    shared by both tiers)."""
    found = [
        doc
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in _documents(path.name)
        if doc.get("kind") == kind
        and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _environment() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap")["data"]
    return data


def _example_secret(name: str) -> dict[str, Any]:
    (secret,) = [d for d in _documents("secret.example.yaml") if d["metadata"]["name"] == name]
    return secret


def _mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi")) * MIB


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}

    assert listed == present - {"secret.example.yaml"}


def test_every_variable_is_a_setting_or_a_client_variable() -> None:
    known = {variable for variable, _, _ in Settings.describe()} | {ADDR_ENV, TLS_ROOTS_ENV}
    from_secret = {item["name"] for item in _container()["env"]}

    assert set(_environment()) - known == set()
    assert from_secret - known == set()


def test_secrets_come_from_the_secret_and_the_rest_loads_as_settings() -> None:
    secret = _example_secret("reelvault-secrets")["stringData"]
    environ = dict(_environment())
    for item in _container()["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "reelvault-secrets"
        assert item["name"] not in environ, "a secret in the ConfigMap"
        if ref["key"] in secret:
            environ[item["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional") is True, ref["key"]

    settings = Settings.load(environ)

    assert settings.root_key_provider == "aws-kms"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")


def test_mounted_files_are_where_the_settings_point() -> None:
    environ = _environment()
    mounts = _container()["volumeMounts"]
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    database_url = _example_secret("reelvault-secrets")["stringData"]["database-url"]
    (pg_ca,) = [p for p in database_url.split("&") if p.startswith("sslrootcert=")]
    files = {
        "REELVAULT_TLS_CERT_FILE": environ["REELVAULT_TLS_CERT_FILE"],
        "REELVAULT_TLS_KEY_FILE": environ["REELVAULT_TLS_KEY_FILE"],
        TLS_ROOTS_ENV: environ[TLS_ROOTS_ENV],
        "sslrootcert": pg_ca.removeprefix("sslrootcert="),
    }

    for what, name in files.items():
        path = Path(name)
        (mount,) = [m for m in mounts if Path(m["mountPath"]) == path.parent]
        assert mount["readOnly"] is True, what
        source = volumes[mount["name"]]["secret"]
        keys = {i["path"]: i["key"] for i in source.get("items", [])}
        key = keys.get(path.name, path.name)
        assert key in _example_secret(source["secretName"])["stringData"], what


def test_probes_are_health_commands_the_cli_accepts() -> None:
    container = _container()
    parser = build_parser()
    services = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "reelvault", probe
        args = parser.parse_args(command[1:])
        assert args.group == "health", probe
        # The command must give up before the kubelet kills it, to say why.
        assert args.timeout < container[probe]["timeoutSeconds"], probe
        services[probe] = args.service

    # Readiness follows the catalog; liveness never follows a dependency.
    assert services == {
        "startupProbe": "liveness",
        "readinessProbe": "",
        "livenessProbe": "liveness",
    }


def test_memory_covers_the_capacity_formula_for_the_configured_limits() -> None:
    settings = Settings.load(_environment())
    resources = _container()["resources"]
    per_upload = (settings.s3_max_in_flight + 2) * settings.s3_part_size + 12 * MIB
    bound = (
        IDLE_RSS
        + settings.max_uploads * per_upload
        + settings.max_downloads * 4 * MIB
        + 2 * PROBE_RSS
    )

    assert _mib(resources["limits"]["memory"]) >= bound
    # Request = limit: resident memory stays at its peak, so schedule for the peak.
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_termination_grace_outlasts_the_prestop_sleep_and_the_drain() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    settings = Settings.load(_environment())
    sleep, seconds = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"

    assert pod["terminationGracePeriodSeconds"] > float(seconds) + settings.shutdown_grace


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    security = _container()["securityContext"]

    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (deploy/Dockerfile)
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
