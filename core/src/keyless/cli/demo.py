"""``keyless demo``: the whole federation on this machine (see :mod:`keyless.dev.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..dev.demo import DemoOptions, run_demo

__all__ = ["register"]

_HELP = ("the whole federation on this machine, no cloud account: a dev OIDC issuer, a local "
         "STS/S3 (moto), several workers each with its own rolling identity, the audit trail")


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help=_HELP, description=_HELP)
    defaults = DemoOptions()
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help=f"how many worker processes (default {defaults.workers})")
    parser.add_argument("--seconds", type=float, default=defaults.seconds,
                        help="how long each worker reads (it runs on until it rolled over)")
    parser.add_argument("--token-seconds", type=float, default=defaults.token_seconds,
                        help="lifetime of the dev issuer's tokens")
    parser.add_argument("--session-seconds", type=float, default=defaults.session_seconds,
                        help="cap on the AWS sessions' lifetime")
    parser.add_argument("--html", default=None, metavar="PATH",
                        help="where to write the audit timeline page (default: "
                             "keyless-<job>-audit.html in the temporary directory)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    return run_demo(DemoOptions(workers=args.workers, seconds=args.seconds,
                                token_seconds=args.token_seconds,
                                session_seconds=args.session_seconds, html_path=args.html))
