"""A Prefect 3.9 flow whose task trains with ``torchrun`` on 2 ranks, each rank with its own
AWS identity from a ``KeylessCredentials`` block.

``train_with_torchrun`` runs one task, ``train_ddp``: inside the block's ``worker_env()`` it
starts ``torchrun --standalone --nproc-per-node 2 examples/torchrun/train_shards.py``, a
training script that knows nothing of keyless (plain ``boto3.client("s3")``). With a block
whose session name and session policy are per rank::

    KeylessCredentials(
        source={"type": "file", "path": "/var/run/secrets/tokens/oidc"},
        target={"aws": {
            "role_arn": "arn:aws:iam::123456789012:role/trainer",
            "session_name": "{job_id}-{task_id}-r{rank}",      # flow run - task run - rank
            "session_policy": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::training-data/example/shards/{rank}/*"}]}}},
    ).save("torchrun")

each rank asks keyless's loopback credential endpoint and gets its own session, named after
the flow run, the task run and the rank, confined to its own shard
(``PREFIX/shards/<rank>/data.csv``). Run::

    python examples/prefect/keyless_torchrun.py --block torchrun --bucket training-data \
        --prefix example/

The task returns each rank's report (identity, shard, the other shard's denial, weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from prefect_keyless import KeylessCredentials

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "torchrun" / "train_shards.py"


@task
def train_ddp(block: str, bucket: str, prefix: str, epochs: int,
              nproc: int) -> list[dict[str, Any]]:
    """Run torchrun with this task run's identity, one per rank; each rank's report."""
    logger = get_run_logger()
    report_dir = tempfile.mkdtemp(prefix="keyless-torchrun-")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), str(TRAIN_SCRIPT), "--bucket", bucket,
               "--prefix", prefix, "--epochs", str(epochs), "--report", report_dir]
    credentials = KeylessCredentials.load(block)
    with credentials.worker_env() as env:
        result = subprocess.run(command, env=env, capture_output=True, text=True,
                                check=False)
    logger.info("torchrun exited %s; its last output:\n%s", result.returncode,
                result.stdout[-2000:])
    reports = [json.loads(path.read_text())
               for path in sorted(Path(report_dir).glob("rank-*.json"))]
    if result.returncode != 0 or len(reports) != nproc:
        raise RuntimeError(f"torchrun exited {result.returncode} with {len(reports)} of "
                           f"{nproc} rank reports: {result.stderr[-2000:]}")
    if any(report["other_shard"] == "read" for report in reports):
        raise RuntimeError("a rank could read another rank's shard: check the policy")
    return reports


@flow
def train_with_torchrun(block: str, bucket: str, prefix: str = "", epochs: int = 100,
                        nproc: int = 2) -> list[dict[str, Any]]:
    """Train on per-rank shards with torchrun, each rank as itself."""
    reports: list[dict[str, Any]] = train_ddp(block, bucket, prefix, epochs, nproc)
    for report in reports:
        get_run_logger().info("rank %s as %s: loss %.6f", report["rank"],
                              report["arn"].rsplit("/", 1)[-1], report["loss"])
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(train_with_torchrun(args.block, args.bucket, args.prefix, args.epochs,
                                         args.nproc), indent=2))


if __name__ == "__main__":
    main()
