"""A deferrable sensor on keyless credentials (tests/airflow_provider/test_airflow_deferrable.py).

``keyless_deferrable``: ``wait_for_key`` is the Amazon provider's ``S3KeySensor(deferrable=True)``
on the ``aws_keyless`` connection (extra ``"keyless_conn_id": "keyless_default"``, with
``AIRFLOW__AWS__SESSION_FACTORY=keyless_airflow.aws.KeylessSessionFactory``): it pokes once in
the task, then defers to ``S3KeyTrigger``, which polls on an aiobotocore session until the key
exists. ``read_key`` (after it) reads the key with ``S3Hook``, as its own task.

``python keyless_deferrable.py`` runs it with ``dag.test()``, which runs the trigger inline.
``python keyless_deferrable.py --triggerer`` leaves the trigger to a real ``airflow triggerer``
on the same database (see :func:`leave_triggers_to_the_triggerer`). Settings from the
environment: ``KEYLESS_EXAMPLE_BUCKET``, ``KEYLESS_EXAMPLE_KEY``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import dag, task

BUCKET = os.environ.get("KEYLESS_EXAMPLE_BUCKET", "my-training-data")
KEY = os.environ.get("KEYLESS_EXAMPLE_KEY", "incoming/ready.txt")


@dag(schedule=None, catchup=False, tags=["keyless"])
def keyless_deferrable() -> None:
    wait = S3KeySensor(task_id="wait_for_key", bucket_name=BUCKET, bucket_key=KEY,
                       aws_conn_id="aws_keyless", deferrable=True, poke_interval=1.0,
                       timeout=180)

    @task
    def read_key() -> str:
        text: str = S3Hook(aws_conn_id="aws_keyless").read_key(key=KEY, bucket_name=BUCKET)
        print(f"KEYLESS_READ {text}")
        return text

    wait >> read_key()


def leave_triggers_to_the_triggerer() -> None:
    """``dag.test()`` runs a deferred task's trigger inline, in this process
    (``_run_task(..., run_triggerer=True)`` → ``InProcessTestSupervisor.run_trigger_in_process``).
    Asked not to, the task stays DEFERRED in the database with its trigger row, a real
    ``airflow triggerer`` runs the trigger and sets the task SCHEDULED with the event, and
    ``dag.test()``'s loop resumes it (``execute_complete``). Test harness only."""
    import airflow.sdk.definitions.dag as dag_module

    run_task = dag_module._run_task

    def run_task_without_inline_trigger(*, ti: Any, task: Any, run_triggerer: bool = False) -> Any:
        return run_task(ti=ti, task=task, run_triggerer=False)

    dag_module._run_task = run_task_without_inline_trigger


DAG = keyless_deferrable()

if __name__ == "__main__":
    if "--triggerer" in sys.argv[1:]:
        leave_triggers_to_the_triggerer()
    run = DAG.test()
    print(f"KEYLESS_DAGRUN {run.dag_id} {run.state}")
    sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
