"""``keyless audit FILE... [--format table|json|html] [--output OUT]``: who held which identity.

Reads JSONL audit files (the ``jsonl`` sink's file and its rotated ``FILE.1`` ..., the
``keyless/workers/*.jsonl`` parts of an MLflow run, or a captured stderr of ``keyless exec
--audit-stderr``) and prints, per worker, each identity held, when it was issued and refreshed,
and the failures. ``html`` is a self-contained timeline page. Exit 0; 2 when a file cannot be
read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..audit.report import build_report, read_events, render_json, render_table
from ..errors import ConfigError

__all__ = ["register"]

_HELP = "per worker: the identities held, issued and refreshed times, failures (from JSONL)"


def register(subparsers: Any) -> None:
    """Add the ``audit`` subcommand."""
    parser = subparsers.add_parser("audit", help=_HELP, description=_HELP)
    parser.add_argument("files", nargs="+", metavar="FILE", help="JSONL audit files")
    parser.add_argument("--format", choices=("table", "json", "html"), default="table",
                        help="table (default), json, or html: a self-contained timeline page")
    parser.add_argument("-o", "--output", default=None, metavar="OUT",
                        help="write to OUT instead of standard output")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    events, skipped = read_events(args.files)
    report = build_report(events, skipped_lines=skipped)
    if args.format == "json":
        text = render_json(report) + "\n"
    elif args.format == "html":
        from ..audit.html import render_html

        text = render_html(report)
    else:
        text = render_table(report)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"keyless audit: cannot write {args.output!r} ({exc.strerror}); "
                          "fix: choose a writable --output path") from None
    return 0
