"""A Ray Train job where every rank reads its own shard with its own AWS identity.

Submit it to a cluster whose nodes run the keyless plugin (see kuberay.yaml)::

    ray job submit --working-dir . --runtime-env-json "$(cat runtime_env.json)" \\
      -- python train_job.py s3://my-bucket/shards

or give the same ``keyless`` value in ``RunConfig(worker_runtime_env=...)`` as below. The
source is the pod's projected service-account token (a file kubelet rotates): no secret is in
the runtime env, which Ray logs in plaintext.
"""

from __future__ import annotations

import sys
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

import keyless_ray

KEYLESS: dict[str, Any] = {
    "source": {"type": "file", "path": "/var/run/secrets/tokens/keyless"},
    "target": {"aws": {
        "role_arn": "arn:aws:iam::123456789012:role/ray-trainer",
        "region": "us-east-1",
        "session_name": "train-{job_id}-r{rank}",
        # rank N may read only s3://my-bucket/shards/N/*
        "session_policy": {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": ["arn:aws:s3:::my-bucket/shards/{rank}/*", "arn:aws:s3:::my-bucket"]}]},
    }},
}


def train_loop(config: dict[str, Any]) -> None:
    rank = ray.train.get_context().get_world_rank()
    bucket, _, prefix = config["shards"].removeprefix("s3://").partition("/")
    s3 = keyless_ray.boto3_session().client("s3")  # this rank's session, refreshed for it
    keys = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{rank}/").get("Contents", [])
    model = torch.nn.Linear(4, 1)
    for item in keys:
        s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        model(torch.ones(1, 4)).sum().backward()
        for parameter in model.parameters():
            assert parameter.grad is not None
            dist.all_reduce(parameter.grad)
    # consumers that hold static keys (pyarrow S3FileSystem under checkpoints): serve them
    # this rank's credentials from a loopback endpoint that always has fresh ones
    keyless_ray.credential_endpoint()
    ray.train.report({"rank": rank, "objects": len(keys)})


def main(shards: str) -> None:
    trainer = TorchTrainer(
        train_loop, train_loop_config={"shards": shards},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        # mypy sees Ray Train V1's RunConfig; V2 (the default in Ray 2.60) takes this argument
        run_config=RunConfig(name="keyless-train", worker_runtime_env={  # type: ignore[call-arg]
            "keyless": KEYLESS, "worker_process_setup_hook": "keyless_ray.setup"}),
    )
    print(trainer.fit().metrics)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "s3://my-bucket/shards")
