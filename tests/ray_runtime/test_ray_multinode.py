"""keyless on a Ray cluster of several nodes (issue 19): Ray's own ``ray.cluster_utils.Cluster``
(a head and worker nodes, each its own raylet and runtime-env agent with the plugin), plain
boto3 in the work (no keyless code in it), the reference IdP's short-lived client (8 s tokens:
each node's refresher calls it every few seconds while it runs).

- per-worker sessions with a job-level, a task-level and an actor-level runtime env, with 1, 2
  and 4 workers per node at once: every worker its own session name (its node and Ray worker
  id), served by the endpoint each worker process runs for itself;
- after each job: no token directory of its config left on any node and no refresher calling
  the IdP, within seconds (the agents' idle watcher; ``KEYLESS_RAY_IDLE_SECONDS=2``);
- a node added mid-job serves its work; a node removed takes its token files with it;
- no client secret or JWT in any log of any node.

All nodes run on this machine (loopback; separate network namespaces are not used here, so
this says so in its output). The cluster is this module's alone and is shut down by it (never
``ray stop``); conftest.py orders this module before the session's single-node cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from keyless.audit import redact
from keyless_ray.intake import MANIFEST_NAME
from tests.ray_runtime.conftest import (
    Federation,
    LeakGuard,
    keyless_env,
    set_node_environment,
)

pytestmark = pytest.mark.e2e

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests

IDLE_SECONDS = 2
SHORT_LIVED = "shortlived"  # the reference IdP's client with 8 s tokens


class MultiNode:
    """The running cluster, its worker nodes and its private temp dir."""

    def __init__(self, cluster: Cluster, temp_dir: Path) -> None:
        self.cluster = cluster
        self.temp_dir = temp_dir
        self.workers: list[Any] = []

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=4)
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def log_text(self) -> str:
        texts = [path.read_text(encoding="utf-8", errors="replace")
                 for path in sorted(self.temp_dir.glob("ray/session_*/logs/**/*"))
                 if path.is_file() and path.suffix in ("", ".log", ".out", ".err", ".txt")]
        return "\n".join(texts)


@pytest.fixture(scope="module")
def multinode(aws_stack: Any) -> Iterator[MultiNode]:
    temp_dir = Path(tempfile.mkdtemp(prefix="km-", dir="/tmp"))  # short: unix socket paths
    saved = dict(os.environ)
    set_node_environment(aws_stack, temp_dir, KEYLESS_RAY_IDLE_SECONDS=str(IDLE_SECONDS),
                         RAY_TMPDIR=str(temp_dir))
    print("ray multi-node: all nodes on this host's loopback (no network namespaces)")
    (temp_dir / "ray").mkdir()  # Ray's own files (the cluster address) under RAY_TMPDIR
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": str(temp_dir / "ray"), "include_dashboard": False})
    nodes = MultiNode(cluster, temp_dir)
    try:
        for _ in range(2):
            nodes.add_worker()
        yield nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp_dir, ignore_errors=True)
    time.sleep(2)  # nothing of the module may connect this process to Ray again
    assert not ray.is_initialized(), "a test left this process connected to a Ray cluster"


def _manifest_dirs(ident: str | None = None) -> list[Path]:
    """Token directories of the agents on this machine (for config ``ident``, or any)."""
    found = []
    for manifest in Path(tempfile.gettempdir()).glob(f"keyless-*/{MANIFEST_NAME}"):
        try:
            if ident is None or json.loads(manifest.read_text())["id"] == ident:
                found.append(manifest.parent)
        except (OSError, ValueError, KeyError):
            continue  # removed meanwhile
    return found


def _wait_for(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def _who_am_i(bucket: str, key: str) -> dict[str, Any]:
    """Plain boto3, as a user's task would do it: read an object, ask STS who this is."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    arn = boto3.client("sts").get_caller_identity()["Arn"]
    context = ray.get_runtime_context()
    time.sleep(1.5)  # keep this worker busy: the node starts one worker per concurrent task
    return {"body": body.decode(), "session": arn.rsplit("/", 1)[1], "pid": os.getpid(),
            "node": context.get_node_id()[:12], "worker": context.get_worker_id()[:12],
            "env": {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "KEYLESS"))}}


@ray.remote(num_cpus=1)
def who_am_i_task(bucket: str, key: str) -> dict[str, Any]:
    return _who_am_i(bucket, key)


@ray.remote(num_cpus=1)
class WhoAmI:
    def ask(self, bucket: str, key: str) -> dict[str, Any]:
        return _who_am_i(bucket, key)


