"""One worker of ``keyless demo`` (run as ``python -m keyless.dev.demo_worker SPEC.json``).

The spec (written by :mod:`keyless.dev.demo`, 0600) names the keyless config file, the worker's
``job_id`` and ``rank``, the bucket and S3 endpoint, its shard's object keys, another rank's
object it must NOT be able to read, and how long to run. The worker builds
``Keyless(config, context=WorkerContext(job_id, rank))``, reads its shard in a loop through a
self-refreshing boto3 session, and prints one JSON line per event on stdout:

- ``audit``: a keyless audit event (kind, outcome, sub, aud, session name, token fingerprint);
- ``credentials``: a new AWS credential set is in use (``n``: how many so far, ``key``: the
  sha256 prefix of the access key id, never the key itself);
- ``reads``: progress (objects read so far);
- ``denied`` / ``cross_read_allowed``: the one attempt to read the other rank's object;
- ``read_failed``: an own-shard read failed (error code only);
- ``done``: totals.

It stops once ``seconds`` have passed, it has rolled over at least once and the cross-shard
attempt is made (or at ``max_seconds`` whatever happened). Exit status 0 means the loop ran;
the demo judges the events. Nothing printed holds a token or a secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..audit import AuditEvent, AuditLog
from ..context import WorkerContext
from ..errors import KeylessError
from ..identity import Keyless

__all__ = ["main"]

_print_lock = threading.Lock()


def _emit(**event: Any) -> None:
    line = json.dumps(event, sort_keys=True)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _StdoutSink:
    """Audit sink that reports each event to the demo as an ``audit`` line."""

    def emit(self, event: AuditEvent) -> None:
        data = event.to_dict()
        _emit(event="audit", kind=data["kind"], outcome=data["outcome"], sub=data["sub"],
              aud=data["aud"], session_name=data["session_name"], target=data["target"],
              token_sha256=data["token_sha256"], exp=data["exp"], error=data["error"],
              t=event.time)


def _fingerprint(access_key: str | None) -> str:
    return hashlib.sha256((access_key or "").encode()).hexdigest()[:8]


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", type(exc).__name__))
    return type(exc).__name__


def run(spec: dict[str, Any]) -> int:
    """Run the worker loop described by ``spec`` (see the module docstring)."""
    from botocore.config import Config
    from botocore.exceptions import ClientError

    context = WorkerContext(job_id=spec["job_id"], rank=str(spec["rank"]),
                            pid=str(os.getpid()), node="localhost")
    probe = Keyless(spec["config"], context=context)
    audit = AuditLog([*AuditLog.from_spec(probe.config.audit).sinks, _StdoutSink()])
    identity = Keyless(probe.config, context=context, audit=audit)
    session = identity.boto3_session()
    _emit(event="start", session_name=identity.aws().session_name, pid=os.getpid())
    s3 = session.client("s3", endpoint_url=spec["s3_url"],
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 2}))
    credentials = session.get_credentials()
    if credentials is None:  # the keyless provider always answers; this is for the types
        raise KeylessError("demo worker: the boto3 session has no credentials")
    bucket, keys = spec["bucket"], list(spec["keys"])
    seen: list[str] = []
    reads = failures = 0
    crossed: str | None = None
    started = time.monotonic()
    last_report = 0.0
    while True:
        for key in keys:
            try:
                s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                reads += 1
            except ClientError as exc:
                failures += 1
                _emit(event="read_failed", key=key, code=_error_code(exc))
            fingerprint = _fingerprint(credentials.get_frozen_credentials().access_key)
            if fingerprint not in seen:
                seen.append(fingerprint)
                _emit(event="credentials", n=len(seen), key=fingerprint, reads=reads)
        elapsed = time.monotonic() - started
        if crossed is None and elapsed >= spec["seconds"] / 3:
            try:
                s3.get_object(Bucket=bucket, Key=spec["forbidden_key"])["Body"].read()
                crossed = "allowed"
                _emit(event="cross_read_allowed", key=spec["forbidden_key"])
            except ClientError as exc:
                crossed = _error_code(exc)
                _emit(event="denied", key=spec["forbidden_key"], code=crossed)
        if elapsed - last_report >= 2.0:
            last_report = elapsed
            _emit(event="reads", reads=reads, credentials=len(seen))
        done = elapsed >= spec["seconds"] and len(seen) >= 2 and crossed is not None
        if done or elapsed >= spec["max_seconds"]:
            break
        time.sleep(spec.get("pause_seconds", 0.4))
    _emit(event="done", reads=reads, failures=failures, rollovers=max(len(seen) - 1, 0),
          cross_read=crossed, objects=len(keys))
    audit.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m keyless.dev.demo_worker SPEC.json", file=sys.stderr)
        return 2
    with open(args[0]) as file:
        spec = json.load(file)
    try:
        return run(spec)
    except KeylessError as exc:  # secret-free by contract
        _emit(event="error", message=exc.message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
