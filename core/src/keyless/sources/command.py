"""A command that prints a token: ``spec.command`` is run (argv, no shell) on every fetch.

Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``; when one is
known the child gets it as ``$KEYLESS_AUDIENCE`` (on top of the injected ``environ``, default
``os.environ``). Stdout is a JWT, or a JSON object whose ``id_token``, ``access_token``,
``token`` or ``value`` (the first present, in that order) is the JWT.

- the program cannot be started -> :class:`SourceMisconfigured`;
- non-zero exit -> :class:`SourceMisconfigured` with the exit code and the last line of stderr
  when it does not look like a token (stdout is never echoed);
- no exit within ``spec.timeout_seconds`` -> the child is killed, :class:`SourceUnavailable`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import PurePath

from ..config import CommandSource
from ..errors import SourceMisconfigured, SourceUnavailable
from ..http import looks_like_token
from ..tokens import SubjectToken

__all__ = ["AUDIENCE_VARIABLE", "CommandTokenSource"]

AUDIENCE_VARIABLE = "KEYLESS_AUDIENCE"
_JSON_FIELDS = ("id_token", "access_token", "token", "value")
_MAX_STDERR_LINE = 200


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
            done = subprocess.run(self.spec.command, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=self.spec.timeout_seconds,
                                  check=False, shell=False)
        except subprocess.TimeoutExpired:
            raise SourceUnavailable(
                f"{component}: no exit within {self.spec.timeout_seconds:g} s, killed; "
                "retried with backoff; if it persists raise timeout_seconds") from None
        except OSError as exc:
            raise SourceMisconfigured(
                f"{component}: cannot run it ({type(exc).__name__}: "
                f"{exc.strerror or 'error'}); fix: give an executable's path as command[0]"
            ) from None
        if done.returncode != 0:
            hint = _last_stderr_line(done.stderr)
            said = f"; it said: {hint!r}" if hint else ""
            raise SourceMisconfigured(
                f"{component}: exited with status {done.returncode}{said}; fix: run the "
                "command by hand and fix what it reports")
        out = done.stdout.decode("utf-8", errors="replace").strip()
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


def _last_stderr_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    last = lines[-1]
    if looks_like_token(last):
        return ""
    return last[:_MAX_STDERR_LINE]
