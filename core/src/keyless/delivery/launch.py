"""Who may ask a loopback endpoint for credentials, and as which worker.

A :class:`Launch` is the set of processes keyless started a command for (``keyless exec --
torchrun ...``, a host's ``worker_env()``): every process of it carries the launch's id in its
environment (:data:`LAUNCH_VARIABLE`, an id, not a secret: the endpoint's token file is the
secret) and, where keyless started the command itself, descends from it. For each connection
:meth:`Launch.caller` finds the calling process (:mod:`.peer`) and accepts it only if it
is of this OS user and of this launch; its worker context is then built from its own
environment (:meth:`keyless.WorkerContext.for_process`), so each rank that ``torchrun`` started
gets its own identity, and a per-rank template is never rendered with the launcher's rank.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus

from ..context import WorkerContext
from .peer import ancestors, find_peer, peer_support, process_environ

__all__ = ["LAUNCH_VARIABLE", "CallerRefused", "Launch"]

#: The variable that marks a process as part of a launch (its value: the launch id).
LAUNCH_VARIABLE = "KEYLESS_LAUNCH_ID"


class CallerRefused(Exception):
    """A connection whose process may not have credentials: ``status`` (401/403/500) and a
    message for the caller and the log (pids and fields, never a value of the caller's)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Launch:
    """The processes allowed to ask, and how each one's context is found.

    ``launch_id`` (default: a new random id) must be in a caller's environment as
    :data:`LAUNCH_VARIABLE`, unless it is None (``keyless serve-credentials``: any process of
    this user). ``root_pid``, once set (:meth:`started`), must be the caller or one of its
    ancestors. ``uid`` is the OS user a caller must run as (default: this process's).
    """

    launch_id: str | None = field(default_factory=lambda: secrets.token_hex(8))
    root_pid: int | None = None
    uid: int = field(default_factory=os.getuid)
    _started: threading.Event = field(default_factory=threading.Event, repr=False)
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=32), repr=False)
    expect_root: bool = False

    def environment(self) -> dict[str, str]:
        """The variables a launched command gets (the launch id; nothing secret)."""
        return {} if self.launch_id is None else {LAUNCH_VARIABLE: self.launch_id}

    def started(self, pid: int) -> None:
        """Record the pid of the command keyless started: callers must descend from it."""
        self.root_pid = pid
        self._started.set()

    def caller(self, client: tuple[str, int], server: tuple[str, int],
               base: WorkerContext) -> WorkerContext:
        """The calling process's worker context, or :class:`CallerRefused`."""
        unsupported = peer_support()
        if unsupported is not None:
            raise CallerRefused(HTTPStatus.INTERNAL_SERVER_ERROR,
                                f"cannot tell which process is calling: {unsupported}; fix: "
                                "give each worker its own keyless (keyless exec inside the "
                                "launcher: torchrun --no-python keyless exec ...)")
        if self.expect_root:
            self._started.wait(10.0)
        peer = find_peer(client, server, candidates=tuple(self._recent))
        if peer is None:
            raise CallerRefused(HTTPStatus.FORBIDDEN, "cannot find the calling process")
        if peer.uid != self.uid:
            raise CallerRefused(HTTPStatus.FORBIDDEN,
                                f"the calling process runs as uid {peer.uid}, not {self.uid}; "
                                "credentials are served to this user's launch only")
        environ = process_environ(peer.pid) if peer.pid else None
        if environ is None:
            raise CallerRefused(HTTPStatus.FORBIDDEN,
                                "cannot read the calling process's environment")
        if self.launch_id is not None and environ.get(LAUNCH_VARIABLE) != self.launch_id:
            raise CallerRefused(HTTPStatus.FORBIDDEN,
                                f"process {peer.pid} is not part of this launch (no matching "
                                f"{LAUNCH_VARIABLE}); fix: start it under the keyless exec or "
                                "worker_env() that serves this endpoint")
        if self.root_pid is not None and peer.pid != self.root_pid \
                and self.root_pid not in ancestors(peer.pid):
            raise CallerRefused(HTTPStatus.FORBIDDEN,
                                f"process {peer.pid} does not descend from the launched "
                                f"command (pid {self.root_pid})")
        if peer.pid not in self._recent:
            self._recent.append(peer.pid)
        return base.for_process(environ)
