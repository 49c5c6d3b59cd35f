"""keyless where prefect-aws expects ``AwsCredentials`` and prefect-gcp ``GcpCredentials``
(issue 21, Prefect part), whole system against the real Prefect 3.9 server:

- one flow run, loading ``S3Bucket`` and ``GcsBucket`` blocks by name from the server (their
  credentials are saved ``keyless-aws-credentials`` / ``keyless-gcp-credentials`` blocks,
  which reference a saved ``keyless-credentials`` block), writes and reads through them from
  four concurrent task runs and persists each task's result to S3 / GCS
  (``result_storage=`` the bucket): reference IdP → verifying STS front → moto S3, and
  reference IdP → GcpSts (downscoped per task run) → gcp-storage-emulator behind its
  verifying front; credentials expire every few seconds and roll over inside the tasks;
- a deployment whose pull step (``prefect_keyless.deployments.steps.pull_from_s3``) fetches
  the flow's code from S3 on a keyless block, run as a process worker runs it
  (``python -m prefect.engine`` in a fresh directory).

Everything printed (the test's output, the API's flow/task logs, the engine subprocess's
output, the stored results) is scanned for the secrets and tokens the runs were issued.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import Forbidden
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import AwsClientParameters
from prefect_aws.s3 import S3Bucket
from prefect_gcp.cloud_storage import GcsBucket

from keyless import ConfigError, sanitize_session_name
from keyless.secret import fingerprint
from keyless.testing.gcp_sts import GcpSts
from prefect_keyless import KeylessAwsCredentials, KeylessCredentials, KeylessGcpCredentials
from tests.e2e.conftest import Federation, LeakGuard
from tests.prefect_blocks.conftest import PrefectServer
from tests.support.gcs_emulator import GcsStorage
from tests.support.idp import ReferenceIdP

pytestmark = pytest.mark.e2e

PROVIDER = ("//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/"
            "providers/x")
GCS_BUCKET = "keyless-prefect"
ROLLOVER_SECONDS = 4  # every STS session and GCP token expires this soon

#: Secrets the tasks were handed (AWS secret keys and session tokens, GCP access tokens):
#: the tasks run in threads of this process and register them here, never in a result.
ISSUED: list[str] = []
_ISSUED_LOCK = threading.Lock()


def _issued(*values: str) -> None:
    with _ISSUED_LOCK:
        ISSUED.extend(v for v in values if v)


# ---------------------------------------------------------------------- the flow
@task
def s3_round_trip(bucket: S3Bucket, seconds: float) -> dict[str, Any]:
    """Write and read objects under this task run's own prefix for ``seconds``."""
    me, ops, access_keys = str(task_run.name), 0, set()
    session = bucket.credentials.get_boto3_session()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = f"{me}/object-{ops}.txt"
        bucket.write_path(path, f"{me} wrote {ops}".encode())
        assert bucket.read_path(path) == f"{me} wrote {ops}".encode()
        frozen = session.get_credentials().get_frozen_credentials()
        access_keys.add(frozen.access_key)
        _issued(frozen.secret_key, frozen.token)
        ops += 1
        time.sleep(0.25)
    return {"task_run": me, "ops": ops, "access_keys": sorted(access_keys),
            "credentials": type(bucket.credentials).__name__}


