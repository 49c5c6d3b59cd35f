"""keyless.delivery.peer and keyless.delivery.launch on real processes: which local process
holds the other end of a loopback connection, its environment and ancestry, and who a Launch
serves."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus

import pytest

from keyless.context import WorkerContext
from keyless.delivery.launch import LAUNCH_VARIABLE, CallerRefused, Launch
from keyless.delivery.peer import ancestors, find_peer, peer_support, process_environ

pytestmark = pytest.mark.skipif(peer_support() is not None, reason=str(peer_support()))

CLIENT = r"""
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdin.read()  # hold the connection until the test is done with it
"""


@contextlib.contextmanager
def _connected_child(server: socket.socket, env: dict[str, str] | None = None,
                     ) -> Iterator[tuple[subprocess.Popen[str], socket.socket, tuple[str, int]]]:
    """A child process holding a connection to ``server``: (child, our end, its address)."""
    child = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.getsockname()[1])],
                             stdin=subprocess.PIPE, text=True, env=env)
    conn, address = server.accept()
    try:
        yield child, conn, address
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
        conn.close()


@pytest.fixture
def server() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_the_peer_is_the_child_process_that_connected(server: socket.socket) -> None:
    with _connected_child(server, {**os.environ, "RANK": "5"}) as (child, conn, address):
        peer = find_peer(address, conn.getsockname())
        assert peer is not None and peer.pid == child.pid and peer.uid == os.getuid()
        environ = process_environ(child.pid)
        assert environ is not None and environ["RANK"] == "5"
        assert os.getpid() in set(ancestors(child.pid))


def test_a_finished_connection_has_no_peer(server: socket.socket) -> None:
    assert find_peer(("127.0.0.1", 1), server.getsockname()) is None
    assert process_environ(2**22 + 7) is None


def test_a_launch_serves_its_own_processes_as_themselves(server: socket.socket) -> None:
    launch = Launch()
    base = WorkerContext(job_id="job", rank="0", pid="1")
    marked = {**os.environ, **launch.environment(), "RANK": "3", "LOCAL_RANK": "1"}
    with _connected_child(server, marked) as (child, conn, address):
        context = launch.caller(address, conn.getsockname(), base)
        assert (context.job_id, context.rank, context.local_rank) == ("job", "3", "1")
        launch.started(os.getpid())  # the child descends from this process: still served
        assert launch.caller(address, conn.getsockname(), base).rank == "3"
        launch.started(child.pid + 10**6)  # a root the child does not descend from
        with pytest.raises(CallerRefused) as refused:
            launch.caller(address, conn.getsockname(), base)
        assert refused.value.status == HTTPStatus.FORBIDDEN
        assert "does not descend" in refused.value.message


def test_a_process_outside_the_launch_is_refused(server: socket.socket) -> None:
    launch = Launch()
    outsider = {k: v for k, v in os.environ.items() if k != LAUNCH_VARIABLE}
    marked = {**outsider, LAUNCH_VARIABLE: "other"}
    with _connected_child(server, marked) as (_child, conn, address):
        with pytest.raises(CallerRefused) as refused:
            launch.caller(address, conn.getsockname(), WorkerContext())
        assert refused.value.status == HTTPStatus.FORBIDDEN
        assert "not part of this launch" in refused.value.message
        # serve-credentials: no launch id, any process of this user
        assert Launch(launch_id=None).caller(address, conn.getsockname(),
                                             WorkerContext()).rank == ""
        with pytest.raises(CallerRefused) as other_user:
            Launch(launch_id=None, uid=os.getuid() + 1).caller(
                address, conn.getsockname(), WorkerContext())
        assert "uid" in other_user.value.message
