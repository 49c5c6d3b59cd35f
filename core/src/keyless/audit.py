"""Audit: one event per issue, exchange, refresh and failure: fingerprints and claims, no tokens.

An :class:`AuditEvent` is a frozen record; :meth:`AuditEvent.to_json` renders it as one JSON line
(keys sorted, ``time`` and ``exp`` as ISO-8601 UTC). As defense in depth, every free-text field
passes through :func:`redact`, which replaces anything that looks like a JWT with
``[redacted-jwt]``: a token that slipped into an error message or a context value never reaches
a sink. :class:`AuditLog` fans events out to sinks (:class:`LogSink` on the ``keyless.audit``
logger, :class:`JsonlSink` to a 0600 file, :class:`MemorySink` for tests and demos); its
``emit`` never raises.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from .clock import Clock, SystemClock
from .config import AuditSpec
from .context import WorkerContext
from .errors import KeylessError
from .tokens import SubjectToken

__all__ = [
    "AUDIT_LOGGER",
    "AuditEvent",
    "AuditKind",
    "AuditLog",
    "AuditSink",
    "JsonlSink",
    "LogSink",
    "MemorySink",
    "REDACTED_JWT",
    "redact",
]

AUDIT_LOGGER = "keyless.audit"
REDACTED_JWT = "[redacted-jwt]"

AuditKind = Literal["issue", "exchange", "refresh", "failure"]
AuditOutcome = Literal["ok", "error"]

_log = logging.getLogger("keyless")

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


class LogSink:
    """Events as JSON lines on the ``keyless.audit`` logger at INFO."""

    def __init__(self, logger_name: str = AUDIT_LOGGER) -> None:
        self.logger_name = logger_name

    def emit(self, event: AuditEvent) -> None:
        logging.getLogger(self.logger_name).info("%s", event.to_json())

    def __repr__(self) -> str:
        return f"LogSink({self.logger_name!r})"


class MemorySink:
    """Keeps events in a list (tests, ``keyless demo``). Thread-safe."""

    def __init__(self) -> None:
        self._events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[AuditEvent]:
        """A snapshot of the events so far, oldest first."""
        with self._lock:
            return list(self._events)

    def __getstate__(self) -> dict[str, Any]:
        return {"events": self.events}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._events = list(state["events"])
        self._lock = threading.Lock()


_jsonl_sinks: weakref.WeakSet[JsonlSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sink in list(_jsonl_sinks):
        sink._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class JsonlSink:
    """Appends one JSON line per event to ``path`` (created 0600 if missing, parent 0700).

    Thread-safe (a lock around one ``write`` of the whole line on an ``O_APPEND`` descriptor)
    and fork-safe: a forked child drops the inherited descriptor and lock and reopens the
    file on its first event. Picklable: the descriptor is not pickled.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        _jsonl_sinks.add(self)

    def _reset_after_fork(self) -> None:
        fd = self._fd
        self._lock = threading.Lock()
        self._fd = None
        self._pid = os.getpid()
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # the child's copy only; the parent's stays open

    def _open(self) -> int:
        if self._pid != os.getpid():  # forked without the at-fork hook (e.g. os.fork in C)
            self._reset_after_fork()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def emit(self, event: AuditEvent) -> None:
        line = (event.to_json() + "\n").encode("utf-8")
        with self._lock:
            fd = self._open()
            written = os.write(fd, line)
            while written < len(line):  # short writes are rare; finish the line
                written += os.write(fd, line[written:])

    def close(self) -> None:
        """Close the descriptor; a later event reopens it."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


# ----------------------------------------------------------------------------- the log

class AuditLog:
    """Fans each event out to its sinks. ``emit`` never raises: a failing sink is reported
    once, on the ``keyless`` logger at WARNING, with the event's kind and outcome only."""

    def __init__(self, sinks: Iterable[AuditSink] = (), clock: Clock | None = None) -> None:
        self.sinks: tuple[AuditSink, ...] = tuple(sinks)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._reported: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: AuditSpec | None, clock: Clock | None = None) -> AuditLog:
        """The sinks an :class:`~keyless.config.AuditSpec` names (default: the log sink)."""
        spec = spec if spec is not None else AuditSpec()
        sinks: list[AuditSink] = []
        for name in dict.fromkeys(spec.sinks):
            if name == "log":
                sinks.append(LogSink())
            elif name == "jsonl" and spec.jsonl_path and spec.jsonl_max_bytes is None:
                sinks.append(JsonlSink(spec.jsonl_path))
            elif name in ("jsonl", "mlflow", "otel"):  # rotation and optional extras
                from .audit_sinks import build_sink

                sinks.append(build_sink(name, spec))
        return cls(sinks, clock=clock)

    def emit(self, event: AuditEvent) -> AuditEvent:
        """Stamp ``time`` (when 0) from the clock and send to every sink; returns the event
        as sent. Never raises."""
        if not event.time:
            with contextlib.suppress(Exception):  # a broken clock must not break the caller
                event = dataclasses.replace(event, time=self.clock.time())
        for index, sink in enumerate(self.sinks):
            try:
                sink.emit(event)
            except Exception as exc:
                self._report(index, sink, event, exc)
        return event

    def _report(self, index: int, sink: AuditSink, event: AuditEvent,
                exc: BaseException) -> None:
        with self._lock:
            if index in self._reported:
                return
            self._reported.add(index)
        _log.warning("keyless audit: sink %s failed (%s) on a %s/%s event; further failures "
                     "of this sink are not reported; fix the sink (path, permissions, handler)",
                     type(sink).__name__, type(exc).__name__, event.kind, event.outcome)

    def close(self) -> None:
        """Close the sinks that hold resources."""
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):  # closing is best effort
                    close()

    def __getstate__(self) -> dict[str, Any]:
        return {"sinks": self.sinks, "clock": self.clock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["sinks"], clock=state["clock"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"AuditLog(sinks={list(self.sinks)!r})"
