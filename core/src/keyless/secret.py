"""A string that never shows itself in a repr, a str, a log line or a pickle-free dump."""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["Secret", "fingerprint"]


def fingerprint(value: str) -> str:
    """Return the first 16 hex digits of the value's sha256: safe to log and audit."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


class Secret:
    """Holds a secret string; only :meth:`reveal` gives it back.

    ``repr`` and ``str`` print a fingerprint, so two secrets can be told apart in logs
    without either being shown.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value. Call it only where the value is sent or written."""
        return self._value

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._value)

    def __repr__(self) -> str:
        return f"Secret(sha256:{self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))
