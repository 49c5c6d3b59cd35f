"""Ray Train: a TorchTrainer with 2 CPU workers (gloo), each rank with its own identity.

Each rank reads its own shard ``shards/{rank}/`` through a session policy templated on
``{rank}`` with boto3 and with pyarrow's ``S3FileSystem`` (through the worker's loopback
credential endpoint), while 6-second STS sessions and 8-second IdP tokens roll over; rank 0
is denied rank 1's shard; every session name carries the rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import ray

from tests.ray_runtime.conftest import Federation, LeakGuard, RayCluster, keyless_env

pytestmark = pytest.mark.e2e

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

SECONDS = 16.0


def train_loop(config: dict[str, Any]) -> None:
    import os
    import time

    import pyarrow.fs as pafs
    import torch
    import torch.distributed as dist
    from botocore.config import Config

    import keyless_ray

    rank = ray.train.get_context().get_world_rank()
    session = keyless_ray.boto3_session()
    s3 = session.client("s3", endpoint_url=config["s3_url"],
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))
    keyless_ray.credential_endpoint()
    host = config["s3_url"].split("://", 1)[1]
    arrow = pafs.S3FileSystem(endpoint_override=host, scheme="http")
    mine = f"{config['prefix']}shards/{rank}/data.bin"
    other = f"{config['prefix']}shards/{1 - rank}/data.bin"
    reads, failures = 0, []
    model = torch.nn.Linear(4, 1)
    deadline = time.monotonic() + config["seconds"]
    while True:
        # the ranks decide together when to stop, so both make the same collective calls
        go_on = torch.tensor([1.0 if time.monotonic() < deadline else 0.0])
        dist.all_reduce(go_on, op=dist.ReduceOp.MIN)
        if go_on.item() == 0.0:
            break
        try:
            body = s3.get_object(Bucket=config["bucket"], Key=mine)["Body"].read()
            with arrow.open_input_stream(f"{config['bucket']}/{mine}") as stream:
                assert stream.read() == body == f"shard-{rank}".encode()
            reads += 1
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        loss = model(torch.ones(1, 4)).sum()
        loss.backward()
        for parameter in model.parameters():  # the gradients' gloo all-reduce
            assert parameter.grad is not None
            dist.all_reduce(parameter.grad)
        time.sleep(0.3)
    denied = ""
    try:
        s3.get_object(Bucket=config["bucket"], Key=other)
    except Exception as exc:
        denied = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    result = {"rank": rank, "reads": reads, "failures": failures, "denied": denied,
              "session_name": keyless_ray.identity().aws().session_name,
              "env_rank": os.environ.get("RANK")}
    Path(config["out"], f"rank-{rank}.json").write_text(json.dumps(result))


def test_torch_trainer_ranks_read_their_own_shards_across_rollovers(
        ray_cluster: RayCluster, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    aws = federation.aws
    aws.front.max_session_seconds = 6
    for rank in (0, 1):
        aws.put_object(aws.bucket, f"{federation.prefix}shards/{rank}/data.bin", f"shard-{rank}")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{aws.bucket}/{federation.prefix}shards/{{rank}}/*"}]}
    value = keyless_env(federation, tmp_path, "shortlived",
                        session_name="train-r{rank}-{task_id}", session_policy=policy)
    out = tmp_path / "out"
    out.mkdir()
    idp_before, accepted_before = federation.idp.token_requests(), len(aws.front.accepted)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"s3_url": aws.s3_url, "bucket": aws.bucket,
                           "prefix": federation.prefix, "seconds": SECONDS, "out": str(out)},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False,
                                     resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(storage_path=str(tmp_path / "train"), name="keyless-train",
                             worker_runtime_env={"keyless": value,
                                                 "worker_process_setup_hook": "keyless_ray.setup"}),
    )
    trainer.fit()

    results = {r["rank"]: r for r in
               (json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1))}
    for rank, result in results.items():
        assert result["failures"] == [], result["failures"][:3]
        assert result["reads"] >= 10
        assert result["session_name"].startswith(f"train-r{rank}-")
        assert result["env_rank"] == str(rank)
    assert results[0]["denied"] == "AccessDenied"
    assert results[1]["denied"] == "AccessDenied"
    accepted = aws.front.accepted[accepted_before:]
    for rank in (0, 1):
        mine = [a for a in accepted if a["session_name"].startswith(f"train-r{rank}-")]
        assert len(mine) >= 3, f"rank {rank}: expected two rollovers, got {len(mine)} sessions"
    assert aws.front.expired_uses == []
    # one node refresher serves both ranks: they exchanged the same subject tokens, and the
    # 8-second token was refreshed by the node while they trained
    used = {rank: {a["token_sha256"] for a in accepted
                   if a["session_name"].startswith(f"train-r{rank}-")} for rank in (0, 1)}
    assert used[0] & used[1], "the ranks did not share the node's subject token"
    assert federation.idp.token_requests() - idp_before >= 2
    leak_guard.add(ray_cluster.log_text(), json.dumps(results))
