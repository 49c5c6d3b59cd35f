"""When a node's refresher stops without Ray's reference counting (issue 19): real processes
carrying the marker count as users, the idle policy, the watchdog that outlives a SIGKILLed
agent, and the registry's generations (a config stopped as idle is created again under a new
URI; a late delete of an old generation stops nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ray._private.runtime_env.context import RuntimeEnvContext

from keyless_ray import MARKER_VARIABLE
from keyless_ray.agent import NodeRegistry
from keyless_ray.bootstrap import SITE_DIRECTORY
from keyless_ray.lifecycle import DirectoryWatchdog, IdlePolicy, users_by_config
from tests.ray_runtime.test_ray_plugin_unit import LOG, _ident, file_config, plugin_for


def _wait_for(predicate: object, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_processes_started_with_the_marker_count_as_users_until_they_exit() -> None:
    ident = f"test{os.getpid():x}"
    env = {**os.environ, MARKER_VARIABLE: ident}
    sleepers = [subprocess.Popen(["sleep", "30"], env=env) for _ in range(2)]
    try:
        assert _wait_for(lambda: users_by_config()[ident] == 2)
        sleepers[0].kill()
        sleepers[0].wait()
        assert users_by_config()[ident] == 1
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
    assert users_by_config()[ident] == 0


def test_the_idle_policy_waits_for_users_and_for_workers_being_started() -> None:
    policy = IdlePolicy(idle_seconds=10, startup_seconds=20)
    assert not policy.idle(now=105, last_seen=100, last_prepared=0)  # a user 5 s ago
    assert policy.idle(now=110, last_seen=100, last_prepared=0)
    assert not policy.idle(now=110, last_seen=100, last_prepared=95)  # a worker is starting
    assert policy.idle(now=115, last_seen=100, last_prepared=95)
    assert IdlePolicy.from_environment({"KEYLESS_RAY_IDLE_SECONDS": "3"}).idle_seconds == 3
    for junk in ("", "abc", "-1", "0", "inf", "nan"):
        assert IdlePolicy.from_environment({"KEYLESS_RAY_IDLE_SECONDS": junk}) == IdlePolicy()


def test_the_watchdog_removes_the_directory_when_its_owner_is_killed(tmp_path: Path) -> None:
    directory = tmp_path / "tokens"
    directory.mkdir()
    (directory / "token.jwt").write_text("x")
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; "
        "from keyless_ray.lifecycle import DirectoryWatchdog; "
        f"w = DirectoryWatchdog(Path({str(directory)!r})); print('ready', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        assert directory.exists()
        owner.send_signal(signal.SIGKILL)  # no atexit, no finally: only the watchdog is left
        owner.wait()
        assert _wait_for(lambda: not directory.exists()), "the token directory outlived its agent"
    finally:
        owner.kill()
        owner.wait()
    kept = tmp_path / "kept"
    kept.mkdir()
    watchdog = DirectoryWatchdog(kept)
    assert kept.exists()
    watchdog.close()
    assert not kept.exists()


def test_an_idle_config_is_released_and_created_again_under_a_new_generation(
        tmp_path: Path) -> None:
    registry = NodeRegistry(sleep=lambda _: None, idle=IdlePolicy(idle_seconds=1,
                                                                 startup_seconds=1))
    plugin = plugin_for(registry)
    env = {"keyless": file_config(tmp_path)}
    first = plugin.get_uris(env)[0]
    asyncio.run(plugin.create(first, env, RuntimeEnvContext(), LOG))
    ident = _ident(first)
    entry = registry.get(ident)
    assert entry is not None and entry.directory.path.exists()
    now = time.monotonic()
    assert registry.sweep(Counter({ident: 1}), now + 5) == []  # a user: kept
    assert registry.sweep(Counter(), now + 5.5) == []  # no user for 0.5 s only
    assert registry.sweep(Counter(), now + 7) == [ident]
    assert registry.get(ident) is None and not entry.directory.path.exists()
    second = plugin.get_uris(env)[0]
    assert second != first and _ident(second) == ident  # Ray will create it again
    asyncio.run(plugin.create(second, env, RuntimeEnvContext(), LOG))
    plugin.delete_uri(first, LOG)  # a late delete of the stopped generation: a no-op
    assert registry.get(ident) is not None
    context = RuntimeEnvContext()
    plugin.modify_context([second], env, context, LOG)
    assert context.env_vars["PYTHONPATH"].split(os.pathsep)[0] == str(SITE_DIRECTORY)
    plugin.delete_uri(second, LOG)
    assert registry.get(ident) is None


def test_modify_context_starts_a_config_stopped_between_lookup_and_setup(
        tmp_path: Path) -> None:
    registry = NodeRegistry(sleep=lambda _: None)
    plugin = plugin_for(registry)
    env = {"keyless": file_config(tmp_path)}
    uri = plugin.get_uris(env)[0]
    asyncio.run(plugin.create(uri, env, RuntimeEnvContext(), LOG))
    registry.release(_ident(uri), reason="idle (test)")
    context = RuntimeEnvContext()
    plugin.modify_context([uri], env, context, LOG)  # Ray skipped create: its URI was cached
    assert Path(context.env_vars["AWS_WEB_IDENTITY_TOKEN_FILE"]).is_file()
    registry.stop_all()