def _run_job(nodes: MultiNode, federation: Federation, tmp_path: Path, level: str,
             per_node: int) -> tuple[str, list[dict[str, Any]]]:
    """One driver (a Ray job) running ``per_node`` workers at once on each worker node with a
    runtime env at ``level``; returns the config id and each worker's answer."""
    aws = federation.aws
    key = f"{federation.prefix}{level}.txt"
    aws.put_object(aws.bucket, key, level.encode())
    tag = uuid.uuid4().hex[:4]
    env = {"keyless": keyless_env(federation, tmp_path, client_id=SHORT_LIVED,
                                  session_name=f"{tag}-{{node}}-{{task_id}}")}
    ray.init(address=nodes.cluster.address, runtime_env=env if level == "job" else None,
             logging_level="WARNING", configure_logging=False)
    try:
        options: dict[str, Any] = {} if level == "job" else {"runtime_env": env}
        pending, actors = [], []
        for node in nodes.workers:
            pin = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            for _ in range(per_node):
                if level == "actor":
                    actor = WhoAmI.options(scheduling_strategy=pin,  # type: ignore[attr-defined]
                                           **options).remote()
                    actors.append(actor)
                    pending.append(actor.ask.remote(aws.bucket, key))
                else:
                    pending.append(who_am_i_task.options(scheduling_strategy=pin, **options)
                                   .remote(aws.bucket, key))
        answers = ray.get(pending, timeout=300)
        for actor in actors:
            ray.kill(actor)
        ident = answers[0]["env"]["KEYLESS_RAY"]
    finally:
        ray.shutdown()  # the job ends: Ray stops its workers
    return ident, answers


@pytest.mark.parametrize(("level", "per_node"), [("job", 1), ("task", 2), ("actor", 4)])
def test_each_worker_its_own_session_and_nothing_left_after_the_job(
        multinode: MultiNode, federation: Federation, tmp_path: Path, leak_guard: LeakGuard,
        level: str, per_node: int) -> None:
    ident, answers = _run_job(multinode, federation, tmp_path, level, per_node)
    workers = len(multinode.workers) * per_node
    assert all(a["body"] == level for a in answers)
    assert len({a["pid"] for a in answers}) == workers, "the work ran on fewer workers"
    sessions = {a["session"] for a in answers}
    assert len(sessions) == workers, f"workers shared a session: {sorted(sessions)}"
    for answer in answers:
        assert answer["session"].endswith(f"-{answer['node']}-{answer['worker']}")
        assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" in answer["env"]
        assert "AWS_WEB_IDENTITY_TOKEN_FILE" not in answer["env"]  # boto3 would try it first
    assert len({a["node"] for a in answers}) == len(multinode.workers)

    assert _wait_for(lambda: not _manifest_dirs(ident), 60), \
        f"token directories left after the job: {_manifest_dirs(ident)}"
    calls = federation.idp.token_requests()
    time.sleep(10)  # more than one token lifetime: a refresher left would have called
    assert federation.idp.token_requests() == calls, "a refresher still calls the IdP"
    leak_guard.add(json.dumps(answers))


