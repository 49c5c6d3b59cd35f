"""Optional audit sinks: a size-rotated JSONL file, an MLflow run, OpenTelemetry.

Selected by ``audit.sinks`` and built by :meth:`keyless.audit.AuditLog.from_spec` through
:func:`build_sink`. MLflow and OpenTelemetry are extras (``keyless[mlflow]``,
``keyless[otel]``), imported only when their sink is used; a missing extra is a
:class:`~keyless.errors.ConfigError` that names it. Every sink sees only
:meth:`~keyless.audit.AuditEvent.to_dict` output: claims, principals, fingerprints, redacted
text; never a token.

- :class:`RotatingJsonlSink`: one ``O_APPEND`` write per line, like
  :class:`~keyless.audit.JsonlSink`; past ``max_bytes`` the file becomes ``FILE.1`` (``.1``
  becomes ``.2`` ..., ``backups`` kept). Safe across processes sharing the file: an exclusive
  ``flock`` on the open file covers the size check, the rotation and the write, and a
  process whose file was rotated away by another reopens the path.
- :class:`~keyless.audit.mlflow.MlflowSink`: tags and an identity-timeline artifact on an
  MLflow run (its module says what and when).
- :class:`OtelSink`: a span event ``keyless.<kind>`` on the current span; counters
  ``keyless.issuances`` (first credential of an identity), ``keyless.refreshes`` (a credential
  replacing an earlier one), ``keyless.failures``; histogram
  ``keyless.refresh.validity_remaining`` (seconds the replaced credential had left).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from ..config import AuditSpec
from ..errors import ConfigError
from .events import AuditEvent, AuditSink
from .mlflow import MlflowSink
from .plain import JsonlSink

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["MlflowSink", "OtelSink", "RotatingJsonlSink", "build_sink", "require_extra"]

_log = logging.getLogger("keyless")



def require_extra(module: str, sink: str, extra: str) -> None:
    """Raise ConfigError naming ``keyless[extra]`` unless ``module`` can be imported."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None
        found = False
    if not found:
        raise ConfigError(f"audit: the {sink} sink needs the {module!r} package, which is not "
                          f"installed; fix: pip install 'keyless[{extra}]' (or drop {sink} from "
                          "audit.sinks)", field="audit.sinks")


def build_sink(name: str, spec: AuditSpec) -> AuditSink:
    """The sink ``name`` of ``spec`` (``jsonl`` with rotation, ``mlflow``, ``otel``)."""
    if name == "jsonl":
        if not spec.jsonl_path:
            raise ConfigError("audit: the jsonl sink needs jsonl_path; fix: set "
                              "audit.jsonl_path", field="audit.jsonl_path")
        if spec.jsonl_max_bytes is None:
            return JsonlSink(spec.jsonl_path)
        return RotatingJsonlSink(spec.jsonl_path, spec.jsonl_max_bytes, spec.jsonl_backups)
    if name == "mlflow":
        require_extra("mlflow", "mlflow", "mlflow")
        return MlflowSink(run_id=spec.mlflow_run_id, tracking_uri=spec.mlflow_tracking_uri)
    if name == "otel":
        require_extra("opentelemetry.metrics", "otel", "otel")
        return OtelSink()
    raise ConfigError(f"audit: unknown sink {name!r}; fix: use log, jsonl, mlflow or otel",
                      field="audit.sinks")


# ----------------------------------------------------------------------------- jsonl, rotated

_ROTATION_ATTEMPTS = 64


