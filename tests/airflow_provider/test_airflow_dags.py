"""The example DAGs (examples/airflow/keyless_dags.py) under `dag.test()` on SQLite, with the
connections given as AIRFLOW_CONN_<ID> JSON: reference IdP → keyless → verifying STS front →
S3 on moto. Issue 5, points 2, 3 and 4.

Each run is its own process (`python keyless_dags.py DAG_ID`, i.e. `dag.test()`), as a user
runs it; its output is the task log (`dag.test()` runs tasks in-process and logs to the
console, so there is no per-task log file without an executor) and is scanned for secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_provider.conftest import DAGS, flat_extra
from tests.e2e.conftest import Federation, LeakGuard
from tests.support.training_data import linear_csv_shards

pytestmark = pytest.mark.e2e


def run_dag(dag_id: str, federation: Federation, config: dict[str, Any], tmp_path: Path,
            leak_guard: LeakGuard, *, script: str = "keyless_dags.py", **env: str) -> str:
    """Run one example DAG (``python examples/airflow/SCRIPT [DAG_ID]``) with ``config`` as
    connection keyless_default; its log text."""
    log = tmp_path / f"{dag_id}.log"
    environ = {
        **os.environ, **federation.aws.env(),
        "AIRFLOW_CONN_KEYLESS_DEFAULT": json.dumps(
            {"conn_type": "keyless", "extra": flat_extra(config)}),
        "KEYLESS_EXAMPLE_BUCKET": federation.aws.bucket,
        "KEYLESS_EXAMPLE_PREFIX": federation.prefix, **env,
    }
    with log.open("w") as out:
        result = subprocess.run([sys.executable, str(DAGS / script), dag_id],
                                stdout=out, stderr=subprocess.STDOUT, env=environ,
                                timeout=300, check=False)
    text = log.read_text()
    leak_guard.add(text)
    assert result.returncode == 0, text[-4000:]
    assert f"KEYLESS_DAGRUN {dag_id} " in text
    return text


def test_keyless_hook_task_reads_s3_as_the_dag_and_task(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    run_dag("keyless_s3", federation, federation.config(), tmp_path, leak_guard)

    key = federation.prefix + "from-write_and_read.txt"
    body = federation.aws.client("s3").get_object(Bucket=federation.aws.bucket, Key=key)
    assert body["Body"].read() == b"written with keyless"
    accepted = federation.aws.front.accepted
    assert accepted, "the verifying STS front accepted no token"
    for answer in accepted:
        assert answer["sub"] == "trainer" and answer["aud"] == "sts.amazonaws.com"
        assert answer["session_name"].startswith("keyless-keyless_s3-write_and_read-"), answer
    assert federation.aws.front.expired_uses == []


def test_a_subprocess_in_worker_env_reads_across_rollovers(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """8-second tokens (client `shortlived`), 4-second sessions, 22 s of reads by a child that
    imports only boto3."""
    federation.aws.front.max_session_seconds = 4
    text = run_dag("keyless_worker_env", federation, federation.config("shortlived"), tmp_path,
                   leak_guard, KEYLESS_EXAMPLE_READ_SECONDS="22")

    line = next(x for x in text.splitlines() if "KEYLESS_REPORT " in x)
    report = json.loads(line.split("KEYLESS_REPORT ", 1)[1])
    assert report["failures"] == []
    assert report["reads"] > 30
    assert report["tokens"] >= 3, "the token file did not roll over three times"
    assert report["keys"] >= 3, "the credentials did not roll over three times"
    assert report["session"].startswith("keyless-keyless_worker_env-subprocess_reads-")
    assert federation.aws.front.expired_uses == []
    names = {a["session_name"] for a in federation.aws.front.accepted}
    assert all(n.startswith("keyless-keyless_worker_env-subprocess_reads-") for n in names)


def test_s3hook_on_an_aws_connection_deferring_to_keyless(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    aws_connection = {"conn_type": "aws", "extra": {
        "keyless_conn_id": "keyless_default", "endpoint_url": federation.aws.s3_url,
        "region_name": federation.aws.region}}
    run_dag("keyless_s3hook", federation, federation.config(), tmp_path, leak_guard,
            AIRFLOW_CONN_AWS_KEYLESS=json.dumps(aws_connection),
            AIRFLOW__AWS__SESSION_FACTORY="keyless_airflow.aws.KeylessSessionFactory",
            # had S3Hook fallen back to the default chain, these would be used (and refused)
            AWS_ACCESS_KEY_ID="AKIASTATICFALLBACK00",
            AWS_SECRET_ACCESS_KEY="static-secret-that-must-not-be-used")

    key = federation.prefix + "s3hook.txt"
    body = federation.aws.client("s3").get_object(Bucket=federation.aws.bucket, Key=key)
    assert body["Body"].read() == b"through S3Hook"
    names = [a["session_name"] for a in federation.aws.front.accepted]
    assert names and all(n.startswith("keyless-keyless_s3hook-s3hook_round_trip-")
                         for n in names), names
    # put + get made two S3Hook sessions; they share the task's one pipeline: one exchange
    assert len(names) == 1, names


def test_a_dag_trains_a_pytorch_model_on_s3_data_across_rollovers(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """examples/airflow/keyless_train.py: the training task streams the shards the test wrote
    (a known linear function) from S3 every epoch for several credential lifetimes (8-second
    tokens, 4-second sessions), fits the model and writes the checkpoint back; the weights it
    learned are the test's, so the data really came from S3."""
    import io

    import torch

    weight, bias = [1.5, 0.5, -2.0, 1.0], -0.5
    for part, text in enumerate(linear_csv_shards(weight, bias, shards=2, rows=64, seed=1)):
        federation.aws.put_object(federation.aws.bucket,
                                  f"{federation.prefix}data/part-{part}.csv", text)
    federation.aws.front.max_session_seconds = 4
    text = run_dag("keyless_train", federation, federation.config("shortlived"), tmp_path,
                   leak_guard, script="keyless_train.py", KEYLESS_EXAMPLE_EPOCHS="150")

    assert "epoch 149: loss" in text
    checkpoint = federation.aws.get_object(federation.aws.bucket,
                                           f"{federation.prefix}checkpoints/linear.pt")
    state = torch.load(io.BytesIO(checkpoint), weights_only=True)
    assert torch.allclose(state["weight"].flatten(), torch.tensor(weight), atol=0.02), state
    assert abs(state["bias"].item() - bias) < 0.02, state

    front = federation.aws.front
    by_task = {name: [f for f in front.forwarded if f["session_name"].startswith(
        f"keyless-keyless_train-{name}-")] for name in ("ensure_dataset", "train")}
    assert by_task["ensure_dataset"], "the dataset task made no S3 call"  # listed, wrote none
    reads = [f for f in by_task["train"] if f["method"] == "GET"]
    assert len(reads) >= 150 * 2 and all(f["status"] == 200 for f in by_task["train"])
    assert [f["method"] for f in by_task["train"]][-1] == "PUT"  # the checkpoint
    assert len({f["access_key_id"] for f in reads}) >= 2, "no credential rollover in training"
    assert front.expired_uses == []


