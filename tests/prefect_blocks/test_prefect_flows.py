"""Prefect flows on the KeylessCredentials block, whole system: reference IdP (oidc-provider)
→ client_credentials → verifying STS front → S3 on moto, against a real Prefect 3.9 server
(issue 6, points 2, 3 and 4).

Every test runs under ``leak_guard`` and also feeds it the flow's and tasks' logs as the
Prefect API returns them (keyless's own loggers are shipped there too: conftest.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from examples.prefect.keyless_flow import read_shards, train_on_shards
from keyless import sanitize_session_name
from prefect_keyless import KeylessCredentials
from tests.e2e.conftest import Federation, LeakGuard
from tests.prefect_blocks.conftest import PrefectServer
from tests.prefect_blocks.prefect_flows import long_task_flow, process_pool_flow
from tests.support.training_data import linear_csv_shards

pytestmark = pytest.mark.e2e


def _save_block(federation: Federation, client_id: str = "trainer", **aws: Any) -> str:
    name = f"keyless-{uuid.uuid4().hex[:8]}"
    KeylessCredentials(**federation.config(client_id, **aws)).save(name)
    return name


def _put(federation: Federation, count: int) -> list[str]:
    keys = [f"{federation.prefix}shard-{i}.bin" for i in range(count)]
    for i, key in enumerate(keys):
        federation.aws.put_object(federation.aws.bucket, key, f"shard {i}")
    return keys


def _run(flow: Callable[..., Any], **parameters: Any) -> tuple[Any, UUID]:
    state = flow(**parameters, return_state=True)
    return state.result(), state.state_details.flow_run_id


def _runs(flow_run_id: UUID) -> tuple[str, dict[str, str]]:
    """The flow run's name, and its task runs' names by id, as the API has them."""
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return flow_run.name, {str(t.id): t.name for t in task_runs}


def _api_logs(flow_run_id: UUID, guard: LeakGuard) -> list[Any]:
    """Every log of the flow run and its task runs as the API returns them; fed to the guard."""
    APILogHandler().flush()
    logs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200, offset=len(logs))
            logs.extend(page)
            if len(page) < 200:
                break
    guard.add(*(f"{log.name} {log.level} {log.message}" for log in logs))
    return logs


def _check_logs(logs: list[Any], task_runs: int) -> None:
    """The logs prove something: our block's lines and keyless's audit lines are there."""
    built = [log for log in logs if log.message.startswith("keyless: credentials for")]
    assert len(built) >= task_runs, [log.message for log in logs]
    assert any(log.name == "keyless.audit" for log in logs), "no keyless audit line shipped"


def test_thread_pool_tasks_each_read_their_object_as_their_task_run(
        prefect_server: PrefectServer, federation: Federation, leak_guard: LeakGuard) -> None:
    """The example flow (examples/prefect): ThreadPoolTaskRunner, one object per task."""
    block = _save_block(federation, session_name="{job_id}-{task_id}-p{pid}")
    keys = _put(federation, 3)
    results, flow_run_id = _run(read_shards, block=block, bucket=federation.aws.bucket,
                                keys=keys, endpoint_url=federation.aws.s3_url)
    flow_run_name, task_runs = _runs(flow_run_id)

    assert [r["key"] for r in results] == keys
    assert [r["size"] for r in results] == [len(f"shard {i}") for i in range(3)]
    assert {r["task_run"] for r in results} == set(task_runs.values())
    accepted = [a["session_name"] for a in federation.aws.front.accepted]
    for result in results:
        assert result["pid"] == os.getpid()  # threads of this process
        expected = sanitize_session_name(f"{flow_run_name}-{result['task_run']}-p{os.getpid()}")
        assert result["session_name"] == expected
        assert accepted.count(expected) == 1, accepted  # one STS session per task run
    reads = [f for f in federation.aws.front.forwarded if f["method"] == "GET"]
    assert {f["session_name"] for f in reads} == {r["session_name"] for r in results}
    assert all(f["status"] == 200 for f in reads)
    _check_logs(_api_logs(flow_run_id, leak_guard), task_runs=3)


def test_process_pool_tasks_build_their_own_credentials(
        prefect_server: PrefectServer, federation: Federation, leak_guard: LeakGuard) -> None:
    block = _save_block(federation, session_name="{job_id}-{task_id}-p{pid}")
    keys = _put(federation, 2)
    result, flow_run_id = _run(process_pool_flow, block=block, bucket=federation.aws.bucket,
                               keys=keys, endpoint_url=federation.aws.s3_url)
    flow_run_name, task_runs = _runs(flow_run_id)
    parent, tasks = result["parent"], result["tasks"]

    assert parent["pid"] == os.getpid() and parent["cached"] == 1  # warm before the pickle
    assert parent["session_name"] == sanitize_session_name(f"{flow_run_name}--p{os.getpid()}")
    accepted = [a["session_name"] for a in federation.aws.front.accepted]
    assert accepted.count(parent["session_name"]) == 1
    for i, task in enumerate(tasks):
        assert task["body"] == f"shard {i}"
        assert task["arrived_with"] == 0, "credentials crossed the pickle"
        assert task["pid"] != os.getpid()
        assert task_runs[task["task_run_id"]] == task["task_run"]
        assert task["session_name"] == sanitize_session_name(
            f"{flow_run_name}-{task['task_run']}-p{task['pid']}")
        assert accepted.count(task["session_name"]) == 1  # built in the child, once
        assert task["access_key"] != parent["access_key"]
    assert len({t["access_key"] for t in tasks}) == len(tasks)
    _check_logs(_api_logs(flow_run_id, leak_guard), task_runs=2)


def test_a_long_task_outlives_several_credential_lifetimes(
        prefect_server: PrefectServer, federation: Federation, leak_guard: LeakGuard) -> None:
    """8-second IdP tokens (the `shortlived` client), 4-second AWS sessions, a 20-second
    task: it keeps reading with zero failures while both roll over."""
    federation.aws.front.max_session_seconds = 4
    block = _save_block(federation, "shortlived", session_name="{job_id}-{task_id}")
    key = federation.prefix + "long.bin"
    federation.aws.put_object(federation.aws.bucket, key, "long")
    idp_before = federation.idp.token_requests()
    result, flow_run_id = _run(long_task_flow, block=block, bucket=federation.aws.bucket,
                               key=key, endpoint_url=federation.aws.s3_url, seconds=20.0)
    flow_run_name, task_runs = _runs(flow_run_id)

    assert result["failures"] == []
    assert result["reads"] > 50
    assert len(result["access_keys"]) >= 3, "expected at least three credential sets"
    assert federation.idp.token_requests() - idp_before >= 2, "the token was never refreshed"
    assert federation.aws.front.expired_uses == []
    sessions = {a["session_name"] for a in federation.aws.front.accepted}
    assert sessions == {sanitize_session_name(f"{flow_run_name}-{result['task_run']}")}
    assert result["task_run"] in task_runs.values()
    _check_logs(_api_logs(flow_run_id, leak_guard), task_runs=1)


def test_a_flow_trains_a_pytorch_model_on_shards_read_from_s3(
        prefect_server: PrefectServer, federation: Federation, leak_guard: LeakGuard) -> None:
    """The example's training flow: each shard loaded by its own task run (its own STS
    session), a linear model fitted to the rows the test wrote (a known function, so the
    weights prove the data came from S3) and its checkpoint written back by the training
    task's own session."""
    import io

    import torch

    weight, bias = [-1.0, 2.5, 0.75, -0.5], 1.25
    keys = []
    for part, text in enumerate(linear_csv_shards(weight, bias, shards=3, rows=48, seed=2)):
        keys.append(f"{federation.prefix}csv/part-{part}.csv")
        federation.aws.put_object(federation.aws.bucket, keys[-1], text)
    block = _save_block(federation, session_name="{job_id}-{task_id}")
    checkpoint = f"{federation.prefix}checkpoints/linear.pt"
    result, flow_run_id = _run(train_on_shards, block=block, bucket=federation.aws.bucket,
                               keys=keys, checkpoint=checkpoint, epochs=60,
                               endpoint_url=federation.aws.s3_url)
    flow_run_name, task_runs = _runs(flow_run_id)

    assert result["rows"] == 3 * 48 and result["loss"] < result["first_loss"] / 100, result
    state = torch.load(io.BytesIO(federation.aws.get_object(federation.aws.bucket, checkpoint)),
                       weights_only=True)
    assert torch.allclose(state["weight"].flatten(), torch.tensor(weight), atol=0.02), state
    assert abs(state["bias"].item() - bias) < 0.02, state

    sessions = {sanitize_session_name(f"{flow_run_name}-{name}") for name in task_runs.values()}
    assert len(sessions) == 4  # three loaders and the trainer, one session each
    assert result["session_name"] in sessions
    forwarded = [f for f in federation.aws.front.forwarded if f["service"] == "s3"]
    assert {f["session_name"] for f in forwarded} == sessions
    assert [f["session_name"] for f in forwarded if f["method"] == "PUT"] == \
        [result["session_name"]]
    assert all(f["status"] == 200 for f in forwarded)
    _check_logs(_api_logs(flow_run_id, leak_guard), task_runs=4)