class RotatingJsonlSink(JsonlSink):
    """A :class:`~keyless.audit.JsonlSink` that rotates ``path`` past ``max_bytes``."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int = 5) -> None:
        if max_bytes < 1 or backups < 1:
            raise ConfigError("audit: jsonl_max_bytes and jsonl_backups must be positive",
                              field="audit.jsonl_max_bytes")
        super().__init__(path)
        self.max_bytes = max_bytes
        self.backups = backups

    def _current(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def _drop(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None

    def _rotate(self) -> None:
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def emit(self, event: AuditEvent) -> None:
        line = (event.to_json() + "\n").encode("utf-8")
        with self._lock:
            for attempt in range(_ROTATION_ATTEMPTS):
                fd = self._open()
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    # each retry means another process rotated meanwhile; past the bound give
                    # up on the size limit, never on the line
                    last = attempt == _ROTATION_ATTEMPTS - 1
                    if last or self._current(fd):
                        size = os.fstat(fd).st_size
                        if last or size == 0 or size + len(line) <= self.max_bytes:
                            written = os.write(fd, line)
                            while written < len(line):
                                written += os.write(fd, line[written:])
                            return
                        self._rotate()
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._drop()  # rotated (by us or another process): reopen the path

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path), "max_bytes": self.max_bytes, "backups": self.backups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["max_bytes"], state["backups"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"RotatingJsonlSink({str(self.path)!r}, max_bytes={self.max_bytes})"


# ----------------------------------------------------------------------------- opentelemetry

class OtelSink:
    """Span events and metrics through the OpenTelemetry API.

    ``meter_provider`` defaults to the global one (set by the application or by
    ``opentelemetry-instrument``); spans are whatever is current when the event is emitted (a
    refresh on a background thread has no current span, so its event is dropped by the API;
    the metrics still count it).
    """

    def __init__(self, *, meter_provider: MeterProvider | None = None,
                 meter_name: str = "keyless") -> None:
        from opentelemetry import metrics

        provider = meter_provider if meter_provider is not None else \
            metrics.get_meter_provider()
        meter = provider.get_meter(meter_name)
        self._issuances = meter.create_counter(
            "keyless.issuances", unit="{credential}",
            description="Credentials and tokens issued for an identity for the first time")
        self._refreshes = meter.create_counter(
            "keyless.refreshes", unit="{credential}",
            description="Credentials and tokens that replaced an earlier one")
        self._failures = meter.create_counter(
            "keyless.failures", unit="{failure}", description="Failed issuances and refreshes")
        self._validity = meter.create_histogram(
            "keyless.refresh.validity_remaining", unit="s",
            description="Seconds of validity the replaced credential had left at refresh")
        self._lock = threading.Lock()
        self._expiry: dict[tuple[Any, ...], float | None] = {}

    def emit(self, event: AuditEvent) -> None:
        from opentelemetry import trace

        record = event.to_dict()
        attributes: dict[str, Any] = {
            f"keyless.{k}": v for k, v in record.items()
            if k not in ("context", "aud", "time", "tags") and v is not None}
        if record["aud"]:
            attributes["keyless.aud"] = list(record["aud"])
        attributes.update({f"keyless.context.{k}": v for k, v in record["context"].items()})
        attributes.update({f"keyless.tags.{k}": v for k, v in record["tags"].items()})
        trace.get_current_span().add_event(f"keyless.{event.kind}", attributes=attributes,
                                           timestamp=int(event.time * 1e9) or None)
        labels = {"keyless.target": record["target"], "keyless.source": record["source"]}
        if event.outcome != "ok" or event.kind == "failure":
            self._failures.add(1, {**labels, "keyless.error_type": event.error_type or "-"})
            return
        key = (event.target, event.source, event.principal, event.session_name, event.aud,
               tuple(sorted(event.context.items())))
        with self._lock:
            seen = key in self._expiry
            previous = self._expiry.get(key)
            self._expiry[key] = event.exp
        if not seen and event.kind != "refresh":
            self._issuances.add(1, labels)
            return
        self._refreshes.add(1, labels)
        if previous is not None:
            self._validity.record(max(previous - event.time, 0.0), labels)

    def __getstate__(self) -> dict[str, Any]:
        return {}  # instruments belong to this process; the other side uses its global one

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __repr__(self) -> str:
        return "OtelSink()"
