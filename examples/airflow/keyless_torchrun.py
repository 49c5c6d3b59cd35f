"""An Airflow DAG whose task trains with ``torchrun`` on 2 ranks, each rank with its own AWS
identity from the ``keyless_default`` connection.

``keyless_torchrun`` has one task, ``train_ddp``: inside ``KeylessHook.worker_env()`` it starts
``torchrun --standalone --nproc-per-node 2 examples/torchrun/train_shards.py``, a training
script that knows nothing of keyless (plain ``boto3.client("s3")``). With a connection whose
session name and session policy are per rank, for example::

    {"target": {"aws": {"role_arn": "...",
        "session_name": "keyless-{job_id}-{task_id}-r{rank}",
        "session_policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::my-training-data/keyless-example/shards/{rank}/*"}]}}}}

each rank asks keyless's loopback credential endpoint for credentials, and gets its own: the
session ``keyless-keyless_torchrun-train_ddp-r0`` (``-r1`` ...) confined to its own shard, so
CloudTrail names the DAG, the task and the rank. The task prints each rank's report and fails
if a rank failed or could read another rank's shard.

Settings from the environment: ``KEYLESS_EXAMPLE_BUCKET``, ``KEYLESS_EXAMPLE_PREFIX`` (shards
at ``PREFIX/shards/<rank>/data.csv``), ``KEYLESS_EXAMPLE_EPOCHS``, ``KEYLESS_EXAMPLE_NPROC``,
``KEYLESS_EXAMPLE_TRAIN_SCRIPT`` (default: ``../torchrun/train_shards.py`` from this file).
Run it with ``python keyless_torchrun.py`` (``dag.test()``) or ``airflow dags test
keyless_torchrun``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task

BUCKET = os.environ.get("KEYLESS_EXAMPLE_BUCKET", "my-training-data")
PREFIX = os.environ.get("KEYLESS_EXAMPLE_PREFIX", "keyless-example/")
EPOCHS = os.environ.get("KEYLESS_EXAMPLE_EPOCHS", "100")
NPROC = os.environ.get("KEYLESS_EXAMPLE_NPROC", "2")
TRAIN_SCRIPT = os.environ.get("KEYLESS_EXAMPLE_TRAIN_SCRIPT", str(
    Path(__file__).resolve().parent.parent / "torchrun" / "train_shards.py"))
CONN_ID = "keyless_default"


@dag(schedule=None, catchup=False, tags=["keyless", "pytorch", "torchrun"])
def keyless_torchrun() -> None:
    @task
    def train_ddp() -> list[dict[str, Any]]:
        """Run torchrun under the connection's identity; each rank's report."""
        from keyless_airflow import KeylessHook

        report_dir = tempfile.mkdtemp(prefix="keyless-torchrun-")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", NPROC, TRAIN_SCRIPT, "--bucket", BUCKET,
                   "--prefix", PREFIX, "--epochs", EPOCHS, "--report", report_dir]
        with KeylessHook(CONN_ID).worker_env() as env:
            result = subprocess.run(command, env=env, check=False)
        reports = [json.loads(path.read_text())
                   for path in sorted(Path(report_dir).glob("rank-*.json"))]
        print("KEYLESS_TORCHRUN " + json.dumps(reports))
        if result.returncode != 0 or len(reports) != int(NPROC):
            raise RuntimeError(f"torchrun exited {result.returncode} with "
                               f"{len(reports)} of {NPROC} rank reports")
        if any(report["other_shard"] == "read" for report in reports):
            raise RuntimeError("a rank could read another rank's shard: check the policy")
        return reports

    train_ddp()


DAG = keyless_torchrun()

if __name__ == "__main__":
    run = DAG.test()
    print(f"KEYLESS_DAGRUN {run.dag_id} {run.state}")
    sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
