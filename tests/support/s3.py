"""Start moto's standalone S3 server (a real HTTP server in its own process) for tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sentinel.localstack.procs import free_port, stop, wait_http
from tests.support.services import unavailable

# Requests moto serves without checking credentials before it enforces IAM: exactly the
# set-up calls of read_only_server (bucket, user, policy, key).
READ_ONLY_SETUP_CALLS = 4


@dataclass
class S3Server:
    """A running moto server: its endpoint and credentials that may write."""

    endpoint: str
    proc: subprocess.Popen[Any]
    access_key: str = "test-access"
    secret_key: str = "test-secret"  # noqa: S105 - moto accepts any key while not enforcing

    def env(self) -> dict[str, str]:
        """Return the AWS_* environment boto3's default chain reads."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[S3Server]:
    """Run ``python -m moto.server`` on a free port; skip (fail in CI) without moto."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto's S3 server is not installed: pip install 'moto[server]' boto3")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=60, proc=proc)
        yield S3Server(f"http://127.0.0.1:{port}", proc)
    finally:
        stop(proc)


@contextlib.contextmanager
def read_only_server(bucket: str) -> Iterator[S3Server]:
    """Run moto enforcing IAM, with ``bucket`` and credentials that may read but not write."""
    import os

    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(READ_ONLY_SETUP_CALLS)}
    with moto_server(env) as srv:
        srv.client().create_bucket(Bucket=bucket)
        iam = srv.client("iam")
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [
                "s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": "*"}]}))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        srv.access_key, srv.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        yield srv