@task
def gcs_round_trip(bucket: GcsBucket, seconds: float) -> dict[str, Any]:
    """The same on GCS; this task run's token is downscoped to its own prefix."""
    me, ops, tokens = str(task_run.name), 0, set()
    credentials = bucket.gcp_credentials.get_credentials_from_service_account()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        path = f"{me}/object-{ops}.txt"
        bucket.write_path(path, f"{me} wrote {ops}".encode())
        assert bucket.read_path(path) == f"{me} wrote {ops}".encode()
        _issued(credentials.token)
        tokens.add(fingerprint(credentials.token))
        ops += 1
        time.sleep(0.25)
    try:
        bucket.write_path("shared/outside.txt", b"not mine")
        outside = "written"
    except Forbidden:
        outside = "Forbidden"
    return {"task_run": me, "ops": ops, "tokens": sorted(tokens), "outside": outside,
            "credentials": type(bucket.gcp_credentials).__name__}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def cloud_blocks_flow(s3_block: str, gcs_block: str, seconds: float) -> dict[str, Any]:
    """Load both buckets by name; two S3 and two GCS task runs, results persisted to them."""
    s3, gcs = S3Bucket.load(s3_block), GcsBucket.load(gcs_block)
    key = "{task_run.name}/result.json"
    on_s3 = s3_round_trip.with_options(result_storage=s3, persist_result=True,
                                       result_storage_key=key)
    on_gcs = gcs_round_trip.with_options(result_storage=gcs, persist_result=True,
                                         result_storage_key=key)
    s3_runs = [on_s3.submit(s3, seconds) for _ in range(2)]
    gcs_runs = [on_gcs.submit(gcs, seconds) for _ in range(2)]
    return {"s3": [f.result() for f in s3_runs], "gcs": [f.result() for f in gcs_runs]}


