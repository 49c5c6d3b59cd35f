"""The loopback AWS container-credentials endpoint for consumers that never refresh (issue 4):
pyarrow's ``S3FileSystem()``, given no keys, reads S3 across credential rollovers through
``keyless exec --credential-endpoint``; the endpoint refuses a request without its token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Federation, LeakGuard

pytestmark = pytest.mark.e2e

CHILD = r"""
import json, os, sys, time, urllib.error, urllib.request
import pyarrow.fs as pafs

bucket, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
url = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
refused = []
for headers in ({}, {"Authorization": "not-the-token"}):
    try:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        refused.append(200)
    except urllib.error.HTTPError as exc:
        refused.append(exc.code)
# no keys: the credentials come from the SDK's own container-credentials variables. pyarrow 26
# does not take the endpoint from AWS_ENDPOINT_URL_S3 (it goes to AWS), so pass it here.
endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme="http")
reads, failures = 0, []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with fs.open_input_stream(f"{bucket}/{key}") as stream:
            assert stream.read() == b"checkpoint-shard"
        reads += 1
    except Exception as exc:
        failures.append(type(exc).__name__ + ": " + str(exc)[:200])
    time.sleep(0.3)
print(json.dumps({"reads": reads, "failures": failures, "refused": refused,
                  "env": sorted(k for k in os.environ if k.startswith("AWS_"))}))
"""


def test_pyarrow_reads_s3_across_rollovers_through_the_endpoint(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    aws = federation.aws
    aws.front.max_session_seconds = 12
    key = federation.prefix + "checkpoint.bin"
    aws.put_object(aws.bucket, key, b"checkpoint-shard")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(federation.config("shortlived", session_name="arrow-{rank}")))
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "RANK": "2",
        "AWS_ENDPOINT_URL_S3": aws.s3_url, "AWS_REGION": aws.region,
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        # decoys: web identity would win over container credentials in every SDK's chain,
        # and static keys over both; `exec --credential-endpoint` must drop them
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "missing.jwt"),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/decoy",
        "AWS_ACCESS_KEY_ID": "AKIADECOYDECOYDECOY0", "AWS_SECRET_ACCESS_KEY": "decoy",
    }
    result = subprocess.run(
        [sys.executable, "-m", "keyless", "exec", "--audit-stderr", "--credential-endpoint",
         "--config", str(spec), "--", sys.executable, str(child), aws.bucket, key, "32"],
        capture_output=True, text=True, env=env, timeout=240)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["refused"] == [401, 403]
    assert report["failures"] == []
    assert report["reads"] > 30
    assert "AWS_WEB_IDENTITY_TOKEN_FILE" not in report["env"]
    assert "AWS_ROLE_ARN" not in report["env"] and "AWS_ACCESS_KEY_ID" not in report["env"]
    assert {"AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"} <= set(report["env"])

    assert aws.front.expired_uses == []
    used = {f["access_key_id"] for f in aws.front.forwarded
            if f.get("session_name") == "arrow-2" and f.get("service") == "s3"}
    assert len(used) >= 4, f"pyarrow used {len(used)} credential sets: expected >= 3 rollovers"
    # the exec process audited each served set once, by fingerprint only
    audit = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    served = [e for e in audit if e["target"] == "aws-endpoint"]
    assert len(served) >= 4 and all(e["kind"] == "issue" for e in served)


def test_serve_credentials_command_serves_until_sigterm(federation: Federation, tmp_path: Path,
                                                        leak_guard: LeakGuard) -> None:
    import shlex
    import signal

    import boto3
    from botocore.credentials import ContainerProvider

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(federation.config(session_name="served")))
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyless", "-q", "serve-credentials", "--config", str(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        served = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1)
                      for line in lines)
        assert set(served) == {"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                               "AWS_CONTAINER_CREDENTIALS_FULL_URI"}
        token_file = Path(served["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
        leak_guard.forbid(token_file.read_text())
        credentials = ContainerProvider(environ=served).load()
        assert credentials is not None
        s3 = federation.s3(boto3.Session(
            aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.token, region_name=federation.aws.region))
        s3.list_objects_v2(Bucket=federation.aws.bucket, Prefix=federation.prefix)
        assert federation.aws.front.accepted[-1]["session_name"] == "served"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    leak_guard.add(out, err, lines)
    assert proc.returncode == 0, err[-2000:]
    assert not token_file.exists()


POLICY_CHILD = r"""
import json, sys
import boto3
from botocore.config import Config

bucket, mine, theirs = sys.argv[1:4]
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
result = {"mine": s3.get_object(Bucket=bucket, Key=mine)["Body"].read().decode()}
try:
    s3.get_object(Bucket=bucket, Key=theirs)
    result["theirs"] = "read"
except Exception as exc:
    result["theirs"] = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
print(json.dumps(result))
"""


def test_a_per_rank_session_policy_reaches_a_child_only_through_the_endpoint(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """Web-identity variables would give the child the whole role (no session policy): plain
    `keyless exec` serves such a config through the endpoint by itself, as
    `--credential-endpoint` does, so the child's plain boto3 reads its own shard and is denied
    another's, and never sees the web-identity variables."""
    aws = federation.aws
    for rank in ("0", "1"):
        aws.put_object(aws.bucket, f"{federation.prefix}shards/{rank}/part", f"r{rank}".encode())
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{aws.bucket}/{federation.prefix}shards/{{rank}}/*"]}]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(federation.config(session_name="policy-{rank}",
                                                     session_policy=policy)))
    child = tmp_path / "child.py"
    child.write_text(POLICY_CHILD)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "RANK": "0",
           "AWS_ENDPOINT_URL_S3": aws.s3_url, "AWS_REGION": aws.region,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    command = [sys.executable, str(child), aws.bucket, f"{federation.prefix}shards/0/part",
               f"{federation.prefix}shards/1/part"]

    for flags in ((), ("--credential-endpoint",)):
        served = subprocess.run([sys.executable, "-m", "keyless", "exec", *flags, "--config",
                                 str(spec), "--", *command], capture_output=True, text=True,
                                env=env, timeout=120)
        leak_guard.add(served.stdout, served.stderr)
        assert served.returncode == 0, served.stderr[-3000:]
        report = json.loads(served.stdout.strip().splitlines()[-1])
        assert report == {"mine": "r0", "theirs": "AccessDenied"}
    assert {a["session_name"] for a in aws.front.accepted} == {"policy-0"}
