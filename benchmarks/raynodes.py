"""Ray beyond one node (issue 19): IdP calls per node-hour against workers per node, and a fresh
node's time to a worker's first credential, on Ray's own multi-node ``Cluster`` with the keyless
plugin (one refresher per config per node, each worker its own AWS session).

- **IdP calls per node-hour**: a job holds W actors on each of two worker nodes for
  ``seconds`` with short IdP tokens; the dev issuer counts the token requests. One token stream
  per node whatever W: the figure for W=4 over the one for W=1 should stay flat (target: ratio
  at most 1.5; refreshes are jittered, so a window holds a whole refresh more or less).
- **Fresh node to first credential**: a node is added, then an actor pinned to it asks STS who
  it is with plain boto3; the time from the node being up to the answer (target: under 30 s;
  mostly the worker process starting on a loaded 2-core machine).

Needs ``ray`` and ``ray-keyless`` (the ray test environment has both):
``.envs/ray/bin/python -m benchmarks.raynodes``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Row
from benchmarks.stack import Federation

__all__ = ["run"]

SECTION = "7. ray nodes"
TOKEN_SECONDS = 12.0


def _runtime_env(fed: Federation, directory: Path, tag: str) -> dict[str, Any]:
    """The keyless value for a runtime env: the IdP secret stays in a 0600 file on the node."""
    secret_config = directory / f"idp-{tag}.yaml"
    secret_config.write_text(yaml.safe_dump(fed.config()))
    secret_config.chmod(0o600)
    value = fed.config()
    value["source"] = {"type": "command", "timeout_seconds": 60, "command": [
        sys.executable, "-m", "keyless", "token", "--config", str(secret_config), "--raw"]}
    value["target"]["aws"]["session_name"] = f"{tag}-{{node}}-{{task_id}}"
    return {"keyless": value}


def _who_am_i() -> str:
    """Plain boto3 in a worker, as a user's task does it: STS's view of this worker."""
    import boto3

    return str(boto3.client("sts").get_caller_identity()["Arn"])


class _Holder:
    """An actor that keeps its worker process (and so the node's refresher) busy."""

    def who(self) -> str:
        return _who_am_i()


def _hold(env: dict[str, Any], nodes: list[Any], per_node: int, seconds: float) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    holder = ray.remote(num_cpus=1)(_Holder)
    actors = [holder.options(runtime_env=env, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node.node_id, soft=False)).remote() for node in nodes for _ in range(per_node)]
    ray.get([actor.who.remote() for actor in actors], timeout=600)
    time.sleep(seconds)
    for actor in actors:
        ray.kill(actor)


def run(*, seconds: float = 30.0) -> list[Row]:
    """Measure both figures on a head and two worker nodes (see the module docstring)."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from keyless_ray import PLUGIN_SPEC

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import it
    rows: list[Row] = []
    saved = dict(os.environ)
    with Federation(token_seconds=TOKEN_SECONDS) as fed, \
            tempfile.TemporaryDirectory(prefix="kb-", dir="/tmp") as temp:
        directory = Path(temp)
        (directory / "ray").mkdir()
        os.environ.update(fed.aws.env())
        os.environ.update({"RAY_RUNTIME_ENV_PLUGINS": PLUGIN_SPEC, "RAY_TMPDIR": temp,
                           "RAY_USAGE_STATS_ENABLED": "0", "KEYLESS_RAY_IDLE_SECONDS": "3"})
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": str(directory / "ray"), "include_dashboard": False})
        try:
            workers = [cluster.add_node(num_cpus=4) for _ in range(2)]
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level="WARNING", configure_logging=False)
            per_hour: dict[int, float] = {}
            for per_node in (1, 4):
                env = _runtime_env(fed, directory, f"w{per_node}")
                before = fed.issuer.token_requests()
                started = time.monotonic()
                _hold(env, workers, per_node, seconds)
                elapsed = time.monotonic() - started
                calls = fed.issuer.token_requests() - before
                per_hour[per_node] = calls / len(workers) / (elapsed / 3600)
            ratio = per_hour[4] / per_hour[1]
            rows.append(Row(SECTION, "IdP calls per node-hour, 4 vs 1 workers per node "
                            f"({TOKEN_SECONDS:.0f} s tokens)", per_hour[4], per_hour[1],
                            "calls/node-h", ratio, "ratio <= 1.5 (one stream per node)",
                            ratio <= 1.5))

            env = _runtime_env(fed, directory, "fresh")
            fresh = cluster.add_node(num_cpus=4)
            cluster.wait_for_nodes()
            up = time.monotonic()

            pin = NodeAffinitySchedulingStrategy(fresh.node_id, soft=False)
            task = ray.remote(num_cpus=1)(_who_am_i)
            ray.get(task.options(runtime_env=env, scheduling_strategy=pin).remote(),
                    timeout=600)
            first = time.monotonic() - up
            rows.append(Row(SECTION, "fresh node: up to a worker's first credential",
                            first, None, "s", None, "< 30 s", first < 30.0))
        finally:
            ray.shutdown()
            cluster.shutdown()
            os.environ.clear()
            os.environ.update(saved)
    return rows


if __name__ == "__main__":
    from benchmarks import report

    print(report.markdown(run(), 0.0))
