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

- blocks made as Prefect's UI form makes them (``POST /block_documents/`` with the payload
  the form sends, captured from the browser: the schema's fields with their defaults, the
  nested keyless block as a ``$ref``, and the block's ``block_type_slug``, a preset field of its
  schema) load as the keyless classes where an ``S3Bucket``/``GcsBucket`` references them, in
  a fresh process, and read through the verifying fronts on the task run's own identity.

Everything printed (the test's output, the API's flow/task logs, the engine subprocess's
output, the stored results) is scanned for the secrets and tokens the runs were issued.
"""

from __future__ import annotations

import copy
import json
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
def _going(deadline: float, seconds: float, *, rolled_over: bool) -> bool:
    """Whether a round trip goes on: until ``deadline``, then until it saw a rollover, but
    never past ``deadline + 5 * seconds`` (the test then fails on the missing rollover)."""
    now = time.monotonic()
    return now < deadline or (not rolled_over and now < deadline + 5 * seconds)


@task
def s3_round_trip(bucket: S3Bucket, seconds: float) -> dict[str, Any]:
    """Write and read objects under this task run's own prefix for ``seconds``, and on (up to
    six times as long, on a loaded machine) until its credentials rolled over once."""
    me, ops, access_keys = str(task_run.name), 0, set()
    session = bucket.credentials.get_boto3_session()
    deadline = time.monotonic() + seconds
    while _going(deadline, seconds, rolled_over=len(access_keys) >= 2):
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
    while _going(deadline, seconds, rolled_over=len(tokens) >= 2):
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


def _gcp_config(idp: ReferenceIdP, gcs: GcsStorage) -> dict[str, Any]:
    """A keyless config for GcpSts (the IdP's ``shortlived`` client, no impersonation)."""
    return {"source": {"type": "client_credentials", "token_url": idp.token_url,
                       "client_id": "shortlived",
                       "client_secret": idp.client_secrets["shortlived"],
                       "audience": "https:" + PROVIDER},
            "target": {"gcp": {"audience": PROVIDER, "token_url": gcs.sts.token_url,
                               "project_id": "keyless-proj"}},
            "allow_insecure_http": True}


def _save_gcs_bucket(idp: ReferenceIdP, gcs: GcsStorage, folder: str) -> str:
    boundary = {"accessBoundaryRules": [{
        "availableResource": f"//storage.googleapis.com/projects/_/buckets/{GCS_BUCKET}",
        "availablePermissions": ["inRole:roles/storage.objectAdmin"],
        "availabilityCondition": {"expression": "resource.name.startsWith("
                                  f"'projects/_/buckets/{GCS_BUCKET}/objects/{folder}/"
                                  "{task_id}/')"}}]}
    config = _gcp_config(idp, gcs)
    config["target"]["gcp"]["access_boundary"] = boundary
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
        "region_name", "aws_client_parameters", "keyless", "block_type_slug"}
    assert set(KeylessGcpCredentials.model_json_schema()["properties"]) == {
        "project", "keyless", "block_type_slug"}


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


# ---------------------------------------------------------------------- 4: made in the UI
def _initial(prop: dict[str, Any], definitions: dict[str, Any]) -> Any:
    """What the form fills a property with before anyone types: its ``default`` (``null``
    too), else for an object (not a block reference) the object of its properties' initial
    values; else nothing (``_NOTHING``)."""
    if "$ref" in prop:
        prop = {**definitions[prop["$ref"].rsplit("/", 1)[1]], **prop}
    if "default" in prop:
        return copy.deepcopy(prop["default"])
    if prop.get("type") == "object" and "block_type_slug" not in prop:
        values = {name: _initial(sub, definitions)
                  for name, sub in prop.get("properties", {}).items()}
        values = {name: value for name, value in values.items() if value is not _NOTHING}
        return values or _NOTHING
    return _NOTHING


_NOTHING = object()


