"""Distributed PyTorch training on per-rank S3 shards, for ``torchrun``: knows nothing of
keyless.

Each rank reads only its own shard, ``s3://BUCKET/PREFIXshards/<rank>/data.csv`` (a header
``x0,...,y``, then rows), every epoch with plain ``boto3.client("s3")``, and fits one
``torch.nn.Linear`` regression under ``DistributedDataParallel`` (gloo: CPU is enough). The
credentials come from the AWS SDK's default chain: run it under keyless, which gives each rank
its own short-lived session, named after the rank and confined to the rank's shard by a
session policy::

    keyless exec --config spec.yaml -- \\
        torchrun --standalone --nproc-per-node 2 train_shards.py --bucket B --prefix P/

(or inside ``KeylessHook.worker_env()`` / ``KeylessCredentials.worker_env()``: the Airflow DAG
``examples/airflow/keyless_torchrun.py`` and the Prefect flow
``examples/prefect/keyless_torchrun.py``). With ``--report DIR`` each rank writes
``DIR/rank-<rank>.json``: its STS identity, the shard it read, whether another rank's shard was
denied to it, and the weights it ended with (the same on every rank: DDP keeps them in step).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def _read_shard(s3: Any, bucket: str, key: str) -> tuple[Any, Any]:
    import torch

    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    rows = [[float(v) for v in line.split(",")] for line in text.splitlines()[1:] if line]
    data = torch.tensor(rows)
    return data[:, :-1], data[:, -1:]


def _denied(s3: Any, bucket: str, key: str) -> str:
    """What reading another rank's shard gave: the error code (AccessDenied) or "read"."""
    try:
        s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore ClientError: the service's own error code
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code",
                                                                       type(exc).__name__))
    return "read"


def main() -> None:
    import boto3
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--report", default=None, metavar="DIR")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    s3 = boto3.client("s3")
    mine = f"{args.prefix}shards/{rank}/data.csv"
    torch.manual_seed(0)  # the same initial weights on every rank
    x, _ = _read_shard(s3, args.bucket, mine)
    model = DistributedDataParallel(torch.nn.Linear(x.shape[1], 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss = torch.tensor(0.0)
    for epoch in range(args.epochs):
        x, y = _read_shard(s3, args.bucket, mine)  # streamed again every epoch, as at scale
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]  # DDP averages all ranks' gradients
        optimizer.step()
        if rank == 0 and (epoch % 25 == 0 or epoch == args.epochs - 1):
            print(f"epoch {epoch}: loss {loss.item():.6f}", flush=True)
    theirs = f"{args.prefix}shards/{(rank + 1) % world}/data.csv"
    report = {
        "rank": rank, "world": world, "shard": mine, "loss": float(loss.item()),
        "other_shard": _denied(s3, args.bucket, theirs) if world > 1 else "none",
        "arn": boto3.client("sts").get_caller_identity()["Arn"],
        "weight": model.module.weight.detach().flatten().tolist(),
        "bias": float(model.module.bias.detach().item()),
        "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "node": os.environ.get("GROUP_RANK", ""),
    }
    print(f"rank {rank}: {report['arn'].rsplit('/', 1)[-1]} read {mine}; "
          f"{theirs}: {report['other_shard']}", flush=True)
    if args.report:
        Path(args.report, f"rank-{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
