"""The Ray Train job of train_job.py, on this machine: no cloud account, no Kubernetes.

Run it after ``python -m keyless.testing.local_federation start --dir keyless-local`` (a dev
OIDC issuer, and moto S3 behind a verifying STS front) and with the plugin registered::

    export RAY_RUNTIME_ENV_PLUGINS='[{"class":"keyless_ray.KeylessPlugin"}]'
    python examples/ray/local_train.py --federation keyless-local

It starts a local Ray cluster (``ray.init()``; with ``$RAY_ADDRESS`` set it joins that cluster
instead, whose nodes must have been started with the variable above) and runs a TorchTrainer
with 2 CPU workers (gloo). Each rank gets its own STS session, named after its rank, under a
session policy that lets rank N read only ``shards/N/*``; it reads its shard, asks STS who it is,
tries the next rank's shard (which must be denied), and the driver prints one block per rank.
Exit status 0 only when every rank read its own shard as its own session and was denied the
other one.

The runtime env is train_job.py's except for two things: the token source is a ``command``
(``keyless token --config keyless-local/idp.yaml --raw``: the client secret stays in that 0600
file; Ray logs runtime envs in plaintext and the plugin refuses secrets in them), and the
standard ``AWS_ENDPOINT_URL_STS`` / ``AWS_ENDPOINT_URL_S3`` variables point at the local
federation. The training function itself is what it would be on AWS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

import keyless_ray

PLUGINS = "RAY_RUNTIME_ENV_PLUGINS"


def runtime_env(federation: dict[str, Any]) -> dict[str, Any]:
    """The workers' runtime env: the keyless value (no secret in it) and the endpoints."""
    bucket = federation["bucket"]
    keyless = {
        "source": {"type": "command", "timeout_seconds": 60,
                   "command": [sys.executable, "-m", "keyless", "token",
                               "--config", federation["idp_config"], "--raw"]},
        "target": {"aws": {
            "role_arn": federation["role_arn"],
            "region": federation["region"],
            "session_name": "quickstart-{job_id}-r{rank}",
            # rank N may read only s3://keyless-quickstart/shards/N/*
            "session_policy": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket}/shards/{{rank}}/*"},
                {"Effect": "Allow", "Action": "s3:ListBucket",
                 "Resource": f"arn:aws:s3:::{bucket}"}]},
        }},
        "allow_insecure_http": True,  # the local endpoints are http://127.0.0.1 (loopback only)
    }
    return {"keyless": keyless, "worker_process_setup_hook": "keyless_ray.setup",
            "env_vars": {"AWS_ENDPOINT_URL_STS": federation["sts_url"],
                         "AWS_ENDPOINT_URL_S3": federation["s3_url"]}}


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__)


def train_loop(config: dict[str, Any]) -> None:
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    bucket, prefix = config["bucket"], config["prefix"]
    session = keyless_ray.boto3_session()  # this rank's own STS session, refreshed for it
    s3 = session.client("s3")
    me = {"rank": rank, "arn": session.client("sts").get_caller_identity()["Arn"],
          "session_name": keyless_ray.identity().aws().session_name, "read": [], "denied": []}
    model = torch.nn.Linear(4, 1)
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{rank}/").get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        me["read"].append({"key": item["Key"], "bytes": len(body),
                           "text": body[:60].decode(errors="replace").strip()})
        model(torch.ones(1, 4)).sum().backward()  # a token training step on what was read
        for parameter in model.parameters():
            assert parameter.grad is not None
            dist.all_reduce(parameter.grad)
    other = (rank + 1) % world
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{other}/").get(
            "Contents", [])[:1]:
        try:
            s3.get_object(Bucket=bucket, Key=item["Key"])
            me["denied"].append({"key": item["Key"], "code": "ALLOWED"})
        except Exception as exc:  # botocore ClientError: AccessDenied
            me["denied"].append({"key": item["Key"], "code": _error_code(exc)})
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, me)  # every rank's findings, for rank 0 to report
    if rank != 0:
        ray.train.report({})
        return
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "ranks.json").write_text(json.dumps(everyone))
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def report(ranks: list[dict[str, Any]], bucket: str) -> bool:
    """Print one block per rank; True when every rank did what its policy allows, only."""
    ok = True
    for r in ranks:
        rank = r["rank"]
        print(f"rank {rank}  identity {r['arn']}")
        for read in r["read"]:
            print(f"rank {rank}  read     s3://{bucket}/{read['key']} ({read['bytes']} bytes): "
                  f"{read['text']!r}")
        for denied in r["denied"]:
            print(f"rank {rank}  other    s3://{bucket}/{denied['key']} -> {denied['code']}")
        ok = ok and bool(r["read"]) and f"-r{rank}" in r["arn"] and bool(r["denied"]) \
            and all(d["code"] == "AccessDenied" for d in r["denied"]) \
            and all(f"/{rank}/" in read["key"] for read in r["read"])
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--federation", default="keyless-local", type=Path,
                        help="the --dir of local_federation start (default keyless-local)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    try:
        federation = json.loads((args.federation / "federation.json").read_text())
    except OSError:
        print(f"no local federation in {args.federation}/; start it with: python -m "
              f"keyless.testing.local_federation start --dir {args.federation}", file=sys.stderr)
        return 2
    if not os.environ.get("RAY_ADDRESS") and not os.environ.get(PLUGINS):
        print(f"{PLUGINS} is not set: the Ray cluster this starts would have no keyless "
              f"plugin; fix: export {PLUGINS}='[{{\"class\":\"keyless_ray.KeylessPlugin\"}}]'",
              file=sys.stderr)
        return 2
    ray.init()  # a local cluster inheriting RAY_RUNTIME_ENV_PLUGINS, or $RAY_ADDRESS
    trainer = TorchTrainer(
        train_loop, train_loop_config={"bucket": federation["bucket"], "prefix": "shards"},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False,
                                     resources_per_worker={"CPU": 0.5}),
        # mypy sees Ray Train V1's RunConfig; V2 (the default in Ray 2.60) takes worker_runtime_env
        run_config=RunConfig(name="keyless-quickstart",  # type: ignore[call-arg]
                             storage_path=str((args.federation / "ray_results").resolve()),
                             worker_runtime_env=runtime_env(federation)),
    )
    result = trainer.fit()
    assert result.checkpoint is not None, "rank 0 reported no checkpoint"
    with result.checkpoint.as_directory() as checkpoint:
        ranks = json.loads(Path(checkpoint, "ranks.json").read_text())
    if report(ranks, federation["bucket"]):
        print(f"quickstart OK: {len(ranks)} ranks, each read only its own shard as its own STS "
              "session and was denied the next rank's shard")
        return 0
    print("quickstart FAILED: see the lines above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
