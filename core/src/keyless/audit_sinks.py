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
- :class:`MlflowSink`: run tags ``keyless.issuer``, ``keyless.subject``, ``keyless.principal``,
  ``keyless.session_name``, ``keyless.source`` (and ``keyless.rank.<rank>.*`` when the worker
  has a rank) as identities are issued; on :meth:`~MlflowSink.flush` / close / interpreter
  exit, this process's events as ``keyless/workers/<worker>.jsonl`` and the merged timeline of
  every worker's part as ``keyless/identity-timeline.json`` and ``.html``. The run is
  ``audit.mlflow_run_id``, else ``MLFLOW_RUN_ID``, else the active run of the emitting thread.
- :class:`OtelSink`: a span event ``keyless.<kind>`` on the current span; counters
  ``keyless.issuances`` (first credential of an identity), ``keyless.refreshes`` (a credential
  replacing an earlier one), ``keyless.failures``; histogram
  ``keyless.refresh.validity_remaining`` (seconds the replaced credential had left).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import threading
import uuid
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .audit import AuditEvent, AuditSink, JsonlSink
from .audit_report import build_report, read_events, report_dict, worker_label
from .config import AuditSpec
from .errors import ConfigError, KeylessError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = ["MlflowSink", "OtelSink", "RotatingJsonlSink", "build_sink", "require_extra"]

_log = logging.getLogger("keyless")

TIMELINE_JSON = "identity-timeline.json"
TIMELINE_HTML = "identity-timeline.html"


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


# ----------------------------------------------------------------------------- mlflow

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def _flush_at_exit(ref: weakref.ref[MlflowSink]) -> None:
    sink = ref()
    if sink is None or sink._pid != os.getpid() or not sink.pending:
        return
    try:
        sink.flush()
    except Exception as exc:
        detail = exc.message if isinstance(exc, KeylessError) else type(exc).__name__
        _log.warning("keyless audit: the MLflow timeline was not written at exit: %s", detail)


def _register_exit_flush(ref: weakref.ref[MlflowSink]) -> None:
    """Flush at exit *before* the interpreter stops thread pools (MLflow downloads artifacts
    through one): through ``threading``'s exit hooks, which run before ``atexit`` and in
    reverse order, so importing ``concurrent.futures.thread`` first puts our hook ahead of
    its pool shutdown. Falls back to ``atexit``."""
    import concurrent.futures.thread  # noqa: F401 - registers its exit hook before ours

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        with contextlib.suppress(RuntimeError):  # already shutting down
            register(_flush_at_exit, ref)
            return
    atexit.register(_flush_at_exit, ref)


