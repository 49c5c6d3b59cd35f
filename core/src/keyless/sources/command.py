"""A command that prints a token: ``spec.command`` is run (argv, no shell) on every fetch.

Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``; when one is
known the child gets it as ``$KEYLESS_AUDIENCE`` (on top of the injected ``environ``, default
``os.environ``). Stdout is a JWT, or a JSON object whose ``id_token``, ``access_token``,
``token`` or ``value`` (the first present, in that order) is the JWT.

- the program cannot be started -> :class:`SourceMisconfigured`;
- more than :data:`~keyless.tokens.MAX_TOKEN_BYTES` on stdout -> the child is killed at once,
  :class:`SourceMisconfigured` (stdout is read in chunks: memory stays bounded; stderr is
  drained, keeping only its tail);
- non-zero exit -> :class:`SourceMisconfigured` with the exit status and a bounded, scrubbed
  hint from the last line of stderr (:func:`stderr_hint`: cut at the first word naming a secret
  and at the first ``=``; stdout is never echoed); the fix says to run the command by hand;
- no exit within ``spec.timeout_seconds`` -> the child is killed, :class:`SourceUnavailable`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import IO

from ..config import CommandSource
from ..errors import SourceMisconfigured, SourceUnavailable
from ..http import scrub
from ..tokens import MAX_TOKEN_BYTES, SubjectToken

__all__ = ["AUDIENCE_VARIABLE", "CommandTokenSource", "stderr_hint"]

AUDIENCE_VARIABLE = "KEYLESS_AUDIENCE"
_JSON_FIELDS = ("id_token", "access_token", "token", "value")
_MAX_HINT = 120
_STDERR_TAIL = 64 * 1024
_CHUNK = 64 * 1024
#: Words after which a line may carry a secret ("password hunter2", "api_key: x", "Bearer x").
_SECRET_WORD = re.compile(
    r"(?i)passwords?|passwd|passphrase|pass|pwd|secrets?|tokens?|api[_-]?keys?|keys?"
    r"|credentials?|creds?|authorization|auth|bearer|cookies?|sessions?|signature"
    r"|\bpw\b|\bpin\b|\botp\b|\bpat\b")


class CommandTokenSource:
    """Runs the command on every fetch and reads the token from its stdout."""

    name = "command"

    def __init__(self, spec: CommandSource, *, environ: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self._environ = environ

    @property
    def program(self) -> str:
        """The program's base name: what messages show (arguments may hold secrets)."""
        return PurePath(self.spec.command[0]).name

    def fetch(self, audience: str | None) -> SubjectToken | None:
        environ = self._environ if self._environ is not None else os.environ
        env = dict(environ)
        wanted = audience or self.spec.audience
        if wanted:
            env[AUDIENCE_VARIABLE] = wanted
        component = f"source command {self.program!r}"
        try:
            child = subprocess.Popen(self.spec.command, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     shell=False)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument
            raise SourceMisconfigured(
                f"{component}: cannot run it ({type(exc).__name__}: "
                f"{getattr(exc, 'strerror', None) or 'error'}); fix: give an executable's path "
                "as command[0]") from None
        stdout = _Drain(child.stdout, MAX_TOKEN_BYTES, on_overflow=child.kill)
        stderr = _Drain(child.stderr, _STDERR_TAIL, tail=True)
        returncode = _wait(child, (stdout, stderr), self.spec.timeout_seconds)
        if stdout.overflowed:
            raise SourceMisconfigured(
                f"{component}: printed more than {MAX_TOKEN_BYTES} bytes on stdout (the limit "
                "for a token), killed; fix: make it print only a JWT or JSON with one of "
                f"{', '.join(_JSON_FIELDS)}")
        if returncode is None:
            raise SourceUnavailable(
                f"{component}: no exit within {self.spec.timeout_seconds:g} s, killed; "
                "retried with backoff; if it persists raise timeout_seconds")
        if returncode != 0:
            hint = stderr_hint(bytes(stderr.data))
            said = f"; its last stderr line, scrubbed: {hint!r}" if hint else ""
            raise SourceMisconfigured(
                f"{component}: exited with status {returncode}{said}; fix: run the command "
                "by hand to see its full output and fix what it reports")
        out = bytes(stdout.data).decode("utf-8", errors="replace").strip()
        if not out:
            raise SourceMisconfigured(
                f"{component}: printed nothing on stdout; fix: make it print a JWT or JSON "
                f"with one of {', '.join(_JSON_FIELDS)}")
        raw = _token_in(out, component)
        return SubjectToken.from_jwt(raw, origin=f"command:{self.program}")

    def __repr__(self) -> str:
        return (f"CommandTokenSource(program={self.program!r}, "
                f"timeout_seconds={self.spec.timeout_seconds:g})")


