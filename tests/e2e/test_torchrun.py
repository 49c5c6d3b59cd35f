"""Per-rank identity for ranks that real ``torchrun`` starts (issue 16).

``keyless exec --config F -- torchrun ...`` (keyless outside the launcher): the config's
session name and session policy are per rank, so keyless serves AWS through the loopback
credential endpoint, which tells the callers apart by their own process (``RANK`` in each
rank's environment). Each rank's plain boto3 and pyarrow ``S3FileSystem()`` read its own shard
across rollovers and are denied the other rank's; the verifying STS front over moto records
one session name per rank. Also: a rank restarted by ``--max-restarts`` gets its own
credentials again, SIGTERM ends every rank and keyless exits 143 leaving no file behind, a
process outside the launch (or of another OS user) gets 403, and long names stay distinct.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Federation, LeakGuard

pytestmark = pytest.mark.e2e

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

#: A training script that knows nothing of keyless: gloo all-reduces over values read from
#: S3 with plain boto3 and pyarrow, using whatever credentials the SDKs' default chains find.
TRAIN = r"""
import json, os, signal, sys, time
import boto3, torch, torch.distributed as dist
import pyarrow.fs as pafs
from botocore.config import Config

bucket, prefix, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mode = sys.argv[5] if len(sys.argv) > 5 else "train"
rank = int(os.environ["RANK"])
restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))
if mode == "die-once" and restarts == 0:
    if rank == 1:  # reads as itself, then dies: torchrun restarts the group
        s3.get_object(Bucket=bucket, Key=f"{prefix}shards/1/part")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)  # rank 0 publishes nothing in the store this attempt (no stale address)
dist.init_process_group("gloo")
world = dist.get_world_size()
mine, theirs = f"{prefix}shards/{rank}/part", f"{prefix}shards/{(rank + 1) % world}/part"
endpoint = os.environ["AWS_ENDPOINT_URL_S3"].split("://", 1)[1]
fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")
if mode == "hang":
    with open(os.path.join(out, f"ready-{rank}.json"), "w") as f:
        json.dump({"pid": os.getpid(), "url": os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
                   "token_file": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]}, f)
    while True:
        time.sleep(1)
reads, arrow_reads, failures, keys, total = 0, 0, [], set(), 0.0
for step in range(steps):
    value = 0.0
    try:
        body = s3.get_object(Bucket=bucket, Key=mine)["Body"].read()
        with fs.open_input_stream(f"{bucket}/{mine}") as stream:
            assert stream.read() == body
        arrow_reads += 1
        value = float(body.decode())
        reads += 1
        keys.add(boto3.Session().get_credentials().get_frozen_credentials().access_key)
    except Exception as exc:
        failures.append(type(exc).__name__ + ": " + str(exc)[:200])
    summed = torch.tensor([value])
    dist.all_reduce(summed)
    total = float(summed.item())
    time.sleep(0.4)
try:
    s3.get_object(Bucket=bucket, Key=theirs)
    denied = "read"
except Exception as exc:
    denied = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
try:
    with fs.open_input_stream(f"{bucket}/{theirs}") as stream:
        stream.read()
    arrow_denied = "read"
except OSError as exc:
    arrow_denied = "denied" if "ACCESS_DENIED" in str(exc) or "AccessDenied" in str(exc) \
        else str(exc)[:200]
arn = boto3.client("sts").get_caller_identity()["Arn"]
dist.barrier()
dist.destroy_process_group()
with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
    json.dump({"rank": rank, "restarts": restarts, "reads": reads, "arrow_reads": arrow_reads,
               "failures": failures, "keys": len(keys), "sum": total, "denied": denied,
               "arrow_denied": arrow_denied, "arn": arn}, f)
"""


def _tree(root: int) -> list[int]:
    """``root`` and every process below it, as /proc tells now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc``, and on the way out (a failed assertion included) every process it left."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for pid in reversed(_tree(proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _shards(federation: Federation, ranks: int) -> None:
    for rank in range(ranks):
        federation.aws.put_object(federation.aws.bucket,
                                  f"{federation.prefix}shards/{rank}/part", str(rank + 1))


