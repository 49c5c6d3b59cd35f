"""Who held which identity, when: per-worker summaries of keyless audit events.

:func:`read_events` reads JSONL audit files (a ``jsonl`` sink's file and its rotated
``FILE.1`` ..., MLflow ``keyless/workers/*.jsonl`` parts, or a captured stderr of ``keyless
exec --audit-stderr``: lines that are not audit events are counted and skipped; a line seen
twice counts once). :func:`build_report` groups the events by worker (the event's context:
job, run, task, rank, host, pid) and, inside a worker, by identity (target, source, principal,
session name, issuer, subject): when each was first issued, each refresh, each credential
held (issued at, expiry, fingerprint) and the failures. :func:`render_table` and
:func:`render_json` print it; :mod:`keyless.audit.html` draws it as a timeline.

Only what the events hold is shown: claims, principals, fingerprints; never a token.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .events import redact

__all__ = [
    "CONTEXT_KEYS",
    "Credential",
    "Failure",
    "IdentityTrail",
    "Report",
    "WorkerTrail",
    "build_report",
    "format_time",
    "parse_time",
    "read_events",
    "render_json",
    "render_table",
    "report_dict",
    "worker_label",
]

#: The context fields that name a worker, in the order they are shown.
CONTEXT_KEYS: tuple[str, ...] = ("rank", "local_rank", "task_id", "job_id", "run_id", "node",
                                 "host", "pid")
_WORKER_KEYS: tuple[str, ...] = ("job_id", "run_id", "task_id", "rank", "node", "host", "pid")


def parse_time(value: object) -> float | None:
    """Epoch seconds from an event's ``time``/``exp`` (ISO-8601 text or a number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()
    return None


def format_time(value: float | None) -> str:
    """ISO-8601 UTC to the second (``-`` for none)."""
    if value is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def read_events(paths: Iterable[str | Path]) -> tuple[list[dict[str, Any]], int]:
    """The audit events in ``paths`` (JSON objects with ``kind`` and ``outcome``), in file
    order with exact duplicate lines dropped, and the number of other lines skipped.

    Raises :class:`~keyless.errors.ConfigError` naming a file that cannot be read.
    """
    events: list[dict[str, Any]] = []
    seen: set[str] = set()
    skipped = 0
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConfigError(f"keyless audit: cannot read {str(path)!r} ({exc.strerror}); fix: "
                              "pass JSONL audit files (audit.jsonl_path)") from None
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                skipped += 1
                continue
            if not isinstance(event, dict) or "kind" not in event or "outcome" not in event:
                skipped += 1
                continue
            if line in seen:
                continue
            seen.add(line)
            events.append(event)
    return events, skipped


@dataclass
class Credential:
    """One credential (or subject token) held: from ``issued`` until ``expires``, or until the
    next one replaced it (``replaced``)."""

    issued: float
    expires: float | None
    kind: str
    token_sha256: str | None
    replaced: float | None = None


@dataclass
class Failure:
    time: float
    target: str
    source: str
    principal: str | None
    error: str | None
    error_type: str | None


@dataclass
class IdentityTrail:
    """One identity a worker held: the first issuance, the refreshes, every credential."""

    target: str
    source: str
    principal: str | None
    session_name: str | None
    iss: str | None
    sub: str | None
    aud: tuple[str, ...]
    credentials: list[Credential] = field(default_factory=list)

    @property
    def issued(self) -> float:
        return self.credentials[0].issued

    @property
    def refreshes(self) -> list[float]:
        return [c.issued for c in self.credentials[1:]]

    @property
    def expires(self) -> float | None:
        return self.credentials[-1].expires


@dataclass
class WorkerTrail:
    """Everything one worker did, oldest first."""

    context: dict[str, str]
    identities: list[IdentityTrail] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def label(self) -> str:
        return worker_label(self.context)


@dataclass
class Report:
    workers: list[WorkerTrail]
    events: int
    skipped_lines: int = 0
    start: float | None = None
    end: float | None = None


def worker_label(context: Mapping[str, str]) -> str:
    """A short, stable name for a worker: ``rank=0 task_id=t pid=12 host=h``."""
    parts = [f"{key}={context[key]}" for key in CONTEXT_KEYS if context.get(key)]
    return " ".join(parts) or "(no context)"


def _sort_key(worker: WorkerTrail) -> tuple[Any, ...]:
    rank = worker.context.get("rank", "")
    numeric = int(rank) if rank.isdigit() else math.inf
    return (numeric, rank, *(worker.context.get(k, "") for k in _WORKER_KEYS))


def _text(value: object) -> str | None:
    return None if value is None or value == "" else redact(str(value))


