"""Example DAGs for the `keyless` Airflow connection type (airflow-provider-keyless).

Three DAGs, each a different way to use short-lived, per-task cloud identity:

- ``keyless_s3``: a task takes a boto3 client from ``KeylessHook`` and writes then reads an S3
  object. The STS session name names the dag and the task (``keyless-<dag>-<task>-...``).
- ``keyless_worker_env``: a task runs a subprocess that knows nothing of keyless (plain boto3,
  as ``torchrun`` or the AWS CLI would) inside ``KeylessHook.worker_env()``: token files kept
  fresh plus ``AWS_WEB_IDENTITY_TOKEN_FILE``/``AWS_ROLE_ARN``, never a secret in the env.
- ``keyless_s3hook``: the Amazon provider's ``S3Hook`` on an ``aws`` connection whose extra says
  ``"keyless_conn_id": "keyless_default"``, with
  ``AIRFLOW__AWS__SESSION_FACTORY=keyless_airflow.aws.KeylessSessionFactory``.

Connections (see connections.json in this folder): ``keyless_default`` (type ``keyless``) and
``aws_keyless`` (type ``aws``). Settings from the environment: ``KEYLESS_EXAMPLE_BUCKET``,
``KEYLESS_EXAMPLE_PREFIX`` and ``KEYLESS_EXAMPLE_READ_SECONDS`` (how long the subprocess reads).

Run one with ``python keyless_dags.py DAG_ID`` (``dag.test()``; this folder must be the DAGs
folder) or ``airflow dags test DAG_ID``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from airflow.sdk import dag, get_current_context, task

BUCKET = os.environ.get("KEYLESS_EXAMPLE_BUCKET", "my-training-data")
PREFIX = os.environ.get("KEYLESS_EXAMPLE_PREFIX", "keyless-example/")
READ_SECONDS = os.environ.get("KEYLESS_EXAMPLE_READ_SECONDS", "10")

# What the subprocess runs: plain boto3, no keyless import. It reads the object for a while
# (across credential rollovers) and prints a one-line JSON report.
READER = r"""
import hashlib, json, os, sys, time
import boto3

bucket, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s3 = boto3.client("s3")
token_file = os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]
tokens, keys, failures, reads = set(), set(), [], 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        reads += 1
        tokens.add(hashlib.sha256(open(token_file, "rb").read()).hexdigest())
        keys.add(boto3.Session().get_credentials().get_frozen_credentials().access_key)
    except Exception as exc:
        failures.append(type(exc).__name__)
    time.sleep(0.2)
print(json.dumps({"reads": reads, "failures": failures, "tokens": len(tokens),
                  "keys": len(keys), "session": os.environ.get("AWS_ROLE_SESSION_NAME")}))
"""


@dag(schedule=None, catchup=False, tags=["keyless"])
def keyless_s3() -> None:
    @task
    def write_and_read() -> str:
        from keyless_airflow import KeylessHook

        s3 = KeylessHook("keyless_default").get_client_type("s3")
        key = f"{PREFIX}from-{get_current_context()['ti'].task_id}.txt"
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"written with keyless")
        body: bytes = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        print(f"read back {len(body)} bytes from s3://{BUCKET}/{key}")
        return key

    write_and_read()


@dag(schedule=None, catchup=False, tags=["keyless"])
def keyless_worker_env() -> None:
    @task
    def subprocess_reads() -> None:
        from keyless_airflow import KeylessHook

        hook = KeylessHook("keyless_default")
        key = f"{PREFIX}shard.bin"
        hook.get_client_type("s3").put_object(Bucket=BUCKET, Key=key, Body=b"shard")
        with hook.worker_env() as env:
            result = subprocess.run([sys.executable, "-c", READER, BUCKET, key, READ_SECONDS],
                                    env=env, capture_output=True, text=True, check=False)
        print(result.stderr[-2000:], file=sys.stderr)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        print("KEYLESS_REPORT " + json.dumps(report))
        if result.returncode != 0 or report["failures"]:
            raise RuntimeError(f"the reader failed: {report['failures'][:5]}")

    subprocess_reads()


@dag(schedule=None, catchup=False, tags=["keyless"])
def keyless_s3hook() -> None:
    @task
    def s3hook_round_trip() -> str:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id="aws_keyless")
        key = f"{PREFIX}s3hook.txt"
        hook.load_string("through S3Hook", key=key, bucket_name=BUCKET, replace=True)
        text: str = hook.read_key(key=key, bucket_name=BUCKET)
        print(f"S3Hook read back {text!r}")
        return text

    s3hook_round_trip()


DAGS = {d.dag_id: d for d in (keyless_s3(), keyless_worker_env(), keyless_s3hook())}

if __name__ == "__main__":
    run = DAGS[sys.argv[1]].test()
    print(f"KEYLESS_DAGRUN {run.dag_id} {run.state}")
    sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
