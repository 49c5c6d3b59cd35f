"""A local federation for quickstarts: dev OIDC issuer + moto S3 behind the verifying STS front.

``python -m keyless.testing.local_federation COMMAND --dir DIR`` (``pip install
'keyless[aws,testing]'``; loopback only, never for production):

- ``start``: run ``serve`` in the background (its own session, output in ``DIR/federation.log``),
  wait until it is ready, print what runs where, and exit 0 (1 when it did not come up; the
  log's tail is printed). Idempotent: a federation already serving ``DIR`` is reused.
- ``serve``: the same in the foreground until SIGINT/SIGTERM. It runs
  :class:`~keyless.devissuer.DevIssuer` with one client, ``ray-trainer`` (tokens: ``sub =
  ray-trainer``, ``aud = sts.amazonaws.com``), and :class:`~keyless.testing.aws.AwsStack` with
  the issuer registered as an IAM OIDC provider, a role ``ray-trainer`` that trusts exactly those
  tokens and may read ``s3://keyless-quickstart/shards/*``, and an IAM user allowed only to put
  objects in that bucket (for ``put``). It logs every STS session the front issues (session
  name, sub, role: like CloudTrail) and, when stopped, deletes the files holding secrets.
- ``put SRC s3://BUCKET/PREFIX``: upload a file, or every file under a directory (keys relative
  to it), as the upload user.
- ``stop``: SIGTERM the ``serve`` process named in ``DIR/federation.json`` (after checking that
  the PID is still that process), wait until it has exited, print the sessions it issued.

Files in ``DIR`` (created 0700; each written atomically, 0600): ``federation.json``
(endpoints, role ARN, bucket, the PIDs of ``serve`` and of its moto server; no secret),
``idp.yaml`` (a keyless config whose ``client_credentials`` source holds the client secret; for
``keyless token``/``keyless doctor`` and for a ``command`` source on a Ray node),
``uploader.json`` (the upload user's moto access key), ``federation.log``. No secret is ever
printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from ..delivery.files import write_private_file
from ..dev.issuer import DevClient, DevIssuer
from ..dev.process import terminate
from ..errors import ConfigError, KeylessError

__all__ = ["AUDIENCE", "BUCKET", "CLIENT_ID", "ROLE_NAME", "main", "read_state"]

AUDIENCE = "sts.amazonaws.com"
BUCKET = "keyless-quickstart"
CLIENT_ID = "ray-trainer"
ROLE_NAME = "ray-trainer"
_UPLOADER = "quickstart-uploader"
_MODULE = "keyless.testing.local_federation"
_STATE, _IDP, _UPLOADER_FILE, _LOG = "federation.json", "idp.yaml", "uploader.json", \
    "federation.log"
_COMPONENT = "local-federation"


def read_state(directory: Path) -> dict[str, Any] | None:
    """``DIR/federation.json`` if a federation is serving there (its process alive), else None."""
    try:
        state: dict[str, Any] = json.loads((directory / _STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if _is_ours(int(state.get("pid", 0))) else None


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) ``serve`` process of this module."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and _MODULE.encode() in cmdline and b"serve" in cmdline


# ---------------------------------------------------------------------------------- serve
def _permissions(bucket: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{bucket}/shards/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}]}


def _uploader(stack: Any, bucket: str) -> dict[str, str]:
    iam = stack.client("iam")
    iam.create_user(UserName=_UPLOADER)
    iam.put_user_policy(UserName=_UPLOADER, PolicyName="put", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    key = iam.create_access_key(UserName=_UPLOADER)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def _log_sessions(stack: Any, seen: int) -> int:
    """Print the sessions the STS front issued since the ``seen``-th; returns the new count."""
    accepted = stack.front.accepted
    for entry in accepted[seen:]:
        print(f"sts: AssumeRoleWithWebIdentity session={entry['session_name']} "
              f"sub={entry['sub']} role={entry['role']} token sha256={entry['token_sha256']} "
              f"session policy={'yes' if entry['session_policy'] else 'no'}", flush=True)
    return len(accepted)


def serve(directory: Path, *, token_seconds: float = 300.0,
          stop: threading.Event | None = None) -> int:
    """Run the federation for ``directory`` until ``stop`` is set (or SIGINT/SIGTERM)."""
    from .aws import AwsStack

    stop = stop or threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    client = DevClient(CLIENT_ID, secrets.token_urlsafe(24), subject=CLIENT_ID, audience=AUDIENCE)
    written = [directory / name for name in (_STATE, _IDP, _UPLOADER_FILE)]
    try:
        with DevIssuer([client], lifetime_seconds=token_seconds) as issuer, \
                AwsStack(bucket=BUCKET) as stack:
            stack.register_oidc_provider(issuer.issuer, [AUDIENCE])
            role_arn = stack.create_role(ROLE_NAME, issuer_url=issuer.issuer, aud=AUDIENCE,
                                         sub=CLIENT_ID, permissions=_permissions(BUCKET))
            write_private_file(directory / _UPLOADER_FILE,
                               json.dumps(_uploader(stack, BUCKET)))
            idp = {"source": {"type": "client_credentials", "token_url": issuer.token_endpoint,
                              "client_id": client.client_id,
                              "client_secret": client.client_secret, "audience": AUDIENCE},
                   "target": {"aws": {"role_arn": role_arn, "region": stack.region,
                                      "sts_endpoint_url": stack.sts_url}},
                   "allow_insecure_http": True}
            write_private_file(directory / _IDP, yaml.safe_dump(idp, sort_keys=False))
            state = {"pid": os.getpid(), "issuer": issuer.issuer, "client_id": CLIENT_ID,
                     "audience": AUDIENCE, "sts_url": stack.sts_url, "s3_url": stack.s3_url,
                     "region": stack.region, "bucket": BUCKET, "role_arn": role_arn,
                     "moto_pid": stack.moto.pid,
                     "idp_config": str((directory / _IDP).resolve())}
            write_private_file(directory / _STATE, json.dumps(state, indent=2) + "\n")
            print(f"{_COMPONENT}: ready (pid {os.getpid()}): issuer {issuer.issuer}, STS front "
                  f"{stack.sts_url}, S3 {stack.s3_url}, role {role_arn}", flush=True)
            seen = 0
            while not stop.wait(1.0):
                seen = _log_sessions(stack, seen)
            _log_sessions(stack, seen)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    print(f"{_COMPONENT}: stopped", flush=True)
    return 0


# ---------------------------------------------------------------------------------- start
def _describe(state: dict[str, Any], directory: Path) -> str:
    d = str(directory)
    return "\n".join([
        f"local federation running (pid {state['pid']}); its files are in {d}/",
        f"  dev OIDC issuer  {state['issuer']}  client {state['client_id']}: tokens with "
        f"sub={state['client_id']} aud={state['audience']}",
        f"  STS (verifying)  {state['sts_url']}  role {state['role_arn']} trusts exactly "
        "those tokens",
        f"  S3 (moto)        {state['s3_url']}  bucket s3://{state['bucket']}; the role may "
        "read shards/*",
        f"  keyless config   {d}/{_IDP} (mode 0600: the only copy of the client secret)",
        f"  STS sessions log {d}/{_LOG}",
        f"stop it with: python -m {_MODULE} stop --dir {d}",
    ])


def start(directory: Path, *, token_seconds: float, timeout: float) -> int:
    """Start ``serve`` detached and wait (at most ``timeout`` s) until it is ready."""
    running = read_state(directory)
    if running is not None:
        print(_describe(running, directory))
        return 0
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / _STATE).unlink(missing_ok=True)
    log_path = directory / _LOG
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "serve", "--dir", str(directory),
             "--token-seconds", str(token_seconds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            state = read_state(directory)
            if state is not None and state.get("pid") == proc.pid:
                print(_describe(state, directory))
                return 0
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling a child for readiness
    except BaseException:  # Ctrl-C while waiting: do not leave it running unseen
        terminate(proc, 30)
        raise
    terminate(proc, 30)
    tail = log_path.read_text(errors="replace")[-2000:]
    print(f"{_COMPONENT}: did not come up within {timeout:.0f} s (exit {proc.returncode}); "
          f"log tail:\n{tail}", file=sys.stderr)
    return 1


def stop(directory: Path, *, timeout: float) -> int:
    """SIGTERM the federation serving ``directory`` and wait until it has exited."""
    state = read_state(directory)
    if state is None:
        print(f"{_COMPONENT}: nothing is running for {directory}")
        return 0
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_ours(pid):
        if time.monotonic() > deadline:
            print(f"{_COMPONENT}: pid {pid} did not stop within {timeout:.0f} s; it was sent "
                  "SIGKILL", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            return 1
        time.sleep(0.2)  # polling a process that is not our child
    sessions = [line for line in (directory / _LOG).read_text(errors="replace").splitlines()
                if line.startswith("sts: ")]
    print(f"local federation stopped (pid {pid}); the STS front issued {len(sessions)} "
          "sessions:")
    for line in sessions:
        print("  " + line.removeprefix("sts: "))
    return 0


# ---------------------------------------------------------------------------------- put
def put(directory: Path, source: Path, url: str) -> int:
    """Upload ``source`` (a file, or every file under a directory) to ``url``."""
    import boto3
    from botocore.config import Config

    state = read_state(directory)
    if state is None:
        raise ConfigError(f"{_COMPONENT}: no federation is running for {directory}; fix: "
                          f"python -m {_MODULE} start --dir {directory}", field="dir")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise ConfigError(f"{_COMPONENT}: put wants s3://BUCKET[/PREFIX], not {url!r}",
                          field="url")
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        keys = [p.relative_to(source).as_posix() for p in files]
    elif source.is_file():
        files, keys = [source], [source.name]
    else:
        raise ConfigError(f"{_COMPONENT}: {source} is neither a file nor a directory",
                          field="source")
    creds = json.loads((directory / _UPLOADER_FILE).read_text(encoding="utf-8"))
    s3 = boto3.session.Session().client(
        "s3", region_name=state["region"], endpoint_url=state["s3_url"],
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2}))
    for path, key in zip(files, keys, strict=True):
        full = f"{prefix.rstrip('/')}/{key}" if prefix else key
        body = path.read_bytes()
        s3.put_object(Bucket=bucket, Key=full, Body=body)
        print(f"uploaded {path} -> s3://{bucket}/{full} ({len(body)} bytes)")
    return 0


# ---------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {_MODULE}",
        description="a dev OIDC issuer and moto S3 behind a verifying STS front, on loopback, "
                    "for quickstarts (never for production)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("start", "start in the background and wait until ready"),
                       ("serve", "run in the foreground until interrupted"),
                       ("stop", "stop the federation serving --dir"),
                       ("put", "upload a file or a directory to the local S3")):
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("--dir", required=True, type=Path,
                             help="where the federation's files are written")
        if name in ("start", "serve"):
            command.add_argument("--token-seconds", type=float, default=300.0,
                                 help="lifetime of the dev issuer's tokens (default 300)")
        if name in ("start", "stop"):
            command.add_argument("--timeout", type=float, default=180.0,
                                 help="seconds to wait (default 180)")
        if name == "put":
            command.add_argument("source", type=Path, help="a file or a directory")
            command.add_argument("url", help="s3://BUCKET[/PREFIX]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2: bad usage)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            return start(args.dir, token_seconds=args.token_seconds, timeout=args.timeout)
        if args.command == "serve":
            return serve(args.dir, token_seconds=args.token_seconds)
        if args.command == "stop":
            return stop(args.dir, timeout=args.timeout)
        return put(args.dir, args.source, args.url)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeylessError as exc:
        print(str(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
