"""keyless.audit.report / audit_html / `keyless audit`: per-worker grouping, refreshes, gaps,
failures, the three formats, and a page with no external asset."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from keyless.audit import AuditEvent, AuditLog, JsonlSink
from keyless.audit.html import render_html
from keyless.audit.report import build_report, read_events, render_json, render_table
from keyless.cli import main
from keyless.clock import FakeClock
from keyless.errors import ExchangeFailed

START = 1_700_000_000.0


def write_run(path: Path) -> None:
    """Two workers; rank 0 refreshes twice (once after its credential had expired), rank 1
    fails once; a stray non-event line."""
    clock = FakeClock(START)
    log = AuditLog([JsonlSink(path)], clock=clock)

    def ok(kind: str, rank: str, exp_in: float, fp: str, target: str = "aws") -> None:
        log.emit(AuditEvent(kind=kind, source="client_credentials", target=target,  # type: ignore[arg-type]
                            outcome="ok", iss="https://idp", sub="trainer",
                            aud=("sts.amazonaws.com",), exp=clock.time() + exp_in,
                            token_sha256=fp, principal="arn:aws:iam::1:role/train",
                            session_name=f"rank-{rank}",
                            context={"rank": rank, "job_id": "j", "pid": "9" + rank}))

    ok("exchange", "0", 60, "a0")
    ok("exchange", "1", 60, "b0")
    clock.advance(30)
    ok("exchange", "0", 60, "a1")
    clock.advance(5)
    log.emit(AuditEvent.for_failure(ExchangeFailed("aws-sts: throttled; fix: wait"),
                                    source="client_credentials", target="aws",
                                    context={"rank": "1", "job_id": "j", "pid": "91"}))
    clock.advance(65)  # rank 0's second credential expired 5 s before this refresh
    ok("exchange", "0", 60, "a2")
    with path.open("a") as handle:
        handle.write("not an audit line\n")


def test_report_groups_by_worker_and_identity(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path)
    events, skipped = read_events([path, path])  # the same file twice counts once
    assert skipped == 2 and len(events) == 5
    report = build_report(events, skipped)
    assert [w.context["rank"] for w in report.workers] == ["0", "1"]
    rank0, rank1 = report.workers
    [aws0] = rank0.identities
    assert aws0.issued == START and aws0.refreshes == [START + 30, START + 100]
    assert [c.token_sha256 for c in aws0.credentials] == ["a0", "a1", "a2"]
    assert aws0.credentials[1].replaced == START + 100
    assert rank0.failures == [] and len(rank1.failures) == 1
    assert rank1.failures[0].error == "aws-sts: throttled; fix: wait"


def test_table_and_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path)
    report = build_report(*read_events([path]))
    table = render_table(report)
    assert table.splitlines()[0].startswith("2 worker(s), 5 event(s)")
    assert "worker rank=0 job_id=j pid=90" in table
    assert "FAILURE 2023-11-14T22:13:55Z aws (client_credentials): aws-sts: throttled" in table
    row0 = next(line for line in table.splitlines() if "rank-0" in line)
    assert "arn:aws:iam::1:role/train" in row0 and " 2 " in row0
    data = json.loads(render_json(report))
    assert [len(w["identities"][0]["refreshed"]) for w in data["workers"]] == [2, 0]


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict[str, int]] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        classes = (dict(attrs).get("class") or "").split()
        if tag == "section" and "worker" in classes:
            self.sections.append({})
        elif self.sections:
            for name in classes:
                self.sections[-1][name] = self.sections[-1].get(name, 0) + 1


def test_html_timeline_one_row_per_worker_and_self_contained(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path)
    page = render_html(build_report(*read_events([path])), title="t <&>")
    parser = Page()
    parser.feed(page)
    assert len(parser.sections) == 2
    rank0, rank1 = parser.sections
    assert rank0["bar"] == 4 and rank0["refresh"] == 2 and rank0["expired"] == 1
    assert rank1["bar"] == 1 and rank1["failure"] == 1
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert not [a for a, _ in parser.attrs if a in ("src", "href")]
    assert "url(" not in page and "@import" not in page
    assert "t &lt;&amp;&gt;" in page


def test_cli_audit_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    write_run(path)
    assert main(["audit", str(path)]) == 0
    assert "worker rank=1" in capsys.readouterr().out
    assert main(["audit", str(path), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["workers"]) == 2
    out = tmp_path / "t.html"
    assert main(["audit", str(path), "--format", "html", "-o", str(out)]) == 0
    assert out.read_text().count('<section class="worker"') == 2
    assert main(["audit", str(tmp_path / "missing.jsonl")]) == 2
    assert "keyless audit: cannot read" in capsys.readouterr().err
