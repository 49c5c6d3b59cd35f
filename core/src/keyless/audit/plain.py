"""The audit sinks with no extra: :class:`LogSink` (JSON lines on the ``keyless.audit``
logger), :class:`JsonlSink` (a 0600 file, appended to atomically per line) and
:class:`MemorySink` (tests and demos)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

from .events import AUDIT_LOGGER, AuditEvent

__all__ = ["JsonlSink", "LogSink", "MemorySink"]

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


