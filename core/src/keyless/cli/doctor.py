"""``keyless doctor``: the command line of :mod:`keyless.verify.doctor` (whose docstring says
what each check does and what the exit codes mean)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import KeylessError
from ..identity import Keyless
from ..verify.doctor import diagnose

__all__ = ["register"]


def _description() -> str | None:
    """The checks' second paragraph (usage and exit codes) as the command's description."""
    from ..verify import doctor

    return doctor.__doc__.split("\n\n")[1] if doctor.__doc__ else None


def register(subparsers: Any) -> None:
    """Add ``keyless doctor``."""
    parser = subparsers.add_parser("doctor", help="check a token or a config end to end",
                                   description=_description())
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="FILE", help="the keyless config to check")
    where.add_argument("--token-file", metavar="T", help="a file holding the JWT to check")
    parser.add_argument("--issuer", metavar="URL",
                        help="the issuer to check against, the only one contacted (default: "
                             "the config's source.issuer, else the token's iss, announced)")
    parser.add_argument("--audience", metavar="A", help="expected aud (default: the target's)")
    parser.add_argument("--leeway", type=float, default=60.0, metavar="SECONDS",
                        help="clock skew tolerated: exp/nbf/iat, the issuer's clock (default 60)")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="with --token-file: allow an http:// loopback issuer (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_cmd_doctor)


def _announce(text: str) -> None:
    """Say on stderr (stdout is the report, maybe JSON) what doctor is about to do."""
    print(text, file=sys.stderr, flush=True)


def _cmd_doctor(args: argparse.Namespace) -> int:
    identity: Keyless | None = None
    token: str | None = None
    problem: str | None = None
    if args.config is not None:
        identity = Keyless(Path(args.config))  # a missing file, a directory: ConfigError, exit 2
        origin = f"source {identity.config.source.type}"
        allow_http = identity.config.allow_insecure_http
        try:
            token = identity.subject_token().token.reveal()
        except KeylessError as exc:
            problem = exc.message
    else:
        origin = f"file {args.token_file}"
        allow_http = args.allow_insecure_http
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot read it ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        if token == "":
            token, problem = None, "the file is empty"
    checks = diagnose(token, token_origin=origin, token_problem=problem, issuer=args.issuer,
                      audience=args.audience, identity=identity, leeway_seconds=args.leeway,
                      allow_insecure_http=allow_http, announce=_announce)
    failed = any(c.status == "FAIL" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [dataclasses.asdict(c) for c in checks]},
                         indent=2))
    else:
        for check in checks:
            print(check.line())
        print("doctor: " + ("a check FAILED" if failed else "all checks passed"))
    sys.stdout.flush()
    return 1 if failed else 0