def test_a_node_added_mid_job_serves_and_a_removed_node_takes_its_files(
        multinode: MultiNode, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    aws = federation.aws
    key = f"{federation.prefix}join.txt"
    aws.put_object(aws.bucket, key, b"join")
    env = {"keyless": keyless_env(federation, tmp_path, client_id=SHORT_LIVED,
                                  session_name="join-{node}-{task_id}")}
    ray.init(address=multinode.cluster.address, logging_level="WARNING",
             configure_logging=False)
    try:
        first = multinode.workers[0]
        holder = WhoAmI.options(  # type: ignore[attr-defined]
            runtime_env=env, scheduling_strategy=NodeAffinitySchedulingStrategy(
                first.node_id, soft=False)).remote()
        before = ray.get(holder.ask.remote(aws.bucket, key), timeout=300)
        ident = before["env"]["KEYLESS_RAY"]
        assert len(_manifest_dirs(ident)) == 1

        joined = multinode.add_worker()  # mid-job
        newcomer = WhoAmI.options(  # type: ignore[attr-defined]
            runtime_env=env, scheduling_strategy=NodeAffinitySchedulingStrategy(
                joined.node_id, soft=False)).remote()
        after = ray.get(newcomer.ask.remote(aws.bucket, key), timeout=300)
        assert after["body"] == "join" and after["node"] == joined.node_id[:12]
        assert after["session"] != before["session"]
        assert len(_manifest_dirs(ident)) == 2

        multinode.cluster.remove_node(joined)  # the node goes away with the job still on
        multinode.workers.remove(joined)
        assert _wait_for(lambda: len(_manifest_dirs(ident)) == 1, 30), \
            "the removed node's token directory is still there"
        assert ray.get(holder.ask.remote(aws.bucket, key), timeout=120)["body"] == "join"
        ray.kill(holder)
    finally:
        ray.shutdown()
    assert _wait_for(lambda: not _manifest_dirs(ident), 60)
    leak_guard.add(json.dumps([before, after]))


@ray.remote(num_cpus=0)
def data_pipeline(base: str, rounds: int, pause: float) -> list[int]:
    """A Ray Data pipeline as a user writes it (``s3://`` paths, pyarrow's own S3 client,
    nothing about credentials): write a dataset, read it back, several rounds."""
    import ray.data

    totals = []
    for round_ in range(rounds):
        data = ray.data.range(400, override_num_blocks=8).map_batches(
            lambda batch: {"id": batch["id"], "square": batch["id"] ** 2})
        data.write_parquet(f"{base}/round-{round_}")
        totals.append(int(ray.data.read_parquet(f"{base}/round-{round_}").sum("square")))
        time.sleep(pause)
    return totals


def _sessions(federation: Federation, since: int, prefix: str) -> list[str]:
    return [a["session_name"] for a in federation.aws.front.accepted[since:]
            if a["session_name"].startswith(prefix)]


def test_ray_data_reads_and_writes_s3_across_rollovers_on_several_nodes(
        multinode: MultiNode, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    aws = federation.aws
    aws.front.max_session_seconds = 4  # STS sessions roll over every few seconds
    tag = uuid.uuid4().hex[:4]
    env = {"keyless": keyless_env(federation, tmp_path, client_id=SHORT_LIVED,
                                  session_name=f"d{tag}-{{node}}-{{task_id}}")}
    since = len(aws.front.accepted)
    ray.init(address=multinode.cluster.address, runtime_env=env, logging_level="WARNING",
             configure_logging=False)
    try:
        totals = ray.get(data_pipeline.remote(
            f"s3://{aws.bucket}/{federation.prefix}data", rounds=5, pause=2.0), timeout=600)
    finally:
        ray.shutdown()
    assert totals == [sum(i * i for i in range(400))] * 5
    sessions = _sessions(federation, since, f"d{tag}-")
    nodes = {name.split("-")[1] for name in sessions}
    assert len(nodes) >= 2, f"the pipeline ran on one node only: {sorted(set(sessions))}"
    rolled = max(sessions.count(name) for name in set(sessions))
    assert rolled >= 3, f"no worker went through two rollovers ({rolled} sessions at most)"
    writes = [f for f in aws.front.forwarded if f["service"] == "s3"
              and f["session_name"].startswith(f"d{tag}-") and f["method"] == "PUT"]
    assert writes and all(f["status"] == 200 for f in writes)
    assert aws.front.expired_uses == []


@ray.remote(num_cpus=0)
def fit(trainer_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``TorchTrainer(...).fit()`` from a task with the job's runtime env (as a submitted job's
    driver would run it); returns where the last checkpoint went."""
    from ray.train.torch import TorchTrainer

    result = TorchTrainer(**trainer_kwargs).fit()
    return {"checkpoint": result.checkpoint.path if result.checkpoint else None,
            "error": repr(result.error) if result.error else None}


def checkpointing_loop(config: dict[str, Any]) -> None:
    """Train and checkpoint every step for a while: Ray Train uploads each checkpoint to the
    run's ``s3://`` storage with pyarrow, whatever the credentials did meanwhile."""
    import tempfile as temp

    import torch

    model = torch.nn.Linear(4, 1)
    for step in range(config["steps"]):
        with temp.TemporaryDirectory() as directory:
            torch.save({"step": step, "model": model.state_dict()},
                       os.path.join(directory, "model.pt"))
            ray.train.report({"step": step},
                             checkpoint=ray.train.Checkpoint.from_directory(directory))
        time.sleep(config["pause"])


def test_ray_train_checkpoints_upload_to_s3_after_rollovers(
        multinode: MultiNode, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    aws = federation.aws
    aws.front.max_session_seconds = 4
    tag = uuid.uuid4().hex[:4]
    env = {"keyless": keyless_env(federation, tmp_path, client_id=SHORT_LIVED,
                                  session_name=f"c{tag}-{{node}}-{{task_id}}")}
    since = len(aws.front.accepted)
    ray.init(address=multinode.cluster.address, runtime_env=env, logging_level="WARNING",
             configure_logging=False)
    try:
        outcome = ray.get(fit.remote({
            "train_loop_per_worker": checkpointing_loop,
            "train_loop_config": {"steps": 6, "pause": 2.0},
            "torch_config": TorchConfig(backend="gloo"),
            "scaling_config": ScalingConfig(num_workers=2, use_gpu=False,
                                            resources_per_worker={"CPU": 4}),
            "run_config": RunConfig(storage_path=f"s3://{aws.bucket}/{federation.prefix}runs",
                                    name="checkpoints")}), timeout=900)
    finally:
        ray.shutdown()
    assert outcome["error"] is None, outcome["error"]
    assert outcome["checkpoint"] and "checkpoint" in outcome["checkpoint"]
    uploads = [f for f in aws.front.forwarded if f["service"] == "s3" and f["method"] == "PUT"
               and f["session_name"].startswith(f"c{tag}-")]
    assert uploads and all(f["status"] == 200 for f in uploads), "a checkpoint upload failed"
    sessions = _sessions(federation, since, f"c{tag}-")
    late = {f["access_key_id"] for f in uploads}
    assert len(late) >= 3, f"uploads used {len(late)} credential sets: no rollover in between"
    assert len({name.split("-")[1] for name in sessions}) >= 2, "the ranks shared one node"
    assert aws.front.expired_uses == []


def rank_reads_its_shard(config: dict[str, Any]) -> None:
    """Plain boto3 in each rank: its shard, then the next rank's (denied by its policy)."""
    import boto3
    from botocore.config import Config

    rank = ray.train.get_context().get_world_rank()
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"},
                                          retries={"total_max_attempts": 1}))
    prefix = config["prefix"]
    body = s3.get_object(Bucket=config["bucket"], Key=f"{prefix}shards/{rank}/part")
    other = (rank + 1) % 4
    try:
        s3.get_object(Bucket=config["bucket"], Key=f"{prefix}shards/{other}/part")
        denied = ""
    except Exception as exc:
        denied = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    arn = boto3.client("sts").get_caller_identity()["Arn"]
    Path(config["out"], f"rank-{rank}.json").write_text(json.dumps({
        "body": body["Body"].read().decode(), "denied": denied,
        "session": arn.rsplit("/", 1)[1], "node": ray.get_runtime_context().get_node_id()}))


def test_four_ranks_on_two_nodes_each_confined_to_its_shard(
        multinode: MultiNode, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    aws = federation.aws
    for rank in range(4):
        aws.put_object(aws.bucket, f"{federation.prefix}shards/{rank}/part", f"shard-{rank}")
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{aws.bucket}/{federation.prefix}shards/{{rank}}/*"}]}
    value = keyless_env(federation, tmp_path, session_name="rk-r{rank}-{node}",
                        session_policy=policy)
    out = tmp_path / "out"
    out.mkdir()
    ray.init(address=multinode.cluster.address, logging_level="WARNING",
             configure_logging=False)
    try:  # fit in a task: Ray Train's driver side must not outlive this test in pytest
        outcome = ray.get(fit.remote({
            "train_loop_per_worker": rank_reads_its_shard,
            "train_loop_config": {"bucket": aws.bucket, "prefix": federation.prefix,
                                  "out": str(out)},
            "torch_config": TorchConfig(backend="gloo"),
            "scaling_config": ScalingConfig(num_workers=4, use_gpu=False,
                                            resources_per_worker={"CPU": 2}),
            "run_config": RunConfig(storage_path=str(tmp_path / "runs"), name="ranks",
                                    worker_runtime_env={"keyless": value})}), timeout=900)
    finally:
        ray.shutdown()
    assert outcome["error"] is None, outcome["error"]
    results = {rank: json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(4)}
    for rank, result in results.items():
        assert result["body"] == f"shard-{rank}"
        assert result["denied"] == "AccessDenied"
        assert result["session"] == f"rk-r{rank}-{result['node'][:12]}"
    assert len({r["session"] for r in results.values()}) == 4
    assert len({r["node"] for r in results.values()}) == 2


def test_no_secret_or_token_in_any_nodes_logs(multinode: MultiNode, federation: Federation,
                                              leak_guard: LeakGuard) -> None:
    logs = multinode.log_text()
    assert "keyless" in logs  # the agents logged their configs: ids and paths only
    assert redact(logs) == logs, "a JWT-shaped string is in a node's logs"
    leak_guard.add(logs)
