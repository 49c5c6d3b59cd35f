"""The block's other ways out, on the real parts: ``worker_env()`` for an unmodified child
(token files + SDK variables), ``get_token()`` and ``get_google_credentials()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jwt
import pytest

from prefect_keyless import KeylessCredentials
from tests.e2e.conftest import Federation, LeakGuard
from tests.support.idp import ReferenceIdP

pytestmark = pytest.mark.e2e

CHILD = r"""
import json, os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1],
                  config=boto3.session.Config(s3={"addressing_style": "path"}))
body = s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])["Body"].read()
print(json.dumps({"body": body.decode(), "session": os.environ["AWS_ROLE_SESSION_NAME"]}))
"""


def test_worker_env_lets_an_unmodified_child_read_s3(federation: Federation,
                                                     leak_guard: LeakGuard) -> None:
    block = KeylessCredentials(**federation.config(session_name="child-{pid}"))
    key = federation.prefix + "child.bin"
    federation.aws.put_object(federation.aws.bucket, key, "for the child")
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with block.worker_env() as env:
        token_file = env["AWS_WEB_IDENTITY_TOKEN_FILE"]
        assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
        result = subprocess.run(
            [sys.executable, "-c", CHILD, federation.aws.s3_url, federation.aws.bucket, key],
            env={**base, **env}, capture_output=True, text=True, timeout=120)
        leak_guard.forbid(open(token_file).read())
    assert not os.path.exists(token_file), "the token directory outlived the with block"
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["body"] == "for the child"
    assert answer["session"] == f"child-{os.getpid()}"  # named by the process that made it
    assert [a["session_name"] for a in federation.aws.front.accepted] == [answer["session"]]
    leak_guard.add(env, result.stdout, result.stderr)


def test_get_token_is_cached_per_run_and_names_the_client(federation: Federation,
                                                          leak_guard: LeakGuard) -> None:
    block = KeylessCredentials(**federation.config())
    before = federation.idp.token_requests()
    token = block.get_token()
    assert block.get_token() == token
    assert federation.idp.token_requests() - before == 1
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "trainer" and claims["aud"] == "sts.amazonaws.com"
    leak_guard.forbid(token)
    leak_guard.add(repr(block), repr(block.identity()))


def test_get_google_credentials_reads_through_the_fixture_sts(
        reference_idp: ReferenceIdP, gcp_sts_factory: Any, leak_guard: LeakGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from google.auth.transport.requests import AuthorizedSession

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    provider = ("//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/"
                "providers/x")
    sts = gcp_sts_factory(trusted_issuer=reference_idp.issuer, audience=provider,
                          service_accounts={})
    sts.put_object("data", "shard.bin", b"gcs bytes")
    block = KeylessCredentials(
        source={"type": "client_credentials", "token_url": reference_idp.token_url,
                "client_id": "trainer", "client_secret": reference_idp.client_secrets["trainer"],
                "audience": "https:" + provider},
        target={"gcp": {"audience": provider, "token_url": sts.token_url}},
        allow_insecure_http=True)
    reply = AuthorizedSession(block.get_google_credentials()).get(
        sts.object_url("data", "shard.bin"))
    assert reply.status_code == 200 and reply.content == b"gcs bytes"
    assert sts.accepted[0]["sub"] == "trainer"


WHO = r"""
import boto3, json
print(json.dumps(boto3.client("sts").get_caller_identity()["Arn"]))
"""


def test_worker_env_drops_static_keys_of_the_parent(federation: Federation,
                                                    leak_guard: LeakGuard,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A static AWS_ACCESS_KEY_ID in the worker's environment would beat web identity in the
    AWS SDK's chain: the environment worker_env() yields leaves it out, so the child's plain
    boto3 runs as keyless's session (the STS front saw it)."""
    for key, value in {**federation.aws.env(), "AWS_ACCESS_KEY_ID": "AKIASTATICPARENT0000",
                       "AWS_SECRET_ACCESS_KEY": "static-parent-secret"}.items():
        monkeypatch.setenv(key, value)
    block = KeylessCredentials(**federation.config(session_name="static-{pid}"))
    with block.worker_env() as env:
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        result = subprocess.run([sys.executable, "-c", WHO], env=env, capture_output=True,
                                text=True, timeout=120)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    arn = json.loads(result.stdout)
    assert arn.endswith(f"/static-{os.getpid()}")
    assert [a["session_name"] for a in federation.aws.front.accepted] == [f"static-{os.getpid()}"]
