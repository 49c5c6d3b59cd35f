"""``keyless demo``: the whole federation on this machine, no cloud account.

What runs (all on loopback, all stopped at the end by PID or context manager):

1. the dev OIDC issuer (:class:`~keyless.devissuer.DevIssuer`): one client per worker, whose
   tokens say ``sub = job/<job>/rank/<r>`` and live ``token_seconds``;
2. moto (STS + IAM + S3) behind the verifying STS front (:class:`keyless.testing.AwsStack`),
   sessions capped at ``session_seconds``; the issuer is registered as an IAM OIDC provider
   and a role trusts ``job/<job>/rank/*`` tokens with ``aud = sts.amazonaws.com``;
3. a small sharded dataset in ``s3://keyless-demo/shards/<rank>/``;
4. ``workers`` separate processes (``python -m keyless.dev.demo_worker``), each with
   ``Keyless(config, context=WorkerContext(job_id, rank))``: its own subject token, its own STS
   session named after its rank, and a session policy template confining it to
   ``shards/{rank}/*``. Each reads its shard in a loop while credentials roll over, and once
   tries the next rank's shard, which must be denied.

It prints a live view (one line per event), then the audit trail (keyless audit events from
each worker's JSONL sink, and the STS front's record of who read what), writes the same trail
as the timeline page ``keyless audit --format html`` renders (``html_path``, default
``<temp dir>/keyless-<job>-audit.html``) and prints its path, then a summary. Exit 0
only if every worker read its shard, rolled over at least once and was denied the other
shard. No token, client secret or secret key is ever printed.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..audit import redact
from ..errors import ConfigError, KeylessError
from .issuer import DevClient, DevIssuer
from .process import terminate

__all__ = ["DemoOptions", "WorkerResult", "run_demo"]

BUCKET = "keyless-demo"
AUDIENCE = "sts.amazonaws.com"


@dataclass(frozen=True)
class DemoOptions:
    """Knobs of the demo (the defaults finish in about 25 s on a 2-core machine)."""

    workers: int = 3
    seconds: float = 12.0
    token_seconds: float = 10.0
    session_seconds: float = 6.0
    objects_per_shard: int = 3
    #: where the audit timeline page goes (None: ``<temp dir>/keyless-<job>-audit.html``)
    html_path: str | None = None

    def check(self) -> None:
        if not 1 <= self.workers <= 8:
            raise ConfigError("demo: --workers must be between 1 and 8", field="workers")
        if not 4 <= self.seconds <= 120:
            raise ConfigError("demo: --seconds must be between 4 and 120", field="seconds")
        if self.session_seconds >= self.seconds:
            raise ConfigError("demo: sessions must be shorter than the run, or nothing rolls "
                              "over; fix: lower --session-seconds", field="session_seconds")


@dataclass
class WorkerResult:
    """What one worker reported."""

    rank: int
    session_name: str = ""
    sub: str = ""
    reads: int = 0
    failures: int = 0
    credentials: int = 0
    denied: str | None = None
    cross_read_allowed: bool = False
    done: bool = False
    exit_code: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.done and self.exit_code == 0 and self.reads > 0 and self.failures == 0
                and self.credentials >= 2 and self.denied == "AccessDenied"
                and not self.cross_read_allowed)


class _Printer:
    """Thread-safe line output with a clock relative to the demo's start."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self._out(redact(text))

    def event(self, rank: int | None, text: str) -> None:
        who = f"rank {rank}" if rank is not None else "demo  "
        self.line(f"[{time.monotonic() - self._start:5.1f}s] {who}  {text}")


