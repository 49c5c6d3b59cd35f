"""The identity timeline as one self-contained HTML page (``keyless audit --format html``).

One row (a ``<section class="worker">``) per worker; inside it one lane per identity held
(target, principal, session), each credential a bar from its issuance until it was replaced or
expired; ``expired`` bars mark time with no valid credential; refreshes are ticks and failures
red marks. Inline CSS only: no script, no external asset, nothing fetched. Every text is
HTML-escaped; only what the events hold is shown (claims, principals, fingerprints).
"""

from __future__ import annotations

import html

from .report import Credential, Failure, IdentityTrail, Report, WorkerTrail, format_time

__all__ = ["render_html"]

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px;color:#1d2330}
h1{font-size:18px;margin:0 0 4px} .meta{color:#5a6270;margin-bottom:12px}
.axis,.lane{display:grid;grid-template-columns:24em 1fr;align-items:center}
.axis .ticks{position:relative;height:18px;border-bottom:1px solid #9aa3b2}
.axis .tick{position:absolute;transform:translateX(-50%);font-size:11px;color:#5a6270;
 white-space:nowrap}
.axis .tick:first-child{transform:none} .axis .tick:last-child{transform:translateX(-100%)}
.worker{border:1px solid #d5dae3;border-radius:6px;margin:8px 0;padding:6px 8px;
 background:#fafbfd}
.worker h2{font-size:13px;margin:0 0 4px}
.lane{min-height:20px}
.lane-name{font-size:12px;color:#333c4d;overflow:hidden;text-overflow:ellipsis;
 white-space:nowrap;padding-right:8px}
.track{position:relative;height:16px;background:#eef1f6;border-radius:3px}
.bar{position:absolute;top:2px;height:12px;background:#3c7dd9;border-radius:2px;
 min-width:2px}
.bar.token{background:#7aa6e6} .bar.open{border-right:2px dashed #1d2330}
.bar.expired{background:repeating-linear-gradient(45deg,#e9a2a2 0 4px,#f6dada 4px 8px)}
.mark{position:absolute;top:-2px;height:20px;width:2px;margin-left:-1px}
.mark.refresh{background:#1d2330} .mark.failure{background:#d12f2f;width:4px;margin-left:-2px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:18px;height:10px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse;margin-top:16px;font-size:12px}
td,th{border:1px solid #d5dae3;padding:2px 6px;text-align:left}
"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


class _Scale:
    """Maps epoch seconds onto 0..100 % of the track."""

    def __init__(self, report: Report) -> None:
        moments = [c.issued for w in report.workers for t in w.identities for c in t.credentials]
        moments += [f.time for w in report.workers for f in w.failures]
        self.start = min(moments) if moments else 0.0
        last = max(moments) if moments else 1.0
        span = max(last - self.start, 1.0)
        expiries = [c.expires for w in report.workers for t in w.identities
                    for c in t.credentials if c.expires is not None]
        # show what was held at the end, but do not let a 12-hour expiry squash the run
        self.end = max(last, min(max(expiries, default=last), last + 0.25 * span),
                       self.start + 1.0)

    def pct(self, moment: float) -> float:
        position = (moment - self.start) / (self.end - self.start) * 100.0
        return min(max(position, 0.0), 100.0)

    def ticks(self, count: int = 5) -> list[tuple[float, str]]:
        step = (self.end - self.start) / (count - 1)
        return [(self.pct(self.start + i * step), format_time(self.start + i * step)[11:])
                for i in range(count)]


def _bar(scale: _Scale, start: float, end: float, classes: str, title: str) -> str:
    left, right = scale.pct(start), scale.pct(end)
    return (f'<div class="{classes}" style="left:{left:.3f}%;width:{max(right - left, 0.0):.3f}%"'
            f' title="{_e(title)}"></div>')


def _credential_bars(scale: _Scale, trail: IdentityTrail, credential: Credential) -> list[str]:
    kind = "bar token" if trail.target == "token" else "bar"
    fp = credential.token_sha256 or "-"
    title = (f"{credential.kind} at {format_time(credential.issued)}, expires "
             f"{format_time(credential.expires)}, sha256 {fp}")
    end = credential.replaced
    expires = credential.expires
    parts: list[str] = []
    if end is None:
        end = expires if expires is not None else credential.issued
        if end > scale.end:
            kind += " open"
        parts.append(_bar(scale, credential.issued, end, kind, title))
    elif expires is not None and expires < end:
        parts.append(_bar(scale, credential.issued, expires, kind, title))
        parts.append(_bar(scale, expires, end, "bar expired",
                          f"no valid credential from {format_time(expires)} to "
                          f"{format_time(end)}"))
    else:
        parts.append(_bar(scale, credential.issued, end, kind, title))
    return parts


def _failure_mark(scale: _Scale, failure: Failure) -> str:
    title = f"failure at {format_time(failure.time)}: {failure.error or failure.error_type}"
    return (f'<span class="mark failure" style="left:{scale.pct(failure.time):.3f}%"'
            f' title="{_e(title)}"></span>')


def _lane(name: str, title: str, items: list[str], target: str) -> str:
    return (f'<div class="lane" data-target="{_e(target)}"><div class="lane-name" '
            f'title="{_e(title)}">{_e(name)}</div><div class="track">{"".join(items)}</div>'
            "</div>")


def _worker(scale: _Scale, worker: WorkerTrail) -> str:
    lanes: list[str] = []
    placed: set[int] = set()
    for trail in worker.identities:
        items: list[str] = []
        for credential in trail.credentials:
            items.extend(_credential_bars(scale, trail, credential))
        for refresh in trail.refreshes:
            items.append(f'<span class="mark refresh" style="left:{scale.pct(refresh):.3f}%" '
                         f'title="refresh at {_e(format_time(refresh))}"></span>')
        for index, failure in enumerate(worker.failures):
            if index not in placed and failure.target == trail.target and (
                    failure.principal is None or failure.principal == trail.principal):
                placed.add(index)
                items.append(_failure_mark(scale, failure))
        who = trail.principal or trail.sub or "-"
        name = f"{trail.target} · {who}" + (f" · {trail.session_name}"
                                             if trail.session_name else "")
        title = f"iss {trail.iss or '-'}, sub {trail.sub or '-'}, aud {' '.join(trail.aud)}"
        lanes.append(_lane(name, title, items, trail.target))
    rest = [_failure_mark(scale, f) for i, f in enumerate(worker.failures) if i not in placed]
    if rest:
        lanes.append(_lane("failures", "failures of identities never issued", rest, "failure"))
    return (f'<section class="worker" data-worker="{_e(worker.label)}">'
            f"<h2>{_e(worker.label)}</h2>{''.join(lanes)}</section>")


def _summary(report: Report) -> str:
    rows = ["<tr><th>worker</th><th>target</th><th>principal</th><th>session</th>"
            "<th>subject</th><th>issued</th><th>refreshes</th><th>expires</th>"
            "<th>failures</th></tr>"]
    for worker in report.workers:
        failures = len(worker.failures)
        for trail in worker.identities:
            rows.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in (
                worker.label, trail.target, trail.principal, trail.session_name, trail.sub,
                format_time(trail.issued), len(trail.refreshes), format_time(trail.expires),
                failures)) + "</tr>")
    return f'<table class="summary">{"".join(rows)}</table>'


def render_html(report: Report, title: str = "keyless identity timeline") -> str:
    """The whole page for ``report``: a time axis, one row per worker, a legend, a table."""
    scale = _Scale(report)
    ticks = "".join(f'<span class="tick" style="left:{left:.3f}%">{_e(label)}</span>'
                    for left, label in scale.ticks())
    legend = ('<div class="legend"><span><i style="background:#3c7dd9"></i>credential held'
              '</span><span><i style="background:#7aa6e6"></i>subject token</span>'
              '<span><i style="background:#1d2330;width:2px"></i>refresh</span>'
              '<span><i style="background:#d12f2f;width:4px"></i>failure</span>'
              '<span><i style="background:#e9a2a2"></i>expired, not yet replaced</span></div>')
    meta = (f"{len(report.workers)} worker(s), {report.events} event(s), "
            f"{format_time(scale.start)} to {format_time(scale.end)} (UTC)")
    workers = "".join(_worker(scale, worker) for worker in report.workers)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><div class=\"meta\">{_e(meta)}</div>{legend}"
            f'<div class="axis"><div></div><div class="ticks">{ticks}</div></div>'
            f'<main class="timeline">{workers}</main>{_summary(report)}</body></html>\n')
