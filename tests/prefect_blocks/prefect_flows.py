"""Flows and tasks the Prefect tests run (importable by module name, so that process-pool
children, which are spawned, can unpickle the tasks)."""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import task_run
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from prefect_keyless import KeylessCredentials


def s3_client(credentials: KeylessCredentials, endpoint_url: str) -> Any:
    """An S3 client on moto through the front: path style, no retries (a failure shows)."""
    from botocore.config import Config

    return credentials.get_s3_client(
        endpoint_url=endpoint_url,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))


def _who(credentials: KeylessCredentials) -> dict[str, Any]:
    frozen = credentials.get_boto3_session().get_credentials().get_frozen_credentials()
    return {"pid": os.getpid(), "task_run": task_run.name, "task_run_id": task_run.id,
            "session_name": credentials.identity().aws().session_name,
            "access_key": frozen.access_key}


@task
def read_in_child(credentials: KeylessCredentials, bucket: str, key: str,
                  endpoint_url: str) -> dict[str, Any]:
    """Report whether the block arrived with an empty cache, then read ``key``."""
    arrived_with = len(credentials._cache)  # the per-process credential cache, as unpickled
    body = s3_client(credentials, endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    get_run_logger().info("read %s: %d bytes; block is %r", key, len(body), credentials)
    return {"key": key, "body": body.decode(), "arrived_with": arrived_with,
            **_who(credentials)}


@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
def process_pool_flow(block: str, bucket: str, keys: list[str],
                      endpoint_url: str) -> dict[str, Any]:
    """Warm the block's credentials in the flow's process, then hand the block to
    process-pool tasks: each must build its own."""
    credentials = KeylessCredentials.load(block)
    s3_client(credentials, endpoint_url).get_object(Bucket=bucket, Key=keys[0])
    parent = {"cached": len(credentials._cache), **_who(credentials)}
    futures = [read_in_child.submit(credentials, bucket, key, endpoint_url) for key in keys]
    return {"parent": parent, "tasks": [future.result() for future in futures]}


@task
def read_for(credentials: KeylessCredentials, bucket: str, key: str, endpoint_url: str,
             seconds: float) -> dict[str, Any]:
    """Read ``key`` every 0.1 s for ``seconds``; count reads, failures and access keys."""
    s3 = s3_client(credentials, endpoint_url)
    credentials_object = credentials.get_boto3_session().get_credentials()
    reads, failures, access_keys = 0, [], set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if s3.get_object(Bucket=bucket, Key=key)["Body"].read() != b"long":
                failures.append("wrong body")
            reads += 1
            access_keys.add(credentials_object.get_frozen_credentials().access_key)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.1)
    get_run_logger().info("%d reads, %d failures, %d credential sets",
                          reads, len(failures), len(access_keys))
    return {"reads": reads, "failures": failures, "access_keys": sorted(access_keys),
            **_who(credentials)}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
def long_task_flow(block: str, bucket: str, key: str, endpoint_url: str,
                   seconds: float) -> dict[str, Any]:
    credentials = KeylessCredentials.load(block)
    result: dict[str, Any] = read_for.submit(credentials, bucket, key, endpoint_url,
                                             seconds).result()
    return result
