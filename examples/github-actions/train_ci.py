"""The Ray Train job that examples/github-actions/train-on-ray.yml submits from a GitHub Actions
job: two CPU ranks, each reading its own shard with its own AWS session.

The identity comes from the job-level runtime env (``keyless`` = keyless.yaml, a
``github_actions`` source): Ray Train workers inherit it, the node's keyless plugin requests the
job's OIDC token for the aws target's audience, and ``keyless_ray.boto3_session()`` builds this
rank's session (``session_name`` ``gha-{job_id}-r{rank}``, so CloudTrail names the rank).

    python train_ci.py s3://training-data/shards
"""

from __future__ import annotations

import sys
from typing import Any

import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

import keyless_ray


def train_loop(config: dict[str, Any]) -> None:
    rank = ray.train.get_context().get_world_rank()
    session = keyless_ray.boto3_session()  # this rank's identity, refreshed for it
    arn = session.client("sts").get_caller_identity()["Arn"]
    bucket, _, prefix = config["shards"].removeprefix("s3://").partition("/")
    s3 = session.client("s3")
    keys = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{rank}/").get("Contents", [])
    model = torch.nn.Linear(4, 1)
    for item in keys:
        s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        model(torch.ones(1, 4)).sum().backward()
    ray.train.report({"rank": rank, "objects": len(keys), "identity": arn})


def main(shards: str) -> None:
    trainer = TorchTrainer(
        train_loop, train_loop_config={"shards": shards},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="keyless-gha-train"),
    )
    print(trainer.fit().metrics)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "s3://training-data/shards")
