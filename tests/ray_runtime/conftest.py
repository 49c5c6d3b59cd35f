"""A local Ray 2.60 cluster with the keyless plugin registered, for the whole test session.

``ray_cluster`` starts one in-process cluster (``ray.init``) with ``RAY_RUNTIME_ENV_PLUGINS``
and ``RAY_RUNTIME_ENV_PLUGIN_SCHEMAS`` set in the environment first (the runtime-env agent
inherits them), a private temp dir for its sessions and logs, and the dashboard (with its job
server, for ``ray job submit``) on a free loopback port: ``RayCluster.dashboard_address``. It is
stopped with ``ray.shutdown()`` (never ``ray stop``: that would kill every cluster on the machine).

``keyless_env(federation, tmp_path, ...)`` builds a ``runtime_env["keyless"]`` value the way a
cluster should: the IdP client secret stays in a 0600 file on the node and the source is a
``command`` running ``python -m keyless token --config FILE --raw``; nothing secret is in the
runtime env Ray logs.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyless_ray import PLUGIN_SPEC, write_schema
from tests.e2e.conftest import Federation, LeakGuard, federation, leak_guard  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


class RayCluster:
    """The running cluster: its temp dir (sessions, logs) and its job server's address."""

    def __init__(self, temp_dir: Path, dashboard_address: str) -> None:
        self.temp_dir = temp_dir
        self.dashboard_address = dashboard_address

    def log_text(self) -> str:
        """Everything Ray wrote under its sessions' log directories."""
        texts: list[str] = []
        for path in sorted(self.temp_dir.glob("session_*/logs/**/*")):
            if path.is_file() and path.suffix in ("", ".log", ".out", ".err", ".txt"):
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(texts)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run test_ray_quickstart.py first, then test_ray_multinode.py: each starts its own Ray
    cluster (the quickstart as the docs tell a new user to, the other a multi-node
    ``Cluster``), which must be gone before the session's ``ray_cluster`` starts; one Ray
    cluster at a time on this machine. The sort is stable: every other test keeps its place."""
    first = {"test_ray_quickstart.py": 0, "test_ray_multinode.py": 1}  # own clusters
    items.sort(key=lambda item: first.get(item.path.name, 2))


def set_node_environment(aws_stack: Any, temp_dir: Path, **extra: str) -> None:
    """Put into ``os.environ`` (inherited by every Ray process started after) what a node
    needs: the plugin registered with its schema, the test AWS endpoints, the repository on
    ``PYTHONPATH`` and no static AWS key; plus ``extra``. The caller restores os.environ."""
    schema = write_schema(temp_dir / "keyless.json")
    os.environ.update(aws_stack.env())
    os.environ.update({
        "RAY_RUNTIME_ENV_PLUGINS": PLUGIN_SPEC,
        "RAY_RUNTIME_ENV_PLUGIN_SCHEMAS": str(schema),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TRAIN_ENABLE_STATE_TRACKING": "0",
        **extra,
    })
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def ray_cluster(aws_stack: Any) -> Iterator[RayCluster]:
    import ray

    temp_dir = Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp"))  # short: unix socket paths
    saved = dict(os.environ)
    set_node_environment(aws_stack, temp_dir)
    if ray.is_initialized():  # an earlier module's Ray library state (Train, Data) reconnected
        ray.shutdown()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=port, _temp_dir=str(temp_dir),
                       logging_level="WARNING", configure_logging=False)
    try:
        yield RayCluster(temp_dir, f"http://{context.dashboard_url}")
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp_dir, ignore_errors=True)


def keyless_env(federation: Federation, tmp_path: Path,  # noqa: F811
                client_id: str = "trainer", **aws: Any) -> dict[str, Any]:
    """A runtime_env["keyless"] value with no secret in it (see the module docstring)."""
    full = federation.config(client_id, **aws)
    idp_file = tmp_path / f"idp-{client_id}.yaml"
    idp_file.write_text(yaml.safe_dump(full))
    idp_file.chmod(0o600)
    value = dict(full)
    value["source"] = {"type": "command", "timeout_seconds": 60,
                       "command": [sys.executable, "-m", "keyless", "token", "--config",
                                   str(idp_file), "--raw"]}
    return value


__all__ = ["Federation", "LeakGuard", "RayCluster", "keyless_env", "set_node_environment"]
