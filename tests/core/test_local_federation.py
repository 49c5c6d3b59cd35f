"""``python -m keyless.testing.local_federation``: start (idempotent), put, a keyless exchange
with the config it writes, stop; secrets only in 0600 files, deleted on stop; nothing left
running (checked by PID)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from botocore.config import Config

from keyless import Keyless
from keyless.testing import local_federation

pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "keyless.testing.local_federation", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """The federation's --dir; whatever it left running is stopped by PID afterwards."""
    path = tmp_path / "keyless-local"
    pids: list[int] = []
    yield path
    state_file = path / "federation.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        pids = [int(state["pid"]), int(state["moto_pid"])]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_put_without_a_federation_is_a_usage_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = local_federation.main(["put", "--dir", str(tmp_path), str(tmp_path),
                                  "s3://keyless-quickstart/x"])
    assert code == 2
    assert "no federation is running" in capsys.readouterr().err


def test_start_put_exchange_stop(directory: Path, tmp_path: Path) -> None:
    started = cli("start", "--dir", str(directory))
    assert started.returncode == 0, started.stderr
    state = json.loads((directory / "federation.json").read_text())
    assert _alive(state["pid"]) and _alive(state["moto_pid"])
    assert f"local federation running (pid {state['pid']})" in started.stdout
    assert directory.stat().st_mode & 0o077 == 0
    for secret_file in ("idp.yaml", "uploader.json"):
        assert (directory / secret_file).stat().st_mode & 0o077 == 0
    config = yaml.safe_load((directory / "idp.yaml").read_text())
    secret = config["source"]["client_secret"]
    again = cli("start", "--dir", str(directory))  # idempotent: the same federation
    assert again.returncode == 0 and f"(pid {state['pid']})" in again.stdout

    data = tmp_path / "data"
    (data / "0").mkdir(parents=True)
    (data / "0" / "part-0.txt").write_text("rank 0")
    put = cli("put", "--dir", str(directory), str(data), "s3://keyless-quickstart/shards")
    assert put.returncode == 0, put.stderr
    assert "-> s3://keyless-quickstart/shards/0/part-0.txt (6 bytes)" in put.stdout

    config["target"]["aws"]["session_name"] = "federation-test"
    identity = Keyless(config)
    s3 = identity.boto3_session().client(
        "s3", endpoint_url=state["s3_url"],
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
    body = s3.get_object(Bucket=state["bucket"], Key="shards/0/part-0.txt")["Body"].read()
    assert body == b"rank 0"
    with pytest.raises(Exception, match="AccessDenied"):  # the role may only read shards/*
        s3.put_object(Bucket=state["bucket"], Key="shards/0/other.txt", Body=b"x")

    deadline = time.monotonic() + 30  # the serve process logs sessions once a second
    while "federation-test" not in (directory / "federation.log").read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    stopped = cli("stop", "--dir", str(directory))
    assert stopped.returncode == 0, stopped.stderr
    assert "AssumeRoleWithWebIdentity session=federation-test sub=ray-trainer" in stopped.stdout
    deadline = time.monotonic() + 30
    while _alive(state["moto_pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(state["pid"]) and not _alive(state["moto_pid"])
    assert sorted(p.name for p in directory.iterdir()) == ["federation.log"]
    outputs = started.stdout + started.stderr + put.stdout + put.stderr + stopped.stdout \
        + (directory / "federation.log").read_text()
    assert secret not in outputs
    assert cli("stop", "--dir", str(directory)).stdout.startswith("local-federation: nothing")