def _policy(bucket: str) -> dict[str, Any]:
    """The role's permissions (every shard) and, as a template, each session's (its own)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/shards/*"}]}


def _session_policy(bucket: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/shards/{{rank}}/*"}]}


def _write_private(path: Path, data: Any) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file)
    return path


def _worker_env(aws_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "KEYLESS_")) and k not in ("RANK", "LOCAL_RANK")}
    env.update(aws_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _describe(rank: int, event: dict[str, Any], result: WorkerResult,
              printer: _Printer) -> None:
    kind = event.get("event")
    if kind == "start":
        result.session_name = str(event.get("session_name", ""))
        printer.event(rank, f"started (pid {event.get('pid')}), STS session name "
                            f"{result.session_name}")
    elif kind == "audit":
        sub = event.get("sub") or ""
        result.sub = result.sub or str(sub)
        what = {"issue": "subject token issued", "refresh": "subject token refreshed",
                "exchange": "STS AssumeRoleWithWebIdentity ok",
                "failure": "FAILURE"}.get(str(event.get("kind")), str(event.get("kind")))
        detail = f"sub={sub} aud={','.join(event.get('aud') or [])} " \
                 f"token sha256={event.get('token_sha256')}"
        if event.get("kind") == "exchange":
            detail = f"session {event.get('session_name')} for sub={sub}"
        if event.get("error"):
            detail += f" error: {event.get('error')}"
        printer.event(rank, f"audit  {what}: {detail}")
    elif kind == "credentials":
        result.credentials = int(event.get("n", 0))
        label = "first credentials" if result.credentials == 1 else \
            f"ROLLOVER #{result.credentials - 1}: new credentials"
        printer.event(rank, f"{label} in use (access key sha256 {event.get('key')}), "
                            f"{event.get('reads')} reads so far")
    elif kind == "reads":
        printer.event(rank, f"reads: {event.get('reads')} objects from shards/{rank}/")
    elif kind == "denied":
        result.denied = str(event.get("code"))
        printer.event(rank, f"cross-shard read of s3://{BUCKET}/{event.get('key')} -> "
                            f"{result.denied} (as it should be)")
    elif kind == "cross_read_allowed":
        result.cross_read_allowed = True
        printer.event(rank, f"cross-shard read of {event.get('key')} was ALLOWED (wrong)")
    elif kind == "read_failed":
        result.failures += 1
        printer.event(rank, f"read of {event.get('key')} FAILED: {event.get('code')}")
    elif kind == "done":
        result.done = True
        result.reads = int(event.get("reads", 0))
        printer.event(rank, f"done: {result.reads} reads, {event.get('rollovers')} rollovers")
    elif kind == "error":
        result.errors.append(str(event.get("message")))
        printer.event(rank, f"ERROR: {event.get('message')}")


def _pump(rank: int, stream: IO[str], events: queue.Queue[tuple[int, dict[str, Any]]]) -> None:
    for raw in stream:
        try:
            event = json.loads(raw)
        except ValueError:
            event = {"event": "error", "message": raw.strip()[:300]}
        events.put((rank, event))
    events.put((rank, {"event": "_eof"}))


def _audit_trail(directory: Path, workers: int, printer: _Printer) -> None:
    events: list[dict[str, Any]] = []
    for rank in range(workers):
        path = directory / f"audit-{rank}.jsonl"
        if path.exists():
            events += [json.loads(line) for line in path.read_text().splitlines() if line]
    events.sort(key=lambda e: str(e.get("time")))
    printer.line("")
    printer.line(f"== audit trail: {len(events)} keyless audit events (JSONL sinks, one per "
                 "worker; fingerprints, never tokens) ==")
    for e in events:
        ctx = e.get("context") or {}
        line = (f"{e.get('time')}  rank {ctx.get('rank', '?')}  {e.get('kind'):<8} "
                f"{e.get('outcome'):<5} {e.get('target'):<5} sub={e.get('sub')} "
                f"token={e.get('token_sha256')} exp={e.get('exp')}")
        if e.get("session_name"):
            line += f" session={e.get('session_name')} role={e.get('principal')}"
        if e.get("error"):
            line += f" error={e.get('error')}"
        printer.line(line)


def _timeline_page(directory: Path, workers: int, path: Path, printer: _Printer) -> None:
    """Write the workers' audit trail as the ``keyless audit --format html`` page to ``path``
    and print where it is (a page that cannot be written is said, not fatal)."""
    from ..audit.html import render_html
    from ..audit.report import build_report, read_events

    files = [f for r in range(workers) if (f := directory / f"audit-{r}.jsonl").exists()]
    events, skipped = read_events(files)
    printer.line("")
    try:
        path.write_text(render_html(build_report(events, skipped_lines=skipped),
                                    title="keyless demo: who held which identity, when"),
                        encoding="utf-8")
    except OSError as exc:
        printer.line(f"== audit timeline page: not written to {path} ({exc.strerror}) ==")
        return
    printer.line(f"== audit timeline page: {path} ==")
    printer.line("   open it in a browser; `keyless audit --format html FILE.jsonl` draws the same "
                 "page from any audit trail")


def _front_record(stack: Any, printer: _Printer) -> None:
    accepted = stack.front.accepted
    printer.line("")
    printer.line(f"== STS front (like CloudTrail): {len(accepted)} sessions issued ==")
    for a in accepted:
        printer.line(f"AssumeRoleWithWebIdentity  session={a['session_name']}  sub={a['sub']}  "
                     f"aud={a['aud']}  token sha256={a['token_sha256']}  "
                     f"session policy={'yes' if a['session_policy'] else 'no'}  "
                     f"expires {time.strftime('%H:%M:%S', time.localtime(a['expiration']))}")
    reads: dict[str, dict[str, int]] = {}
    for f in stack.front.forwarded:
        if f["service"] == "s3":
            status = f.get("status")
            label = f["path"] + ("" if status == 200 else
                                 f" (HTTP {status}{', denied' if status == 403 else ''})")
            per = reads.setdefault(f["session_name"], {})
            per[label] = per.get(label, 0) + 1
    printer.line("S3 requests by session (object: count):")
    for name, paths in sorted(reads.items()):
        listing = ", ".join(f"{p}: {n}" for p, n in sorted(paths.items()))
        printer.line(f"  {name}: {listing}")
    if stack.front.expired_uses:
        printer.line(f"EXPIRED credentials used {len(stack.front.expired_uses)} times")


def run_demo(options: DemoOptions | None = None,
             out: Callable[[str], None] = print) -> int:
    """Run the demo; returns the exit status (0: every check held)."""
    try:
        from ..testing.aws import AwsStack
    except ImportError as exc:
        raise KeylessError(f"demo: {exc.name or 'a dependency'} is not installed; fix: pip "
                           "install 'keyless[aws,demo]' (boto3 and moto[server])") from None
    options = options or DemoOptions()
    options.check()
    printer = _Printer(lambda text: out(text))
    job_id = f"demo-{secrets.token_hex(3)}"
    results = [WorkerResult(rank) for rank in range(options.workers)]
    clients = [DevClient(f"worker-{r}", secrets.token_urlsafe(24),
                         subject=f"job/{job_id}/rank/{r}") for r in range(options.workers)]
    printer.event(None, f"job {job_id}: {options.workers} workers, {options.token_seconds:.0f} s "
                        f"tokens, {options.session_seconds:.0f} s AWS sessions, "
                        f"~{options.seconds:.0f} s of reading")
    with tempfile.TemporaryDirectory(prefix="keyless-demo-") as tmp, \
            DevIssuer(clients, lifetime_seconds=options.token_seconds) as issuer:
        directory = Path(tmp)
        printer.event(None, f"dev OIDC issuer at {issuer.issuer} (keys made for this run)")
        printer.event(None, "starting moto (STS, IAM, S3) behind the verifying STS front ...")
        with AwsStack(bucket=BUCKET, max_session_seconds=options.session_seconds) as stack:
            printer.event(None, f"STS front at {stack.sts_url}, moto at {stack.moto_url} "
                                f"(pid {stack.moto.pid})")
            stack.register_oidc_provider(issuer.issuer, [AUDIENCE])
            role_arn = stack.create_role("keyless-demo-trainer", issuer_url=issuer.issuer,
                                         aud=AUDIENCE, sub=f"job/{job_id}/rank/*",
                                         permissions=_policy(BUCKET))
            printer.event(None, f"role {role_arn} trusts sub=job/{job_id}/rank/* "
                                f"aud={AUDIENCE}; may read s3://{BUCKET}/shards/*")
            for r in range(options.workers):
                for i in range(options.objects_per_shard):
                    stack.put_object(BUCKET, f"shards/{r}/part-{i}.txt",
                                     f"rank {r} part {i}\n" * 64)
            printer.event(None, f"uploaded {options.workers} shards x "
                                f"{options.objects_per_shard} objects to s3://{BUCKET}/shards/")
            specs = []
            for r, client in enumerate(clients):
                config = {
                    "source": {"type": "client_credentials", "token_url": issuer.token_endpoint,
                               "client_id": client.client_id,
                               "client_secret": client.client_secret},
                    "target": {"aws": {
                        "role_arn": role_arn, "region": stack.region,
                        "sts_endpoint_url": stack.sts_url, "duration_seconds": 900,
                        "session_name": "{job_id}-rank-{rank}",
                        "session_policy": _session_policy(BUCKET)}},
                    "refresh": {"at_fraction": 0.5, "jitter_fraction": 0.1,
                                "initial_backoff_seconds": 0.2, "max_backoff_seconds": 1.0},
                    "audit": {"sinks": ["jsonl"],
                              "jsonl_path": str(directory / f"audit-{r}.jsonl")},
                    "allow_insecure_http": True,
                }
                config_path = _write_private(directory / f"worker-{r}.keyless.json", config)
                specs.append(_write_private(directory / f"worker-{r}.spec.json", {
                    "config": str(config_path), "job_id": job_id, "rank": r,
                    "bucket": BUCKET, "s3_url": stack.s3_url,
                    "keys": [f"shards/{r}/part-{i}.txt"
                             for i in range(options.objects_per_shard)],
                    "forbidden_key": f"shards/{(r + 1) % options.workers}/part-0.txt"
                    if options.workers > 1 else f"shards/{r + 1}/part-0.txt",
                    "seconds": options.seconds, "max_seconds": options.seconds * 3}))
            if options.workers == 1:
                stack.put_object(BUCKET, "shards/1/part-0.txt", "rank 1 part 0\n")
            _run_workers(specs, results, directory, stack.env(), options, printer)
            _audit_trail(directory, options.workers, printer)
            _timeline_page(directory, options.workers, Path(
                options.html_path or Path(tempfile.gettempdir()) / f"keyless-{job_id}-audit.html"),
                printer)
            _front_record(stack, printer)
            expired = len(stack.front.expired_uses)
    return _summary(results, expired, printer)


def _run_workers(specs: list[Path], results: list[WorkerResult], directory: Path,
                 aws_env: dict[str, str], options: DemoOptions, printer: _Printer) -> None:
    events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
    env = _worker_env(aws_env)
    procs: list[subprocess.Popen[str]] = []
    try:
        for rank, spec in enumerate(specs):
            stderr = open(directory / f"worker-{rank}.stderr", "w")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, "-m", "keyless.dev.demo_worker", str(spec)],
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            stderr.close()
            procs.append(proc)
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(rank, proc.stdout, events),
                             daemon=True).start()
        open_streams = len(procs)
        deadline = time.monotonic() + options.seconds * 3 + 60
        while open_streams and time.monotonic() < deadline:
            try:
                rank, event = events.get(timeout=1.0)
            except queue.Empty:
                continue
            if event.get("event") == "_eof":
                open_streams -= 1
                continue
            _describe(rank, event, results[rank], printer)
        for rank, proc in enumerate(procs):
            try:
                results[rank].exit_code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                results[rank].errors.append("did not finish in time")
    finally:
        for proc in procs:  # stop by PID whatever happened
            terminate(proc)
    for rank, result in enumerate(results):
        if result.exit_code != 0:
            tail = (directory / f"worker-{rank}.stderr").read_text(errors="replace")[-1500:]
            result.errors.append(f"exit {result.exit_code}: {tail.strip()}")


def _summary(results: list[WorkerResult], expired: int, printer: _Printer) -> int:
    printer.line("")
    printer.line("== summary ==")
    for r in results:
        rollovers = max(r.credentials - 1, 0)
        verdict = "OK  " if r.ok else "FAIL"
        printer.line(f"{verdict} rank {r.rank}: sub={r.sub} session={r.session_name} "
                     f"reads={r.reads} rollovers={rollovers} cross-shard read={r.denied or '-'}")
        for error in r.errors:
            printer.line(f"     {error}")
    ok = all(r.ok for r in results) and expired == 0
    if expired:
        printer.line(f"FAIL: expired credentials were used {expired} times")
    printer.line("demo passed: every worker had its own identity, read its shard, rolled over "
                 "and was denied the other shard" if ok else "demo FAILED (see above)")
    return 0 if ok else 1
