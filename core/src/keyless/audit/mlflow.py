"""The MLflow audit sink (``keyless[mlflow]``, imported only when this sink is used): run
tags ``keyless.issuer``, ``keyless.subject``, ``keyless.principal``, ``keyless.session_name``,
``keyless.source`` (and ``keyless.rank.<rank>.*`` when the worker has a rank) as identities are
issued; on :meth:`MlflowSink.flush` / close / interpreter exit, this process's events as
``keyless/workers/<worker>.jsonl`` and the merged timeline of every worker's part as
``keyless/identity-timeline.json`` and ``.html``. The run is ``audit.mlflow_run_id``, else
``MLFLOW_RUN_ID``, else the active run of the emitting thread."""

from __future__ import annotations

import atexit
import contextlib
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

from ..errors import ConfigError, KeylessError
from .events import AuditEvent
from .report import build_report, read_events, report_dict, worker_label

if TYPE_CHECKING:
    pass


__all__ = ["TIMELINE_HTML", "TIMELINE_JSON", "MlflowSink"]

_log = logging.getLogger("keyless")

TIMELINE_JSON = "identity-timeline.json"
TIMELINE_HTML = "identity-timeline.html"


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
        from .html import render_html

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
