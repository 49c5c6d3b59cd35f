"""A real Airflow 3.3 (`airflow standalone`) on loopback, for the browser tests.

:class:`AirflowStandalone` runs ``airflow standalone`` (scheduler, DAG processor, triggerer and
API server under one parent) in its own process group with its own ``AIRFLOW_HOME`` (SQLite,
no example DAGs, an empty DAGs folder, connection testing enabled), every port it opens on a
free loopback port (the API server's, the worker and triggerer log servers': none is 8793).
``start()`` waits, bounded, until the API server answers and SimpleAuthManager has written the
generated admin password; ``stop()`` interrupts standalone by its process id (it then stops its
components), then terminates and finally kills its process group. All output goes to
``standalone.out`` in the home, which :meth:`texts` returns with every log file under the home
for a leak scan.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from keyless.testing import free_ports

__all__ = ["AirflowStandalone", "ServerError"]

#: The port Airflow's worker log server uses by default: nothing here listens on it.
LOG_SERVER_DEFAULT_PORT = 8793


class ServerError(RuntimeError):
    """The standalone Airflow did not start (the message ends with its output's tail)."""


class AirflowStandalone:
    """``airflow standalone`` in ``home``, listening on ``http://127.0.0.1:<port>``.

    ``env`` adds variables to the server's environment (after the ones this class sets).
    """

    def __init__(self, home: Path, *, env: dict[str, str] | None = None) -> None:
        self.home = home
        # picked together: ports picked one at a time may repeat, and a log server on the
        # API server's port leaves standalone's API server unable to bind
        self.port, self._worker_log_port, self._trigger_log_port = free_ports(
            3, avoid={LOG_SERVER_DEFAULT_PORT})
        self.output = home / "standalone.out"
        self._extra_env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The server's environment: this process's less its Airflow settings, plus ours."""
        bin_dir = str(Path(sys.executable).parent)  # standalone runs `airflow` from PATH
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        dags = self.home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        env.update({
            "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._trigger_log_port),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "NO_COLOR": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self._extra_env)
        return env

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 240.0) -> AirflowStandalone:
        """Start ``airflow standalone`` and wait (at most ``timeout`` seconds) until the API
        server answers and the admin password exists. Raises :class:`ServerError`."""
        airflow = Path(sys.executable).with_name("airflow")
        with self.output.open("wb") as out:
            self._process = subprocess.Popen(
                [str(airflow), "standalone"], cwd=self.home, env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServerError(f"airflow standalone exited with {self._process.returncode}:"
                                  f"\n{self.tail()}")
            if self.password_file.exists() and self._api_answers():
                return
            time.sleep(0.5)
        raise ServerError(f"airflow standalone not ready after {timeout:.0f}s:\n{self.tail()}")

    def _api_answers(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def stop(self, grace: float = 30.0) -> None:
        """Stop it by process id: SIGINT to ``airflow standalone`` (it terminates each of its
        components and waits for them), then SIGTERM and finally SIGKILL to its whole process
        group, each after a bounded wait."""
        process, self._process = self._process, None
        if process is None:
            return
        steps = ((False, signal.SIGINT, grace), (True, signal.SIGTERM, grace / 2),
                 (True, signal.SIGKILL, grace / 2))
        for whole_group, sig, wait in steps:
            try:
                if whole_group:
                    os.killpg(process.pid, sig)
                else:
                    os.kill(process.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(process.pid):
                process.poll()
                time.sleep(0.2)
            if not _group_alive(process.pid):
                break
        process.wait(timeout=grace)

    def __enter__(self) -> AirflowStandalone:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ login and output
    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def admin_password(self) -> str:
        """The password SimpleAuthManager generated for ``admin``."""
        passwords: dict[str, str] = json.loads(self.password_file.read_text())
        return passwords["admin"]

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.output.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def texts(self) -> dict[str, str]:
        """Every file the server wrote under its home but the database (its output, logs,
        generated config), by relative path."""
        found: dict[str, str] = {}
        for path in sorted(self.home.rglob("*")):
            if path.is_file() and not path.name.startswith("airflow.db"):
                found[str(path.relative_to(self.home))] = path.read_text(errors="replace")
        return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