def _token_in(out: str, component: str) -> str:
    if not out.startswith("{"):
        return out
    try:
        body = json.loads(out)
    except json.JSONDecodeError:
        raise SourceMisconfigured(
            f"{component}: stdout starts with '{{' but is not valid JSON; fix: print a JWT or "
            "one JSON object") from None
    if isinstance(body, dict):
        for field in _JSON_FIELDS:
            value = body.get(field)
            if isinstance(value, str) and value:
                return value
    raise SourceMisconfigured(
        f"{component}: its JSON has none of {', '.join(_JSON_FIELDS)} as a string; fix: "
        "print a JWT or JSON with one of those fields")


class _Drain:
    """Reads one of a child's pipes to its end on a daemon thread, holding at most ``limit``
    bytes in :attr:`data`: the first ones (past them :attr:`overflowed` is set, ``on_overflow``
    called and reading stops) or, with ``tail=True``, the last ones. The pipe is closed at
    the end, so a child still writing gets EPIPE instead of blocking."""

    def __init__(self, pipe: IO[bytes] | None, limit: int, *, tail: bool = False,
                 on_overflow: Callable[[], None] | None = None) -> None:
        self.data = bytearray()
        self.overflowed = False
        self._limit = limit
        self._tail = tail
        self._on_overflow = on_overflow
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True,
                                       name="keyless-command-output")
        self.thread.start()

    def _run(self, pipe: IO[bytes] | None) -> None:
        if pipe is None:
            return
        with pipe:
            while chunk := os.read(pipe.fileno(), _CHUNK):
                self.data += chunk
                if len(self.data) <= self._limit:
                    continue
                if self._tail:
                    del self.data[:len(self.data) - self._limit]
                    continue
                self.overflowed = True
                del self.data[self._limit:]
                if self._on_overflow is not None:
                    self._on_overflow()
                return


def _wait(child: subprocess.Popen[bytes], drains: tuple[_Drain, ...],
          timeout: float) -> int | None:
    """The child's exit status once it has exited and its output has ended, or None (the
    child killed) when that takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        returncode = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return None
    for drain in drains:  # a background process may hold a pipe open past the exit
        drain.thread.join(max(deadline - time.monotonic(), 0.0))
        if drain.thread.is_alive():
            return None
    return returncode


def stderr_hint(stderr: bytes) -> str:
    """What a message may quote of a failing command's stderr: its last non-empty line, cut
    after the first word naming a secret (password, token, key, auth, pw, pin, otp ...:
    "password x", "api_key: x", "Bearer x", "pw: x") and after the first ``=`` ("x=y"), the
    rest replaced by ``[redacted]``, scrubbed of token-like runs (:func:`keyless.http.scrub`),
    at most 120 characters; "" when there is no such line."""
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    last = lines[-1]
    cuts = [len(last)]
    word = _SECRET_WORD.search(last)
    if word is not None:
        cuts.append(word.end())
    if "=" in last:
        cuts.append(last.index("=") + 1)
    cut = min(cuts)
    if cut < len(last):
        last = last[:cut] + ("" if last[cut - 1] == "=" else " ") + "[redacted]"
    hint = scrub(last)
    return hint if len(hint) <= _MAX_HINT else hint[:_MAX_HINT - 3] + "..."
