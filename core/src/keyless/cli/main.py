"""The ``keyless`` command line.

Exit codes: 0 success (for ``exec``: the command's own status), 1 a runtime failure
(source, exchange), 2 bad usage or a bad config. Errors print one line on stderr that starts
with the component and carries the fix; a token is printed only by ``token --raw``.

stderr carries keyless's errors and warnings, never its audit events unless asked: those go to
the config's ``audit.sinks``, and to stderr as JSON lines only with ``--audit-stderr`` (so a
command's own stderr under ``keyless exec`` stays its own). The global options
(:data:`GLOBAL_OPTIONS`) are accepted before the command and after it (``keyless -q exec ...``
and ``keyless exec -q ...``); after ``exec``'s ``--`` every argument is the command's own. A
transient failure to get the first credentials is tried again with backoff (:mod:`.startup`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..config import config_json_schema
from ..errors import ConfigError, KeylessError
from .startup import load_identity, with_startup_retries

__all__ = ["COMMAND_MODULES", "FORWARDED_SIGNALS", "GLOBAL_OPTIONS", "build_parser",
           "exit_status", "main"]

#: Modules that add a subcommand: each has ``register(subparsers)``, which adds its parser and
#: sets ``handler=<callable(args) -> int>`` with ``parser.set_defaults``.
COMMAND_MODULES: tuple[str, ...] = ("keyless.cli.serve", "keyless.cli.devissuer",
                                    "keyless.cli.demo", "keyless.cli.doctor",
                                    "keyless.cli.audit")


#: The options every command accepts, before or after its name: (flags, help).
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-q", "--quiet"), "print errors only: no warnings, no retry notes, no audit events"),
    (("--audit-stderr",), "also print every audit event as a JSON line on stderr (without it "
                          "they go to the config's audit.sinks only)"),
)
_CONFIG_HELP = "the keyless config (YAML or JSON; `keyless schema` prints its schema)"
_TOKEN_DIR_HELP = "a private directory for the token files (default: a new temp dir)"


def _add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """Add :data:`GLOBAL_OPTIONS`. After the command their default is ``SUPPRESS``: a
    subcommand's parser then sets them only when given, never resetting the value the
    top-level parser read before the command."""
    default: Any = argparse.SUPPRESS if after_command else False
    for flags, help_text in GLOBAL_OPTIONS:
        parser.add_argument(*flags, action="store_true", default=default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The ``keyless`` parser: every command of :data:`COMMAND_MODULES` and of this module,
    each accepting :data:`GLOBAL_OPTIONS`."""
    parser = argparse.ArgumentParser(
        prog="keyless", description="Short-lived, per-worker cloud identity through OIDC "
                                    "workload identity federation.")
    _add_global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="`keyless COMMAND --help` for its options")

    token = sub.add_parser("token", help="fetch a subject token and print its claims")
    token.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP)
    token.add_argument("--audience", default=None,
                       help="the token's audience (default: the config's)")
    token.add_argument("--raw", action="store_true", help="print the JWT itself")

    env = sub.add_parser("env", help="write token files once and print the SDK variables")
    env.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP)
    env.add_argument("--format", choices=("sh", "json"), default="sh",
                     help="sh: export lines (default); json: one object")
    env.add_argument("--token-dir", default=None, metavar="DIR", help=_TOKEN_DIR_HELP)

    run = sub.add_parser("exec", help="run a command with token files + SDK variables kept "
                                      "fresh until it exits")
    run.add_argument("--config", required=True, metavar="FILE", help=_CONFIG_HELP)
    run.add_argument("--token-dir", default=None, metavar="DIR",
                     help=_TOKEN_DIR_HELP + "; what keyless wrote there is removed after")
    run.add_argument("--credential-endpoint", action="store_true",
                     help="give CMD a loopback AWS credential endpoint instead of web identity "
                          "(automatic when the AWS target differs per rank or worker: a "
                          "session policy, policy ARNs, {rank} {local_rank} {node} templates)")
    run.add_argument("--gcp-metadata", action="store_true",
                     help="also serve the GCP target's token on a loopback GCE-metadata-"
                          "compatible endpoint (GCE_METADATA_HOST) for consumers that know "
                          "only the metadata server")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                     help="the command and its arguments (after --, all of them are its own)")

    sub.add_parser("schema", help="print the config's JSON schema")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    for command_parser in {id(p): p for p in sub.choices.values()}.values():
        _add_global_options(command_parser, after_command=True)
    return parser


class _StderrFilter(logging.Filter):
    """What reaches stderr: audit events only with ``--audit-stderr``; other records at
    WARNING and up (ERROR and up with ``-q``)."""

    def __init__(self, quiet: bool, audit_stderr: bool) -> None:
        super().__init__()
        self.quiet = quiet
        self.audit_stderr = audit_stderr

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "keyless.audit" or record.name.startswith("keyless.audit."):
            return self.audit_stderr and not self.quiet
        return record.levelno >= (logging.ERROR if self.quiet else logging.WARNING)


def _configure_logging(quiet: bool, audit_stderr: bool) -> logging.Handler:
    """Print keyless warnings (errors only when ``quiet``) and, with ``audit_stderr``, audit
    events on stderr; returns the handler so that :func:`main` can remove it again."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_StderrFilter(quiet, audit_stderr))
    root = logging.getLogger("keyless")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    audit = logging.getLogger("keyless.audit")
    audit.setLevel(logging.INFO if audit_stderr and not quiet else logging.WARNING)
    return handler


def _cmd_token(args: argparse.Namespace) -> int:
    identity = load_identity(args)
    token = with_startup_retries(identity, "keyless token",
                                 lambda: identity.subject_token(args.audience))
    if args.raw:
        print(token.token.reveal())
    else:
        print(json.dumps(token.claims, indent=2, sort_keys=True))
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from ..delivery import TokenDirectory, TokenFileKeeper, sdk_environment

    identity = load_identity(args)
    directory = TokenDirectory(args.token_dir or identity.config.delivery.token_dir)
    keeper = TokenFileKeeper(identity, directory)
    with_startup_retries(identity, "keyless env", keeper.write_all)
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
    identity = load_identity(args)
    audit = identity.audit  # built now: a missing audit extra fails before the child starts
    received: list[int] = []
    with contextlib.ExitStack() as stack:
        # entering fetches the first credentials; a failed entry has cleaned up after itself
        child_env = with_startup_retries(identity, "keyless exec", lambda: stack.enter_context(
            child_environment(identity, token_dir=args.token_dir,
                              credential_endpoint=args.credential_endpoint,
                              gcp_metadata=args.gcp_metadata, expect_start=True)))
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
    args = build_parser().parse_args(argv)
    log_handler = _configure_logging(args.quiet, args.audit_stderr)
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
