"""When a node's refresher for a config may stop: not on Ray's reference counting alone.

Ray 2.60's agent may receive more "create" than "release" requests for an env (so
``delete_uri`` never comes), and nothing is called when the agent or its node stops. So the
node side also watches for itself:

- :func:`users_by_config` counts, per config id, the live processes of this OS user whose
  environment carries the plugin's marker (``KEYLESS_RAY=<config id>``): Ray workers started
  with the env, and whatever they started in turn (a ``torchrun``, the AWS CLI). Ray sets the
  marker before it ``exec``\\ s the worker, so ``/proc/PID/environ`` shows it for the whole
  life of the process, whatever the process does to its own ``os.environ``.
- :class:`IdlePolicy` says when a config with no such process is idle long enough to stop:
  ``idle_seconds`` after its last user was seen, and never sooner than ``startup_seconds``
  after the agent last prepared a worker for it (Ray starts the worker only after that).
- :class:`DirectoryWatchdog` removes a token directory when the agent process dies, however
  it dies (SIGKILL included): a ``sh`` child blocked on a pipe whose only writer is the agent.

``KEYLESS_RAY_IDLE_SECONDS`` (on the node, read by the agent) sets ``idle_seconds``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from keyless.delivery.peer import process_environ

from .names import MARKER_VARIABLE

__all__ = ["IDLE_VARIABLE", "DirectoryWatchdog", "IdlePolicy", "users_by_config"]

#: The node environment variable that sets :attr:`IdlePolicy.idle_seconds`.
IDLE_VARIABLE = "KEYLESS_RAY_IDLE_SECONDS"
_PROC = Path("/proc")


def users_by_config() -> Counter[str]:
    """Config id -> number of live processes of this user started with ``KEYLESS_RAY`` set to
    it (see the module docstring). Empty where ``/proc`` cannot be read."""
    users: Counter[str] = Counter()
    uid = os.getuid()
    try:
        names = [name for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return users
    for name in names:
        try:
            if (_PROC / name).stat().st_uid != uid:
                continue
        except OSError:
            continue  # gone meanwhile
        ident = (process_environ(int(name)) or {}).get(MARKER_VARIABLE)
        if ident:
            users[ident] += 1
    return users


@dataclass(frozen=True)
class IdlePolicy:
    """When a config without users may stop (module docstring)."""

    idle_seconds: float = 10.0
    startup_seconds: float = 20.0
    poll_seconds: float = 2.0

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> IdlePolicy:
        """The defaults, with ``idle_seconds`` from ``KEYLESS_RAY_IDLE_SECONDS`` when it is a
        positive number (anything else: the default)."""
        env = os.environ if environ is None else environ
        try:
            idle = float(env.get(IDLE_VARIABLE, ""))
        except ValueError:
            return cls()
        if not 0 < idle < 86_400:
            return cls()
        return cls(idle_seconds=idle, poll_seconds=min(2.0, max(idle / 4, 0.25)))

    def idle(self, now: float, last_seen: float, last_prepared: float) -> bool:
        """Whether a config whose last user was seen at ``last_seen`` and whose last worker
        was prepared at ``last_prepared`` (no user now) may stop at ``now``."""
        return now - last_seen >= self.idle_seconds \
            and now - last_prepared >= max(self.startup_seconds, self.idle_seconds)


class DirectoryWatchdog:
    """A ``sh`` child that removes ``directory`` once this process is gone (or :meth:`close`
    is called): it waits on a pipe whose write end only this process holds."""

    def __init__(self, directory: Path) -> None:
        read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                ["sh", "-c", 'read -r _ignored; rm -rf -- "$0"', str(directory)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True)
        finally:
            os.close(read_end)
        self._write_end: int | None = write_end

    def close(self) -> None:
        """Let the watchdog remove the directory now and exit (idempotent)."""
        if self._write_end is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_end)
            self._write_end = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
