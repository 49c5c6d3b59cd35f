"""What every command that runs an identity does first: build it from ``--config`` (with
``--audit-stderr``, its audit events also printed on stderr) and get its first credentials,
trying again with backoff while the failure is transient.

A transient failure is a :class:`~keyless.errors.SourceUnavailable` (the IdP or the token
service unreachable, timing out, answering 429/5xx) or an
:class:`~keyless.errors.ExchangeFailed` with ``retryable=True``. Such an error's message says
"transient, retried with backoff"; at startup that is what happens: :data:`STARTUP_ATTEMPTS`
attempts in all, waiting between them the refresh policy's backoff cap for that many failures
(``refresh.initial_backoff_seconds`` doubled per failure, at most
:data:`MAX_STARTUP_WAIT_SECONDS`): 1, 2 and 4 s with the default policy. Each failure is a
warning on stderr naming it and the wait (``-q`` hides it); when
the last attempt fails too, one line says that it gave up after how many attempts, then the
error is raised. Any other error is raised at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import ExchangeFailed, KeylessError, SourceUnavailable
from ..identity import Keyless

__all__ = ["MAX_STARTUP_WAIT_SECONDS", "STARTUP_ATTEMPTS", "is_transient", "load_identity",
           "with_startup_retries"]

T = TypeVar("T")

#: Attempts in all at getting a command's first credentials through transient failures.
STARTUP_ATTEMPTS = 4
#: The longest wait between two startup attempts, whatever the refresh policy says.
MAX_STARTUP_WAIT_SECONDS = 30.0

_log = logging.getLogger("keyless")


def load_identity(args: argparse.Namespace) -> Keyless:
    """The :class:`Keyless` of ``args.config``. With ``args.audit_stderr`` (and not
    ``args.quiet``), its audit log has a ``log`` sink even when ``audit.sinks`` names none, so
    that every event reaches stderr as well as the configured sinks."""
    identity = Keyless(args.config)
    wanted = getattr(args, "audit_stderr", False) and not getattr(args, "quiet", False)
    if wanted and "log" not in identity.config.audit.sinks:
        from ..audit import AuditLog, LogSink

        sinks = AuditLog.from_spec(identity.config.audit, clock=identity.clock).sinks
        identity = Keyless(identity.config, audit=AuditLog([*sinks, LogSink()],
                                                           clock=identity.clock))
    return identity


def is_transient(error: KeylessError) -> bool:
    """Whether trying ``error``'s step again later may succeed."""
    return isinstance(error, SourceUnavailable) or (
        isinstance(error, ExchangeFailed) and error.retryable)


def with_startup_retries(identity: Keyless, command: str, step: Callable[[], T], *,
                         attempts: int = STARTUP_ATTEMPTS,
                         sleep: Callable[[float], None] = time.sleep) -> T:
    """``step()``, tried again after a transient failure as the module docstring says;
    ``command`` names the command in the notes (``"keyless exec"``). ``step`` must leave
    nothing behind when it raises."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except KeylessError as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                print(f"{command}: gave up after {attempts} attempts (the failure below was "
                      "transient each time); fix: run it again once the service answers",
                      file=sys.stderr)
                raise
            wait = min(identity.policy.backoff_cap(attempt), MAX_STARTUP_WAIT_SECONDS)
            _log.warning("%s: attempt %d of %d failed (%s, transient): %s; trying again in "
                         "%.1f s", command, attempt, attempts, type(exc).__name__, exc.message,
                         wait)
            sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")