def form_data(fields: dict[str, Any], keyless_id: Any, typed: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` Prefect 3.9's UI create form posts for a block whose schema is ``fields``
    (the rule read from the form's code, checked field for field against what the browser
    posted, in test_prefect_browser.py): each property's initial value (:func:`_initial`:
    ``block_type_slug`` preset; ``aws_client_parameters`` whole), then what was typed
    (``typed``; a dotted key types into a nested object's box), and the referenced keyless
    block as a ``$ref``."""
    definitions = fields.get("definitions", {})
    data: dict[str, Any] = {}
    for name, prop in fields["properties"].items():
        value = _initial(prop, definitions)
        if value is not _NOTHING:
            data[name] = value
    for key, value in typed.items():
        outer, _, inner = key.partition(".")
        if inner:
            data[outer][inner] = value
        else:
            data[outer] = value
    data["keyless"] = {"$ref": {"block_document_id": str(keyless_id)}}
    return data


def post_as_the_form(api_url: str, block_class: Any, name: str, keyless_id: Any,
                     typed: dict[str, Any], *, leave_out: str | None = None) -> None:
    """``POST /block_documents/`` as the UI's create page does (its JSON, field for field),
    on the block type's schema as the server has it; ``leave_out``: a key to drop from the
    data (the control: what the form posted before the schema had ``block_type_slug``)."""
    import httpx

    block_class.register_type_and_schema()
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug(block_class.get_block_type_slug())
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert schema is not None
    data = form_data(schema.fields, keyless_id, typed)
    data.pop(leave_out or "", None)
    response = httpx.post(f"{api_url}/block_documents/", json={
        "block_schema_id": str(schema.id), "block_type_id": str(block_type.id),
        "is_anonymous": False, "data": data, "name": name}, timeout=30)
    assert response.status_code == 201, response.text


#: The fresh process: a flow whose task runs load each bucket by name and read one object.
USE_BUCKETS = """
import json, sys
from pathlib import Path
from prefect import flow, task
from prefect.runtime import flow_run, task_run
from prefect_aws.s3 import S3Bucket
from prefect_gcp.cloud_storage import GcsBucket
import prefect_keyless  # S3Bucket looks its credentials class up without importing collections

job = json.loads(sys.argv[1])


@task
def read(kind: str, block: str, key: str) -> dict:
    bucket = S3Bucket.load(block) if kind == "s3" else GcsBucket.load(block)
    credentials = bucket.credentials if kind == "s3" else bucket.gcp_credentials
    return {"class": type(credentials).__name__, "task_run": task_run.name,
            "body": bucket.read_path(key).decode() if key else None}


@flow
def use_buckets() -> dict:
    reads = {name: read(*args) for name, args in job["reads"].items()}
    return {"flow_run": flow_run.name, **reads}


Path(job["out"]).write_text(json.dumps(use_buckets()))
"""


def test_blocks_posted_as_the_ui_form_does_load_as_keyless_where_referenced(
        prefect_server: PrefectServer, federation: Federation, gcs: GcsStorage,
        reference_idp: ReferenceIdP, leak_guard: LeakGuard, tmp_path: Path) -> None:
    aws_keyless, gcp_keyless = _name("keyless"), _name("keyless")
    KeylessCredentials(**federation.config(session_name="{job_id}-{task_id}")).save(aws_keyless)
    KeylessCredentials(**_gcp_config(reference_idp, gcs)).save(gcp_keyless)
    aws_id = KeylessCredentials.load(aws_keyless)._block_document_id
    gcp_id = KeylessCredentials.load(gcp_keyless)._block_document_id
    aws_ui, aws_bare, gcp_ui = _name("aws-ui"), _name("aws-bare"), _name("gcp-ui")
    typed = {"region_name": federation.aws.region,
             "aws_client_parameters.endpoint_url": federation.aws.s3_url}
    post_as_the_form(prefect_server.api_url, KeylessAwsCredentials, aws_ui, aws_id, typed)
    post_as_the_form(prefect_server.api_url, KeylessAwsCredentials, aws_bare, aws_id, typed,
                     leave_out="block_type_slug")
    post_as_the_form(prefect_server.api_url, KeylessGcpCredentials, gcp_ui, gcp_id,
                     {"project": "ml-project"})

    # buckets that reference them, saved from Python as a person would
    folder = federation.prefix + "ui-made"
    s3_ui, s3_bare, gcs_ui = _name("s3"), _name("s3"), _name("gcs")
    S3Bucket(bucket_name=federation.aws.bucket, bucket_folder=folder,
             credentials=KeylessAwsCredentials.load(aws_ui)).save(s3_ui)
    S3Bucket(bucket_name=federation.aws.bucket, bucket_folder=folder,
             credentials=KeylessAwsCredentials.load(aws_bare)).save(s3_bare)
    GcsBucket(bucket=GCS_BUCKET, bucket_folder=folder,
              gcp_credentials=KeylessGcpCredentials.load(gcp_ui)).save(gcs_ui)
    federation.aws.put_object(federation.aws.bucket, f"{folder}/data.txt", "on S3")
    gcs.put_object(GCS_BUCKET, f"{folder}/data.txt", b"on GCS")

    out = tmp_path / "used.json"
    job = {"out": str(out), "reads": {"s3": ["s3", s3_ui, "data.txt"],
                                      "gcs": ["gcs", gcs_ui, "data.txt"],
                                      "control": ["s3", s3_bare, None]}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PREFECT_API_URL=prefect_server.api_url, STORAGE_EMULATOR_HOST=gcs.url)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", USE_BUCKETS, json.dumps(job)], env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    leak_guard.add(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    used = json.loads(out.read_text())
    print(f"fresh process: {time.monotonic() - started:.1f}s")

    assert used["s3"]["class"] == "KeylessAwsCredentials" and used["s3"]["body"] == "on S3"
    assert used["gcs"]["class"] == "KeylessGcpCredentials" and used["gcs"]["body"] == "on GCS"
    assert used["control"]["class"] == "AwsCredentials"  # no slug: the fallback it prevents
    session = sanitize_session_name(f"{used['flow_run']}-{used['s3']['task_run']}")
    reads = [f for f in federation.aws.front.forwarded
             if f["path"] == f"/{federation.aws.bucket}/{folder}/data.txt"]
    assert {(f["method"], f["status"], f["session_name"]) for f in reads} == {
        ("HEAD", 200, session), ("GET", 200, session)}, reads  # read_path: HEAD, then GET
    gcs_reads = [r for r in gcs.requests if r["object"] == f"{folder}/data.txt"]
    assert gcs_reads and all(r["status"] == 200 and r["principal"] for r in gcs_reads), \
        gcs.requests
    assert gcs.sts.accepted, "the GCS read was not on a token GcpSts issued"
