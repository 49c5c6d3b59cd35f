"""Prefect 3.9 flows whose tasks each reach S3 with their own short-lived, refreshed AWS
identity (prefect-keyless's ``KeylessCredentials`` block):

- ``read_shards``: each task reads one shard;
- ``train_on_shards``: each task loads one CSV shard (four features and a target per row), then
  a training task fits a small PyTorch model on them and writes its weights (``torch.save``)
  back to S3.

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
    python examples/prefect/keyless_flow.py --block training --bucket training-data \
        --keys shards/0.csv shards/1.csv --train checkpoints/linear.pt

Each task's STS session is named after its flow run and task run, so CloudTrail says which
task read which object. Nothing secret is stored in the block except what the source itself
needs (a client secret, if any, is a ``SecretStr`` shown as ``**********``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_keyless import KeylessCredentials


def s3_client(credentials: KeylessCredentials, endpoint_url: str | None = None) -> Any:
    """An S3 client on this task run's own credentials (path-style for a local endpoint)."""
    if not endpoint_url:
        return credentials.get_s3_client()
    from botocore.config import Config

    return credentials.get_s3_client(endpoint_url=endpoint_url,
                                     config=Config(s3={"addressing_style": "path"}))


@task
def read_shard(credentials: KeylessCredentials, bucket: str, key: str,
               endpoint_url: str | None = None) -> dict[str, Any]:
    """Read one object with this task run's own credentials; say who read it."""
    s3 = s3_client(credentials, endpoint_url)
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


@task
def load_shard(credentials: KeylessCredentials, bucket: str, key: str,
               endpoint_url: str | None = None) -> list[list[float]]:
    """One CSV shard (a header line, then ``x0,x1,x2,x3,y`` rows) as rows of floats."""
    text = s3_client(credentials, endpoint_url).get_object(
        Bucket=bucket, Key=key)["Body"].read().decode()
    return [[float(v) for v in line.split(",")] for line in text.splitlines()[1:] if line]


@task
def train(credentials: KeylessCredentials, rows: list[list[float]], bucket: str,
          checkpoint: str, epochs: int = 40,
          endpoint_url: str | None = None) -> dict[str, Any]:
    """Fit ``torch.nn.Linear`` to the rows by SGD; write its weights to S3 (``torch.save``)."""
    import torch

    data = torch.tensor(rows)
    features, targets = data[:, :-1], data[:, -1:]
    torch.manual_seed(0)
    model = torch.nn.Linear(features.shape[1], 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features, targets),
                                         batch_size=32, shuffle=True)
    loss_fn = torch.nn.MSELoss()
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    get_run_logger().info("trained on %d rows for %d epochs: loss %.6f -> %.6f",
                          len(rows), epochs, losses[0], losses[-1])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    s3_client(credentials, endpoint_url).put_object(Bucket=bucket, Key=checkpoint,
                                                    Body=buffer.getvalue())
    return {"rows": len(rows), "first_loss": losses[0], "loss": losses[-1],
            "checkpoint": checkpoint, "task_run": task_run.name,
            "session_name": credentials.identity().aws().session_name}


@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def train_on_shards(block: str, bucket: str, keys: list[str], checkpoint: str,
                    epochs: int = 40, endpoint_url: str | None = None) -> dict[str, Any]:
    """Load every CSV shard in its own task, train on all of them, save the weights to S3."""
    credentials = KeylessCredentials.load(block)
    shards = [load_shard.submit(credentials, bucket, key, endpoint_url) for key in keys]
    rows = [row for shard in shards for row in shard.result()]
    return train(credentials, rows, bucket, checkpoint, epochs, endpoint_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", required=True, help="name of a saved KeylessCredentials")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--keys", nargs="+", required=True)
    parser.add_argument("--endpoint-url", default=None, help="a local S3 endpoint")
    parser.add_argument("--train", metavar="CHECKPOINT_KEY", default=None,
                        help="train a linear model on the CSV shards, save it at this key")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    results: Any
    if args.train:
        results = train_on_shards(args.block, args.bucket, args.keys, args.train, args.epochs,
                                  args.endpoint_url)
    else:
        results = read_shards(args.block, args.bucket, args.keys, args.endpoint_url)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
