"""docs/quickstart-ray.md "Run it locally", followed as a new user would: its ``sh`` blocks, as
written, in order, each in a fresh ``bash`` in a fresh working directory.

Only the ``pip install`` line is not run (this environment is that install): it is checked to
name keyless with the ``aws`` and ``testing`` extras, ray-keyless, ``ray[default,train]`` and
torch at the versions installed here. The working directory holds nothing but a link to the
repository's ``examples/`` (the docs say to run from the repository root); ``PATH`` starts with
this environment's ``bin`` (an activated virtualenv); no ``AWS_*``, ``RAY_*`` or ``KEYLESS_*``
variable is inherited, except a private ``RAY_TMPDIR`` (Ray's sessions and logs, to scan and to
clean up) and ``RAY_USAGE_STATS_ENABLED=0``.

One Ray cluster at a time: the quickstart starts its own (``ray.init()`` in ``local_train.py``),
so conftest.py runs this module before any test that starts the session's ``ray_cluster``. If
that cluster is nevertheless up in this process (another order was forced), the job joins it
with ``RAY_ADDRESS`` (the quickstart supports an existing cluster) instead of starting a second.

Checked: each block's exit status and output; the per-rank lines the docs show (job id aside):
each rank's assumed-role ARN carries its rank, it read its own shard and was denied the other;
the federation's sessions log; no client secret or JWT in any output or Ray log; the files
holding secrets deleted by ``stop``; and no process left behind (Ray's, the federation's and its
moto server, found by PID; anything left is killed by PID and fails the test).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyless.audit import redact

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "quickstart-ray.md"
SECTION = "## 6. Run it locally (no cloud account)"
BIN = Path(sys.executable).parent
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
_JOB = re.compile(r"quickstart-[0-9a-f]+-r")

# seconds per block: the federation (moto) and the Ray job start slowly on a loaded machine
TIMEOUTS = {"start": 300, "put": 120, "doctor": 180, "local_train.py": 1200, "stop": 180}


def section_blocks() -> list[tuple[str, str]]:
    """(lang, body) of every fenced block in the section, in order."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC.name} lost its section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [(m["lang"], m["body"]) for m in _FENCE.finditer(body)]


def expected_after(blocks: list[tuple[str, str]], command: str) -> list[str]:
    """The lines of the ``text`` block that follows the ``sh`` block containing ``command``."""
    for i, (lang, body) in enumerate(blocks):
        if lang == "sh" and command in body:
            assert i + 1 < len(blocks) and blocks[i + 1][0] == "text", \
                f"the docs show no expected output after {command!r}"
            return blocks[i + 1][1].splitlines()
    raise AssertionError(f"no sh block runs {command!r}")


def check_install_line(line: str) -> None:
    argv = shlex.split(line)
    assert argv[:2] == ["pip", "install"], line
    packages = {re.split(r"[\[=<>]", a, maxsplit=1)[0]: a for a in argv[2:]}
    assert set(packages) == {"keyless", "ray-keyless", "ray", "torch"}, line
    assert set(re.findall(r"\[(.*)\]", packages["keyless"])[0].split(",")) >= {"aws", "testing"}
    ray_spec = re.fullmatch(r"ray\[(.*)\]==(.*)", packages["ray"])
    assert ray_spec, line
    ray_extras, ray_pin = ray_spec.groups()
    assert set(ray_extras.split(",")) == {"default", "train"}
    assert version("ray").startswith(ray_pin.rstrip("*")), (version("ray"), ray_pin)
    assert version("torch").split("+")[0] == packages["torch"].split("==")[1]


def _processes_with(marker: str) -> list[int]:
    """PIDs of processes whose command line mentions ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _alive(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() and \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Shell:
    """Runs doc blocks in ``cwd`` with ``env``; remembers every output for the leak check."""

    def __init__(self, cwd: Path, env: dict[str, str], ray_tmp: Path) -> None:
        self.cwd, self.env, self.ray_tmp = cwd, env, ray_tmp
        self.outputs: list[str] = []

    @property
    def own_cluster(self) -> bool:
        """Whether the quickstart starts its own Ray cluster (else it joins RAY_ADDRESS)."""
        return "RAY_ADDRESS" not in self.env

    def run(self, body: str, timeout: float) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", body], cwd=self.cwd,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the block's own process group
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            self.outputs += [out, err]
            raise AssertionError(f"{body!r} did not finish within {timeout} s; stdout tail: "
                                 f"{out[-2000:]}; stderr tail: {err[-3000:]}") from None
        self.outputs += [out, err]
        return subprocess.CompletedProcess(body, proc.returncode, out, err)

    def ray_logs(self) -> list[str]:
        """What Ray wrote under its sessions' log directories in ``RAY_TMPDIR``."""
        return [p.read_text(errors="replace")
                for p in sorted(self.ray_tmp.glob("ray/session_*/logs/**/*"))
                if p.is_file() and p.suffix in ("", ".log", ".out", ".err", ".txt")]


def _federation_processes(state: dict[str, Any]) -> list[tuple[int, str]]:
    return [(int(state.get("pid", 0)), "local_federation"),
            (int(state.get("moto_pid", 0)), "moto.server")]


def _federation_alive(state: dict[str, Any], wait: float = 0.0) -> list[int]:
    """The federation's PIDs still alive after waiting up to ``wait`` s for them to end."""
    deadline = time.monotonic() + wait
    while True:
        alive = [pid for pid, marker in _federation_processes(state) if _alive(pid, marker)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.5)


