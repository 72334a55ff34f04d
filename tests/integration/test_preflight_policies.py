"""The start-up and readiness probes work under the access policies docs/operations.md
tells operators to grant (a review found both refused: every pod would exit at start).

- S3: the documented IAM policy lets the service write only under ``t/*``; moto_server
  (from the dev extras) evaluates it when access-key auth is on.
- KMS: the documented key policy requires exactly the context keys ``reelvault:tenant`` and
  ``reelvault:kek-version``; moto does not evaluate key policies, so a botocore hook applies
  the statement's two conditions to every request, as AWS would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from reelvault import preflight
from reelvault.config import Settings
from reelvault.keys.kms import KmsRootKeyProvider
from reelvault.readiness import PROBE_KEY
from reelvault.storage import S3ObjectStore

DOCUMENTED_CONTEXT_KEYS = {"reelvault:tenant", "reelvault:kek-version"}


def _enforce_key_policy(params: dict, model: object, **_: object) -> None:
    if getattr(model, "name", "") not in ("GenerateDataKey", "Decrypt", "ReEncrypt"):
        return
    context = set((params.get("EncryptionContext") or {}).keys())
    if context != DOCUMENTED_CONTEXT_KEYS:
        raise ClientError(
            {
                "Error": {"Code": "AccessDeniedException", "Message": "denied by key policy"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            },
            str(getattr(model, "name", "")),
        )


def test_the_key_provider_probe_passes_the_documented_key_policy(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        kms.meta.events.register("provide-client-params.kms.*", _enforce_key_policy)
        arn = kms.create_key()["KeyMetadata"]["Arn"]
        provider = KmsRootKeyProvider(kms, arn)
        settings = Settings(root_key_provider="aws-kms", kms_key_id=arn, kms_region="eu-west-1")
        preflight.check_key_provider(provider, settings)  # raised AccessDenied before
        with pytest.raises(ClientError):  # the hook does refuse other contexts
            kms.generate_data_key(KeyId=arn, KeySpec="AES_256", EncryptionContext={"x": "y"})


DOCUMENTED_IAM_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"],
            "Resource": "arn:aws:s3:::vault",
        },
        {
            "Effect": "Allow",
            "Action": [
                "s3:PutObject",
                "s3:GetObject",
                "s3:DeleteObject",
                "s3:DeleteObjectVersion",
                "s3:AbortMultipartUpload",
            ],
            "Resource": "arn:aws:s3:::vault/t/*",
        },
    ],
}


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[str]:
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists() and shutil.which("moto_server") is None:
        pytest.skip("moto_server is not installed (the dev extras provide it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the first four requests (the admin's set-up below) run before auth is enforced
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    process = subprocess.Popen(
        [str(binary if binary.exists() else "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_the_store_probes_pass_the_documented_iam_policy(moto_server):
    admin = {
        "endpoint_url": moto_server,
        "region_name": "us-east-1",
        "aws_access_key_id": "AKIAADMIN",
        "aws_secret_access_key": "x",
    }
    boto3.client("s3", **admin).create_bucket(Bucket="vault")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="svc")
    iam.put_user_policy(
        UserName="svc", PolicyName="documented", PolicyDocument=json.dumps(DOCUMENTED_IAM_POLICY)
    )
    key = iam.create_access_key(UserName="svc")["AccessKey"]
    store = S3ObjectStore(
        "vault",
        endpoint_url=moto_server,
        region="us-east-1",
        access_key=key["AccessKeyId"],
        secret_key=key["SecretAccessKey"],
    )
    settings = Settings(
        s3_endpoint_url=moto_server,
        s3_bucket="vault",
        s3_region="us-east-1",
        s3_access_key_id=key["AccessKeyId"],
        s3_secret_access_key=key["SecretAccessKey"],
    )

    class WithoutHeadBucket:
        """moto authorizes HEAD bucket unlike AWS (s3:ListBucket, granted above): the probe
        object's PUT and DELETE are what the policy decides here."""

        def __init__(self, inner: S3ObjectStore) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    preflight.check_store(WithoutHeadBucket(store), settings)  # type: ignore[arg-type]
    assert store.head(PROBE_KEY) is None  # the readiness probe's HEAD is allowed too
    with pytest.raises(Exception):  # noqa: B017 - the policy is enforced at all
        store.put("outside/t", [b"x"])