def test_a_task_trains_with_torchrun_each_rank_as_itself(
        prefect_server: PrefectServer, federation: Federation, leak_guard: LeakGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/prefect/keyless_torchrun.py: the task starts real torchrun (2 ranks, gloo DDP)
    inside the block's worker_env(); each rank's plain boto3 gets its own session named after
    the flow run, the task run and the rank, reads only its own shard and is denied the
    other's; together they learn the test's function."""
    from examples.prefect.keyless_torchrun import train_with_torchrun

    weight, bias = [1.5, -0.5, 2.0], 0.25
    for rank, text in enumerate(linear_csv_shards(weight, bias, shards=2, rows=64, seed=3)):
        federation.aws.put_object(federation.aws.bucket,
                                  f"{federation.prefix}shards/{rank}/data.csv", text)
    for key, value in {**federation.aws.env(), "RANK": "0", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)  # RANK: a stray launcher rank, never a rank's identity
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{federation.aws.bucket}/{federation.prefix}shards/{{rank}}/*"}]}
    block = _save_block(federation, session_name="{job_id}-{task_id}-r{rank}",
                        session_policy=policy)
    reports, flow_run_id = _run(train_with_torchrun, block=block,
                                bucket=federation.aws.bucket, prefix=federation.prefix,
                                epochs=120)
    flow_run_name, task_runs = _runs(flow_run_id)
    (task_run_name,) = task_runs.values()

    names = {rank: sanitize_session_name(f"{flow_run_name}-{task_run_name}-r{rank}")
             for rank in (0, 1)}
    assert [r["rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["arn"].endswith("/" + names[report["rank"]])
        assert report["other_shard"] == "AccessDenied"
        assert report["weight"] == pytest.approx(weight, abs=0.05)
        assert report["bias"] == pytest.approx(bias, abs=0.05)
    front = federation.aws.front
    assert {a["session_name"] for a in front.accepted} == set(names.values())
    for rank, name in names.items():
        reads = {f["path"].split("/shards/")[1] for f in front.forwarded
                 if f["session_name"] == name and f["path"].endswith("/data.csv")
                 and f["status"] == 200}
        assert reads == {f"{rank}/data.csv"}
    _check_logs(_api_logs(flow_run_id, leak_guard), task_runs=1)
