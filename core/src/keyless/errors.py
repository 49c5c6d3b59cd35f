"""The keyless error hierarchy.

Every error keyless raises on purpose is a :class:`KeylessError`. Messages start with the
component that failed (``"aws-sts: ..."``, ``"source file: ..."``), carry the facts, and end
with the fix. Errors never carry a token or a secret, and they survive pickling: they cross
Ray, Prefect and multiprocessing boundaries.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "ExchangeFailed",
    "KeylessError",
    "SourceMisconfigured",
    "SourceUnavailable",
    "TokenRejected",
]


class KeylessError(Exception):
    """Root of every error keyless raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._extra_state()))

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[KeylessError], message: str, state: dict[str, Any]) -> KeylessError:
    error = cls.__new__(cls)
    KeylessError.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(KeylessError):
    """The configuration is invalid; ``field`` is the dotted path of the field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def _extra_state(self) -> dict[str, Any]:
        return {"field": self.field}


class SourceUnavailable(KeylessError):
    """A source is configured but cannot produce a token right now (network, IdP down).

    Transient: the refresher retries it with backoff.
    """


class SourceMisconfigured(KeylessError):
    """A source is present but cannot work as configured (bad path, bad credentials)."""


class ExchangeFailed(KeylessError):
    """An exchange of a subject token for cloud credentials failed.

    ``retryable`` tells whether trying again later may succeed (throttling, 5xx, timeouts).
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def _extra_state(self) -> dict[str, Any]:
        return {"retryable": self.retryable}


class TokenRejected(ExchangeFailed):
    """The receiving side refused the subject token; ``claim`` names the claim at fault.

    ``claim`` is one of ``aud``, ``sub``, ``iss``, ``exp``, ``nbf``, ``iat``, ``signature``
    or ``None`` when the receiver does not say.
    """

    def __init__(self, message: str, claim: str | None = None) -> None:
        super().__init__(message, retryable=False)
        self.claim = claim

    def _extra_state(self) -> dict[str, Any]:
        return {"retryable": False, "claim": self.claim}