def test_the_training_dag_makes_its_data_set_in_an_empty_prefix(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """On an empty prefix, ensure_dataset writes the synthetic shards (as its own session)
    and train fits them: the DAG runs as documented on a fresh bucket."""
    import io

    import torch

    run_dag("keyless_train", federation, federation.config(), tmp_path, leak_guard,
            script="keyless_train.py", KEYLESS_EXAMPLE_EPOCHS="40")

    listing = federation.aws.client("s3").list_objects_v2(
        Bucket=federation.aws.bucket, Prefix=f"{federation.prefix}data/")
    assert len(listing.get("Contents", [])) == 4
    state = torch.load(io.BytesIO(federation.aws.get_object(
        federation.aws.bucket, f"{federation.prefix}checkpoints/linear.pt")), weights_only=True)
    assert torch.allclose(state["weight"].flatten(), torch.tensor([2.0, -1.0, 0.5, 3.0]),
                          atol=0.05), state
    puts = {f["session_name"].split("-")[2] for f in federation.aws.front.forwarded
            if f["method"] == "PUT"}
    assert puts == {"ensure_dataset", "train"}, puts


def torchrun_shards(federation: Federation) -> tuple[list[float], float]:
    """Per-rank CSV shards of a known linear function at PREFIX/shards/<rank>/data.csv."""
    weight, bias = [1.5, -0.5, 2.0], 0.25
    for rank, text in enumerate(linear_csv_shards(weight, bias, shards=2, rows=64, seed=3)):
        federation.aws.put_object(federation.aws.bucket,
                                  f"{federation.prefix}shards/{rank}/data.csv", text)
    return weight, bias


def per_rank_config(federation: Federation, session_name: str) -> dict[str, Any]:
    """The `shortlived` client's config with a per-rank session name and a session policy
    confining each rank to its own shard."""
    aws = federation.aws
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{aws.bucket}/{federation.prefix}shards/{{rank}}/*"}]}
    return federation.config("shortlived", session_name=session_name, session_policy=policy)


def test_a_task_trains_with_torchrun_each_rank_as_itself(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """examples/airflow/keyless_torchrun.py: the task starts real torchrun (2 ranks, gloo DDP)
    inside worker_env(); each rank's plain boto3 gets its own session, named after the dag, the
    task and the rank, reads its own shard every epoch across rollovers (4-second sessions)
    and is denied the other's; together they learn the test's function."""
    weight, bias = torchrun_shards(federation)
    federation.aws.front.max_session_seconds = 4
    config = per_rank_config(federation, "keyless-{job_id}-{task_id}-r{rank}")
    text = run_dag("keyless_torchrun", federation, config, tmp_path, leak_guard,
                   script="keyless_torchrun.py", KEYLESS_EXAMPLE_EPOCHS="150",
                   RANK="0")  # a stray launcher rank: never a rank's identity

    line = next(x for x in text.splitlines() if "KEYLESS_TORCHRUN " in x)
    reports = json.loads(line.split("KEYLESS_TORCHRUN ", 1)[1])
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        rank = report["rank"]
        assert report["arn"].endswith(f"/keyless-keyless_torchrun-train_ddp-r{rank}")
        assert report["other_shard"] == "AccessDenied"
        assert report["weight"] == pytest.approx(weight, abs=0.05)
        assert report["bias"] == pytest.approx(bias, abs=0.05)
    front = federation.aws.front
    for rank in (0, 1):
        name = f"keyless-keyless_torchrun-train_ddp-r{rank}"
        reads = [f for f in front.forwarded if f["session_name"] == name
                 and f["path"].endswith("/data.csv") and f["status"] == 200]
        assert {f["path"].split("/shards/")[1] for f in reads} == {f"{rank}/data.csv"}
        assert len(reads) >= 150
        assert len({f["access_key_id"] for f in reads}) >= 2, f"rank {rank}: no rollover"
    assert {a["session_name"] for a in front.accepted} == {
        "keyless-keyless_torchrun-train_ddp-r0", "keyless-keyless_torchrun-train_ddp-r1"}
    assert front.expired_uses == []
