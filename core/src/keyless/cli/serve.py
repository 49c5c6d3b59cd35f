"""``keyless serve-credentials``: the loopback AWS credential endpoint in the foreground.

Prints the two variables a consumer needs (``export AWS_CONTAINER_CREDENTIALS_FULL_URI=...``
and ``export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=...``: a URL and a path, never the token),
then serves until SIGINT or SIGTERM, and removes its token file on the way out. Each calling
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
    parser.add_argument("--config", required=True, metavar="FILE")
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
    from ..delivery.credential_server import CredentialServer
    from ..delivery.launch import Launch
    from ..identity import Keyless

    identity = Keyless(args.config)
    identity.aws()  # a config without target.aws fails here, before binding
    directory = TokenDirectory(args.token_dir or identity.config.delivery.token_dir)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with CredentialServer(identity, host=args.host, port=args.port, token_dir=directory,
                              launch=Launch(launch_id=None)) as server:
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
