"""Deferrable AWS operators on keyless (issue 21, Airflow part 2): ``S3KeySensor(deferrable=True)``
on an ``aws`` connection naming a keyless connection, reference IdP → keyless → verifying STS
front → moto S3, across credential rollovers while deferred (4-second STS sessions, 8-second
IdP tokens); plus unit tests of the async credential bridge (``keyless_airflow.aws_async``).

Where the trigger runs. ``dag.test()`` (``use_executor=False``) runs a deferred task's trigger
*inline*: ``_run_task(..., run_triggerer=True)`` builds the trigger from the serialized kwargs and
runs it with ``asyncio.run`` in the dag.test() process
(``InProcessTestSupervisor.run_trigger_in_process``), without setting its ``task_instance`` and
outside any task context; no triggerer is involved. The task the trigger waits for cannot be
known there, so keyless gives that session an identity of its own (task field
``trigger-<8 hex>``, with a warning) and never another task's. A real ``airflow triggerer``
binds each trigger's task instance (dag, task, run, map index, try) into the trigger's logging
context, and its session is then named after the sensor's task. The second e2e test runs that:
a triggerer process on the same AIRFLOW_HOME and SQLite database, started and stopped by the
test by its process id, while the DAG process leaves the trigger to it
(tests/airflow_provider/dags/keyless_deferrable.py ``--triggerer``).

In both, the test uploads the key only after the trigger's polls have used two credential sets
(a rollover while deferred), and everything the runs printed or logged is scanned for the IdP's
client secrets, anything shaped like a JWT and the AWS secret keys and session tokens STS issued.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless.refresher import RefreshPolicy
from keyless.targets.aws import _credentials_class
from keyless.testing import free_ports
from keyless_airflow.aws_async import CredentialSnapshot, KeylessAioCredentials, credential_snapshot
from tests.airflow_provider.conftest import flat_extra
from tests.e2e.conftest import Federation, LeakGuard

DAG_FILE = Path(__file__).parent / "dags" / "keyless_deferrable.py"
SENSOR = "keyless-keyless_deferrable-wait_for_key-"
READER = "keyless-keyless_deferrable-read_key-"


# ---------------------------------------------------------------------- the bridge, unit tests
class FakeClock:
    """aiobotocore's ``time_fetcher`` (a timezone-aware now) over a settable epoch time."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now, tz=datetime.UTC)


class FakeSource:
    """The blocking keyless side: each call takes ``delay`` seconds (an IdP + STS round trip)
    and returns a new credential set living ``lifetime`` seconds from the clock's now."""

    def __init__(self, clock: FakeClock, *, delay: float = 0.0, lifetime: float = 100.0) -> None:
        self.clock, self.delay, self.lifetime = clock, delay, lifetime
        self.threads: list[int] = []

    def __call__(self) -> CredentialSnapshot:
        self.threads.append(threading.get_ident())
        time.sleep(self.delay)
        n = len(self.threads)
        return CredentialSnapshot(f"ASIAFAKE{n:04d}", f"secret-{n}", f"token-{n}",
                                  self.clock.now + self.lifetime, 30.0, 10.0)


def test_a_refresh_runs_off_the_event_loop_which_keeps_running() -> None:
    clock = FakeClock()
    source = FakeSource(clock, delay=0.4)
    credentials = KeylessAioCredentials(source, time_fetcher=clock)

    async def main() -> tuple[int, int, Any]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        frozen = await credentials.get_frozen_credentials()
        ticking.cancel()
        return threading.get_ident(), ticks, frozen

    loop_thread, ticks, frozen = asyncio.run(main())
    assert frozen.access_key == "ASIAFAKE0001" and frozen.token == "token-1"
    assert source.threads and loop_thread not in source.threads
    assert ticks >= 10, f"the event loop was blocked during the refresh ({ticks} ticks in 0.4 s)"


def test_concurrent_awaits_share_one_refresh() -> None:
    clock = FakeClock()
    source = FakeSource(clock, delay=0.2)
    credentials = KeylessAioCredentials(source, time_fetcher=clock)

    async def many() -> set[str]:
        frozen = await asyncio.gather(*(credentials.get_frozen_credentials() for _ in range(25)))
        return {f.access_key for f in frozen}

    async def main() -> tuple[set[str], set[str]]:
        first = await many()
        clock.now += 95.0  # 5 s left: inside the mandatory window (10 s): everyone waits
        return first, await many()

    first, after_expiry = asyncio.run(main())
    assert first == {"ASIAFAKE0001"} and after_expiry == {"ASIAFAKE0002"}
    assert len(source.threads) == 2