def build_report(events: Sequence[Mapping[str, Any]], skipped_lines: int = 0) -> Report:
    """Group ``events`` (dicts as :meth:`keyless.audit.AuditEvent.to_dict` makes them) by
    worker and identity, in time order. Events without a readable ``time`` are ignored."""
    timed = [(t, i, e) for i, e in enumerate(events) if (t := parse_time(e.get("time")))
             is not None]
    timed.sort(key=lambda item: (item[0], item[1]))
    workers: dict[tuple[str, ...], WorkerTrail] = {}
    trails: dict[tuple[Any, ...], IdentityTrail] = {}
    times: list[float] = []
    for when, _, event in timed:
        raw_context = event.get("context") or {}
        context = {str(k): redact(str(v)) for k, v in dict(raw_context).items() if v}
        wkey = tuple(context.get(k, "") for k in _WORKER_KEYS)
        worker = workers.setdefault(wkey, WorkerTrail(context=context))
        target, source = str(event.get("target") or "-"), str(event.get("source") or "-")
        times.append(when)
        if event.get("outcome") != "ok" or event.get("kind") == "failure":
            worker.failures.append(Failure(
                time=when, target=target, source=source, principal=_text(event.get("principal")),
                error=_text(event.get("error")), error_type=_text(event.get("error_type"))))
            continue
        aud = tuple(redact(str(a)) for a in event.get("aud") or ())
        ident = (target, source, _text(event.get("principal")), _text(event.get("session_name")),
                 _text(event.get("iss")), _text(event.get("sub")))
        trail = trails.get((wkey, *ident))
        if trail is None:
            trail = IdentityTrail(*ident, aud=aud)
            trails[(wkey, *ident)] = trail
            worker.identities.append(trail)
        expires = parse_time(event.get("exp"))
        if trail.credentials:
            trail.credentials[-1].replaced = when
        trail.credentials.append(Credential(
            issued=when, expires=expires, kind=str(event.get("kind")),
            token_sha256=_text(event.get("token_sha256"))))
        if expires is not None:
            times.append(expires)
    ordered = sorted(workers.values(), key=_sort_key)
    return Report(workers=ordered, events=len(timed), skipped_lines=skipped_lines,
                  start=min(times) if times else None, end=max(times) if times else None)


# ----------------------------------------------------------------------------- renderers

def report_dict(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (times as ISO-8601 UTC)."""

    def credential(c: Credential) -> dict[str, Any]:
        return {"issued": format_time(c.issued), "expires": format_time(c.expires),
                "replaced": None if c.replaced is None else format_time(c.replaced),
                "kind": c.kind, "token_sha256": c.token_sha256}

    return {
        "events": report.events,
        "skipped_lines": report.skipped_lines,
        "workers": [{
            "worker": worker.label,
            "context": worker.context,
            "identities": [{
                "target": t.target, "source": t.source, "principal": t.principal,
                "session_name": t.session_name, "iss": t.iss, "sub": t.sub, "aud": list(t.aud),
                "issued": format_time(t.issued),
                "refreshed": [format_time(r) for r in t.refreshes],
                "expires": format_time(t.expires),
                "credentials": [credential(c) for c in t.credentials],
            } for t in worker.identities],
            "failures": [{
                "time": format_time(f.time), "target": f.target, "source": f.source,
                "principal": f.principal, "error_type": f.error_type, "error": f.error,
            } for f in worker.failures],
        } for worker in report.workers],
    }


def render_json(report: Report) -> str:
    """The report as indented JSON."""
    return json.dumps(report_dict(report), indent=2, sort_keys=True)


_COLUMNS = ("TARGET", "SOURCE", "PRINCIPAL", "SESSION", "SUBJECT", "ISSUED", "REFRESHES",
            "LAST REFRESH", "EXPIRES")


def _table(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            .rstrip() for row in rows]


def render_table(report: Report) -> str:
    """Per worker: one line per identity held, then its failures, as plain text."""
    lines: list[str] = [f"{len(report.workers)} worker(s), {report.events} event(s)"
                        f" from {format_time(report.start)} to {format_time(report.end)}"]
    if report.skipped_lines:
        lines[0] += f"; {report.skipped_lines} line(s) that are not audit events skipped"
    for worker in report.workers:
        lines.append("")
        lines.append(f"worker {worker.label}")
        if worker.identities:
            rows = [_COLUMNS] + [(
                t.target, t.source, t.principal or "-", t.session_name or "-", t.sub or "-",
                format_time(t.issued), str(len(t.refreshes)),
                format_time(t.refreshes[-1] if t.refreshes else None), format_time(t.expires),
            ) for t in worker.identities]
            lines.extend(_table(rows))
        else:
            lines.append("  (no identity issued)")
        for failure in worker.failures:
            what = failure.error or failure.error_type or "failed"
            lines.append(f"  FAILURE {format_time(failure.time)} {failure.target}"
                         f" ({failure.source}): {what}")
    return "\n".join(lines) + "\n"