# ---------------------------------------------------------------------- fixtures, helpers
@pytest.fixture
def gcs(reference_idp: ReferenceIdP, gcp_sts_factory: Any) -> Iterator[GcsStorage]:
    sts: GcpSts = gcp_sts_factory(trusted_issuer=reference_idp.issuer, audience=PROVIDER,
                                  max_lifetime_seconds=ROLLOVER_SECONDS)
    with GcsStorage(sts) as storage:
        storage.create_bucket(GCS_BUCKET)
        yield storage


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def _s3_parameters(federation: Federation) -> AwsClientParameters:
    return AwsClientParameters(endpoint_url=federation.aws.s3_url, config={
        "s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 1}})


def _save_s3_bucket(federation: Federation, folder: str) -> tuple[str, str]:
    """keyless-credentials ← keyless-aws-credentials ← s3-bucket, each saved by name;
    returns the S3Bucket's and the keyless-aws-credentials block's names."""
    keyless_name, aws_name, bucket_name = _name("keyless"), _name("aws"), _name("s3")
    KeylessCredentials(**federation.config("shortlived", session_name="{job_id}-{task_id}")
                       ).save(keyless_name)
    KeylessAwsCredentials(keyless=KeylessCredentials.load(keyless_name),
                          aws_client_parameters=_s3_parameters(federation)).save(aws_name)
    S3Bucket(bucket_name=federation.aws.bucket, bucket_folder=folder,
             credentials=KeylessAwsCredentials.load(aws_name)).save(bucket_name)
    return bucket_name, aws_name


def _save_gcs_bucket(idp: ReferenceIdP, gcs: GcsStorage, folder: str) -> str:
    boundary = {"accessBoundaryRules": [{
        "availableResource": f"//storage.googleapis.com/projects/_/buckets/{GCS_BUCKET}",
        "availablePermissions": ["inRole:roles/storage.objectAdmin"],
        "availabilityCondition": {"expression": "resource.name.startsWith("
                                  f"'projects/_/buckets/{GCS_BUCKET}/objects/{folder}/"
                                  "{task_id}/')"}}]}
    config = {"source": {"type": "client_credentials", "token_url": idp.token_url,
                         "client_id": "shortlived",
                         "client_secret": idp.client_secrets["shortlived"],
                         "audience": "https:" + PROVIDER},
              "target": {"gcp": {"audience": PROVIDER, "token_url": gcs.sts.token_url,
                                 "access_boundary": boundary, "project_id": "keyless-proj"}},
              "allow_insecure_http": True}
    keyless_name, gcp_name, bucket_name = _name("keyless"), _name("gcp"), _name("gcs")
    KeylessCredentials(**config).save(keyless_name)
    KeylessGcpCredentials(keyless=KeylessCredentials.load(keyless_name)).save(gcp_name)
    GcsBucket(bucket=GCS_BUCKET, bucket_folder=folder,
              gcp_credentials=KeylessGcpCredentials.load(gcp_name)).save(bucket_name)
    return bucket_name


def _api_logs(flow_run_id: Any) -> list[str]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                limit=200)
    return [f"{log.name} {log.level} {log.message}" for log in logs]


def _guard(leak_guard: LeakGuard, *texts: str) -> None:
    leak_guard.forbid(*ISSUED)
    leak_guard.add(*texts)


# ---------------------------------------------------------------------- 1 + 2: buckets, results
def test_s3_and_gcs_buckets_and_results_on_each_task_runs_identity(
        prefect_server: PrefectServer, federation: Federation, gcs: GcsStorage,
        reference_idp: ReferenceIdP, leak_guard: LeakGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    federation.aws.front.max_session_seconds = ROLLOVER_SECONDS
    s3_folder, gcs_folder = federation.prefix + "prefect", _name("prefect")
    s3_block, _ = _save_s3_bucket(federation, s3_folder)
    gcs_block = _save_gcs_bucket(reference_idp, gcs, gcs_folder)

    state = cloud_blocks_flow(s3_block, gcs_block, 2.5 * ROLLOVER_SECONDS / 2,
                              return_state=True)
    result = state.result()
    with get_client(sync_client=True) as client:
        flow_run_name = client.read_flow_run(state.state_details.flow_run_id).name

    # S3: each task run wrote, read and persisted its result as its own STS session
    front = federation.aws.front
    assert front.expired_uses == []
    for run in result["s3"]:
        assert run["credentials"] == "KeylessAwsCredentials"
        assert len(run["access_keys"]) >= 2, "no rollover inside the task"
        session = sanitize_session_name(f"{flow_run_name}-{run['task_run']}")
        mine = [f for f in front.forwarded if f["path"].startswith(
            f"/{federation.aws.bucket}/{s3_folder}/{run['task_run']}/")]
        assert {f["session_name"] for f in mine} == {session}, mine
        assert {f["access_key_id"] for f in mine} >= set(run["access_keys"])
        result_key = f"{s3_folder}/{run['task_run']}/result.json"
        puts = [f for f in mine if f["method"] == "PUT" and f["path"].endswith(result_key)]
        assert puts and all(f["status"] == 200 for f in puts), mine
        stored = federation.aws.get_object(federation.aws.bucket, result_key)
        assert run["task_run"].encode() in stored  # the persisted result record
        leak_guard.add(stored.decode())
        assert sum(a["session_name"] == session for a in front.accepted) >= 2  # rolled over
    assert len({r["task_run"] for r in result["s3"]}) == 2

    # GCS: each task run's downscoped token reached only its own prefix, results included
    for run in result["gcs"]:
        assert run["credentials"] == "KeylessGcpCredentials"
        assert len(run["tokens"]) >= 2, "no rollover inside the task"
        assert run["outside"] == "Forbidden"
        result_name = f"{gcs_folder}/{run['task_run']}/result.json"
        stored_gcs = gcs.get_object(GCS_BUCKET, result_name)
        assert stored_gcs is not None and run["task_run"].encode() in stored_gcs
        leak_guard.add(stored_gcs.decode())
        written = [r for r in gcs.requests if r["object"] == result_name
                   and r["method"] in ("POST", "PUT")]
        assert written and all(r["status"] == 200 for r in written), gcs.requests
    assert {r["task_run"] for r in result["gcs"]}.isdisjoint(
        {r["task_run"] for r in result["s3"]})
    ours = [r for r in gcs.requests if r["bucket"] == GCS_BUCKET]
    refused = [r for r in ours if r["status"] in (401, 403)]
    assert [r["object"] for r in refused] == [f"{gcs_folder}/shared/outside.txt"] * 2, refused
    assert all(r["kind"] == "downscoped" for r in ours if r["principal"])
    downscoped = [a for a in gcs.sts.accepted if a["kind"] == "downscoped"]
    assert len(downscoped) >= 2 * 2  # two task runs, each rolled over at least once
    _guard(leak_guard, *_api_logs(state.state_details.flow_run_id))


def test_blocks_refuse_static_keys_and_show_no_secret(federation: Federation) -> None:
    config = federation.config()
    secret = config["source"]["client_secret"]
    with pytest.raises(ConfigError) as refused:
        KeylessAwsCredentials(keyless=KeylessCredentials(**config),
                              aws_secret_access_key="AKIA-not-used")
    assert refused.value.field == "aws_secret_access_key"
    with pytest.raises(ConfigError) as refused:
        KeylessGcpCredentials(keyless=KeylessCredentials(**config),
                              service_account_info={"private_key": "x"})
    assert refused.value.field == "service_account_info"
    aws = KeylessAwsCredentials(keyless=KeylessCredentials(**config))
    bucket = S3Bucket(bucket_name="b", credentials=aws)
    for shown in (repr(aws), str(aws), repr(bucket)):
        assert secret not in shown and "client_secret=SecretStr('**********')" in shown
    assert "aws_secret_access_key" not in repr(aws)
    assert set(KeylessAwsCredentials.model_json_schema()["properties"]) == {
        "region_name", "aws_client_parameters", "keyless"}
    assert set(KeylessGcpCredentials.model_json_schema()["properties"]) == {
        "project", "keyless"}


# ---------------------------------------------------------------------- 3: pull step
FLOW_CODE = '''
from pathlib import Path

from prefect import flow, get_run_logger


@flow
def pulled(marker: str) -> str:
    here = sorted(p.name for p in Path.cwd().iterdir())
    get_run_logger().info("pulled flow ran with %s in %s", marker, here)
    return marker
'''


def test_a_deployment_pulls_its_code_from_s3_on_keyless_credentials(
        prefect_server: PrefectServer, federation: Federation, leak_guard: LeakGuard) -> None:
    folder = federation.prefix + "code"
    federation.aws.put_object(federation.aws.bucket, f"{folder}/pulled_flow.py",
                              textwrap.dedent(FLOW_CODE))
    federation.aws.put_object(federation.aws.bucket, f"{folder}/data/notes.txt", "notes")
    _, aws_block = _save_s3_bucket(federation, folder)
    marker = uuid.uuid4().hex
    pull_steps = [{"prefect_keyless.deployments.steps.pull_from_s3": {
        "bucket": federation.aws.bucket, "folder": folder,
        "credentials": "{{ prefect.blocks.keyless-aws-credentials." + aws_block + " }}"}}]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("pulled")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=_name("pulled"), entrypoint="pulled_flow.py:pulled",
            pull_steps=pull_steps, parameters={"marker": marker})
        flow_run = client.create_flow_run_from_deployment(deployment_id)

    with tempfile.TemporaryDirectory(prefix="keyless-pull-") as workdir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(PREFECT_API_URL=prefect_server.api_url, PREFECT__FLOW_RUN_ID=str(flow_run.id),
                   PYTHONUNBUFFERED="1")  # the process worker's environment and command
        output = Path(workdir).parent / f"{Path(workdir).name}.log"
        with open(output, "wb") as log:  # what a process worker starts, in a fresh directory
            engine = subprocess.Popen([sys.executable, "-m", "prefect.engine"],
                                      cwd=workdir, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
            try:
                engine.wait(timeout=240)
            finally:
                if engine.poll() is None:
                    engine.kill()
        printed = output.read_text(errors="replace")
        output.unlink()
        pulled = sorted(str(p.relative_to(workdir)) for p in Path(workdir).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
    assert engine.returncode == 0, printed[-3000:]
    assert finished.state is not None and finished.state.is_completed(), printed[-3000:]
    assert pulled == ["data/notes.txt", "pulled_flow.py"]
    logs = _api_logs(flow_run.id)
    assert any(f"pulled flow ran with {marker}" in line for line in logs), logs
    session = sanitize_session_name(f"{finished.name}-")
    reads = [f for f in federation.aws.front.forwarded if f["path"].startswith(
        f"/{federation.aws.bucket}/{folder}/")]
    assert {f["session_name"] for f in reads} == {session}
    assert sorted(f["path"].rsplit("/", 1)[1] for f in reads if f["method"] == "GET") == [
        "notes.txt", "pulled_flow.py"]
    _guard(leak_guard, printed, *logs)
