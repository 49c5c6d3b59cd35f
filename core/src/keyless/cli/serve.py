"""``keyless serve-credentials``: the loopback AWS credential endpoint in the foreground.

First checks that it can serve, as ``keyless exec --credential-endpoint`` does before it starts
its command: the whole exchange (a credential set for this identity), or, for a config whose
AWS target differs per calling process (a ``{rank}`` template, a session policy), the source (a
subject token for the AWS audience). A transient failure is tried again with backoff
(:mod:`.startup`); any failure exits 1 (2 for a config error) with the error on stderr and
nothing on stdout. Only then prints the two variables a consumer needs (``export
AWS_CONTAINER_CREDENTIALS_FULL_URI=...`` and ``export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=...``:
a URL and a path, never the token), serves until SIGINT or SIGTERM, and removes its token
file on the way out. Each calling
process of this OS user is served its own identity (its ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``:
ranks that ``torchrun`` starts each get theirs); other users' processes get 403.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from types import FrameType
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``serve-credentials`` to the ``keyless`` CLI."""
    parser = subparsers.add_parser(
        "serve-credentials", help="serve this identity's AWS credentials on a loopback "
                                  "container-credentials endpoint until interrupted")
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the keyless config (YAML or JSON; needs target.aws)")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default: "
                                                            "127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="0 to 65535 (default 0: a free "
                                                               "port)")
    parser.add_argument("--token-dir", default=None, metavar="DIR",
                        help="a private directory for the authorization token file "
                             "(default: a new temp dir)")
    parser.set_defaults(handler=_cmd_serve)


def _port(text: str) -> int:
    """A TCP port number (argparse turns the error into a usage line and exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..delivery import TokenDirectory
    from ..delivery.child import aws_needs_endpoint
    from ..delivery.credential_server import CredentialServer
    from ..delivery.launch import Launch
    from .startup import load_identity, with_startup_retries

    identity = load_identity(args)
    identity.aws()  # a config without target.aws fails here, before binding
    per_process = aws_needs_endpoint(identity) is not None
    directory = TokenDirectory(args.token_dir or identity.config.delivery.token_dir)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with CredentialServer(identity, host=args.host, port=args.port, token_dir=directory,
                              launch=Launch(launch_id=None)) as server:

            def check() -> object:  # what exec checks before it starts its command
                if per_process:  # no caller's context here: the source at least must work
                    return identity.subject_token(identity.target_audience("aws"))
                return server.credentials_document()

            with_startup_retries(identity, "keyless serve-credentials", check)
            for key, value in sorted(server.env().items()):
                print(f"export {key}={shlex.quote(value)}")
            sys.stdout.flush()
            while not stop.wait(1.0):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        directory.cleanup()
    return 0
