"""DAGs using the Google and Azure providers' own hooks and operators on keyless connections
(tests/airflow_provider/test_airflow_google_azure.py runs them with ``dag.test()``).

- ``keyless_wasb``: ``write_blob`` on wasb connection ``wasb_writer`` and ``read_blob`` on
  ``wasb_reader`` (each names its own keyless connection in its extra): ``WasbHook``
  ``create_container``/``load_string``/``read_file``, then a new ``WasbHook`` per round trip
  for ``KEYLESS_TEST_SECONDS`` (across credential rollovers).
- ``keyless_gcs``: ``create_bucket`` (``GCSCreateBucketOperator``), then ``write_objects`` and
  ``read_objects`` with ``GCSHook.upload``/``download``, a new hook per round trip, on
  ``google_cloud_platform`` connection ``gcp_keyless`` naming keyless connection
  ``keyless_gcp``, whose access boundary confines each task to ``<bucket>/<task_id>/``.

Each task prints ``KEYLESS_ROUNDS <task> <json>`` (round trips, what it was refused).
Run one with ``python keyless_cloud_dags.py DAG_ID``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from airflow.sdk import dag, task

SECONDS = float(os.environ.get("KEYLESS_TEST_SECONDS", "8"))
CONTAINER = os.environ.get("KEYLESS_TEST_CONTAINER", "keyless-test")
BUCKET = os.environ.get("KEYLESS_TEST_BUCKET", "keyless-test-bucket")


def _report(name: str, report: dict[str, Any]) -> None:
    print(f"KEYLESS_ROUNDS {name} {json.dumps(report)}", flush=True)


def _wasb_rounds(conn_id: str, name: str) -> int:
    """Round trips through a new WasbHook each, for SECONDS."""
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    rounds, deadline = 0, time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        hook = WasbHook(wasb_conn_id=conn_id)
        hook.load_string(f"round {rounds}", CONTAINER, name, overwrite=True)
        assert hook.read_file(CONTAINER, name) == f"round {rounds}"
        rounds += 1
        time.sleep(0.25)
    return rounds


@dag(dag_id="keyless_wasb", schedule=None, catchup=False, tags=["keyless"])
def keyless_wasb() -> None:
    @task
    def write_blob() -> None:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        hook = WasbHook(wasb_conn_id="wasb_writer")
        hook.create_container(CONTAINER)
        hook.load_string("written through WasbHook", CONTAINER, "from-write.txt")
        _report("write_blob", {"rounds": _wasb_rounds("wasb_writer", "write-loop.txt")})

    @task
    def read_blob() -> None:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        text = WasbHook(wasb_conn_id="wasb_reader").read_file(CONTAINER, "from-write.txt")
        assert text == "written through WasbHook", text
        _report("read_blob", {"rounds": _wasb_rounds("wasb_reader", "read-loop.txt")})

    write_blob() >> read_blob()


def _gcs_rounds(prefix: str) -> int:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    rounds, deadline = 0, time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        hook = GCSHook(gcp_conn_id="gcp_keyless")
        hook.upload(BUCKET, f"{prefix}loop.txt", data=f"round {rounds}")
        assert hook.download(BUCKET, f"{prefix}loop.txt") == f"round {rounds}".encode()
        rounds += 1
        time.sleep(0.25)
    return rounds


def _refused(prefix: str) -> str:
    """What reading outside the task's own prefix gives (the access boundary)."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from google.api_core.exceptions import GoogleAPICallError

    try:
        GCSHook(gcp_conn_id="gcp_keyless").download(BUCKET, f"{prefix}data.txt")
    except GoogleAPICallError as exc:
        return type(exc).__name__
    return "allowed"


@dag(dag_id="keyless_gcs", schedule=None, catchup=False, tags=["keyless"])
def keyless_gcs() -> None:
    from airflow.providers.google.cloud.operators.gcs import GCSCreateBucketOperator

    create = GCSCreateBucketOperator(task_id="create_bucket", bucket_name=BUCKET,
                                     gcp_conn_id="gcp_keyless_unbounded")

    @task
    def write_objects() -> None:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        GCSHook(gcp_conn_id="gcp_keyless").upload(BUCKET, "write_objects/data.txt",
                                                  data="written through GCSHook")
        _report("write_objects", {"rounds": _gcs_rounds("write_objects/")})

    @task
    def read_objects() -> None:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        hook = GCSHook(gcp_conn_id="gcp_keyless")
        hook.upload(BUCKET, "read_objects/data.txt", data="read_objects was here")
        assert hook.download(BUCKET, "read_objects/data.txt") == b"read_objects was here"
        _report("read_objects", {"rounds": _gcs_rounds("read_objects/"),
                                 "other_task": _refused("write_objects/")})

    create >> write_objects() >> read_objects()


DAGS = {"keyless_wasb": keyless_wasb(), "keyless_gcs": keyless_gcs()}

if __name__ == "__main__":
    run = DAGS[sys.argv[1]].test()
    print(f"KEYLESS_DAGRUN {run.dag_id} {run.state}")
    sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
