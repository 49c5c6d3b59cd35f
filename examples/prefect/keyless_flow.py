"""A Prefect 3.9 flow whose tasks each read their own S3 shard with their own short-lived,
refreshed AWS identity (prefect-keyless's ``KeylessCredentials`` block).

Once, save a block (in Python, or in the UI: a self-hosted server lists "Keyless Credentials"
after ``pip install prefect-keyless``; on Prefect Cloud run
``prefect block register -m prefect_keyless`` first)::

    from prefect_keyless import KeylessCredentials

    KeylessCredentials(
        source={"type": "file", "path": "/var/run/secrets/tokens/oidc"},
        target={"aws": {"role_arn": "arn:aws:iam::123456789012:role/trainer",
                        "region": "us-east-1",
                        "session_name": "{job_id}-{task_id}"}},   # flow run - task run
    ).save("training")

Then run::

    python examples/prefect/keyless_flow.py --block training --bucket training-data \
        --keys shards/0.bin shards/1.bin shards/2.bin

Each task's STS session is named after its flow run and task run, so CloudTrail says which
task read which object. Nothing secret is stored in the block except what the source itself
needs (a client secret, if any, is a ``SecretStr`` shown as ``**********``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_keyless import KeylessCredentials


@task
def read_shard(credentials: KeylessCredentials, bucket: str, key: str,
               endpoint_url: str | None = None) -> dict[str, Any]:
    """Read one object with this task run's own credentials; say who read it."""
    client_kwargs: dict[str, Any] = {}
    if endpoint_url:  # a local S3 (tests); path-style addressing for it
        from botocore.config import Config

        client_kwargs = {"endpoint_url": endpoint_url,
                         "config": Config(s3={"addressing_style": "path"})}
    s3 = credentials.get_s3_client(**client_kwargs)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    session_name = credentials.identity().aws().session_name
    get_run_logger().info("read s3://%s/%s (%d bytes) as session %s",
                          bucket, key, len(body), session_name)
    return {"key": key, "size": len(body), "task_run": task_run.name,
            "session_name": session_name, "pid": os.getpid()}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def read_shards(block: str, bucket: str, keys: list[str],
                endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """Load the saved block and read every shard in its own task."""
    credentials = KeylessCredentials.load(block)
    futures = [read_shard.submit(credentials, bucket, key, endpoint_url) for key in keys]
    return [future.result() for future in futures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", required=True, help="name of a saved KeylessCredentials")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--keys", nargs="+", required=True)
    parser.add_argument("--endpoint-url", default=None, help="a local S3 endpoint")
    args = parser.parse_args()
    results = read_shards(args.block, args.bucket, args.keys, args.endpoint_url)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
