"""The one audited call every exchange goes through.

:meth:`ExchangeAudit.call` runs a vendor SDK's exchange (botocore's web-identity fetcher,
google-auth's STS refresh, azure-identity, databricks-sdk, an RFC 8693 POST); a failure is
translated into keyless's typed error (:mod:`keyless.errors`: the vendor's text scrubbed, the
claim at fault and the fix named), audited as a ``failure`` event with the subject token's
claims, and raised in place of the vendor's exception. :meth:`ExchangeAudit.exchanged` audits
a success. Events carry claims and fingerprints, never a token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..audit import AuditEvent, AuditKind, AuditLog
from ..context import WorkerContext
from ..tokens import SubjectToken

__all__ = ["ExchangeAudit"]

T = TypeVar("T")


def _unchanged(exc: Exception) -> BaseException:
    return exc


@dataclass(frozen=True)
class ExchangeAudit:
    """Audits one target's exchanges for one worker (``target`` is the event's target name)."""

    audit: AuditLog
    source: str
    target: str
    context: WorkerContext

    def call(self, run: Callable[[], T], *,
             translate: Callable[[Exception], BaseException] = _unchanged,
             token: Callable[[], SubjectToken | None] = lambda: None, **fields: Any) -> T:
        """``run()``'s result; on failure, ``translate(exc)`` is audited (with ``token()``'s
        claims and ``fields``: principal, session names, tags) and raised instead of ``exc``."""
        try:
            return run()
        except Exception as exc:
            error = translate(exc)
            self.audit.emit(AuditEvent.for_failure(
                error, source=self.source, target=self.target, context=self.context.as_dict(),
                token=token(), **fields))
            if error is exc:
                raise
            raise error from None

    def exchanged(self, token: SubjectToken | None, kind: AuditKind = "exchange",
                  **fields: Any) -> None:
        """Audit one successful exchange of ``token`` (nothing when there is no token);
        ``kind="refresh"`` for a vendor refresh that reused the last subject token."""
        if token is not None:
            self.audit.emit(AuditEvent.for_token(
                kind, token, source=self.source, target=self.target,
                context=self.context.as_dict(), **fields))