def _spec(federation: Federation, tmp_path: Path, session_name: str) -> Path:
    aws = federation.aws
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{aws.bucket}/{federation.prefix}shards/{{rank}}/*"]}]}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(federation.config(
        "shortlived", session_name=session_name, session_policy=policy)))
    return spec


def _environment(federation: Federation, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, **federation.aws.env(), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "RANK": "0", "LOCAL_RANK": "0"}  # a stray launcher rank: never any rank's identity
    env.pop("AWS_ENDPOINT_URL_STS")  # keyless sets nothing for STS: the child asks moto's
    env["AWS_ENDPOINT_URL_STS"] = federation.aws.sts_url
    return env


def _exec_torchrun(spec: Path, tmp_path: Path, env: dict[str, str], *torchrun: str,
                   mode: str = "train", steps: int = 24,
                   federation: Federation) -> subprocess.Popen[str]:
    train = tmp_path / "train.py"
    train.write_text(TRAIN)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "keyless", "exec", "--audit-stderr", "--config", str(spec), "--",
         TORCHRUN,
         "--standalone", "--nproc-per-node", "2", *torchrun, str(train),
         federation.aws.bucket, federation.prefix, str(out), str(steps), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _reports(tmp_path: Path, ranks: int = 2) -> dict[int, dict[str, Any]]:
    return {rank: json.loads((tmp_path / "out" / f"rank-{rank}.json").read_text())
            for rank in range(ranks)}


def test_each_torchrun_rank_gets_its_own_session_and_shard_across_rollovers(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    aws = federation.aws
    aws.front.max_session_seconds = 4
    _shards(federation, 2)
    spec = _spec(federation, tmp_path, "tr-{job_id}-r{rank}")
    env = {**_environment(federation, tmp_path), "KEYLESS_JOB_ID": "job7"}
    with reaped(_exec_torchrun(spec, tmp_path, env, federation=federation)) as proc:
        out, err = proc.communicate(timeout=300)
    leak_guard.add(out, err)
    assert proc.returncode == 0, err[-4000:]
    reports = _reports(tmp_path)
    for rank, report in reports.items():
        assert report["failures"] == [], report["failures"]
        assert report["reads"] == report["arrow_reads"] == 24
        assert report["sum"] == 3.0  # gloo all-reduce of the two shards' values (1 + 2)
        assert report["denied"] == "AccessDenied" and report["arrow_denied"] == "denied"
        assert report["arn"].endswith(f"/tr-job7-r{rank}")
        assert report["keys"] >= 3, f"rank {rank}: boto3 saw {report['keys']} credential sets"
    accepted = [a["session_name"] for a in aws.front.accepted]
    assert set(accepted) == {"tr-job7-r0", "tr-job7-r1"}
    for rank in (0, 1):
        assert accepted.count(f"tr-job7-r{rank}") >= 3, "expected two rollovers per rank"
        reads = {f["access_key_id"] for f in aws.front.forwarded
                 if f["service"] == "s3" and f["session_name"] == f"tr-job7-r{rank}"
                 and f["status"] == 200}
        assert len(reads) >= 3, f"rank {rank} read with {len(reads)} credential sets"
    assert aws.front.expired_uses == []
    # the audit trail: served sets per rank, by fingerprint, with each rank's context
    audit = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    served = [e for e in audit if e["target"] == "aws-endpoint"]
    assert {e["session_name"] for e in served} == {"tr-job7-r0", "tr-job7-r1"}
    assert {e["context"].get("rank") for e in served} == {"0", "1"}


def test_a_restarted_rank_gets_its_own_credentials_again(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    aws = federation.aws
    _shards(federation, 2)
    spec = _spec(federation, tmp_path, "re-r{rank}")
    with reaped(_exec_torchrun(spec, tmp_path, _environment(federation, tmp_path),
                               "--max-restarts", "1", mode="die-once", steps=3,
                               federation=federation)) as proc:
        out, err = proc.communicate(timeout=300)
    leak_guard.add(out, err)
    assert proc.returncode == 0, err[-4000:]
    reports = _reports(tmp_path)
    for rank, report in reports.items():
        assert report["restarts"] == 1  # the whole group came back once
        assert report["failures"] == [] and report["reads"] == 3
        assert report["arn"].endswith(f"/re-r{rank}")
        assert report["denied"] == "AccessDenied"
    # rank 1 read its shard before it was killed, and again after the restart, as itself
    reads = [f for f in aws.front.forwarded
             if f["service"] == "s3" and f["path"].endswith("/shards/1/part")
             and f["status"] == 200]
    assert {f["session_name"] for f in reads} == {"re-r1"} and len(reads) >= 4


def _get(url: str, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": token}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _interpreter_for_anyone() -> str | None:
    """A Python that another OS user may execute (ours may live under a private home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    return None


OTHER_USER = r"""
import sys, urllib.error, urllib.request
url, token = sys.argv[1], sys.stdin.read()
try:
    urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": token}),
                           timeout=10)
    print(200)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_sigterm_ends_every_rank_and_outsiders_get_nothing(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    _shards(federation, 2)
    spec = _spec(federation, tmp_path, "sig-r{rank}")
    with reaped(_exec_torchrun(spec, tmp_path, _environment(federation, tmp_path), mode="hang",
                               federation=federation)) as proc:
        ready_files = [tmp_path / "out" / f"ready-{rank}.json" for rank in (0, 1)]
        deadline = time.monotonic() + 180
        while not all(p.exists() and p.stat().st_size for p in ready_files):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.2)
        time.sleep(0.3)
        ready = [json.loads(p.read_text()) for p in ready_files]
        url, token_file = ready[0]["url"], Path(ready[0]["token_file"])
        token = token_file.read_text()
        leak_guard.forbid(token)

        # this test process is outside the launched tree: the right token is not enough
        assert _get(url, None) == 401
        assert _get(url, token) == 403
        # another OS user, even holding the token, gets nothing
        python = _interpreter_for_anyone()
        if os.getuid() == 0 and python is not None:
            other = subprocess.run([python, "-c", OTHER_USER, url], input=token, cwd="/",
                                   capture_output=True, text=True, timeout=60, user=65534,
                                   group=65534, extra_groups=[])
            assert other.stdout.strip() == "403", other.stderr[-2000:]
        else:
            print("another-user check skipped: not root, or no Python every user may run")

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        leak_guard.add(out, err)
    assert proc.returncode == 143, err[-4000:]
    for rank in ready:
        assert not Path(f"/proc/{rank['pid']}").exists(), "a rank outlived the launcher"
    assert not token_file.exists() and not token_file.parent.exists(), "files left on disk"
    assert "refused a caller" in err  # the refusals were logged, by pid and reason


def test_long_dag_and_task_ids_keep_eight_ranks_apart(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """Ranks 0..7 (eight real processes, each with its own RANK, under one keyless exec) get
    eight distinct STS session names of at most 64 characters, each ending in its rank."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(federation.config(
        session_name="keyless-{job_id}-{task_id}-{run_id}-r{rank}")))
    out = tmp_path / "arns"
    out.mkdir()
    # each process writes its own file: eight writers on one stdout may interleave
    caller = ("import boto3, json, os; open(os.path.join(os.environ['OUT'], os.environ['RANK']),"
              " 'w').write(json.dumps(boto3.client('sts').get_caller_identity()['Arn']))")
    script = " & ".join(f"RANK={rank} {sys.executable} -c \"{caller}\"" for rank in range(8))
    env = {**_environment(federation, tmp_path),
           "KEYLESS_JOB_ID": "nightly_training_pipeline_v2",
           "KEYLESS_TASK_ID": "train_resnet50_distributed",
           "KEYLESS_RUN_ID": "scheduled__2026-12-05T00:00:00+00:00", "OUT": str(out)}
    result = subprocess.run([sys.executable, "-m", "keyless", "exec", "--audit-stderr",
                             "--config", str(spec), "--", "bash", "-c", script + " & wait"],
                            capture_output=True, text=True, env=env, timeout=300)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    arns = {path.name: json.loads(path.read_text()) for path in out.iterdir()}
    names = {rank: arn.rsplit("/", 1)[1] for rank, arn in arns.items()}
    assert len(names) == 8 and len(set(names.values())) == 8
    for rank, name in names.items():
        assert len(name) <= 64 and f"-r{rank}-" in name, name
    audit = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    full = {e["session_name"]: e["session_name_full"] for e in audit if e["target"] == "aws"}
    for rank, name in names.items():
        assert full[name].startswith("keyless-nightly_training_pipeline_v2-"
                                     "train_resnet50_distributed-scheduled")
        assert full[name].endswith(f"-r{rank}")


NO_RANK = r"""
import json, os, urllib.error, urllib.request
request = urllib.request.Request(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"], headers={
    "Authorization": open(os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read()})
try:
    urllib.request.urlopen(request, timeout=10)
    print(json.dumps({"status": 200}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": json.loads(exc.read())}))
"""


def test_a_caller_without_a_rank_is_refused_naming_the_field(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """The launcher has RANK=0 but the child asking has no rank of its own: it is refused,
    naming the field and the fix, never served rank 0's (the launcher's) policy."""
    spec = _spec(federation, tmp_path, "nr-r{rank}")
    env = {k: v for k, v in _environment(federation, tmp_path).items()
           if k not in ("RANK", "LOCAL_RANK")}
    result = subprocess.run(
        [sys.executable, "-m", "keyless", "exec", "--config", str(spec), "--", "env", "-u",
         "RANK", sys.executable, "-c", NO_RANK],
        capture_output=True, text=True, env={**env, "RANK": "0"}, timeout=120)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["status"] == 403
    message = answer["body"]["message"]
    assert "target.aws.session_policy uses {rank}" in message or \
        "target.aws.session_name uses {rank}" in message
    assert "fix:" in message
    assert federation.aws.front.accepted == []  # nothing was exchanged for it


def test_keyless_inside_torchrun_gives_each_rank_its_own_session(
        federation: Federation, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """The other launch form: `torchrun --no-python keyless exec --config F -- python
    train.py`, one keyless per rank, each serving its own rank's session."""
    aws = federation.aws
    _shards(federation, 2)
    spec = _spec(federation, tmp_path, "in-r{rank}")
    train = tmp_path / "train.py"
    train.write_text(TRAIN)
    out = tmp_path / "out"
    out.mkdir()
    keyless = str(Path(sys.executable).with_name("keyless"))
    result = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", keyless, "exec",
         "--config", str(spec), "--", sys.executable, str(train), aws.bucket,
         federation.prefix, str(out), "3"],
        capture_output=True, text=True, env=_environment(federation, tmp_path), timeout=300)
    leak_guard.add(result.stdout, result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank, report in _reports(tmp_path).items():
        assert report["failures"] == [] and report["denied"] == "AccessDenied"
        assert report["arn"].endswith(f"/in-r{rank}")
    assert {a["session_name"] for a in aws.front.accepted} == {"in-r0", "in-r1"}
