"""Two torchrun nodes x two ranks (issue 16, point 3): each node is its own host (a network
namespace the test makes, joined to the other by a veth pair; plain loopback where
namespaces cannot be made, said in the output), runs its own ``keyless exec -- torchrun
--nnodes 2`` (c10d rendezvous, gloo across the link), and ranks 0-3 get four distinct
identities, each confined to its own shard."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.e2e.conftest import Federation, LeakGuard
from tests.e2e.test_torchrun import TORCHRUN, TRAIN, _environment, _shards, reaped
from tests.support.netns import Host, hosts

pytestmark = pytest.mark.e2e


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_nodes_of_two_ranks_get_four_identities(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    aws = federation.aws
    _shards(federation, 4)
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{aws.bucket}/{federation.prefix}shards/{{rank}}/*"]}]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(federation.config(
        session_name="mn-n{node}-r{rank}", session_policy=policy)))
    train = tmp_path / "train.py"
    train.write_text(TRAIN)
    out = tmp_path / "out"
    out.mkdir()
    env = _environment(federation, tmp_path)
    with hosts(2) as group, contextlib.ExitStack() as running:
        if group is None:
            print("network namespaces cannot be made here: both torchrun agents on loopback")
            nodes = [Host("", "lo", "127.0.0.1"), Host("", "lo", "127.0.0.1")]
        else:
            group.bridge(*{_port(federation.idp.token_url), _port(aws.sts_url),
                           _port(aws.s3_url)})
            nodes = group.members
        rendezvous = f"{nodes[0].address}:{_free_port()}"
        procs = []
        for index, node in enumerate(nodes):
            command = [sys.executable, "-m", "keyless", "exec", "--audit-stderr", "--config",
                       str(spec), "--",
                       TORCHRUN, "--nnodes", "2", "--nproc-per-node", "2",
                       "--rdzv-backend", "c10d", "--rdzv-endpoint", rendezvous,
                       "--rdzv-id", "keyless-nodes", "--rdzv-conf", f"is_host={int(index == 0)}",
                       "--local-addr", node.address, "--max-restarts", "0",
                       str(train), aws.bucket, federation.prefix, str(out), "4"]
            procs.append(running.enter_context(reaped(subprocess.Popen(
                node.command(*command) if node.namespace else command,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**env, "GLOO_SOCKET_IFNAME": node.interface}))))
        results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        leak_guard.add(stdout, stderr)
        assert proc.returncode == 0, stderr[-4000:]
    reports = {rank: json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(4)}
    for rank, report in reports.items():
        assert report["failures"] == [] and report["reads"] == 4
        assert report["sum"] == 10.0  # all-reduce over both nodes: 1 + 2 + 3 + 4
        assert report["denied"] == "AccessDenied"
        # {node} is the rank's torchrun group rank: ranks 0-1 on one agent, 2-3 on the other
        assert report["arn"].endswith(f"/mn-n{rank // 2}-r{rank}"), report["arn"]
    names = {report["arn"].rsplit("/", 1)[1] for report in reports.values()}
    assert len(names) == 4, names
    assert {a["session_name"] for a in aws.front.accepted} == names
    if group is not None:  # each node's ranks asked their own node's keyless
        served = [[json.loads(line)["session_name"] for line in stderr.splitlines()
                   if line.startswith("{") and '"aws-endpoint"' in line]
                  for _, stderr in results]
        assert [len(set(s)) for s in served] == [2, 2] and not set(served[0]) & set(served[1])
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(host.namespace in left for host in group.members), left
