"""The MLflow audit sink on a real local tracking store (issue 11, point 1).

How a run is found under `keyless exec`: the launcher creates the MLflow run once and gives
every rank ``MLFLOW_RUN_ID`` (MLflow's own convention). Each rank runs
``keyless exec --config F -- python train.py``: the sink in the keyless process tags that run and,
when keyless exits, writes its rank's events as ``keyless/workers/<worker>.jsonl`` and the
merged ``keyless/identity-timeline.json`` (+ ``.html``); the child inherits the variable, so its
``mlflow.start_run()`` resumes the same run and logs its metrics beside the identity trail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyless.audit import redact
from keyless.cli import main
from tests.e2e.conftest import Federation, LeakGuard

pytestmark = pytest.mark.e2e

TRAIN = r"""
import os, sys, time
import boto3, mlflow

bucket, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rank = os.environ["RANK"]
s3 = boto3.client("s3", config=boto3.session.Config(s3={"addressing_style": "path"}))
launched = os.environ["MLFLOW_RUN_ID"]   # set by the launcher (start_run consumes it)
with mlflow.start_run() as run:          # resumes that run
    assert run.info.run_id == launched
    mlflow.log_param(f"rank{rank}_shard", key)
    step, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"shard"
        mlflow.log_metric(f"rank{rank}_reads", step, step=step)
        step += 1
        time.sleep(0.3)
print("reads", step)
"""


def test_exec_ranks_leave_tags_and_one_timeline_on_the_mlflow_run(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file stores are opt-in
    tracking = (tmp_path / "mlruns").as_uri()
    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.create_run(client.create_experiment("keyless-e2e")).info.run_id

    aws = federation.aws
    aws.front.max_session_seconds = 4
    key = federation.prefix + "shard.bin"
    aws.put_object(aws.bucket, key, b"shard")
    # a name the launcher knows ({rank} would be served per process through the endpoint)
    config = federation.config("shortlived", session_name="rank-{pid}")
    config["audit"] = {"sinks": ["log", "mlflow"]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(config))
    train = tmp_path / "train.py"
    train.write_text(TRAIN)
    base = {**os.environ, **aws.env(), "MLFLOW_TRACKING_URI": tracking, "MLFLOW_RUN_ID": run,
            "MLFLOW_ALLOW_FILE_STORE": "true"}
    base.pop("AWS_ENDPOINT_URL_STS")  # keyless exec sets it from the config
    ranks = [subprocess.Popen(
        [sys.executable, "-m", "keyless", "exec", "--config", str(spec), "--",
         sys.executable, str(train), aws.bucket, key, "11"],
        env={**base, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=240) for p in ranks]
    for process, (out, err) in zip(ranks, outputs, strict=True):
        leak_guard.add(out, err)
        assert process.returncode == 0, err[-3000:]

    data = client.get_run(run).data
    tags: dict[str, str] = data.tags
    assert tags["keyless.issuer"] == federation.idp.issuer
    assert tags["keyless.subject"] == "shortlived"
    assert tags["keyless.source"] == "client_credentials"
    assert tags["keyless.rank.0.subject"] == tags["keyless.rank.1.subject"] == "shortlived"
    assert set(data.params) == {"rank0_shard", "rank1_shard"}  # the child logged to this run

    local = Path(client.download_artifacts(run, "keyless", str(tmp_path / "artifacts")))
    artifacts = {str(p.relative_to(local)): p.read_text() for p in local.rglob("*")
                 if p.is_file()}
    parts = sorted(name for name in artifacts if name.startswith("workers/"))
    assert len(parts) == 2 and {"identity-timeline.json", "identity-timeline.html"} <= set(
        artifacts)
    timeline: dict[str, Any] = json.loads(artifacts["identity-timeline.json"])
    assert timeline["run_id"] == run
    assert [w["context"]["rank"] for w in timeline["workers"]] == ["0", "1"]  # one per rank
    for worker in timeline["workers"]:
        [token] = worker["identities"]
        assert token["sub"] == "shortlived" and token["iss"] == federation.idp.issuer
        assert len(token["refreshed"]) >= 1, "the 8-second token was never refreshed"
        assert all(c["token_sha256"] for c in token["credentials"])
        assert worker["failures"] == []
    assert artifacts["identity-timeline.html"].count('<section class="worker"') == 2

    # `keyless audit` reads the per-worker parts as they are
    assert main(["-q", "audit", *(str(local / p) for p in parts)]) == 0

    everything = "\n".join([json.dumps(tags), json.dumps(data.params), json.dumps(data.metrics),
                            *artifacts.values()])
    for secret in federation.idp.client_secrets.values():
        assert secret not in everything
    assert redact(everything) == everything, "something shaped like a JWT is on the run"
    leak_guard.add(everything)
