"""The ``keyless`` command line.

Exit codes: 0 success (for ``exec``: the command's own status), 1 a runtime failure
(source, exchange), 2 bad usage or a bad config. Errors print one line on stderr that starts
with the component and carries the fix; a token is printed only by ``token --raw``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from ..config import config_json_schema
from ..errors import ConfigError, KeylessError
from ..identity import Keyless

__all__ = ["COMMAND_MODULES", "FORWARDED_SIGNALS", "exit_status", "main"]

#: Modules that add a subcommand: each has ``register(subparsers)``, which adds its parser and
#: sets ``handler=<callable(args) -> int>`` with ``parser.set_defaults``.
COMMAND_MODULES: tuple[str, ...] = ("keyless.cli.serve", "keyless.cli.devissuer",
                                    "keyless.cli.demo", "keyless.cli.doctor",
                                    "keyless.cli.audit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyless", description="Short-lived, per-worker cloud identity through OIDC "
                                    "workload identity federation.")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="do not print audit events on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    token = sub.add_parser("token", help="fetch a subject token and print its claims")
    token.add_argument("--config", required=True, metavar="FILE")
    token.add_argument("--audience", default=None)
    token.add_argument("--raw", action="store_true", help="print the JWT itself")

    env = sub.add_parser("env", help="write token files once and print the SDK variables")
    env.add_argument("--config", required=True, metavar="FILE")
    env.add_argument("--format", choices=("sh", "json"), default="sh")
    env.add_argument("--token-dir", default=None, metavar="DIR",
                     help="a private directory for the token files (default: a new temp dir)")

    run = sub.add_parser("exec", help="run a command with token files + SDK variables kept "
                                      "fresh until it exits")
    run.add_argument("--config", required=True, metavar="FILE")
    run.add_argument("--token-dir", default=None, metavar="DIR")
    run.add_argument("--credential-endpoint", action="store_true",
                     help="give CMD a loopback AWS credential endpoint instead of web identity "
                          "(automatic when the AWS target differs per rank or worker: a "
                          "session policy, policy ARNs, {rank} {local_rank} {node} templates)")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")

    sub.add_parser("schema", help="print the config's JSON schema")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _configure_logging(quiet: bool) -> logging.Handler:
    """Print keyless warnings (and, unless quiet, audit events) on stderr; returns the
    handler so that :func:`main` can remove it again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("keyless")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    audit = logging.getLogger("keyless.audit")
    audit.setLevel(logging.WARNING if quiet else logging.INFO)
    return handler


def _cmd_token(args: argparse.Namespace) -> int:
    identity = Keyless(args.config)
    token = identity.subject_token(args.audience)
    if args.raw:
        print(token.token.reveal())
    else:
        print(json.dumps(token.claims, indent=2, sort_keys=True))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from ..delivery import TokenDirectory, TokenFileKeeper, sdk_environment

    identity = Keyless(args.config)
    directory = TokenDirectory(args.token_dir or identity.config.delivery.token_dir)
    keeper = TokenFileKeeper(identity, directory)
    keeper.write_all()
    env = sdk_environment(identity, keeper.files)
    print(f"keyless env: token files written once to {directory.path} (not refreshed: they "
          f"expire with their tokens); remove them when done: rm -r {directory.path}",
          file=sys.stderr)
    if args.format == "json":
        print(json.dumps(env, indent=2, sort_keys=True))
    else:
        import shlex

        for key, value in sorted(env.items()):
            print(f"export {key}={shlex.quote(value)}")
    return 0


#: Signals ``keyless exec`` passes on to its command (torchrun's SIGTERM reaches the ranks).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


def exit_status(returncode: int, received: int | None = None) -> int:
    """A command's status as a shell reports it: its exit code, or 128 + N for a death by
    signal N. When keyless itself was sent a terminating signal ``received`` (and passed it
    on), a failed command gives 128 + ``received``, as a shell that was killed would."""
    if returncode < 0:
        return 128 - returncode
    if received is not None and returncode != 0:
        return 128 + received
    return returncode


def _cmd_exec(args: argparse.Namespace) -> int:
    from ..delivery.child import child_environment

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("keyless exec: no command given; usage: keyless exec --config F -- CMD ...",
              file=sys.stderr)
        return 2
    identity = Keyless(args.config)
    audit = identity.audit  # built now: a missing audit extra fails before the child starts
    received: list[int] = []
    with child_environment(identity, token_dir=args.token_dir,
                           credential_endpoint=args.credential_endpoint,
                           expect_start=True) as child_env:
        try:
            child = subprocess.Popen(argv, env=child_env.env)
        except OSError as exc:
            print(f"keyless exec: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
            return 127
        child_env.started(child.pid)

        def forward(signum: int, _frame: FrameType | None) -> None:
            if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                received.append(signum)
            child.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
        try:
            returncode = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            audit.close()  # flush sinks that write at the end (MLflow artifacts)
    return exit_status(returncode, received[0] if received else None)


def _cmd_schema(_args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return 0


_COMMANDS = {"token": _cmd_token, "env": _cmd_env, "exec": _cmd_exec,
             "schema": _cmd_schema}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    log_handler = _configure_logging(args.quiet)
    try:
        command = getattr(args, "handler", None) or _COMMANDS[args.command]
        return int(command(args))
    except ConfigError as exc:
        print(f"keyless: {exc}", file=sys.stderr)
        return 2
    except KeylessError as exc:
        print(f"keyless: {exc}", file=sys.stderr)
        return 1
    finally:
        logging.getLogger("keyless").removeHandler(log_handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