def _stop_federation(state: dict[str, Any]) -> None:
    """Stop by PID whatever the federation left running (SIGTERM, then SIGKILL)."""
    serve = int(state.get("pid", 0))
    if _alive(serve, "local_federation"):
        os.kill(serve, signal.SIGTERM)  # it stops its moto server itself
    _kill(_federation_alive(state, wait=60))


def _ray_processes(ray_tmp: Path, wait: float = 0.0) -> list[int]:
    """PIDs of the quickstart's Ray processes (their command lines name RAY_TMPDIR) still
    alive after waiting up to ``wait`` s for them to end."""
    deadline = time.monotonic() + wait
    while True:
        alive = _processes_with(str(ray_tmp))
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.5)


@pytest.fixture
def user(tmp_path: Path) -> Iterator[Shell]:
    """A fresh working directory and a user's environment; cleans up every process."""
    import ray

    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    ray_tmp = Path(tempfile.mkdtemp(prefix="kq-", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RAY_", "KEYLESS_", "VIRTUAL_ENV"))}
    env.update(PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
               VIRTUAL_ENV=str(BIN.parent), RAY_TMPDIR=str(ray_tmp),
               RAY_USAGE_STATS_ENABLED="0")
    if ray.is_initialized():  # the session's cluster is up: join it rather than start another
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH_")})
    shell = Shell(work, env, ray_tmp)
    try:
        yield shell
    finally:
        state_file = work / "keyless-local" / "federation.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        _stop_federation(state)  # after a failure; the test checks that `stop` stopped it
        _kill(_ray_processes(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _normal(text: str) -> str:
    return _JOB.sub("quickstart-JOB-r", text)


def test_ray_quickstart_runs_as_documented(user: Shell) -> None:
    blocks = section_blocks()
    commands = [body for lang, body in blocks if lang == "sh"]
    assert len(commands) == 6, commands
    install, start, put, doctor, train, stop = commands
    check_install_line(install.strip())

    started = user.run(start, TIMEOUTS["start"])
    assert started.returncode == 0, started.stderr[-3000:]
    assert "local federation running" in started.stdout
    for line in expected_after(blocks, "local_federation start"):
        if "127.0.0.1" not in line and "(pid" not in line:  # ports and PIDs differ per run
            assert line in started.stdout.splitlines(), (line, started.stdout)
    local = user.cwd / "keyless-local"
    assert (local / "idp.yaml").stat().st_mode & 0o077 == 0
    client_secret = yaml.safe_load((local / "idp.yaml").read_text())["source"]["client_secret"]
    uploader_secret = json.loads((local / "uploader.json").read_text())["SecretAccessKey"]
    state = json.loads((local / "federation.json").read_text())
    assert _federation_alive(state) == [state["pid"], state["moto_pid"]]

    uploaded = user.run(put, TIMEOUTS["put"])
    assert uploaded.returncode == 0, uploaded.stderr[-3000:]
    for rank in (0, 1):
        assert (f"-> s3://keyless-quickstart/shards/{rank}/part-0.txt (23 bytes)"
                in uploaded.stdout), uploaded.stdout

    checked = user.run(doctor, TIMEOUTS["doctor"])
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "doctor: all checks passed" in checked.stdout

    trained = user.run(train, TIMEOUTS["local_train.py"])
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-5000:]
    assert _ray_processes(user.ray_tmp, wait=60) == [], "Ray outlived the script that started it"
    job = re.search(r"quickstart-([0-9a-f]+)-r0", trained.stdout)
    assert job, trained.stdout
    got = _normal(trained.stdout).splitlines()
    for line in expected_after(blocks, "local_train.py"):  # the docs' per-rank lines, as shown
        assert _normal(line) in got, (line, trained.stdout)
    for rank, other in ((0, 1), (1, 0)):
        assert (f"rank {rank}  identity arn:aws:sts::123456789012:assumed-role/ray-trainer/"
                f"quickstart-{job[1]}-r{rank}") in trained.stdout
        assert (f"rank {rank}  other    s3://keyless-quickstart/shards/{other}/part-0.txt -> "
                "AccessDenied") in trained.stdout
    assert '"kind":"exchange"' in trained.stderr  # the audit events the docs mention

    stopped = user.run(stop, TIMEOUTS["stop"])
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "local federation stopped" in stopped.stdout
    sessions = stopped.stdout.splitlines()[1:]
    for rank in (0, 1):
        mine = [s for s in sessions if f"session=quickstart-{job[1]}-r{rank} " in s]
        assert mine and all("sub=ray-trainer" in s and "session policy=yes" in s for s in mine), \
            stopped.stdout
    assert not (local / "idp.yaml").exists() and not (local / "uploader.json").exists()
    assert _federation_alive(state, wait=30) == [], "`stop` left the federation running"

    ray_logs = user.ray_logs()
    if user.own_cluster:
        assert ray_logs, "Ray wrote no logs under RAY_TMPDIR: the job ran somewhere else"
    everything = "\n".join([*user.outputs, *ray_logs,
                            (local / "federation.log").read_text(errors="replace")])
    assert client_secret not in everything and uploader_secret not in everything, \
        "a secret leaked into output or logs"
    assert redact(everything) == everything, "something shaped like a JWT leaked"
