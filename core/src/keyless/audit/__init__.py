"""Audit: one event per issue, exchange, refresh and failure: fingerprints and claims, never a
token. :mod:`.events` (the event and its redaction) -> :mod:`.plain` (log, file and memory
sinks) -> :mod:`.log` (:class:`AuditLog`, fanning out to sinks) -> :mod:`.sinks` (MLflow,
OpenTelemetry, rotation, built on demand) -> :mod:`.report` (a timeline per worker) ->
:mod:`.html` (that timeline as a page). Nothing imports back up the chain."""

from .events import (
    AUDIT_LOGGER,
    REDACTED_JWT,
    AuditEvent,
    AuditKind,
    AuditOutcome,
    AuditSink,
    redact,
)
from .log import AuditLog
from .plain import JsonlSink, LogSink, MemorySink

__all__ = ["AUDIT_LOGGER", "REDACTED_JWT", "AuditEvent", "AuditKind", "AuditLog",
           "AuditOutcome", "AuditSink", "JsonlSink", "LogSink", "MemorySink", "redact"]
