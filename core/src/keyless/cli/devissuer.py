"""``keyless dev-issuer``: run the local development OIDC issuer until interrupted.

Clients come from ``--config FILE`` (YAML or JSON: ``host``, ``port``, ``lifetime_seconds``,
``claims``, ``default_audience``, ``clients: [{client_id, client_secret, subject, claims,
lifetime_seconds, audience}]``) and ``--client ID:SECRET`` options. With no client at all, a
client ``dev`` is made with a random secret written to a 0600 file whose path is printed
(the secret itself never is). A non-loopback ``--host`` is refused with exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from ..dev.issuer import DevClient, DevIssuer
from ..errors import ConfigError

__all__ = ["build_issuer", "register"]

_HELP = ("a local development OIDC issuer (discovery, JWKS, client credentials, RFC 8693 "
         "token exchange) on loopback, keys made per run: NEVER FOR PRODUCTION")


def register(subparsers: Any) -> None:
    """Add the ``dev-issuer`` subcommand."""
    parser = subparsers.add_parser("dev-issuer", help=_HELP, description=_HELP)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML/JSON: host, port, lifetime_seconds, claims, "
                             "default_audience, clients")
    parser.add_argument("--host", default=None, help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: any free port")
    parser.add_argument("--client", action="append", default=[], metavar="ID:SECRET",
                        help="a client (repeatable); dev only: visible in the process list")
    parser.add_argument("--subject", default=None,
                        help="sub of the --client clients' tokens (default: the client id)")
    parser.add_argument("--audience", default=None,
                        help="aud when a request names none (default: the client id)")
    parser.add_argument("--lifetime", type=float, default=None, metavar="SECONDS",
                        help="token lifetime (default 300)")
    parser.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra claim on every token (VALUE parsed as JSON if it can)")
    parser.set_defaults(handler=_run)


def _load_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"dev-issuer: cannot read --config {path!r} ({exc.strerror}); fix: "
                          "give a readable YAML or JSON file", field="config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"dev-issuer: --config {path!r} is not valid YAML/JSON; fix the "
                          "file", field="config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"dev-issuer: --config {path!r} must hold a mapping", field="config")
    return data


def _claim(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"dev-issuer: --claim {name or text!r}: give NAME=VALUE",
                          field="claim")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def build_issuer(args: argparse.Namespace) -> tuple[DevIssuer, Path | None]:
    """The issuer the arguments describe (not started) and, when a ``dev`` client was made,
    the 0600 file holding its secret."""
    data = _load_file(args.config) if args.config else {}
    clients = [DevClient.from_mapping(c, f"clients.{i}")
               for i, c in enumerate(data.get("clients") or [])]
    for spec in args.client:
        client_id, sep, secret = spec.partition(":")
        if not sep or not client_id or not secret:
            raise ConfigError("dev-issuer: --client wants ID:SECRET (both non-empty)",
                              field="client")
        clients.append(DevClient(client_id, secret, subject=args.subject))
    secret_file: Path | None = None
    if not clients:
        secret = secrets.token_urlsafe(24)
        directory = Path(tempfile.mkdtemp(prefix="keyless-dev-issuer-"))
        secret_file = directory / "dev.client_secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret)
        clients.append(DevClient("dev", secret, subject=args.subject))
    claims = dict(data.get("claims") or {})
    claims.update(_claim(c) for c in args.claim)
    issuer = DevIssuer(
        clients, host=args.host or data.get("host") or "127.0.0.1",
        port=args.port if args.port is not None else int(data.get("port") or 0),
        lifetime_seconds=args.lifetime or float(data.get("lifetime_seconds") or 300),
        claims=claims, default_audience=args.audience or data.get("default_audience"))
    return issuer, secret_file


def _run(args: argparse.Namespace) -> int:
    issuer, secret_file = build_issuer(args)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with issuer:
            where = f"; client dev's secret is in {secret_file}" if secret_file else ""
            print(f"keyless dev-issuer: ready at {issuer.issuer} (token endpoint "
                  f"{issuer.token_endpoint}; clients: {', '.join(issuer.clients)}{where}; "
                  "loopback only, never for production)", flush=True)
            while not stop.wait(1.0):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if secret_file is not None:
            secret_file.unlink(missing_ok=True)
            secret_file.parent.rmdir()
    print("keyless dev-issuer: stopped", file=sys.stderr, flush=True)
    return 0
