"""``ray job submit --runtime-env-json '{"keyless": ...}'`` with the real ``ray`` CLI.

The session cluster's job server (dashboard, loopback) runs the entrypoint under the job's
runtime env: the keyless plugin gives the job supervisor, and so the entrypoint it starts, the
worker variables; the entrypoint script reads an S3 object on moto with
``keyless_ray.boto3_session()`` through the verifying STS front. The job must end SUCCEEDED, and
no IdP token or client secret may appear in what the CLI printed, in the job's logs, or in Ray's
log files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.ray_runtime.conftest import Federation, LeakGuard, RayCluster, keyless_env

pytestmark = pytest.mark.e2e

RAY = str(Path(sys.executable).with_name("ray"))

ENTRYPOINT = '''\
import sys

from botocore.config import Config

import keyless_ray

bucket, key, s3_url = sys.argv[1:4]
s3 = keyless_ray.boto3_session().client(
    "s3", endpoint_url=s3_url,
    config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
aws = keyless_ray.identity("aws")
print("keyless-job body=" + body)
print("keyless-job session=" + aws.aws().session_name)
print("keyless-job token_sha=" + aws.subject_token().fingerprint)
'''


def ray_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ray`` CLI of this environment; its output is returned, never raised."""
    return subprocess.run([RAY, *args], capture_output=True, text=True, timeout=600,
                          check=False)


def test_ray_job_submit_with_keyless_runtime_env_reads_s3(
        ray_cluster: RayCluster, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    aws = federation.aws
    key = federation.prefix + "job.txt"
    aws.put_object(aws.bucket, key, b"from-a-job")
    session_name = f"job-{uuid.uuid4().hex[:8]}"
    runtime_env = {"keyless": keyless_env(federation, tmp_path, session_name=session_name)}
    script = tmp_path / "job_script.py"
    script.write_text(ENTRYPOINT)
    submission_id = f"keyless-{uuid.uuid4().hex[:8]}"
    address = ray_cluster.dashboard_address
    accepted_before = len(aws.front.accepted)

    submitted = ray_cli("job", "submit", "--address", address,
                        "--submission-id", submission_id,
                        "--runtime-env-json", json.dumps(runtime_env),
                        "--", sys.executable, str(script), aws.bucket, key, aws.s3_url)
    status = ray_cli("job", "status", "--address", address, submission_id)
    logs = ray_cli("job", "logs", "--address", address, submission_id)
    leak_guard.add(submitted.stdout, submitted.stderr, status.stdout, status.stderr,
                   logs.stdout, logs.stderr, ray_cluster.log_text(), json.dumps(runtime_env))

    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert f"Job '{submission_id}' succeeded" in status.stdout, status.stdout + status.stderr
    assert JobSubmissionClient(address).get_job_status(submission_id) == JobStatus.SUCCEEDED
    assert "keyless-job body=from-a-job" in logs.stdout, logs.stdout[-3000:]
    assert f"keyless-job session={session_name}" in logs.stdout
    token_sha = logs.stdout.split("keyless-job token_sha=", 1)[1].split()[0]
    mine = [a for a in aws.front.accepted[accepted_before:] if a["session_name"] == session_name]
    assert mine, "the job's entrypoint never exchanged a token at the STS front"
    assert all(a["sub"] == "trainer" for a in mine)
    assert {a["token_sha256"] for a in mine} == {token_sha[:12]}, \
        "the entrypoint exchanged a token other than the node's"
    assert "client_secret" not in json.dumps(runtime_env)
