"""`keyless demo` as a user runs it: a subprocess, its output judged line by line. Issue 8."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import LeakGuard

pytestmark = pytest.mark.e2e

_SUMMARY = re.compile(r"^OK   rank (\d+): sub=(\S+) session=(\S+) reads=(\d+) rollovers=(\d+) "
                      r"cross-shard read=(\S+)$", re.MULTILINE)
_PID = re.compile(r"\(pid (\d+)\)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now holds the number
        return False
    return True


def test_demo_runs_the_whole_federation_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-m", "keyless", "demo"], capture_output=True,
                          text=True, timeout=240, env=env)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "demo passed" in out

    summary = {int(m[0]): m for m in _SUMMARY.findall(out)}
    assert sorted(summary) == [0, 1, 2], out[-2000:]
    job = re.search(r"job (demo-[0-9a-f]+):", out)
    assert job is not None
    for rank, (_, sub, session, reads, rollovers, cross) in summary.items():
        assert sub == f"job/{job[1]}/rank/{rank}"          # its own subject token
        assert session == f"{job[1]}-rank-{rank}"           # its own STS session
        assert int(reads) > 0 and int(rollovers) >= 1
        assert cross == "AccessDenied"
        other = (rank + 1) % 3
        assert re.search(rf"rank {rank}  cross-shard read of s3://keyless-demo/shards/{other}/"
                         r"part-0\.txt -> AccessDenied", out)
        assert re.search(rf"rank {rank}  ROLLOVER #1: new credentials", out)
        # The audit trail (keyless audit events) shows the issue and the exchanges.
        assert re.search(rf"rank {rank}  issue +ok +token sub={re.escape(sub)} ", out)
        assert len(re.findall(rf"rank {rank}  exchange ok +aws +sub={re.escape(sub)} .*"
                              rf"session={re.escape(session)} ", out)) >= 2
        # The STS front's record: the denied cross-shard request, under this session.
        assert re.search(rf"  {re.escape(session)}: .*/keyless-demo/shards/{other}/part-0\.txt "
                         r"\(HTTP 403, denied\): 1", out)

    # The timeline page: written, named in the output, each worker's identity on it.
    page_path = re.search(r"== audit timeline page: (\S+) ==", out)
    assert page_path is not None, out[-2000:]
    page = Path(page_path[1])
    html = page.read_text(encoding="utf-8")
    page.unlink()
    assert html.startswith("<!DOCTYPE html>") and job[1] in html
    for _, sub, session, *_rest in summary.values():
        assert sub in html and session in html

    guard = LeakGuard()
    guard.add(out, done.stderr, html)
    guard.check()  # nothing shaped like a JWT
    everything = out + done.stderr
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", everything), "an access key id leaked"
    assert not re.search(r"[A-Za-z0-9_\-]{32,}", everything), "a secret-like run leaked"

    pids = [int(p) for p in _PID.findall(out)]
    assert len(pids) == 4  # moto and three workers
    assert not [p for p in pids if _alive(p)], "the demo left a process running"
