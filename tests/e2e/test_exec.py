"""`keyless exec` for unmodified code: a child that imports only boto3 keeps reading S3 across
token and credential rollovers (issue 3, point 3), and nothing secret reaches its environment."""

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
import hashlib, json, os, stat, sys, time
import boto3

bucket, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
path = os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]
s3 = boto3.client("s3", config=boto3.session.Config(s3={"addressing_style": "path"}))
tokens, keys, failures, reads = set(), set(), [], 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"shard"
        reads += 1
        tokens.add(hashlib.sha256(open(path, "rb").read()).hexdigest())
        creds = boto3.Session().get_credentials()
        keys.add(creds.get_frozen_credentials().access_key)
    except Exception as exc:
        failures.append(type(exc).__name__)
    time.sleep(0.2)
print(json.dumps({
    "reads": reads, "failures": failures, "tokens": len(tokens), "keys": len(keys),
    "file_mode": stat.S_IMODE(os.stat(path).st_mode),
    "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
    "env": dict(os.environ),
}))
"""


def test_exec_child_reads_across_three_rollovers(federation: Federation, tmp_path: Path,
                                                  leak_guard: LeakGuard) -> None:
    aws = federation.aws
    aws.front.max_session_seconds = 4
    key = federation.prefix + "shard.bin"
    aws.put_object(aws.bucket, key, b"shard")
    spec = tmp_path / "spec.yaml"
    # a per-worker name the launcher knows (a {rank} template goes through the endpoint)
    config = federation.config("shortlived", session_name="exec-{job_id}")
    spec.write_text(yaml.safe_dump(config))
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    env = {**os.environ, **aws.env(), "KEYLESS_JOB_ID": "5"}
    env.pop("AWS_ENDPOINT_URL_STS")  # keyless exec sets it from the config
    result = subprocess.run(
        [sys.executable, "-m", "keyless", "exec", "--audit-stderr", "--config", str(spec), "--",
         sys.executable, str(child), aws.bucket, key, "22"],
        capture_output=True, text=True, env=env, timeout=180)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == []
    assert report["reads"] > 30
    assert report["tokens"] >= 3, "the token file did not roll over three times"
    assert report["keys"] >= 3, "the credentials did not roll over three times"
    assert report["file_mode"] == 0o600 and report["dir_mode"] == 0o700
    assert report["env"]["AWS_ROLE_SESSION_NAME"] == "exec-5"
    assert aws.front.expired_uses == []
    assert {a["session_name"] for a in aws.front.accepted} == {"exec-5"}
    # the audit trail on stderr shows the issues and refreshes, by fingerprint only
    audit = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert sum(1 for event in audit if event["kind"] in ("issue", "refresh")) >= 3