def test_the_pipelines_refresh_windows_decide_when_the_loop_refreshes() -> None:
    """keyless's own botocore credentials (windows scaled to the 100 s lifetime the fake STS
    gives) behind the bridge, one fake clock for both: no STS call before keyless's advisory
    window, one at it, and the loop takes that new set; past the expiry, another."""
    clock = FakeClock()
    sts_calls: list[float] = []

    def fake_sts() -> dict[str, Any]:
        sts_calls.append(clock.now)
        expiry = datetime.datetime.fromtimestamp(clock.now + 100.0, tz=datetime.UTC)
        n = len(sts_calls)
        return {"access_key": f"ASIASTS{n:04d}", "secret_key": f"s{n}", "token": f"t{n}",
                "expiry_time": expiry.isoformat()}

    keyless_credentials = _credentials_class()(
        refresh_using=fake_sts, method="keyless-web-identity", policy=RefreshPolicy(),
        rng=random.Random(7), time_fetcher=clock)
    credentials = KeylessAioCredentials(lambda: credential_snapshot(keyless_credentials),
                                        time_fetcher=clock)

    async def key() -> str:
        return str((await credentials.get_frozen_credentials()).access_key)

    async def main() -> list[str]:
        keys = [await key()]
        advisory = keyless_credentials._advisory_refresh_timeout
        assert credentials._advisory_refresh_timeout == advisory  # copied across the bridge
        clock.now += 100.0 - advisory - 1.0
        keys.append(await key())  # 1 s before the window: cached, no thread, no STS
        clock.now += 2.0
        keys.append(await key())  # in it: one STS call, the new set
        clock.now += 101.0
        keys.append(await key())  # past the expiry: mandatory
        return keys

    assert asyncio.run(main()) == ["ASIASTS0001", "ASIASTS0001", "ASIASTS0002", "ASIASTS0003"]
    assert len(sts_calls) == 3


# ---------------------------------------------------------------------- e2e
def issued_aws_secrets(federation: Federation) -> list[str]:
    """The secret keys and session tokens moto issued (its state dump): what the scan forbids."""
    state = httpx.get(f"{federation.aws.moto_url}/moto-api/data.json", timeout=30).json()
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name in ("secret_access_key", "session_token") and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(state.get("sts", {}))
    assert found, "moto's state dump lists no issued STS credentials"
    return found


def dag_environment(federation: Federation, key: str, tmp_path: Path) -> dict[str, str]:
    aws_connection = {"conn_type": "aws", "extra": {
        "keyless_conn_id": "keyless_default", "endpoint_url": federation.aws.s3_url,
        "region_name": federation.aws.region}}
    return {
        **os.environ, **federation.aws.env(),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
        "AIRFLOW_CONN_KEYLESS_DEFAULT": json.dumps(
            {"conn_type": "keyless", "extra": flat_extra(federation.config("shortlived"))}),
        "AIRFLOW_CONN_AWS_KEYLESS": json.dumps(aws_connection),
        "AIRFLOW__AWS__SESSION_FACTORY": "keyless_airflow.aws.KeylessSessionFactory",
        "KEYLESS_EXAMPLE_BUCKET": federation.aws.bucket, "KEYLESS_EXAMPLE_KEY": key,
        # had anything fallen back to the default chain, these would be used (and refused)
        "AWS_ACCESS_KEY_ID": "AKIASTATICFALLBACK00",
        "AWS_SECRET_ACCESS_KEY": "static-secret-that-must-not-be-used",
        "PYTHONUNBUFFERED": "1", "NO_COLOR": "1",
    }


