"""Audit: one event per issue, exchange, refresh and failure: fingerprints and claims, no tokens.

An :class:`AuditEvent` is a frozen record; :meth:`AuditEvent.to_json` renders it as one JSON line
(keys sorted, ``time`` and ``exp`` as ISO-8601 UTC). As defense in depth, every free-text field
passes through :func:`redact`, which replaces anything that looks like a JWT with
``[redacted-jwt]``: a token that slipped into an error message or a context value never reaches
a sink (:class:`AuditSink`): :mod:`keyless.audit.plain` has the ones with no extra,
:mod:`keyless.audit.sinks` MLflow, OpenTelemetry and file rotation, and
:class:`keyless.audit.log.AuditLog` fans events out to them.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..context import WorkerContext
from ..errors import KeylessError
from ..tokens import SubjectToken

__all__ = [
    "AUDIT_LOGGER",
    "AuditEvent",
    "AuditKind",
    "AuditOutcome",
    "AuditSink",
    "REDACTED_JWT",
    "redact",
]

AUDIT_LOGGER = "keyless.audit"
REDACTED_JWT = "[redacted-jwt]"

AuditKind = Literal["issue", "exchange", "refresh", "failure"]
AuditOutcome = Literal["ok", "error"]


# ----------------------------------------------------------------------------- redaction

# Three base64url segments separated by dots (the third may be empty: an unsecured JWT).
_JWT_CANDIDATE = re.compile(r"([A-Za-z0-9_-]{4,})\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
_JSON_WS = b" \t\r\n"


def _decodes_to_json_object(segment: str) -> bool:
    """True when ``segment`` base64url-decodes to text opening a JSON object: ``{`` then
    optional whitespace then ``"`` or ``}`` (a JWT header), which ordinary dotted words
    (host names, versions) do not."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return False
    if not raw.startswith(b"{"):
        return False
    rest = raw[1:].lstrip(_JSON_WS)
    return rest[:1] in (b'"', b"}")


def _header_start(segment: str) -> int | None:
    """Where a JWT header begins inside ``segment`` (it may be glued to preceding word
    characters, e.g. ``tokeneyJ...``), or None. A JSON ``{`` always encodes to ``e``."""
    start = segment.find("e")
    while start != -1:
        if _decodes_to_json_object(segment[start:]):
            return start
        start = segment.find("e", start + 1)
    return None


def _replace(match: re.Match[str]) -> str:
    offset = _header_start(match.group(1))
    if offset is None:
        return match.group(0)
    return match.group(1)[:offset] + REDACTED_JWT


def redact(text: str) -> str:
    """Replace every JWT-looking substring of ``text`` with ``[redacted-jwt]``.

    A JWT-looking substring is three base64url segments separated by dots whose first segment
    decodes to the opening of a JSON object. Use it on anything bound for a log or an audit
    sink that might, by mistake, hold a token (error text, subprocess output, context values).
    """
    if "." not in text:
        return text
    return _JWT_CANDIDATE.sub(_replace, text)


# ----------------------------------------------------------------------------- the event

def _iso(value: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds and a ``Z``; out-of-range values as their repr."""
    if value is None:
        return None
    if not math.isfinite(value):
        return repr(value)
    try:
        moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return repr(value)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean_context(context: WorkerContext | Mapping[str, object] | None) -> dict[str, str]:
    if context is None:
        return {}
    items = context.as_dict() if isinstance(context, WorkerContext) else context
    return {str(k): str(v) for k, v in items.items() if v is not None and str(v) != ""}


@dataclass(frozen=True)
class AuditEvent:
    """One audited issuance or failure.

    ``token_sha256`` is the 16-hex fingerprint (:func:`keyless.secret.fingerprint`), never the
    token. ``context`` is the worker context with empty values dropped. ``error`` is a
    :class:`~keyless.errors.KeylessError` message (secret-free by contract) or an exception
    type name. ``time`` (epoch seconds) is set by :class:`AuditLog` from its clock when 0.
    """

    kind: AuditKind
    source: str
    target: str
    outcome: AuditOutcome
    iss: str | None = None
    sub: str | None = None
    aud: tuple[str, ...] = ()
    exp: float | None = None
    token_sha256: str | None = None
    principal: str | None = None
    session_name: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    time: float = 0.0
    #: Rendered session tags asked for by the config (AWS ``target.aws.tags``), for the record.
    tags: Mapping[str, str] = field(default_factory=dict)
    #: The full rendered session name when ``session_name`` (what STS got) had to be shortened
    #: to STS's 64 characters.
    session_name_full: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "aud", tuple(str(a) for a in self.aud))
        object.__setattr__(self, "context", _clean_context(self.context))

    def to_dict(self) -> dict[str, Any]:
        """Every field, redacted, JSON-ready (``time``/``exp`` as ISO-8601 UTC strings)."""

        def text(value: str | None) -> str | None:
            return None if value is None else redact(value)

        return {
            "kind": self.kind,
            "source": redact(self.source),
            "target": redact(self.target),
            "outcome": self.outcome,
            "iss": text(self.iss),
            "sub": text(self.sub),
            "aud": [redact(a) for a in self.aud],
            "exp": _iso(self.exp),
            "token_sha256": self.token_sha256,
            "principal": text(self.principal),
            "session_name": text(self.session_name),
            "context": {redact(k): redact(v) for k, v in self.context.items()},
            "error": text(self.error),
            "error_type": self.error_type,
            "time": _iso(self.time),
            "tags": {redact(k): redact(v) for k, v in self.tags.items()},
            "session_name_full": text(self.session_name_full),
        }

    def to_json(self) -> str:
        """One JSON line, keys sorted; JWT-looking text replaced with ``[redacted-jwt]``."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)

    @classmethod
    def for_token(cls, kind: AuditKind, token: SubjectToken, *, source: str, target: str,
                  context: WorkerContext | Mapping[str, str] | None = None,
                  **extra: Any) -> AuditEvent:
        """An ``ok`` event with iss/sub/aud/exp/token_sha256 read from ``token``; ``extra``
        sets (or overrides) other fields: ``principal``, ``session_name``, ``outcome`` ..."""
        values: dict[str, Any] = {
            "outcome": "ok",
            "iss": token.issuer,
            "sub": token.subject,
            "aud": tuple(token.audience),
            "exp": token.expires_at,
            "token_sha256": token.fingerprint,
        }
        values.update(extra)
        return cls(kind=kind, source=source, target=target,
                   context=_clean_context(context), **values)

    @classmethod
    def for_failure(cls, exc: BaseException, *, source: str, target: str,
                    context: WorkerContext | Mapping[str, str] | None = None,
                    **extra: Any) -> AuditEvent:
        """A ``failure``/``error`` event. A :class:`KeylessError` contributes its message
        (secret-free by contract); any other exception only its type name, since its text
        may hold anything. Pass ``token=SubjectToken`` in ``extra`` to record its claims."""
        message = exc.message if isinstance(exc, KeylessError) else type(exc).__name__
        token = extra.pop("token", None)
        values: dict[str, Any] = {"error": message, "error_type": type(exc).__name__}
        if isinstance(token, SubjectToken):
            values.update(iss=token.issuer, sub=token.subject, aud=tuple(token.audience),
                          exp=token.expires_at, token_sha256=token.fingerprint)
        values.update(extra)
        return cls(kind="failure", source=source, target=target, outcome="error",
                   context=_clean_context(context), **values)


# ----------------------------------------------------------------------------- sinks

@runtime_checkable
class AuditSink(Protocol):
    """Where audit events go. ``emit`` may raise: :class:`AuditLog` contains it."""

    def emit(self, event: AuditEvent) -> None: ...
