"""A JWT in an environment variable set by the platform (never by keyless).

The variable is read at fetch time from the injected ``environ`` (default: ``os.environ``).
Audience: the token's ``aud`` is whatever the platform minted; the requested audience is
ignored. A missing or empty variable -> :class:`SourceMisconfigured` naming the variable
(never its value).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import EnvSource
from ..errors import SourceMisconfigured
from ..tokens import SubjectToken

__all__ = ["EnvTokenSource"]


class EnvTokenSource:
    """Reads the JWT in ``$spec.variable`` on every fetch."""

    name = "env"

    def __init__(self, spec: EnvSource, *, environ: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self._environ = environ

    def fetch(self, audience: str | None) -> SubjectToken | None:
        """Read the variable now; the requested ``audience`` is ignored."""
        environ = self._environ if self._environ is not None else os.environ
        raw = environ.get(self.spec.variable, "").strip()
        if not raw:
            raise SourceMisconfigured(
                f"source env: ${self.spec.variable} is not set or empty; fix: have the "
                "platform set it, or use a `file` source for a token file")
        return SubjectToken.from_jwt(raw, origin=f"env:{self.spec.variable}")

    def __repr__(self) -> str:
        return f"EnvTokenSource(variable={self.spec.variable!r})"
