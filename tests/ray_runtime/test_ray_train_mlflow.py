"""Ray Train + keyless's MLflow audit sink (issue 11): the identity trail lands on the run.

The launcher creates the MLflow run (a file store in a temp dir) and hands its id to the
workers the MLflow way, ``MLFLOW_RUN_ID`` (with ``MLFLOW_TRACKING_URI``) in the worker runtime
env's ``env_vars``: ids and paths only. The keyless config asks for ``audit.sinks: [log,
mlflow]``; each rank's own identity (built by ``keyless_ray`` inside the worker) tags the run
and writes its events and the merged identity timeline. The run must end with the
``keyless.*`` and ``keyless.rank.<rank>.*`` tags, one timeline entry per rank, and no token or
client secret in any tag, param or artifact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import ray

from keyless.audit import redact
from tests.ray_runtime.conftest import Federation, LeakGuard, RayCluster, keyless_env

pytestmark = pytest.mark.e2e

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def train_loop(config: dict[str, Any]) -> None:
    import mlflow
    import torch
    import torch.distributed as dist
    from botocore.config import Config

    import keyless_ray

    rank = ray.train.get_context().get_world_rank()
    s3 = keyless_ray.boto3_session().client(
        "s3", endpoint_url=config["s3_url"],
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
    model = torch.nn.Linear(2, 1)
    for step in range(3):
        body = s3.get_object(Bucket=config["bucket"], Key=config["key"])["Body"].read()
        assert body == b"weights"
        loss = model(torch.ones(1, 2)).sum()
        loss.backward()
        for parameter in model.parameters():
            assert parameter.grad is not None
            dist.all_reduce(parameter.grad)
        mlflow.MlflowClient().log_metric(config["run_id"], f"rank{rank}_step", step, step=step)
    mlflow.MlflowClient().log_param(config["run_id"], f"rank{rank}_key", config["key"])
    # the sink writes its part and the merged timeline now (it would also at interpreter
    # exit, which a Ray Train worker actor is not promised)
    keyless_ray.flush_audit()


def test_train_ranks_leave_identity_tags_and_timeline_on_the_mlflow_run(
        ray_cluster: RayCluster, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file stores are opt-in
    tracking = (tmp_path / "mlruns").as_uri()
    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.create_run(client.create_experiment("keyless-ray-train")).info.run_id

    aws = federation.aws
    key = federation.prefix + "weights.bin"
    aws.put_object(aws.bucket, key, b"weights")
    value = keyless_env(federation, tmp_path, session_name="mlf-r{rank}-{task_id}")
    value["audit"] = {"sinks": ["log", "mlflow"]}
    env_vars = {"MLFLOW_TRACKING_URI": tracking, "MLFLOW_RUN_ID": run,
                "MLFLOW_ALLOW_FILE_STORE": "true"}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"s3_url": aws.s3_url, "bucket": aws.bucket, "key": key,
                           "run_id": run},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False,
                                     resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(storage_path=str(tmp_path / "train"), name="keyless-mlflow",
                             worker_runtime_env={"keyless": value, "env_vars": env_vars,
                                                 "worker_process_setup_hook": "keyless_ray.setup"}),
    )
    trainer.fit()

    data = client.get_run(run).data
    tags: dict[str, str] = {k: v for k, v in data.tags.items() if k.startswith("keyless.")}
    assert tags["keyless.issuer"] == federation.idp.issuer
    assert tags["keyless.subject"] == "trainer"
    assert tags["keyless.principal"] and tags["keyless.source"]
    for rank in (0, 1):
        assert tags[f"keyless.rank.{rank}.subject"] == "trainer"
        assert tags[f"keyless.rank.{rank}.issuer"] == federation.idp.issuer
        assert tags[f"keyless.rank.{rank}.session_name"].startswith(f"mlf-r{rank}-")
    assert set(data.params) == {"rank0_key", "rank1_key"}  # the ranks' own logging, same run

    local = Path(client.download_artifacts(run, "keyless", str(tmp_path / "artifacts")))
    artifacts = {str(p.relative_to(local)): p.read_text() for p in local.rglob("*")
                 if p.is_file()}
    parts = sorted(name for name in artifacts if name.startswith("workers/"))
    assert len(parts) == 2, parts
    assert {"identity-timeline.json", "identity-timeline.html"} <= set(artifacts)
    timeline: dict[str, Any] = json.loads(artifacts["identity-timeline.json"])
    assert timeline["run_id"] == run
    assert sorted(w["context"]["rank"] for w in timeline["workers"]) == ["0", "1"]
    for worker in timeline["workers"]:
        rank = worker["context"]["rank"]
        assert worker["context"]["job_id"] and worker["context"]["task_id"]
        trails = {t["target"]: t for t in worker["identities"]}
        assert set(trails) == {"token", "aws"}, trails  # the node's token file, its exchange
        for trail in trails.values():
            assert trail["sub"] == "trainer" and trail["iss"] == federation.idp.issuer
            assert trail["credentials"] and all(c["token_sha256"] for c in trail["credentials"])
        assert trails["aws"]["principal"] == federation.role_arn
        assert trails["aws"]["session_name"] == tags[f"keyless.rank.{rank}.session_name"]
        assert worker["failures"] == []
    assert artifacts["identity-timeline.html"].count('<section class="worker"') == 2

    everything = "\n".join([json.dumps(data.tags), json.dumps(data.params),
                            json.dumps(data.metrics), *artifacts.values()])
    for secret in federation.idp.client_secrets.values():
        assert secret not in everything
    assert redact(everything) == everything, "something shaped like a JWT is on the run"
    leak_guard.add(everything, ray_cluster.log_text())