class MlflowSink:
    """Identity tags and an identity-timeline artifact on an MLflow run.

    ``run_id`` (else ``MLFLOW_RUN_ID`` in ``environ``, else the emitting thread's active run)
    names the run; ``tracking_uri`` the store (default: MLflow's own resolution). ``client``
    is an ``mlflow.MlflowClient`` to use instead. Events are kept in memory; tags are written
    as they change once the run is known; artifacts on :meth:`flush`, :meth:`close` and at
    interpreter exit (in the process that made the sink; a forked child writes nothing).
    """

    def __init__(self, *, run_id: str | None = None, tracking_uri: str | None = None,
                 environ: Mapping[str, str] | None = None, client: Any = None,
                 artifact_dir: str = "keyless", flush_at_exit: bool = True) -> None:
        self._config = {"run_id": run_id, "tracking_uri": tracking_uri,
                        "artifact_dir": artifact_dir, "flush_at_exit": flush_at_exit}
        self.tracking_uri = tracking_uri
        self.artifact_dir = artifact_dir.strip("/")
        self._environ = os.environ if environ is None else environ
        self._run = run_id or None
        self._client = client
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._flushed = 0
        self._tags: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._part: str | None = None
        self._pid = os.getpid()
        if flush_at_exit:
            _register_exit_flush(weakref.ref(self))

    @property
    def pending(self) -> bool:
        """True when events arrived since the last flush."""
        with self._lock:
            return len(self._events) > self._flushed

    def run_id(self) -> str | None:
        """The run written to, once known (see the class docs for the order)."""
        if self._run is None:
            run = self._environ.get("MLFLOW_RUN_ID") or None
            if run is None:
                active = importlib.import_module("mlflow").active_run()
                run = None if active is None else str(active.info.run_id)
            self._run = run
        return self._run

    def client(self) -> Any:
        if self._client is None:
            self._client = importlib.import_module("mlflow").MlflowClient(
                tracking_uri=self.tracking_uri)
        return self._client

    def _wanted_tags(self, event: dict[str, Any]) -> dict[str, str]:
        if event["outcome"] != "ok":
            return {}
        values = {"issuer": event["iss"], "subject": event["sub"],
                  "principal": event["principal"], "session_name": event["session_name"],
                  "source": event["source"]}
        tags = {f"keyless.{k}": str(v) for k, v in values.items() if v}
        rank = event["context"].get("rank")
        if rank and _UNSAFE.sub("", rank) == rank:
            tags.update({f"keyless.rank.{rank}.{k}": str(v) for k, v in values.items()
                         if v and k != "source"})
        return tags

    def emit(self, event: AuditEvent) -> None:
        record = event.to_dict()
        with self._lock:
            self._events.append(record)
            if self._part is None:
                label = _UNSAFE.sub("-", worker_label(record["context"]).replace(" ", "_"))
                self._part = f"{label.strip('-')[:100]}-{uuid.uuid4().hex[:6]}.jsonl"
            self._tags.update(self._wanted_tags(record))
        self._write_tags()

    def _write_tags(self) -> None:
        with self._lock:
            changed = {k: v for k, v in self._tags.items() if self._written.get(k) != v}
        if not changed or self.run_id() is None:
            return
        run = self.run_id()
        entities = importlib.import_module("mlflow.entities")
        try:
            self.client().log_batch(run, tags=[entities.RunTag(k, v)
                                               for k, v in sorted(changed.items())])
        except Exception as exc:
            raise self._failed("tagging", exc) from None
        with self._lock:
            self._written.update(changed)

    def _failed(self, what: str, exc: BaseException) -> KeylessError:
        return KeylessError(f"mlflow sink: {what} run {self._run!r} failed "
                            f"({type(exc).__name__}); fix: check MLFLOW_TRACKING_URI (or "
                            "audit.mlflow_tracking_uri) and that the run exists")

    def flush(self) -> None:
        """Write pending tags, this process's part and the merged timeline (JSON + HTML).

        Raises ConfigError when no run is known, KeylessError when MLflow fails."""
        run = self.run_id()
        if run is None:
            raise ConfigError("mlflow sink: no MLflow run to write to; fix: set MLFLOW_RUN_ID "
                              "or audit.mlflow_run_id, or start a run (mlflow.start_run()) "
                              "before keyless first issues", field="audit.mlflow_run_id")
        with self._flush_lock:
            with self._lock:
                events, part = list(self._events), self._part
            if part is None:
                return
            self._write_tags()
            text = "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n"
                           for e in events)
            try:
                self.client().log_text(run, text, f"{self.artifact_dir}/workers/{part}")
                self._write_timeline(run)
            except KeylessError:
                raise
            except Exception as exc:
                raise self._failed("writing artifacts to", exc) from None
            with self._lock:
                self._flushed = max(self._flushed, len(events))

    def _parts(self, run: str) -> list[str]:
        listed = self.client().list_artifacts(run, f"{self.artifact_dir}/workers")
        return sorted(str(info.path) for info in listed
                      if not info.is_dir and str(info.path).endswith(".jsonl"))

    def _write_timeline(self, run: str) -> None:
        """Merge every worker's part into the timeline; re-merge (a few times at most) when
        another worker added a part meanwhile."""
        from .audit_html import render_html

        client = self.client()
        seen: list[str] = []
        for _ in range(3):
            parts = self._parts(run)
            if parts == seen:
                return
            with tempfile.TemporaryDirectory(prefix="keyless-mlflow-") as scratch:
                files = [client.download_artifacts(run, path, scratch) for path in parts]
                events, skipped = read_events(files)
            report = build_report(events, skipped)
            document = {"format": 1, "run_id": run, "parts": parts, **report_dict(report)}
            client.log_text(run, json.dumps(document, indent=2, sort_keys=True),
                            f"{self.artifact_dir}/{TIMELINE_JSON}")
            client.log_text(run, render_html(report, f"keyless identity timeline: run {run}"),
                            f"{self.artifact_dir}/{TIMELINE_HTML}")
            seen = parts

    def close(self) -> None:
        """Flush when events are pending (a later event is kept for the next flush)."""
        if self.pending and self._pid == os.getpid():
            self.flush()

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._config)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"MlflowSink(run_id={self._run!r})"


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
