"""The audit log: fans each event out to the configured sinks; ``emit`` never raises."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterable
from typing import Any

from ..clock import Clock, SystemClock
from ..config import AuditSpec
from .events import AuditEvent, AuditSink
from .plain import JsonlSink, LogSink

__all__ = ["AuditLog"]

_log = logging.getLogger("keyless")

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
                from .sinks import build_sink

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