def wait_until(condition: Callable[[], bool], what: str, *, timeout: float,
               alive: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive.poll() is not None:
            pytest.fail(f"the DAG run ended before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def run_until_deferred_rollover(federation: Federation, tmp_path: Path, *,
                                trigger_session: Callable[[str, int], bool],
                                triggerer: bool = False) -> tuple[str, int]:
    """Run the DAG; once the trigger's polls of the missing key (HEAD) have used two credential
    sets, upload the key; the DAG run's output and process id."""
    key = f"{federation.prefix}incoming/ready.txt"
    log = tmp_path / "dagrun.log"
    args = [sys.executable, str(DAG_FILE), *(["--triggerer"] if triggerer else [])]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   env=dag_environment(federation, key, tmp_path))
    try:
        def trigger_polls() -> list[dict[str, Any]]:
            return [f for f in federation.aws.front.forwarded
                    if f["method"] == "HEAD" and f["path"].endswith("/incoming/ready.txt")
                    and trigger_session(f["session_name"], process.pid)]

        wait_until(lambda: len({f["access_key_id"] for f in trigger_polls()}) >= 2,
                   "a credential rollover in the deferred trigger", timeout=150, alive=process,
                   log=log)
        federation.aws.put_object(federation.aws.bucket, key, "the key is here")
        process.wait(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()  # dag.test() ignores SIGTERM
            process.wait()
    text = log.read_text()
    assert process.returncode == 0, text[-4000:]
    assert "KEYLESS_DAGRUN keyless_deferrable success" in text
    assert "KEYLESS_READ the key is here" in text
    return text, process.pid


def session_pid(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


@pytest.mark.e2e
def test_a_deferrable_s3_key_sensor_under_dag_test(
        airflow_home: Path, federation: Federation, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    federation.aws.front.max_session_seconds = 4
    inline = re.compile(r"^keyless-+trigger-[0-9a-f]{8}-")
    text, _ = run_until_deferred_rollover(
        federation, tmp_path, trigger_session=lambda name, _pid: bool(inline.match(name)))
    leak_guard.add(text)
    leak_guard.forbid(*issued_aws_secrets(federation))

    front = federation.aws.front
    names = {a["session_name"] for a in front.accepted}
    trigger_names = {n for n in names if inline.match(n)}
    # the inline trigger had its own identity (one for its one session), never another task's
    assert len({inline.match(n).group(0) for n in trigger_names}) == 1, names  # type: ignore[union-attr]
    assert names - trigger_names, names
    assert all(n.startswith((SENSOR, READER)) for n in names - trigger_names), names
    assert any(n.startswith(SENSOR) for n in names) and any(n.startswith(READER) for n in names)
    assert len([a for a in front.accepted if inline.match(a["session_name"])]) >= 2  # rollover
    assert "dag.test() runs triggers inline" in text
    reads = [f for f in front.forwarded if f["method"] == "GET" and f["status"] == 200]
    assert reads and all(f["session_name"].startswith(READER) for f in reads)
    assert front.expired_uses == []


class Triggerer:
    """``airflow triggerer`` on the session's AIRFLOW_HOME, stopped by its process id."""

    def __init__(self, env: dict[str, str], output: Path) -> None:
        (log_port,) = free_ports(1, avoid={8793, 8794})
        airflow = Path(sys.executable).with_name("airflow")
        self.output = output
        with output.open("wb") as out:
            self.process = subprocess.Popen(
                [str(airflow), "triggerer"], stdout=out, stderr=subprocess.STDOUT,
                env={**env, "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(log_port)},
                start_new_session=True)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own group: started above
            self.process.wait()


@pytest.fixture
def triggerer(airflow_home: Path, federation: Federation, tmp_path: Path) -> Iterator[Triggerer]:
    env = dag_environment(federation, "unused", tmp_path)
    running = Triggerer(env, tmp_path / "triggerer.log")
    yield running
    running.stop()


@pytest.mark.e2e
def test_a_deferrable_s3_key_sensor_in_a_real_triggerer(
        airflow_home: Path, federation: Federation, tmp_path: Path, triggerer: Triggerer,
        leak_guard: LeakGuard) -> None:
    federation.aws.front.max_session_seconds = 4
    text, pid = run_until_deferred_rollover(
        federation, tmp_path, triggerer=True,
        trigger_session=lambda name, dag_pid: name.startswith(SENSOR)
        and session_pid(name) != dag_pid)
    triggerer.stop()
    home = Path(os.environ["AIRFLOW_HOME"])  # where the runs wrote (the trigger's log too)
    logs = [p.read_text(errors="replace") for p in home.joinpath("logs").rglob("*.log")]
    assert any(".trigger." in p.name for p in home.joinpath("logs").rglob("*.log"))
    leak_guard.add(text, triggerer.output.read_text(), *logs)
    leak_guard.forbid(*issued_aws_secrets(federation))

    front = federation.aws.front
    names = {a["session_name"] for a in front.accepted}
    assert all(n.startswith((SENSOR, READER)) for n in names), names
    in_triggerer = [a for a in front.accepted if a["session_name"].startswith(SENSOR)
                    and session_pid(a["session_name"]) != pid]
    assert len(in_triggerer) >= 2, names  # the trigger's own sessions, across a rollover
    assert any(n.startswith(SENSOR) and session_pid(n) == pid for n in names)  # the poke
    assert "keyless: trigger session for dag keyless_deferrable task wait_for_key" in \
        triggerer.output.read_text() + "".join(logs)
    assert "dag.test() runs triggers inline" not in text
    assert front.expired_uses == []
